//! lbd's event loop: signals, health events, the data plane's cache refresh every second, and
//! the flow-table walks it starts. Nothing in it waits for a walk: a walk of tens of millions
//! of flows takes tens of seconds, and the loop must meanwhile take health events, refresh the
//! caches and stop on SIGTERM. It measures how late its own 1-second tick runs ([`LoopLag`]).
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::mpsc,
    task::JoinHandle,
};
use tracing::{error, info, warn};

use super::{Agent, FlowReset};
use crate::{
    api::Shared,
    health::{HealthEvent, HealthEvents},
};

/// How often lbd walks the flow table for its census (the table's fill, and the open
/// connections of least-conn VIPs).
pub const FLOW_CENSUS: Duration = Duration::from_secs(10);
/// A census walk that took `d` starts the next `CENSUS_SPACING` × `d` after its own start at
/// the earliest: however big the table, the walks take at most 5 % of a core.
const CENSUS_SPACING: u32 = 20;
/// What the data plane caches per CPU (next hops) expires every `CACHE_REFRESH`: route and
/// neighbour changes apply within it without a FIB lookup per packet. The loop's lag is
/// measured on this tick.
const CACHE_REFRESH: Duration = Duration::from_secs(1);
/// How often the backends' next hops are looked up again (routes change; the kernel keeps the
/// managed neighbour entries resolved in between), and the VIP addresses' blackhole routes
/// checked (one someone deleted is put back), the balancer's links (`links.rs`), and the rings
/// against the health checks (`Agent::health_drift`).
const HOST_REFRESH: Duration = Duration::from_secs(5);
/// The window of [`LoopLag::recent_max`], in ticks of [`CACHE_REFRESH`].
const RECENT_TICKS: usize = 60;

/// The signals lbd answers. Installed first thing at start (before the maps are loaded), so a
/// SIGHUP or SIGTERM during a slow start is held for the loop instead of killing lbd by the
/// default action.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Needs a tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// How late the event loop's 1-second tick ran: the most since lbd started and the most in the
/// last minute. A loop that something blocks (a walk done in it, a slow handler on its thread)
/// runs its tick late by as long.
#[derive(Default)]
pub struct LoopLag {
    max_ns: AtomicU64,
    recent: Mutex<VecDeque<Duration>>,
}

impl LoopLag {
    fn record(&self, lag: Duration) {
        self.max_ns.fetch_max(lag.as_nanos() as u64, Ordering::Relaxed);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_TICKS {
            recent.pop_front();
        }
        recent.push_back(lag);
    }

    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns.load(Ordering::Relaxed))
    }

    pub fn recent_max(&self) -> Duration {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().copied().max().unwrap_or_default()
    }
}

