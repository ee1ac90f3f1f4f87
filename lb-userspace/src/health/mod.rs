//! Health checks of the backends: what to check ([`CheckSpec`]), the per-backend state machine
//! ([`HealthState`]) and the prober that runs the checks ([`Prober`]).
//!
//! ```text
//! CheckSettings::resolve(vip_port) -> Result<CheckSpec, HealthConfigError>   config/API input
//! CheckSpec::validate(&self)       -> Result<(), HealthConfigError>
//! HealthState::record(&mut self, ok, rise, fall) -> Option<Transition>       pure
//! Prober::new() / Prober::on_own_thread() -> (Prober, HealthEvents)
//! Prober::set_targets(&mut self, Vec<Target>) -> Result<(), InvalidTarget>   kept ones keep state
//! Prober::status(&self) -> Vec<(TargetKey, TargetStatus)>, status_of(&key), cpu_time()
//! ```
//!
//! Checks: `none` (never probed, always up), `tcp` (connect, then close with an RST), `http`
//! (HTTP/1.1 GET with `Host` and `Connection: close`; healthy if the status is in range) and
//! `udp` (one datagram out; healthy if a reply containing `expect` comes back). Every probe goes
//! to the backend's own address and is bounded by the check's timeout, which is shorter than
//! its interval, so a target never has two probes in flight.
//!
//! A backend starts up, goes down after `fall` consecutive failures and comes back after `rise`
//! consecutive successes; a result that agrees with the state restarts the count, so a backend
//! failing every other probe does not flap. Each state change is logged with its reason, counted
//! in [`TargetStatus::transitions`] and sent as a [`HealthEvent`].
//!
//! Cost: a probed target is one tokio task with one timer. A TCP probe reuses a pooled socket
//! and allocates nothing: a SYN, a look at the socket on a later 1 ms timer tick (batched with
//! every other probe due then, no epoll), an RST by `connect(AF_UNSPEC)` (see `tcp`). Most of
//! its CPU is the kernel's (SYN, RST). `cargo run --release -p lb-bench --bin bench_health`
//! measures 10,000 targets probed every second.
mod probe;
mod prober;
mod spec;
mod state;
mod tcp;
#[cfg(test)]
mod test_servers;

pub use probe::ProbeError;
pub use prober::{HealthEvent, HealthEvents, InvalidTarget, Prober, Target, TargetKey, TargetStatus};
pub use spec::{
    CheckKind, CheckSettings, CheckSpec, HealthConfigError, DEFAULT_STATUS, MAX_COUNT, MAX_INTERVAL,
    MAX_UDP_PAYLOAD, MIN_INTERVAL,
};
pub use state::{HealthState, Transition};
