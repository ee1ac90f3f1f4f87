//! The agent's acceptance tests, as real processes: the standard topology (client, lb, three
//! backends on a bridge, each in its own namespace, decap on the backends), with `lbd` running in
//! the lb's namespace and managing the balancer, and `lbctl` talking to it.
//!
//! - Drain: lbd starts with no VIP; `lbctl vip add` and `lbctl backend add` create a VIP with
//!   three backends; 300 connections spread over them; a long-lived connection keeps exchanging
//!   data every 100 ms for 5 s after its backend is drained with `lbctl backend drain`, while
//!   100 new connections all go elsewhere; after `lbctl backend undrain`, new connections reach
//!   it again. IPv4 in `ipip` mode, IPv6 in `l2dsr` mode.
//! - Restart: while the client streams numbered UDP datagrams through the VIP (one a
//!   millisecond, from four source ports), lbd is killed with SIGKILL and started again: every
//!   datagram sent reaches a backend (counted by sinks in the backends, and by the data plane's
//!   own per-backend counters), each flow stays on its backend, the XDP link stays attached
//!   while no lbd runs, a TCP connection opened before the kill still exchanges data afterwards,
//!   and the new lbd reports that it adopted the pinned state, with the VIPs added by `lbctl`
//!   before the kill (the config file has none).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{
    echo::{self, tcp_connect, tcp_echo, tcp_exchange, EchoServer, Proto, UdpSink},
    lbd::{Lbd, LbdFiles},
    netns::Netns,
    topology::{vip, Family, Topology},
};

const BACKENDS: usize = 3;
const PORT: u16 = 8080;
/// Per step (connect, send, receive) of one exchange.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// A batch of connections stops after this many failures (it has failed anyway).
const MAX_FAILURES: usize = 5;

// ------------------------------------------------------------------------------------------
// Drain
// ------------------------------------------------------------------------------------------

/// Connections spread over the three backends before the drain.
const SPREAD_CONNECTIONS: usize = 300;
/// Each backend's share of them (Maglev gives each a third of the ring).
const MIN_SHARE: f64 = 0.20;
const MAX_SHARE: f64 = 0.47;
/// The long-lived connection exchanges data every TICK for DRAIN_TICKS ticks after the drain
/// (5 s), and NEW_PER_TICK new connections are opened each tick (100 in all).
const TICK: Duration = Duration::from_millis(100);
const DRAIN_TICKS: usize = 50;
const NEW_PER_TICK: usize = 2;
/// New connections after the undrain.
const UNDRAIN_CONNECTIONS: usize = 150;

struct DrainCase {
    name: &'static str,
    family: Family,
    mode: &'static str,
}

#[test]
fn drain_ipv4_ipip() {
    run_drain(&DrainCase { name: "drain_ipv4_ipip", family: Family::V4, mode: "ipip" });
}

#[test]
fn drain_ipv6_l2dsr() {
    run_drain(&DrainCase { name: "drain_ipv6_l2dsr", family: Family::V6, mode: "l2dsr" });
}

