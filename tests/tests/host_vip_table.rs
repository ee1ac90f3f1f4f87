//! The VIP table in a real namespace: lbd's routes (one table, one protocol) added, listed and
//! deleted one message each, of both families; a sync changes only the difference, never a
//! route of another protocol or table, and nothing at all when the table already holds what it
//! wants (what makes an lbd restart invisible to BIRD).
use std::{collections::BTreeSet, net::IpAddr};

use lb_tests::netns::Netns;
use lb_userspace::{
    announce::table::VipTable,
    host::netlink::{route::TableRoute, Netlink},
};

const TABLE: u32 = 4242;
const PROTOCOL: u8 = 242;

fn host(address: &str) -> TableRoute {
    TableRoute::host(address.parse::<IpAddr>().unwrap())
}

fn routes(list: &[&str]) -> BTreeSet<TableRoute> {
    list.iter().map(|a| host(a)).collect()
}

/// Every route of the namespace's table 4242, as `ip` prints it (both families).
fn table(ns: &Netns) -> String {
    ns.ip(&["-4", "route", "show", "table", "4242"]) + &ns.ip(&["-6", "route", "show", "table", "4242"])
}

#[test]
fn routes_of_one_table_and_protocol_are_added_listed_and_deleted_one_by_one() {
    let ns = Netns::new("lb");
    ns.run(|| {
        let netlink = Netlink::open().expect("netlink");
        for a in ["198.18.100.1", "fd00:0:0:100::1"] {
            netlink
                .add_table_route(TABLE, PROTOCOL, host(a), 1)
                .unwrap_or_else(|e| panic!("adding {a}: {e}"));
        }
        // Again: EEXIST (a sync adds only what the table lacks; see the test below).
        let again = netlink.add_table_route(TABLE, PROTOCOL, host("198.18.100.1"), 1).unwrap_err();
        assert_eq!(lb_userspace::host::netlink::errno(&again), Some(libc::EEXIST), "{again}");
        let listed: BTreeSet<TableRoute> =
            netlink.table_routes(TABLE, PROTOCOL).expect("list").into_iter().collect();
        assert_eq!(listed, routes(&["198.18.100.1", "fd00:0:0:100::1"]));
        assert!(netlink.table_routes(TABLE, 243).expect("list").is_empty(), "another protocol lists nothing");
        assert!(
            netlink.table_routes(4243, PROTOCOL).expect("list").is_empty(),
            "another table lists nothing"
        );
        netlink.delete_table_route(TABLE, PROTOCOL, host("fd00:0:0:100::1")).expect("delete");
        assert_eq!(netlink.table_routes(TABLE, PROTOCOL).expect("list"), [host("198.18.100.1")]);
    });
    let shown = table(&ns);
    assert!(
        shown.contains("198.18.100.1 dev lo proto 242 scope link") && !shown.contains("fd00"),
        "ip route sees:\n{shown}"
    );
}

#[test]
fn a_sync_changes_only_the_difference_and_never_another_protocols_route() {
    let ns = Netns::new("lb");
    // Someone else's route in the same table, and lbd's protocol in the main table.
    ns.ip(&["-4", "route", "add", "198.18.100.9/32", "dev", "lo", "proto", "static", "table", "4242"]);
    ns.ip(&["-4", "route", "add", "198.18.100.8/32", "dev", "lo", "proto", "242"]);
    ns.run(|| {
        let vips = VipTable::open(TABLE, PROTOCOL).expect("VIP table");
        let synced = vips.sync(&routes(&["198.18.100.1", "198.18.100.2", "fd00:0:0:100::1"])).expect("sync");
        assert_eq!((synced.added.len(), synced.removed.len(), synced.failed.len()), (3, 0, 0), "{synced:?}");
        // The same again: nothing to do (an lbd restart).
        let synced = vips.sync(&routes(&["198.18.100.1", "198.18.100.2", "fd00:0:0:100::1"])).expect("sync");
        assert!(synced.added.is_empty() && synced.removed.is_empty(), "{synced:?}");
        let synced = vips.sync(&routes(&["198.18.100.2"])).expect("sync");
        assert_eq!(synced.removed, [host("198.18.100.1"), host("fd00:0:0:100::1")]);
        assert_eq!(synced.held, routes(&["198.18.100.2"]));
        // Withdraw everything.
        let synced = vips.sync(&BTreeSet::new()).expect("sync");
        assert!(synced.held.is_empty() && synced.failed.is_empty(), "{synced:?}");
        // Someone else's route to a VIP address: not replaced (and so never deleted), reported.
        let synced = vips.sync(&routes(&["198.18.100.9"])).expect("sync");
        assert!(synced.added.is_empty() && synced.held.is_empty(), "{synced:?}");
        assert!(
            synced.failed.iter().any(|(r, e)| *r == host("198.18.100.9") && e.contains("another protocol")),
            "{synced:?}"
        );
        let synced = vips.sync(&BTreeSet::new()).expect("sync");
        assert!(synced.removed.is_empty(), "{synced:?}");
    });
    let shown = table(&ns);
    assert_eq!(
        shown.trim(),
        "198.18.100.9 dev lo proto static scope link",
        "only the other route stays:\n{shown}"
    );
    assert!(
        ns.ip(&["-4", "route", "show", "198.18.100.8/32"]).contains("proto 242"),
        "the main table's route stays"
    );
}
