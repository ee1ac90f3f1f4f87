//! The balancer skeleton, packet by packet: traffic that is not for a VIP passes untouched and
//! moves the right counter; malformed, truncated and random frames never crash it or get forwarded.
use std::net::IpAddr;

use lb_common::{Counter, VipKey, VipValue, PROTO_TCP, PROTO_UDP};
use lb_tests::{
    frames::{addr::*, arp_request, frame, L4},
    xdp::{Verdict, XdpRunner},
};
use rand::{rngs::SmallRng, Rng, SeedableRng};

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    counter: Counter,
}

fn runner_with_vips() -> XdpRunner {
    let mut r = XdpRunner::balancer();
    for key in [
        VipKey::from((IpAddr::V4(VIP4), 80, PROTO_TCP)),
        VipKey::from((IpAddr::V6(VIP6), 0, PROTO_UDP)), // any port
    ] {
        r.datapath.set_vip(key, VipValue { id: 1, flags: 0 }).expect("set VIP");
    }
    r
}

fn cases() -> Vec<Case> {
    let v4 = |dst, dport, l4| frame(CLIENT4.into(), 40000, IpAddr::V4(dst), dport, l4);
    let v6 = |dst, dport, l4| frame(CLIENT6.into(), 40000, IpAddr::V6(dst), dport, l4);
    let mut fragment = v4(VIP4, 80, L4::TcpSyn);
    fragment[14 + 6] |= 0x20; // more fragments
    vec![
        Case { name: "arp", frame: arp_request(), counter: Counter::PassNotIp },
        Case { name: "tcp4_other_host", frame: v4(OTHER4, 80, L4::TcpSyn), counter: Counter::PassNotVip },
        Case { name: "tcp4_vip_other_port", frame: v4(VIP4, 81, L4::TcpSyn), counter: Counter::PassNotVip },
        Case { name: "udp4_vip_tcp_port", frame: v4(VIP4, 80, L4::Udp), counter: Counter::PassNotVip },
        Case { name: "tcp6_other_host", frame: v6(OTHER6, 80, L4::TcpSyn), counter: Counter::PassNotVip },
        Case { name: "tcp6_udp_only_vip", frame: v6(VIP6, 53, L4::TcpSyn), counter: Counter::PassNotVip },
        Case { name: "tcp4_vip", frame: v4(VIP4, 80, L4::TcpSyn), counter: Counter::PassVipNoForwarding },
        Case {
            name: "udp6_vip_any_port",
            frame: v6(VIP6, 5353, L4::Udp),
            counter: Counter::PassVipNoForwarding,
        },
        Case { name: "tcp4_vip_fragment", frame: fragment, counter: Counter::PassFragment },
    ]
}

#[test]
fn each_frame_passes_unchanged_and_moves_its_counter() {
    let mut r = runner_with_vips();
    for case in cases() {
        let before = r.counters();
        let out = r.run(&case.frame);
        assert_eq!(out.verdict, Verdict::Pass, "{}", case.name);
        assert_eq!(out.frame, case.frame, "{}: frame changed", case.name);
        let after = r.counters();
        for (i, c) in Counter::ALL.iter().enumerate() {
            let want = u64::from(*c == case.counter);
            assert_eq!(after[i] - before[i], want, "{}: counter {}", case.name, c.name());
        }
    }
}

/// Every prefix of every case, from 14 bytes (the least BPF_PROG_TEST_RUN takes) to the whole
/// frame: each passes unchanged, and a cut inside a header is counted as malformed.
#[test]
fn truncated_frames_pass_unchanged() {
    let mut r = runner_with_vips();
    for case in cases() {
        for len in 14..case.frame.len() {
            let cut = &case.frame[..len];
            let before = r.counter(Counter::PassMalformed);
            let out = r.run(cut);
            assert_eq!(out.verdict, Verdict::Pass, "{} cut at {len}", case.name);
            assert_eq!(out.frame, cut, "{} cut at {len}: frame changed", case.name);
            // A cut before the ports of a TCP/UDP frame leaves a header incomplete. (The IP
            // header's own length field is not checked against the frame here: the stack does.)
            let l4_end = match case.counter {
                Counter::PassNotIp => 0,
                Counter::PassFragment => 14 + 20, // the IP header tells it is a fragment
                _ => l4_header_end(&case.frame),
            };
            let malformed = r.counter(Counter::PassMalformed) - before;
            assert_eq!(malformed, u64::from(len < l4_end), "{} cut at {len}", case.name);
        }
    }
}

/// Byte offset where the TCP/UDP header of an untagged IPv4/IPv6 frame without options ends.
fn l4_header_end(frame: &[u8]) -> usize {
    let (l4, proto) = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => (14 + 20, frame[14 + 9]),
        0x86dd => (14 + 40, frame[14 + 6]),
        other => panic!("not IP: {other:#x}"),
    };
    l4 + if proto == PROTO_TCP { 20 } else { 8 }
}

/// Seeded random frames, some starting with a real IPv4/IPv6 Ethernet header so the parser goes
/// deeper: the program always passes them untouched.
#[test]
fn random_garbage_passes_unchanged() {
    let mut r = runner_with_vips();
    let mut rng = SmallRng::seed_from_u64(0x1b_5eed);
    let templates = [
        frame(CLIENT4.into(), 1, VIP4.into(), 80, L4::TcpSyn),
        frame(CLIENT6.into(), 1, VIP6.into(), 53, L4::Udp),
    ];
    for i in 0..4000 {
        let len = rng.gen_range(14..200);
        let mut f: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        // A third keep a valid Ethernet+IP prefix of random length, the rest is noise.
        if i % 3 != 0 {
            let t = &templates[i % 2];
            let keep = rng.gen_range(14..t.len()).min(len);
            f[..keep].copy_from_slice(&t[..keep]);
        }
        let out = r.run(&f);
        assert_eq!(out.verdict, Verdict::Pass, "frame {i}: {f:02x?}");
        assert_eq!(out.frame, f, "frame {i} changed");
    }
    let total: u64 = r.counters().iter().sum();
    assert_eq!(total, 4000, "every frame moves exactly one counter");
}
