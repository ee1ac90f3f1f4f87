//! Scale-out at the edge with lbd announcing its VIPs: a router with BIRD spreads a client's
//! connections by ECMP over balancer hosts (lbd + BIRD each), which forward to backend hosts
//! (`lbd backend-host`). The topology is `lb_tests::ecmp` (docs/ecmp-bird.md has the configs).
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    echo,
    ecmp::{
        vip_table, web_vip, Conversations, Edge, Spec, CHECK_FALL, CHECK_INTERVAL, PORT, PROPAGATION, VIP,
    },
};

const SERVICE: SocketAddr = SocketAddr::new(VIP, PORT);
/// Messages on each long-lived connection.
const PERIOD: Duration = Duration::from_millis(100);
/// Long enough after a route change for every connection to make an exchange: TCP's first
/// retransmission (200 ms) of a segment lost on the way, and some.
const SETTLE: Duration = Duration::from_millis(1500);

/// How many of `clients` each balancer carries.
fn per_balancer(carriers: &BTreeMap<SocketAddr, u8>, balancers: u8) -> Vec<usize> {
    (1..=balancers).map(|n| carriers.values().filter(|&&c| c == n).count()).collect()
}

/// Every flow in balancer `n`'s flow table names the backend that serves its connection.
#[track_caller]
fn flows_name_their_servers(edge: &Edge, n: u8) -> usize {
    let servers = edge.servers();
    let flows = edge.balancer(n).flows();
    for (client, backend) in &flows {
        let served = servers.get(client);
        assert_eq!(
            served,
            Some(backend),
            "balancer {n} sends {client} to {backend}, but its connection is served by {served:?}"
        );
    }
    flows.len()
}

#[test]
fn the_router_learns_each_vip_only_from_the_balancers_whose_lbd_announces_it() {
    // VIP "edge" is announced by balancers 1 and 2; balancer 3 says announce = "never".
    const EDGE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 100, 2));
    let mut spec = Spec::new(3, 3);
    spec.vips = Box::new(|n| {
        let never = if n == 3 { "announce = \"never\"" } else { "" };
        web_vip(n, 3, "") + &vip_table("edge", EDGE, n, 3, never)
    });
    let edge = Edge::start(&spec);
    let took = edge.wait_router(VIP, &[1, 2, 3], PROPAGATION);
    edge.wait_router(EDGE, &[1, 2], PROPAGATION);
    println!("the router has three next hops for {VIP} {took:?} after the sessions came up");
    let route = edge.router.ip(&["-4", "route", "show", &format!("{VIP}/32")]);
    println!("router: ip route show {VIP}/32\n{route}");
    let nexthops = route.lines().filter(|l| l.trim_start().starts_with("nexthop via")).count();
    assert_eq!(nexthops, 3, "want one multipath route with three next hops:\n{route}");

    let b3 = edge.balancer(3);
    assert!(
        !b3.vip_table().contains(&EDGE.to_string()),
        "balancer 3 must not hold {EDGE}:\n{}",
        b3.vip_table()
    );
    // lbd reads BIRD every couple of seconds: the router may learn a route before lbd's next read.
    b3.wait_bird_read(PROPAGATION);
    let a = b3.announcements();
    let by_vip: BTreeMap<&str, _> = a.vips.iter().map(|v| (v.vip.as_str(), v)).collect();
    assert!(by_vip["web"].announced && by_vip["web"].exported == Some(true), "{a:#?}");
    assert!(!by_vip["edge"].announced && by_vip["edge"].why.contains("never"), "{a:#?}");
    let bird = a.bird.as_ref().expect("lbd reads BIRD");
    assert!(bird.reachable && bird.sessions.iter().all(|s| s.established), "{bird:#?}");
    assert_eq!(
        b3.metric("lb_vip_announced{vip=\"web\",service=\"198.18.100.1:80/tcp\"}"),
        Some(1.0),
        "{}",
        b3.metrics()
    );
    assert_eq!(b3.metric("lb_vip_announced{vip=\"edge\",service=\"198.18.100.2:80/tcp\"}"), Some(0.0));
    assert_eq!(b3.metric("lb_bird_session_established{session=\"uplink\"}"), Some(1.0));
}

