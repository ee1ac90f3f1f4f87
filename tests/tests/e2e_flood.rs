//! Flood resilience end to end: the standard topology with a real lbd serving `web`
//! (198.18.100.1:8080/tcp, two backends, `[vip.limits]` so that lbd tracks its sources).
//!
//! A generator in the client's namespace sends spoofed SYNs and ACKs from the 65,536 addresses
//! of 198.19.0.0/16 at random (random ports: every packet a new flow or an ACK of none) as fast
//! as two raw AF_PACKET sockets go, for 10 s, while the real client keeps 50 long-lived
//! connections (an echo on each every 500 ms) and opens 20 new ones a second. The issue asks for
//! XDP live frames, as the benches use; `BPF_PROG_TEST_RUN` with live frames fails with EPERM on
//! the VMs these tests run on, so AF_PACKET (`lb_tests::flood`) stands in, at a lower rate (the
//! rate reached is printed). Checked:
//! - every long-lived connection survives, on the backend it started on: each echo completes
//!   (within `ECHO_UNDER_FLOOD`: TCP retransmits what the overrun receive ring drops) and the one
//!   after the flood within `TIMEOUT`;
//! - at least 99 % of the new connections succeed;
//! - `lbctl top --prefix 16` names the flood's block as the top sender within 2 s of its start;
//! - `lbctl flows` tells the flood's flows (unconfirmed: one packet each) from the connections
//!   (confirmed), every long-lived one among them.
use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{
    echo::{self, EchoServer, Proto},
    flood::{self, Flood},
    lbd::LbdFiles,
    topology::{mac_of, parse_mac, vip, Family, Topology},
};
use lb_userspace::agent::{
    flows::{FlowState, Flows},
    top::Top,
};

const PORT: u16 = 8080;
const FLOOD_TIME: Duration = Duration::from_secs(10);
const FLOOD_THREADS: u64 = 2;
const LONG_LIVED: usize = 50;
const NEW_PER_SECOND: u32 = 20;
const TIMEOUT: Duration = Duration::from_secs(3);
/// How long a long-lived connection's echo may take while the flood runs. The flood outruns the
/// balancer's receive ring on a 2-core VM (the generator shares the balancer's CPUs), so the ring
/// drops some of the connections' segments before XDP sees them, as a full NIC ring would. TCP
/// recovers by retransmitting after 0.2, 0.4, 0.8, 1.6, 3.2 s: a 3-s bound failed on four losses
/// in a row (about one run in 15). What the balancer owes a connection (its flow, its backend) is
/// checked by every echo completing, and by the echo after the flood within `TIMEOUT`.
const ECHO_UNDER_FLOOD: Duration = Duration::from_secs(12);
const TOP_WITHIN: Duration = Duration::from_secs(2);

