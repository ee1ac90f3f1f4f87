//! lbctl: the operator's command line.
use clap::{Parser, Subcommand};

/// Controls the XDP load balancer.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the XDP programs and maps built into this binary (no privileges needed).
    Object,
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Object => {
            let obj = aya_obj::Object::parse(lb_userspace::datapath::object())?;
            for name in obj.programs.keys() {
                println!("program {name}");
            }
            for (name, map) in &obj.maps {
                println!("map {name} max_entries={}", map.max_entries());
            }
        }
    }
    Ok(())
}