fn run_drain(case: &DrainCase) {
    let name = case.name;
    let t0 = Instant::now();
    // Dropped in reverse: servers, lbd (killed), decap and pass-through programs, pins, namespaces.
    let topo = Topology::new(BACKENDS);
    let files = LbdFiles::new();
    let _passthrough = topo.start_lb_port_passthrough();
    let _decap = topo.start_backend_hosts();
    let lbd = topo.start_lbd(&files, "");
    let vip = vip(case.family, 1);
    let server = SocketAddr::new(vip, PORT);
    let servers: Vec<EchoServer> =
        topo.backends.iter().map(|b| EchoServer::start(&b.ns, Proto::Tcp, server)).collect();
    let addrs: Vec<String> = topo.backends.iter().map(|b| b.addr(case.family).to_string()).collect();
    let client_ip = topo.client.addr(case.family);
    let fail = |what: String| -> ! {
        panic!("{name}: {what}\n{}", diagnostics(&topo, &files, &lbd, &servers));
    };

    // lbd started with no VIP; the VIP and its backends come from lbctl.
    assert_eq!(lbd.lbctl_ok(&["--json", "vip", "list"]).trim(), "[]", "{name}: lbd starts with no VIP");
    let vip_s = vip.to_string();
    let port_s = PORT.to_string();
    lbd.lbctl_ok(&[
        "vip",
        "add",
        "web",
        "--address",
        &vip_s,
        "--port",
        &port_s,
        "--protocol",
        "tcp",
        "--mode",
        case.mode,
        "--backend",
        &addrs[0],
        "--backend",
        &addrs[1],
    ]);
    lbd.lbctl_ok(&["backend", "add", "web", &addrs[2]]);
    let list = lbd.lbctl_ok(&["backend", "list", "web"]);
    for a in &addrs {
        assert_eq!(backend_state(&list, a), Some("active"), "{name}: backend {a} after adding:\n{list}");
    }
    eprintln!("{name}: set-up (topology, lbd, lbctl vip add + backend add) {:.2?}", t0.elapsed());

    // 300 connections spread over the three backends.
    let t1 = Instant::now();
    let spread = connections(&topo.client.ns, server, SPREAD_CONNECTIONS, "spread");
    if !spread.failures.is_empty() {
        fail(format!("connections failed before the drain:\n  {}", spread.failures.join("\n  ")));
    }
    let per_backend = tally(name, &servers, &spread.locals, client_ip);
    eprintln!(
        "{name}: {SPREAD_CONNECTIONS} connections in {:.2?}, per backend {per_backend:?}",
        t1.elapsed()
    );
    for (i, n) in per_backend.iter().enumerate() {
        let share = *n as f64 / SPREAD_CONNECTIONS as f64;
        assert!(
            (MIN_SHARE..=MAX_SHARE).contains(&share),
            "{name}: {} got {n} of {SPREAD_CONNECTIONS} connections ({:.0}%), outside {:.0}%..{:.0}%: {per_backend:?}",
            addrs[i],
            share * 100.0,
            MIN_SHARE * 100.0,
            MAX_SHARE * 100.0
        );
    }

    // A long-lived connection, and the backend it landed on.
    let mut long = topo
        .client
        .ns
        .run(|| tcp_connect(server, STEP_TIMEOUT))
        .unwrap_or_else(|e| fail(format!("long-lived: {e}")));
    tcp_echo(&mut long, b"long-lived hello").unwrap_or_else(|e| fail(format!("long-lived: {e}")));
    let long_local = long.local_addr().expect("local address");
    let drained = served_by(&servers, long_local)
        .unwrap_or_else(|| fail(format!("no backend recorded the long-lived connection {long_local}")));
    let drained_addr = addrs[drained].as_str();
    eprintln!("{name}: the long-lived connection {long_local} is on {drained_addr}; draining it");

    let stats = lbd.lbctl_ok(&["--json", "stats"]);
    let new_flows_before = backend_stat(&stats, drained_addr, "new_flows");
    lbd.lbctl_ok(&["backend", "drain", "web", drained_addr]);
    let drained_at = Instant::now();
    let list = lbd.lbctl_ok(&["backend", "list", "web"]);
    assert_eq!(backend_state(&list, drained_addr), Some("drained"), "{name}: after the drain:\n{list}");

    // 5 s: the long-lived connection exchanges every 100 ms; new connections go elsewhere.
    let during = topo.client.ns.run(|| {
        let mut log = Batch::default();
        let mut exchanges = 0;
        for tick in 0..DRAIN_TICKS {
            let payload = format!("long-lived #{tick}");
            if let Err(e) = tcp_echo(&mut long, payload.as_bytes()) {
                log.failures.push(format!(
                    "long-lived exchange #{tick}, {:.2?} after the drain: {e}",
                    drained_at.elapsed()
                ));
                break;
            }
            exchanges += 1;
            for j in 0..NEW_PER_TICK {
                if log.failures.len() >= MAX_FAILURES {
                    break;
                }
                log.exchange(server, &format!("drained #{tick}.{j}"), || {
                    format!("new connection #{tick}.{j} during the drain")
                });
            }
            let next = drained_at + TICK * (tick as u32 + 1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        // One more exchange, at or after 5 s.
        match tcp_echo(&mut long, b"long-lived after 5 s") {
            Ok(()) => exchanges += 1,
            Err(e) => {
                log.failures.push(format!("long-lived exchange after {:.2?}: {e}", drained_at.elapsed()))
            }
        }
        (log, exchanges)
    });
    let (during, exchanges) = during;
    let lasted = drained_at.elapsed();
    if !during.failures.is_empty() {
        fail(format!("during the drain:\n  {}", during.failures.join("\n  ")));
    }
    assert!(lasted >= TICK * DRAIN_TICKS as u32, "{name}: the drain phase lasted only {lasted:.2?}");
    assert_eq!(during.locals.len(), DRAIN_TICKS * NEW_PER_TICK, "{name}: new connections during the drain");
    let per_backend = tally(name, &servers, &during.locals, client_ip);
    eprintln!(
        "{name}: drained for {lasted:.2?}: {exchanges} exchanges on the long-lived connection, all answered; \
         {} new connections, per backend {per_backend:?}",
        during.locals.len()
    );
    if per_backend[drained] != 0 {
        fail(format!(
            "{} of {} new connections reached the drained backend {drained_addr}: {per_backend:?}",
            per_backend[drained],
            during.locals.len()
        ));
    }
    // The data plane agrees: the drained backend got no new flow, the long-lived one kept hitting
    // the flow table.
    let stats = lbd.lbctl_ok(&["--json", "stats"]);
    assert!(backend_flag(&stats, drained_addr, "drained"), "{name}: stats do not show the drain:\n{stats}");
    let new_flows_after = backend_stat(&stats, drained_addr, "new_flows");
    assert_eq!(
        new_flows_after, new_flows_before,
        "{name}: the data plane counted new flows for the drained backend {drained_addr}:\n{stats}"
    );

    // Undrain: new connections reach it again.
    lbd.lbctl_ok(&["backend", "undrain", "web", drained_addr]);
    let list = lbd.lbctl_ok(&["backend", "list", "web"]);
    assert_eq!(backend_state(&list, drained_addr), Some("active"), "{name}: after the undrain:\n{list}");
    let after = connections(&topo.client.ns, server, UNDRAIN_CONNECTIONS, "undrained");
    if !after.failures.is_empty() {
        fail(format!("connections failed after the undrain:\n  {}", after.failures.join("\n  ")));
    }
    let per_backend = tally(name, &servers, &after.locals, client_ip);
    eprintln!("{name}: after the undrain, {UNDRAIN_CONNECTIONS} new connections per backend {per_backend:?}");
    let share = per_backend[drained] as f64 / UNDRAIN_CONNECTIONS as f64;
    assert!(
        share >= MIN_SHARE,
        "{name}: after the undrain {drained_addr} got {} of {UNDRAIN_CONNECTIONS} new connections ({:.0}%): {per_backend:?}",
        per_backend[drained],
        share * 100.0
    );
    tcp_echo(&mut long, b"long-lived after the undrain").unwrap_or_else(|e| fail(format!("long-lived: {e}")));
    drop(long);

    // No connection was served twice or reused a flow: every client socket was distinct.
    let all: Vec<SocketAddr> = spread
        .locals
        .iter()
        .chain(&during.locals)
        .chain(&after.locals)
        .copied()
        .chain([long_local])
        .collect();
    let distinct: BTreeSet<SocketAddr> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "{name}: a client address and port was used twice");
    let errors: Vec<String> = servers.iter().flat_map(EchoServer::errors).collect();
    assert!(errors.is_empty(), "{name}: the echo servers met errors: {errors:?}");
    eprintln!("{name}: passed in {:.2?}", t0.elapsed());
}

/// The client sockets of a batch of connections, and what failed.
#[derive(Default)]
struct Batch {
    locals: Vec<SocketAddr>,
    failures: Vec<String>,
}

impl Batch {
    /// One connection from the calling thread: connect, exchange `payload`, close; its local
    /// address is recorded, or why it failed (`what` names it).
    fn exchange(&mut self, server: SocketAddr, payload: &str, what: impl FnOnce() -> String) {
        match tcp_exchange(server, payload.as_bytes(), STEP_TIMEOUT) {
            Ok(local) => self.locals.push(local),
            Err(e) => self.failures.push(format!("{}: {e}", what())),
        }
    }
}

/// `n` connections from `ns`, one at a time, each connect + one exchange + close.
fn connections(ns: &Netns, server: SocketAddr, n: usize, tag: &str) -> Batch {
    ns.run(|| {
        let mut log = Batch::default();
        for i in 0..n {
            if log.failures.len() >= MAX_FAILURES {
                break;
            }
            log.exchange(server, &format!("{tag} #{i}"), || format!("{tag} connection #{i} to {server}"));
        }
        log
    })
}

/// How many of `locals` (client sockets) each backend served; every one was served by exactly
/// one backend, which saw the client's own address.
fn tally(name: &str, servers: &[EchoServer], locals: &[SocketAddr], client_ip: IpAddr) -> Vec<usize> {
    let peers: Vec<BTreeSet<SocketAddr>> = servers.iter().map(|s| s.peers().into_iter().collect()).collect();
    let mut counts = vec![0; servers.len()];
    for local in locals {
        assert_eq!(local.ip(), client_ip, "{name}: the client's address");
        let at: Vec<usize> = (0..servers.len()).filter(|&i| peers[i].contains(local)).collect();
        assert_eq!(
            at.len(),
            1,
            "{name}: connection {local} was served by backends {at:?} (want exactly one)"
        );
        counts[at[0]] += 1;
    }
    counts
}

fn served_by(servers: &[EchoServer], local: SocketAddr) -> Option<usize> {
    servers.iter().position(|s| s.peers().contains(&local))
}

/// The STATE column (`active` / `drained`, third) of `address` in `lbctl backend list`.
fn backend_state<'a>(table: &'a str, address: &str) -> Option<&'a str> {
    table.lines().find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.first() == Some(&address)).then(|| cols.get(2).copied()).flatten()
    })
}

