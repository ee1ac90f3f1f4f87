//! `lbctl backend remove` keeps the removed backend's open connections going, as its `--help`
//! promises ("flows already pinned to it continue until they end"), for backends on the
//! balancer's L2 segment, where lbd's managed neighbour entry for the backend itself is the next
//! hop that `bpf_fib_lookup` needs.
//!
//! The standard topology with four backend hosts; VIP `web` has b1..b3. Connections are opened
//! through the VIP and kept open; b4 is added and removed before any connection reaches it; then
//! the backend of the first connection is removed. For 12 s (past lbd's next-hop refresh, 5 s,
//! and its flow-table census, 10 s) every open connection keeps exchanging, none fails, and the
//! data plane passes no packet for want of a neighbour entry (`pass_no_neigh`). The removed
//! backend's managed entry stays (its flows are in use); b4's, whose id no flow names, goes after
//! a census. The same across a restart of lbd. IPv4 in `ipip` mode, IPv6 in `l2dsr` mode.
use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    echo::{tcp_connect, tcp_echo, EchoServer, Proto},
    lbd::{Lbd, LbdFiles},
    netns::Netns,
    topology::{vip, Family, Topology},
};
use lb_userspace::host::neighbours::NEIGHBOUR_PROTOCOL;

const PORT: u16 = 8080;
/// b1..b3 serve the VIP from the start; b4 is added and removed with no flow.
const BACKENDS: usize = 4;
const SERVING: usize = 3;
/// Connections kept open across the removal (Maglev spreads them over b1..b3).
const CONNECTIONS: usize = 24;
/// Per step (connect, send, receive) of one exchange.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// Every open connection exchanges once a TICK for EXCHANGE_FOR after the removal.
const TICK: Duration = Duration::from_millis(500);
const EXCHANGE_FOR: Duration = Duration::from_secs(12);
/// And for AFTER_RESTART once lbd restarted (past its first next-hop sync and first census).
const AFTER_RESTART: Duration = Duration::from_secs(4);
/// A removed backend without flows loses its neighbour entry within this (a census, 10 s apart,
/// and the next-hop sync after it).
const RELEASE_WAIT: Duration = Duration::from_secs(25);

#[test]
fn removing_a_backend_keeps_its_connections_ipv4_ipip() {
    run("remove_ipv4_ipip", Family::V4, "ipip");
}

#[test]
fn removing_a_backend_keeps_its_connections_ipv6_l2dsr() {
    run("remove_ipv6_l2dsr", Family::V6, "l2dsr");
}

