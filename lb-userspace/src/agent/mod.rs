//! The agent's state and the operations the API, SIGHUP and start-up perform on it. Every
//! change is validated as a whole first; an invalid one leaves the running state untouched.
mod announce;
pub mod detach;
pub mod event_loop;
pub mod fingerprint;
pub mod flows;
pub mod host;
mod links;
pub mod pin_lock;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod retired;
pub mod route_marks;
pub mod run;
pub mod start;
mod stats;
pub mod top;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use lb_common::FLOW_IDLE_EVICT;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, error, info, warn};

pub use self::stats::{BackendStats, Stats, VipStats};
use crate::{
    config::{self, BackendSpec, Config, Invalid, OnDown, Scheduler, Source, Vip, VipSpec},
    datapath::{Datapath, DatapathError},
    health::{HealthEvent, Prober, Target, TargetStatus},
    security::{Deny, Prefix, Security},
};
use reconcile::{Applied, ApplyError, Ids, PlanEntry};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Apply(#[from] ApplyError),
    #[error("{0}")]
    Host(#[from] crate::host::HostError),
    #[error(
        "cannot save the state to {path}: {source}; nothing changed (a change is saved before it is applied: check the disk and the directory of `state_file`)"
    )]
    Persist { path: PathBuf, source: std::io::Error },
}

/// What survives an agent restart besides the maps: the desired state and the ids it was
/// given, written before every change, and the backends that were down (a restarted agent
/// starts them down).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavedState {
    pub source: Source,
    pub vips: Vec<Vip>,
    pub ids: Ids,
    /// Saved by an lbd without it: none down.
    #[serde(default)]
    pub down: reconcile::Down,
    /// `lbctl host drain`: this host announces no VIP (with `[announce]`).
    #[serde(default)]
    pub host_drained: bool,
    /// The global deny list (`[security]`) as applied.
    #[serde(default)]
    pub security: Security,
    /// The operator's denies (`lbctl deny add`), until removed or expired.
    #[serde(default)]
    pub denies: Vec<Deny>,
    /// Backends removed whose next hops stay managed for their flows ([`retired`]).
    #[serde(default)]
    pub retired: retired::Retired,
    /// The marks of the routes lbd made ([`route_marks`]); saved by an lbd without it: none.
    #[serde(default)]
    pub route_marks: Option<route_marks::RouteMarks>,
}

impl SavedState {
    /// The saved state, `None` if there is no file. An unreadable or corrupt file is an error:
    /// starting from the config file instead would silently change what is forwarded.
    pub fn read(path: &Path) -> Result<Option<SavedState>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read the saved state {}: {e}", path.display())),
        };
        let mut state: SavedState = serde_json::from_str(&text).map_err(|e| {
            format!(
                "the saved state {} is corrupt ({e}): move it away to start from the config file",
                path.display()
            )
        })?;
        // Saved by an lbd without schedulers: `hash = "source"` is the source-hash scheduler.
        state.vips.iter_mut().for_each(Vip::normalize);
        Ok(Some(state))
    }
}

/// The event loop's periodic walk of the flow table. It counts the flows the table holds,
/// confirmed and not (the metrics' `lb_flow_table_flows`), the confirmed ones still active (no
/// new flow may take their entries: `active_at`), and, per least-conn backend, the
/// flows still marked as open connections (`FLOW_COUNTED`): what the data plane's counts should
/// be. Those drift when flows leave the table without a FIN or RST the balancer saw (evicted
/// when idle, clients gone). It also forgets stale policy stamps (`FlowTable::census_walk`).
pub struct FlowCensus {
    table: crate::datapath::FlowTable,
    /// Least-conn backend id -> its owner then (VIP, address) and the data plane's count (as
    /// stored) before the walk.
    before: BTreeMap<u32, (crate::health::TargetKey, u64)>,
    retired: retired::RetiredFlows,
}

/// What a [`FlowCensus`] found.
pub struct Census {
    before: BTreeMap<u32, (crate::health::TargetKey, u64)>,
    /// Backend id -> flows marked open.
    counted: BTreeMap<u32, u64>,
    fill: TableFill,
    /// When the retired backends' flows were last used.
    retired: retired::RetiredFlows,
    /// Flows whose stale policy stamp the walk forgot.
    pub stamps_forgotten: u64,
    /// Backend id -> counted connections the walk stopped counting (idle past [`COUNT_IDLE`]).
    expired: BTreeMap<u32, u64>,
}

/// How full the flow table is, as a census found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableFill {
    /// The table's entries: the flows it can hold.
    pub entries: u64,
    pub confirmed: u64,
    /// Confirmed flows with a packet in the last [`FLOW_IDLE_EVICT`] clock ticks: the entries
    /// no new flow may take. (Finished connections stay in the table as confirmed flows until
    /// new flows take their entries: the fill alone says little; this is the table's pressure.)
    #[serde(default)]
    pub active: u64,
    pub unconfirmed: u64,
    /// The walk saw the whole table (else the counts are lower bounds: heavy churn).
    pub complete: bool,
    /// When the walk ended, in seconds since the Unix epoch.
    pub at_unix: u64,
}

impl FlowCensus {
    /// A census of `table` alone: no least-conn counts to correct, no removed backends to follow.
    pub fn of_table(table: crate::datapath::FlowTable) -> FlowCensus {
        FlowCensus { table, before: BTreeMap::new(), retired: retired::RetiredFlows::of(&Default::default()) }
    }

