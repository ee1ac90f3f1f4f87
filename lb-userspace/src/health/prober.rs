//! The prober: one light task per probed target, each on its own schedule, feeding the
//! target's [`HealthState`]; state changes go out as [`HealthEvent`]s and to the log.
use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use rand::{rngs::SmallRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::{
    runtime::Handle,
    sync::{mpsc, oneshot},
    task::AbortHandle,
    time::{Instant, MissedTickBehavior},
};
use tracing::{info, warn};

use super::{
    probe::{Probe, ProbeError},
    spec::{CheckKind, CheckSpec, HealthConfigError},
    state::{HealthState, Transition},
    tcp::TcpSockets,
};

/// A backend of a VIP: (VIP name, backend address).
pub type TargetKey = (String, IpAddr);

/// What to probe for one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub key: TargetKey,
    /// Where probes go: the backend's own address (not the VIP).
    pub addr: IpAddr,
    /// Checked by [`Prober::set_targets`] ([`CheckSpec::validate`]).
    pub spec: CheckSpec,
}

/// A backend's health as `lbctl` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub up: bool,
    /// The last probe's result; `None` before the first one, for checks of type none, and when
    /// the last one did not run (this host's error: `last_error` says which).
    pub last_ok: Option<bool>,
    pub last_checked: Option<SystemTime>,
    /// Why the last probe failed; `None` once one succeeds.
    pub last_error: Option<String>,
    /// State changes so far.
    pub transitions: u64,
    /// Probes done and failed so far.
    pub checks: u64,
    pub failures: u64,
}

impl Default for TargetStatus {
    fn default() -> Self {
        TargetStatus {
            up: HealthState::default().is_up(),
            last_ok: None,
            last_checked: None,
            last_error: None,
            transitions: 0,
            checks: 0,
            failures: 0,
        }
    }
}

/// A backend's state changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    pub key: TargetKey,
    pub up: bool,
    /// E.g. "3 consecutive failures: connect to 198.18.0.11:80: Connection refused (os error 111)".
    pub reason: String,
}

/// A target [`Prober::set_targets`] refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("vip {:?} backend {}: health check: {error}", .key.0, .key.1)]
pub struct InvalidTarget {
    pub key: TargetKey,
    pub error: HealthConfigError,
}

/// Where a [`Prober`]'s events arrive.
pub type HealthEvents = mpsc::UnboundedReceiver<HealthEvent>;

/// One target's state, shared by the [`Prober`] (for status and updates) and its task.
struct Shared {
    /// Bumped when the target is stopped or re-specified: a task of an older generation that
    /// still runs (it may be mid-probe on another worker) changes nothing.
    generation: u64,
    state: HealthState,
    status: TargetStatus,
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    // Nothing panics while holding it; if something did, the counters are still usable.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Running {
    addr: IpAddr,
    spec: CheckSpec,
    shared: SharedRef,
    /// `None` for checks of type none.
    task: Option<AbortHandle>,
}

impl Running {
    fn stop(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        lock(&self.shared).generation += 1;
    }
}

/// The runtime thread of [`Prober::on_own_thread`].
struct OwnThread {
    stop: Option<oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<()>>,
    tid: libc::pid_t,
}

/// Probes targets on a tokio runtime and keeps their health.
///
/// Each probed target has a task that waits a random jitter in [0, interval) (so many backends
/// are not probed in lockstep), then probes every interval. Checks of type none are never
/// probed: always up. New targets start up and send no event; every later state change sends a
/// [`HealthEvent`] and is logged (info when up, warn when down).
pub struct Prober {
    runtime: Handle,
    events: mpsc::UnboundedSender<HealthEvent>,
    rng: SmallRng,
    targets: HashMap<TargetKey, Running>,
    /// Reused by the TCP checks of all targets; all of them run on `runtime`.
    tcp_sockets: Arc<TcpSockets>,
    local_errors: Arc<LocalErrors>,
    own_thread: Option<OwnThread>,
}

impl Prober {
    /// A prober whose probes run on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (with time and IO enabled).
    pub fn new() -> (Prober, HealthEvents) {
        Prober::on(Handle::current(), None)
    }

