//! End to end, through real sockets: a client, a balancer and three backends on a bridge, each
//! in its own namespace, with the XDP programs attached natively. For IPv4 and IPv6, in `ipip`
//! and `l2dsr` modes: 300 TCP connections and 300 UDP exchanges from the client to the VIP all
//! succeed, every backend gets a fair share of them, and the backends see the client's address.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::{Counter, MODE_IPIP, MODE_L2DSR, PROTO_TCP, PROTO_UDP};
use lb_tests::{
    backend_host::BackendHost,
    echo::{tcp_exchange, udp_exchange, EchoServer, Proto},
    topology::{vip, Family, Service, Topology},
};
use lb_userspace::datapath::Datapath;

const BACKENDS: usize = 3;
const CONNECTIONS: usize = 300;
const PORT: u16 = 8080;
/// First source port of the UDP exchanges: exchange i uses UDP_SPORT + i, a flow of its own.
const UDP_SPORT: u16 = 41_000;
/// Per step (connect, send, receive) of one exchange.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// A case stops sending after this many failed exchanges (it has failed anyway).
const MAX_FAILURES: usize = 5;
/// Each backend's share of the TCP connections (Maglev gives each a third of the ring).
const MIN_SHARE: f64 = 0.20;
const MAX_SHARE: f64 = 0.47;

struct Case {
    name: &'static str,
    family: Family,
    mode: u8,
}

const CASES: [Case; 4] = [
    Case { name: "ipv4_ipip", family: Family::V4, mode: MODE_IPIP },
    Case { name: "ipv6_ipip", family: Family::V6, mode: MODE_IPIP },
    Case { name: "ipv4_l2dsr", family: Family::V4, mode: MODE_L2DSR },
    Case { name: "ipv6_l2dsr", family: Family::V6, mode: MODE_L2DSR },
];

#[test]
fn tcp_and_udp_to_the_vip_reach_every_backend_with_the_client_address() {
    let mut failed = Vec::new();
    for case in &CASES {
        let start = Instant::now();
        let result = std::panic::catch_unwind(|| run_case(case));
        let took = start.elapsed();
        match result {
            Ok(()) => eprintln!("{}: passed in {took:.2?}", case.name),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                eprintln!("{}: FAILED in {took:.2?}", case.name);
                failed.push(format!("{}: {msg}", case.name));
            }
        }
    }
    assert!(failed.is_empty(), "{} of {} cases failed:\n{}", failed.len(), CASES.len(), failed.join("\n"));
}

/// What the client did: the local address of every exchange that succeeded, and the failures.
#[derive(Default)]
struct ClientLog {
    tcp: Vec<SocketAddr>,
    udp: Vec<SocketAddr>,
    failures: Vec<String>,
}

fn run_case(case: &Case) {
    let name = case.name;
    let t0 = Instant::now();
    let topo = Topology::new(BACKENDS);
    let vip = vip(case.family, 1);
    let service = Service { vip, port: PORT, mode: case.mode };
    let server_addr = SocketAddr::new(vip, PORT);
    // Declared after the topology: detached before the namespaces go.
    let decap = topo.start_backend_hosts();
    let lb = topo.start_balancer(&[service]);
    let servers: Vec<[EchoServer; 2]> = topo
        .backends
        .iter()
        .map(|b| {
            [
                EchoServer::start(&b.ns, Proto::Tcp, server_addr),
                EchoServer::start(&b.ns, Proto::Udp, server_addr),
            ]
        })
        .collect();
    let setup = t0.elapsed();

    let client_ip = topo.client.addr(case.family);
    let t1 = Instant::now();
    let log = topo.client.ns.run(|| exchanges(name, client_ip, server_addr));
    let traffic = t1.elapsed();
    eprintln!(
        "{name}: set-up {setup:.2?}, {} TCP + {} UDP exchanges in {traffic:.2?}",
        log.tcp.len(),
        log.udp.len()
    );

    if !log.failures.is_empty() {
        panic!(
            "{name}: {} of the exchanges failed (stopped after {MAX_FAILURES}):\n  {}\n{}",
            log.failures.len(),
            log.failures.join("\n  "),
            diagnostics(&topo, &lb, &decap, &servers)
        );
    }
    assert_eq!(log.tcp.len(), CONNECTIONS, "{name}: TCP connections");
    assert_eq!(log.udp.len(), CONNECTIONS, "{name}: UDP exchanges");

    check_servers(name, &topo, &servers, &log, client_ip);
    check_balancer(name, &topo, &lb, &servers, case.family);
    check_decap(name, case.mode, &topo, &decap, &servers);
    let errors: Vec<String> = servers.iter().flatten().flat_map(|s| s.errors()).collect();
    assert!(errors.is_empty(), "{name}: the echo servers met errors: {errors:?}");
}

