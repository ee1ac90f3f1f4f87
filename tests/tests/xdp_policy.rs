//! Edge policy, packet by packet: access lists (global deny, per-VIP allow and deny, longest
//! prefix, IPv6, an operator's deny and its expiry) and rate limits (per source, per VIP, over
//! the limit passed), on the real program with maps written by the agent's own plan and executor
//! (`reconcile::apply`) from a config parsed as lbd parses it.
use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lb_common::{Counter, PolicyReason};
use lb_tests::{
    frames::{addr::*, echo_request, frame, too_big, L4},
    xdp::{allowed_cpus, pin_to_cpu, Fixture, Verdict, XdpRunner},
};
use lb_userspace::{
    agent::{
        policy::Desired,
        reconcile::{self, Applied, Down},
    },
    config::{self, Config},
    datapath::Sizes,
    security::{Deny, Prefix},
};

const SIZES: Sizes = Sizes { flows: 65_536, max_vips: 8, max_rings: 8, ring_stride: 1031, max_backends: 16 };

/// `web`: VIP4:80/tcp (its id 0); `v6`: VIP6, every port, udp (id 1); backends on the fixture's
/// eth0. `extra_web`, `extra_v6`: lines added to each VIP; `top`: lines at the top.
fn config(top: &str, extra_web: &str, extra_v6: &str) -> Config {
    let text = format!(
        r#"interfaces = ["eth0"]
[source]
ipv4 = "198.18.9.0"
ipv6 = "fd00:0:0:9::"
[limits]
max_vips = 8
max_ring_size = 1031
max_backends = 16
{top}

[[vip]]
name = "web"
address = "{VIP4}"
port = 80
protocol = "tcp"
ring_size = 1031
{extra_web}
  [[vip.backend]]
  address = "198.18.1.1"

[[vip]]
name = "v6"
address = "{VIP6}"
port = 0
protocol = "udp"
ring_size = 1031
{extra_v6}
  [[vip.backend]]
  address = "fd00:1::1"
"#
    );
    config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("the test config is refused: {e}"))
}