    /// A prober on a thread (`lbd-health`) and single-threaded runtime of its own: probing does
    /// not compete with the API, and its CPU time is that thread's ([`Prober::cpu_time`]).
    /// Dropping the prober stops the thread.
    pub fn on_own_thread() -> io::Result<(Prober, HealthEvents)> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let join = std::thread::Builder::new().name("lbd-health".into()).spawn(move || {
            // SAFETY: no arguments, no memory touched.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            // A current-thread runtime runs its tasks only inside block_on.
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })?;
        let tid = tid_rx.recv().map_err(|_| io::Error::other("the lbd-health thread ended at once"))?;
        let own = OwnThread { stop: Some(stop), join: Some(join), tid };
        Ok(Prober::on(handle, Some(own)))
    }

    fn on(runtime: Handle, own_thread: Option<OwnThread>) -> (Prober, HealthEvents) {
        let (events, receiver) = mpsc::unbounded_channel();
        let prober = Prober {
            runtime,
            events,
            rng: SmallRng::from_entropy(),
            targets: HashMap::new(),
            tcp_sockets: Arc::default(),
            local_errors: Arc::default(),
            own_thread,
        };
        (prober, receiver)
    }

    /// Makes `targets` the probed set. Targets whose address and check are unchanged keep their
    /// task, schedule and state; re-specified ones keep their state (up or down, counters) and
    /// start a new schedule; missing ones stop (without an event). With duplicate keys the last
    /// one counts. If a check is invalid, nothing changes.
    pub fn set_targets(&mut self, targets: Vec<Target>) -> Result<(), InvalidTarget> {
        if let Some((t, error)) = targets.iter().find_map(|t| t.spec.validate().err().map(|e| (t, e))) {
            return Err(InvalidTarget { key: t.key.clone(), error });
        }
        let mut old = std::mem::take(&mut self.targets);
        for target in targets {
            let previous = self.targets.remove(&target.key).or_else(|| old.remove(&target.key));
            let running = match previous {
                Some(r) if r.addr == target.addr && r.spec == target.spec => r,
                Some(r) => {
                    r.stop();
                    self.restart(target.clone(), r.shared)
                }
                None => {
                    let shared = Shared {
                        generation: 0,
                        state: HealthState::default(),
                        status: TargetStatus::default(),
                    };
                    self.restart(target.clone(), Arc::new(Mutex::new(shared)))
                }
            };
            self.targets.insert(target.key, running);
        }
        for running in old.values() {
            running.stop();
        }
        Ok(())
    }

    /// Starts `target`'s task on `shared`, whose counters it keeps and whose consecutive
    /// results it restarts.
    fn restart(&mut self, target: Target, shared: SharedRef) -> Running {
        let Target { key, addr, spec } = target;
        let generation = {
            let mut s = lock(&shared);
            s.state = HealthState::new(s.state.is_up());
            if spec.kind == CheckKind::None && !s.state.is_up() {
                s.state = HealthState::new(true);
                s.status.up = true;
                s.status.transitions += 1;
                announce(&self.events, &key, true, "the check is now of type none".into());
            }
            s.generation
        };
        let task = Probe::new(addr, &spec, &self.tcp_sockets).map(|probe| {
            let jitter = self.rng.gen_range(0..spec.interval.as_nanos().max(1) as u64);
            let first = Instant::now() + Duration::from_nanos(jitter);
            let task = Task {
                key,
                probe,
                rise: spec.rise,
                fall: spec.fall,
                kind: spec.kind.name(),
                shared: shared.clone(),
                generation,
                events: self.events.clone(),
                local_errors: self.local_errors.clone(),
            };
            self.runtime.spawn(task.run(first, spec.interval)).abort_handle()
        });
        Running { addr, spec, shared, task }
    }

    /// Marks targets down (without an event), as a restarted agent found them: they come back
    /// after `rise` good checks.
    pub fn start_down<'a>(&self, keys: impl IntoIterator<Item = &'a TargetKey>) {
        for key in keys {
            if let Some(running) = self.targets.get(key).filter(|r| r.task.is_some()) {
                let mut s = lock(&running.shared);
                s.state = HealthState::new(false);
                s.status.up = false;
            }
        }
    }

    /// Every target's health, by key.
    pub fn status(&self) -> Vec<(TargetKey, TargetStatus)> {
        let mut all: Vec<_> =
            self.targets.iter().map(|(key, r)| (key.clone(), lock(&r.shared).status.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// One target's health.
    pub fn status_of(&self, key: &TargetKey) -> Option<TargetStatus> {
        self.targets.get(key).map(|r| lock(&r.shared).status.clone())
    }

    /// CPU time used so far by the prober's own thread ([`Prober::on_own_thread`]); `None` on a
    /// shared runtime, whose threads do other work too.
    pub fn cpu_time(&self) -> Option<Duration> {
        let tid = self.own_thread.as_ref()?.tid;
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces): state is the 3rd, utime the
        // 14th and stime the 15th, in clock ticks.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: no arguments, no memory touched.
        let per_second =
            u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok().filter(|&t| t > 0)?;
        Some(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for running in self.targets.values() {
            running.stop();
        }
        if let Some(own) = &mut self.own_thread {
            if let Some(stop) = own.stop.take() {
                let _ = stop.send(());
            }
            if let Some(join) = own.join.take() {
                let _ = join.join();
            }
        }
    }
}

/// One target's probing loop.
struct Task {
    key: TargetKey,
    probe: Probe,
    rise: u32,
    fall: u32,
    kind: &'static str,
    shared: SharedRef,
    generation: u64,
    events: mpsc::UnboundedSender<HealthEvent>,
    local_errors: Arc<LocalErrors>,
}

/// How often at most the prober logs that local errors kept it from checking backends.
const LOCAL_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Probes that failed for a reason of lbd's own host ([`ProbeError::is_local`]): logged, at
/// most once every [`LOCAL_ERROR_LOG_EVERY`] with a count, and counted for no backend.
#[derive(Default)]
struct LocalErrors {
    /// When the last one was logged, and how many came since.
    last: Mutex<(Option<Instant>, u64)>,
}

impl LocalErrors {
    fn report(&self, key: &TargetKey, error: &ProbeError) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.1 += 1;
        if last.0.is_some_and(|at| at.elapsed() < LOCAL_ERROR_LOG_EVERY) {
            return;
        }
        let (vip, backend) = key;
        warn!(
            vip,
            %backend,
            probes = last.1,
            "health checks not done for a local reason (not counted for or against any backend): {error}"
        );
        *last = (Some(Instant::now()), 0);
    }
}

impl Task {
    async fn run(self, first: Instant, interval: Duration) {
        let mut ticks = tokio::time::interval_at(first, interval);
        // After a stall, skip missed probes and keep each target's phase: delaying instead
        // would re-phase every stalled target to the same instant, in lockstep.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            let result = self.probe.run().await;
            if !self.record(result) {
                return;
            }
        }
    }

    /// Counts one result; false once this task has been replaced. A local error counts neither
    /// way: rise and fall stay where they were, but the status shows the check did not run
    /// (else `lbctl backend list` would show an old pass while this host is out of descriptors).
    fn record(&self, result: Result<(), ProbeError>) -> bool {
        let now = SystemTime::now();
        let mut s = lock(&self.shared);
        if s.generation != self.generation {
            return false;
        }
        if let Err(e) = result.as_ref() {
            if e.is_local() {
                s.status.last_checked = Some(now);
                s.status.last_ok = None;
                s.status.last_error = Some(format!("not run, counted neither way (this host's error): {e}"));
                drop(s);
                self.local_errors.report(&self.key, e);
                return true;
            }
        }
        let ok = result.is_ok();
        s.status.checks += 1;
        s.status.last_ok = Some(ok);
        s.status.last_checked = Some(now);
        s.status.last_error = result.err().map(|e| e.to_string());
        if !ok {
            s.status.failures += 1;
        }
        let Some(transition) = s.state.record(ok, self.rise, self.fall) else { return true };
        let up = transition == Transition::Up;
        s.status.up = up;
        s.status.transitions += 1;
        let reason = match &s.status.last_error {
            None => {
                format!("{} ({} check of {})", results(self.rise, "success"), self.kind, self.probe.addr())
            }
            Some(error) => format!("{}: {error}", results(self.fall, "failure")),
        };
        drop(s);
        announce(&self.events, &self.key, up, reason);
        true
    }
}