/// The client's side, run inside its namespace: 300 TCP connections, then 300 UDP exchanges,
/// one at a time. Stops early after MAX_FAILURES failures.
fn exchanges(name: &str, client_ip: IpAddr, server: SocketAddr) -> ClientLog {
    let mut log = ClientLog::default();
    for i in 0..CONNECTIONS {
        if log.failures.len() >= MAX_FAILURES {
            return log;
        }
        let payload = format!("{name} tcp #{i}");
        match tcp_exchange(server, payload.as_bytes(), STEP_TIMEOUT) {
            Ok(local) => log.tcp.push(local),
            Err(e) => log.failures.push(format!("TCP connection #{i} to {server}: {e}")),
        }
    }
    for i in 0..CONNECTIONS {
        if log.failures.len() >= MAX_FAILURES {
            return log;
        }
        let local = SocketAddr::new(client_ip, UDP_SPORT + i as u16);
        let payload = format!("{name} udp #{i}");
        match udp_exchange(local, server, payload.as_bytes(), STEP_TIMEOUT) {
            Ok(local) => log.udp.push(local),
            Err(e) => log.failures.push(format!("UDP exchange #{i} {local} -> {server}: {e}")),
        }
    }
    log
}

/// Every exchange was served exactly once, by one backend, which saw the client's own address
/// and port; each backend's share of the TCP connections is fair.
fn check_servers(
    name: &str,
    topo: &Topology,
    servers: &[[EchoServer; 2]],
    log: &ClientLog,
    client_ip: IpAddr,
) {
    for (p, proto) in [(0, Proto::Tcp), (1, Proto::Udp)] {
        let seen: Vec<SocketAddr> = servers.iter().flat_map(|s| s[p].peers()).collect();
        let foreign: Vec<&SocketAddr> = seen.iter().filter(|a| a.ip() != client_ip).collect();
        assert!(
            foreign.is_empty(),
            "{name}: {proto:?} backends saw peers other than the client {client_ip}: {foreign:?}"
        );
        let sent = if proto == Proto::Tcp { &log.tcp } else { &log.udp };
        let sent: BTreeSet<SocketAddr> = sent.iter().copied().collect();
        let seen_set: BTreeSet<SocketAddr> = seen.iter().copied().collect();
        assert_eq!(seen.len(), CONNECTIONS, "{name}: {proto:?} exchanges served (a flow served twice?)");
        assert_eq!(
            seen_set, sent,
            "{name}: the {proto:?} peers the backends saw are not the client's sockets"
        );
    }
    let shares: Vec<(String, usize)> =
        topo.backends.iter().zip(servers).map(|(b, s)| (b.port.clone(), s[0].peers().len())).collect();
    eprintln!("{name}: TCP connections per backend {shares:?}");
    for (backend, n) in &shares {
        let share = *n as f64 / CONNECTIONS as f64;
        assert!(
            (MIN_SHARE..=MAX_SHARE).contains(&share),
            "{name}: {backend} got {n} of {CONNECTIONS} TCP connections ({:.0}%), outside {:.0}%..{:.0}%: {shares:?}",
            share * 100.0,
            MIN_SHARE * 100.0,
            MAX_SHARE * 100.0
        );
    }
}

