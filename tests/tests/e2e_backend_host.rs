//! `lbd backend-host` as a process on a backend host, behind a real lbd balancer:
//!
//! ```text
//!   client (eth0 198.18.50.1, fd00:50::1)       another subnet than the backend's
//!     | veth
//!   lb (eth1 198.18.50.254, fd00:50::fe | eth0 198.18.0.2, fd00::2)
//!        lbd attached on both; forwarding and the backend's neighbour entries by lb_userspace::host
//!     | veth
//!   backend (eth0 198.18.0.17, fd00::11)        lbd backend-host; rp_filter strict
//! ```
//!
//! The backend host accepts tunnels only from the lb's IPv4 tunnel source: an IPv4 connection
//! to the VIP goes through, IPv6 tunnels (from fd00::2) are dropped and counted. Stopping it
//! removes everything it set up and restores what it changed; killed, it keeps decapsulating
//! and the next run takes over. With `decap = false` (L2 DSR) it only binds VIPs and sets ARP.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_tests::{
    backend_host::BackendHostFiles,
    echo::{tcp_exchange, EchoServer, Proto},
    lbd::{Lbd, LbdFiles},
    netns::{veth, Netns},
    topology::ethtool,
};
use lb_userspace::host::{
    forwarding::{self, Policy},
    neighbours::NextHops,
    Family,
};

const VIP4: &str = "198.18.100.1";
const VIP6: &str = "fd00:0:0:100::1";
/// Already on the backend's lo before backend-host starts: it must stay there after it stops.
const VIP_BEFORE: &str = "198.18.100.9";
const PORT: u16 = 8080;

struct World {
    client: Netns,
    lb: Netns,
    backend: Netns,
}

fn world() -> World {
    let client = Netns::new("client");
    let lb = Netns::new("lb");
    let backend = Netns::new("backend");
    for ns in [&client, &lb, &backend] {
        ns.skip_dad();
    }
    veth((&client, "eth0"), (&lb, "eth1"));
    veth((&lb, "eth0"), (&backend, "eth0"));
    client.addr("eth0", "198.18.50.1/24");
    client.addr("eth0", "fd00:50::1/64");
    client.ip(&["route", "add", "default", "via", "198.18.50.254"]);
    client.ip(&["route", "add", "default", "via", "fd00:50::fe"]);
    // Complete checksums from the client: see topology.rs, configure_client.
    ethtool(&client, &["-K", "eth0", "tx", "off"]);
    lb.addr("eth1", "198.18.50.254/24");
    lb.addr("eth1", "fd00:50::fe/64");
    lb.addr("eth0", "198.18.0.2/24");
    lb.addr("eth0", "fd00::2/64");
    // The lb also routes the backend's replies to the client (IPv6 routing needs `all`).
    lb.sysctl("net.ipv6.conf.all.forwarding", "1");
    backend.addr("eth0", "198.18.0.17/24");
    backend.addr("eth0", "fd00::11/64");
    backend.ip(&["route", "add", "default", "via", "198.18.0.2"]);
    backend.ip(&["route", "add", "default", "via", "fd00::2"]);
    // Strict reverse-path filtering: decapsulated packets from the client's subnet arrive on
    // eth0, where the route back to the client leaves, so it passes them.
    backend.sysctl("net.ipv4.conf.all.rp_filter", "1");
    backend.sysctl("net.ipv4.conf.eth0.rp_filter", "1");
    backend.sysctl("net.ipv4.conf.eth0.arp_announce", "1");
    backend.ip(&["addr", "add", &format!("{VIP_BEFORE}/32"), "dev", "lo"]);
    World { client, lb, backend }
}

/// lbd on the lb with the two VIPs (ipip) on the backend, and what it needs from the host.
fn start_balancer(w: &World, files: &LbdFiles) -> Lbd {
    let vips = format!(
        "[[vip]]\nname = \"v4\"\naddress = \"{VIP4}\"\nport = {PORT}\nprotocol = \"tcp\"\n\
         [[vip.backend]]\naddress = \"198.18.0.17\"\n\n\
         [[vip]]\nname = \"v6\"\naddress = \"{VIP6}\"\nport = {PORT}\nprotocol = \"tcp\"\n\
         [[vip.backend]]\naddress = \"fd00::11\"\n"
    );
    let config = format!("{}{vips}", files.header(&["eth1", "eth0"], "198.18.0.2", "fd00::2"));
    let lbd = Lbd::start(&w.lb, files, &config);
    w.lb.run(|| {
        let interfaces = ["eth1".to_owned(), "eth0".to_owned()];
        let families = BTreeSet::from([Family::Ipv4, Family::Ipv6]);
        forwarding::ensure(&interfaces, &families, Policy::Enable).expect("forwarding on the lb");
        let backends: BTreeSet<IpAddr> =
            ["198.18.0.17", "fd00::11"].iter().map(|a| a.parse().unwrap()).collect();
        let mut hops = NextHops::new(&interfaces).expect("NextHops");
        hops.sync(&backends).expect("neighbour entries for the backend");
        hops.wait_resolved(&backends, Duration::from_secs(5)).expect("the backend's MAC resolved");
    });
    lbd
}

