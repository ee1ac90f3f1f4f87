//! Ends on this host the packets to VIP addresses that the balancer passes to the kernel.
//!
//! The balancer passes some packets addressed to a VIP (XDP_PASS): a port or protocol no VIP
//! serves, ICMP other than echo and too-big, malformed packets, a next hop it cannot use,
//! `over_limit = "pass"`. On a balancer host the VIP address is not local and forwarding is on,
//! so the kernel forwards such a packet by its main table, usually out of the default route to
//! the router, which routes the VIP straight back: the packet loops until its TTL runs out
//! (some 32 times over the uplink, then a Time Exceeded to the client), and a port scan or a
//! passed flood costs the uplinks thirty times over. [`VipRoutes`] keeps a **blackhole** host
//! route for each VIP address in the main table, so the kernel drops such a packet at once,
//! quietly. Quietly rather than `unreachable`: a host-unreachable error would tell a client the
//! wrong thing (the host answers on the ports it serves) and would make every passed packet of a
//! flood cost an ICMP message.
//!
//! Nothing that works changes: the balancer answers echo requests and sends too-big errors,
//! and forwards every packet of a VIP it serves, in XDP, before any route is looked up. A VIP
//! address that is local to the host (in the local table: on `lo` of a host that is also a
//! backend) is unaffected, as the local table is looked up first. The host's own traffic to a VIP
//! address finds the blackhole too (it used to leave by the default route).
//!
//! Ownership: lbd's routes are the blackhole host routes of the main table marked with its
//! route protocol (`announce.protocol`, 242 by default: `ip route show proto 242 type
//! blackhole` lists them). Each sync reads the table, so a restarted lbd adopts what an earlier
//! one left, and lbd only ever deletes a route with that mark. A route of the main table for the
//! same prefix that is not lbd's (another type or protocol, whatever its metric) is never
//! replaced: it is reported, and the address gets no blackhole while it is there.
//!
//! One [`VipRoutes`] per network namespace: two would each remove the routes the other needs.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use super::{
    netlink::{
        self,
        route::{ListedRoute, TableRoute, RTN_BLACKHOLE, RT_TABLE_MAIN},
        Netlink,
    },
    HostError,
};

/// What [`VipRoutes::sync`] or [`VipRoutes::clear`] did, or found, for one VIP address: one
/// log line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A blackhole route made.
    Added(TableRoute),
    /// One of ours that no VIP needs any more, deleted.
    Removed(TableRoute),
    /// The main table routes the VIP address already, by a route lbd did not make: left alone
    /// (reported once, when it is found).
    Foreign { vip: TableRoute, found: Vec<ListedRoute> },
    /// Adding or deleting the route failed; the next sync tries again (reported once per error).
    Failed { route: TableRoute, error: String },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added(r) => write!(f, "added blackhole route {r} for a VIP address"),
            Change::Removed(r) => write!(f, "removed blackhole route {r}: no VIP has this address now"),
            Change::Foreign { vip, found } => {
                let found: Vec<String> = found.iter().map(|r| r.to_string()).collect();
                write!(
                    f,
                    "the main table already routes VIP address {vip} ({}), by a route lbd did not make: \
                     lbd leaves it and adds no blackhole route; packets to this address that the balancer \
                     passes go where it says (if that is back to the router, they loop until their TTL \
                     runs out)",
                    found.join("; ")
                )
            }
            Change::Failed { route, error } => write!(f, "blackhole route {route}: {error}"),
        }
    }
}

/// The blackhole routes of the VIP addresses, marked with one route protocol.
pub struct VipRoutes {
    netlink: Netlink,
    protocol: u8,
    /// What the last sync reported as foreign or failed, by VIP route: reported again only when
    /// it changes.
    reported: BTreeMap<TableRoute, Change>,
}

impl VipRoutes {
    /// Routes marked with `protocol`, in the calling thread's network namespace.
    pub fn new(protocol: u8) -> Result<VipRoutes, HostError> {
        let netlink = Netlink::open().map_err(HostError::NetlinkSocket)?;
        Ok(VipRoutes { netlink, protocol, reported: BTreeMap::new() })
    }

    /// Makes the main table hold a blackhole route of ours for each of `addresses` (unless
    /// another route has the prefix) and none of ours for any other address. Returns what it
    /// changed, and what it found in its way the first time it finds it. Reading the table
    /// failing changes nothing.
    pub fn sync(&mut self, addresses: &BTreeSet<IpAddr>) -> Result<Vec<Change>, HostError> {
        let want: BTreeSet<TableRoute> = addresses.iter().map(|&a| TableRoute::host(a)).collect();
        let listed = self.main_table()?;
        let ours: BTreeSet<TableRoute> = listed.iter().filter(|r| self.is_ours(r)).map(|r| r.route).collect();
        let mut changes = Vec::new();
        let mut problems = BTreeMap::new();
        for &vip in want.difference(&ours) {
            let found: Vec<ListedRoute> = listed.iter().filter(|r| r.route == vip).copied().collect();
            if !found.is_empty() {
                problems.insert(vip, Change::Foreign { vip, found });
                continue;
            }
            match self.netlink.add_blackhole_route(self.protocol, vip) {
                Ok(()) => changes.push(Change::Added(vip)),
                Err(e) => {
                    let error = format!("adding it to the main table: {e}");
                    problems.insert(vip, Change::Failed { route: vip, error });
                }
            }
        }
        for &route in ours.difference(&want) {
            match self.remove(route) {
                Change::Failed { route, error } => {
                    problems.insert(route, Change::Failed { route, error });
                }
                removed => changes.push(removed),
            }
        }
        for (route, problem) in &problems {
            if self.reported.get(route) != Some(problem) {
                changes.push(problem.clone());
            }
        }
        self.reported = problems;
        Ok(changes)
    }

    /// Removes every route of ours (lbd --on-exit detach). Returns what it did.
    pub fn clear(&mut self) -> Result<Vec<Change>, HostError> {
        let listed = self.main_table()?;
        self.reported.clear();
        Ok(listed.iter().filter(|r| self.is_ours(r)).map(|r| self.remove(r.route)).collect())
    }

    fn remove(&self, route: TableRoute) -> Change {
        match self.netlink.delete_blackhole_route(self.protocol, route) {
            // Gone already (someone else deleted it): as good.
            Err(e) if netlink::errno(&e) == Some(libc::ESRCH) => Change::Removed(route),
            Ok(()) => Change::Removed(route),
            Err(e) => Change::Failed { route, error: format!("deleting it from the main table: {e}") },
        }
    }

    /// A blackhole host route marked with our protocol.
    fn is_ours(&self, r: &ListedRoute) -> bool {
        r.protocol == self.protocol
            && r.kind == RTN_BLACKHOLE
            && r.route == TableRoute::host(r.route.destination)
    }

    fn main_table(&self) -> Result<Vec<ListedRoute>, HostError> {
        self.netlink.routes_of_table(RT_TABLE_MAIN).map_err(|source| HostError::Netlink {
            action: "listing the routes of the main table".into(),
            source,
        })
    }
}