#[test]
fn connections_survive_a_dead_balancer_because_every_balancer_picks_the_same_backend() {
    const CONNECTIONS: u16 = 200;
    let mut edge = Edge::start(&Spec::new(3, 3));
    edge.wait_router(VIP, &[1, 2, 3], PROPAGATION);
    let prints: Vec<String> = (1..=3).map(|n| edge.balancer(n).fingerprints()["web"].clone()).collect();
    assert!(prints.iter().all(|p| *p == prints[0]), "the balancers' rings differ: {prints:?}");

    let conversations = Conversations::start(&edge.client, SERVICE, CONNECTIONS, 30_000, PERIOD);
    // A few exchanges: every flow is in its balancer's flow table.
    std::thread::sleep(Duration::from_millis(400));
    let carriers = edge.carriers();
    let counts = per_balancer(&carriers, 3);
    println!("connections per balancer: {counts:?}");
    assert_eq!(
        carriers.len(),
        usize::from(CONNECTIONS),
        "every connection is in one balancer's flow table: {counts:?}"
    );
    for (n, count) in (1..).zip(&counts) {
        assert!(
            *count * 100 >= usize::from(CONNECTIONS) * 15,
            "balancer {n} carries {count}, under 15 %: {counts:?}"
        );
    }
    for n in 1..=3 {
        flows_name_their_servers(&edge, n);
    }

    // Balancer 2 dies: its connections reach the others, which have no state for them.
    let theirs: Vec<SocketAddr> = carriers.iter().filter(|(_, &n)| n == 2).map(|(c, _)| *c).collect();
    let killed = Instant::now();
    edge.kill_balancer(2);
    let took = edge.wait_router(VIP, &[1, 3], Duration::from_secs(2));
    println!("balancer 2 killed: the router routes over the two others {took:?} later");
    let converged = conversations.exchanges();
    std::thread::sleep(SETTLE);
    let going = conversations.progressed_since(&converged);
    let failures = conversations.failures();
    println!(
        "{} of {CONNECTIONS} connections exchanged since, {:?} after the kill; failed: {failures:?}",
        going.len(),
        killed.elapsed()
    );
    assert!(
        going.len() * 100 >= usize::from(CONNECTIONS) * 99,
        "{} of {CONNECTIONS} kept going; failed: {failures:?}",
        going.len()
    );
    let moved = theirs.iter().filter(|c| going.contains(c)).count();
    assert!(
        moved * 100 >= theirs.len() * 99,
        "of balancer 2's {} connections only {moved} kept going",
        theirs.len()
    );
    // They are in the survivors' flow tables now, with the backend that served them all along.
    let recorded: usize = [1, 3].iter().map(|&n| flows_name_their_servers(&edge, n)).sum();
    let now_carried = edge.carriers();
    let picked_up = theirs.iter().filter(|c| now_carried.contains_key(c)).count();
    println!("the survivors' tables hold {recorded} flows, {picked_up} of them balancer 2's");
    assert_eq!(picked_up, moved, "balancer 2's connections that kept going are in the survivors' tables");
}

#[test]
fn a_host_drain_withdraws_within_2s_resets_nothing_outlives_a_restart_and_undrains() {
    let mut edge = Edge::start(&Spec::new(3, 3));
    edge.wait_router(VIP, &[1, 2, 3], PROPAGATION);
    let conversations = Conversations::start(&edge.client, SERVICE, 60, 30_000, PERIOD);
    std::thread::sleep(Duration::from_millis(300));
    let on_1 = per_balancer(&edge.carriers(), 3)[0];

    edge.balancer(1).lbctl_ok(&["host", "drain"]);
    let took = edge.wait_router(VIP, &[2, 3], Duration::from_secs(2));
    println!("balancer 1 drained: its next hop left the router {took:?} later ({on_1} of 60 connections were on it)");
    let converged = conversations.exchanges();
    std::thread::sleep(SETTLE);
    let going = conversations.progressed_since(&converged);
    assert_eq!(going.len(), 60, "connections stopped: failed {:?}", conversations.failures());
    let a = edge.balancer(1).announcements();
    assert!(a.host_drained && a.vips.iter().all(|v| !v.announced), "{a:#?}");
    assert_eq!(edge.balancer(1).metric("lb_host_drained"), Some(1.0));

    // New connections reach only the other two.
    let before: Vec<u64> = (1..=3).map(|n| edge.balancer(n).new_flows("web")).collect();
    let failed: Vec<String> = edge.client.run(|| {
        (0..30u16)
            .filter_map(|i| {
                let local = SocketAddr::new(lb_tests::ecmp::CLIENT.into(), 40_000 + i);
                echo::tcp_exchange_from(local, SERVICE, b"new", Duration::from_secs(2))
                    .err()
                    .map(|e| e.to_string())
            })
            .collect()
    });
    assert!(failed.is_empty(), "new connections failed: {failed:?}");
    let after: Vec<u64> = (1..=3).map(|n| edge.balancer(n).new_flows("web")).collect();
    println!("new flows per balancer before {before:?}, after 30 new connections {after:?}");
    assert_eq!(after[0], before[0], "the drained balancer got new connections");
    assert_eq!(after[1] + after[2], before[1] + before[2] + 30, "the others got them all");

    // Saved: a restarted lbd stays drained.
    let b1 = edge.balancer_mut(1);
    b1.kill_lbd();
    b1.start_lbd();
    std::thread::sleep(Duration::from_secs(1));
    assert!(edge.balancer(1).announcements().host_drained, "the restarted lbd forgot the drain");
    assert_eq!(edge.router_hops(VIP), Edge::hops(&[2, 3]), "the restarted lbd announced again");

    edge.balancer(1).lbctl_ok(&["host", "undrain"]);
    let took = edge.wait_router(VIP, &[1, 2, 3], PROPAGATION);
    println!("undrained: back on the router {took:?} later");
    assert!(conversations.failures().is_empty(), "{:?}", conversations.failures());
}

