//! The schedulers end to end, over real TCP connections: the standard topology (client, lb and
//! three backends on a bridge, decap on the backends) with lbd managing the balancer and lbctl
//! talking to it, one topology per test.
//!
//! - Round robin: a VIP starts as maglev with a long-lived connection open; `lbctl apply -f`
//!   switches it to round-robin (`plan -f` says so first); 300 new connections give each of the
//!   three equal backends 100 ± 10; weights 1:2:3 (`lbctl backend weight`) give shares within
//!   ±10 % of 1/6, 2/6, 3/6 over 300 more; the long-lived connection stays on its backend.
//! - Least connections: 60 idle connections held on one backend (the others drained while they
//!   open); of the next 120 new connections at least 90 % go to the other two; `lbctl backend
//!   list`, the stats and the metrics show the 60; once they close, new connections reach that
//!   backend again. Counts then set wrong in the pinned map (drift) are put right by lbd's
//!   periodic recount from the flow table.
//! - Source hash: 1,000 connections from one client address all land on one backend; 1,000
//!   connections from 1,000 client addresses (a /22 routed to the client, each connection's
//!   socket bound to one) spread within ±15 % of equal, each where the ring says.
//! - Weighted Maglev: backends weighted 1:2:3, 3,000 connections from fixed client ports: shares
//!   within ±10 % of the weights, each connection where the ring says.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use lb_common::PROTO_TCP;
use lb_tests::{
    echo::{tcp_connect, tcp_echo, tcp_exchange, tcp_exchange_from, EchoServer, Proto},
    frames::flow_key,
    lbd::{Lbd, LbdFiles},
    netns::Netns,
    topology::{vip, Family, Topology},
};
use lb_userspace::maglev::{self, Member};

const PORT: u16 = 8080;
const RING: u32 = 4099;
/// Per step (connect, send, receive) of one exchange.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// A batch of connections stops after this many failures (it has failed anyway).
const MAX_FAILURES: usize = 5;

/// One test's world. Fields drop in order: servers, lbd (killed), programs, pins, namespaces.
struct World {
    servers: Vec<EchoServer>,
    lbd: Lbd,
    _backend_hosts: Vec<lb_tests::backend_host::BackendHost>,
    _passthrough: lb_userspace::datapath::Datapath,
    files: LbdFiles,
    topo: Topology,
}

impl World {
    /// The topology with three backends, lbd running `vips` (after `extra` top-level keys), and
    /// a TCP echo server on the VIP in each backend.
    fn start(extra: &str, vips: impl FnOnce(&[String]) -> String) -> World {
        let topo = Topology::new(3);
        let files = LbdFiles::new();
        let passthrough = topo.start_lb_port_passthrough();
        let decap = topo.start_backend_hosts();
        let config = format!("{extra}{}", topo.lbd_config(&files, &vips(&addresses(&topo))));
        let lbd = Lbd::start(&topo.lb.ns, &files, &config);
        let servers = topo.backends.iter().map(|b| EchoServer::start(&b.ns, Proto::Tcp, server())).collect();
        World { servers, lbd, _backend_hosts: decap, _passthrough: passthrough, files, topo }
    }

    fn addresses(&self) -> Vec<String> {
        addresses(&self.topo)
    }

    /// Which backend served each of `locals` (client sockets); panics on one served by none.
    fn tally(&self, name: &str, locals: &[SocketAddr]) -> Vec<usize> {
        let by_peer = self.served();
        let mut counts = vec![0; self.servers.len()];
        for local in locals {
            let b =
                by_peer.get(local).unwrap_or_else(|| self.fail(name, &format!("no backend served {local}")));
            counts[*b] += 1;
        }
        counts
    }

    /// Every client socket the servers saw -> the backend (index) that served it.
    fn served(&self) -> HashMap<SocketAddr, usize> {
        let mut by_peer = HashMap::new();
        for (i, s) in self.servers.iter().enumerate() {
            for peer in s.peers() {
                if let Some(other) = by_peer.insert(peer, i) {
                    panic!("{peer} was served by backends {other} and {i}");
                }
            }
        }
        by_peer
    }

    fn fail(&self, name: &str, what: &str) -> ! {
        let stats = self.lbd.lbctl(&["stats"]);
        let log = std::fs::read_to_string(self.files.dir.join("lbd.log")).unwrap_or_default();
        panic!("{name}: {what}\nlbctl stats:\n{}\nlbd log:\n{log}", String::from_utf8_lossy(&stats.stdout));
    }

