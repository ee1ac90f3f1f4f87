//! Keeps the next hops towards the backends resolved.
//!
//! `bpf_fib_lookup` never resolves a neighbour itself: until the kernel has a link-layer address
//! for the next hop, packets to that backend pass to the stack (counted `pass_no_neigh`), and
//! XDP-forwarded traffic never makes the kernel learn or refresh one. So for every next hop of
//! every backend (the gateway, or the backend itself when on-link; every path of a multipath
//! route) [`NextHops`] keeps a **managed** neighbour entry (`NTF_EXT_MANAGED`, as `ip neigh add
//! ADDR dev IF managed`): the kernel resolves it at once and keeps probing it, so it stays
//! REACHABLE and follows a changed MAC, whether or not lbd runs.
//!
//! Ownership: our entries carry NDA_PROTOCOL = [`NEIGHBOUR_PROTOCOL`] (`ip neigh show proto 76`
//! lists them). A new [`NextHops`] adopts entries with that mark (a restarted lbd finds its own),
//! and it only ever deletes entries with that mark. It never touches a permanent or NOARP entry,
//! one another program marked with its own protocol, an externally learned one, or another
//! program's managed entry: those are reported, not changed. A plain dynamic entry the kernel
//! learned (protocol 0) is turned into a managed one of ours (NLM_F_REPLACE keeps its address,
//! so forwarding goes on): left alone it would go STALE and never be re-probed for XDP
//! traffic, and keep a dead MAC after a failover. From then on it is ours like any other, and
//! deleting it when no backend needs it is harmless: the kernel learns a dynamic entry again
//! whenever the stack needs one.
//!
//! Routes are looked up as this host's own output would be (`ip route get fibmatch ADDR`), while
//! `bpf_fib_lookup` looks up from the ingress interface with the tunnel source: with policy
//! routing by source or incoming interface the two may differ. [`NextHops::status`] shows the
//! former.
//!
//! One [`NextHops`] per network namespace: two would each remove the entries the other needs.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, io,
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    netlink::{
        errno, link,
        neigh::{self, nud, Neighbour},
        route::{RTN_LOCAL, RTN_UNICAST},
        Netlink, Write,
    },
    HostError,
};

/// NDA_PROTOCOL of the neighbour entries lbd makes: 76, which is no routing protocol's number
/// (linux/rtnetlink.h, iproute2's rt_protos). `ip neigh show proto 76` lists them.
pub const NEIGHBOUR_PROTOCOL: u8 = 76;

/// How often [`NextHops::wait_resolved`] looks.
const POLL: Duration = Duration::from_millis(20);

/// A neighbour entry: an address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub ifindex: u32,
    pub address: IpAddr,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.address, interface_name(self.ifindex))
    }
}

/// What [`NextHops::sync`] or [`NextHops::clear`] did to one entry: one log line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A managed entry made.
    Added(Entry),
    /// A dynamic entry the kernel had learned, made managed and ours.
    Converted(Entry),
    /// One of ours that no backend needs any more, deleted.
    Removed(Entry),
    /// Making or deleting an entry failed; the next sync tries again.
    Failed { entry: Entry, error: String },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added(e) => write!(f, "added managed neighbour entry {e}"),
            Change::Converted(e) => write!(f, "made the kernel's dynamic neighbour entry {e} managed"),
            Change::Removed(e) => write!(f, "removed managed neighbour entry {e}: no backend's next hop now"),
            Change::Failed { entry, error } => write!(f, "neighbour entry {entry}: {error}"),
        }
    }
}

/// Who made a neighbour entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    /// There is none.
    None,
    /// Us (marked with [`NEIGHBOUR_PROTOCOL`]).
    Lbd,
    /// The kernel (a dynamic entry; the next sync makes it ours).
    Kernel,
    /// Someone else (permanent, NOARP, another protocol, externally learned, or their managed
    /// entry): left alone.
    Other,
}

