//! What the balancer needs from its host beyond the XDP programs, owned by lbd rather than set
//! by hand: forwarding on the attached interfaces for the families the VIPs use (else
//! `bpf_fib_lookup` refuses: `pass_fwd_disabled`), every backend's next hop resolved, with or
//! without health checks (else `pass_no_neigh`), also a removed backend's while its flows go on
//! (`retired.rs`), and a blackhole route for every VIP address (else what the balancer passes
//! to the kernel for a VIP loops through the router). The pins' bpffs is seen to before the maps
//! are loaded (`start.rs`).
use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use tracing::{error, info, warn};

use crate::{
    config::{Config, Vip},
    host::{
        forwarding,
        neighbours::{Change, NextHopStatus, NextHops},
        vip_routes::{self, VipRoutes},
        Family, HostError,
    },
};

/// How long a change that brings new next hops waits for them to resolve before its rings name
/// them: the first packet of the first connection to a new backend should find its MAC. One
/// ARP or ND round trip on a LAN; a next hop that does not answer costs the change this much.
const NEW_HOP_WAIT: Duration = Duration::from_secs(1);

pub struct HostState {
    interfaces: Vec<String>,
    next_hops: NextHops,
    vip_routes: VipRoutes,
    /// Why forwarding is off where the VIPs need it, found by the last refresh (with
    /// `host.forwarding = "check"`, or where it cannot be turned on).
    forwarding_problem: Option<String>,
}

impl HostState {
    /// For `config`'s interfaces; adopts the managed neighbour entries an earlier lbd left (and
    /// its VIP routes, at the first sync). The VIP routes carry lbd's route protocol, the one
    /// `[announce]` marks its routes with, whether or not announcing is configured.
    pub fn new(config: &Config) -> Result<HostState, HostError> {
        Ok(HostState {
            interfaces: config.interfaces.clone(),
            next_hops: NextHops::new(&config.interfaces)?,
            vip_routes: VipRoutes::new(super::route_marks::RouteMarks::of(config).protocol)?,
            forwarding_problem: None,
        })
    }

    /// Before `config`'s VIPs are applied: forwarding on for the families they use (or, with
    /// `host.forwarding = "check"`, an error naming the sysctls to set: nothing is applied),
    /// their backends' next hops managed, and those of the `retired` backends (removed, with
    /// flows); new ones are waited for (up to a second; one that does not resolve is logged, and
    /// its backend shows why in `lbctl backend list`); and their addresses' blackhole routes (a
    /// failure there is logged, and refuses nothing), those of the addresses still `announced`
    /// too (a VIP removed is withdrawn after the change: until the routers follow, its packets
    /// end in the blackhole rather than loop through them).
    pub fn prepare(
        &mut self,
        config: &Config,
        retired: &BTreeSet<IpAddr>,
        announced: &BTreeSet<IpAddr>,
    ) -> Result<(), HostError> {
        let vips = &config.vips;
        for change in forwarding::ensure(&self.interfaces, &families(vips), config.host.forwarding)? {
            info!(%change, "turned forwarding on (bpf_fib_lookup answers only where it is on)");
        }
        self.forwarding_problem = None;
        self.sync_vip_routes(vips, announced);
        let added = self.sync(&backends(vips, retired))?;
        if !added.is_empty() {
            if let Err(e) = self.next_hops.wait_resolved(&added, NEW_HOP_WAIT) {
                warn!("{e}");
            }
        }
        Ok(())
    }

    /// Follows route changes (every few seconds): next hops of the backends of `config`'s VIPs
    /// and of the `retired` ones, and the blackhole routes of their addresses (one someone
    /// deleted is put back). Forwarding too: someone may turn it off under lbd (a
    /// `sysctl --system` with a hardening file, a `net.ipv4.conf.all.forwarding=0`); lbd turns
    /// it on again, or with `host.forwarding = "check"` says so ([`Self::forwarding_problem`]).
    pub fn refresh(
        &mut self,
        config: &Config,
        retired: &BTreeSet<IpAddr>,
        announced: &BTreeSet<IpAddr>,
    ) -> Result<(), HostError> {
        self.check_forwarding(config);
        self.sync_vip_routes(&config.vips, announced);
        self.sync(&backends(&config.vips, retired)).map(drop)
    }