/// Makes the runner's maps hold `c` and `denies`, as lbd would, with rates shared out among
/// `cpus` CPUs. Returns the record (for later changes).
fn apply(r: &mut XdpRunner, applied: &mut Applied, c: &Config, denies: &[Deny], cpus: u32) {
    let desired = Desired { security: &c.security, denies, cpus };
    let ids = applied.ids.allocate(&c.vips, &r.datapath.sizes, &Default::default()).expect("ids");
    reconcile::apply(&mut r.datapath, applied, &ids, &c.source, &c.vips, &Down::new(), &desired)
        .unwrap_or_else(|e| panic!("applying the config: {e}"));
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

/// The verdict for one packet from `src` to the VIP of its family.
fn from(r: &mut XdpRunner, src: &str, sport: u16, l4: L4) -> Verdict {
    let src = ip(src);
    let (dst, dport) = if src.is_ipv4() { (IpAddr::V4(VIP4), 80) } else { (IpAddr::V6(VIP6), 5353) };
    r.run(&frame(src, sport, dst, dport, l4)).verdict
}

#[test]
fn access_lists_global_first_then_the_longest_prefix_of_the_vips_lists() {
    let fixture = Fixture::new();
    let c = config(
        "[security]\ndeny = [\"198.18.9.0/24\", \"198.19.66.0/24\", \"fd00:5:9::/48\"]",
        "allow = [\"198.18.0.0/16\", \"198.18.7.128/25\"]\ndeny = [\"198.18.7.0/24\"]",
        "allow = [\"fd00:5::/32\"]\ndeny = [\"fd00:5:7::/48\"]",
    );
    fixture.run(SIZES, |r| {
        let mut applied = Applied::default();
        apply(r, &mut applied, &c, &[], 1);
        // (source, verdict, why)
        let cases: &[(&str, Verdict, &str)] = &[
            ("198.18.1.1", Verdict::Tx, "in the allowed /16"),
            ("198.18.7.1", Verdict::Drop, "the denied /24 is longer than the allowed /16"),
            ("198.18.7.200", Verdict::Tx, "the allowed /25 is longer than the denied /24"),
            ("198.20.0.1", Verdict::Drop, "outside the allow list"),
            ("198.18.9.5", Verdict::Drop, "the global deny list comes before the VIP's allow list"),
            ("198.19.66.1", Verdict::Drop, "globally denied (and not allowed)"),
            ("fd00:5::1", Verdict::Tx, "in the allowed IPv6 /32"),
            ("fd00:5:7::1", Verdict::Drop, "the denied IPv6 /48 is longer"),
            ("fd00:6::1", Verdict::Drop, "outside the IPv6 allow list"),
            ("fd00:5:9::1", Verdict::Drop, "the global IPv6 deny comes first"),
        ];
        let mut failures = Vec::new();
        for (i, (src, want, why)) in cases.iter().enumerate() {
            let l4 = if src.contains(':') { L4::Udp } else { L4::TcpSyn };
            let got = from(r, src, 40000 + i as u16, l4);
            if got != *want {
                failures.push(format!("{src} ({why}): {got:?}, want {want:?}"));
            }
        }
        assert!(failures.is_empty(), "access lists:\n{}", failures.join("\n"));
        let refused = cases.iter().filter(|c| c.1 == Verdict::Drop).count() as u64;
        assert_eq!(r.counter(Counter::DropAcl), refused, "drop_acl counts every refusal");
        let web = r.datapath.policy_counts(0).expect("web's policy counts");
        let v6 = r.datapath.policy_counts(1).expect("v6's policy counts");
        assert_eq!(web.dropped[PolicyReason::Acl as usize] + v6.dropped[PolicyReason::Acl as usize], refused);
        assert_eq!(v6.dropped[PolicyReason::Acl as usize], 3, "per VIP: v6 refused 3");
        // Not for a VIP: the lists are not the balancer's business.
        let other = frame(ip("198.19.66.1"), 1, IpAddr::V4(OTHER4), 80, L4::TcpSyn);
        assert_eq!(r.run(&other).verdict, Verdict::Pass, "a denied source's packet to another host");
    });
}

#[test]
fn icmp_to_a_vip_meets_the_global_deny_list_but_not_the_vips_lists() {
    let fixture = Fixture::new();
    let c = config(
        "[security]\ndeny = [\"198.19.66.0/24\", \"fd00:5:9::/48\"]",
        "allow = [\"198.18.0.0/16\"]",
        "allow = [\"fd00:5::/32\"]",
    );
    fixture.run(SIZES, |r| {
        let mut applied = Applied::default();
        apply(r, &mut applied, &c, &[], 1);
        let echo =
            |r: &mut XdpRunner, src: &str, dst: IpAddr| r.run(&echo_request(ip(src), dst, 7, 1)).verdict;
        assert_eq!(echo(r, "198.18.1.1", IpAddr::V4(VIP4)), Verdict::Tx, "an allowed source's ping");
        assert_eq!(echo(r, "198.20.0.1", IpAddr::V4(VIP4)), Verdict::Tx, "a ping is no VIP's service");
        let acl = r.counter(Counter::DropAcl);
        assert_eq!(echo(r, "198.19.66.1", IpAddr::V4(VIP4)), Verdict::Drop, "a globally denied ping");
        assert_eq!(echo(r, "fd00:5:9::1", IpAddr::V6(VIP6)), Verdict::Drop, "a globally denied IPv6 ping");
        assert_eq!(r.counter(Counter::DropAcl), acl + 2, "drop_acl counts them");
        // "Fragmentation needed" about an established connection, from routers on its path.
        establish(r, "198.18.1.1");
        let reply = frame(IpAddr::V4(VIP4), 80, ip("198.18.1.1"), 5555, L4::TcpAck);
        let error = |r: &mut XdpRunner, router: &str| r.run(&too_big(ip(router), &reply, None)).verdict;
        let to_backend = r.counter(Counter::IcmpErrorToBackend);
        assert_eq!(error(r, "198.20.0.1"), Verdict::Tx, "a router outside web's allow list");
        assert_eq!(r.counter(Counter::IcmpErrorToBackend), to_backend + 1);
        assert_eq!(error(r, "198.19.66.9"), Verdict::Drop, "an error from a globally denied source");
        assert_eq!(
            r.counter(Counter::IcmpErrorToBackend),
            to_backend + 1,
            "the denied error reached a backend"
        );
        // Addressed to no VIP: not the balancer's business.
        assert_eq!(
            echo(r, "198.19.66.1", IpAddr::V4(OTHER4)),
            Verdict::Pass,
            "a denied ping of another host"
        );
    });
}

/// An established connection from `src` (port 5555): a SYN, then ACKs (recorded, confirmed,
/// then past the checks and stamped).
fn establish(r: &mut XdpRunner, src: &str) {
    assert_eq!(from(r, src, 5555, L4::TcpSyn), Verdict::Tx, "{src}'s SYN");
    for i in 0..5 {
        assert_eq!(from(r, src, 5555, L4::TcpAck), Verdict::Tx, "{src}'s ACK {i} before any change");
    }
}

/// An operator's deny of `prefix` at VIP `web`.
fn web_deny(prefix: &str, expires_unix: Option<u64>) -> Deny {
    Deny { prefix: prefix.parse::<Prefix>().unwrap(), vip: Some("web".into()), expires_unix }
}

#[test]
fn an_operators_deny_reaches_established_flows_and_ends_with_its_expiry() {
    let fixture = Fixture::new();
    let c = config("", "", "");
    fixture.run(SIZES, |r| {
        let mut applied = Applied::default();
        apply(r, &mut applied, &c, &[], 1);
        establish(r, "198.18.7.7");
        let deny = web_deny("198.18.7.0/24", Some(lb_userspace::security::now_unix() + 1));
        apply(r, &mut applied, &c, std::slice::from_ref(&deny), 1);
        assert_eq!(
            from(r, "198.18.7.7", 5555, L4::TcpAck),
            Verdict::Drop,
            "the VIP's deny reaches the established flow"
        );
        assert_eq!(from(r, "198.18.8.8", 5555, L4::TcpSyn), Verdict::Tx, "other sources still pass");
        // Expired: the agent's desired state drops it (Agent::expire_denies), and the maps follow.
        std::thread::sleep(Duration::from_millis(2100));
        assert!(deny.expired(lb_userspace::security::now_unix()), "the deny should have expired");
        let left: Vec<Deny> =
            [deny].into_iter().filter(|d| !d.expired(lb_userspace::security::now_unix())).collect();
        apply(r, &mut applied, &c, &left, 1);
        for i in 0..3 {
            assert_eq!(
                from(r, "198.18.7.7", 5555, L4::TcpAck),
                Verdict::Tx,
                "the connection after the expiry, ACK {i}"
            );
        }
        let entries = r.datapath.acl_entries().expect("ACL entries");
        assert!(entries.is_empty(), "the expired deny left entries behind: {entries:?}");
        // Every VIP's: into an empty global list (which no packet looked up until now).
        let global =
            Deny { prefix: "198.18.8.0/24".parse::<Prefix>().unwrap(), vip: None, expires_unix: None };
        apply(r, &mut applied, &c, std::slice::from_ref(&global), 1);
        assert_eq!(
            from(r, "198.18.8.8", 5555, L4::TcpAck),
            Verdict::Drop,
            "the global deny reaches the established flow"
        );
        assert_eq!(from(r, "198.18.7.7", 5555, L4::TcpAck), Verdict::Tx, "another source's flow");
        assert_eq!(r.counter(Counter::DropAcl), 2, "drop_acl counts the two refusals");
    });
}

/// A flow refused since its last passed packet keeps the policy stamp it had (its packets are
/// dropped before any stamp). A stamp is the generation's low 16 bits, and generations move on
/// every second: some 18 hours on, under the generation 65,536 later, the old stamp would be
/// current again and the refused flow would skip the checks. lbd's census forgets stale stamps.
#[test]
fn a_refused_flows_stale_policy_stamp_is_forgotten_before_its_generation_comes_round() {
    let fixture = Fixture::new();
    let c = config("", "", "");
    fixture.run(SIZES, |r| {
        let mut applied = Applied::default();
        apply(r, &mut applied, &c, &[], 1);
        establish(r, "198.18.7.7");
        establish(r, "198.18.8.8");
        let stamped = applied.policies[&0].generation;
        let deny = web_deny("198.18.7.0/24", None);
        apply(r, &mut applied, &c, std::slice::from_ref(&deny), 1);
        assert_eq!(from(r, "198.18.7.7", 5555, L4::TcpAck), Verdict::Drop, "the refused flow");
        assert_eq!(
            from(r, "198.18.8.8", 5555, L4::TcpAck),
            Verdict::Tx,
            "another flow, checked and stamped again"
        );

        // lbd's census, as its event loop runs it.
        let table = r.datapath.flow_table().expect("flow table");
        let census = lb_userspace::agent::FlowCensus::of_table(table).run().expect("census");
        assert_eq!(census.stamps_forgotten, 1, "only the refused flow's stamp is stale");
        // The generation comes round (the agent moves it on every second): the low 16 bits of the
        // refused flow's old stamp, the deny still in place.
        let policy = applied.policies[&0];
        assert_ne!(policy.generation as u16, stamped as u16);
        r.datapath
            .set_vip_policy(0, lb_common::VipPolicy { generation: stamped + 0x1_0000, ..policy })
            .expect("VIP_POLICY");
        assert_eq!(
            from(r, "198.18.7.7", 5555, L4::TcpAck),
            Verdict::Drop,
            "the refused flow under a generation with its old stamp's low bits"
        );
        assert_eq!(r.counter(Counter::DropAcl), 2);
    });
}

#[test]
fn a_confirmed_flow_skips_the_packet_limit_and_meets_changed_allow_lists() {
    let fixture = Fixture::new();
    // A source's burst of 2 packets: a flow's SYN (which records it) and the ACK that confirms
    // it (checked, and stamped with the policy generation it passed under).
    let limit = "[vip.limits]\npackets_per_source = 2";
    let c = config("", &format!("allow = [\"198.18.0.0/16\"]\n{limit}"), "");
    fixture.run(SIZES, |r| {
        let mut applied = Applied::default();
        apply(r, &mut applied, &c, &[], 1);
        assert_eq!(from(r, "198.18.7.7", 5555, L4::TcpSyn), Verdict::Tx, "the SYN");
        for i in 0..2 {
            assert_eq!(from(r, "198.18.7.7", 5555, L4::TcpAck), Verdict::Tx, "ACK {i}, within the burst");
        }
        // Established: its packets are no longer the limit's (docs/data-plane.md).
        let tx = (0..40).filter(|_| from(r, "198.18.7.7", 5555, L4::TcpAck) == Verdict::Tx).count();
        assert_eq!(tx, 40, "an established flow's packets past the source's burst of 2");
        assert_eq!(r.counter(Counter::DropRatePackets), 0);
        // The source's bucket is spent all the same: a packet of no flow (spoofed) is refused.
        assert_eq!(
            from(r, "198.18.7.7", 6666, L4::TcpAck),
            Verdict::Drop,
            "a packet of no flow, over the limit"
        );
        assert_eq!(r.counter(Counter::DropRatePackets), 1);
        // A config change of the allow list: the established flow's next packet meets it.
        let narrowed = config("", &format!("allow = [\"198.18.8.0/24\"]\n{limit}"), "");
        apply(r, &mut applied, &narrowed, &[], 1);
        assert_eq!(
            from(r, "198.18.7.7", 5555, L4::TcpAck),
            Verdict::Drop,
            "the established flow after its source left the allow list"
        );
        assert_eq!(r.counter(Counter::DropAcl), 1);
        // Allowed again: checked again once, the flow's packet meets its source's spent bucket
        // (the limit counts a confirmed flow's first packet after each change).
        apply(r, &mut applied, &c, &[], 1);
        assert_eq!(from(r, "198.18.7.7", 5555, L4::TcpAck), Verdict::Drop, "allowed again, over the limit");
        assert_eq!(r.counter(Counter::DropRatePackets), 2, "refused by the packet limit, not the list");
    });
}

#[test]
fn burst_limits_admit_exactly_their_bucket_and_count_each_refusal() {
    let fixture = Fixture::new();
    // Rates small enough that the few milliseconds of a test refill nothing: each limit admits
    // its one-second burst and refuses the rest.
    let web = "[vip.limits]\npackets_per_source = 40\nnew_flows = 1000000";
    let v6 = "[vip.limits]\nnew_flows_per_source = 10";
    let c = config("", web, v6);
    fixture.run(SIZES, |r| {
        let mut applied = Applied::default();
        apply(r, &mut applied, &c, &[], 1);
        // Spoofed ACKs from one source: 40 a second.
        let tx = (0..100).filter(|i| from(r, "198.18.7.1", 1000 + i, L4::TcpAck) == Verdict::Tx).count();
        assert_eq!(tx, 40, "packets_per_source = 40 admits its burst of 40");
        assert_eq!(r.counter(Counter::DropRatePackets), 60);
        assert_eq!(from(r, "198.18.7.2", 1000, L4::TcpAck), Verdict::Tx, "another source has its own bucket");
        // UDP: a new flow is a packet of no flow; a flow's later packets are no new flows.
        let tx = (0..25).filter(|i| from(r, "fd00:5::1", 2000 + i, L4::Udp) == Verdict::Tx).count();
        assert_eq!(tx, 10, "new_flows_per_source = 10 admits 10 new UDP flows");
        assert_eq!(r.counter(Counter::DropRateNewFlows), 15);
        for _ in 0..5 {
            assert_eq!(from(r, "fd00:5::1", 2000, L4::Udp), Verdict::Tx, "an admitted flow goes on");
        }
        // A source is its /64 by default.
        assert_eq!(from(r, "fd00:5::2", 3000, L4::Udp), Verdict::Drop, "the same /64: the same bucket");
        assert_eq!(from(r, "fd00:5:0:1::1", 3000, L4::Udp), Verdict::Tx, "another /64");
        let counts = r.datapath.policy_counts(1).expect("v6's policy counts");
        assert_eq!(counts.dropped[PolicyReason::RateNewFlows as usize], 16);
    });
    // The whole VIP's cap, and over the limit passed to the stack.
    let c = config("", "[vip.limits]\nnew_flows = 30\nover_limit = \"pass\"", "");
    fixture.run(SIZES, |r| {
        let mut applied = Applied::default();
        apply(r, &mut applied, &c, &[], 1);
        let verdicts: Vec<Verdict> = (0..50u16)
            .map(|i| from(r, &format!("198.18.{}.{}", 10 + i / 200, 1 + i % 200), 4000, L4::TcpSyn))
            .collect();
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Tx).count(),
            30,
            "new_flows = 30 admits 30 SYNs"
        );
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Pass).count(), 20, "the rest go to the stack");
        assert_eq!(r.counter(Counter::PassRateLimited), 20);
        assert_eq!(r.datapath.policy_counts(0).expect("web's counts").passed, 20);
    });
    let c = config("", "[vip.limits]\nnew_flows = 30", "");
    fixture.run(SIZES, |r| {
        let mut applied = Applied::default();
        apply(r, &mut applied, &c, &[], 1);
        let tx = (0..50u16)
            .filter(|i| from(r, &format!("198.18.20.{}", 1 + i), 4000, L4::TcpSyn) == Verdict::Tx)
            .count();
        assert_eq!(tx, 30);
        assert_eq!(r.counter(Counter::DropVipNewFlowCap), 20, "over the cap: dropped by default");
    });
}

