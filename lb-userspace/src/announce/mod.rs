//! VIP announcements: keep the kernel's VIP table holding a host route for each VIP this host
//! announces ([`table`]), as the VIPs' health and the host's state decide ([`policy`]); and read
//! BIRD, which learns that table and announces it over BGP, for status ([`bird`]). lbd never
//! talks BGP and never changes BIRD: see docs/ecmp-bird.md.
//!
//! Nothing here stops forwarding or a change: a route that cannot be written, or a BIRD that
//! does not answer, is logged (once, when it starts), counted, and tried again every
//! [`RETRY`].
pub mod bird;
pub mod policy;
pub mod table;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use self::{
    bird::{BirdState, Session},
    policy::{Decision, HostMode},
    table::VipTable,
};
use crate::{
    agent::reconcile::Down,
    config::{Announce, AnnounceSettings, Vip},
    host::{netlink::route::TableRoute, HostError},
};

/// How often the table is synced again (a failed write retried, a route someone removed put
/// back) and BIRD read.
pub const RETRY: Duration = Duration::from_secs(2);

pub struct Announcer {
    settings: AnnounceSettings,
    table: VipTable,
    drained: bool,
    stopping: bool,
    unable: bool,
    decisions: Vec<Decision>,
    /// The table's routes as of the last sync: what this host announces.
    held: BTreeSet<TableRoute>,
    /// Since when each held route has been held (BIRD is given a moment to learn it).
    held_since: BTreeMap<IpAddr, Instant>,
    route_errors: u64,
    /// The last sync's errors, logged when they change.
    route_problem: Option<String>,
    bird: BirdWatch,
}

/// What lbd knows of BIRD from its polls.
#[derive(Default)]
struct BirdWatch {
    /// The last poll: BIRD's state, or why it could not be read. `None` before the first.
    last: Option<Result<BirdState, String>>,
    errors: u64,
    /// VIP addresses found held but not exported, already logged.
    refused: BTreeSet<IpAddr>,
}

impl Announcer {
    /// Opens the VIP table of `settings` (in the calling thread's network namespace); nothing
    /// is announced or withdrawn before the first [`Announcer::sync`].
    pub fn new(settings: &AnnounceSettings, drained: bool) -> Result<Announcer, HostError> {
        Ok(Announcer {
            table: VipTable::open(settings.table, settings.protocol)?,
            settings: settings.clone(),
            drained,
            stopping: false,
            unable: false,
            decisions: Vec::new(),
            held: BTreeSet::new(),
            held_since: BTreeMap::new(),
            route_errors: 0,
            route_problem: None,
            bird: BirdWatch::default(),
        })
    }

    pub fn settings(&self) -> &AnnounceSettings {
        &self.settings
    }

    /// The addresses the VIP table held at the last sync.
    pub fn announced(&self) -> BTreeSet<IpAddr> {
        self.held.iter().map(|r| r.destination).collect()
    }

    pub fn drained(&self) -> bool {
        self.drained
    }

    pub fn set_drained(&mut self, drained: bool) {
        self.drained = drained;
    }

    /// lbd is stopping: nothing is announced any more (not saved: the next lbd announces).
    pub fn set_stopping(&mut self) {
        self.stopping = true;
    }

    /// This host can (not) balance: the balancer is attached to every interface, forwarding
    /// is on where the VIPs need it.
    pub fn set_unable(&mut self, unable: bool) {
        self.unable = unable;
    }

    fn host_mode(&self) -> HostMode {
        match (self.stopping, self.drained, self.unable) {
            (true, _, _) => HostMode::Stopping,
            (false, true, _) => HostMode::Drained,
            (false, false, true) => HostMode::Unable,
            (false, false, false) => HostMode::Serving,
        }
    }

