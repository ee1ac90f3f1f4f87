//! Start-up: bind the listeners, retire an earlier release's pins, load (or adopt) the pinned
//! datapath, attach, and bring the maps to the desired state: the saved one if an earlier agent
//! saved one (with its pins or, after a reboot or a new layout, without), else the config file's.
use std::{
    ffi::CString,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use lb_common::map_names;
use thiserror::Error;
use tracing::{error, info, warn};

use super::{reconcile::Applied, Agent, AgentError, SavedState};
use crate::{
    announce::Announcer,
    config::{self, Config, Invalid},
    datapath::{self, Attached, DatapathError, LinkState},
    health::{HealthEvents, Prober},
};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] Invalid),
    #[error("interface {0:?} does not exist in this network namespace: check `interfaces` in the config (`ip link` lists them)")]
    NoInterface(String),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("{0}")]
    SavedState(String),
    #[error("starting the health prober: {0}")]
    Prober(#[source] std::io::Error),
    #[error(transparent)]
    Apply(#[from] super::reconcile::ApplyError),
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    #[error(transparent)]
    Locked(#[from] super::pin_lock::PinLockError),
    #[error("{0}; lbd stopped before it attached or announced anything")]
    Api(#[from] crate::api::BindError),
    #[error("retiring the pins of an earlier release's map layout under {}: {source}; remove that directory by hand (its links detach with it) and start lbd again", .path.display())]
    OldLayout { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {address} for metrics (`metrics` in the config): {source}; stop what listens there, or give `metrics` another address (lbd stopped before it attached or announced anything)")]
    Metrics { address: SocketAddr, source: std::io::Error },
}

/// The control API's socket and the metrics endpoint's listener, bound before lbd changes
/// anything on the host: one it cannot serve stops it with nothing attached, applied or
/// announced (an lbd that exits after announcing leaves its VIPs announced, health frozen).
pub struct Listeners {
    pub api: crate::api::ApiSocket,
    /// With its address (`metrics` in the config).
    pub metrics: Option<(SocketAddr, tokio::net::TcpListener)>,
}

impl Listeners {
    /// Needs a tokio runtime.
    fn bind(config: &Config) -> Result<Listeners, StartError> {
        let api = crate::api::bind(&config.api_socket)?;
        let metrics = config
            .metrics
            .map(|address| {
                crate::metrics::bind(address)
                    .map(|listener| (address, listener))
                    .map_err(|source| StartError::Metrics { address, source })
            })
            .transpose()
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&config.api_socket);
            })?;
        Ok(Listeners { api, metrics })
    }
}

/// A started agent: what the event loop, the API and the metrics serve.
pub struct Started {
    pub agent: Agent,
    /// The health events the agent must be given back (see [`Agent::health_event`]).
    pub health: HealthEvents,
    pub listeners: Listeners,
}

/// Logs a warning if config `file` holds `web_admin_token` (which drains and weighs backends from
/// the status page) and every user may read it.
pub(super) fn warn_if_token_readable(config: &Config, file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let others_read = std::fs::metadata(file).is_ok_and(|m| m.permissions().mode() & 0o004 != 0);
    if config.web_admin_token.is_some() && others_read {
        warn!(
            file = %file.display(),
            "the config holds web_admin_token and every user of this host may read it: \
             `chmod o-r` it (the package installs it 0640)"
        );
    }
}

pub fn pin_dir(config: &Config) -> PathBuf {
    config.pin_path.join(lb_common::PIN_LAYOUT)
}

/// Starts the agent (needs a tokio runtime). The listeners come first: a start that fails after
/// them removes the API socket it bound.
pub fn start(config_file: &Path) -> Result<Started, StartError> {
    let config = config::load(config_file)?;
    for warning in config.limits.unused_key_warnings() {
        warn!("{warning}");
    }
    warn_if_token_readable(&config, config_file);
    // Before anything is touched: pins, links, the API socket, the saved state.
    let pin_lock = super::pin_lock::PinLock::acquire(&config.pin_path)?;
    // The saved state wins over the file (below): one that cannot be read, or that this
    // config's limits cannot hold (changed with a new pin path), stops the start here.
    let saved = SavedState::read(&config.state_file).map_err(StartError::SavedState)?;
    if let Some(state) = &saved {
        saved_state_fits(&config, state)?;
    }
    let mut ifindexes = Vec::new();
    for name in &config.interfaces {
        ifindexes.push(ifindex(name).ok_or_else(|| StartError::NoInterface(name.clone()))?);
    }
    let listeners = Listeners::bind(&config)?;
    let socket = config.api_socket.clone();
    let (agent, health) = take_over(config_file, config, pin_lock, ifindexes, saved).inspect_err(|_| {
        let _ = std::fs::remove_file(&socket);
    })?;
    Ok(Started { agent, health, listeners })
}

/// The rest of the start, once nothing stands in the way of serving: the pins, the links, the
/// maps, the host.
fn take_over(
    config_file: &Path,
    config: Config,
    pin_lock: super::pin_lock::PinLock,
    ifindexes: Vec<u32>,
    saved: Option<SavedState>,
) -> Result<(Agent, HealthEvents), StartError> {
    let dir = pin_dir(&config);
    crate::host::bpffs::ensure(&config.pin_path)?;
    let pinned_before = dir.join(map_names::VIPS).exists();
    let sizes = config.limits.sizes(datapath::possible_cpus()?);
    let load = || {
        let _held = SignalsHeld::new();
        datapath::load_pinned(sizes, &dir).inspect_err(|_| {
            // Maps this start made and pinned go with it (the next start makes them anew).
            if !pinned_before {
                let _ = std::fs::remove_dir_all(&dir);
            }
        })
    };
    // Retires an earlier release's pins, links and all: its balancer stops.
    let retire_earlier = || -> Result<(), StartError> {
        let old = datapath::old_layouts::retire(&config.pin_path, lb_common::PIN_LAYOUT, |d| {
            d.join(map_names::VIPS).exists()
        })
        .map_err(|source| StartError::OldLayout { path: config.pin_path.clone(), source })?;
        for o in &old {
            warn!(
                pins = %o.dir.display(),
                links = ?o.links,
                "pins of an earlier release's map layout, which this one cannot adopt: links detached, pins removed; \
                 the flow table starts empty (open connections of maglev VIPs keep their backends: the same ring)"
            );
        }
        Ok(())
    };
    // An earlier release's balancer goes only once this one's programs and maps are loaded: a
    // release that cannot load (a kernel that refuses its programs) leaves it forwarding. But
    // a host may lack the memory for both releases' maps at once (a flow table sized to it):
    // then the earlier one's go first, as they must for the upgrade to happen at all.
    let mut dp = match load() {
        Err(e)
            if e.out_of_memory() && datapath::old_layouts::any(&config.pin_path, lb_common::PIN_LAYOUT) =>
        {
            warn!(
                "no memory for this release's maps beside an earlier release's ({e}): retiring those first; \
                 forwarding pauses until this start is done"
            );
            retire_earlier()?;
            // The kernel frees unpinned maps a moment later (deferred work): until then a new
            // allocation meets the same shortage, and might wake the OOM killer.
            let mut tries = 0;
            loop {
                std::thread::sleep(std::time::Duration::from_millis(250));
                match load() {
                    Err(e) if e.out_of_memory() && tries < 8 => tries += 1,
                    loaded => break loaded?,
                }
            }
        }
        loaded => loaded?,
    };
    retire_earlier()?;
    let (mut links_adopted, mut links_replaced) = (0, 0);
    for name in &config.interfaces {
        let how = dp.attach_pinned(name, config.xdp_mode.into())?;
        // The mode the kernel reports, not the one asked for.
        let mode = dp.link_state(name)?;
        match how {
            Attached::New => info!(interface = name, %mode, "balancer attached (link pinned)"),
            Attached::Adopted => {
                links_adopted += 1;
                info!(interface = name, %mode, "balancer attached (the pinned link adopted)")
            }
            Attached::Replaced(LinkState::Attached(before)) => {
                links_replaced += 1;
                warn!(
                    interface = name,
                    %mode,
                    "xdp_mode changed from {before} to {}: re-attached, forwarding paused for the moment it took",
                    datapath::Mode::from(config.xdp_mode)
                )
            }
            Attached::Replaced(why) => {
                links_replaced += 1;
                warn!(interface = name, %mode, "{why}; the balancer is re-attached through a new pinned link")
            }
            Attached::KeptMode { kept, refused } => {
                links_replaced += 1;
                error!(
                    interface = name,
                    %mode,
                    "xdp_mode {} refused ({refused}): the balancer is attached in {kept} mode again, as it was; \
                     set xdp_mode = \"{kept}\" or use a driver that takes the mode asked for",
                    datapath::Mode::from(config.xdp_mode)
                )
            }
        }
    }
    for i in ifindexes {
        dp.add_tx_port(i)?;
    }
    // An interface taken out of the config keeps forwarding through its pinned link, with maps
    // that nothing updates for it any more: unpinned, the link goes and detaches.
    for name in dp.pinned_links()?.into_iter().filter(|name| !config.interfaces.contains(name)) {
        dp.unpin_link(&name)?;
        info!(interface = name, "balancer detached: the interface is no longer in `interfaces`");
    }
    let capturer = crate::capture::Capturer::open(&mut dp)?;
    let (prober, events) = Prober::on_own_thread().map_err(StartError::Prober)?;
    // The saved state wins over the file whether or not pins were found: a reboot (or a release
    // with a new map layout) must not undo a drain, an operator's deny or a VIP added at run
    // time. `lbctl apply -f` returns to the file.
    let old_marks = saved.as_ref().and_then(|s| s.route_marks);
    let adopted = saved.is_some();
    let host_drained = saved.as_ref().is_some_and(|s| s.host_drained);
    if host_drained && config.announce.is_some() {
        warn!("this host is drained (saved): it announces no VIP until `lbctl host undrain`");
    }
    // Cache generations go on from the pinned CONFIG's, never back to one under which the
    // program just attached may already have cached entries.
    let cache_generation = dp.config()?.cache_generation;
    let mut agent = Agent {
        datapath: dp,
        applied: Applied { cache_generation, ..Default::default() },
        config_file: Some(config_file.to_owned()),
        state_file: config.state_file.clone(),
        adopted,
        links_adopted,
        links_replaced,
        started: std::time::SystemTime::now(),
        capturer: Some(std::sync::Arc::new(tokio::sync::Mutex::new(capturer))),
        prober: Some(prober),
        host: Some(super::host::HostState::new(&config)?),
        down: Default::default(),
        voids_due: None,
        loop_lag: Default::default(),
        table_fill: None,
        samples: Default::default(),
        pin_lock,
        announcer: config.announce.as_ref().map(|a| Announcer::new(a, host_drained)).transpose()?,
        config,
        denies: Vec::new(),
        retired: Default::default(),
        link_problems: Default::default(),
        resets: Default::default(),
    };
    match saved {
        Some(state) => {
            if pinned_before {
                info!(
                    vips = state.vips.len(),
                    links_adopted,
                    "adopting the running state left by the previous agent (`lbctl apply -f` returns to the file)"
                );
            } else {
                warn!(
                    vips = state.vips.len(),
                    state_file = %agent.state_file.display(),
                    "no pins of this layout (a reboot, or an upgrade to a new layout): starting from the state the previous agent saved, not the config file \
                     (`lbctl apply -f` returns to the file)"
                );
            }
            agent.config.source = state.source;
            agent.config.vips = state.vips;
            agent.applied.ids = state.ids;
            agent.retired = state.retired;
            // Maps made anew (a reboot, a new layout or pin path) hold no flow: ids that do
            // not fit their sizes (limits lowered with a new pin path) are handed out afresh.
            if !pinned_before && !ids_fit(&agent.applied.ids, &agent.datapath.sizes) {
                info!("the saved ids do not fit this config's limits: VIPs and backends get new ones (the maps are new)");
                agent.applied.ids = Default::default();
                agent.retired = Default::default();
            }
            // Down when the earlier agent stopped: down from the start, up after `rise` checks.
            agent.down = state.down;
            agent.config.security = state.security;
            agent.denies = state.denies;
        }
        None if pinned_before => {
            warn!(state_file = %agent.state_file.display(), "pinned maps found but no saved state: starting from the config file")
        }
        None => {}
    }
    // Routes an earlier lbd left under other marks go before any is written under these (an
    // old route for the same prefix would be in the way). Saved at once with the new marks: a
    // start that fails from here puts that state back, and the next start finds the routes it
    // may have made.
    let marks = super::route_marks::RouteMarks::of(&agent.config);
    if let Some(old) = old_marks.filter(|&old| old != marks) {
        marks.retire(old);
        agent.save(&agent.applied.ids)?;
    }
    match reconcile_maps(&mut agent) {
        Ok(()) => Ok((agent, events)),
        Err(e) => {
            // No lbd will keep what an earlier one announced (or this one, before the failure)
            // in step with health: the routers must not send this host flows.
            agent.withdraw_all();
            Err(e)
        }
    }
}

/// Whether the saved state's VIPs, backends and rings fit this config (its limits above all:
/// they change with a new pin path), as a config file's would have to.
fn saved_state_fits(config: &Config, state: &SavedState) -> Result<(), StartError> {
    let candidate = Config {
        source: state.source.clone(),
        vips: state.vips.clone(),
        security: state.security.clone(),
        ..config.clone()
    };
    config::check_whole(&candidate).map_err(|e| {
        StartError::SavedState(format!(
            "the saved state {} does not fit this config: {}: change the config so that it does (e.g. limits that hold it), or move the state file away to start from the config file (the drains, weights, denies and VIPs added at run time it holds are then lost)",
            config.state_file.display(),
            e.invalid
        ))
    })
}

/// Whether every id in `ids` has its slot in maps of `sizes`.
fn ids_fit(ids: &super::plan::Ids, sizes: &datapath::Sizes) -> bool {
    ids.vips.values().all(|&id| id < sizes.max_rings)
        && ids.backends.values().flat_map(|b| b.values()).all(|&id| id < sizes.max_backends)
}

/// The maps made to hold the desired state (the start's last step).
fn reconcile_maps(agent: &mut Agent) -> Result<(), StartError> {
    // Lists an earlier agent wrote: what the desired state drops goes.
    super::reconcile::adopt_acl(&agent.datapath, &mut agent.applied)?;
    let slots = agent.apply()?;
    if let Some(prober) = &agent.prober {
        prober.start_down(&agent.down);
    }
    let unknown = super::reconcile::remove_unknown_vips(&mut agent.datapath, &mut agent.applied)?;
    if unknown > 0 {
        warn!(entries = unknown, "removed VIP entries that no saved state accounts for");
    }
    info!(vips = agent.config.vips.len(), ring_slots_written = slots, "maps reconciled");
    // Refused in a change; at start, a route may have moved since: said, not refused.
    for problem in agent.l2dsr_routed(&agent.config.vips) {
        error!("{problem}");
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one, and logs it: the prober holds a socket
/// per check in flight and the API one per client, and a service manager's default soft limit
/// (often 1024) is reached with a few hundred backends. Returns the limits (soft before, after).
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit to write to.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: a valid rlimit; raising the soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        info!(from = before, to = limit.rlim_cur, "raised the open-file limit to its hard limit");
    } else {
        info!(limit = before, "open-file limit");
    }
    Ok((before, limit.rlim_cur))
}

/// Holds SIGHUP, SIGTERM and SIGINT pending on this thread while it lives: the kernel's
/// verifier gives a program load up (`EAGAIN`) when a signal arrives during it, and lbd, whose
/// handlers are installed before it starts, answers them once the programs are loaded.
struct SignalsHeld {
    before: libc::sigset_t,
}

impl SignalsHeld {
    fn new() -> SignalsHeld {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the calls only
        // touch the sets given and this thread's mask.
        unsafe {
            let mut held: libc::sigset_t = std::mem::zeroed();
            let mut before: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut held);
            for signal in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
                libc::sigaddset(&mut held, signal);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &held, &mut before);
            SignalsHeld { before }
        }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.before, std::ptr::null_mut()) };
    }
}

fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}