// ------------------------------------------------------------------------------------------
// Restart
// ------------------------------------------------------------------------------------------

/// UDP source ports of the stream: one flow each.
const STREAM_PORTS: [u16; 4] = [43_001, 43_002, 43_003, 43_004];
/// The stream sends one datagram, then sleeps this long.
const STREAM_GAP: Duration = Duration::from_millis(1);
/// Bounds of the stream, whatever happens to the main thread.
const STREAM_MAX_TIME: Duration = Duration::from_secs(15);
const STREAM_MAX_DATAGRAMS: u64 = 15_000;
/// Stream time before the kill, with no lbd, and after the restart.
const BEFORE_KILL: Duration = Duration::from_millis(1500);
const WITHOUT_LBD: Duration = Duration::from_millis(500);
const AFTER_RESTART: Duration = Duration::from_millis(1500);
const STREAM_MAGIC: &[u8; 8] = b"lbt-strm";

#[test]
fn restart_keeps_forwarding_and_adopts_the_state() {
    let name = "restart";
    let t0 = Instant::now();
    let topo = Topology::new(BACKENDS);
    let files = LbdFiles::new();
    let _passthrough = topo.start_lb_port_passthrough();
    let _decap = topo.start_backend_hosts();
    let lbd = topo.start_lbd(&files, "");
    let vip = vip(Family::V4, 1);
    let server = SocketAddr::new(vip, PORT);
    let tcp: Vec<EchoServer> =
        topo.backends.iter().map(|b| EchoServer::start(&b.ns, Proto::Tcp, server)).collect();
    let sinks: Vec<UdpSink> = topo.backends.iter().map(|b| UdpSink::start(&b.ns, server)).collect();
    let addrs: Vec<String> = topo.backends.iter().map(|b| b.v4.to_string()).collect();
    let (vip_s, port_s) = (vip.to_string(), PORT.to_string());
    for (vip_name, proto) in [("web-tcp", "tcp"), ("web-udp", "udp")] {
        let mut args =
            vec!["vip", "add", vip_name, "--address", &vip_s, "--port", &port_s, "--protocol", proto];
        for a in &addrs {
            args.extend(["--backend", a.as_str()]);
        }
        lbd.lbctl_ok(&args);
    }
    let status = lbd.lbctl_ok(&["--json", "status"]);
    assert!(
        status.contains("\"adopted\": false"),
        "{name}: a fresh lbd says it adopted something:\n{status}"
    );
    let prog_before = xdp_prog_id(&topo.lb.ns).expect("the balancer is attached to the lb's eth0");
    eprintln!("{name}: set-up {:.2?}, balancer program id {prog_before}", t0.elapsed());

    let mut long = topo.client.ns.run(|| tcp_connect(server, STEP_TIMEOUT)).expect("long-lived connection");
    tcp_echo(&mut long, b"before the kill").expect("long-lived connection before the kill");

    let stop = AtomicBool::new(false);
    let client_ip = topo.client.v4;
    let (stream, restart) = std::thread::scope(|s| {
        let stream = s.spawn(|| {
            topo.client.ns.enter_current_thread();
            stream_udp(client_ip.into(), server, &stop)
        });
        // Runs the restart, and stops the stream whatever happens.
        let restart = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            restart(&topo, &files, lbd, &mut long, prog_before)
        }));
        stop.store(true, Ordering::Relaxed);
        (stream.join().expect("stream thread"), restart)
    });
    let lbd = restart.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(stream.errors.is_empty(), "{name}: the client could not send: {:?}", stream.errors);

    // Every datagram sent arrives; wait (bounded) for the last ones.
    let deadline = Instant::now() + Duration::from_secs(2);
    while sinks.iter().map(UdpSink::count).sum::<usize>() < stream.sent.len() && Instant::now() < deadline {
        std::thread::sleep(echo::POLL);
    }
    let (received, unexpected): (Vec<_>, Vec<_>) = sinks.iter().map(stream_datagrams).unzip();
    let per_backend: Vec<usize> = received.iter().map(Vec::len).collect();
    let total: usize = per_backend.iter().sum();
    let lost = stream.sent.len().saturating_sub(total);
    eprintln!(
        "{name}: {} datagrams sent in {:.2?}, {total} received ({lost} lost), per backend {per_backend:?}",
        stream.sent.len(),
        stream.took
    );
    let stats = lbd.lbctl_ok(&["--json", "stats"]);
    let sent: BTreeMap<u64, u16> = stream.sent.iter().copied().collect();
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut flow_backends: BTreeMap<u16, BTreeSet<usize>> = BTreeMap::new();
    for (b, got) in received.iter().enumerate() {
        for &(peer, seq) in got {
            *seen.entry(seq).or_default() += 1;
            assert_eq!(peer.ip(), IpAddr::from(client_ip), "{name}: a datagram from {peer}");
            assert_eq!(
                sent.get(&seq),
                Some(&peer.port()),
                "{name}: datagram {seq} from {peer} was not sent so"
            );
            flow_backends.entry(peer.port()).or_default().insert(b);
        }
    }
    let missing: Vec<u64> = sent.keys().filter(|s| !seen.contains_key(s)).copied().collect();
    let twice: Vec<u64> = seen.iter().filter(|(_, n)| **n > 1).map(|(s, _)| *s).collect();
    if !missing.is_empty() || !twice.is_empty() {
        let show = |v: &[u64]| format!("{} {:?}", v.len(), &v[..v.len().min(20)]);
        panic!(
            "{name}: datagrams lost: {}, received twice: {} (stream: kill at #{}, restarted at #{})\n\
             backends' UDP counters: {}\n{stats}\n{}",
            show(&missing),
            show(&twice),
            stream.seq_at(STAGE_KILLED),
            stream.seq_at(STAGE_RESTARTED),
            udp_counters(&topo),
            lbd_log(&files)
        );
    }
    // Each flow stayed on one backend across the restart (the pinned flow table).
    for (port, backends) in &flow_backends {
        assert_eq!(backends.len(), 1, "{name}: flow from port {port} reached backends {backends:?}");
    }
    // The data plane counted the same: per backend of web-udp, and nothing dropped or passed.
    for (b, a) in addrs.iter().enumerate() {
        let packets = backend_stat_of(&stats, "web-udp", a, "packets");
        assert_eq!(
            packets, per_backend[b] as u64,
            "{name}: web-udp backend {a}: data plane packets vs received:\n{stats}"
        );
    }
    for counter in [
        "drop_no_backend",
        "drop_encap_failed",
        "pass_no_neigh",
        "pass_no_route",
        "pass_fwd_disabled",
        "pass_no_tx_port",
    ] {
        assert_eq!(global_counter(&stats, counter), 0, "{name}: {counter} moved:\n{stats}");
    }

    // The long-lived connection still exchanges, after the restart as before.
    tcp_echo(&mut long, b"after the restart").expect("long-lived connection after the restart");
    drop(long);
    let errors: Vec<String> = tcp
        .iter()
        .flat_map(EchoServer::errors)
        .chain(sinks.iter().flat_map(UdpSink::errors))
        .chain(unexpected.into_iter().flatten())
        .collect();
    assert!(errors.is_empty(), "{name}: the servers met errors: {errors:?}");
    eprintln!("{name}: passed in {:.2?}", t0.elapsed());
}