    fn check_no_server_errors(&self, name: &str) {
        let errors: Vec<String> = self.servers.iter().flat_map(EchoServer::errors).collect();
        assert!(errors.is_empty(), "{name}: the echo servers met errors: {errors:?}");
    }
}

fn addresses(topo: &Topology) -> Vec<String> {
    topo.backends.iter().map(|b| b.v4.to_string()).collect()
}

fn server() -> SocketAddr {
    SocketAddr::new(vip(Family::V4, 1), PORT)
}

/// A `[[vip]]` table "web" on the test VIP with `scheduler` and backends (address, weight).
fn vip_toml(scheduler: &str, backends: &[(&str, u32)]) -> String {
    let mut t = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{}\"\nport = {PORT}\nprotocol = \"tcp\"\n\
         scheduler = \"{scheduler}\"\nring_size = {RING}\n",
        vip(Family::V4, 1)
    );
    for (a, w) in backends {
        t += &format!("\n  [[vip.backend]]\n  address = \"{a}\"\n  weight = {w}\n");
    }
    t
}

fn equal(addrs: &[String]) -> Vec<(&str, u32)> {
    addrs.iter().map(|a| (a.as_str(), 100)).collect()
}

/// `n` connections from `ns` to the VIP, one at a time (connect, one exchange, close): the
/// client sockets, and the failures (it stops after MAX_FAILURES).
fn connections(ns: &Netns, n: usize, tag: &str) -> (Vec<SocketAddr>, Vec<String>) {
    ns.run(|| {
        let (mut locals, mut failures) = (Vec::new(), Vec::new());
        for i in 0..n {
            if failures.len() >= MAX_FAILURES {
                break;
            }
            match tcp_exchange(server(), format!("{tag} #{i}").as_bytes(), STEP_TIMEOUT) {
                Ok(local) => locals.push(local),
                Err(e) => failures.push(format!("{tag} connection #{i}: {e}")),
            }
        }
        (locals, failures)
    })
}

/// The same from chosen client sockets (`ns` must own their addresses).
fn connections_from(ns: &Netns, from: &[SocketAddr], tag: &str) -> (Vec<SocketAddr>, Vec<String>) {
    ns.run(|| {
        let (mut locals, mut failures) = (Vec::new(), Vec::new());
        for (i, local) in from.iter().enumerate() {
            if failures.len() >= MAX_FAILURES {
                break;
            }
            match tcp_exchange_from(*local, server(), format!("{tag} #{i}").as_bytes(), STEP_TIMEOUT) {
                Ok(local) => locals.push(local),
                Err(e) => failures.push(format!("{tag} connection #{i} from {local}: {e}")),
            }
        }
        (locals, failures)
    })
}

fn batch(
    world: &World,
    name: &str,
    (locals, failures): (Vec<SocketAddr>, Vec<String>),
    n: usize,
) -> Vec<usize> {
    if !failures.is_empty() {
        world.fail(name, &format!("connections failed:\n  {}", failures.join("\n  ")));
    }
    assert_eq!(locals.len(), n, "{name}: connections made");
    world.tally(name, &locals)
}

/// Asserts that `counts` are `want` (shares of the total) within `tolerance` of each share.
fn assert_shares(name: &str, counts: &[usize], want: &[f64], tolerance: f64) {
    let total: usize = counts.iter().sum();
    for (i, (&n, &w)) in counts.iter().zip(want).enumerate() {
        let share = n as f64 / total as f64;
        assert!(
            (share - w).abs() <= w * tolerance,
            "{name}: backend {} got {n} of {total} ({:.1}%), want {:.1}% ± {:.0}% of it: {counts:?}",
            i + 1,
            share * 100.0,
            w * 100.0,
            tolerance * 100.0
        );
    }
}

/// The backend (index) the VIP's Maglev ring gives a key hash, as lbd builds the ring
/// (`maglev::build` over the backends' addresses and weights; ids are the indices here).
fn ring_of(addrs: &[String], weights: &[u32]) -> Vec<u32> {
    let members: Vec<Member> = addrs
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(i, (a, w))| Member::new(a.parse().unwrap(), i as u32, *w))
        .collect();
    maglev::build(&members, RING)
}

// ------------------------------------------------------------------------------------------
// Round robin
// ------------------------------------------------------------------------------------------