    /// Walks the flow table (blocking: it reads the whole mapped table).
    pub fn run(self) -> Result<Census, DatapathError> {
        let mut counted: BTreeMap<u32, u64> = BTreeMap::new();
        let (mut unconfirmed, mut active) = (0, 0);
        let now = crate::datapath::flow_clock_now();
        let mut retired = self.retired;
        // Unconfirmed flows are counted as connections only once they are confirmed (the data
        // plane's way too).
        let count_idle = lb_common::flow_clock(COUNT_IDLE.as_nanos() as u64);
        let census = self.table.census_walk(now, count_idle, |_, value, confirmed| {
            retired.see(value);
            unconfirmed += u64::from(!confirmed);
            active += u64::from(confirmed && active_at(now, value.last_tick));
            if confirmed && value.counted && self.before.contains_key(&value.backend) {
                *counted.entry(value.backend).or_default() += 1;
            }
        })?;
        let (walk, stamps_forgotten) = (census.walk, census.stamps_forgotten);
        if stamps_forgotten > 0 {
            debug!(flows = stamps_forgotten, "forgot stale policy stamps");
        }
        let expired = census.counts_expired;
        let expired_total: u64 = expired.values().sum();
        if expired_total > 0 {
            info!(
                connections = expired_total,
                idle_seconds = COUNT_IDLE.as_secs(),
                "least-conn: connections with no packet within idle_seconds no longer count against their backends"
            );
        }
        let fill = TableFill {
            entries: self.table.entries(),
            confirmed: walk.flows - unconfirmed,
            active,
            unconfirmed,
            complete: walk.complete,
            at_unix: crate::security::now_unix(),
        };
        Ok(Census { before: self.before, counted, fill, retired, stamps_forgotten, expired })
    }
}

/// Whether a reload names other interfaces (their order is no change).
fn interfaces_changed(new: &[String], old: &[String]) -> bool {
    let set = |names: &[String]| names.iter().cloned().collect::<std::collections::BTreeSet<String>>();
    set(new) != set(old)
}

/// How long a counted (least-conn) connection may go without a packet before the census stops
/// counting it: IPVS's default timeout of an established TCP connection, as for removed
/// backends ([`retired::RETIRED_IDLE`]).
pub const COUNT_IDLE: std::time::Duration = retired::RETIRED_IDLE;

/// The longest an operator's deny may be given (`lbctl deny add --for`): ten years.
pub const MAX_DENY_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// A down backend's flows to remove (`on_down = "reset-flows"`).
#[derive(Debug, Clone)]
pub struct FlowReset {
    pub id: u32,
    pub key: crate::health::TargetKey,
    /// Cleared by the agent once the backend is up again (or gone): a walk queued or under
    /// way stops removing its flows, which may be its new connections'.
    pub wanted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FlowReset {
    pub fn wanted(&self) -> bool {
        self.wanted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl std::fmt::Display for FlowReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} backend {}", self.key.0, self.key.1)
    }
}

/// Whether `reset` is still to be done: its backend is still down, under the same id.
fn reset_due(down: &reconcile::Down, ids: &Ids, reset: &FlowReset) -> bool {
    down.contains(&reset.key) && ids.backend(&reset.key.0, reset.key.1) == Some(reset.id)
}

/// The addresses the VIP table holds (none without `[announce]`).
fn announced(announcer: &Option<crate::announce::Announcer>) -> std::collections::BTreeSet<IpAddr> {
    announcer.as_ref().map(|a| a.announced()).unwrap_or_default()
}

/// The backends that have a health check (of any type, `none` included), by VIP name.
fn checked_backends(vips: &[Vip]) -> reconcile::Down {
    vips.iter()
        .flat_map(|v| {
            v.backends.iter().filter(|b| v.check_of(b).is_some()).map(|b| (v.name.clone(), b.address))
        })
        .collect()
}

/// Whether health event `event` still says what the prober holds of its target (`checked`):
/// one queued before its backend was removed (or removed and added again, its new check
/// starting up) is stale, and must not take the backend down for good. (The prober sets a
/// target's state before it sends the event.)
fn still_true(event: &HealthEvent, checked: Option<&TargetStatus>) -> bool {
    checked.is_some_and(|s| s.up == event.up)
}

/// The count to write for a least-conn backend whose count was `before` (as stored) when a
/// census started and is `now`, the census having found `counted` flows marked open; `None`:
/// leave it. The walk raced the data plane's own adds and subtracts, so `counted` is off by at
/// most the moves made meanwhile (`now - before`): the count is corrected to `counted` plus
/// those moves, and only where it drifted by more than them. Exact on a quiet backend; on a busy
/// one drift no longer builds up (an error of one walk's moves at most, the next census's to
/// mend).
pub fn corrected_count(before: u64, now: u64, counted: u64) -> Option<u64> {
    // Stored counts are read as i64: a correction may race a decrement below zero for a moment.
    let (before, now, counted) = (before as i64, now as i64, counted as i64);
    let moved = now.wrapping_sub(before);
    let drift = counted.wrapping_sub(before);
    let target = counted.saturating_add(moved).max(0);
    (drift.unsigned_abs() > moved.unsigned_abs() && target != now).then_some(target as u64)
}

/// Whether a confirmed flow whose last packet came at clock tick `last` is active at tick `now`:
/// a new flow may not take its entry (the data plane takes one idle for [`FLOW_IDLE_EVICT`]
/// ticks or more: lb-ebpf/src/flow_table.rs, `record`). A tick ahead of `now` (a packet since
/// the walk began) is active; ticks wrap.
fn active_at(now: u32, last: u32) -> bool {
    (now.wrapping_sub(last) as i32) < FLOW_IDLE_EVICT as i32
}

/// The capture buffers; whoever holds the lock is the one capture running.
pub type CaptureBuffers = std::sync::Arc<tokio::sync::Mutex<crate::capture::Capturer>>;

