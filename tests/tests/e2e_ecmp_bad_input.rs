//! What goes wrong around lbd's announcements: a BIRD socket nobody answers on, a VIP BIRD's
//! filters refuse (until its operator widens them), BIRD restarting. Each: a clear log line and
//! a metric, forwarding unaffected, lbd tries again, and lbd never stops. One balancer host, one backend (`lb_tests::ecmp`).
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use lb_tests::{
    bird::VipPrefix,
    echo,
    ecmp::{vip_table, web_vip, Balancer, Edge, Spec, CLIENT, PORT, PROPAGATION, VIP},
};

const SERVICE: SocketAddr = SocketAddr::new(VIP, PORT);
/// Long enough for lbd to read BIRD a few times (it does every `announce::RETRY`).
const READS: Duration = Duration::from_secs(5);

fn one_balancer() -> Spec {
    let mut spec = Spec::new(1, 1);
    spec.vips = Box::new(|n| web_vip(n, 1, ""));
    spec
}

/// A connection through the VIP works.
#[track_caller]
fn forwarding_works(edge: &Edge, port: u16) {
    let local = SocketAddr::new(CLIENT.into(), port);
    edge.client
        .run(|| echo::tcp_exchange_from(local, SERVICE, b"still forwarding?", Duration::from_secs(2)))
        .unwrap_or_else(|e| panic!("a connection through the VIP failed: {e}"));
}

#[track_caller]
fn still_running(b: &mut Balancer) {
    let lbd = b.lbd.as_mut().expect("lbd");
    let exit = lbd.process.child.try_wait().expect("wait");
    assert!(exit.is_none(), "lbd stopped ({exit:?}):\n{}", b.log());
}

/// Waits until balancer `b`'s metric `series` has a value `ok` accepts; returns it.
#[track_caller]
fn wait_metric(b: &Balancer, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = b.metric(series).filter(|v| ok(*v)) {
            return v;
        }
        assert!(start.elapsed() < READS, "{series} never as expected within {READS:?}:\n{}", b.metrics());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_unreachable_bird_socket_is_logged_and_counted_while_announcing_and_forwarding_go_on() {
    let mut spec = one_balancer();
    spec.bird_socket = Box::new(|_| Some("/run/lbt-no-bird-here/bird.ctl".into()));
    let mut edge = Edge::start(&spec);
    // BIRD itself runs: it learns the table, whatever lbd can read of it.
    edge.wait_router(VIP, &[1], PROPAGATION);
    let b = edge.balancer(1);
    let line =
        b.wait_log(&["cannot read BIRD's state", "/run/lbt-no-bird-here/bird.ctl", "tries again"], READS);
    println!("lbd logged: {line}");
    assert_eq!(wait_metric(b, "lb_bird_up", |v| v == 0.0), 0.0);
    let errors = wait_metric(b, "lb_announce_errors_total{what=\"bird\"}", |v| v >= 2.0);
    println!("failed reads so far: {errors}");
    assert_eq!(
        b.log().matches("cannot read BIRD's state").count(),
        1,
        "logged once, not at every retry:\n{}",
        b.log()
    );
    let bird = b.announcements().bird.expect("bird status");
    assert!(
        !bird.reachable && bird.error.as_deref().is_some_and(|e| e.contains("No such file")),
        "{bird:#?}"
    );
    forwarding_works(&edge, 41_000);
    still_running(edge.balancer_mut(1));
}

#[test]
fn a_vip_bird_refuses_is_logged_and_shown_as_not_exported_until_bird_takes_it() {
    // 198.18.101.1 is outside BIRD's VIP prefix set (198.18.100.0/24): BIRD filters it out.
    const OUTSIDE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 101, 1));
    let mut spec = one_balancer();
    spec.vips = Box::new(|n| web_vip(n, 1, "") + &vip_table("outside", OUTSIDE, n, 1, ""));
    let mut edge = Edge::start(&spec);
    edge.wait_router(VIP, &[1], PROPAGATION);
    let b = edge.balancer(1);
    assert!(b.vip_table().contains("198.18.101.1"), "lbd holds the route:\n{}", b.vip_table());
    let line = b.wait_log(&["BIRD exports this VIP to none", "198.18.101.1"], READS);
    println!("lbd logged: {line}");
    assert_eq!(
        b.metric("lb_vip_exported{vip=\"outside\",service=\"198.18.101.1:80/tcp\"}"),
        Some(0.0),
        "{}",
        b.metrics()
    );
    assert_eq!(b.metric("lb_vip_exported{vip=\"web\",service=\"198.18.100.1:80/tcp\"}"), Some(1.0));
    assert_eq!(b.metric("lb_vip_announced{vip=\"outside\",service=\"198.18.101.1:80/tcp\"}"), Some(1.0));
    assert!(edge.router_hops(OUTSIDE).is_empty(), "the router got {OUTSIDE}, which BIRD must filter");
    let out = b.lbctl_ok(&["status"]);
    assert!(out.contains("NOT EXPORTED"), "lbctl status should show it:\n{out}");
    forwarding_works(&edge, 41_001);

    // BIRD's operator widens its VIP prefixes: lbd kept the route and reads BIRD again, and
    // sees the VIP exported without being told.
    edge.balancer_mut(1).reconfigure_bird(|c| c.vip_prefixes.push(VipPrefix { addr: OUTSIDE, len: 32 }));
    let b = edge.balancer(1);
    let line = b.wait_log(&["BIRD exports this VIP now", "198.18.101.1"], READS);
    println!("BIRD reconfigured; lbd logged: {line}");
    wait_metric(b, "lb_vip_exported{vip=\"outside\",service=\"198.18.101.1:80/tcp\"}", |v| v == 1.0);
    still_running(edge.balancer_mut(1));
}

#[test]
fn bird_restarting_is_logged_and_counted_and_lbd_reads_it_again_when_it_is_back() {
    let mut edge = Edge::start(&one_balancer());
    edge.wait_router(VIP, &[1], PROPAGATION);
    let b = edge.balancer_mut(1);
    b.wait_log(&["reading BIRD's state"], READS);
    b.stop_bird();
    let line = b.wait_log(&["cannot read BIRD's state", "tries again"], READS);
    println!("BIRD stopped; lbd logged: {line}");
    wait_metric(b, "lb_bird_up", |v| v == 0.0);
    wait_metric(b, "lb_announce_errors_total{what=\"bird\"}", |v| v >= 1.0);
    // lbd leaves the table alone: it is what the next BIRD learns.
    assert!(b.vip_table().contains(&VIP.to_string()), "lbd withdrew with BIRD gone:\n{}", b.vip_table());
    edge.wait_router(VIP, &[], PROPAGATION);

    edge.balancer_mut(1).start_bird();
    let took = edge.wait_router(VIP, &[1], lb_tests::ecmp::SESSIONS_UP);
    println!("BIRD started again: the router has the VIP {took:?} later, from the table lbd kept");
    let b = edge.balancer(1);
    wait_metric(b, "lb_bird_up", |v| v == 1.0);
    wait_metric(b, "lb_bird_session_established{session=\"uplink\"}", |v| v == 1.0);
    assert_eq!(
        b.log().matches("reading BIRD's state").count(),
        2,
        "lbd says when it reads BIRD again:\n{}",
        b.log()
    );
    forwarding_works(&edge, 41_002);
    still_running(edge.balancer_mut(1));
}
