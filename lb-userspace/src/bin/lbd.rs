//! lbd: the balancer's agent. Loads and attaches the XDP balancer, keeps the maps in the state
//! the config file and the control API ask for, and serves the API.
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lb_userspace::{
    agent::{self, run::OnExit},
    backend_host,
};

/// The XDP load balancer's agent.
///
/// Attaches the balancer to the configured interfaces through pinned links and keeps its maps
/// pinned, so forwarding continues while lbd restarts or upgrades: a new lbd adopts what the
/// old one left. Serves the control API (lbctl) on a Unix socket. Needs root.
///
/// Signals: SIGHUP re-reads the config file and applies it (the running state is untouched if
/// it is invalid); SIGTERM and SIGINT stop lbd (see --on-exit).
///
/// Example: lbd --config /etc/lbd/lbd.toml
///
/// On backend hosts, `lbd backend-host --config FILE` sets up decapsulation and the VIPs. To
/// take a host out of service for good: stop lbd, then `lbd detach`.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    /// The config file (TOML); see docs/configuration.md.
    #[arg(short, long, value_name = "FILE", default_value = "/etc/lbd/lbd.toml")]
    config: PathBuf,
    /// What happens to forwarding when lbd stops on SIGTERM or SIGINT (a crash or a failed
    /// start always keeps what is attached).
    #[arg(long, value_enum, default_value_t = OnExit::Keep)]
    on_exit: OnExit,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    BackendHost(backend_host::Args),
    Detach(DetachArgs),
}

/// Removes what a stopped lbd left on this host: forwarding stops
///
/// The balancer's links and pins, its saved state, its managed neighbour entries, the VIP
/// addresses' blackhole routes and the VIP routes it announced. A stop keeps all of that
/// (--on-exit keep); this takes the host out of service for good. Refused while lbd runs on the same pin_path
/// (stop it first: with [announce], its stop withdraws the VIPs). Exits non-zero, naming them,
/// if any stay.
///
/// Example: systemctl stop lbd && lbd detach --config /etc/lbd/lbd.toml
#[derive(clap::Args)]
struct DetachArgs {
    /// The config file lbd ran with (its pin_path, state_file, interfaces, [announce]).
    #[arg(short, long, value_name = "FILE", default_value = "/etc/lbd/lbd.toml")]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    // A SIGHUP before the handlers are installed (a config deploy signalling an lbd that is just
    // starting) must not kill lbd by its default action: ignored until `run` installs them.
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    // Logs go to stderr (stdout is for output), in colour only on a terminal: journald and
    // log files get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(run(args));
    // Walks of the flow table still running on the blocking pool are abandoned, not waited for.
    runtime.shutdown_background();
    result
}

async fn run(args: Args) -> anyhow::Result<()> {
    match &args.command {
        Some(Command::BackendHost(args)) => Ok(backend_host::main(args).await?),
        Some(Command::Detach(args)) => agent::detach::detach(&args.config),
        None => agent::run::run(&args.config, args.on_exit).await,
    }
}