pub struct Agent {
    pub datapath: Datapath,
    /// The desired state: the config as loaded, with every change made since.
    pub config: Config,
    pub applied: Applied,
    pub config_file: Option<PathBuf>,
    pub state_file: PathBuf,
    /// Whether this agent took over the saved state of an earlier one (with its pinned maps, if
    /// they were there).
    pub adopted: bool,
    /// Pinned links of an earlier agent whose program this one replaced in place.
    pub links_adopted: usize,
    /// Pinned links of an earlier agent that were no use (dead, in another mode): replaced by
    /// new ones.
    pub links_replaced: usize,
    pub started: std::time::SystemTime,
    /// Runs the backends' health checks (absent in tests that need none).
    pub prober: Option<Prober>,
    /// Backends whose health check failed: out of their VIP's ring until they recover.
    pub down: reconcile::Down,
    /// Forwarding and the backends' next hops (absent where lbd owns no host, e.g. in tests of
    /// the agent alone).
    pub host: Option<host::HostState>,
    /// The capture buffers (absent where the datapath has none, e.g. in packet tests).
    pub capturer: Option<CaptureBuffers>,
    /// Where the event loop learns when second voids of flows are due
    /// ([`reconcile::void_again`]); `None` until it runs.
    pub voids_due: Option<tokio::sync::mpsc::UnboundedSender<std::time::Instant>>,
    /// How late the event loop runs.
    pub loop_lag: std::sync::Arc<event_loop::LoopLag>,
    /// The flow table's fill as the last census found it (`None` before the first).
    pub table_fill: Option<TableFill>,
    /// The status page's history of rates, sampled by the event loop.
    pub samples: std::sync::Arc<crate::web::Samples>,
    /// This agent's hold on the pins, as long as it lives.
    pub pin_lock: pin_lock::PinLock,
    /// The VIP routes BIRD announces (absent without `[announce]`).
    pub announcer: Option<crate::announce::Announcer>,
    /// The operator's denies (`lbctl deny`): kept apart from the config, so that a reload of
    /// the file keeps them; saved with the state.
    pub denies: Vec<Deny>,
    /// Backends removed from the config whose flows still need their next hops ([`retired`]).
    pub retired: retired::Retired,
    /// Interfaces whose balancer was found not attached as configured ([`Self::check_links`]).
    pub link_problems: links::LinkProblems,
    /// The reset-flows walks queued or under way, by backend id.
    pub resets: BTreeMap<u32, FlowReset>,
}

impl Agent {
    /// Saves the desired state, then makes the maps hold it. The state goes first, with the ids
    /// the maps will get (their allocation is a pure function of the state), so that a state
    /// that cannot be saved changes nothing: the saved state never lags behind the maps. If the
    /// maps then fail, the previous state file comes back; the caller restores its previous
    /// desired state and applies it again ([`Self::apply_or_revert`]).
    pub fn apply(&mut self) -> Result<usize, AgentError> {
        let ids = self.allocate(&self.config.vips)?;
        let previous = self.saved_text()?;
        let retired = retired::follow(&self.retired, &self.applied.ids, &ids);
        // The retired backends follow the change, and come back with everything else if it fails.
        let before = std::mem::replace(&mut self.retired, retired);
        // So does the down set: a backend no longer checked (or no longer configured) is not down.
        let down = self.down.intersection(&checked_backends(&self.config.vips)).cloned().collect();
        let down_before = std::mem::replace(&mut self.down, down);
        if let Err(e) = self.save(&ids) {
            self.retired = before;
            self.down = down_before;
            return Err(e);
        }
        // What the host must provide comes before the maps: a refusal (forwarding off with
        // `check`) changes no map, and the new backends' next hops are resolved before a ring
        // names them.
        match self.prepare_host().and_then(|()| self.apply_maps(&ids)) {
            Ok(slots) => {
                self.warn_of_backends_without_slots();
                Ok(slots)
            }
            Err(e) => {
                self.retired = before;
                self.down = down_before;
                if let Err(e) = self.restore_saved(previous) {
                    error!("restoring the saved state after a failed change: {e}");
                }
                Err(e)
            }
        }
    }

    fn prepare_host(&mut self) -> Result<(), AgentError> {
        match &mut self.host {
            Some(host) => {
                let announced = announced(&self.announcer);
                Ok(host.prepare(&self.config, &retired::addresses(&self.retired), &announced)?)
            }
            None => Ok(()),
        }
    }

    /// Ids for `vips` after the ones the maps hold ([`Ids::allocate`]).
    fn allocate(&self, vips: &[Vip]) -> Result<Ids, ApplyError> {
        self.applied.ids.allocate(vips, &self.datapath.sizes, &self.retired.keys().copied().collect())
    }

    /// Says which backends in service got no slot of their VIP's ring (a ring scheduler gives
    /// them no new flow): at each change, not at each health event.
    fn warn_of_backends_without_slots(&self) {
        for v in self.config.vips.iter().filter(|v| v.scheduler != Scheduler::RoundRobin) {
            let Some(ring) = self.applied.rings.get(&v.name) else { continue };
            for backend in plan::without_slots(v, &self.applied.ids, &self.down, ring) {
                warn!(
                    vip = v.name,
                    %backend,
                    ring_size = v.ring_size,
                    "a backend in service got no slot of its VIP's ring at its weight, so no new flows: raise its weight (against the others') or the VIP's ring_size"
                );
            }
        }
    }

    /// Makes the maps hold the config under `ids`.
    fn apply_maps(&mut self, ids: &Ids) -> Result<usize, AgentError> {
        let cpus = self.datapath.cpus().map_err(|e| AgentError::Apply(e.into()))?;
        let now = crate::security::now_unix();
        let denies: Vec<Deny> = self.denies.iter().filter(|d| !d.expired(now)).cloned().collect();
        let desired = policy::Desired { security: &self.config.security, denies: &denies, cpus };
        let applied = reconcile::apply(
            &mut self.datapath,
            &mut self.applied,
            ids,
            &self.config.source,
            &self.config.vips,
            &self.down,
            &desired,
        );
        self.schedule_voids();
        let slots = applied?;
        self.update_checks();
        self.cancel_stale_resets();
        // What the host announces follows the rings (a VIP with no backend left is withdrawn);
        // maps that failed to take a change are first brought back (`apply_or_revert`).
        self.announce();
        Ok(slots)
    }

    /// [`Self::apply`]; if it fails, `revert` restores the previous desired state and, when the
    /// maps may hold part of the change, it is applied again.
    fn apply_or_revert(&mut self, revert: impl FnOnce(&mut Self)) -> Result<usize, AgentError> {
        self.apply().inspect_err(|e| {
            revert(self);
            if matches!(e, AgentError::Apply(ApplyError::Datapath(_))) {
                if let Err(back) = self.apply() {
                    error!("bringing the maps back to the previous state after a failed change: {back}");
                }
            }
        })
    }