/// A backend's next hops as an operator sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHopStatus {
    pub backend: IpAddr,
    /// Every path of the route towards it (several for a multipath route).
    pub hops: Vec<HopStatus>,
    /// Why packets to this backend may pass to the stack instead of being forwarded; `None`
    /// when every next hop is resolved.
    pub problem: Option<String>,
}

/// One next hop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopStatus {
    pub interface: String,
    /// The neighbour: the gateway, or the backend itself when on-link.
    pub neighbour: IpAddr,
    pub via_gateway: bool,
    pub mac: Option<String>,
    /// The neighbour state as `ip neigh` prints it ("NONE": no entry).
    pub state: String,
    pub owner: Owner,
    pub problem: Option<String>,
    /// Still being resolved (waiting for it may help).
    #[serde(skip)]
    pending: bool,
}

impl fmt::Display for NextHopStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.backend)?;
        if self.hops.is_empty() {
            return f.write_str(self.problem.as_deref().unwrap_or("no next hop"));
        }
        for (i, h) in self.hops.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if let Some(p) = &h.problem {
                f.write_str(p)?;
                continue;
            }
            match h.via_gateway {
                true => write!(f, "via {} on {}", h.neighbour, h.interface)?,
                false => write!(f, "on-link on {}", h.interface)?,
            }
            write!(f, ", {} {}", h.mac.as_deref().unwrap_or("no MAC"), h.state)?;
        }
        Ok(())
    }
}

/// The managed neighbour entries this process owns, for the next hops of a set of backends.
pub struct NextHops {
    netlink: Netlink,
    /// Interfaces the balancer is attached to, by index: next hops elsewhere are not managed
    /// (the balancer cannot send there) and reported.
    attached: BTreeMap<u32, String>,
    owned: BTreeSet<Entry>,
    /// Entries the last sync could not make, with why: for [`NextHops::status`].
    failed: BTreeMap<Entry, String>,
}

impl NextHops {
    /// Next hops on the `attached` interfaces (names in the calling thread's network namespace).
    /// Adopts every entry marked with [`NEIGHBOUR_PROTOCOL`] already there (an earlier lbd's):
    /// the next [`NextHops::sync`] keeps those still needed and removes the rest.
    pub fn new(attached: &[String]) -> Result<NextHops, HostError> {
        let mut by_index = BTreeMap::new();
        for name in attached {
            let index = link::ifindex(name).ok_or_else(|| HostError::NoInterface(name.clone()))?;
            by_index.insert(index, name.clone());
        }
        let netlink = Netlink::open().map_err(HostError::NetlinkSocket)?;
        let owned = netlink
            .neighbours(|n| n.protocol == NEIGHBOUR_PROTOCOL)
            .map_err(netlink_error("listing neighbour entries"))?
            .into_iter()
            .map(|n| Entry { ifindex: n.ifindex, address: n.address })
            .collect();
        Ok(NextHops { netlink, attached: by_index, owned, failed: BTreeMap::new() })
    }

    /// The entries this process owns (made or adopted).
    pub fn owned(&self) -> impl Iterator<Item = &Entry> {
        self.owned.iter()
    }

    /// Finds the next hops of `backends` (route lookups), makes sure each has a managed
    /// neighbour entry, and removes our entries that no backend needs any more. Returns what it
    /// changed. Call it on every config apply and every few seconds (routes change). A backend
    /// without a usable route is no error here: [`NextHops::status`] says why.
    pub fn sync(&mut self, backends: &BTreeSet<IpAddr>) -> Result<Vec<Change>, HostError> {
        let mut needed = BTreeSet::new();
        for &backend in backends {
            let Ok(route) = self.netlink.route_match(backend) else { continue };
            if route.kind != RTN_UNICAST {
                continue;
            }
            for hop in route.hops.iter().filter(|h| self.attached.contains_key(&h.ifindex)) {
                needed.insert(Entry { ifindex: hop.ifindex, address: hop.gateway.unwrap_or(backend) });
            }
        }
        let mut changes = Vec::new();
        self.failed.clear();
        for &entry in &needed {
            match self.ensure(entry) {
                Ok(Some(change)) => changes.push(change),
                Ok(None) => {}
                Err(e) => {
                    self.failed.insert(entry, e.to_string());
                    changes.push(Change::Failed { entry, error: e.to_string() });
                }
            }
        }
        let unneeded: Vec<Entry> = self.owned.difference(&needed).copied().collect();
        for entry in unneeded {
            changes.push(self.remove(entry));
        }
        Ok(changes)
    }

