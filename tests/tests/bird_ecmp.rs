//! Scale-out behind ECMP with BIRD, before lbd takes part: real BIRD 2 processes in namespaces.
//!
//! ```text
//!   client (eth0 198.18.0.2, fd00::2) ── router (c0 198.18.0.1, fd00::1)
//!                                          ├─ b1 ── balancer 1 (eth0 198.18.1.2, fd00:0:0:1::2)
//!                                          ├─ b2 ── balancer 2 (eth0 198.18.2.2, fd00:0:0:2::2)
//!                                          └─ b3 ── balancer 3 (eth0 198.18.3.2, fd00:0:0:3::2)
//! ```
//! Each balancer's BIRD learns the VIP routes in kernel table 4242 and has two BGP sessions with
//! the router, one per address family (AS 64600 to AS 64500). The test adds and removes those
//! routes with `ip route ... table 4242`, as lbd will. The router's BIRD merges equal routes into
//! one multipath route in its kernel; its namespace hashes flows on the 5-tuple
//! (`fib_multipath_hash_policy = 1`). docs/ecmp-bird.md has the configs and the measurements.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    bird::{
        self, add_vip_route, next_hops, remove_vip_route, replace_vip_route, wait_next_hops, BalancerConfig,
        Bird, ControlError, Neighbor, RouterConfig, Timers, VipPrefix,
    },
    echo::{self, EchoServer, Proto},
    netns::{veth, Netns},
};

const BALANCERS: u8 = 3;
const ROUTER_AS: u32 = 64500;
const BALANCER_AS: u32 = 64600;
const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0x100, 0, 0, 0, 1));
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Bound on BGP coming up after a BIRD starts (it waits 1 s before connecting).
const SESSIONS_UP: Duration = Duration::from_secs(10);
/// Bound on a route change on a balancer reaching the router's kernel.
const PROPAGATION: Duration = Duration::from_secs(2);

fn vip_prefixes() -> Vec<VipPrefix> {
    vec![
        VipPrefix { addr: Ipv4Addr::new(198, 18, 100, 0).into(), len: 24 },
        VipPrefix { addr: Ipv6Addr::new(0xfd00, 0, 0, 0x100, 0, 0, 0, 0).into(), len: 64 },
    ]
}

/// Balancer `n` (1-based) end of its link to the router, in each family.
fn balancer_addr(n: u8, v6: bool) -> IpAddr {
    if v6 {
        Ipv6Addr::new(0xfd00, 0, 0, n.into(), 0, 0, 0, 2).into()
    } else {
        Ipv4Addr::new(198, 18, n, 2).into()
    }
}

/// The router's end of the link to balancer `n`.
fn router_addr(n: u8, v6: bool) -> IpAddr {
    if v6 {
        Ipv6Addr::new(0xfd00, 0, 0, n.into(), 0, 0, 0, 1).into()
    } else {
        Ipv4Addr::new(198, 18, n, 1).into()
    }
}

/// Name of a BGP protocol: `b2_ipv6` on the router, `router_ipv6` on a balancer.
fn session_name(peer: &str, v6: bool) -> String {
    format!("{peer}_{}", if v6 { "ipv6" } else { "ipv4" })
}

/// The topology with every BIRD running and every BGP session Established. Fields drop in order:
/// the BIRDs go before the namespaces.
struct Ecmp {
    router_bird: Bird,
    /// Index n-1 for balancer n; None while a test has it stopped.
    balancer_birds: Vec<Option<Bird>>,
    router: Netns,
    client: Netns,
    balancers: Vec<Netns>,
    timers: Timers,
}