    /// Tells the event loop when the next second void of flows is due, if one is.
    fn schedule_voids(&self) {
        let next = self.applied.void_again.iter().map(|(at, _)| *at).min();
        if let (Some(tx), Some(at)) = (&self.voids_due, next) {
            // No loop any more: lbd is stopping, and voids what is due on its way out.
            let _ = tx.send(at);
        }
    }

    /// Voids again the flows of VIPs removed or moved at least `PACKETS_IN_FLIGHT` before `now`.
    pub fn void_again(&mut self, now: std::time::Instant) -> Result<(), AgentError> {
        if reconcile::void_again(&mut self.datapath, &mut self.applied, now)?.is_some() {
            self.schedule_voids();
        }
        Ok(())
    }

    /// Writes the desired state with `ids`, whole or not at all (a new file renamed over the
    /// old one once it is on disk).
    fn save(&self, ids: &Ids) -> Result<(), AgentError> {
        let state = SavedState {
            source: self.config.source.clone(),
            vips: self.config.vips.clone(),
            ids: ids.clone(),
            down: self.down.clone(),
            host_drained: self.announcer.as_ref().is_some_and(|a| a.drained()),
            security: self.config.security.clone(),
            denies: self.denies.clone(),
            retired: self.retired.clone(),
            route_marks: Some(route_marks::RouteMarks::of(&self.config)),
        };
        self.write_saved(&serde_json::to_vec_pretty(&state).expect("state serializes"))
    }