#[test]
fn a_spoofed_flood_keeps_connections_lets_new_ones_through_and_shows_in_top() {
    lb_tests::privilege::require_root();
    let topo = Topology::new(2);
    let files = LbdFiles::new();
    let _passthrough = topo.start_lb_port_passthrough();
    let _decap = topo.start_backend_hosts();
    let web = vip(Family::V4, 1);
    let backends: String =
        topo.backends.iter().map(|b| format!("  [[vip.backend]]\n  address = \"{}\"\n", b.v4)).collect();
    let vips = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{web}\"\nport = {PORT}\nprotocol = \"tcp\"\nring_size = 4099\n\
         [vip.limits]\nnew_flows_per_source = 1000\n{backends}"
    );
    let lbd = topo.start_lbd(&files, &vips);
    let server = SocketAddr::new(web, PORT);
    let servers: Vec<EchoServer> =
        topo.backends.iter().map(|b| EchoServer::start(&b.ns, Proto::Tcp, server)).collect();
    let fail = |what: String| -> ! {
        let stats = lbd.lbctl(&["stats", "--interval", "0.1"]);
        panic!(
            "{what}\nlbctl stats:\n{}\nlbd log:\n{}",
            String::from_utf8_lossy(&stats.stdout),
            std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default()
        );
    };

    // ---- 50 long-lived connections, each on the backend it started on ---------------------
    let mut long: Vec<TcpStream> = topo.client.ns.run(|| {
        (0..LONG_LIVED)
            .map(|i| {
                let mut c =
                    echo::tcp_connect(server, TIMEOUT).unwrap_or_else(|e| panic!("long-lived {i}: {e}"));
                echo::tcp_echo(&mut c, b"before").unwrap_or_else(|e| panic!("long-lived {i}: {e}"));
                c
            })
            .collect()
    });
    let backend_of = |local: SocketAddr| -> Vec<usize> {
        servers.iter().enumerate().filter(|(_, s)| s.peers().contains(&local)).map(|(i, _)| i).collect()
    };
    let started_on: Vec<Vec<usize>> = long.iter().map(|c| backend_of(c.local_addr().unwrap())).collect();
    assert!(
        started_on.iter().all(|b| b.len() == 1),
        "each connection is served by one backend: {started_on:?}"
    );

    // ---- The flood, the client's traffic, lbctl top ------------------------------------------
    let flood = Flood {
        ifindex: topo.client.ns.ifindex("eth0"),
        src_mac: parse_mac(&mac_of(&topo.client.ns, "eth0")),
        dst_mac: parse_mac(&mac_of(&topo.lb.ns, "eth0")),
        sources: [198, 19],
        dst: match web {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => unreachable!("an IPv4 VIP"),
        },
        dport: PORT,
        max_packets: 100_000_000,
        max_time: FLOOD_TIME,
    };
    let (stop, flooded) = (AtomicBool::new(false), AtomicU64::new(0));
    let flood_block = "198.19.0.0/16";
    let client = &topo.client.ns;
    let long_lived = &mut long;
    let start = Instant::now();
    let (sent, new_ok, new_failed, kept, top_after, top_text, top_lag) = std::thread::scope(|s| {
        let generators: Vec<_> = (0..FLOOD_THREADS)
            .map(|seed| {
                let (flood, stop, flooded) = (&flood, &stop, &flooded);
                s.spawn(move || client.run(|| flood::send(flood, seed, stop, flooded)))
            })
            .collect();
        // New connections, 20 a second, each on a thread of its own (a slow handshake does not
        // hold the next one back).
        let new = s.spawn(|| {
            client.run(|| {
                let gap = Duration::from_secs(1) / NEW_PER_SECOND;
                let results: Vec<_> = std::thread::scope(|inner| {
                    let mut attempts = Vec::new();
                    for i in 0..NEW_PER_SECOND as u64 * FLOOD_TIME.as_secs() {
                        let at = start + gap * i as u32;
                        std::thread::sleep(at.saturating_duration_since(Instant::now()));
                        attempts.push(inner.spawn(move || echo::tcp_exchange(server, b"new", TIMEOUT)));
                    }
                    attempts.into_iter().map(|h| h.join().expect("a connection thread")).collect()
                });
                let failed: Vec<String> =
                    results.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
                (results.len() - failed.len(), failed)
            })
        });
        // The long-lived connections: an echo on each every 500 ms.
        let keep = s.spawn(move || {
            let (mut failures, mut slowest) = (Vec::new(), Duration::ZERO);
            for c in long_lived.iter() {
                c.set_read_timeout(Some(ECHO_UNDER_FLOOD)).expect("a read timeout");
            }
            while start.elapsed() < FLOOD_TIME {
                for (i, c) in long_lived.iter_mut().enumerate() {
                    let sent = Instant::now();
                    if let Err(e) = echo::tcp_echo(c, b"during") {
                        failures.push(format!("long-lived {i} at {:.1?}: {e}", start.elapsed()));
                    }
                    slowest = slowest.max(sent.elapsed());
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            for c in long_lived.iter() {
                c.set_read_timeout(Some(TIMEOUT)).expect("a read timeout");
            }
            (failures, slowest)
        });
        // lbctl top, until the flood's block leads.
        let mut top_after = None;
        let mut top_text = String::new();
        let mut top_lag = None;
        while start.elapsed() < FLOOD_TIME && top_after.is_none() {
            let json = lbd.lbctl_ok(&["--json", "top", "--vip", "web", "--prefix", "16", "-n", "3"]);
            let top: Top =
                serde_json::from_str(&json).unwrap_or_else(|e| panic!("lbctl top --json: {e}: {json}"));
            if top.sources.first().is_some_and(|t| t.source.to_string() == flood_block) {
                top_after = Some(start.elapsed());
                top_text = lbd.lbctl_ok(&["top", "--vip", "web", "--prefix", "16", "-n", "3"]);
                top_text += &lbd.lbctl_ok(&["top", "--vip", "web", "-n", "3"]);
                // The flood keeps the per-source table full: each top reads it whole (seconds of
                // system calls), and lbd must serve on meanwhile, its event loop not held.
                for _ in 0..3 {
                    lbd.lbctl_ok(&["--json", "top", "--vip", "web", "-n", "3"]);
                }
                let status: serde_json::Value =
                    serde_json::from_str(&lbd.lbctl_ok(&["--json", "status"])).expect("lbctl --json status");
                top_lag = status["event_loop_lag_recent_max_seconds"].as_f64();
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let sent: Vec<flood::Sent> = generators.into_iter().map(|g| g.join().expect("a generator")).collect();
        stop.store(true, Ordering::Relaxed);
        let (ok, failed) = new.join().expect("the new connections");
        let kept = keep.join().expect("the long-lived connections");
        (sent, ok, failed, kept, top_after, top_text, top_lag)
    });
    let (long_failures, slowest_echo) = kept;
    let packets: u64 = sent.iter().map(|s| s.packets).sum();
    let secs = sent.iter().map(|s| s.elapsed.as_secs_f64()).fold(0.0, f64::max);
    let stats = lbd.lbctl_ok(&["stats", "--interval", "0.1"]);
    eprintln!(
        "flood: {packets} spoofed SYNs and ACKs in {secs:.1} s ({:.0} packets/s, {FLOOD_THREADS} AF_PACKET threads)\n\
         new connections: {new_ok} ok, {} failed; the slowest long-lived echo {slowest_echo:.2?}\n\
         lbctl top (after {top_after:.2?}):\n{top_text}\n{stats}",
        packets as f64 / secs,
        new_failed.len()
    );

    // ---- What must hold -------------------------------------------------------------------
    if !long_failures.is_empty() {
        fail(format!("long-lived connections broke under the flood:\n{}", long_failures.join("\n")));
    }
    for (i, c) in long.iter_mut().enumerate() {
        if let Err(e) = echo::tcp_echo(c, b"after") {
            fail(format!("long-lived connection {i} did not survive the flood: {e}"));
        }
        let on = backend_of(c.local_addr().unwrap());
        if on != started_on[i] {
            fail(format!("long-lived connection {i} moved from backend {:?} to {on:?}", started_on[i]));
        }
    }
    let total = new_ok + new_failed.len();
    if (new_ok as f64) < 0.99 * total as f64 {
        fail(format!(
            "{} of {total} new connections failed under the flood (at most 1 % may):\n{}",
            new_failed.len(),
            new_failed.join("\n")
        ));
    }
    match top_after {
        Some(t) if t <= TOP_WITHIN => {}
        other => fail(format!(
            "lbctl top did not name {flood_block} the top sender within {TOP_WITHIN:?}: {other:?}"
        )),
    }
    // (Held for the walk, it ran 1 to 2 s late.)
    match top_lag {
        Some(lag) if lag < 0.5 => {}
        other => {
            fail(format!("lbd's event loop ran {other:?} s late while lbctl top read the flood's sources"))
        }
    }
    assert!(packets > 0, "the generator sent nothing");

    let flows = |args: &[&str]| -> Flows {
        let json = lbd.lbctl_ok(&[&["--json", "flows", "--vip", "web"], args].concat());
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("lbctl --json flows: {e}: {json}"))
    };
    let all = flows(&["--limit", "0"]);
    let confirmed = flows(&["--state", "confirmed", "--limit", "10000"]);
    eprintln!("lbctl flows: {} flows, {} of them unconfirmed", all.total, all.unconfirmed);
    assert!(all.unconfirmed > 0, "the flood's packets are recorded unconfirmed: {all:?}");
    assert_eq!(all.total - all.unconfirmed, confirmed.total, "the two states add up");
    assert!(confirmed.sample.iter().all(|f| f.state == FlowState::Confirmed));
    for (i, c) in long.iter().enumerate() {
        let local = c.local_addr().unwrap();
        assert!(
            confirmed.sample.iter().any(|f| f.client == local),
            "long-lived connection {i} ({local}) is not among the confirmed flows"
        );
    }
}