/// "1 failure", "3 consecutive failures".
fn results(n: u32, what: &str) -> String {
    let plural = if what.ends_with('s') { "es" } else { "s" };
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} consecutive {what}{plural}")
    }
}

fn announce(events: &mpsc::UnboundedSender<HealthEvent>, key: &TargetKey, up: bool, reason: String) {
    let (vip, backend) = key;
    if up {
        info!(vip, %backend, %reason, "backend up");
    } else {
        warn!(vip, %backend, %reason, "backend down");
    }
    // No receiver: nobody is interested; the status still shows it.
    let _ = events.send(HealthEvent { key: key.clone(), up, reason });
}

#[cfg(test)]
mod tests {
    use std::time::Instant as StdInstant;

    use tokio::sync::mpsc::error::TryRecvError;

    use super::{super::test_servers as servers, *};

    const MS: Duration = Duration::from_millis(1);

    fn target(vip: &str, port: u16, kind: CheckKind, interval_ms: u32, rise: u32, fall: u32) -> Target {
        Target {
            key: (vip.into(), servers::LOCALHOST),
            addr: servers::LOCALHOST,
            spec: CheckSpec {
                kind,
                port,
                interval: MS * interval_ms,
                timeout: MS * (interval_ms / 2),
                rise,
                fall,
            },
        }
    }