    /// Makes `entry` a managed one of ours unless it belongs to someone else.
    fn ensure(&mut self, entry: Entry) -> io::Result<Option<Change>> {
        let Entry { ifindex, address } = entry;
        let existing = self.netlink.neighbour(ifindex, address)?;
        let change = match existing {
            None => {
                match self.netlink.add_managed_neighbour(ifindex, address, NEIGHBOUR_PROTOCOL, Write::Create)
                {
                    Ok(()) => Change::Added(entry),
                    // Made by the kernel since we looked: the next sync decides.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            Some(n) if n.protocol == NEIGHBOUR_PROTOCOL => {
                self.owned.insert(entry);
                if !n.managed() {
                    // Ours but no longer managed (someone replaced it without the flag).
                    self.netlink.add_managed_neighbour(
                        ifindex,
                        address,
                        NEIGHBOUR_PROTOCOL,
                        Write::CreateOrReplace,
                    )?;
                }
                return Ok(None);
            }
            Some(n) if owner(&n) == Owner::Other => return Ok(None),
            Some(_) => {
                self.netlink.add_managed_neighbour(
                    ifindex,
                    address,
                    NEIGHBOUR_PROTOCOL,
                    Write::CreateOrReplace,
                )?;
                Change::Converted(entry)
            }
        };
        self.owned.insert(entry);
        Ok(Some(change))
    }

    /// Deletes one of our entries, if it is still ours.
    fn remove(&mut self, entry: Entry) -> Change {
        let result = match self.netlink.neighbour(entry.ifindex, entry.address) {
            Ok(Some(n)) if n.protocol == NEIGHBOUR_PROTOCOL => {
                match self.netlink.delete_neighbour(entry.ifindex, entry.address) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }
            // Gone, or taken over by someone else since: not ours to delete.
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.owned.remove(&entry);
                Change::Removed(entry)
            }
            Err(e) => Change::Failed { entry, error: format!("deleting it failed: {e}") },
        }
    }

    /// Removes every entry we own (lbd --on-exit detach). Returns what it did.
    pub fn clear(&mut self) -> Vec<Change> {
        let owned: Vec<Entry> = self.owned.iter().copied().collect();
        owned.into_iter().map(|e| self.remove(e)).collect()
    }

    /// A backend's next hops for operators: interface, next-hop address, MAC and NUD state, or
    /// why there is none. Asks the kernel now (routes and states as they are).
    pub fn status(&self, backend: IpAddr) -> NextHopStatus {
        let failed = |problem: String| NextHopStatus { backend, hops: Vec::new(), problem: Some(problem) };
        let route = match self.netlink.route_match(backend) {
            Ok(route) => route,
            Err(e) => return failed(route_problem(backend, &e)),
        };
        match route.kind {
            RTN_UNICAST => {}
            RTN_LOCAL => return failed(format!("{backend} is an address of this host")),
            kind => return failed(format!("the route to {backend} is of type {kind}, not unicast")),
        }
        if route.hops.is_empty() {
            return failed(format!(
                "the route to {backend} names no interface (a nexthop object without \
                 net.ipv4.nexthop_compat_mode=1?)"
            ));
        }
        let hops: Vec<HopStatus> =
            route.hops.iter().map(|h| self.hop_status(h.ifindex, h.gateway, backend)).collect();
        let problems: Vec<&str> = hops.iter().filter_map(|h| h.problem.as_deref()).collect();
        let problem = (!problems.is_empty()).then(|| problems.join("; "));
        NextHopStatus { backend, hops, problem }
    }