    /// Makes the VIP table hold the routes of the VIPs to announce now. Logs what it adds and
    /// removes; a failure is logged and counted, and the next sync tries again.
    pub fn sync(&mut self, vips: &[Vip], down: &Down) {
        self.decisions = policy::decide(vips, down, self.host_mode());
        let want: BTreeSet<TableRoute> =
            policy::addresses(&self.decisions).into_iter().map(TableRoute::host).collect();
        let (problem, errors) = match self.table.sync(&want) {
            Ok(synced) => {
                for route in &synced.added {
                    info!(route = %route, vips = %self.vips_on(route.destination), "announcing (route added to the VIP table)");
                }
                for route in &synced.removed {
                    info!(route = %route, why = %self.why_not(route.destination), "withdrawing (route removed from the VIP table)");
                }
                self.held = synced.held;
                let failed: Vec<String> = synced.failed.iter().map(|(r, e)| format!("{r}: {e}")).collect();
                ((!failed.is_empty()).then(|| failed.join("; ")), failed.len() as u64)
            }
            Err(e) => (Some(e.to_string()), 1),
        };
        let now = Instant::now();
        self.held_since.retain(|a, _| self.held.contains(&TableRoute::host(*a)));
        for route in &self.held {
            self.held_since.entry(route.destination).or_insert(now);
        }
        self.route_errors += errors;
        if problem != self.route_problem {
            match &problem {
                Some(p) => error!(
                    "the VIP table does not hold what this host should announce ({p}); forwarding is unaffected, lbd tries again every {}s",
                    RETRY.as_secs()
                ),
                None => info!("the VIP table holds what this host should announce again"),
            }
            self.route_problem = problem;
        }
    }

    /// The VIPs that want `address` announced, for the log.
    fn vips_on(&self, address: IpAddr) -> String {
        let names: Vec<String> = self
            .decisions
            .iter()
            .filter(|d| d.address == address && d.wanted)
            .map(|d| format!("{} ({})", d.vip, d.why))
            .collect();
        names.join(", ")
    }

    /// Why `address` is not announced, for the log.
    fn why_not(&self, address: IpAddr) -> String {
        let why: Vec<String> = self
            .decisions
            .iter()
            .filter(|d| d.address == address)
            .map(|d| format!("{}: {}", d.vip, d.why))
            .collect();
        if why.is_empty() {
            "no VIP has this address".into()
        } else {
            why.join(", ")
        }
    }

    /// Where to read BIRD, if configured.
    pub fn bird_socket(&self) -> Option<PathBuf> {
        self.settings.bird_socket.clone()
    }

    /// The result of reading BIRD (started at `started`): logs what changed since the last
    /// poll (BIRD gone or back, a session going up or down, a VIP BIRD does not export).
    pub fn bird_read(&mut self, result: Result<BirdState, bird::ControlError>, started: Instant) {
        let socket = self.settings.bird_socket.clone().unwrap_or_default();
        let previous = self.bird.last.take();
        let state = match result {
            Err(e) => {
                self.bird.errors += 1;
                let e = e.to_string();
                if !matches!(&previous, Some(Err(p)) if *p == e) {
                    warn!("cannot read BIRD's state: {e}; announcing goes on (BIRD learns the VIP table when it is back), lbd tries again every {}s", RETRY.as_secs());
                }
                self.bird.last = Some(Err(e));
                return;
            }
            Ok(state) => state,
        };
        if !matches!(previous, Some(Ok(_))) {
            info!(socket = %socket.display(), sessions = state.sessions.len(), "reading BIRD's state");
        }
        let before: BTreeMap<&str, &Session> = match &previous {
            Some(Ok(p)) => p.sessions.iter().map(|s| (s.name.as_str(), s)).collect(),
            _ => BTreeMap::new(),
        };
        for s in &state.sessions {
            match before.get(s.name.as_str()) {
                Some(b) if b.established == s.established => {}
                _ if s.established => info!(session = s.name, "BGP session established"),
                _ => warn!(
                    session = s.name,
                    state = s.state,
                    "BGP session not established: this host's routes do not reach that router"
                ),
            }
        }
        let established = state.sessions.iter().filter(|s| s.established).count();
        // Refused: held since before the poll started (BIRD learns a route at once), exported
        // by no established session.
        let refused: BTreeSet<IpAddr> = self
            .held_since
            .iter()
            .filter(|(a, since)| {
                **since + Duration::from_millis(500) < started && !state.exported.contains(a)
            })
            .map(|(a, _)| *a)
            .filter(|_| established > 0)
            .collect();
        for address in refused.difference(&self.bird.refused) {
            warn!(
                vip = %address,
                "BIRD exports this VIP to none of its {established} established BGP sessions: its filters refuse it (is it inside BIRD's VIP prefix sets? see docs/ecmp-bird.md) or no session of its address family is up"
            );
        }
        for address in self.bird.refused.difference(&refused) {
            if self.held_since.contains_key(address) {
                info!(vip = %address, "BIRD exports this VIP now");
            }
        }
        self.bird.refused = refused;
        self.bird.last = Some(Ok(state));
    }