#[test]
fn round_robin_gives_exact_shares_and_a_switch_keeps_open_connections() {
    let name = "round_robin";
    let t0 = Instant::now();
    let w = World::start("", |addrs| vip_toml("maglev", &equal(addrs)));
    let addrs = w.addresses();
    let ns = &w.topo.client.ns;

    // A long-lived connection under maglev.
    let mut long = ns.run(|| tcp_connect(server(), STEP_TIMEOUT)).expect("long-lived connection");
    tcp_echo(&mut long, b"under maglev").expect("long-lived exchange");
    let long_local = long.local_addr().unwrap();
    let long_backend = w.tally(name, &[long_local]).iter().position(|&n| n == 1).unwrap();

    // Switch to round robin with the config file; plan first.
    std::fs::write(w.files.config(), w.topo.lbd_config(&w.files, &vip_toml("round-robin", &equal(&addrs))))
        .unwrap();
    let config = w.files.config().display().to_string();
    let plan = w.lbd.lbctl_ok(&["plan", "-f", &config]);
    assert!(plan.contains("maglev -> round-robin"), "{name}: lbctl plan:\n{plan}");
    w.lbd.lbctl_ok(&["apply", "-f", &config]);
    let list = w.lbd.lbctl_ok(&["vip", "list"]);
    assert!(list.lines().any(|l| l.starts_with("web ") && l.contains(" round-robin ")), "{list}");
    tcp_echo(&mut long, b"after the switch").unwrap_or_else(|e| w.fail(name, &format!("long-lived: {e}")));

    let equal_counts = batch(&w, name, connections(ns, 300, "equal"), 300);
    eprintln!("{name}: 3 equal backends, 300 new connections: {equal_counts:?}");
    for (i, &n) in equal_counts.iter().enumerate() {
        assert!((90..=110).contains(&n), "{name}: backend {} got {n} of 300, want 100 ± 10", i + 1);
    }

    // Weights 1:2:3.
    w.lbd.lbctl_ok(&["backend", "weight", "web", &addrs[1], "200"]);
    w.lbd.lbctl_ok(&["backend", "weight", "web", &addrs[2], "300"]);
    let weighted = batch(&w, name, connections(ns, 300, "weighted"), 300);
    eprintln!("{name}: weights 1:2:3, 300 new connections: {weighted:?}");
    assert_shares(name, &weighted, &[1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0], 0.10);

    // The long-lived connection never moved: it still exchanges with its first backend.
    tcp_echo(&mut long, b"after the weights").unwrap_or_else(|e| w.fail(name, &format!("long-lived: {e}")));
    assert_eq!(w.tally(name, &[long_local])[long_backend], 1);
    drop(long);
    w.check_no_server_errors(name);
    eprintln!("{name}: passed in {:.2?}", t0.elapsed());
}

// ------------------------------------------------------------------------------------------
// Least connections
// ------------------------------------------------------------------------------------------

const IDLE: usize = 60;
const METRICS: &str = "127.0.0.1:9100";

/// The CONNECTIONS column (fourth) of `address` in `lbctl backend list`.
fn connections_column(list: &str, address: &str) -> Option<String> {
    list.lines().find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.first() == Some(&address)).then(|| cols.get(3).map(|c| c.to_string())).flatten()
    })
}

fn metric(ns: &Netns, line_start: &str) -> Option<String> {
    let out =
        ns.command("curl").args(["-sS", "--max-time", "5", &format!("http://{METRICS}/metrics")]).output();
    let text = String::from_utf8_lossy(&out.expect("run curl").stdout).into_owned();
    text.lines().find(|l| l.starts_with(line_start)).map(str::to_owned)
}