fn sysctl(ns: &Netns, key: &str) -> String {
    let out = lb_tests::netns::run(ns.command("sysctl").args(["-n", key]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {status}"))
}

fn socket(address: &str) -> SocketAddr {
    SocketAddr::new(address.parse().unwrap(), PORT)
}

/// The VIPs, and IPv4 tunnels accepted only from the lb.
fn ipip_settings() -> String {
    format!("interfaces = [\"eth0\"]\nvips = [\"{VIP4}\", \"{VIP6}\", \"{VIP_BEFORE}\"]\nallowed_sources = [\"198.18.0.2/32\"]\n")
}

/// An L2 DSR backend host: the VIPs on lo and the ARP settings, no decap.
fn l2dsr_settings() -> String {
    format!("interfaces = [\"eth0\"]\nvips = [\"{VIP4}\", \"{VIP_BEFORE}\"]\ndecap = false\n")
}

/// Stops the backend host with `signal`; it must exit cleanly.
fn stop(mut process: lb_tests::bins::Running, signal: libc::c_int, b: &BackendHostFiles) {
    // SAFETY: a signal to our own child, not yet reaped.
    unsafe { libc::kill(process.child.id() as libc::pid_t, signal) };
    let exit = process.child.wait().expect("wait");
    assert!(exit.success(), "backend-host exited with {exit} on signal {signal}:\n{}", b.log());
}

/// After a stop: nothing of the backend host's is left, and what it changed is as before.
fn assert_undone(w: &World, b: &BackendHostFiles) {
    let on_lo = w.backend.ip(&["addr", "show", "dev", "lo"]);
    assert!(!on_lo.contains(VIP4) && !on_lo.contains(VIP6), "VIPs left on lo:\n{on_lo}");
    assert!(on_lo.contains(VIP_BEFORE), "the VIP that was there before was removed:\n{on_lo}");
    assert_eq!(sysctl(&w.backend, "net.ipv4.conf.eth0.arp_ignore"), "0", "arp_ignore not restored");
    assert_eq!(sysctl(&w.backend, "net.ipv4.conf.eth0.arp_announce"), "1", "arp_announce not restored");
    let link = w.backend.ip(&["-d", "link", "show", "dev", "eth0"]);
    assert!(!link.contains("prog/xdp"), "decap still attached:\n{link}");
    assert!(!b.pin_path().exists(), "pins left under {}", b.pin_path().display());
    assert!(!b.state_file.exists(), "the state file was left");
}

#[test]
fn backend_host_decapsulates_for_a_real_balancer_and_undoes_everything_on_sigterm() {
    let w = world();
    let lb_files = LbdFiles::new();
    let _lbd = start_balancer(&w, &lb_files);
    let b = BackendHostFiles::new(&ipip_settings());
    let (process, ready) = b.start(&w.backend);

    // What it set up.
    let on_lo = w.backend.ip(&["addr", "show", "dev", "lo"]);
    for vip in [format!("{VIP4}/32"), format!("{VIP6}/128"), format!("{VIP_BEFORE}/32")] {
        assert!(on_lo.contains(&vip), "{vip} not on lo:\n{on_lo}");
    }
    assert_eq!(sysctl(&w.backend, "net.ipv4.conf.eth0.arp_ignore"), "1");
    assert_eq!(sysctl(&w.backend, "net.ipv4.conf.eth0.arp_announce"), "2");
    assert_eq!(sysctl(&w.backend, "net.ipv4.conf.all.arp_ignore"), "0", "`all` is not touched");
    assert_eq!(sysctl(&w.backend, "net.ipv4.conf.eth0.rp_filter"), "1", "rp_filter is not touched");
    let link = w.backend.ip(&["-d", "link", "show", "dev", "eth0"]);
    assert!(link.contains("prog/xdp "), "decap not attached natively on eth0:\n{link}");
    let pins = b.pin_path().join(lb_userspace::backend_host::PIN_LAYOUT);
    assert!(pins.join("link_eth0").exists(), "no pinned decap link in {}", pins.display());
    assert_eq!(ready["decap_addresses"], serde_json::json!(["198.18.0.17", "fd00::11"]), "{ready}");
    assert_eq!(ready["allowed_sources"], serde_json::json!(["198.18.0.2/32"]), "{ready}");

    // A real connection through the balancer: the SYN arrives tunnelled, the backend's decap
    // strips it, the server on the VIP answers the client directly. The client is on another
    // subnet, and strict rp_filter lets the decapsulated packets in.
    let server = EchoServer::start(&w.backend, Proto::Tcp, socket(VIP4));
    let local = w
        .client
        .run(|| tcp_exchange(socket(VIP4), b"through the tunnel", Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("connection to {VIP4} failed: {e}\n{}", b.log()));
    assert_eq!(server.peers(), [local], "the server saw the client's own address (direct server return)");
    let after_v4 = b.status(&w.backend).expect("status");
    assert!(counter(&after_v4, "decapsulated") >= 3, "{after_v4}");
    assert_eq!(counter(&after_v4, "decap_refused"), 0, "{after_v4}");

    // IPv6 tunnels come from fd00::2, which allowed_sources leaves out: dropped and counted.
    let _server6 = EchoServer::start(&w.backend, Proto::Tcp, socket(VIP6));
    let refused = w.client.run(|| tcp_exchange(socket(VIP6), b"refused", Duration::from_millis(1500)));
    assert!(refused.is_err(), "a tunnel from a source outside allowed_sources got through");
    let after_v6 = b.status(&w.backend).expect("status");
    assert!(counter(&after_v6, "decap_refused") >= 1, "{after_v6}");
    assert_eq!(
        counter(&after_v6, "decapsulated"),
        counter(&after_v4, "decapsulated"),
        "IPv6 tunnels were stripped"
    );
    let text = b.status_output(&w.backend, false).expect("--status");
    assert!(text.contains("allowed sources: 198.18.0.2/32"), "{text}");
    let refused_line =
        text.lines().find(|l| l.starts_with("decap_refused")).unwrap_or_else(|| panic!("{text}"));
    assert_ne!(refused_line.split_whitespace().last(), Some("0"), "{text}");

    // SIGTERM: everything it did is undone, and it exits 0.
    let exit = process.terminate();
    assert!(exit.success(), "backend-host exited with {exit}:\n{}", b.log());
    assert_undone(&w, &b);
    let log = b.log();
    for line in
        ["bound VIP 198.18.100.1/32 to lo", "VIP already on lo", "arp_ignore: 0 -> 1", "decap attached"]
    {
        assert!(log.contains(line), "the log does not say {line:?}:\n{log}");
    }
}

/// Killed with SIGKILL, the backend host keeps decapsulating (pinned link); the next run takes
/// over, and its stop restores the values from before the first run.
#[test]
fn a_crashed_backend_host_keeps_decapsulating_and_the_next_run_restores_the_originals() {
    let w = world();
    let lb_files = LbdFiles::new();
    let _lbd = start_balancer(&w, &lb_files);
    let b = BackendHostFiles::new(&ipip_settings());
    let (mut first, _) = b.start(&w.backend);
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reap");

    let _server = EchoServer::start(&w.backend, Proto::Tcp, socket(VIP4));
    w.client
        .run(|| tcp_exchange(socket(VIP4), b"no backend-host running", Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("decap stopped with the process: {e}"));

    let (second, _) = b.start(&w.backend);
    assert_eq!(sysctl(&w.backend, "net.ipv4.conf.eth0.arp_announce"), "2");
    let exit = second.terminate();
    assert!(exit.success(), "backend-host exited with {exit}:\n{}", b.log());
    let log = b.log();
    for line in ["did not stop cleanly", "its pinned link adopted"] {
        assert!(log.contains(line), "the log does not say {line:?}:\n{log}");
    }
    assert_undone(&w, &b);
}

/// `--undo` after a backend host that crashed (or was killed, or whose service gave up
/// restarting it): decap detached, pins and record removed, the VIPs it bound off lo and the
/// ARP settings as they were, without setting anything up first; again, it finds nothing to do.
#[test]
fn undo_removes_what_a_crashed_backend_host_left() {
    let w = world();
    let b = BackendHostFiles::new(&ipip_settings());
    let (mut crashed, _) = b.start(&w.backend);
    crashed.child.kill().expect("SIGKILL");
    crashed.child.wait().expect("reap");
    assert!(
        w.backend.ip(&["-d", "link", "show", "dev", "eth0"]).contains("prog/xdp"),
        "decap went with the process"
    );
    for round in ["after the crash", "again"] {
        let out = b.command(&w.backend, &["--undo"]).status().expect("run --undo");
        assert!(out.success(), "--undo {round} exited with {out}:\n{}", b.log());
        assert_undone(&w, &b);
    }
    assert!(b.log().contains("nothing more to undo"), "the second --undo did not say so:\n{}", b.log());
}

/// With `decap = false` (L2 DSR backends): VIPs on lo and the ARP settings, no XDP program,
/// no pins; all of it undone on SIGINT.
#[test]
fn an_l2dsr_backend_host_binds_vips_and_sets_arp_without_decap() {
    let w = world();
    let b = BackendHostFiles::new(&l2dsr_settings());
    let (process, status) = b.start(&w.backend);
    assert_eq!(status["decap"], false, "{status}");
    assert_eq!(sysctl(&w.backend, "net.ipv4.conf.eth0.arp_ignore"), "1");
    assert_eq!(sysctl(&w.backend, "net.ipv4.conf.eth0.arp_announce"), "2");
    let link = w.backend.ip(&["-d", "link", "show", "dev", "eth0"]);
    assert!(!link.contains("prog/xdp"), "decap attached with decap = false:\n{link}");
    assert!(!b.pin_path().exists(), "pins made with decap = false");
    let text = b.status_output(&w.backend, false).expect("--status");
    assert!(text.starts_with("decap: off"), "{text}");

    stop(process, libc::SIGINT, &b);
    assert_undone(&w, &b);
}

/// The ARP settings are in place before the first VIP is on lo, and stay until the last is gone
/// (a VIP on lo while an interface answers ARP for it: a router may learn the backend's MAC for
/// the VIP and bypass the balancer). A setting someone made stricter meanwhile is theirs: a stop
/// leaves it.
#[test]
fn arp_settings_surround_the_vips_and_an_operators_stricter_one_stays() {
    let w = world();
    let b = BackendHostFiles::new(&l2dsr_settings());
    let (process, _) = b.start(&w.backend);
    // Not an aid: the event under test, an operator's stricter setting made while it runs.
    lb_tests::netns::run(w.backend.command("sysctl").args(["-qw", "net.ipv4.conf.eth0.arp_ignore=2"]));
    stop(process, libc::SIGTERM, &b);
    let log = b.log();
    let at =
        |what: &str| log.lines().position(|l| l.contains(what)).unwrap_or_else(|| panic!("{what}:\n{log}"));
    let (arp_on, bound) = (at("arp_ignore: 0 -> 1"), at(&format!("bound VIP {VIP4}/32")));
    assert!(arp_on < bound, "a VIP was on lo before ARP was quiet for it:\n{log}");
    let (removed, restored) = (at(&format!("removed VIP {VIP4}")), at("arp_announce: restored to 1"));
    assert!(removed < restored, "ARP answered again while a VIP was on lo:\n{log}");
    assert_eq!(sysctl(&w.backend, "net.ipv4.conf.eth0.arp_ignore"), "2", "the operator's setting was undone");
    assert!(log.contains("set since by someone else"), "not said:\n{log}");
}

/// A start that fails half way (the second interface refuses native XDP: `lo` has no driver
/// hook) undoes what it did: the first interface's decap is detached and the pins removed.
#[test]
fn a_start_that_fails_on_an_interface_leaves_no_decap_behind() {
    let w = world();
    let b = BackendHostFiles::new(&format!(
        "interfaces = [\"eth0\", \"lo\"]\nvips = [\"{VIP4}\"]\nallowed_sources = [\"198.18.0.2/32\"]\n"
    ));
    let out = b.command(&w.backend, &[]).output().expect("run lbd backend-host");
    assert!(!out.status.success(), "backend-host started with native XDP on lo:\n{}", b.log());
    let link = w.backend.ip(&["-d", "link", "show", "dev", "eth0"]);
    assert!(
        !link.contains("prog/xdp"),
        "decap left attached to eth0 by a failed start:\n{link}\n{}",
        b.log()
    );
    assert!(!b.pin_path().exists(), "pins left under {}:\n{}", b.pin_path().display(), b.log());
    let on_lo = w.backend.ip(&["addr", "show", "dev", "lo"]);
    assert!(!on_lo.contains(VIP4), "the VIP left on lo:\n{on_lo}");
}

/// An interface that is a port of a bridge (the address on the bridge, as on Proxmox or LXD
/// hosts) takes no part in ARP: its settings would not keep the host from answering for the VIPs.
/// backend-host says so, naming the bridge.
#[test]
fn arp_settings_on_a_bridge_port_are_called_out() {
    let w = world();
    w.backend.ip(&["link", "add", "br9", "type", "bridge"]);
    w.backend.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
    w.backend.ip(&["link", "set", "p0", "master", "br9"]);
    let b = BackendHostFiles::new(&format!("interfaces = [\"p0\"]\nvips = [\"{VIP4}\"]\ndecap = false\n"));
    let (_process, _) = b.start(&w.backend);
    let log = b.log();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains("p0 is a port of br9")),
        "no warning that br9 answers ARP:\n{log}"
    );
}
