//! The decap program (backend hosts), packet by packet with BPF_PROG_TEST_RUN: tunnels to this
//! host are stripped; with an allow list of outer sources, tunnels from elsewhere are dropped
//! and counted (IPv4 and IPv6 in one trie, overlapping prefixes, an empty list meaning any);
//! fragments of tunnel packets pass unstripped and are counted; congestion marks of the outer
//! header reach the inner one (RFC 6040); everything else passes as it is.
use std::{collections::BTreeSet, net::IpAddr};

use lb_common::Counter;
use lb_tests::{
    frames::{
        addr::*, expect, frame, internet_checksum, ipv4_fragment, with_ipv4_options, with_ipv6_ext, with_tos,
        Ext, L4, LB_MAC,
    },
    xdp::{Outcome, Verdict, XdpRunner},
};

/// The backend host's own addresses (tunnels are addressed to them) and its MAC.
const HOST4: &str = "198.18.0.17";
const HOST6: &str = "fd00::11";
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP SYN from the client to the VIP (IPv6 or IPv4): what the balancer tunnels.
fn inner(v6: bool) -> Vec<u8> {
    match v6 {
        false => frame(CLIENT4.into(), 40000, VIP4.into(), 80, L4::TcpSyn),
        true => frame(CLIENT6.into(), 40000, VIP6.into(), 80, L4::TcpSyn),
    }
}

/// `inner` in a tunnel from `source` to `destination`, as the balancer sends it.
fn tunnel(source: &str, destination: &str) -> Vec<u8> {
    let (source, destination) = (ip(source), ip(destination));
    expect::encapsulated(&inner(source.is_ipv6()), HOST_MAC, LB_MAC, source, destination, 0)
}

/// The inner packet behind the tunnel's Ethernet header: what the stack should get.
fn stripped(source: &str) -> Vec<u8> {
    expect::mac_rewritten(&inner(ip(source).is_ipv6()), HOST_MAC, LB_MAC)
}

/// A decap program accepting tunnels to the host's addresses, from `sources` (empty: any).
fn runner(sources: &[(&str, u8)]) -> XdpRunner {
    let mut r = XdpRunner::decap();
    r.datapath.set_decap_addrs(&BTreeSet::from([ip(HOST4), ip(HOST6)])).expect("DECAP_ADDRS");
    allow(&mut r, sources);
    r
}

fn allow(r: &mut XdpRunner, sources: &[(&str, u8)]) {
    let prefixes: BTreeSet<(IpAddr, u8)> = sources.iter().map(|&(a, len)| (ip(a), len)).collect();
    r.datapath.set_decap_sources(&prefixes).expect("DECAP_SOURCES");
}

/// Runs `frame` and returns the outcome and by how much each decap counter moved.
fn run(r: &mut XdpRunner, frame: &[u8]) -> (Outcome, [u64; 4]) {
    let counters =
        [Counter::Decapsulated, Counter::DecapRefused, Counter::DecapFragment, Counter::DecapCeNotEct];
    let before = counters.map(|c| r.counter(c));
    let out = r.run(frame);
    let after = counters.map(|c| r.counter(c));
    (out, [0, 1, 2, 3].map(|i| after[i] - before[i]))
}

const DECAPSULATED: [u64; 4] = [1, 0, 0, 0];
const REFUSED: [u64; 4] = [0, 1, 0, 0];
const FRAGMENT: [u64; 4] = [0, 0, 1, 0];
const CE_NOT_ECT: [u64; 4] = [0, 0, 0, 1];
const NOTHING: [u64; 4] = [0, 0, 0, 0];

fn assert_stripped(r: &mut XdpRunner, source: &str, destination: &str, why: &str) {
    let (out, moved) = run(r, &tunnel(source, destination));
    assert_eq!((out.verdict, moved), (Verdict::Pass, DECAPSULATED), "{why}: {source} -> {destination}");
    assert_eq!(out.frame, stripped(source), "{why}: not stripped to the inner packet");
}

fn assert_refused(r: &mut XdpRunner, source: &str, destination: &str, why: &str) {
    let (out, moved) = run(r, &tunnel(source, destination));
    assert_eq!((out.verdict, moved), (Verdict::Drop, REFUSED), "{why}: {source} -> {destination}");
}

#[test]
fn an_empty_allow_list_accepts_tunnels_from_any_source() {
    let mut r = runner(&[]);
    assert_stripped(&mut r, "198.18.1.7", HOST4, "IPv4, any source");
    assert_stripped(&mut r, "198.19.200.1", HOST4, "IPv4, another source");
    assert_stripped(&mut r, "fd00:0:0:1::9", HOST6, "IPv6, any source");
}