#[test]
fn least_conn_avoids_the_busy_backend_until_its_connections_close() {
    let name = "least_conn";
    let t0 = Instant::now();
    let w =
        World::start(&format!("metrics = \"{METRICS}\"\n"), |addrs| vip_toml("least-conn", &equal(addrs)));
    let addrs = w.addresses();
    let ns = &w.topo.client.ns;

    // 60 idle connections, all on b1: the others are drained while they open.
    w.lbd.lbctl_ok(&["backend", "drain", "web", &addrs[1]]);
    w.lbd.lbctl_ok(&["backend", "drain", "web", &addrs[2]]);
    let mut idle: Vec<TcpStream> = ns.run(|| {
        (0..IDLE)
            .map(|i| {
                let mut c = tcp_connect(server(), STEP_TIMEOUT).unwrap_or_else(|e| panic!("idle #{i}: {e}"));
                tcp_echo(&mut c, b"idle").unwrap_or_else(|e| panic!("idle #{i}: {e}"));
                c
            })
            .collect()
    });
    let idle_locals: Vec<SocketAddr> = idle.iter().map(|c| c.local_addr().unwrap()).collect();
    assert_eq!(w.tally(name, &idle_locals), vec![IDLE, 0, 0], "{name}: the idle connections");
    w.lbd.lbctl_ok(&["backend", "undrain", "web", &addrs[1]]);
    w.lbd.lbctl_ok(&["backend", "undrain", "web", &addrs[2]]);
    let list = w.lbd.lbctl_ok(&["backend", "list", "web"]);
    eprintln!("{name}: {IDLE} idle connections on {}:\n{list}", addrs[0]);
    let want: Vec<Option<String>> = ["60", "0", "0"].iter().map(|s| Some(s.to_string())).collect();
    let got: Vec<Option<String>> = addrs.iter().map(|a| connections_column(&list, a)).collect();
    assert_eq!(got, want, "{name}: CONNECTIONS in lbctl backend list:\n{list}");
    let stats = w.lbd.lbctl_ok(&["--json", "stats"]);
    assert!(stats.contains("\"connections\": 60"), "{name}: lbctl --json stats:\n{stats}");
    let series = format!("lb_backend_active_connections{{vip=\"web\",backend=\"{}\"}}", addrs[0]);
    assert_eq!(metric(&w.topo.lb.ns, &series), Some(format!("{series} 60")), "{name}: metrics");

    // 120 new connections: at least 90 % to the other two.
    let busy = batch(&w, name, connections(ns, 120, "busy"), 120);
    eprintln!("{name}: with {IDLE} open on b1, 120 new connections: {busy:?}");
    assert!(
        busy[0] * 10 <= 120,
        "{name}: b1 got {} of 120 new connections (more than 10 %): {busy:?}",
        busy[0]
    );
    for c in &mut idle {
        tcp_echo(c, b"still idle").unwrap_or_else(|e| w.fail(name, &format!("an idle connection: {e}")));
    }

    // The 60 close: their FINs bring b1's count back to 0, and new connections reach it again.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut list = String::new();
    while Instant::now() < deadline {
        list = w.lbd.lbctl_ok(&["backend", "list", "web"]);
        if connections_column(&list, &addrs[0]).as_deref() == Some("0") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(connections_column(&list, &addrs[0]).as_deref(), Some("0"), "{name}: after closing:\n{list}");
    let after = batch(&w, name, connections(ns, 90, "after"), 90);
    eprintln!("{name}: after the {IDLE} closed, 90 new connections: {after:?}");
    assert!(after[0] >= 9, "{name}: b1 got {} of 90 new connections after its idle ones closed", after[0]);
    let list = w.lbd.lbctl_ok(&["backend", "list", "web"]);
    for a in &addrs {
        assert_eq!(
            connections_column(&list, a).as_deref(),
            Some("0"),
            "{name}: after the short ones:\n{list}"
        );
    }

    // Counts that drifted (connections gone without a FIN the balancer saw): lbd's recount from
    // the flow table puts them right within its 10 s period.
    let pins = w.files.pin_path.join(lb_common::PIN_LAYOUT);
    let counts =
        aya::maps::MapData::from_pin(pins.join(lb_common::map_names::ACTIVE_CONNS)).expect("pinned counts");
    let mut counts: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(aya::maps::Map::Array(counts)).unwrap();
    for id in 1..=8 {
        counts.set(id, 7, 0).unwrap();
    }
    let drifted = Instant::now();
    let mut list = String::new();
    while drifted.elapsed() < Duration::from_secs(25) {
        list = w.lbd.lbctl_ok(&["backend", "list", "web"]);
        if addrs.iter().all(|a| connections_column(&list, a).as_deref() == Some("0")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for a in &addrs {
        assert_eq!(connections_column(&list, a).as_deref(), Some("0"), "{name}: not corrected:\n{list}");
    }
    let log = std::fs::read_to_string(w.files.dir.join("lbd.log")).unwrap_or_default();
    assert!(log.contains("corrected a backend's count of open connections"), "{name}: lbd log:\n{log}");
    eprintln!("{name}: counts set wrong were corrected by lbd's recount after {:.2?}", drifted.elapsed());
    w.check_no_server_errors(name);
    eprintln!("{name}: passed in {:.2?}", t0.elapsed());
}

// ------------------------------------------------------------------------------------------
// Source hash
// ------------------------------------------------------------------------------------------

/// Client addresses of the source-hash test: a /22 the client owns (a local route) and the
/// backends route back to it.
const CLIENTS: &str = "198.18.4.0/22";
const CLIENT_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 0);

#[test]
fn source_hash_keeps_a_client_on_one_backend_and_spreads_clients() {
    let name = "source_hash";
    let t0 = Instant::now();
    let w = World::start("", |addrs| vip_toml("source-hash", &equal(addrs)));
    let addrs = w.addresses();
    let ns = &w.topo.client.ns;
    ns.ip(&["route", "add", "local", CLIENTS, "dev", "lo"]);
    for b in &w.topo.backends {
        b.ns.ip(&["route", "add", CLIENTS, "via", &w.topo.client.v4.to_string(), "dev", "eth0"]);
    }

    let one = batch(&w, name, connections(ns, 1000, "one client"), 1000);
    eprintln!("{name}: 1000 connections from {}: {one:?}", w.topo.client.v4);
    assert_eq!(
        one.iter().filter(|&&n| n > 0).count(),
        1,
        "{name}: one client reached several backends: {one:?}"
    );

    let from: Vec<SocketAddr> = (1..=1000u32)
        .map(|i| SocketAddr::new(Ipv4Addr::from(u32::from(CLIENT_BASE) + i).into(), 0))
        .collect();
    let t = Instant::now();
    let (locals, failures) = connections_from(ns, &from, "many clients");
    let many = batch(&w, name, (locals.clone(), failures), 1000);
    eprintln!("{name}: 1000 connections from 1000 addresses in {:.2?}: {many:?}", t.elapsed());
    assert_shares(name, &many, &[1.0 / 3.0; 3], 0.15);
    // Each client where the ring of its address's hash says (lbd's hash seed is 0).
    let ring = ring_of(&addrs, &[100; 3]);
    let served = w.served();
    let astray: Vec<String> = locals
        .iter()
        .filter_map(|l| {
            let key = flow_key(l.ip(), l.port(), server().ip(), PORT, PROTO_TCP);
            let want =
                ring[lb_common::hash::ring_slot(lb_common::hash::source(&key, 0), RING) as usize] as usize;
            (served[l] != want).then(|| format!("{l}: on b{}, ring says b{}", served[l] + 1, want + 1))
        })
        .collect();
    assert!(
        astray.is_empty(),
        "{name}: {} clients off their ring slot: {:?}",
        astray.len(),
        &astray[..astray.len().min(10)]
    );
    w.check_no_server_errors(name);
    eprintln!("{name}: passed in {:.2?}", t0.elapsed());
}

// ------------------------------------------------------------------------------------------
// Weighted Maglev
// ------------------------------------------------------------------------------------------

#[test]
fn weighted_maglev_follows_the_weights() {
    let name = "weighted_maglev";
    let t0 = Instant::now();
    let weights = [100, 200, 300];
    let w = World::start("", |addrs| {
        let b: Vec<(&str, u32)> = addrs.iter().map(String::as_str).zip(weights).collect();
        vip_toml("maglev", &b)
    });
    let addrs = w.addresses();
    let client = IpAddr::from(w.topo.client.v4);
    // Fixed client ports (outside the ephemeral range): the same flows on every run.
    let from: Vec<SocketAddr> = (0..3000u16).map(|i| SocketAddr::new(client, 20_000 + i)).collect();
    let t = Instant::now();
    let (locals, failures) = connections_from(&w.topo.client.ns, &from, "weighted");
    let counts = batch(&w, name, (locals.clone(), failures), 3000);
    eprintln!("{name}: weights 1:2:3, 3000 connections in {:.2?}: {counts:?}", t.elapsed());
    assert_shares(name, &counts, &[1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0], 0.10);
    let ring = ring_of(&addrs, &weights);
    let slots: Vec<usize> = (0..3).map(|i| ring.iter().filter(|&&id| id == i).count()).collect();
    eprintln!("{name}: ring slots per backend {slots:?} of {RING}");
    let served = w.served();
    let astray = locals
        .iter()
        .filter(|l| {
            let key = flow_key(l.ip(), l.port(), server().ip(), PORT, PROTO_TCP);
            served[*l]
                != ring[lb_common::hash::ring_slot(lb_common::hash::flow(&key, 0), RING) as usize] as usize
        })
        .count();
    assert_eq!(astray, 0, "{name}: connections off their ring slot");
    w.check_no_server_errors(name);
    eprintln!("{name}: passed in {:.2?}", t0.elapsed());
}
