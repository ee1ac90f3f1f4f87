//! What lbd provides its host with, on a host set up as Linux leaves it: forwarding off, no
//! neighbour entry for any backend, `pin_path` on no bpffs. lbd turns forwarding on (or, told to
//! only check, refuses with the sysctls to set), resolves each backend's next hop before the
//! first packet needs it (and says why when it cannot), and mounts a bpffs for its pins.
use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::{
    bins,
    echo::{tcp_exchange, EchoServer, Proto},
    lbd::{lb_namespace, Lbd, LbdFiles},
    netns::Netns,
    topology::{vip, Family, Topology},
};

fn sysctl(ns: &Netns, key: &str) -> String {
    let out = lb_tests::netns::run(ns.command("sysctl").args(["-n", key]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn log(files: &LbdFiles) -> String {
    std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default()
}

const VIP4: &str = "[[vip]]\nname = \"v4\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\
                    [[vip.backend]]\naddress = \"198.18.0.17\"\n";

#[test]
fn lbd_turns_forwarding_on_for_the_families_in_use_or_refuses_naming_the_sysctls() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    assert_eq!(sysctl(&ns, "net.ipv4.conf.eth0.forwarding"), "0", "a new namespace forwards nothing");

    // Told to check only: lbd does not start, and says what to run.
    std::fs::write(files.config(), format!("{header}[host]\nforwarding = \"check\"\n\n{VIP4}")).unwrap();
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .arg(bins::path("lbd"))
        .arg("--config")
        .arg(files.config())
        .env("NO_COLOR", "1")
        .output()
        .expect("run lbd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lbd started with forwarding off and forwarding = \"check\"");
    assert!(stderr.contains("sysctl -w net.ipv4.conf.eth0.forwarding=1"), "{stderr}");
    assert_eq!(sysctl(&ns, "net.ipv4.conf.eth0.forwarding"), "0", "check changed the sysctl");

    // By default: turned on, for IPv4 only (the VIPs are IPv4), and logged.
    let lbd = Lbd::start(&ns, &files, &format!("{header}{VIP4}"));
    assert_eq!(sysctl(&ns, "net.ipv4.conf.eth0.forwarding"), "1");
    assert_eq!(sysctl(&ns, "net.ipv6.conf.eth0.forwarding"), "0", "IPv6 turned on with no IPv6 VIP");
    assert_eq!(sysctl(&ns, "net.ipv4.conf.all.forwarding"), "0", "`all` is not lbd's to change");
    assert!(log(&files).contains("net.ipv4.conf.eth0.forwarding: 0 -> 1"), "{}", log(&files));
    // An IPv6 VIP added at run time turns IPv6 forwarding on first.
    lbd.lbctl_ok(&[
        "vip",
        "add",
        "v6",
        "--address",
        "fd00:0:0:100::1",
        "--port",
        "80",
        "--protocol",
        "tcp",
        "--backend",
        "fd00::11",
    ]);
    assert_eq!(sysctl(&ns, "net.ipv6.conf.eth0.forwarding"), "1");
}

#[test]
fn the_first_packet_to_a_backend_with_no_neighbour_entry_is_forwarded() {
    let topo = Topology::new(2);
    let files = LbdFiles::new();
    let _passthrough = topo.start_lb_port_passthrough();
    let _backend_hosts = topo.start_backend_hosts();
    let neighbours = |ns: &Netns| ns.ip(&["neigh", "show", "dev", "eth0"]);
    let b1 = &topo.backends[0];
    assert!(!neighbours(&topo.lb.ns).contains(&b1.v4.to_string()), "the lb knows b1 already");
    let vips = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{}\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"{}\"\n",
        vip(Family::V4, 1),
        b1.v4
    );
    let lbd = topo.start_lbd(&files, &vips);
    let server = SocketAddr::new(vip(Family::V4, 1), 80);
    let _echo = EchoServer::start(&b1.ns, Proto::Tcp, server);
    // The first SYN is forwarded: a passed one costs a retransmission, a second at least.
    let t = Instant::now();
    topo.client
        .ns
        .run(|| tcp_exchange(server, b"first", Duration::from_secs(3)))
        .unwrap_or_else(|e| panic!("the first connection failed: {e}\n{}", log(&files)));
    assert!(t.elapsed() < Duration::from_millis(900), "the first connection took {:?}", t.elapsed());
    let stats: lb_userspace::agent::Stats =
        serde_json::from_str(&lbd.lbctl_ok(&["--json", "stats"])).unwrap();
    let no_neigh = stats.counters.iter().find(|(n, _)| n == "pass_no_neigh").map(|(_, v)| *v);
    assert_eq!(no_neigh, Some(0), "packets passed for want of a neighbour entry: {:?}", stats.counters);
    // lbd's own managed entry, and its MAC in lbctl.
    let entries = topo.lb.ns.ip(&["neigh", "show", "proto", "76"]);
    assert!(entries.contains(&b1.v4.to_string()) && entries.contains("managed"), "{entries}");
    let list = lbd.lbctl_ok(&["backend", "list", "web"]);
    assert!(list.contains(&format!("eth0 {}", b1.mac)), "{list}");

    // A backend added at run time: resolved before the ring names it.
    let b2 = &topo.backends[1];
    lbd.lbctl_ok(&["backend", "add", "web", &b2.v4.to_string()]);
    let list = lbd.lbctl_ok(&["backend", "list", "web"]);
    assert!(list.contains(&format!("eth0 {}", b2.mac)), "{list}");
    // A backend that cannot be reached says why.
    lbd.lbctl_ok(&["backend", "add", "web", "198.19.7.7"]);
    let list = lbd.lbctl_ok(&["backend", "list", "web"]);
    assert!(list.contains("no route to 198.19.7.7"), "{list}");
}

/// A pin path on no bpffs (here, a directory under /tmp): lbd mounts one there, in the host's
/// mount namespace, so the pins outlive lbd (no warning), and forwarding survives a kill -9.
#[test]
fn lbd_mounts_a_bpffs_where_pin_path_has_none() {
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let pins = files.dir.join("pins");
    let _unmount = Unmount(pins.clone());
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let header = header.replace(
        &format!("{:?}", files.pin_path.display().to_string()),
        &format!("{:?}", pins.display().to_string()),
    );
    let lbd = Lbd::start(&ns, &files, &format!("{header}{VIP4}"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounted = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(pins.to_str().unwrap()) && l.contains(" - bpf "));
    assert!(mounted, "no bpffs mounted at {}", pins.display());
    let text = log(&files);
    assert!(text.contains("mounted a bpffs"), "{text}");
    assert!(!text.contains("die with"), "a warning for a bpffs in the host's mount namespace:\n{text}");
    lbd.kill();
    let link = ns.ip(&["link", "show", "dev", "eth0"]);
    assert!(link.contains("prog/xdp"), "the balancer went with lbd:\n{link}");
    assert!(pins.join(lb_common::PIN_LAYOUT).join("link_eth0").exists());
}

/// Forwarding turned off under a running lbd (a `sysctl --system` with a hardening file, or
/// `net.ipv4.conf.all.forwarding=0`, which the kernel copies to every interface): lbd turns it on
/// again within its host check (5 s) and says so; told to only check, it withdraws its VIPs
/// (what arrives would go to the blackhole route) until someone turns it on, then announces again.
#[test]
fn forwarding_turned_off_under_lbd_is_turned_on_again_or_withdraws_the_vips() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let table = || ns.ip(&["route", "show", "table", "4242"]);
    // Not an aid: the event under test, someone else changing forwarding under a running lbd.
    let set = |key_value: &str| lb_tests::netns::run(ns.command("sysctl").args(["-qw", key_value]));
    let within = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(12);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 12 s\n{}", log(&files));
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let lbd = Lbd::start(&ns, &files, &files.announcing_web());
    assert_eq!(sysctl(&ns, "net.ipv4.conf.eth0.forwarding"), "1");
    // `all` copies to every interface when it changes: on, then off (a router's hardening run).
    set("net.ipv4.conf.all.forwarding=1");
    set("net.ipv4.conf.all.forwarding=0");
    assert_eq!(sysctl(&ns, "net.ipv4.conf.eth0.forwarding"), "0", "the kernel did not copy `all`");
    within("eth0's forwarding turned on again", &|| sysctl(&ns, "net.ipv4.conf.eth0.forwarding") == "1");
    // lbd writes the sysctl, then its log line: the line may come a moment after.
    within("the change logged", &|| log(&files).contains("forwarding was turned off under lbd"));
    assert!(table().contains("198.18.100.1"), "the VIP was withdrawn:\n{}", table());
    lbd.kill();

    let checking =
        files.announcing_web().replacen("[announce]", "[host]\nforwarding = \"check\"\n\n[announce]", 1);
    std::fs::write(files.config(), checking).unwrap();
    // The restarted lbd adopts its saved state, but its settings come from the file.
    let lbd = Lbd::start_with(&ns, &files, &[]);
    within("the VIP announced", &|| table().contains("198.18.100.1"));
    set("net.ipv4.conf.eth0.forwarding=0");
    within("the VIP withdrawn while forwarding is off", &|| !table().contains("198.18.100.1"));
    assert_eq!(sysctl(&ns, "net.ipv4.conf.eth0.forwarding"), "0", "check turned forwarding on");
    let status = lbd.lbctl_ok(&["status"]);
    assert!(status.contains("this host cannot balance"), "lbctl status does not say why:\n{status}");
    set("net.ipv4.conf.eth0.forwarding=1");
    within("the VIP announced again", &|| table().contains("198.18.100.1"));
}

/// A VIP removed with `[announce]`: its address's blackhole route stays until the VIP is
/// withdrawn and the next host check (5 s) finds it gone from the VIP table. Until the routers
/// follow the withdraw, what they still send ends there instead of looping back through them.
#[test]
fn a_removed_vips_blackhole_route_goes_after_its_withdraw() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let lbd = Lbd::start(&ns, &files, &files.announcing_web());
    assert!(ns.ip(&["route", "show", "table", "4242"]).contains("198.18.100.1"), "not announced");
    lbd.lbctl_ok(&["vip", "remove", "web"]);
    assert!(!ns.ip(&["route", "show", "table", "4242"]).contains("198.18.100.1"), "still announced");
    let removed = "removed blackhole route 198.18.100.1/32";
    let deadline = Instant::now() + Duration::from_secs(12);
    while !log(&files).contains(removed) {
        assert!(
            Instant::now() < deadline,
            "the blackhole route stays 12 s after the VIP went:\n{}",
            log(&files)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = log(&files);
    let at =
        |what: &str| log.lines().position(|l| l.contains(what)).unwrap_or_else(|| panic!("{what}:\n{log}"));
    assert!(
        at("withdrawing (route removed from the VIP table)") < at(removed),
        "the blackhole route went before the withdraw:\n{log}"
    );
    assert!(ns.ip(&["route", "show", "198.18.100.1"]).trim().is_empty(), "a route to the address stays");
}