#[test]
fn tunnels_from_allowed_sources_are_stripped_and_others_dropped_and_counted() {
    let mut r = runner(&[("198.18.1.0", 24), ("fd00:0:0:1::", 64)]);
    assert_stripped(&mut r, "198.18.1.7", HOST4, "IPv4 source in 198.18.1.0/24");
    assert_stripped(&mut r, "fd00:0:0:1::9", HOST6, "IPv6 source in fd00:0:0:1::/64");
    assert_refused(&mut r, "198.18.2.7", HOST4, "IPv4 source outside the list");
    assert_refused(&mut r, "fd00:0:0:2::9", HOST6, "IPv6 source outside the list");
    assert_eq!(r.counter(Counter::DecapRefused), 2);
    assert_eq!(r.counter(Counter::Decapsulated), 2);

    // Emptying the list goes back to any source.
    allow(&mut r, &[]);
    assert_stripped(&mut r, "198.18.2.7", HOST4, "the list emptied");
}

#[test]
fn overlapping_prefixes_allow_their_union_and_families_stay_apart() {
    let mut r = runner(&[("198.18.1.0", 24), ("198.18.1.128", 25), ("198.18.0.0", 15)]);
    for source in ["198.18.1.200", "198.18.1.5", "198.19.0.1"] {
        assert_stripped(&mut r, source, HOST4, "inside some prefix of the list");
    }
    // An IPv4 prefix never matches an IPv6 source, whatever its leading bytes.
    assert_refused(&mut r, "fd00::1", HOST6, "IPv6 source, IPv4-only list");

    allow(&mut r, &[("198.18.1.128", 25), ("fd00::", 8)]);
    assert_stripped(&mut r, "198.18.1.200", HOST4, "still in the /25");
    assert_refused(&mut r, "198.18.1.5", HOST4, "the /24 that held it is gone");
    assert_refused(&mut r, "198.19.0.1", HOST4, "the /15 that held it is gone");
    assert_stripped(&mut r, "fd00::1", HOST6, "in fd00::/8");
}

#[test]
fn fragmented_tunnels_pass_unstripped_and_are_counted() {
    let mut r = runner(&[("198.18.1.0", 24), ("fd00:0:0:1::", 64)]);
    let fragments = [
        ("IPv4, first fragment", ipv4_fragment(tunnel("198.18.1.7", HOST4), 0, true)),
        ("IPv4, last fragment", ipv4_fragment(tunnel("198.18.1.7", HOST4), 100, false)),
        (
            "IPv6, fragment header",
            with_ipv6_ext(&tunnel("fd00:0:0:1::9", HOST6), &[Ext::Fragment { offset: 0, more: true }]),
        ),
        (
            "IPv6, later fragment",
            with_ipv6_ext(&tunnel("fd00:0:0:1::9", HOST6), &[Ext::Fragment { offset: 10, more: false }]),
        ),
    ];
    for (name, f) in &fragments {
        let (out, moved) = run(&mut r, f);
        assert_eq!((out.verdict, moved), (Verdict::Pass, FRAGMENT), "{name}");
        assert_eq!(&out.frame, f, "{name}: a fragment must pass unchanged");
    }
    // A refused source's fragments are dropped like its other packets.
    let (out, moved) = run(&mut r, &ipv4_fragment(tunnel("198.18.2.7", HOST4), 0, true));
    assert_eq!((out.verdict, moved), (Verdict::Drop, REFUSED), "fragment from a refused source");
}

#[test]
fn what_is_no_tunnel_to_this_host_passes_untouched_and_uncounted() {
    let mut r = runner(&[("198.18.1.0", 24)]);
    let cases = [
        ("a tunnel to another address", tunnel("198.18.1.7", "198.18.0.18")),
        ("a tunnel from a refused source to another address", tunnel("198.18.2.7", "198.18.0.18")),
        ("plain TCP to the host", frame(CLIENT4.into(), 40000, ip(HOST4), 22, L4::TcpSyn)),
        ("plain TCP over IPv6 to the host", frame(CLIENT6.into(), 40000, ip(HOST6), 22, L4::TcpSyn)),
        (
            "an IPv4 fragment to the host, no tunnel",
            ipv4_fragment(frame(CLIENT4.into(), 1, ip(HOST4), 22, L4::Udp), 0, true),
        ),
    ];
    for (name, f) in &cases {
        let (out, moved) = run(&mut r, f);
        assert_eq!((out.verdict, moved), (Verdict::Pass, NOTHING), "{name}");
        assert_eq!(&out.frame, f, "{name}: changed");
    }
}

/// A header chain the parser does not walk (five IPv6 extension headers; it follows four) may
/// hide a tunnel that a kernel tunnel device would strip past the allow list: to this host from
/// a refused source it is dropped and counted refused; from an allowed one, or to another
/// address, it passes untouched (the stack decides).
#[test]
fn unwalkable_headers_from_refused_sources_are_dropped() {
    let mut r = runner(&[("fd00:0:0:1::", 64)]);
    let chain = [Ext::HopByHop, Ext::DestOpts, Ext::Routing, Ext::DestOpts, Ext::Auth];
    let (out, moved) = run(&mut r, &with_ipv6_ext(&tunnel("fd00:0:0:2::9", HOST6), &chain));
    assert_eq!((out.verdict, moved), (Verdict::Drop, REFUSED), "a long chain from a refused source");
    for (name, f) in [
        ("a long chain from an allowed source", with_ipv6_ext(&tunnel("fd00:0:0:1::9", HOST6), &chain)),
        ("a long chain to another address", with_ipv6_ext(&tunnel("fd00:0:0:2::9", "fd00::12"), &chain)),
    ] {
        let (out, moved) = run(&mut r, &f);
        assert_eq!((out.verdict, moved), (Verdict::Pass, NOTHING), "{name}");
        assert_eq!(out.frame, f, "{name}: changed");
    }
}