    fn hop_status(&self, ifindex: u32, gateway: Option<IpAddr>, backend: IpAddr) -> HopStatus {
        let interface = interface_name(ifindex);
        let neighbour = gateway.unwrap_or(backend);
        let mut hop = HopStatus {
            interface: interface.clone(),
            neighbour,
            via_gateway: gateway.is_some(),
            mac: None,
            state: neigh::state_name(0).to_owned(),
            owner: Owner::None,
            problem: None,
            pending: false,
        };
        if !self.attached.contains_key(&ifindex) {
            hop.problem = Some(format!("route leaves by {interface}, which the balancer is not attached to"));
            return hop;
        }
        let entry = Entry { ifindex, address: neighbour };
        match self.netlink.neighbour(ifindex, neighbour) {
            Err(e) => hop.problem = Some(format!("reading neighbour {neighbour} on {interface}: {e}")),
            Ok(None) => {
                hop.pending = !self.failed.contains_key(&entry);
                hop.problem = Some(match self.failed.get(&entry) {
                    Some(error) => format!(
                        "no neighbour entry for {neighbour} on {interface}: adding one failed: {error}"
                    ),
                    None => format!("no neighbour entry for {neighbour} on {interface} yet"),
                });
            }
            Ok(Some(n)) => {
                hop.mac = n.mac();
                hop.state = n.state_name().to_owned();
                hop.owner = owner(&n);
                if !n.valid() {
                    hop.pending = n.state & (nud::FAILED | nud::NOARP | nud::PERMANENT) == 0;
                    hop.problem = Some(format!("neighbour {neighbour} on {interface} {}", n.state_name()));
                }
            }
        }
        hop
    }

    /// Waits until the next hops of `backends` have a link-layer address, or `timeout` passes,
    /// or nothing left to wait for can still resolve (no route, FAILED): so that the first
    /// packet of the first connection to a new backend is forwarded. The error lists each
    /// backend still unresolved, and why.
    pub fn wait_resolved(&self, backends: &BTreeSet<IpAddr>, timeout: Duration) -> Result<(), HostError> {
        let start = Instant::now();
        loop {
            let unresolved: Vec<NextHopStatus> =
                backends.iter().map(|&b| self.status(b)).filter(|s| s.problem.is_some()).collect();
            if unresolved.is_empty() {
                return Ok(());
            }
            let pending = unresolved.iter().any(|s| s.hops.iter().any(|h| h.pending));
            if !pending || start.elapsed() >= timeout {
                return Err(HostError::Unresolved {
                    waited_ms: start.elapsed().as_millis(),
                    unresolved: unresolved.iter().map(|s| s.to_string()).collect(),
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Who made `n`, by its marks.
fn owner(n: &Neighbour) -> Owner {
    let fixed = n.state & (nud::PERMANENT | nud::NOARP) != 0;
    let external = n.flags & neigh::NTF_EXT_LEARNED != 0;
    if n.protocol == NEIGHBOUR_PROTOCOL {
        Owner::Lbd
    } else if fixed || external || n.protocol != 0 || n.managed() {
        Owner::Other
    } else {
        Owner::Kernel
    }
}

/// Why a route lookup found nothing usable, in an operator's words.
fn route_problem(backend: IpAddr, e: &io::Error) -> String {
    match errno(e) {
        Some(libc::ENETUNREACH) => format!("no route to {backend}"),
        Some(libc::EHOSTUNREACH) => format!("the route to {backend} is unreachable (type unreachable)"),
        Some(libc::EACCES) => format!("the route to {backend} is prohibited (type prohibit)"),
        Some(libc::EINVAL) => format!("the route to {backend} is a blackhole"),
        _ => format!("looking up the route to {backend}: {e}"),
    }
}

fn interface_name(ifindex: u32) -> String {
    link::ifname(ifindex).unwrap_or_else(|| format!("interface #{ifindex}"))
}

fn netlink_error(action: &'static str) -> impl Fn(io::Error) -> HostError {
    move |source| HostError::Netlink { action: action.to_owned(), source }
}