impl Ecmp {
    fn new(timers: Timers) -> Ecmp {
        let router = Netns::new("router");
        let client = Netns::new("client");
        veth((&router, "c0"), (&client, "eth0"));
        router.addr("c0", "198.18.0.1/24");
        router.addr("c0", "fd00::1/64");
        client.addr("eth0", &format!("{CLIENT4}/24"));
        client.addr("eth0", "fd00::2/64");
        client.ip(&["-4", "route", "add", "default", "via", "198.18.0.1"]);
        client.ip(&["-6", "route", "add", "default", "via", "fd00::1"]);
        // The router's own configuration (no lbd runs there).
        router.sysctl("net.ipv4.ip_forward", "1");
        router.sysctl("net.ipv6.conf.all.forwarding", "1");
        // Hash on the 5-tuple (not only the addresses), so one client's flows spread too.
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1");
        router.sysctl("net.ipv6.fib_multipath_hash_policy", "1");
        let mut balancers = Vec::new();
        let mut neighbors = Vec::new();
        for n in 1..=BALANCERS {
            let ns = Netns::new(&format!("balancer{n}"));
            let port = format!("b{n}");
            veth((&router, &port), (&ns, "eth0"));
            for v6 in [false, true] {
                let len = if v6 { 64 } else { 24 };
                router.addr(&port, &format!("{}/{len}", router_addr(n, v6)));
                ns.addr("eth0", &format!("{}/{len}", balancer_addr(n, v6)));
                let family = if v6 { "-6" } else { "-4" };
                ns.ip(&[family, "route", "add", "default", "via", &router_addr(n, v6).to_string()]);
                neighbors.push(Neighbor {
                    name: session_name(&port, v6),
                    address: balancer_addr(n, v6),
                    asn: BALANCER_AS,
                });
            }
            balancers.push(ns);
        }
        let router_config = RouterConfig {
            router_id: Ipv4Addr::new(198, 18, 0, 1),
            asn: ROUTER_AS,
            vip_prefixes: vip_prefixes(),
            balancers: neighbors,
            timers,
        };
        let router_bird = Bird::start(&router, "bird-router", &router_config.render());
        let mut ecmp = Ecmp { router_bird, balancer_birds: Vec::new(), router, client, balancers, timers };
        for n in 1..=BALANCERS {
            let bird = ecmp.start_balancer_bird(n);
            ecmp.balancer_birds.push(Some(bird));
        }
        let names: Vec<String> = (1..=BALANCERS)
            .flat_map(|n| [false, true].map(|v6| session_name(&format!("b{n}"), v6)))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let took = ecmp.router_bird.wait_established(&names, SESSIONS_UP);
        println!("all {} BGP sessions Established {took:?} after the last BIRD started", names.len());
        ecmp
    }

    fn balancer_config(&self, n: u8) -> BalancerConfig {
        BalancerConfig {
            router_id: Ipv4Addr::new(198, 18, n, 2),
            asn: BALANCER_AS,
            vip_prefixes: vip_prefixes(),
            routers: [false, true]
                .map(|v6| Neighbor {
                    name: session_name("router", v6),
                    address: router_addr(n, v6),
                    asn: ROUTER_AS,
                })
                .to_vec(),
            timers: self.timers,
        }
    }

    /// Starts balancer `n`'s BIRD (not waiting for its sessions).
    fn start_balancer_bird(&self, n: u8) -> Bird {
        let config = self.balancer_config(n).render();
        Bird::start(self.balancer(n), &format!("bird-balancer{n}"), &config)
    }

    fn balancer(&self, n: u8) -> &Netns {
        &self.balancers[usize::from(n - 1)]
    }

    fn balancer_bird(&self, n: u8) -> &Bird {
        self.balancer_birds[usize::from(n - 1)].as_ref().expect("balancer's BIRD is running")
    }

    fn take_balancer_bird(&mut self, n: u8) -> Bird {
        self.balancer_birds[usize::from(n - 1)].take().expect("balancer's BIRD is running")
    }

    /// The router's next hops when exactly the balancers `ns` announce `vip`.
    fn hops(&self, vip: IpAddr, ns: &[u8]) -> Vec<IpAddr> {
        ns.iter().map(|&n| balancer_addr(n, vip.is_ipv6())).collect()
    }

    /// Puts `vip` in every balancer's VIP table and waits until the router has all of them.
    fn announce_everywhere(&self, vip: IpAddr) {
        for n in 1..=BALANCERS {
            add_vip_route(self.balancer(n), vip);
        }
        let took = wait_next_hops(&self.router, vip, &self.hops(vip, &[1, 2, 3]), PROPAGATION);
        println!("{vip}: three next hops {took:?} after the last route was added");
    }
}

