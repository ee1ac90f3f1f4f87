//! lbd's life: start (or adopt), serve the API and metrics, run the event loop until a stop
//! signal, then leave forwarding running or detach it.
use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{event_loop, start};
use crate::{api, metrics};

/// How long a stop waits for the API's open connections to finish their calls.
const API_CLOSE: std::time::Duration = std::time::Duration::from_secs(5);

/// What happens to forwarding when lbd stops on SIGTERM or SIGINT (a crash or a failed start
/// always keeps what is attached).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Leave the balancer attached and its maps pinned: forwarding goes on, the next lbd adopts it
    /// (and the host state: managed neighbour entries, VIP blackhole routes).
    Keep,
    /// Detach the balancer and remove its pins, saved state, managed neighbour entries and VIP
    /// blackhole routes: forwarding stops.
    Detach,
}

/// Runs lbd on `config_file` until SIGTERM or SIGINT.
pub async fn run(config_file: &Path, on_exit: OnExit) -> anyhow::Result<()> {
    // First: signals during the start are held for the loop (see start::start).
    let signals = event_loop::Signals::install().context("installing the signal handlers")?;
    if let Err(e) = start::raise_open_file_limit() {
        tracing::warn!(
            "could not raise the open-file limit (health checks of many backends may run out): {e}"
        );
    }
    // The API socket and the metrics listener are bound first: one that cannot be served stops
    // lbd there, before it attaches, applies or announces anything.
    let start::Started { agent, health, listeners } = start::start(config_file)?;
    let socket = agent.config.api_socket.clone();
    let agent: api::Shared = Arc::new(Mutex::new(agent));

    let listener = listeners.api.listen().with_context(|| format!("listening on {}", socket.display()))?;
    info!(socket = %socket.display(), "control API listening");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, agent.clone(), async {
        let _ = stop_rx.await;
    }));
    let metrics = listeners.metrics.map(|(address, listener)| {
        info!(%address, "metrics endpoint listening on /metrics");
        tokio::spawn(metrics::serve(listener, agent.clone()))
    });
    crate::service::ready();
    event_loop::run(agent.clone(), health, signals).await;
    crate::service::stopping();
    let _ = stop_tx.send(());
    if let Some(m) = metrics {
        m.abort();
    }
    // Calls in flight finish; a client that holds its connection open (a stalled request, a
    // forgotten `nc`) does not hold the stop.
    let mut server = server;
    match tokio::time::timeout(API_CLOSE, &mut server).await {
        Ok(done) => done.context("API server task")?.context("API server")?,
        Err(_) => {
            warn!(seconds = API_CLOSE.as_secs(), "API connections still open after the stop: closed");
            server.abort();
        }
    }
    let _ = std::fs::remove_file(&socket);
    let mut a = agent.lock().await;
    if on_exit == OnExit::Detach {
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