/// The main thread's part of the restart test, while the stream runs: SIGKILL lbd, check the
/// balancer stays attached and forwarding without it, start it again, check it adopted the
/// state. Returns the new lbd.
fn restart(topo: &Topology, files: &LbdFiles, lbd: Lbd, long: &mut TcpStream, prog_before: u32) -> Lbd {
    let name = "restart";
    std::thread::sleep(BEFORE_KILL);
    lbd.kill();
    STAGE.store(STAGE_KILLED, Ordering::Relaxed);
    let killed_at = Instant::now();
    // The link is pinned: the balancer stays attached, the same program.
    let prog = xdp_prog_id(&topo.lb.ns);
    assert_eq!(prog, Some(prog_before), "{name}: the balancer's program after SIGKILL of lbd");
    tcp_echo(long, b"while lbd is dead").expect("long-lived connection while lbd is dead");
    std::thread::sleep(WITHOUT_LBD.saturating_sub(killed_at.elapsed()));

    let t = Instant::now();
    let lbd = Lbd::start_with(&topo.lb.ns, files, &[]);
    STAGE.store(STAGE_RESTARTED, Ordering::Relaxed);
    let prog_after = xdp_prog_id(&topo.lb.ns);
    eprintln!(
        "{name}: lbd dead for {:.2?}; the new lbd's API answered {:.2?} after its start; program id {prog_before} -> {prog_after:?}",
        killed_at.elapsed(),
        t.elapsed()
    );
    assert!(prog_after.is_some(), "{name}: the balancer is detached after the restart");
    let status = lbd.lbctl_ok(&["--json", "status"]);
    assert!(status.contains("\"adopted\": true"), "{name}: lbctl status --json after the restart:\n{status}");
    assert!(status.contains("\"vips\": 2"), "{name}: lbctl status --json after the restart:\n{status}");
    let human = lbd.lbctl_ok(&["status"]);
    assert!(human.contains("adopted the running data plane"), "{name}: lbctl status:\n{human}");
    // The config file has no VIP: these come from the saved state.
    let list = lbd.lbctl_ok(&["vip", "list"]);
    let backends_column =
        list.lines().next().and_then(|h| h.split_whitespace().position(|c| c == "BACKENDS"));
    assert!(backends_column.is_some(), "{name}: lbctl vip list has no BACKENDS column:\n{list}");
    for (vip_name, service) in [("web-tcp", "198.18.100.1:8080/tcp"), ("web-udp", "198.18.100.1:8080/udp")] {
        let row = list.lines().find(|l| l.split_whitespace().next() == Some(vip_name));
        assert!(
            row.is_some_and(|r| r.contains(service)
                && r.split_whitespace().nth(backends_column.unwrap_or(0)) == Some("3")),
            "{name}: lbctl vip list after the restart lacks {vip_name} ({service}, 3 backends):\n{list}"
        );
    }
    tcp_echo(long, b"just after the restart").expect("long-lived connection after the restart");
    std::thread::sleep(AFTER_RESTART);
    lbd
}

