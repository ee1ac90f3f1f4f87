//! Health checks driving the ring, end to end: a backend whose server dies leaves the ring
//! after interval × fall, comes back after interval × rise once it recovers, and the other
//! backends' connections never notice.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use lb_tests::{
    echo::{tcp_connect, tcp_echo, EchoServer, Proto},
    lbd::LbdFiles,
    topology::{vip, Family, Topology},
};

const PORT: u16 = 80;
const INTERVAL: Duration = Duration::from_millis(300);
const RISE: u32 = 2;
const FALL: u32 = 2;
/// The bounds: no new connection to a dead backend after interval × fall + 1 s, and a
/// recovered one gets connections again within interval × rise + 1 s.
const SETTLE: Duration = Duration::from_secs(1);

fn config(backends: &[Ipv4Addr]) -> String {
    let mut c = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{}\"\nport = {PORT}\nprotocol = \"tcp\"\nring_size = 4099\n\n\
         [vip.health]\ntype = \"tcp\"\ninterval_ms = {}\ntimeout_ms = 150\nrise = {RISE}\nfall = {FALL}\n",
        vip(Family::V4, 1),
        INTERVAL.as_millis()
    );
    for b in backends {
        c += &format!("\n[[vip.backend]]\naddress = \"{b}\"\n");
    }
    c
}

/// One connection attempt every 10 ms from the client: when it started, and which backend
/// served it (None: it failed).
struct Attempt {
    at: Duration,
    backend: Option<usize>,
}

#[test]
fn a_dead_backend_leaves_the_ring_and_comes_back_without_disturbing_the_others() {
    let topo = Topology::new(3);
    let files = LbdFiles::new();
    let _passthrough = topo.start_lb_port_passthrough();
    let _decap = topo.start_backend_hosts();
    let addrs: Vec<Ipv4Addr> = topo.backends.iter().map(|b| b.v4).collect();
    let lbd = topo.start_lbd(&files, &config(&addrs));
    let vip_addr = SocketAddr::new(vip(Family::V4, 1), PORT);
    // Bound to every address: the VIP (client traffic) and the backend's own (health checks).
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT);
    let mut servers: Vec<Option<EchoServer>> =
        topo.backends.iter().map(|b| Some(EchoServer::start(&b.ns, Proto::Tcp, any))).collect();
    let served_by = |servers: &[Option<EchoServer>], local: SocketAddr| {
        servers.iter().position(|s| s.as_ref().is_some_and(|s| s.peers().contains(&local)))
    };

    // Long-lived connections to the two backends that stay healthy.
    let mut long = Vec::new();
    for _ in 0..60 {
        if long.len() == 2 {
            break;
        }
        let mut c = topo.client.ns.run(|| tcp_connect(vip_addr, Duration::from_secs(2))).expect("connect");
        tcp_echo(&mut c, b"hello").expect("echo");
        let local = c.local_addr().unwrap();
        match served_by(&servers, local) {
            Some(i) if i != 0 && !long.iter().any(|(j, _)| *j == i) => long.push((i, c)),
            _ => {}
        }
    }
    assert_eq!(long.len(), 2, "no long-lived connections to b2 and b3");

    let start = Instant::now();
    let stop = AtomicBool::new(false);
    let attempts: Mutex<Vec<(Duration, Option<SocketAddr>)>> = Mutex::new(Vec::new());
    let mut killed_at = Duration::ZERO;
    let mut restarted_at = Duration::ZERO;
    let mut long_failures = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            topo.client.ns.run(|| {
                while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(20) {
                    let at = start.elapsed();
                    let local = tcp_connect(vip_addr, Duration::from_millis(500)).and_then(|mut c| {
                        tcp_echo(&mut c, b"ping")?;
                        c.local_addr()
                    });
                    attempts.lock().unwrap().push((at, local.ok()));
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        });
        let exchange_long = |long: &mut Vec<(usize, std::net::TcpStream)>, failures: &mut Vec<String>| {
            for (i, c) in long.iter_mut() {
                if let Err(e) = tcp_echo(c, b"still there") {
                    failures.push(format!("b{} at {:?}: {e}", *i + 1, start.elapsed()));
                }
            }
        };
        let wait = |d: Duration, long: &mut Vec<(usize, std::net::TcpStream)>, failures: &mut Vec<String>| {
            let until = start.elapsed() + d;
            while start.elapsed() < until {
                exchange_long(long, failures);
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        wait(Duration::from_secs(1), &mut long, &mut long_failures);
        killed_at = start.elapsed();
        servers[0] = None; // b1's server dies: connections to it are refused
        wait(INTERVAL * FALL + SETTLE + Duration::from_secs(1), &mut long, &mut long_failures);
        restarted_at = start.elapsed();
        servers[0] = Some(EchoServer::start(&topo.backends[0].ns, Proto::Tcp, any));
        wait(INTERVAL * RISE + SETTLE + Duration::from_secs(1), &mut long, &mut long_failures);
        stop.store(true, Ordering::Relaxed);
    });

    let list = lbd.lbctl_ok(&["backend", "list", "web"]);
    let attempts: Vec<Attempt> = attempts
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|(at, local)| Attempt { at, backend: local.and_then(|l| served_by(&servers, l)) })
        .collect();
    let gone_by = killed_at + INTERVAL * FALL + SETTLE;
    let back_by = restarted_at + INTERVAL * RISE + SETTLE;
    let failed_late: Vec<Duration> =
        attempts.iter().filter(|a| a.backend.is_none() && a.at > gone_by).map(|a| a.at).collect();
    let to_dead: Vec<Duration> = attempts
        .iter()
        .filter(|a| a.backend == Some(0) && a.at > gone_by && a.at < restarted_at)
        .map(|a| a.at)
        .collect();
    let back: usize =
        attempts.iter().filter(|a| a.backend == Some(0) && a.at > restarted_at && a.at < back_by).count();
    let failed_early = attempts.iter().filter(|a| a.backend.is_none() && a.at <= gone_by).count();
    let report = format!(
        "{} attempts; b1 killed at {killed_at:?}, restarted at {restarted_at:?}; {failed_early} failed before {gone_by:?}\n{list}",
        attempts.len()
    );
    assert!(attempts.len() > 300, "too few attempts: {report}");
    assert!(failed_late.is_empty(), "connections failed after {gone_by:?}: {failed_late:?}\n{report}");
    assert!(to_dead.is_empty(), "new connections reached the dead backend: {to_dead:?}\n{report}");
    assert!(back > 0, "b1 got no connection within {:?} of its restart\n{report}", INTERVAL * RISE + SETTLE);
    assert!(long_failures.is_empty(), "connections to healthy backends were disturbed: {long_failures:?}");
    assert!(list.lines().all(|l| !l.contains(" down ")), "a backend is still down at the end:\n{list}");
    eprintln!("{report}");
}
