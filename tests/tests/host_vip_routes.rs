//! The VIP addresses' blackhole routes in real namespaces: one per VIP address, of both
//! families, in the main table, marked with lbd's route protocol; gone with the address's last
//! VIP; put back when someone deletes one; adopted by a restarted lbd; kept on exit by default
//! and removed by `--on-exit detach`. A route for a VIP address that lbd did not make (another
//! type, protocol or metric) is never touched, only reported.
use std::{collections::BTreeSet, net::IpAddr};

use lb_tests::{
    lbd::{lb_namespace, Lbd, LbdFiles},
    netns::Netns,
};
use lb_userspace::host::{
    netlink::route::TableRoute,
    vip_routes::{Change, VipRoutes},
};

const PROTOCOL: u8 = 242;

fn host(address: &str) -> TableRoute {
    TableRoute::host(address.parse::<IpAddr>().unwrap())
}

fn addresses(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// lbd's routes as `ip route` lists them: the blackholes marked with its protocol, both families.
fn blackholes(ns: &Netns) -> String {
    let listed = ns.ip(&["-4", "route", "show", "table", "main", "type", "blackhole"])
        + &ns.ip(&["-6", "route", "show", "table", "main", "type", "blackhole"]);
    let ours = format!(" proto {PROTOCOL}");
    listed.lines().filter(|l| l.contains(&ours)).map(|l| format!("{l}\n")).collect()
}

/// Whether `shown` (from [`blackholes`]) has lbd's route for `address`.
fn lists(shown: &str, address: &str) -> bool {
    shown.lines().any(|l| l.starts_with(&format!("blackhole {address} ")))
}

/// Every route of the main table for `prefix`, as `ip route` lists them.
fn routes_to(ns: &Netns, prefix: &str) -> String {
    let family = if prefix.contains(':') { "-6" } else { "-4" };
    ns.ip(&[family, "route", "show", "exact", prefix, "table", "main"]).trim().to_owned()
}

/// Routes for VIP addresses that someone else made: a unicast route, a route of lbd's protocol
/// that is not a blackhole, an IPv6 route with another metric.
fn foreign_routes(ns: &Netns) {
    ns.ip(&["-4", "route", "add", "198.18.100.3/32", "dev", "lo", "proto", "static"]);
    ns.ip(&["-4", "route", "add", "198.18.100.4/32", "dev", "lo", "proto", "242"]);
    ns.ip(&["-6", "route", "add", "blackhole", "fd00:0:0:100::3/128", "proto", "static", "metric", "2048"]);
}

#[test]
fn a_sync_makes_one_blackhole_per_vip_address_and_never_touches_anothers_route() {
    let ns = Netns::new("lb");
    foreign_routes(&ns);
    let foreign_before: Vec<String> = ["198.18.100.3/32", "198.18.100.4/32", "fd00:0:0:100::3/128"]
        .iter()
        .map(|p| routes_to(&ns, p))
        .collect();
    let vips =
        addresses(&["198.18.100.1", "198.18.100.3", "198.18.100.4", "fd00:0:0:100::1", "fd00:0:0:100::3"]);
    ns.run(|| {
        let mut routes = VipRoutes::new(PROTOCOL).expect("VipRoutes::new");
        let changes = routes.sync(&vips).expect("sync");
        let added: BTreeSet<TableRoute> =
            changes.iter().filter_map(|c| if let Change::Added(r) = c { Some(*r) } else { None }).collect();
        assert_eq!(added, [host("198.18.100.1"), host("fd00:0:0:100::1")].into(), "{changes:?}");
        let foreign: BTreeSet<TableRoute> = changes
            .iter()
            .filter_map(|c| if let Change::Foreign { vip, .. } = c { Some(*vip) } else { None })
            .collect();
        assert_eq!(
            foreign,
            [host("198.18.100.3"), host("198.18.100.4"), host("fd00:0:0:100::3")].into(),
            "each route in the way is reported: {changes:?}"
        );
        let said = changes.iter().find(|c| matches!(c, Change::Foreign { .. })).unwrap().to_string();
        assert!(said.contains("lbd did not make") && said.contains("loop"), "{said}");
        // The same again (the 5-second refresh): nothing changes and nothing is said again.
        let again = routes.sync(&vips).expect("sync");
        assert!(again.is_empty(), "a second sync: {again:?}");
    });
    let shown = blackholes(&ns);
    assert!(lists(&shown, "198.18.100.1") && lists(&shown, "fd00:0:0:100::1"), "ip route sees:\n{shown}");
    assert_eq!(shown.lines().count(), 2, "one route per VIP address of lbd's, no more:\n{shown}");

    // Someone deletes one of ours: the next sync puts it back.
    ns.ip(&["-4", "route", "del", "blackhole", "198.18.100.1/32"]);
    ns.run(|| {
        let mut routes = VipRoutes::new(PROTOCOL).expect("VipRoutes::new");
        let changes = routes.sync(&vips).expect("sync");
        assert_eq!(changes.iter().filter(|c| matches!(c, Change::Added(_))).count(), 1, "{changes:?}");
        // The IPv6 VIP goes: its route with it; an lbd that restarts with the rest adopts them.
        let fewer = addresses(&["198.18.100.1", "198.18.100.3", "198.18.100.4", "fd00:0:0:100::3"]);
        let changes = routes.sync(&fewer).expect("sync");
        assert!(changes.contains(&Change::Removed(host("fd00:0:0:100::1"))), "{changes:?}");
        let mut restarted = VipRoutes::new(PROTOCOL).expect("VipRoutes::new");
        let changes = restarted.sync(&fewer).expect("sync");
        assert!(
            changes.iter().all(|c| matches!(c, Change::Foreign { .. })),
            "a restart changes nothing: {changes:?}"
        );
        // --on-exit detach: ours go, nothing else.
        let cleared = restarted.clear().expect("clear");
        assert_eq!(cleared, [Change::Removed(host("198.18.100.1"))], "detaching");
    });
    assert_eq!(blackholes(&ns), "", "lbd's routes left after clear");
    let foreign_after: Vec<String> = ["198.18.100.3/32", "198.18.100.4/32", "fd00:0:0:100::3/128"]
        .iter()
        .map(|p| routes_to(&ns, p))
        .collect();
    assert_eq!(foreign_after, foreign_before, "a route lbd did not make changed");
}

fn log(files: &LbdFiles) -> String {
    std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default()
}

fn vip(name: &str, address: &str, port: u16) -> String {
    format!(
        "[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\nprotocol = \"tcp\"\n\
         [[vip.backend]]\naddress = \"{}\"\n\n",
        if address.contains(':') { "fd00::11" } else { "198.18.0.17" }
    )
}

#[test]
fn lbd_keeps_a_blackhole_per_vip_address_without_announce_and_removes_them_only_on_detach() {
    let ns = lb_namespace();
    ns.addr("eth0", "fd00::2/64");
    ns.ip(&["-4", "route", "add", "198.18.100.3/32", "dev", "lo", "proto", "static"]);
    let foreign = routes_to(&ns, "198.18.100.3/32");
    let files = LbdFiles::new();
    let config = files.header(&["eth0"], "198.18.0.2", "fd00::2")
        + &vip("web", "198.18.100.1", 80)
        + &vip("web-tls", "198.18.100.1", 443)
        + &vip("web6", "fd00:0:0:100::1", 80)
        + &vip("taken", "198.18.100.3", 80);
    let lbd = Lbd::start(&ns, &files, &config);
    let shown = blackholes(&ns);
    assert!(
        lists(&shown, "198.18.100.1") && lists(&shown, "fd00:0:0:100::1"),
        "lbd started without [announce]:\n{shown}\n{}",
        log(&files)
    );
    assert_eq!(shown.lines().count(), 2, "one route per VIP address (two VIPs share 198.18.100.1):\n{shown}");
    assert!(
        log(&files).contains("already routes VIP address 198.18.100.3/32"),
        "lbd did not report the route in its way:\n{}",
        log(&files)
    );

    // The address's route goes with its last VIP.
    lbd.lbctl_ok(&["vip", "remove", "web"]);
    assert!(lists(&blackholes(&ns), "198.18.100.1"), "removed with a VIP that was not the address's last");
    lbd.lbctl_ok(&["vip", "remove", "web-tls"]);
    let shown = blackholes(&ns);
    assert!(
        !lists(&shown, "198.18.100.1") && lists(&shown, "fd00:0:0:100::1"),
        "after removing web-tls:\n{shown}"
    );

    // The default exit (--on-exit keep): the balancer forwards on, and the routes stay.
    let status = lbd.process.terminate();
    assert!(status.success(), "lbd exited with {status}");
    let shown = blackholes(&ns);
    assert!(
        lists(&shown, "fd00:0:0:100::1") && shown.lines().count() == 1,
        "after lbd exited (on-exit keep):\n{shown}"
    );

    // --on-exit detach: lbd's routes go (a restarted lbd adopted them), nothing else.
    let lbd = Lbd::start_with(&ns, &files, &["--on-exit", "detach"]);
    let status = lbd.process.terminate();
    assert!(status.success(), "lbd exited with {status}:\n{}", log(&files));
    assert_eq!(blackholes(&ns), "", "lbd's routes left after --on-exit detach:\n{}", log(&files));
    assert_eq!(routes_to(&ns, "198.18.100.3/32"), foreign, "the route lbd did not make changed");
}
