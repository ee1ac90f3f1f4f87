//! `host::neighbours::NextHops` in real namespaces: it finds each backend's next hops by route
//! lookup (on-link, behind a gateway, every path of a multipath route), keeps a managed
//! neighbour entry marked as ours for each, removes only its own entries, and explains a
//! backend without a usable next hop.
use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    netns::{veth, Netns},
    topology::mac_of,
};
use lb_userspace::host::{
    neighbours::{Change, NextHopStatus, NextHops, Owner, NEIGHBOUR_PROTOCOL},
    HostError,
};

const RESOLVE: Duration = Duration::from_secs(5);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn set(addresses: &[&str]) -> BTreeSet<IpAddr> {
    addresses.iter().map(|a| ip(a)).collect()
}

/// `ip neigh show` lines for `address` in `ns` (empty if there is no entry).
fn neigh_line(ns: &Netns, address: &str) -> String {
    ns.ip(&["-d", "neigh", "show", "to", address]).trim().to_owned()
}

/// The entries marked with our protocol, as `ip neigh show proto 76` lists them.
fn ours(ns: &Netns) -> String {
    ns.ip(&["neigh", "show", "proto", &NEIGHBOUR_PROTOCOL.to_string()])
}

/// lb (eth0 198.18.0.2/24, fd00::2/64) -- veth -- backend (eth0 198.18.0.17/24, fd00::11/64).
fn on_link() -> (Netns, Netns) {
    let lb = Netns::new("lb");
    let backend = Netns::new("backend");
    for ns in [&lb, &backend] {
        ns.skip_dad();
    }
    veth((&lb, "eth0"), (&backend, "eth0"));
    lb.addr("eth0", "198.18.0.2/24");
    lb.addr("eth0", "fd00::2/64");
    backend.addr("eth0", "198.18.0.17/24");
    backend.addr("eth0", "fd00::11/64");
    (lb, backend)
}

fn added(changes: &[Change]) -> usize {
    changes.iter().filter(|c| matches!(c, Change::Added(_))).count()
}

#[test]
fn on_link_backends_get_managed_entries_of_ours_that_resolve() {
    let (lb, backend) = on_link();
    let mac = mac_of(&backend, "eth0");
    let backends = set(&["198.18.0.17", "fd00::11"]);
    let statuses: Vec<NextHopStatus> = lb.run(|| {
        let mut hops = NextHops::new(&["eth0".into()]).expect("NextHops::new");
        let changes = hops.sync(&backends).expect("sync");
        assert_eq!(added(&changes), 2, "one managed entry per on-link backend: {changes:?}");
        hops.wait_resolved(&backends, RESOLVE).unwrap_or_else(|e| panic!("not resolved: {e}"));
        let again = hops.sync(&backends).expect("second sync");
        assert!(again.is_empty(), "a second sync changes nothing: {again:?}");
        backends.iter().map(|&b| hops.status(b)).collect()
    });
    for s in &statuses {
        assert_eq!(s.problem, None, "{s}");
        let [hop] = &s.hops[..] else { panic!("one next hop expected: {s}") };
        assert_eq!(
            (hop.interface.as_str(), hop.neighbour, hop.via_gateway),
            ("eth0", s.backend, false),
            "{s}"
        );
        assert_eq!(hop.mac.as_deref(), Some(mac.as_str()), "{s}");
        assert_eq!(hop.state, "REACHABLE", "{s}");
        assert_eq!(hop.owner, Owner::Lbd, "{s}");
        assert_eq!(s.to_string(), format!("{}: on-link on eth0, {mac} REACHABLE", s.backend));
    }
    for address in ["198.18.0.17", "fd00::11"] {
        let line = neigh_line(&lb, address);
        assert!(line.contains("managed") && line.contains("proto 76"), "not a managed entry of ours: {line}");
    }
}