/// Where the main thread is, for the stream to note the datagram numbers of the kill and the
/// restart (for failure messages).
static STAGE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
const STAGE_KILLED: u8 = 1;
const STAGE_RESTARTED: u8 = 2;

struct Stream {
    /// (sequence number, source port) of every datagram sent.
    sent: Vec<(u64, u16)>,
    errors: Vec<String>,
    took: Duration,
    /// The next sequence number when each stage was first seen.
    stages: BTreeMap<u8, u64>,
}

impl Stream {
    fn seq_at(&self, stage: u8) -> String {
        self.stages.get(&stage).map_or("?".into(), u64::to_string)
    }
}

/// Sends numbered datagrams to `server`, round-robin from STREAM_PORTS, one every STREAM_GAP,
/// until `stop` (or the bounds). Runs in the client's namespace.
fn stream_udp(client_ip: IpAddr, server: SocketAddr, stop: &AtomicBool) -> Stream {
    let sockets: Vec<UdpSocket> = STREAM_PORTS
        .iter()
        .map(|&p| {
            let s = UdpSocket::bind(SocketAddr::new(client_ip, p)).expect("bind a stream socket");
            s.connect(server).expect("connect a stream socket");
            s
        })
        .collect();
    let start = Instant::now();
    let mut out =
        Stream { sent: Vec::new(), errors: Vec::new(), took: Duration::ZERO, stages: BTreeMap::new() };
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) && seq < STREAM_MAX_DATAGRAMS && start.elapsed() < STREAM_MAX_TIME {
        out.stages.entry(STAGE.load(Ordering::Relaxed)).or_insert(seq);
        let socket = &sockets[seq as usize % sockets.len()];
        let mut payload = [0u8; 16];
        payload[..8].copy_from_slice(STREAM_MAGIC);
        payload[8..].copy_from_slice(&seq.to_be_bytes());
        match socket.send(&payload) {
            Ok(_) => out.sent.push((seq, STREAM_PORTS[seq as usize % sockets.len()])),
            Err(e) => {
                out.errors.push(format!("datagram {seq}: {e}"));
                if out.errors.len() >= MAX_FAILURES {
                    break;
                }
            }
        }
        seq += 1;
        std::thread::sleep(STREAM_GAP);
    }
    out.took = start.elapsed();
    out
}