#[test]
fn a_vip_whose_backends_are_all_down_is_withdrawn_everywhere_and_announced_again_when_one_recovers() {
    let mut spec = Spec::new(3, 2);
    spec.vips = Box::new(|n| web_vip(n, 2, ""));
    let mut edge = Edge::start(&spec);
    edge.wait_router(VIP, &[1, 2, 3], PROPAGATION);
    let bound = CHECK_INTERVAL * CHECK_FALL + Duration::from_secs(2);
    for m in 1..=2 {
        edge.backend_mut(m).fail_health();
    }
    let took = edge.wait_router(VIP, &[], bound);
    println!("every backend down: the router lost {VIP} {took:?} later (bound {bound:?})");
    for n in 1..=3 {
        let b = edge.balancer(n);
        let web = b.announcements().vips.into_iter().find(|v| v.vip == "web").expect("web");
        assert!(!web.announced && web.why.contains("no backend takes new flows"), "balancer {n}: {web:#?}");
        assert!(!b.vip_table().contains(&VIP.to_string()), "balancer {n}:\n{}", b.vip_table());
    }

    edge.backend_mut(2).pass_health();
    let took = edge.wait_router(VIP, &[1, 2, 3], bound);
    println!("backend 2 back: the router has all three next hops again {took:?} later");
    edge.balancer(1).wait_log(&["announcing", "198.18.100.1/32", "1 of 2 backends"], Duration::from_secs(1));
}

#[test]
fn restarting_lbd_with_sigkill_withdraws_nothing() {
    let mut spec = Spec::new(2, 1);
    spec.vips = Box::new(|n| web_vip(n, 1, ""));
    let mut edge = Edge::start(&spec);
    edge.wait_router(VIP, &[1, 2], PROPAGATION);
    let want = Edge::hops(&[1, 2]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (router, balancers) = (&edge.router, &mut edge.balancers);
    let samples = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push(lb_tests::bird::next_hops(router, VIP));
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        let b1 = &mut balancers[0];
        b1.kill_lbd();
        b1.start_lbd();
        // One periodic sync of the VIP table after the start's own.
        std::thread::sleep(lb_userspace::announce::RETRY + Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().expect("sampler")
    });
    let changed: Vec<&Vec<IpAddr>> = samples.iter().filter(|s| **s != want).collect();
    println!("{} samples of the router's route over the restart", samples.len());
    assert!(changed.is_empty(), "the router's route changed during the restart: {changed:?} (want {want:?})");
    let log = edge.balancer(1).log();
    assert!(
        !log.contains("route added to the VIP table") && !log.contains("route removed from the VIP table"),
        "the restarted lbd changed the VIP table:\n{log}"
    );
    assert!(edge.balancer(1).vip_table().contains(&VIP.to_string()));
}

#[test]
fn sigterm_withdraws_every_vip_forwards_for_drain_seconds_then_stops() {
    const DRAIN: Duration = Duration::from_secs(2);
    let mut spec = Spec::new(2, 2);
    spec.vips = Box::new(|n| web_vip(n, 2, ""));
    spec.announce = format!("drain_seconds = {}", DRAIN.as_secs());
    let mut edge = Edge::start(&spec);
    edge.wait_router(VIP, &[1, 2], PROPAGATION);
    let conversations = Conversations::start(&edge.client, SERVICE, 40, 30_000, PERIOD);
    std::thread::sleep(Duration::from_millis(300));

    let mut lbd = edge.balancer_mut(1).lbd.take().expect("lbd");
    let signalled = Instant::now();
    // SAFETY: kill with the pid of our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(lbd.process.child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let took = edge.wait_router(VIP, &[2], Duration::from_secs(2));
    println!("SIGTERM: balancer 1 withdrawn from the router {took:?} later");
    assert!(lbd.process.child.try_wait().expect("wait").is_none(), "lbd stopped before its drain was over");
    let status: lb_userspace::api::Status =
        serde_json::from_str(&lbd.lbctl_ok(&["--json", "status"])).expect("status");
    assert!(status.announce.as_ref().is_some_and(|a| a.stopping), "{:?}", status.announce);
    let exit = loop {
        if let Some(exit) = lbd.process.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(signalled.elapsed() < DRAIN + Duration::from_secs(3), "lbd did not stop after its drain");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stopped = signalled.elapsed();
    println!("lbd exited ({exit}) {stopped:?} after SIGTERM");
    assert!(exit.success(), "{exit}\n{}", edge.balancer(1).log());
    assert!(stopped >= DRAIN, "lbd stopped {stopped:?} after SIGTERM, before drain_seconds");
    assert!(
        edge.balancer(1).vip_table().trim().is_empty(),
        "the routes must stay withdrawn once lbd is gone"
    );
    assert_eq!(edge.router_hops(VIP), Edge::hops(&[2]));
    let converged = conversations.exchanges();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        conversations.progressed_since(&converged).len(),
        40,
        "connections stopped: {:?}",
        conversations.failures()
    );
}
