//! `host::forwarding::ensure` in a namespace: per interface and family, `enable` turns on what is
//! off (and says what it changed), `check` changes nothing and names every sysctl to set.
use std::collections::BTreeSet;

use lb_tests::netns::Netns;
use lb_userspace::host::{
    forwarding::{self, Policy},
    Family, HostError,
};

fn value(ns: &Netns, key: &str) -> String {
    let out = lb_tests::netns::run(ns.command("sysctl").args(["-n", key]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn namespace() -> Netns {
    let ns = Netns::new("fwd");
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]);
    for f in ["ipv4", "ipv6"] {
        for i in ["all", "eth0", "eth1"] {
            ns.sysctl(&format!("net.{f}.conf.{i}.forwarding"), "0");
        }
    }
    ns
}

#[test]
fn check_names_every_sysctl_to_set_and_changes_nothing() {
    let ns = namespace();
    let both = BTreeSet::from([Family::Ipv4, Family::Ipv6]);
    let result = ns.run(|| forwarding::ensure(&["eth0".into(), "eth1".into()], &both, Policy::Check));
    let Err(HostError::ForwardingOff { commands }) = &result else {
        panic!("check passed with forwarding off: {result:?}")
    };
    assert_eq!(
        commands,
        &[
            "sysctl -w net.ipv4.conf.eth0.forwarding=1",
            "sysctl -w net.ipv6.conf.eth0.forwarding=1",
            "sysctl -w net.ipv4.conf.eth1.forwarding=1",
            "sysctl -w net.ipv6.conf.eth1.forwarding=1",
        ]
    );
    let message = result.unwrap_err().to_string();
    assert!(message.contains("pass_fwd_disabled"), "the error should say what breaks: {message}");
    assert_eq!(value(&ns, "net.ipv4.conf.eth0.forwarding"), "0", "check changed a sysctl");
}

#[test]
fn enable_turns_on_only_what_is_off_per_interface_and_family() {
    let ns = namespace();
    let v4 = BTreeSet::from([Family::Ipv4]);
    let both = BTreeSet::from([Family::Ipv4, Family::Ipv6]);
    let changes = ns.run(|| forwarding::ensure(&["eth0".into()], &v4, Policy::Enable)).expect("enable");
    let shown: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    assert_eq!(shown, ["net.ipv4.conf.eth0.forwarding: 0 -> 1"]);
    assert_eq!(value(&ns, "net.ipv4.conf.eth0.forwarding"), "1");
    assert_eq!(value(&ns, "net.ipv6.conf.eth0.forwarding"), "0", "IPv6 was not asked for");
    assert_eq!(value(&ns, "net.ipv4.conf.eth1.forwarding"), "0", "eth1 was not asked for");
    assert_eq!(value(&ns, "net.ipv4.conf.all.forwarding"), "0", "`all` is never touched");
    ns.run(|| forwarding::ensure(&["eth0".into()], &v4, Policy::Check)).expect("IPv4 on eth0 is on now");

    let changes = ns
        .run(|| forwarding::ensure(&["eth0".into(), "eth1".into()], &both, Policy::Enable))
        .expect("enable");
    let shown: Vec<String> = changes.iter().map(|c| c.sysctl.to_string()).collect();
    assert_eq!(
        shown,
        ["net.ipv6.conf.eth0.forwarding", "net.ipv4.conf.eth1.forwarding", "net.ipv6.conf.eth1.forwarding"]
    );
    let again = ns
        .run(|| forwarding::ensure(&["eth0".into(), "eth1".into()], &both, Policy::Enable))
        .expect("enable");
    assert!(again.is_empty(), "nothing left to change: {again:?}");
    ns.run(|| forwarding::ensure(&["eth0".into(), "eth1".into()], &both, Policy::Check)).expect("all on now");
}

#[test]
fn an_interface_that_does_not_exist_is_named() {
    let ns = namespace();
    let v4 = BTreeSet::from([Family::Ipv4]);
    let result = ns.run(|| forwarding::ensure(&["eth9".into()], &v4, Policy::Enable));
    assert!(matches!(&result, Err(HostError::NoInterface(i)) if i == "eth9"), "{result:?}");
}