#[test]
fn outer_ipv4_options_are_stripped_with_the_header() {
    let mut r = runner(&[]);
    let (out, moved) = run(&mut r, &with_ipv4_options(&tunnel("198.18.1.7", HOST4), &[148, 4, 0, 0]));
    assert_eq!((out.verdict, moved), (Verdict::Pass, DECAPSULATED));
    assert_eq!(out.frame, stripped("198.18.1.7"));
}

/// An outer IPv6 atomic fragment (offset 0, no more fragments: RFC 6946) holds the whole inner
/// packet: it is stripped with its extension headers, not passed as a fragment (this host has
/// no tunnel of its own to strip it).
#[test]
fn an_outer_ipv6_atomic_fragment_is_stripped_with_its_headers() {
    let mut r = runner(&[]);
    let atomic = Ext::Fragment { offset: 0, more: false };
    for chain in [&[atomic][..], &[Ext::DestOpts, atomic]] {
        let (out, moved) = run(&mut r, &with_ipv6_ext(&tunnel("fd00:0:0:1::9", HOST6), chain));
        assert_eq!((out.verdict, moved), (Verdict::Pass, DECAPSULATED), "{chain:?}");
        assert_eq!(out.frame, stripped("fd00:0:0:1::9"), "{chain:?}");
    }
}

/// ECN codepoints (the low two bits of the IPv4 TOS / IPv6 traffic class).
mod ecn {
    pub const NOT_ECT: u8 = 0;
    pub const ECT1: u8 = 1;
    pub const ECT0: u8 = 2;
    pub const CE: u8 = 3;
}

/// RFC 6040, normal mode: a switch between balancer and backend marks congestion on the outer
/// header (the balancer copies the inner ECN field there); decapsulation carries a CE mark to an
/// ECN-capable inner packet and drops a Not-ECT one (a drop is the only congestion signal its
/// sender understands). Other combinations leave the inner field alone (as Linux's tunnels do).
/// The DSCP bits of the inner packet are never touched.
#[test]
fn congestion_marks_on_the_outer_header_reach_the_inner_packet() {
    use ecn::*;
    let mut r = runner(&[]);
    const AF41: u8 = 34 << 2;
    // (outer ECN, inner ECN, the inner ECN the stack gets; None: dropped).
    let cases = [
        (CE, ECT0, Some(CE)),
        (CE, ECT1, Some(CE)),
        (CE, CE, Some(CE)),
        (CE, NOT_ECT, None),
        (ECT0, ECT0, Some(ECT0)),
        (ECT1, ECT1, Some(ECT1)),
        (ECT1, ECT0, Some(ECT0)),
        (ECT0, ECT1, Some(ECT1)),
        (NOT_ECT, ECT0, Some(ECT0)),
        (ECT0, NOT_ECT, Some(NOT_ECT)),
        (NOT_ECT, CE, Some(CE)),
    ];
    for (source, destination) in [("198.18.1.7", HOST4), ("fd00:0:0:1::9", HOST6)] {
        let v6 = ip(source).is_ipv6();
        for dscp in [0, AF41] {
            for (outer_ecn, inner_ecn, want) in cases {
                let name = format!("{source}: outer {outer_ecn}, inner {dscp:#x}|{inner_ecn}");
                let inner = with_tos(inner(v6), dscp | inner_ecn);
                let sent = expect::encapsulated(&inner, HOST_MAC, LB_MAC, ip(source), ip(destination), 0);
                let sent = with_tos(sent, dscp | outer_ecn);
                let (out, moved) = run(&mut r, &sent);
                let Some(want) = want else {
                    assert_eq!((out.verdict, moved), (Verdict::Drop, CE_NOT_ECT), "{name}");
                    continue;
                };
                assert_eq!((out.verdict, moved), (Verdict::Pass, DECAPSULATED), "{name}");
                let expected = expect::mac_rewritten(&with_tos(inner.clone(), dscp | want), HOST_MAC, LB_MAC);
                assert_eq!(out.frame, expected, "{name}: inner packet");
                if !v6 {
                    assert_eq!(internet_checksum(&out.frame[14..34]), 0, "{name}: inner IPv4 checksum");
                }
            }
        }
    }
    // A fragment passes as it came, its marks with it: the stack reassembles it.
    let fragment = ipv4_fragment(with_tos(tunnel("198.18.1.7", HOST4), CE), 0, true);
    let (out, moved) = run(&mut r, &fragment);
    assert_eq!((out.verdict, moved, out.frame), (Verdict::Pass, FRAGMENT, fragment), "a CE-marked fragment");
}