fn run(name: &str, family: Family, mode: &str) {
    let t0 = Instant::now();
    let topo = Topology::new(BACKENDS);
    let files = LbdFiles::new();
    let _passthrough = topo.start_lb_port_passthrough();
    let _decap = topo.start_backend_hosts();
    let vip = vip(family, 1);
    let server = SocketAddr::new(vip, PORT);
    let addrs: Vec<String> = topo.backends.iter().map(|b| b.addr(family).to_string()).collect();
    let backends: String =
        addrs[..SERVING].iter().map(|a| format!("[[vip.backend]]\naddress = \"{a}\"\n")).collect();
    let vips = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{vip}\"\nport = {PORT}\nprotocol = \"tcp\"\nmode = \"{mode}\"\n{backends}"
    );
    let lbd = topo.start_lbd(&files, &vips);
    let servers: Vec<EchoServer> =
        topo.backends.iter().map(|b| EchoServer::start(&b.ns, Proto::Tcp, server)).collect();
    let fail = |what: String| -> ! { panic!("{name}: {what}\n{}", diagnostics(&topo, &files, &lbd)) };

    // Connections kept open, each on the backend that served it.
    let mut open: Vec<(TcpStream, usize)> = Vec::new();
    for i in 0..CONNECTIONS {
        let mut conn = topo
            .client
            .ns
            .run(|| tcp_connect(server, STEP_TIMEOUT))
            .unwrap_or_else(|e| fail(format!("connection #{i}: {e}")));
        tcp_echo(&mut conn, format!("hello #{i}").as_bytes())
            .unwrap_or_else(|e| fail(format!("connection #{i}: {e}")));
        let local = conn.local_addr().expect("local address");
        let at = servers
            .iter()
            .position(|s| s.peers().contains(&local))
            .unwrap_or_else(|| fail(format!("no backend recorded connection {local}")));
        open.push((conn, at));
    }
    let removed = open[0].1;
    let on_removed = open.iter().filter(|(_, b)| *b == removed).count();
    assert!(on_removed < CONNECTIONS, "{name}: all {CONNECTIONS} connections are on {}", addrs[removed]);
    eprintln!(
        "{name}: {CONNECTIONS} connections open ({on_removed} on {}), set-up {:.2?}",
        addrs[removed],
        t0.elapsed()
    );

    // b4 comes and goes before any connection reaches it; then the first connection's backend goes.
    let idle = &addrs[SERVING];
    lbd.lbctl_ok(&["backend", "add", "web", idle]);
    assert!(managed(&topo.lb.ns, idle), "{name}: no managed entry for {idle} once added");
    lbd.lbctl_ok(&["backend", "remove", "web", idle]);
    lbd.lbctl_ok(&["backend", "remove", "web", &addrs[removed]]);
    let removed_at = Instant::now();

    let rounds = exchange(&mut open, removed, &addrs, removed_at, EXCHANGE_FOR)
        .unwrap_or_else(|e| fail(format!("connections broke after the removal:\n  {}", e.join("\n  "))));
    eprintln!("{name}: {rounds} rounds of exchanges on every connection over {EXCHANGE_FOR:?}, none failed");

    // A restarted lbd keeps them too (they are saved with the state).
    lbd.kill();
    let lbd = Lbd::start_with(&topo.lb.ns, &files, &[]);
    let fail = |what: String| -> ! { panic!("{name}: {what}\n{}", diagnostics(&topo, &files, &lbd)) };
    let restarted_at = Instant::now();
    let rounds = exchange(&mut open, removed, &addrs, restarted_at, AFTER_RESTART)
        .unwrap_or_else(|e| fail(format!("connections broke after lbd restarted:\n  {}", e.join("\n  "))));
    eprintln!("{name}: lbd restarted; {rounds} more rounds, none failed");
    let stats: lb_userspace::agent::Stats = serde_json::from_str(&lbd.lbctl_ok(&["--json", "stats"]))
        .unwrap_or_else(|e| fail(format!("lbctl --json stats: {e}")));
    let no_neigh = stats.counters.iter().find(|(n, _)| n == "pass_no_neigh").map(|(_, v)| *v);
    if no_neigh != Some(0) {
        fail(format!("pass_no_neigh is {no_neigh:?}, not 0: {:?}", stats.counters));
    }
    drop(open);

    // Bounded: the idle backend's entry goes once a census has found no flow of it; the removed
    // backend's stays while its flows were used lately.
    let deadline = Instant::now() + RELEASE_WAIT;
    while managed(&topo.lb.ns, idle) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    if managed(&topo.lb.ns, idle) {
        fail(format!("{idle}, removed with no flow, still has a managed entry {RELEASE_WAIT:?} later"));
    }
    if !managed(&topo.lb.ns, &addrs[removed]) {
        fail(format!("{}, removed with flows in use, lost its managed entry", addrs[removed]));
    }
    let errors: Vec<String> = servers.iter().flat_map(EchoServer::errors).collect();
    assert!(errors.is_empty(), "{name}: the echo servers met errors: {errors:?}");
    eprintln!("{name}: passed in {:.2?}", t0.elapsed());
}

/// Exchanges on every connection in `open` (connection, backend index) once a TICK from `from`
/// for `duration`; returns the rounds, or what failed (`removed`: the removed backend's index).
fn exchange(
    open: &mut [(TcpStream, usize)],
    removed: usize,
    addrs: &[String],
    from: Instant,
    duration: Duration,
) -> Result<u32, Vec<String>> {
    let mut round = 0u32;
    while from.elapsed() < duration {
        let mut failures = Vec::new();
        for (i, (conn, backend)) in open.iter_mut().enumerate() {
            if let Err(e) = tcp_echo(conn, format!("#{i} round {round}").as_bytes()) {
                let was = if *backend == removed { ", removed" } else { "" };
                failures.push(format!(
                    "connection #{i} (on {}{was}) at {:.2?}: {e}",
                    addrs[*backend],
                    from.elapsed()
                ));
            }
        }
        if !failures.is_empty() {
            return Err(failures);
        }
        round += 1;
        std::thread::sleep((from + TICK * round).saturating_duration_since(Instant::now()));
    }
    Ok(round)
}

/// Whether `ns` has lbd's managed neighbour entry for `address`.
fn managed(ns: &Netns, address: &str) -> bool {
    let address: IpAddr = address.parse().expect("an address");
    ns.ip(&["neigh", "show", "proto", &NEIGHBOUR_PROTOCOL.to_string()])
        .lines()
        .any(|l| l.split_whitespace().next().and_then(|a| a.parse::<IpAddr>().ok()) == Some(address))
}

fn diagnostics(topo: &Topology, files: &LbdFiles, lbd: &Lbd) -> String {
    let stats = lbd.lbctl(&["stats"]);
    let neighbours = topo.lb.ns.ip(&["neigh", "show", "dev", "eth0"]);
    let log = std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default();
    format!(
        "lbctl stats:\n{}{}\nlb's neighbours:\n{neighbours}\nlbd log:\n{log}",
        String::from_utf8_lossy(&stats.stdout),
        String::from_utf8_lossy(&stats.stderr)
    )
}