    /// The announcements as `lbctl status` and the metrics show them.
    pub fn status(&self, vips: &[Vip]) -> Status {
        let exported = match &self.bird.last {
            Some(Ok(state)) => Some(&state.exported),
            _ => None,
        };
        let vips = vips
            .iter()
            .map(|v| {
                let decision = self.decisions.iter().find(|d| d.vip == v.name);
                VipAnnouncement {
                    vip: v.name.clone(),
                    service: v.service(),
                    address: v.address,
                    announce: v.announce,
                    wanted: decision.is_some_and(|d| d.wanted),
                    announced: self.held.contains(&TableRoute::host(v.address)),
                    exported: exported.map(|e| e.contains(&v.address)),
                    why: decision.map_or_else(|| "not decided yet".into(), |d| d.why.clone()),
                }
            })
            .collect();
        let bird = self.settings.bird_socket.as_ref().map(|socket| BirdStatus {
            socket: socket.clone(),
            reachable: matches!(self.bird.last, Some(Ok(_))),
            error: match &self.bird.last {
                Some(Err(e)) => Some(e.clone()),
                _ => None,
            },
            sessions: match &self.bird.last {
                Some(Ok(state)) => state.sessions.clone(),
                _ => Vec::new(),
            },
            errors: self.bird.errors,
        });
        Status {
            table: self.settings.table,
            protocol: self.settings.protocol,
            drain_seconds: self.settings.drain_seconds,
            host_drained: self.drained,
            stopping: self.stopping,
            vips,
            route_errors: self.route_errors,
            route_problem: self.route_problem.clone(),
            bird,
        }
    }
}

/// This host's announcements (`lbctl status`, `GET /v1/status`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub table: u32,
    pub protocol: u8,
    pub drain_seconds: u64,
    /// `lbctl host drain`: nothing is announced.
    pub host_drained: bool,
    /// lbd is stopping (SIGTERM): nothing is announced.
    pub stopping: bool,
    pub vips: Vec<VipAnnouncement>,
    /// Route writes to the VIP table that failed since lbd started.
    pub route_errors: u64,
    /// What the last sync could not do, if anything.
    pub route_problem: Option<String>,
    /// BIRD as lbd last read it (with `announce.bird_socket`).
    pub bird: Option<BirdStatus>,
}

/// One VIP's announcement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VipAnnouncement {
    pub vip: String,
    pub service: String,
    pub address: IpAddr,
    pub announce: Announce,
    /// The policy wants its address announced.
    pub wanted: bool,
    /// Its address's route is in the VIP table (another VIP on the address may want it).
    pub announced: bool,
    /// BIRD exports its route to a BGP session; `None`: BIRD not read.
    pub exported: Option<bool>,
    pub why: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BirdStatus {
    pub socket: PathBuf,
    /// The last poll read BIRD's state.
    pub reachable: bool,
    /// Why the last poll failed.
    pub error: Option<String>,
    pub sessions: Vec<Session>,
    /// Polls that failed since lbd started.
    pub errors: u64,
}