/// The balancer forwarded with XDP_TX, never lacked a backend, and its per-VIP and per-backend
/// counters agree with what the echo servers saw.
fn check_balancer(name: &str, topo: &Topology, lb: &Datapath, servers: &[[EchoServer; 2]], family: Family) {
    let c =
        |counter: Counter| lb.counter(counter).unwrap_or_else(|e| panic!("{name}: {}: {e}", counter.name()));
    let summary = counters(lb);
    assert!(c(Counter::ForwardTx) > 0, "{name}: nothing forwarded with XDP_TX: {summary}");
    for bad in [
        Counter::DropNoBackend,
        Counter::DropEncapFailed,
        Counter::PassFwdDisabled,
        Counter::PassNoNeigh,
        Counter::PassNoRoute,
        Counter::PassNoTxPort,
    ] {
        assert_eq!(c(bad), 0, "{name}: {} moved: {summary}", bad.name());
    }
    // Every flow missed the flow table once, at its first packet (a TCP connection's SYN),
    // which recorded it and is its one new flow.
    let misses = c(Counter::FlowMiss);
    assert!(
        misses >= 2 * CONNECTIONS as u64 && c(Counter::FlowPending) >= 2 * CONNECTIONS as u64,
        "{name}: {misses} flow misses for {CONNECTIONS} TCP and {CONNECTIONS} UDP flows: {summary}"
    );
    let mut new_flows = 0;
    for (i, s) in servers.iter().enumerate() {
        let id = topo.backend_id(i, family);
        let st = lb.backend_stats(id).unwrap_or_else(|e| panic!("{name}: backend_stats({id}): {e}"));
        let served = (s[0].peers().len() + s[1].peers().len()) as u64;
        assert!(
            st.new_flows >= served && st.packets >= st.new_flows && st.bytes >= st.packets * 42,
            "{name}: backend {id} ({}) served {served} flows but the balancer counted {st:?}",
            topo.backends[i].port
        );
        new_flows += st.new_flows;
    }
    // (More only if a SYN was sent again.)
    assert!(
        new_flows >= 2 * CONNECTIONS as u64 && new_flows <= misses,
        "{name}: backends' new flows {new_flows}, flow misses {misses}: {summary}"
    );
    for proto in [PROTO_TCP, PROTO_UDP] {
        let id = Service::stats_id(0, proto);
        let st = lb.vip_stats(id).unwrap_or_else(|e| panic!("{name}: vip_stats({id}): {e}"));
        assert!(st.new_flows >= CONNECTIONS as u64, "{name}: VIP stats {id} (proto {proto}): {st:?}");
    }
}

/// In ipip mode every packet a backend served came through its decap program; in l2dsr mode none.
fn check_decap(name: &str, mode: u8, topo: &Topology, decap: &[BackendHost], servers: &[[EchoServer; 2]]) {
    for (i, ((host, b), s)) in decap.iter().zip(&topo.backends).zip(servers).enumerate() {
        let n = host.counter(&b.ns, "decapsulated");
        let served = (s[0].peers().len() + s[1].peers().len()) as u64;
        if mode == MODE_IPIP {
            assert!(n >= served, "{name}: backend b{} decapsulated {n} packets for {served} flows", i + 1);
        } else {
            assert_eq!(n, 0, "{name}: backend b{} decapsulated packets in l2dsr mode", i + 1);
        }
    }
}

/// The non-zero counters of a datapath, for failure messages.
fn counters(dp: &Datapath) -> String {
    let list: Vec<String> = Counter::ALL
        .iter()
        .filter_map(|c| match dp.counter(*c) {
            Ok(0) => None,
            Ok(n) => Some(format!("{}={n}", c.name())),
            Err(e) => Some(format!("{}=<{e}>", c.name())),
        })
        .collect();
    format!("[{}]", list.join(" "))
}

/// What a failed case leaves to look at: the balancer's and decap programs' counters, what each
/// server served, and the links' packet counts.
fn diagnostics(topo: &Topology, lb: &Datapath, decap: &[BackendHost], servers: &[[EchoServer; 2]]) -> String {
    let mut out = format!("lb counters: {}\n", counters(lb));
    for ((b, host), s) in topo.backends.iter().zip(decap).zip(servers) {
        out += &format!(
            "{}: decapsulated {}, served TCP {} UDP {}, errors {:?}\n",
            b.port,
            host.counter(&b.ns, "decapsulated"),
            s[0].peers().len(),
            s[1].peers().len(),
            [s[0].errors(), s[1].errors()].concat()
        );
    }
    for h in topo.hosts() {
        out +=
            &format!("{} eth0: {}\n", h.port, h.ns.ip(&["-s", "-o", "link", "show", "dev", "eth0"]).trim());
    }
    out
}