/// lb (eth0 198.18.0.2/24) -- router (eth0 198.18.0.1, eth1 198.18.7.1/24) -- backend
/// (198.18.7.17/24); the same in IPv6 (fd00::/64, fd00:7::/64); lb routes both via the router.
#[test]
fn a_backend_behind_a_gateway_gets_the_gateways_entry() {
    let lb = Netns::new("lb");
    let router = Netns::new("router");
    let backend = Netns::new("backend");
    for ns in [&lb, &router, &backend] {
        ns.skip_dad();
    }
    veth((&lb, "eth0"), (&router, "eth0"));
    veth((&router, "eth1"), (&backend, "eth0"));
    lb.addr("eth0", "198.18.0.2/24");
    lb.addr("eth0", "fd00::2/64");
    router.addr("eth0", "198.18.0.1/24");
    router.addr("eth0", "fd00::1/64");
    router.addr("eth1", "198.18.7.1/24");
    router.addr("eth1", "fd00:7::1/64");
    backend.addr("eth0", "198.18.7.17/24");
    backend.addr("eth0", "fd00:7::11/64");
    lb.ip(&["route", "add", "198.18.7.0/24", "via", "198.18.0.1"]);
    lb.ip(&["route", "add", "fd00:7::/64", "via", "fd00::1"]);
    let router_mac = mac_of(&router, "eth0");
    let backends = set(&["198.18.7.17", "fd00:7::11"]);
    let statuses: Vec<NextHopStatus> = lb.run(|| {
        let mut hops = NextHops::new(&["eth0".into()]).expect("NextHops::new");
        let changes = hops.sync(&backends).expect("sync");
        assert_eq!(added(&changes), 2, "one entry per gateway (one per family): {changes:?}");
        hops.wait_resolved(&backends, RESOLVE).unwrap_or_else(|e| panic!("not resolved: {e}"));
        backends.iter().map(|&b| hops.status(b)).collect()
    });
    for (s, gateway) in statuses.iter().zip(["198.18.0.1", "fd00::1"]) {
        let [hop] = &s.hops[..] else { panic!("one next hop expected: {s}") };
        assert_eq!((hop.neighbour, hop.via_gateway), (ip(gateway), true), "{s}");
        assert_eq!(hop.mac.as_deref(), Some(router_mac.as_str()), "{s}");
        assert_eq!(s.problem, None, "{s}");
    }
    let listed = ours(&lb);
    assert!(listed.contains("198.18.0.1 ") && listed.contains("fd00::1 "), "gateways not ours: {listed}");
    assert!(!listed.contains("198.18.7.17"), "the backend behind the gateway is no neighbour: {listed}");
}

/// lb has two links to a router (eth0 198.18.0.0/24, eth1 198.18.1.0/24) and a multipath
/// route to 198.18.9.0/24 over both.
#[test]
fn a_multipath_route_gives_an_entry_for_each_path() {
    let lb = Netns::new("lb");
    let router = Netns::new("router");
    veth((&lb, "eth0"), (&router, "eth0"));
    veth((&lb, "eth1"), (&router, "eth1"));
    lb.addr("eth0", "198.18.0.2/24");
    lb.addr("eth1", "198.18.1.2/24");
    router.addr("eth0", "198.18.0.1/24");
    router.addr("eth1", "198.18.1.1/24");
    lb.ip(&[
        "route",
        "add",
        "198.18.9.0/24",
        "nexthop",
        "via",
        "198.18.0.1",
        "dev",
        "eth0",
        "nexthop",
        "via",
        "198.18.1.1",
        "dev",
        "eth1",
    ]);
    let backends = set(&["198.18.9.9"]);
    let status = lb.run(|| {
        let mut hops = NextHops::new(&["eth0".into(), "eth1".into()]).expect("NextHops::new");
        let changes = hops.sync(&backends).expect("sync");
        assert_eq!(added(&changes), 2, "one entry per path: {changes:?}");
        hops.wait_resolved(&backends, RESOLVE).unwrap_or_else(|e| panic!("not resolved: {e}"));
        hops.status(ip("198.18.9.9"))
    });
    let paths: Vec<(String, IpAddr)> =
        status.hops.iter().map(|h| (h.interface.clone(), h.neighbour)).collect();
    assert_eq!(
        paths,
        vec![("eth0".to_owned(), ip("198.18.0.1")), ("eth1".to_owned(), ip("198.18.1.1"))],
        "both paths: {status}"
    );
    assert_eq!(status.problem, None, "{status}");
    assert!(status.hops.iter().all(|h| h.state == "REACHABLE"), "{status}");
}