/// Polls the router's next hops for `vip` every 100 ms for `duration`, running `meanwhile` before
/// each sample; panics at the first sample that differs from `want`.
fn assert_next_hops_stay(
    ecmp: &Ecmp,
    vip: IpAddr,
    want: &[IpAddr],
    duration: Duration,
    meanwhile: impl Fn(),
) {
    let start = Instant::now();
    let mut samples = 0;
    while start.elapsed() < duration {
        meanwhile();
        let hops = next_hops(&ecmp.router, vip);
        assert_eq!(hops, want, "the router's route to {vip} changed {:?} into the sampling", start.elapsed());
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("{samples} samples over {duration:?}: always {} next hops", want.len());
}

#[test]
fn the_router_learns_the_vip_only_from_balancers_that_have_it_as_one_multipath_route() {
    let ecmp = Ecmp::new(Timers::RECOMMENDED);
    assert!(
        next_hops(&ecmp.router, VIP4).is_empty(),
        "no balancer has the VIP yet, but the router routes it"
    );

    add_vip_route(ecmp.balancer(1), VIP4);
    add_vip_route(ecmp.balancer(2), VIP4);
    let took = wait_next_hops(&ecmp.router, VIP4, &ecmp.hops(VIP4, &[1, 2]), PROPAGATION);
    println!("balancers 1 and 2 have the VIP: the router has their two next hops after {took:?}");
    // What lbd will read to report the announcement: the routes BIRD exports to the router.
    let exported = ecmp.balancer_bird(1).command("show route export router_ipv4").expect("control socket");
    assert!(
        exported.iter().any(|l| l.text.starts_with("198.18.100.1/32")),
        "balancer 1's BIRD does not report exporting the VIP: {exported:?}"
    );
    let exported = ecmp.balancer_bird(3).command("show route export router_ipv4").expect("control socket");
    assert!(
        !exported.iter().any(|l| l.text.contains("198.18.100.1")),
        "balancer 3 has no VIP route, yet its BIRD exports one: {exported:?}"
    );

    add_vip_route(ecmp.balancer(3), VIP4);
    wait_next_hops(&ecmp.router, VIP4, &ecmp.hops(VIP4, &[1, 2, 3]), PROPAGATION);
    let route = ecmp.router.ip(&["-4", "route", "show", "198.18.100.1/32"]);
    println!("router: ip route show 198.18.100.1/32\n{route}");
    let routes = route.lines().filter(|l| !l.starts_with(char::is_whitespace)).count();
    let nexthops = route.lines().filter(|l| l.trim_start().starts_with("nexthop via")).count();
    assert_eq!((routes, nexthops), (1, 3), "want one route with three nexthop lines:\n{route}");
}

#[test]
fn only_lbds_host_routes_inside_the_vip_prefixes_are_announced() {
    let ecmp = Ecmp::new(Timers::RECOMMENDED);
    let b1 = ecmp.balancer(1);
    // Not lbd's protocol, not a host route, outside the VIP prefixes: each must stay unannounced.
    b1.ip(&["-4", "route", "add", "198.18.100.2/32", "dev", "lo", "proto", "static", "table", "4242"]);
    b1.ip(&["-4", "route", "add", "198.18.100.0/24", "dev", "lo", "proto", "242", "table", "4242"]);
    b1.ip(&["-4", "route", "add", "198.18.101.1/32", "dev", "lo", "proto", "242", "table", "4242"]);
    // lbd's protocol in the main table, not the VIP table.
    b1.ip(&["-4", "route", "add", "198.18.100.3/32", "dev", "lo", "proto", "242"]);
    // Added last: once the router has it, BIRD has handled the others.
    add_vip_route(b1, VIP4);
    wait_next_hops(&ecmp.router, VIP4, &ecmp.hops(VIP4, &[1]), PROPAGATION);
    std::thread::sleep(Duration::from_millis(300));
    for prefix in ["198.18.100.2/32", "198.18.100.0/24", "198.18.101.1/32", "198.18.100.3/32"] {
        let route = ecmp.router.ip(&["-4", "route", "show", prefix]);
        assert!(
            route.trim().is_empty(),
            "the router got a route to {prefix} that must not be announced: {route}"
        );
    }
}

#[test]
fn removing_the_vip_route_on_one_balancer_withdraws_its_next_hop_within_2s() {
    let ecmp = Ecmp::new(Timers::RECOMMENDED);
    ecmp.announce_everywhere(VIP4);
    remove_vip_route(ecmp.balancer(3), VIP4);
    let took = wait_next_hops(&ecmp.router, VIP4, &ecmp.hops(VIP4, &[1, 2]), Duration::from_secs(2));
    println!("withdrawn from the router's kernel {took:?} after the route left balancer 3's table");
}

#[test]
fn a_balancers_bird_killed_with_sigkill_loses_its_next_hop_within_hold_time() {
    // Without BFD: what notices is the kernel closing the dead BIRD's TCP sessions.
    let timers = Timers::HOLD_TIMER_ONLY;
    let mut ecmp = Ecmp::new(timers);
    ecmp.announce_everywhere(VIP4);
    ecmp.take_balancer_bird(2).kill();
    let bound = timers.detection() + Duration::from_secs(1);
    let took = wait_next_hops(&ecmp.router, VIP4, &ecmp.hops(VIP4, &[1, 3]), bound);
    println!("balancer 2's BIRD killed: next hop gone {took:?} later (bound {bound:?})");
    assert_eq!(
        routes_in_vip_table(ecmp.balancer(2)),
        1,
        "balancer 2's VIP table lost its route with its BIRD"
    );
}

#[test]
fn a_frozen_balancer_loses_its_next_hop_by_the_hold_timer_within_4s() {
    let timers = Timers::HOLD_TIMER_ONLY;
    let ecmp = Ecmp::new(timers);
    ecmp.announce_everywhere(VIP4);
    // Frozen, its BIRD keeps its sockets open and says nothing: a dead host, as the router sees it.
    ecmp.balancer_bird(2).freeze();
    let bound = timers.detection() + Duration::from_secs(1);
    let took = wait_next_hops(&ecmp.router, VIP4, &ecmp.hops(VIP4, &[1, 3]), bound);
    println!("balancer 2 frozen: next hop gone {took:?} later, by the {}s hold timer", timers.hold_s);
}

#[test]
fn a_frozen_balancer_loses_its_next_hop_by_bfd_within_1s() {
    let timers = Timers::RECOMMENDED;
    let ecmp = Ecmp::new(timers);
    ecmp.announce_everywhere(VIP4);
    ecmp.balancer_bird(2).freeze();
    let took = wait_next_hops(&ecmp.router, VIP4, &ecmp.hops(VIP4, &[1, 3]), Duration::from_secs(1));
    println!("balancer 2 frozen: next hop gone {took:?} later, by BFD ({:?})", timers.detection());
    let protocols = ecmp.router_bird.protocols().expect("router's control socket");
    let b2 = protocols.iter().find(|p| p.name == "b2_ipv4").expect("session b2_ipv4");
    assert!(b2.info.contains("BFD session down"), "the router dropped balancer 2, but not by BFD: {b2:?}");
}

#[test]
fn a_restarted_balancer_bird_announces_the_vip_again_from_the_kernel_table() {
    let mut ecmp = Ecmp::new(Timers::RECOMMENDED);
    ecmp.announce_everywhere(VIP4);
    let status = ecmp.take_balancer_bird(2).stop();
    let took = wait_next_hops(&ecmp.router, VIP4, &ecmp.hops(VIP4, &[1, 3]), PROPAGATION);
    println!("balancer 2's BIRD stopped ({status}): next hop gone {took:?} later");
    // Nothing touches the VIP table: the new BIRD learns the route that stayed there.
    let bird = ecmp.start_balancer_bird(2);
    ecmp.balancer_birds[1] = Some(bird);
    let took = wait_next_hops(&ecmp.router, VIP4, &ecmp.hops(VIP4, &[1, 2, 3]), SESSIONS_UP);
    println!("balancer 2's BIRD started again: next hop back {took:?} later");
}

#[test]
fn leaving_the_vip_table_alone_keeps_all_three_next_hops() {
    // What a restarted lbd does to the announcement: nothing. The routes stay in the kernel.
    let ecmp = Ecmp::new(Timers::RECOMMENDED);
    ecmp.announce_everywhere(VIP4);
    assert_next_hops_stay(&ecmp, VIP4, &ecmp.hops(VIP4, &[1, 2, 3]), Duration::from_secs(3), || {});
}

#[test]
fn replacing_vip_routes_with_identical_ones_keeps_all_three_next_hops() {
    // A restarted lbd that re-asserts its routes (RTM_NEWROUTE with NLM_F_REPLACE) withdraws nothing.
    let ecmp = Ecmp::new(Timers::RECOMMENDED);
    ecmp.announce_everywhere(VIP4);
    assert_next_hops_stay(&ecmp, VIP4, &ecmp.hops(VIP4, &[1, 2, 3]), Duration::from_secs(3), || {
        for n in 1..=BALANCERS {
            replace_vip_route(ecmp.balancer(n), VIP4);
        }
    });
}

#[test]
fn an_ipv6_vip_is_one_multipath_route_over_the_ipv6_sessions_and_withdrawn_per_balancer() {
    let ecmp = Ecmp::new(Timers::RECOMMENDED);
    ecmp.announce_everywhere(VIP6);
    let route = ecmp.router.ip(&["-6", "route", "show", &bird::host_prefix(VIP6)]);
    println!("router: ip -6 route show {}\n{route}", bird::host_prefix(VIP6));
    assert!(next_hops(&ecmp.router, VIP4).is_empty(), "only the IPv6 VIP was announced");
    remove_vip_route(ecmp.balancer(1), VIP6);
    let took = wait_next_hops(&ecmp.router, VIP6, &ecmp.hops(VIP6, &[2, 3]), Duration::from_secs(2));
    println!("withdrawn {took:?} after the route left balancer 1's table");
}

#[test]
fn client_flows_spread_over_the_three_balancers() {
    const FLOWS: u16 = 200;
    const FIRST_PORT: u16 = 20_000;
    let ecmp = Ecmp::new(Timers::RECOMMENDED);
    ecmp.announce_everywhere(VIP4);
    let service = SocketAddr::new(VIP4, 80);
    // Each balancer terminates the connections itself: the VIP on lo, an echo server on it.
    let servers: Vec<EchoServer> = (1..=BALANCERS)
        .map(|n| {
            ecmp.balancer(n).addr("lo", &bird::host_prefix(VIP4));
            EchoServer::start(ecmp.balancer(n), Proto::Tcp, service)
        })
        .collect();
    let failures: Vec<String> = ecmp.client.run(|| {
        (0..FLOWS)
            .filter_map(|i| {
                let local = SocketAddr::new(CLIENT4.into(), FIRST_PORT + i);
                echo::tcp_exchange_from(local, service, b"which balancer?", Duration::from_secs(2))
                    .err()
                    .map(|e| format!("from {local}: {e}"))
            })
            .collect()
    });
    assert!(failures.is_empty(), "{} of {FLOWS} connections failed: {failures:?}", failures.len());
    let counts: Vec<usize> = servers.iter().map(|s| s.peers().len()).collect();
    println!("connections per balancer: {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), usize::from(FLOWS), "every connection lands on one balancer");
    let least = usize::from(FLOWS) * 15 / 100;
    for (n, count) in (1..).zip(&counts) {
        assert!(
            *count >= least,
            "balancer {n} got {count} of {FLOWS} flows, under 15 % ({least}): {counts:?}"
        );
    }
}

/// How many IPv4 routes a balancer's VIP table holds.
fn routes_in_vip_table(ns: &Netns) -> usize {
    ns.ip(&["-4", "route", "show", "table", &bird::VIP_TABLE.to_string()]).lines().count()
}

#[test]
fn the_control_session_refuses_commands_that_change_bird() {
    let ns = Netns::new("router");
    let config = RouterConfig {
        router_id: Ipv4Addr::new(198, 18, 0, 1),
        asn: ROUTER_AS,
        vip_prefixes: vip_prefixes(),
        balancers: Vec::new(),
        timers: Timers::RECOMMENDED,
    };
    let bird = Bird::start(&ns, "bird-router", &config.render());
    let refused = bird.command("disable kernel_ipv4");
    assert!(
        matches!(refused, Err(ControlError::Refused { code: 8007, .. })),
        "a restricted control session must refuse `disable`, got {refused:?}"
    );
    let protocols = bird.protocols().expect("show protocols in a restricted session");
    assert!(
        protocols.iter().any(|p| p.name == "kernel_ipv4" && p.state == "up"),
        "the refused command changed BIRD anyway: {protocols:?}"
    );
}

#[test]
fn a_config_bird_refuses_fails_the_start_naming_it_and_leaves_no_files() {
    let ns = Netns::new("router");
    let started = std::panic::catch_unwind(|| Bird::start(&ns, "bird-refused", "protocol nonsense {}\n"));
    let message = match started {
        Ok(_) => panic!("BIRD started on a config it must refuse"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(message.contains("BIRD refuses the config"), "the panic should say why: {message}");
    let ours = format!("{}{}-", lb_tests::TEST_PREFIX, std::process::id());
    let left: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(&ours) && n.ends_with("bird-refused"))
        .collect();
    assert!(left.is_empty(), "a refused start left {left:?} in the temp dir");
}
