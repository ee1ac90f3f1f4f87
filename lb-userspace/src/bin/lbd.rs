//! lbd: the balancer's agent. Loads and attaches the XDP balancer, keeps the maps in the state
//! the config file and the control API ask for, and serves the API.
use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::{agent::start, api, backend_host, metrics};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::Mutex,
};
use tracing::{error, info};

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
    /// The config file (TOML); see README, "Configuration".
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if let Some(Command::BackendHost(args)) = &args.command {
        return Ok(backend_host::main(args).await?);
    }
    let (agent, mut health) = start::start(&args.config)?;
    let socket = agent.config.api_socket.clone();
    let metrics_address = agent.config.metrics;
    let agent: api::Shared = Arc::new(Mutex::new(agent));

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(socket.clone(), agent.clone(), async {
        let _ = stop_rx.await;
    }));
    info!(socket = %socket.display(), "control API listening");
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
    // What the data plane caches per CPU expires every second: route and neighbour changes
    // apply within a second without a FIB lookup per packet, and every active flow is seen by
    // the flow table (so its LRU keeps it) once a second.
    let mut caches = tokio::time::interval(std::time::Duration::from_secs(1));
    // least-conn counts drift when connections leave without a FIN or RST the balancer saw.
    let mut recount = tokio::time::interval(CONNECTION_RECOUNT);
    recount.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = recount.tick() => recount_connections(&agent).await,
            _ = caches.tick() => {
                if let Err(e) = agent.lock().await.refresh_caches() {
                    error!("refreshing the data plane's caches: {e}");
                }
            }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT"); break }
            _ = term.recv() => { info!("SIGTERM"); break }
            _ = hup.recv() => reload(&agent).await,
            Some(event) = health.recv() => health_changed(&agent, event).await,
        }
    }
    let _ = stop_tx.send(());
    if let Some(m) = metrics {
        m.abort();
    }
    server.await.context("API server task")?.context("API server")?;
    let _ = std::fs::remove_file(&socket);
    let a = agent.lock().await;
    if args.on_exit == OnExit::Detach {
        for interface in &a.config.interfaces {
            a.datapath.unpin_link(interface)?;
        }
        a.datapath.unpin_maps()?;
        let _ = std::fs::remove_file(&a.state_file);
        info!("detached: forwarding stops as lbd exits");
    } else {
        info!("exiting; the balancer keeps forwarding (pinned)");
    }
    Ok(())
}

/// A backend went down or came back: its VIP's ring follows; with `on_down = "reset-flows"`
/// its flows are removed from the flow table (off the agent lock: the walk takes a while).
async fn health_changed(agent: &api::Shared, event: lb_userspace::health::HealthEvent) {
    let (reset, table) = {
        let mut a = agent.lock().await;
        match a.health_event(&event) {
            Ok(reset) => (reset, a.datapath.flow_table()),
            Err(e) => {
                error!("health change of {} {} not applied: {e}", event.key.0, event.key.1);
                return;
            }
        }
    };
    let (Some((id, what)), Ok(mut table)) = (reset, table) else { return };
    match tokio::task::spawn_blocking(move || table.remove_backend(id)).await {
        Ok(Ok(n)) => {
            info!(backend = what, flows = n, "reset the flows of a down backend");
            // Cached copies of them too.
            if let Err(e) = agent.lock().await.refresh_caches() {
                error!("refreshing the data plane's caches: {e}");
            }
        }
        Ok(Err(e)) => error!("resetting the flows of {what}: {e}"),
        Err(e) => error!("resetting the flows of {what}: {e}"),
    }
}

/// How often lbd recounts the open connections of least-conn VIPs from the flow table.
const CONNECTION_RECOUNT: std::time::Duration = std::time::Duration::from_secs(10);

/// Recounts the least-conn backends' open connections from the flow table (off the agent lock)
/// and corrects the data plane's counts that drifted.
async fn recount_connections(agent: &api::Shared) {
    let recount = match agent.lock().await.connection_recount() {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => return error!("recounting open connections: {e}"),
    };
    let found = match tokio::task::spawn_blocking(move || recount.run()).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return error!("recounting open connections: {e}"),
        Err(e) => return error!("recounting open connections: {e}"),
    };
    match agent.lock().await.correct_connections(&found) {
        Ok(corrections) => {
            for (vip, backend, was, now) in corrections {
                info!(vip, %backend, was, now, "corrected a backend's count of open connections from the flow table");
            }
        }
        Err(e) => error!("correcting open connections: {e}"),
    }
}

async fn reload(agent: &api::Shared) {
    let mut a = agent.lock().await;
    let Some(file) = a.config_file.clone() else { return };
    let result = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
        .and_then(|text| a.apply_text(&text, &file.display().to_string()).map_err(|e| e.to_string()));
    match result {
        Ok(plan) => info!(file = %file.display(), vips = plan.len(), "SIGHUP: config applied"),
        Err(e) => error!("SIGHUP: config not applied, nothing changed: {e}"),
    }
}