    /// The next event, or a failed test after `within`.
    async fn next_event(events: &mut HealthEvents, within: Duration) -> HealthEvent {
        tokio::time::timeout(within, events.recv()).await.expect("an event in time").expect("prober alive")
    }

    /// Waits (bounded) until `key` has had `checks` probes.
    async fn wait_for_checks(
        prober: &Prober,
        key: &TargetKey,
        checks: u64,
        within: Duration,
    ) -> TargetStatus {
        let deadline = StdInstant::now() + within;
        loop {
            let status = prober.status_of(key).unwrap();
            if status.checks >= checks {
                return status;
            }
            assert!(StdInstant::now() < deadline, "only {} of {checks} checks in {within:?}", status.checks);
            tokio::time::sleep(20 * MS).await;
        }
    }

    #[tokio::test]
    async fn a_stopped_server_goes_down_and_comes_back_up() {
        let a = servers::Tcp::start().await;
        let b = servers::Tcp::start().await;
        let port = a.port;
        let (mut prober, mut events) = Prober::new();
        let (interval, rise, fall) = (100, 2, 3);
        let ta = target("a", a.port, CheckKind::Tcp, interval, rise, fall);
        let tb = target("b", b.port, CheckKind::Tcp, interval, rise, fall);
        prober.set_targets(vec![ta.clone(), tb.clone()]).unwrap();
        wait_for_checks(&prober, &ta.key, 2, 2000 * MS).await;
        wait_for_checks(&prober, &tb.key, 2, 2000 * MS).await;
        assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(prober.status_of(&ta.key).unwrap().last_ok, Some(true));

        a.stop().await;
        let stopped = StdInstant::now();
        let down = next_event(&mut events, 3000 * MS).await;
        let took = stopped.elapsed();
        assert_eq!((down.key.clone(), down.up), (ta.key.clone(), false));
        let expected = format!("3 consecutive failures: connect to 127.0.0.1:{port}: ");
        assert!(down.reason.starts_with(&expected), "{}", down.reason);
        assert!(down.reason.contains("refused"), "{}", down.reason);
        // fall probes: the first within one interval, then one per interval.
        assert!(took >= MS * (interval * (fall - 1)) - 20 * MS, "down after {took:?}");
        assert!(took <= MS * (interval * fall) + 1500 * MS, "down after {took:?}");
        let sa = prober.status_of(&ta.key).unwrap();
        assert!(!sa.up && sa.transitions == 1 && sa.last_ok == Some(false), "{sa:?}");
        assert!(sa.failures >= 3 && sa.last_error.as_deref().unwrap().contains("refused"), "{sa:?}");
        let sb = prober.status_of(&tb.key).unwrap();
        assert!(sb.up && sb.transitions == 0 && sb.failures == 0, "{sb:?}");

        let _a = servers::Tcp::start_on(port).await;
        let restarted = StdInstant::now();
        let up = next_event(&mut events, 3000 * MS).await;
        let took = restarted.elapsed();
        assert_eq!((up.key.clone(), up.up), (ta.key.clone(), true));
        assert_eq!(up.reason, format!("2 consecutive successes (tcp check of 127.0.0.1:{port})"));
        assert!(took >= MS * (interval * (rise - 1)) - 20 * MS, "up after {took:?}");
        assert!(took <= MS * (interval * rise) + 1500 * MS, "up after {took:?}");
        let sa = prober.status_of(&ta.key).unwrap();
        assert!(sa.up && sa.transitions == 2 && sa.last_error.is_none(), "{sa:?}");
        assert!(sa.last_checked.unwrap() <= SystemTime::now());
        assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)), "b never changed");
        assert_eq!(prober.status().len(), 2);
    }

    #[tokio::test]
    async fn a_backend_failing_every_other_probe_never_changes_state() {
        let flapping = servers::Udp::start(servers::UdpMode::EveryOther).await;
        let (mut prober, mut events) = Prober::new();
        let kind = CheckKind::Udp { send: b"ping".to_vec(), expect: b"ping".to_vec() };
        let t = target("flap", flapping.port, kind, 100, 3, 3);
        prober.set_targets(vec![t.clone()]).unwrap();
        let status = wait_for_checks(&prober, &t.key, 20, 5000 * MS).await;
        assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)), "no state change");
        assert!(status.up && status.transitions == 0, "{status:?}");
        // The responder did alternate: half the probes failed.
        assert!(status.checks.abs_diff(2 * status.failures) <= 1, "{status:?}");
    }

    #[tokio::test]
    async fn updates_keep_the_state_of_kept_targets() {
        let (mut prober, mut events) = Prober::new();
        let dead = target("x", servers::closed_port(), CheckKind::Tcp, 100, 1, 1);
        let unchecked = target("y", 0, CheckKind::None, 100, 2, 3);
        prober.set_targets(vec![dead.clone()]).unwrap();
        let down = next_event(&mut events, 2000 * MS).await;
        assert!(!down.up && down.reason.starts_with("1 failure: connect to"), "{down:?}");

        prober.set_targets(vec![dead.clone(), unchecked.clone()]).unwrap();
        let before = prober.status_of(&dead.key).unwrap();
        assert!(!before.up && before.transitions == 1);
        tokio::time::sleep(300 * MS).await;
        let x = prober.status_of(&dead.key).unwrap();
        assert!(!x.up && x.transitions == 1 && x.checks > before.checks, "kept and still probed: {x:?}");
        let y = prober.status_of(&unchecked.key).unwrap();
        assert_eq!(y, TargetStatus::default(), "type none: up, never probed");

        // A new interval: a new schedule, the same state.
        let slower = Target { spec: CheckSpec { interval: 200 * MS, ..dead.spec.clone() }, ..dead.clone() };
        prober.set_targets(vec![slower.clone()]).unwrap();
        let x = prober.status_of(&dead.key).unwrap();
        assert!(!x.up && x.transitions == 1, "{x:?}");
        assert_eq!(prober.status_of(&unchecked.key), None, "removed");

        // No check any more: up at once, with an event.
        let none = Target { spec: CheckSpec { kind: CheckKind::None, ..slower.spec.clone() }, ..slower };
        prober.set_targets(vec![none]).unwrap();
        let up = next_event(&mut events, 100 * MS).await;
        assert!(up.up && up.reason == "the check is now of type none", "{up:?}");
        let checks = prober.status_of(&dead.key).unwrap().checks;
        tokio::time::sleep(300 * MS).await;
        let x = prober.status_of(&dead.key).unwrap();
        assert!(x.up && x.transitions == 2 && x.checks == checks, "{x:?}");

        prober.set_targets(vec![]).unwrap();
        assert!(prober.status().is_empty());
        assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)));
    }

    #[tokio::test]
    async fn an_invalid_check_changes_nothing() {
        let (mut prober, _events) = Prober::new();
        let good = target("good", 80, CheckKind::Tcp, 1000, 2, 3);
        prober.set_targets(vec![good.clone()]).unwrap();
        let mut bad = target("bad", 80, CheckKind::Tcp, 100, 2, 3);
        bad.spec.timeout = bad.spec.interval;
        let e = prober.set_targets(vec![bad]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "vip \"bad\" backend 127.0.0.1: health check: timeout 100 ms must be shorter than interval 100 ms: lower the timeout or raise the interval"
        );
        let keys: Vec<_> = prober.status().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [good.key]);
    }

    #[tokio::test]
    async fn a_target_started_down_comes_up_after_rise_good_checks() {
        let server = servers::Tcp::start().await;
        let (mut prober, mut events) = Prober::new();
        let t = target("restarted", server.port, CheckKind::Tcp, 100, 2, 3);
        prober.set_targets(vec![t.clone()]).unwrap();
        prober.start_down([&t.key]);
        assert!(!prober.status_of(&t.key).unwrap().up);
        let up = next_event(&mut events, 2000 * MS).await;
        assert!(up.up && up.reason.starts_with("2 consecutive successes"), "{up:?}");
        assert!(prober.status_of(&t.key).unwrap().checks >= 2);
    }

    #[tokio::test]
    async fn a_local_error_moves_neither_rise_nor_fall() {
        let (prober, mut events) = Prober::new();
        let t = target("local", 80, CheckKind::Tcp, 100, 1, 1);
        let shared: SharedRef = Arc::new(Mutex::new(Shared {
            generation: 0,
            state: HealthState::default(),
            status: TargetStatus::default(),
        }));
        let task = Task {
            key: t.key.clone(),
            probe: Probe::new(t.addr, &t.spec, &prober.tcp_sockets).unwrap(),
            rise: 1,
            fall: 1,
            kind: "tcp",
            shared: shared.clone(),
            generation: 0,
            events: prober.events.clone(),
            local_errors: prober.local_errors.clone(),
        };
        let addr = task.probe.addr();
        for errno in [libc::EMFILE, libc::ENOBUFS] {
            let local = ProbeError::Connect { addr, source: io::Error::from_raw_os_error(errno) };
            assert!(task.record(Err(local)));
        }
        let s = lock(&shared).status.clone();
        assert!(s.up && s.checks == 0 && s.failures == 0, "{s:?}");
        let shown = s.last_error.as_deref().unwrap_or_default();
        assert!(
            shown.contains("this host's error") && s.last_checked.is_some(),
            "the status hides it: {s:?}"
        );
        assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)), "no state change");
        // A refusal is the backend's: with fall = 1, down at once.
        let refused = ProbeError::Connect { addr, source: io::Error::from_raw_os_error(libc::ECONNREFUSED) };
        assert!(task.record(Err(refused)));
        assert!(!lock(&shared).status.up);
        assert!(!next_event(&mut events, 100 * MS).await.up);
    }

    #[test]
    fn a_prober_on_its_own_thread_probes_and_stops() {
        // Connections complete in the listener's backlog; nothing needs to accept them.
        let listener = std::net::TcpListener::bind((servers::LOCALHOST, 0)).unwrap();
        let open = listener.local_addr().unwrap().port();
        let (mut prober, mut events) = Prober::on_own_thread().unwrap();
        let up = target("up", open, CheckKind::Tcp, 100, 2, 1);
        let dead = target("dead", servers::closed_port(), CheckKind::Tcp, 100, 2, 1);
        prober.set_targets(vec![up.clone(), dead.clone()]).unwrap();
        let deadline = StdInstant::now() + 3000 * MS;
        let event = loop {
            match events.try_recv() {
                Ok(event) => break event,
                Err(TryRecvError::Empty) if StdInstant::now() < deadline => std::thread::sleep(20 * MS),
                Err(e) => panic!("no event in time: {e}"),
            }
        };
        assert_eq!((event.key, event.up), (dead.key, false));
        while prober.status_of(&up.key).unwrap().checks == 0 && StdInstant::now() < deadline {
            std::thread::sleep(20 * MS);
        }
        let s = prober.status_of(&up.key).unwrap();
        assert!(s.up && s.last_ok == Some(true), "{s:?}");
        assert!(prober.cpu_time().is_some());
        drop(prober);
        assert!(matches!(events.try_recv(), Err(TryRecvError::Disconnected)), "stopped");
    }
}