/// Runs until SIGTERM or SIGINT. Walks of the flow table (the census, resets of a
/// down backend's flows) and the second void of removed VIPs' flows run on tasks of their own.
pub async fn run(agent: Shared, mut health: HealthEvents, mut signals: Signals) {
    let (voids_tx, mut voids) = mpsc::unbounded_channel();
    let (resets_tx, resets) = mpsc::unbounded_channel();
    let lag = {
        let mut a = agent.lock().await;
        a.voids_due = Some(voids_tx);
        // Voids left by the start-up's reconcile.
        a.schedule_voids();
        a.loop_lag.clone()
    };
    tokio::spawn(reset_flows(agent.clone(), resets));
    let mut caches = tokio::time::interval(CACHE_REFRESH);
    caches.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut census = tokio::time::interval(FLOW_CENSUS);
    census.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut host = tokio::time::interval(HOST_REFRESH);
    host.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // At most one census at a time: a walk slower than the period (with its spacing) skips the
    // ticks it spans.
    let mut counting: Option<JoinHandle<()>> = None;
    let mut announce = tokio::time::interval(crate::announce::RETRY);
    announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reading_bird: Option<JoinHandle<()>> = None;
    // When lbd stops, if a signal started a drain (see `stop`).
    let mut drain_ends: Option<Instant> = None;
    loop {
        tokio::select! {
            due = caches.tick() => {
                lag.record(due.elapsed());
                let mut a = agent.lock().await;
                if let Err(e) = a.refresh_caches() {
                    error!("refreshing the data plane's caches: {e}");
                }
                // The status page's 1-second samples (served on the metrics listener).
                if a.config.metrics.is_some() {
                    match a.stats() {
                        Ok(stats) => a.samples.record(&stats),
                        Err(e) => error!("reading the counters for the status page: {e}"),
                    }
                }
                if let Err(e) = a.expire_denies() {
                    error!("removing expired denies: {e}");
                }
            }
            _ = host.tick() => {
                let mut a = agent.lock().await;
                if let Err(e) = a.refresh_host() {
                    error!("keeping the backends' next hops resolved: {e}");
                }
                a.check_links();
                a.follow_host();
                for event in a.health_drift() {
                    warn!(vip = event.key.0, backend = %event.key.1, "{}: applying the check's state", event.reason);
                    if let Some(reset) = health_changed(&mut a, &event) {
                        let _ = resets_tx.send(reset);
                    }
                }
            }
            _ = census.tick() => {
                if counting.as_ref().is_none_or(JoinHandle::is_finished) {
                    counting = Some(tokio::spawn(census_task(agent.clone())));
                }
            }
            Some(at) = voids.recv() => {
                let agent = agent.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    if let Err(e) = agent.lock().await.void_again(Instant::now()) {
                        error!("voiding the flows of removed VIPs: {e}");
                    }
                });
            }
            _ = announce.tick() => {
                let socket = {
                    let mut a = agent.lock().await;
                    a.announce();
                    a.bird_socket()
                };
                if let Some(socket) = socket.filter(|_| reading_bird.as_ref().is_none_or(JoinHandle::is_finished)) {
                    reading_bird = Some(tokio::spawn(read_bird(agent.clone(), socket)));
                }
            }
            _ = until(drain_ends) => { info!("drain over: stopping"); break }
            _ = signals.int.recv() => { info!("SIGINT"); if stop(&agent, &mut drain_ends).await { break } }
            _ = signals.term.recv() => { info!("SIGTERM"); if stop(&agent, &mut drain_ends).await { break } }
            _ = signals.hup.recv() => reload(&agent).await,
            Some(event) = health.recv() => {
                if let Some(reset) = health_changed(&mut *agent.lock().await, &event) {
                    let _ = resets_tx.send(reset);
                }
            }
        }
    }
    // Voids still due: the packets in flight are through by now, or within PACKETS_IN_FLIGHT.
    tokio::time::sleep(super::reconcile::PACKETS_IN_FLIGHT).await;
    if let Err(e) = agent.lock().await.void_again(Instant::now()) {
        error!("voiding the flows of removed VIPs: {e}");
    }
}

/// SIGTERM or SIGINT: whether to stop now. With `[announce]`, lbd first withdraws every VIP and
/// keeps forwarding for `announce.drain_seconds` while the routers move the traffic to other
/// hosts (`drain_ends`); a second signal stops it at once.
async fn stop(agent: &Shared, drain_ends: &mut Option<Instant>) -> bool {
    if drain_ends.is_some() {
        info!("stopping now, before the drain is over");
        return true;
    }
    match agent.lock().await.stop_announcing() {
        Some(drain) if !drain.is_zero() => {
            info!(
                seconds = drain.as_secs(),
                "withdrew every VIP; forwarding for announce.drain_seconds while the routers move the traffic away, then stopping (signal again to stop now)"
            );
            *drain_ends = Some(Instant::now() + drain);
            false
        }
        _ => true,
    }
}

/// Completes at `at`; never without one.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Reads BIRD's state off the event loop and off the agent lock (a command may take up to
/// `bird::CONTROL_TIMEOUT`), then gives it to the agent.
async fn read_bird(agent: Shared, socket: std::path::PathBuf) {
    let started = Instant::now();
    match tokio::task::spawn_blocking(move || crate::announce::bird::read(&socket)).await {
        Ok(result) => agent.lock().await.bird_read(result, started),
        Err(e) => error!("reading BIRD's state: {e}"),
    }
}