/// Admitted SYNs per whole second since the start, per source.
type Admitted = Arc<Mutex<Vec<(usize, Duration)>>>;

#[test]
fn a_limit_of_n_new_flows_a_second_admits_n_a_second_spread_over_cpus_and_its_share_from_one() {
    const N: u32 = 400;
    const SECONDS: u64 = 3;
    let cpus = allowed_cpus();
    assert!(cpus.len() >= 2, "this test needs two CPUs to spread a source over; it has {cpus:?}");
    let (cpu_a, cpu_b) = (cpus[0], cpus[1]);
    let fixture = Fixture::new();
    let c = config("", &format!("[vip.limits]\nnew_flows_per_source = {N}"), "");
    fixture.run(SIZES, |r| {
        let mut applied = Applied::default();
        // Shared out among the two CPUs the test sends from: N / 2 each.
        apply(r, &mut applied, &c, &[], 2);
        let runner = Mutex::new(r);
        let admitted: Admitted = Arc::default();
        let start = Instant::now();
        std::thread::scope(|scope| {
            for (cpu, sources) in [(cpu_a, vec!["198.18.7.1", "198.18.7.2"]), (cpu_b, vec!["198.18.7.1"])] {
                let (runner, admitted) = (&runner, admitted.clone());
                scope.spawn(move || {
                    pin_to_cpu(cpu);
                    // About 1,000 SYNs a second per source and CPU, more than its share of 200.
                    let mut port = 1u16;
                    while start.elapsed() < Duration::from_secs(SECONDS) {
                        for (i, src) in sources.iter().enumerate() {
                            let f = frame(ip(src), port, IpAddr::V4(VIP4), 80, L4::TcpSyn);
                            if runner.lock().unwrap().run(&f).verdict == Verdict::Tx {
                                admitted.lock().unwrap().push((i, start.elapsed()));
                            }
                        }
                        port = port.wrapping_add(1).max(1);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                });
            }
        });
        let admitted = admitted.lock().unwrap();
        // Source index 0 on CPU A is 198.18.7.1 (sent from both CPUs); index 1 is 198.18.7.2 (A only).
        let per_second = |second: u64, spread: bool| {
            let lo = Duration::from_secs(second);
            let hi = Duration::from_secs(second + 1);
            admitted.iter().filter(|(i, t)| (*i == 0) == spread && *t >= lo && *t < hi).count()
        };
        let spread: Vec<usize> = (0..SECONDS).map(|s| per_second(s, true)).collect();
        let one_cpu: Vec<usize> = (0..SECONDS).map(|s| per_second(s, false)).collect();
        let n = N as usize;
        eprintln!("limit {n} new flows/s: admitted per second, spread over 2 CPUs {spread:?}, from 1 CPU {one_cpu:?}");
        assert!(spread[0] <= 2 * n + n / 10, "first second (burst + rate): {spread:?}, at most 2 x {n}");
        for s in 1..SECONDS as usize {
            assert!(
                spread[s].abs_diff(n) <= n / 10,
                "a source spread over 2 CPUs: {} admitted in second {s}, want {n} +-10% ({spread:?})",
                spread[s]
            );
            assert!(
                one_cpu[s].abs_diff(n / 2) <= n / 20,
                "a source on 1 of 2 CPUs: {} admitted in second {s}, want {} +-10% ({one_cpu:?})",
                one_cpu[s],
                n / 2
            );
        }
    });
}

/// Two sets of four: every flow's two sets are among them.
const TINY: Sizes = Sizes { flows: 8, ..SIZES };

/// A UDP flow that a full flow table (every entry a connection active in the last tick) cannot
/// record is scheduled anew on each of its packets; none of them is a new flow, to the limits or
/// the stats: a stream that started before the table filled must not be refused by its source's
/// new-flow limit packet after packet. Once the table can record again, new flows are limited
/// as before.
#[test]
fn a_udp_flow_a_full_table_cannot_record_is_no_new_flow_on_every_packet() {
    let fixture = Fixture::new();
    let c = config("", "", "[vip.limits]\nnew_flows_per_source = 1");
    fixture.run(TINY, |r| {
        // One CPU: its buckets are the ones every packet meets.
        pin_to_cpu(allowed_cpus()[0]);
        let mut applied = Applied::default();
        apply(r, &mut applied, &c, &[], 1);
        // Connections to `web` (no limits), each SYN and ACK (confirmed), until all eight entries
        // hold one.
        let entries = r.datapath.flow_entries().expect("FLOW_TABLE mapped");
        let confirmed =
            || (0..entries.len()).filter(|&i| entries.read_settled(i).is_some_and(|e| e.confirmed())).count();
        let mut port = 30_000;
        while confirmed() < 8 {
            assert!(port < 30_200, "200 connections did not fill the 8 entries: {} confirmed", confirmed());
            assert_eq!(from(r, "198.18.7.7", port, L4::TcpSyn), Verdict::Tx, "SYN from port {port}");
            assert_eq!(from(r, "198.18.7.7", port, L4::TcpAck), Verdict::Tx, "ACK from port {port}");
            port += 1;
        }
        let not_recorded = r.counter(Counter::FlowNotRecorded);
        let tx = (0..5).filter(|_| from(r, "fd00:5::1", 2000, L4::Udp) == Verdict::Tx).count();
        assert_eq!(tx, 5, "a UDP flow the full table cannot record: every packet forwarded");
        assert_eq!(r.counter(Counter::FlowNotRecorded) - not_recorded, 5, "the table recorded one of them");
        assert_eq!(r.counter(Counter::DropRateNewFlows), 0, "refused as a new flow");
        assert_eq!(r.vip_stats(1).new_flows, 0, "an unrecorded flow's packets counted as new flows");
        assert_eq!(confirmed(), 8, "the connections keep their entries");
        // Two ticks later the connections are idle: the flow is recorded (its source's one new
        // flow of the second), and the source's next new flow meets the limit.
        std::thread::sleep(Duration::from_millis(2_300));
        assert_eq!(from(r, "fd00:5::1", 2000, L4::Udp), Verdict::Tx, "the flow, recorded at last");
        assert_eq!(r.vip_stats(1).new_flows, 1, "the flow recorded: a new flow");
        assert_eq!(from(r, "fd00:5::1", 2001, L4::Udp), Verdict::Drop, "the source's second new flow");
        assert_eq!(r.counter(Counter::DropRateNewFlows), 1);
        for i in 0..3 {
            assert_eq!(from(r, "fd00:5::1", 2000, L4::Udp), Verdict::Tx, "the recorded flow's packet {i}");
        }
        assert_eq!(r.vip_stats(1).new_flows, 1);
    });
}
