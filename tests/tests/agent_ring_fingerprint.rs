//! The same answer on every balancer host: two lbds given the same VIP with its backends added
//! in another order (so other backend ids) report the same ring fingerprint, and their rings,
//! read from the pinned maps, name the same backend address in every slot: every flow (a hash
//! into the ring, under the same seed) gets the same backend.
use std::{collections::BTreeMap, net::IpAddr};

use lb_tests::lbd::{lb_namespace, map_snapshot, Lbd, LbdFiles};

const RING: u32 = 4099;
const BACKENDS: [&str; 4] = ["198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14"];

fn config(files: &LbdFiles, order: &[usize]) -> String {
    let mut c =
        files.header(&["eth0"], "198.18.0.2", "fd00::2").replace("[source]\n", "[source]\nhash_seed = 77\n");
    c += &format!("[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\nring_size = {RING}\n");
    for &i in order {
        c += &format!("[[vip.backend]]\naddress = \"{}\"\nweight = {}\n", BACKENDS[i], 100 + 50 * i);
    }
    c
}

/// The VIP's ring as backend addresses, and the ids the lbd gave the backends.
fn ring_as_addresses(files: &LbdFiles) -> (Vec<Option<IpAddr>>, BTreeMap<IpAddr, u32>) {
    let snapshot = map_snapshot(&files.pin_path.join(lb_common::PIN_LAYOUT), RING);
    let ids: BTreeMap<u32, IpAddr> = snapshot
        .backends
        .iter()
        .map(|(id, b)| {
            let octets: [u8; 4] = b.addr[..4].try_into().expect("IPv4");
            (*id, IpAddr::from(octets))
        })
        .collect();
    let ring = snapshot.rings.iter().map(|id| ids.get(id).copied()).collect();
    (ring, ids.into_iter().map(|(id, a)| (a, id)).collect())
}

fn fingerprint(lbd: &Lbd) -> (String, String) {
    let status: lb_userspace::api::Status =
        serde_json::from_str(&lbd.lbctl_ok(&["--json", "status"])).expect("status JSON");
    let list: serde_json::Value =
        serde_json::from_str(&lbd.lbctl_ok(&["--json", "vip", "list"])).expect("vip list JSON");
    let listed =
        list[0]["ring_fingerprint"].as_str().expect("vip list --json has ring_fingerprint").to_owned();
    (status.rings[0].fingerprint.clone(), listed)
}

#[test]
fn two_lbds_with_backends_added_in_another_order_report_the_same_fingerprint_and_ring() {
    let (ns_a, ns_b) = (lb_namespace(), lb_namespace());
    let (files_a, files_b) = (LbdFiles::new(), LbdFiles::new());
    let a = Lbd::start(&ns_a, &files_a, &config(&files_a, &[0, 1, 2, 3]));
    let b = Lbd::start(&ns_b, &files_b, &config(&files_b, &[3, 1, 0, 2]));
    let ((ring_a, ids_a), (ring_b, ids_b)) = (ring_as_addresses(&files_a), ring_as_addresses(&files_b));
    println!("backend ids: {ids_a:?} and {ids_b:?}");
    assert_ne!(ids_a, ids_b, "the test needs the two lbds to give the backends other ids");
    assert!(ring_a.iter().all(Option::is_some), "every slot names a configured backend");
    let differ = ring_a.iter().zip(&ring_b).filter(|(x, y)| x != y).count();
    assert_eq!(differ, 0, "{differ} of {RING} slots name another backend on the other lbd");

    let (status_a, listed_a) = fingerprint(&a);
    let (status_b, listed_b) = fingerprint(&b);
    println!("fingerprints: {status_a} and {status_b}");
    assert_eq!((&status_a, &listed_a), (&status_b, &listed_b), "lbctl status and vip list --json must agree");
    assert_eq!(status_a, listed_a);
    let out = a.lbctl_ok(&["status"]);
    assert!(out.contains(&status_a), "lbctl status prints the fingerprint:\n{out}");

    // A different weight on one host is a different ring: the fingerprints say so.
    a.lbctl_ok(&["backend", "weight", "web", BACKENDS[0], "300"]);
    assert_ne!(fingerprint(&a).0, status_b, "another weight, the same fingerprint");
}