/// Entries we made go when no backend needs them and on clear; a restarted instance adopts
/// ours; entries others made (permanent, another protocol, another program's managed one) are
/// never touched; a dynamic entry the kernel learned becomes ours.
#[test]
fn only_our_own_entries_are_ever_removed() {
    let (lb, backend) = on_link();
    for a in ["198.18.0.18/24", "198.18.0.19/24", "198.18.0.20/24", "198.18.0.21/24"] {
        backend.ip(&["addr", "add", a, "dev", "eth0"]);
    }
    // Someone else's entries: a permanent one, a managed one of protocol 99 (another daemon).
    lb.ip(&[
        "neigh",
        "replace",
        "198.18.0.19",
        "lladdr",
        "02:00:00:00:00:19",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    lb.ip(&["neigh", "add", "198.18.0.20", "dev", "eth0", "managed", "proto", "99"]);
    // A dynamic entry the kernel learned: the stack talked to .21.
    lb.run(|| {
        let _ =
            std::net::TcpStream::connect_timeout(&"198.18.0.21:9".parse().unwrap(), Duration::from_secs(2));
    });
    let dynamic = neigh_line(&lb, "198.18.0.21");
    assert!(!dynamic.is_empty() && !dynamic.contains("managed"), "no dynamic entry to start with: {dynamic}");
    let others = [neigh_line(&lb, "198.18.0.19"), neigh_line(&lb, "198.18.0.20")];

    let all = set(&["198.18.0.17", "198.18.0.18", "198.18.0.19", "198.18.0.20", "198.18.0.21"]);
    lb.run(|| {
        let mut hops = NextHops::new(&["eth0".into()]).expect("NextHops::new");
        let changes = hops.sync(&all).expect("sync");
        assert_eq!(added(&changes), 2, ".17 and .18 are new: {changes:?}");
        assert!(
            changes.iter().any(|c| matches!(c, Change::Converted(e) if e.address == ip("198.18.0.21"))),
            "{changes:?}"
        );
        assert_eq!(changes.len(), 3, "the permanent and the protocol-99 entries are left alone: {changes:?}");
        let status = hops.status(ip("198.18.0.19"));
        assert_eq!(status.hops[0].owner, Owner::Other, "{status}");

        // .18 and .21 are no longer needed: ours, so removed. .19 and .20 are not ours.
        let changes = hops.sync(&set(&["198.18.0.17"])).expect("sync to one backend");
        let removed: BTreeSet<IpAddr> = changes
            .iter()
            .filter_map(|c| if let Change::Removed(e) = c { Some(e.address) } else { None })
            .collect();
        assert_eq!(removed, set(&["198.18.0.18", "198.18.0.21"]), "{changes:?}");
    });
    assert!(neigh_line(&lb, "198.18.0.18").is_empty(), "entry .18 is still there");
    let listed = ours(&lb);
    assert!(listed.contains("198.18.0.17 ") && !listed.contains("198.18.0.21"), "{listed}");

    // A new instance (a restarted lbd) adopts .17, and clear removes it.
    lb.run(|| {
        let mut hops = NextHops::new(&["eth0".into()]).expect("NextHops::new");
        let owned: Vec<IpAddr> = hops.owned().map(|e| e.address).collect();
        assert_eq!(owned, vec![ip("198.18.0.17")], "adopted by its mark");
        let changes = hops.clear();
        assert!(
            matches!(&changes[..], [Change::Removed(e)] if e.address == ip("198.18.0.17")),
            "{changes:?}"
        );
    });
    assert!(ours(&lb).trim().is_empty(), "entries of ours left after clear: {}", ours(&lb));
    assert_eq!(
        [neigh_line(&lb, "198.18.0.19"), neigh_line(&lb, "198.18.0.20")],
        others,
        "others' entries changed"
    );
}

#[test]
fn status_says_why_a_backend_has_no_next_hop() {
    let (lb, _backend) = on_link();
    let other = Netns::new("other");
    veth((&lb, "eth1"), (&other, "eth0"));
    lb.addr("eth1", "198.18.3.2/24");
    // Fail fast: one probe, 100 ms apart.
    for key in ["net.ipv4.neigh.eth0.mcast_solicit", "net.ipv4.neigh.eth0.ucast_solicit"] {
        lb.sysctl(key, "1");
    }
    lb.sysctl("net.ipv4.neigh.eth0.retrans_time_ms", "100");
    lb.run(|| {
        let mut hops = NextHops::new(&["eth0".into()]).expect("NextHops::new");
        let backends = set(&["198.18.0.99", "198.19.99.1", "198.18.3.9", "198.18.0.2"]);
        hops.sync(&backends).expect("sync");
        let problem = |b: &str| hops.status(ip(b)).problem.unwrap_or_else(|| panic!("{b} has a next hop"));
        assert_eq!(problem("198.19.99.1"), "no route to 198.19.99.1");
        assert_eq!(problem("198.18.3.9"), "route leaves by eth1, which the balancer is not attached to");
        assert_eq!(problem("198.18.0.2"), "198.18.0.2 is an address of this host");
        // Nobody has .99: the managed entry fails.
        let deadline = Instant::now() + RESOLVE;
        let failed = loop {
            let p = problem("198.18.0.99");
            if p.ends_with("FAILED") || Instant::now() > deadline {
                break p;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(failed, "neighbour 198.18.0.99 on eth0 FAILED");
        match hops.wait_resolved(&set(&["198.18.0.99", "198.19.99.1"]), Duration::from_secs(3)) {
            Err(HostError::Unresolved { unresolved, waited_ms }) => {
                assert!(waited_ms < 2000, "nothing could resolve, yet it waited {waited_ms} ms");
                let text = unresolved.join("; ");
                assert!(
                    text.contains("198.18.0.99: neighbour 198.18.0.99 on eth0 FAILED")
                        && text.contains("198.19.99.1: no route to 198.19.99.1"),
                    "{text}"
                );
            }
            other => panic!("wait_resolved should fail naming both: {other:?}"),
        }
        hops.clear();
    });
}