/// A backend went down or came back: its VIP's ring follows. Returns the backend whose flows
/// to reset (`on_down = "reset-flows"`), with its name for the log.
fn health_changed(agent: &mut Agent, event: &HealthEvent) -> Option<FlowReset> {
    match agent.health_event(event) {
        Ok(reset) => reset,
        Err(e) => {
            error!("health change of {} {} not applied: {e}", event.key.0, event.key.1);
            None
        }
    }
}

/// Removes the flows of down backends from the flow table, one walk at a time, off the agent
/// lock and off the event loop; not (or no more) those of a backend up again meanwhile.
async fn reset_flows(agent: Shared, mut resets: mpsc::UnboundedReceiver<FlowReset>) {
    while let Some(reset) = resets.recv().await {
        let what = reset.to_string();
        let table = agent.lock().await.datapath.flow_table();
        let walked = match table {
            Ok(_) if !reset.wanted() => Ok(None),
            Ok(mut table) => {
                let r = reset.clone();
                match tokio::task::spawn_blocking(move || table.remove_backend(r.id, &r.wanted)).await {
                    Ok(removed) => removed.map(Some).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let mut a = agent.lock().await;
        match walked {
            Ok(None) => info!(
                backend = what,
                "not resetting the flows of a backend up again (or gone) since it went down"
            ),
            Ok(Some(removed)) => {
                // The connections it counted open are closed: least-conn must not weigh them.
                if let Err(e) = a.uncount_connections(reset.id, removed.counted) {
                    error!("resetting the flows of {what}: {e}");
                }
                let stopped = if reset.wanted() { "" } else { " (stopped: the backend is up again)" };
                info!(backend = what, flows = removed.flows, "reset the flows of a down backend{stopped}");
            }
            Err(e) => error!("resetting the flows of {what}: {e}"),
        }
        a.reset_done(&reset);
    }
}

/// Walks the flow table (off the agent lock and off the event loop): keeps its fill for the
/// metrics and corrects the least-conn counts that drifted. Returns only after the spacing
/// that the walk's time asks for.
async fn census_task(agent: Shared) {
    let census = match agent.lock().await.flow_census() {
        Ok(c) => c,
        Err(e) => return error!("walking the flow table for its census: {e}"),
    };
    let started = Instant::now();
    let found = match tokio::task::spawn_blocking(move || census.run()).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return error!("walking the flow table for its census: {e}"),
        Err(e) => return error!("walking the flow table for its census: {e}"),
    };
    let took = started.elapsed();
    let walk_ms = took.as_millis() as u64;
    match agent.lock().await.take_census(&found) {
        Ok(corrections) => {
            for (vip, backend, was, now) in corrections {
                info!(vip, %backend, was, now, walk_ms, "corrected a backend's count of open connections from the flow table");
            }
        }
        Err(e) => error!("correcting open connections: {e}"),
    }
    tokio::time::sleep_until((started + took * CENSUS_SPACING).into()).await;
}

/// SIGHUP: the config file again, applied as a whole or not at all.
async fn reload(agent: &Shared) {
    let mut a = agent.lock().await;
    let Some(file) = a.config_file.clone() else { return };
    let result = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
        .and_then(|text| a.apply_text(&text, &file.display().to_string()).map_err(|e| e.to_string()));
    match result {
        Ok(plan) => {
            info!(file = %file.display(), vips = plan.len(), "SIGHUP: config applied");
            super::start::warn_if_token_readable(&a.config, &file);
        }
        // (If what was written of it could not be undone, the line before says so.)
        Err(e) => error!("SIGHUP: config not applied: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_keeps_the_maximum_and_the_last_minutes() {
        let lag = LoopLag::default();
        assert_eq!((lag.max(), lag.recent_max()), (Duration::ZERO, Duration::ZERO));
        lag.record(Duration::from_millis(300));
        for _ in 0..RECENT_TICKS - 1 {
            lag.record(Duration::from_millis(2));
        }
        assert_eq!(lag.recent_max(), Duration::from_millis(300));
        lag.record(Duration::from_millis(1));
        assert_eq!(lag.recent_max(), Duration::from_millis(2), "a minute on, the stall is out of the window");
        assert_eq!(lag.max(), Duration::from_millis(300));
    }
}