    fn write_saved(&self, bytes: &[u8]) -> Result<(), AgentError> {
        use std::io::Write as _;
        let persist = |source| AgentError::Persist { path: self.state_file.clone(), source };
        if let Some(dir) = self.state_file.parent() {
            std::fs::create_dir_all(dir).map_err(persist)?;
        }
        let tmp = self.state_file.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).map_err(persist)?;
        file.write_all(bytes).and_then(|()| file.sync_all()).map_err(persist)?;
        std::fs::rename(&tmp, &self.state_file).map_err(persist)
    }

    /// The state file as it is now (`None`: there is none).
    fn saved_text(&self) -> Result<Option<Vec<u8>>, AgentError> {
        match std::fs::read(&self.state_file) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AgentError::Persist { path: self.state_file.clone(), source }),
        }
    }

    fn restore_saved(&self, previous: Option<Vec<u8>>) -> Result<(), AgentError> {
        match previous {
            Some(bytes) => self.write_saved(&bytes),
            None => std::fs::remove_file(&self.state_file)
                .map_err(|source| AgentError::Persist { path: self.state_file.clone(), source }),
        }
    }

    /// Validates `candidate` as a whole, then applies it. On any validation error nothing
    /// changes.
    fn replace(&mut self, candidate: Config, what: &str) -> Result<usize, AgentError> {
        config::check_whole(&candidate).map_err(|e| e.invalid)?;
        if let Some(problem) = self.l2dsr_routed(&candidate.vips).into_iter().next() {
            return Err(Invalid { origin: None, line: None, field: "mode".into(), message: problem }.into());
        }
        // A removed VIP's own denies go with it (a later VIP of its name starts without them):
        // said, as they may be an incident's mitigation and a rename removes the VIP too.
        let denies = self.denies.clone();
        self.denies
            .retain(|d| d.vip.as_ref().is_none_or(|name| candidate.vips.iter().any(|v| &v.name == name)));
        let dropped: Vec<Deny> = denies.iter().filter(|d| !self.denies.contains(d)).cloned().collect();
        // Out of ids is found before the state is saved, and so before the first write.
        let previous = std::mem::replace(&mut self.config, candidate);
        let slots = self.apply_or_revert(|a| {
            a.config = previous;
            a.denies = denies;
        })?;
        for d in &dropped {
            warn!(vip = d.vip.as_deref().unwrap_or_default(), prefix = %d.prefix, change = what, "the change removed the VIP: its `lbctl deny` entry went with it");
        }
        info!(change = what, slots_written = slots, "applied");
        Ok(slots)
    }

    pub fn add_vip(&mut self, spec: &VipSpec) -> Result<Vip, AgentError> {
        let vip = config::validate_vip(spec, &self.config.limits)?;
        if self.config.vips.iter().any(|v| v.name == vip.name) {
            return Err(AgentError::Conflict(format!(
                "a VIP named {:?} exists already: pick another name, or remove it first",
                vip.name
            )));
        }
        let mut candidate = self.config.clone();
        candidate.vips.push(vip.clone());
        self.replace(candidate, &format!("add vip {}", vip.name))?;
        Ok(vip)
    }

    pub fn remove_vip(&mut self, name: &str) -> Result<(), AgentError> {
        self.vip(name)?;
        let mut candidate = self.config.clone();
        candidate.vips.retain(|v| v.name != name);
        self.replace(candidate, &format!("remove vip {name}")).map(drop)
    }

    /// Denies `prefix` to `vip` (every VIP if none), for `seconds` (until removed if none).
    /// Denying a prefix again replaces its expiry.
    pub fn add_deny(
        &mut self,
        prefix: Prefix,
        vip: Option<&str>,
        seconds: Option<u64>,
    ) -> Result<Deny, AgentError> {
        if let Some(name) = vip {
            let v = self.vip(name)?;
            if v.address.is_ipv4() != prefix.address.is_ipv4() {
                return Err(Invalid {
                    origin: None,
                    line: None,
                    field: "prefix".into(),
                    message: format!(
                        "{prefix} can never match: the VIP {} is of the other family, so are its clients",
                        v.address
                    ),
                }
                .into());
            }
        }
        if let Some(s) = seconds.filter(|s| !(1..=MAX_DENY_SECONDS).contains(s)) {
            return Err(Invalid {
                origin: None,
                line: None,
                field: "seconds".into(),
                message: format!(
                    "{s} is out of range: use 1 to {MAX_DENY_SECONDS} (ten years), or none for a deny until removed"
                ),
            }
            .into());
        }
        let deny = Deny {
            prefix,
            vip: vip.map(str::to_owned),
            expires_unix: seconds.map(|s| crate::security::now_unix() + s),
        };
        let previous = self.denies.clone();
        self.denies.retain(|d| !(d.prefix == deny.prefix && d.vip == deny.vip));
        self.denies.push(deny.clone());
        self.apply_or_revert(|a| a.denies = previous)?;
        info!(prefix = %deny.prefix, vip = ?deny.vip, expires_unix = ?deny.expires_unix, "deny added");
        Ok(deny)
    }

    /// Removes an operator's deny of `prefix` (to `vip`, or the global one).
    pub fn remove_deny(&mut self, prefix: Prefix, vip: Option<&str>) -> Result<(), AgentError> {
        let previous = self.denies.clone();
        self.denies.retain(|d| !(d.prefix == prefix && d.vip.as_deref() == vip));
        if self.denies.len() == previous.len() {
            return Err(AgentError::NotFound(format!(
                "no deny of {prefix}{} was added with lbctl: `lbctl deny list` shows them (lists in the config file change with the file)",
                vip.map(|v| format!(" for VIP {v:?}")).unwrap_or_default()
            )));
        }
        self.apply_or_revert(|a| a.denies = previous)?;
        info!(%prefix, vip, "deny removed");
        Ok(())
    }

    /// Drops the operator's denies whose time is up, and applies that (the event loop calls it
    /// every second). Returns how many expired.
    pub fn expire_denies(&mut self) -> Result<usize, AgentError> {
        let now = crate::security::now_unix();
        let previous = self.denies.clone();
        self.denies.retain(|d| !d.expired(now));
        let expired = previous.len() - self.denies.len();
        if expired > 0 {
            self.apply_or_revert(|a| a.denies = previous)?;
            info!(expired, "denies expired");
        }
        Ok(expired)
    }

    pub fn vip(&self, name: &str) -> Result<&Vip, AgentError> {
        self.config.vips.iter().find(|v| v.name == name).ok_or_else(|| {
            AgentError::NotFound(format!("no VIP is named {name:?}: `lbctl vip list` shows the VIPs"))
        })
    }

    pub fn add_backend(&mut self, vip: &str, spec: &BackendSpec) -> Result<(), AgentError> {
        let current = self.vip(vip)?;
        let backend = config::validate_backend(spec, current.address)
            .map_err(|e| Invalid { field: format!("vip {vip:?}: {}", e.field), ..e })?;
        if current.backend(backend.address).is_some() {
            return Err(AgentError::Conflict(format!("{} is already a backend of {vip:?}", backend.address)));
        }
        let address = backend.address;
        self.edit_vip(vip, &format!("add backend {address} to {vip}"), |v| v.backends.push(backend))
    }

    pub fn remove_backend(&mut self, vip: &str, address: IpAddr) -> Result<(), AgentError> {
        self.backend(vip, address)?;
        self.edit_vip(vip, &format!("remove backend {address} from {vip}"), |v| {
            v.backends.retain(|b| b.address != address)
        })
    }

    pub fn set_drained(&mut self, vip: &str, address: IpAddr, drained: bool) -> Result<(), AgentError> {
        self.backend(vip, address)?;
        let what = if drained { "drain" } else { "undrain" };
        self.edit_vip(vip, &format!("{what} backend {address} of {vip}"), |v| {
            v.backends.iter_mut().filter(|b| b.address == address).for_each(|b| b.drained = drained)
        })
    }

    pub fn set_weight(&mut self, vip: &str, address: IpAddr, weight: i64) -> Result<(), AgentError> {
        let current = self.backend(vip, address)?;
        let spec = BackendSpec {
            address: address.to_string(),
            weight: Some(weight),
            drained: current.drained,
            health: None,
        };
        let checked = config::validate_backend(&spec, address)
            .map_err(|e| Invalid { field: format!("vip {vip:?}: {}", e.field), ..e })?;
        self.edit_vip(vip, &format!("set weight of {address} in {vip} to {weight}"), |v| {
            v.backends.iter_mut().filter(|b| b.address == address).for_each(|b| b.weight = checked.weight)
        })
    }

    fn backend(&self, vip: &str, address: IpAddr) -> Result<&config::Backend, AgentError> {
        self.vip(vip)?.backend(address).ok_or_else(|| {
            AgentError::NotFound(format!(
                "{address} is not a backend of {vip:?}: `lbctl backend list {vip}` shows its backends"
            ))
        })
    }

    /// Changes one VIP, re-checking its ring size against its new number of backends.
    fn edit_vip(&mut self, name: &str, what: &str, change: impl FnOnce(&mut Vip)) -> Result<(), AgentError> {
        let mut candidate = self.config.clone();
        let vip = candidate.vips.iter_mut().find(|v| v.name == name).expect("checked by the caller");
        change(vip);
        crate::maglev::check_table_size(vip.ring_size, vip.backends.len()).map_err(|e| Invalid {
            origin: None,
            line: None,
            field: format!("vip {name:?}: ring_size"),
            message: e.to_string(),
        })?;
        self.replace(candidate, what).map(drop)
    }

    /// Parses a whole config (as `lbctl apply -f` sends it) and applies its VIPs and source.
    /// Settings that need a restart must be unchanged.
    pub fn apply_text(&mut self, text: &str, origin: &str) -> Result<Vec<PlanEntry>, AgentError> {
        let candidate = self.candidate_from(text, origin)?;
        let plan = self.preview(&candidate)?;
        self.replace(candidate, &format!("apply {origin}"))?;
        Ok(plan)
    }

    /// What [`Self::apply_text`] would change, without changing anything.
    pub fn plan_text(&self, text: &str, origin: &str) -> Result<Vec<PlanEntry>, AgentError> {
        let candidate = self.candidate_from(text, origin)?;
        self.preview(&candidate)
    }

    fn preview(&self, candidate: &Config) -> Result<Vec<PlanEntry>, AgentError> {
        let cpus = self.datapath.cpus().map_err(|e| AgentError::Apply(e.into()))?;
        let now = crate::security::now_unix();
        // The operator's denies of VIPs the candidate keeps.
        let denies: Vec<Deny> = self
            .denies
            .iter()
            .filter(|d| {
                !d.expired(now) && d.vip.as_ref().is_none_or(|v| candidate.vips.iter().any(|c| &c.name == v))
            })
            .cloned()
            .collect();
        let desired = policy::Desired { security: &candidate.security, denies: &denies, cpus };
        let ids = self.allocate(&candidate.vips)?;
        Ok(reconcile::preview(&self.applied, &ids, &candidate.vips, &self.down, &desired)?)
    }

    fn candidate_from(&self, text: &str, origin: &str) -> Result<Config, AgentError> {
        let new = config::parse(text, origin)?;
        let frozen = [
            ("pin_path", new.pin_path != self.config.pin_path),
            ("api_socket", new.api_socket != self.config.api_socket),
            ("state_file", new.state_file != self.config.state_file),
            ("interfaces", interfaces_changed(&new.interfaces, &self.config.interfaces)),
            ("xdp_mode", new.xdp_mode != self.config.xdp_mode),
            ("limits", new.limits.in_effect() != self.config.limits.in_effect()),
            ("metrics", new.metrics != self.config.metrics),
            // The VIP table and the BIRD socket are opened at start.
            ("announce", new.announce != self.config.announce),
        ];
        if let Some((key, _)) = frozen.iter().find(|(_, changed)| *changed) {
            return Err(Invalid {
                origin: Some(origin.into()),
                line: None,
                field: (*key).into(),
                message: "differs from the running agent's and only takes effect when lbd restarts: keep it, or restart lbd with the new file".into(),
            }
            .into());
        }
        Ok(new)
    }

    /// The buffers a capture reads: lock them first (one capture at a time), then
    /// [`Self::start_capture`].
    pub fn capture_buffers(&self) -> Result<CaptureBuffers, AgentError> {
        self.capturer.clone().ok_or_else(|| AgentError::NotFound("this agent has no capture buffers".into()))
    }

    /// Switches capture on for `vip`; returns its id (what the buffers' samples name).
    /// [`Self::stop_capture`] switches it off.
    pub fn start_capture(&mut self, vip: &str) -> Result<u32, AgentError> {
        self.vip(vip)?;
        let id = self.applied.ids.vips[vip];
        if self.applied.capture_vip != 0 {
            return Err(AgentError::Conflict("a capture is already running: wait for it to finish".into()));
        }
        self.applied.capture_vip = id + 1;
        reconcile::write_config(&mut self.datapath, &self.applied)?;
        info!(vip, "capture started");
        Ok(id)
    }

    /// Follows route changes: the next hops of every backend (and of every retired one) get
    /// their managed neighbour entries, and every VIP address its blackhole route (lbd calls it
    /// every few seconds).
    pub fn refresh_host(&mut self) -> Result<(), AgentError> {
        match &mut self.host {
            Some(host) => {
                let announced = announced(&self.announcer);
                Ok(host.refresh(&self.config, &retired::addresses(&self.retired), &announced)?)
            }
            None => Ok(()),
        }
    }

    /// Ends what the data plane cached per CPU (next hops): lbd calls it every second, and
    /// after changes.
    pub fn refresh_caches(&mut self) -> Result<(), AgentError> {
        Ok(reconcile::move_cache_generation(&mut self.datapath, &mut self.applied)?)
    }

    pub fn stop_capture(&mut self) -> Result<(), AgentError> {
        self.applied.capture_vip = 0;
        reconcile::write_config(&mut self.datapath, &self.applied)?;
        info!("capture stopped");
        Ok(())
    }

    /// Gives the prober the checks the desired state asks for (kept ones keep their state).
    fn update_checks(&mut self) {
        let Some(prober) = &mut self.prober else { return };
        let mut targets = Vec::new();
        for v in &self.config.vips {
            for b in &v.backends {
                if let Some(Ok(spec)) = v.check_of(b) {
                    targets.push(Target { key: (v.name.clone(), b.address), addr: b.address, spec });
                }
            }
        }
        // Validated with the config, so this cannot refuse; if it did, the old checks stay.
        if let Err(e) = prober.set_targets(targets) {
            warn!("health checks not updated: {e}");
        }
    }

    /// Where the rings disagree with the checks, the events that bring them together. The
    /// rings follow the prober by its events; one whose change was not applied (a map write
    /// failed) is not sent again, and a backend saved down whose check is now of type none
    /// (it changed just before lbd stopped) has no probe to bring it back. Run now and then.
    pub fn health_drift(&self) -> Vec<HealthEvent> {
        let Some(prober) = &self.prober else { return Vec::new() };
        prober
            .status()
            .into_iter()
            .filter(|(key, status)| status.up == self.down.contains(key))
            .map(|(key, status)| HealthEvent {
                key,
                up: status.up,
                reason: format!(
                    "the ring had the backend {} while its check held it {}",
                    if status.up { "out" } else { "in" },
                    if status.up { "up" } else { "down" }
                ),
            })
            .collect()
    }

    /// A backend's health changed: its VIP's ring follows (only its slots move). Returns the
    /// flows to reset, if the VIP asks for that and the backend went down.
    pub fn health_event(&mut self, event: &HealthEvent) -> Result<Option<FlowReset>, AgentError> {
        let (vip, address) = &event.key;
        let Some(v) = self.config.vips.iter().find(|v| &v.name == vip) else { return Ok(None) };
        let checked = self.prober.as_ref().and_then(|p| p.status_of(&event.key));
        if !still_true(event, checked.as_ref()) {
            return Ok(None);
        }
        let reset = !event.up && v.on_down == OnDown::ResetFlows;
        let changed =
            if event.up { self.down.remove(&event.key) } else { self.down.insert(event.key.clone()) };
        if !changed {
            return Ok(None);
        }
        // The ring follows health at once. No id changes (the config is the same): what is
        // saved still holds. (Allocated, not copied: after a change and its undoing both
        // failed, the ids the maps hold may not cover the config.)
        let ids = self.allocate(&self.config.vips)?;
        let slots = self.apply_maps(&ids).inspect_err(|_| {
            if event.up {
                self.down.insert(event.key.clone());
            } else {
                self.down.remove(&event.key);
            }
            if let Err(back) = self.apply_maps(&ids) {
                error!("bringing the maps back to the previous state after a failed health change: {back}");
            }
        })?;
        info!(vip, backend = %address, up = event.up, reason = %event.reason, ring_slots_written = slots, "health changed");
        // For a restart: saved after the ring changed (health must not wait for a disk), and
        // only a hint (the checks correct it).
        if let Err(e) = self.save(&self.applied.ids) {
            warn!("health change applied but not saved: a restarted lbd starts from the health saved before: {e}");
        }
        let Some(id) = self.applied.ids.backend(vip, *address).filter(|_| reset) else { return Ok(None) };
        // One walk per backend at a time: one queued or under way does it.
        if self.resets.get(&id).is_some_and(FlowReset::wanted) {
            return Ok(None);
        }
        let reset = FlowReset { id, key: event.key.clone(), wanted: Default::default() };
        reset.wanted.store(true, std::sync::atomic::Ordering::Relaxed);
        self.resets.insert(id, reset.clone());
        Ok(Some(reset))
    }

    /// Stops the resets no longer due: their backend is up again, or gone, or its id another's.
    /// Walks run one at a time, after the event, and one that ran after the backend recovered
    /// would break the connections it took since.
    fn cancel_stale_resets(&mut self) {
        let (down, ids) = (&self.down, &self.applied.ids);
        self.resets.retain(|_, reset| {
            let due = reset_due(down, ids, reset);
            if !due {
                reset.wanted.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            due
        });
    }

    /// A reset's walk is over.
    pub fn reset_done(&mut self, reset: &FlowReset) {
        if self.resets.get(&reset.id).is_some_and(|r| std::sync::Arc::ptr_eq(&r.wanted, &reset.wanted)) {
            self.resets.remove(&reset.id);
        }
    }

    /// The backends of `vips`' `l2dsr` VIPs that this host reaches through a gateway, each as
    /// a sentence: a frame with the gateway's MAC and the VIP as destination goes to the router,
    /// which routes the VIP back to the balancer (a loop until the TTL runs out).
    pub fn l2dsr_routed(&self, vips: &[Vip]) -> Vec<String> {
        let Some(host) = &self.host else { return Vec::new() };
        let mut problems = Vec::new();
        for v in vips.iter().filter(|v| v.mode == config::ForwardMode::L2dsr) {
            for b in &v.backends {
                if let Some(hop) = host.status(b.address).hops.iter().find(|h| h.via_gateway) {
                    problems.push(format!(
                        "vip {:?}: backend {} is reached via {} (on {}), not on a directly connected \
                         subnet: l2dsr rewrites only the MAC, so the router would send its packets back to \
                         the VIP; use mode = \"ipip\" for routed backends",
                        v.name, b.address, hop.neighbour, hop.interface
                    ));
                }
            }
        }
        problems
    }

    /// Health as lbctl shows it: "up", "down", or "-" for a backend without a check.
    pub fn health_of(&self, vip: &str, address: IpAddr) -> (String, Option<TargetStatus>) {
        let key = (vip.to_owned(), address);
        let status = self.prober.as_ref().and_then(|p| p.status_of(&key));
        let word = match (&status, self.down.contains(&key)) {
            (None, _) => "-",
            (Some(_), true) => "down",
            (Some(_), false) => "up",
        };
        (word.to_owned(), status)
    }

    /// Backend `id` of `vip`'s open connections as the data plane counts them: only for
    /// least-conn VIPs (`None` for the others, whose connections are not counted).
    pub fn connections_of(&self, vip: &Vip, id: u32) -> Result<Option<u64>, DatapathError> {
        if vip.scheduler != Scheduler::LeastConn {
            return Ok(None);
        }
        self.datapath.active_connections(id).map(|n| Some(crate::datapath::open_connections(n)))
    }

    /// Prepares a census of the flow table. Run it off the agent (the walk takes a while), then
    /// give the result to [`Self::take_census`].
    pub fn flow_census(&self) -> Result<FlowCensus, AgentError> {
        let mut before = BTreeMap::new();
        for v in self.config.vips.iter().filter(|v| v.scheduler == Scheduler::LeastConn) {
            for b in &v.backends {
                if let Some(id) = self.applied.ids.backend(&v.name, b.address) {
                    let stored =
                        self.datapath.active_connections(id).map_err(|e| AgentError::Apply(e.into()))?;
                    before.insert(id, ((v.name.clone(), b.address), stored));
                }
            }
        }
        let table = self.datapath.flow_table().map_err(|e| AgentError::Apply(e.into()))?;
        Ok(FlowCensus { table, before, retired: retired::RetiredFlows::of(&self.retired) })
    }

    /// Takes `n` connections off backend `id`'s open count: a reset removed their flows, which
    /// will never close. A read and a write: a move the data plane makes in between is lost,
    /// and the next census mends it.
    pub fn uncount_connections(&mut self, id: u32, n: u64) -> Result<(), AgentError> {
        if n == 0 {
            return Ok(());
        }
        let dp = &mut self.datapath;
        let now = dp.active_connections(id).map_err(|e| AgentError::Apply(e.into()))? as i64;
        let left = now.saturating_sub(n as i64).max(0) as u64;
        dp.set_active_connections(id, left).map_err(|e| AgentError::Apply(e.into()))
    }

    /// Keeps the table's fill a census found (for the metrics), and corrects the data plane's
    /// least-conn counts that drifted from the flows the census found marked open (see
    /// [`corrected_count`]). Returns the corrections: (VIP, backend address, count before,
    /// count after).
    pub fn take_census(&mut self, census: &Census) -> Result<Vec<(String, IpAddr, u64, u64)>, AgentError> {
        self.table_fill = Some(census.fill);
        let mut corrections = Vec::new();
        let complete = census.fill.complete;
        if complete {
            self.release_retired(&census.retired);
        }
        for (&id, ((vip, address), before)) in &census.before {
            // An id handed to another backend during the walk: its count is the new owner's,
            // which the walk did not count (its flows were not of the generation it read).
            if self.applied.ids.backend(vip, *address) != Some(id) {
                continue;
            }
            // The connections the walk stopped counting were open when it began: the
            // correction counts them (else it would take their going for drift), then they go,
            // whether or not the walk was whole (their bits are cleared: nothing else lowers
            // the count for them).
            let expired = census.expired.get(&id).copied().unwrap_or(0);
            if complete {
                let dp = &mut self.datapath;
                let now = dp.active_connections(id).map_err(|e| AgentError::Apply(e.into()))?;
                let counted = census.counted.get(&id).copied().unwrap_or(0) + expired;
                if let Some(counted) = corrected_count(*before, now, counted) {
                    dp.set_active_connections(id, counted).map_err(|e| AgentError::Apply(e.into()))?;
                    corrections.push((
                        vip.clone(),
                        *address,
                        crate::datapath::open_connections(now),
                        counted,
                    ));
                }
            }
            self.uncount_connections(id, expired)?;
        }
        Ok(corrections)
    }

    /// After a complete census: lets the next hops of retired backends whose flows are over go.
    fn release_retired(&mut self, flows: &retired::RetiredFlows) {
        let now = crate::datapath::flow_clock_now();
        let released = retired::release_idle(&mut self.retired, flows, now);
        if released.is_empty() {
            return;
        }
        for (id, backend) in &released {
            info!(%backend, id, idle_seconds = retired::RETIRED_IDLE.as_secs(), "a removed backend has no flow used within idle_seconds: its next hops are no longer kept for it");
        }
        if let Err(e) = self.save(&self.applied.ids) {
            warn!("removed backends let go but not saved: a restarted lbd keeps their next hops until its first census: {e}");
        }
        if let Err(e) = self.refresh_host() {
            error!("keeping the backends' next hops resolved: {e}");
        }
    }

    pub fn stats(&self) -> Result<Stats, AgentError> {
        stats::collect(self).map_err(|e| AgentError::Apply(ApplyError::Datapath(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::{active_at, corrected_count, reset_due, still_true, FlowReset, Ids};
    use crate::health::{HealthEvent, TargetStatus};

    #[test]
    fn interfaces_in_another_order_are_no_change() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!super::interfaces_changed(&names(&["eth1", "eth0"]), &names(&["eth0", "eth1"])));
        assert!(super::interfaces_changed(&names(&["eth0"]), &names(&["eth0", "eth1"])));
        assert!(super::interfaces_changed(&names(&["eth2", "eth0"]), &names(&["eth0", "eth1"])));
    }

    #[test]
    fn a_queued_flow_reset_is_done_only_while_its_backend_is_down_under_the_same_id() {
        let key = ("web".to_owned(), "198.18.0.11".parse().unwrap());
        let mut ids = Ids::default();
        ids.backends.entry("web".into()).or_default().insert(key.1, 7);
        let reset = FlowReset { id: 7, key: key.clone(), wanted: Default::default() };
        let down = [key.clone()].into_iter().collect();
        assert!(reset_due(&down, &ids, &reset), "still down");
        assert!(!reset_due(&Default::default(), &ids, &reset), "up again: its new connections stay");
        let mut moved = ids.clone();
        moved.backends.get_mut("web").unwrap().insert(key.1, 8);
        assert!(!reset_due(&down, &moved, &reset), "removed and added again under another id");
        assert!(!reset_due(&down, &Ids::default(), &reset), "removed");
    }

    #[test]
    fn a_health_event_counts_only_while_the_prober_still_holds_it() {
        let key = ("web".to_owned(), "198.18.0.11".parse().unwrap());
        let down = HealthEvent { key, up: false, reason: "3 consecutive failures".into() };
        let status = |up| TargetStatus { up, ..Default::default() };
        assert!(still_true(&down, Some(&status(false))), "the target is down: the event holds");
        assert!(!still_true(&down, Some(&status(true))), "re-added, its new check starting up: stale");
        assert!(!still_true(&down, None), "removed: stale");
    }

    #[test]
    fn least_conn_counts_are_corrected_by_their_drift_beyond_the_moves_during_the_walk() {
        // A quiet backend: exact.
        assert_eq!(corrected_count(5, 5, 3), Some(3));
        assert_eq!(corrected_count(5, 5, 5), None);
        // A busy one (ten opened during the walk) that drifted 60 up: its census plus the moves.
        assert_eq!(corrected_count(100, 110, 40), Some(50));
        // A difference within the moves may be the race itself: left.
        assert_eq!(corrected_count(100, 110, 105), None);
        assert_eq!(corrected_count(100, 90, 95), None);
        // Never below zero, and a count raced below zero reads as the i64 it is.
        assert_eq!(corrected_count(50, 40, 0), Some(0));
        assert_eq!(corrected_count((-2i64) as u64, (-2i64) as u64, 0), Some(0));
        assert_eq!(corrected_count(0, 0, 0), None);
    }

    #[test]
    fn a_confirmed_flow_is_active_until_it_has_been_idle_for_two_ticks() {
        for (name, now, last, want) in [
            ("a packet this tick", 1000, 1000, true),
            ("one tick ago", 1000, 999, true),
            ("two ticks ago: a new flow may take it", 1000, 998, false),
            ("long ago", 1000, 3, false),
            ("a tick ahead (a packet during the walk)", 1000, 1001, true),
            ("a packet this tick, across the wrap", 0, 0, true),
            ("one tick ago, across the wrap", 0, u32::MAX, true),
            ("two ticks ago, across the wrap", 1, u32::MAX, false),
            ("a tick ahead, across the wrap", u32::MAX, 0, true),
        ] {
            assert_eq!(active_at(now, last), want, "{name}: now {now}, last packet at {last}");
        }
    }
}
