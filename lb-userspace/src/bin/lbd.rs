//! lbd: the balancer's agent. Loads and attaches the XDP balancer, keeps the maps in the state
//! the config file and the control API ask for, and serves the API.
use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::{
    agent::{event_loop, start},
    api, backend_host, metrics,
};
use tokio::sync::Mutex;
use tracing::info;

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
/// On backend hosts, `lbd backend-host --config FILE` sets up decapsulation and the VIPs.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    /// The config file (TOML); see docs/configuration.md.
    #[arg(short, long, value_name = "FILE", default_value = "/etc/lbd/lbd.toml")]
    config: PathBuf,
    /// What happens to forwarding when lbd stops (a crash always keeps it).
    #[arg(long, value_enum, default_value_t = OnExit::Keep)]
    on_exit: OnExit,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    BackendHost(backend_host::Args),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnExit {
    /// Leave the balancer attached and its maps pinned: forwarding goes on, the next lbd adopts it.
    Keep,
    /// Detach the balancer and remove its pins and saved state: forwarding stops.
    Detach,
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
    if let Some(Command::BackendHost(args)) = &args.command {
        return Ok(backend_host::main(args).await?);
    }
    // First: signals during the start are held for the loop (see start::start).
    let signals = event_loop::Signals::install().context("installing the signal handlers")?;
    if let Err(e) = start::raise_open_file_limit() {
        tracing::warn!(
            "could not raise the open-file limit (health checks of many backends may run out): {e}"
        );
    }
    let (agent, health) = start::start(&args.config)?;
    let socket = agent.config.api_socket.clone();
    let metrics_address = agent.config.metrics;
    let agent: api::Shared = Arc::new(Mutex::new(agent));

    // A control API that cannot be served stops lbd here (forwarding goes on: it is pinned).
    let listener = api::bind(&socket)?;
    info!(socket = %socket.display(), "control API listening");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, agent.clone(), async {
        let _ = stop_rx.await;
    }));
    // Prometheus metrics; a taken address stops lbd here (forwarding goes on: it is pinned).
    let metrics = match metrics_address {
        Some(address) => {
            let listener = metrics::bind(address)
                .await
                .with_context(|| format!("listening on {address} for metrics (`metrics` in the config)"))?;
            info!(%address, "metrics endpoint listening on /metrics");
            Some(tokio::spawn(metrics::serve(listener, agent.clone())))
        }
        None => None,
    };
    event_loop::run(agent.clone(), health, signals).await;
    let _ = stop_tx.send(());
    if let Some(m) = metrics {
        m.abort();
    }
    server.await.context("API server task")?.context("API server")?;
    let _ = std::fs::remove_file(&socket);
    let mut a = agent.lock().await;
    if args.on_exit == OnExit::Detach {
        for interface in &a.config.interfaces {
            a.datapath.unpin_link(interface)?;
        }
        a.datapath.unpin_maps()?;
        if let Some(host) = &mut a.host {
            host.clear();
        }
        let _ = std::fs::remove_file(&a.state_file);
        info!("detached: forwarding stops as lbd exits");
    } else {
        info!("exiting; the balancer keeps forwarding (pinned)");
    }
    Ok(())
}