    /// Why forwarding is off where the VIPs need it, if it is (the host then balances nothing).
    pub fn forwarding_problem(&self) -> Option<&str> {
        self.forwarding_problem.as_deref()
    }

    fn check_forwarding(&mut self, config: &Config) {
        let problem =
            match forwarding::ensure(&self.interfaces, &families(&config.vips), config.host.forwarding) {
                Ok(changes) => {
                    for change in changes {
                        warn!(%change, "forwarding was turned off under lbd: turned on again");
                    }
                    None
                }
                Err(e) => Some(e.to_string()),
            };
        if problem != self.forwarding_problem {
            match &problem {
                Some(p) => error!("forwarding is off where the VIPs need it; nothing is balanced, and no VIP announced: {p}"),
                None => info!("forwarding is on again where the VIPs need it"),
            }
            self.forwarding_problem = problem;
        }
    }

    /// A backend's next hops, or why it has none.
    pub fn status(&self, backend: IpAddr) -> NextHopStatus {
        self.next_hops.status(backend)
    }

    /// Removes the managed neighbour entries and the VIP routes lbd made (`--on-exit detach`).
    pub fn clear(&mut self) {
        for change in self.next_hops.clear() {
            info!(%change, "detaching");
        }
        match self.vip_routes.clear() {
            Ok(changes) => changes.iter().for_each(|change| info!(%change, "detaching")),
            Err(e) => warn!("detaching: the VIP addresses' blackhole routes stay: {e}"),
        }
    }

    /// Makes the main table hold a blackhole route for each address of `vips` and each one
    /// still `announced`, and logs what it changed or found in its way. Never fails: the next
    /// sync tries again.
    fn sync_vip_routes(&mut self, vips: &[Vip], announced: &BTreeSet<IpAddr>) {
        let addresses: BTreeSet<IpAddr> =
            vips.iter().map(|v| v.address).chain(announced.iter().copied()).collect();
        match self.vip_routes.sync(&addresses) {
            Ok(changes) => {
                for change in changes {
                    match &change {
                        vip_routes::Change::Added(_) | vip_routes::Change::Removed(_) => {
                            info!(%change, "VIP route")
                        }
                        vip_routes::Change::Foreign { .. } | vip_routes::Change::Failed { .. } => {
                            warn!(%change, "VIP route")
                        }
                    }
                }
            }
            Err(e) => warn!(
                "the VIP addresses' blackhole routes are not synced ({e}); lbd tries again in a few seconds"
            ),
        }
    }

    /// Syncs the next hops of `backends`, logs each change, and returns the backends whose next
    /// hop is new.
    fn sync(&mut self, backends: &BTreeSet<IpAddr>) -> Result<BTreeSet<IpAddr>, HostError> {
        let mut fresh = BTreeSet::new();
        for change in self.next_hops.sync(backends)? {
            match &change {
                Change::Failed { .. } => warn!(%change, "next hop"),
                Change::Added(e) | Change::Converted(e) => {
                    info!(%change, "next hop");
                    fresh.insert(e.address);
                }
                Change::Removed(_) => info!(%change, "next hop"),
            }
        }
        // The entries are next hops (backends or gateways): wait for the backends behind them.
        let mut waiting = BTreeSet::new();
        if !fresh.is_empty() {
            for &b in backends {
                let status = self.next_hops.status(b);
                if status.hops.iter().any(|h| fresh.contains(&h.neighbour)) {
                    waiting.insert(b);
                }
            }
        }
        Ok(waiting)
    }
}

fn backends(vips: &[Vip], retired: &BTreeSet<IpAddr>) -> BTreeSet<IpAddr> {
    vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).chain(retired.iter().copied()).collect()
}

/// The address families `vips` use.
fn families(vips: &[Vip]) -> BTreeSet<Family> {
    vips.iter().map(|v| Family::of(v.address)).collect()
}