/// `ip -n <lb> link show eth0`: the id of the XDP program attached natively, if any.
fn xdp_prog_id(ns: &Netns) -> Option<u32> {
    let out = ns.ip(&["link", "show", "dev", "eth0"]);
    let first = out.lines().next().unwrap_or_default();
    if !first.contains(" xdp ") {
        return None;
    }
    out.split("prog/xdp id ").nth(1)?.split_whitespace().next()?.parse().ok()
}

/// The kernel's UDP counters in each backend (receive buffer overflows would show here).
fn udp_counters(topo: &Topology) -> String {
    topo.backends
        .iter()
        .map(|b| {
            let out = b.ns.command("cat").arg("/proc/net/snmp").output().expect("cat /proc/net/snmp");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
            format!("{}: {}", b.port, udp.join(" | "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ------------------------------------------------------------------------------------------
// lbctl --json output. lb-tests has no JSON parser; lbctl prints serde_json's pretty form with
// the keys of every object sorted, so a backend object starts with its "address" and a VIP
// object's "backends" come before its "name".
// ------------------------------------------------------------------------------------------

/// A number field of the first backend `address` in `lbctl --json stats`.
fn backend_stat(stats: &str, address: &str, field: &str) -> u64 {
    field_after(stats, &format!("\"address\": \"{address}\""), field)
        .parse()
        .unwrap_or_else(|e| panic!("{field} of {address}: {e}:\n{stats}"))
}

/// The same, among the backends of the VIP named `vip`.
fn backend_stat_of(stats: &str, vip: &str, address: &str, field: &str) -> u64 {
    let name = stats
        .find(&format!("\"name\": \"{vip}\""))
        .unwrap_or_else(|| panic!("no VIP {vip} in the stats:\n{stats}"));
    let backends =
        stats[..name].rfind("\"backends\": [").unwrap_or_else(|| panic!("no backends of {vip} in:\n{stats}"));
    backend_stat(&stats[backends..name], address, field)
}

fn backend_flag(stats: &str, address: &str, field: &str) -> bool {
    field_after(stats, &format!("\"address\": \"{address}\""), field) == "true"
}

/// A global counter: `["name", value]` pretty-printed over several lines.
fn global_counter(stats: &str, name: &str) -> u64 {
    let anchor = format!("\"{name}\",");
    let at = stats.find(&anchor).unwrap_or_else(|| panic!("no counter {name} in the stats:\n{stats}"));
    let rest = stats[at + anchor.len()..].trim_start();
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().unwrap_or_else(|e| panic!("counter {name}: {e}:\n{stats}"))
}

/// The scalar value of `"field": ...` first found after `anchor`.
fn field_after<'a>(text: &'a str, anchor: &str, field: &str) -> &'a str {
    let at = text.find(anchor).unwrap_or_else(|| panic!("no {anchor} in:\n{text}"));
    let key = format!("\"{field}\": ");
    let from = text[at..].find(&key).unwrap_or_else(|| panic!("no {field} after {anchor} in:\n{text}")) + at;
    let rest = &text[from + key.len()..];
    rest[..rest.find([',', '\n', '}']).unwrap_or(rest.len())].trim()
}

// ------------------------------------------------------------------------------------------
// Failure diagnostics
// ------------------------------------------------------------------------------------------

fn lbd_log(files: &LbdFiles) -> String {
    let log = std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default();
    format!("lbd log:\n{log}")
}

fn diagnostics(topo: &Topology, files: &LbdFiles, lbd: &Lbd, servers: &[EchoServer]) -> String {
    let stats = lbd.lbctl(&["stats"]);
    let mut out = format!(
        "lbctl stats:\n{}{}\n",
        String::from_utf8_lossy(&stats.stdout),
        String::from_utf8_lossy(&stats.stderr)
    );
    for (b, s) in topo.backends.iter().zip(servers) {
        out += &format!("{}: served {}, errors {:?}\n", b.port, s.peers().len(), s.errors());
    }
    for h in topo.hosts() {
        out +=
            &format!("{} eth0: {}\n", h.port, h.ns.ip(&["-s", "-o", "link", "show", "dev", "eth0"]).trim());
    }
    out + &lbd_log(files)
}

// ------------------------------------------------------------------------------------------
// Backend side
// ------------------------------------------------------------------------------------------

/// The stream datagrams `sink` received, as (sender, sequence number); anything else it received
/// is an error, one per datagram.
fn stream_datagrams(sink: &UdpSink) -> (Vec<(SocketAddr, u64)>, Vec<String>) {
    let mut datagrams = Vec::new();
    let mut unexpected = Vec::new();
    for (peer, payload) in sink.received() {
        match payload.strip_prefix(STREAM_MAGIC.as_slice()) {
            Some(seq) if seq.len() == 8 => {
                datagrams.push((peer, u64::from_be_bytes(seq.try_into().expect("8 bytes"))))
            }
            _ => unexpected.push(format!("UDP {peer}: an unexpected datagram of {} bytes", payload.len())),
        }
    }
    (datagrams, unexpected)
}
