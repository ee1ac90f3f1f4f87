//! lbd: loads the balancer, attaches it to the given interfaces and keeps it there until stopped.
use anyhow::Context as _;
use clap::Parser;
use lb_userspace::datapath::{self, Mode};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// The XDP load balancer's agent.
///
/// Loads the balancer program, attaches it to each INTERFACE and keeps it attached until SIGINT
/// or SIGTERM; then detaches it. Needs root (CAP_BPF, CAP_NET_ADMIN).
///
/// Example: lbd --interface eth0
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Interface to attach the balancer to; repeat for several.
    #[arg(short, long = "interface", value_name = "INTERFACE", required = true)]
    interfaces: Vec<String>,
    /// Attach in generic (skb) mode, for drivers without native XDP. Much slower.
    #[arg(long)]
    generic: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mode = if args.generic {
        warn!("attaching in generic mode: packets reach XDP only after the kernel built an skb");
        Mode::Generic
    } else {
        Mode::Native
    };

    let mut dp = datapath::load()?;
    for interface in &args.interfaces {
        dp.attach(datapath::BALANCER, interface, mode)?;
        info!(interface, %mode, "balancer attached");
    }

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: detaching"),
        _ = term.recv() => info!("SIGTERM: detaching"),
    }
    drop(dp);
    Ok(())
}
