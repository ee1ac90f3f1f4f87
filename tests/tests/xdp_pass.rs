//! The balancer's robustness, packet by packet: traffic that is not for a VIP passes untouched
//! and moves the right counter; truncated, malformed and random frames never crash it and are
//! never forwarded to a backend unless they really are a well-formed VIP packet.
//!
//! Runs in a [`Fixture`] namespace with real VIPs and backends, so that a frame the balancer
//! wrongly took for a VIP packet would really be forwarded (and caught).
use std::net::IpAddr;

use lb_common::{ConfigValue, Counter, CounterKind, MODE_IPIP, PROTO_TCP, PROTO_UDP};
use lb_tests::{
    frames::{
        self, addr::*, arp_request, echo_request, frame, ipv4_fragment, too_big, with_ipv4_options,
        with_ipv6_ext, Ext, L4,
    },
    xdp::{fixture::*, Fixture, Verdict, XdpRunner},
};
use lb_userspace::datapath::Sizes;
use rand::{rngs::SmallRng, Rng, SeedableRng};

const SIZES: Sizes =
    Sizes { flows: 65_536, max_vips: 256, max_rings: 2, ring_stride: 1031, max_backends: 16 };
const RING: u32 = 1031;

/// VIP4:80/TCP (id 1, backends on eth0) and VIP6 any port/UDP (id 2), with address entries.
fn install_vips(r: &mut XdpRunner) {
    r.set_config(ConfigValue {
        src_v4: [198, 18, 9, 0],
        src_v6: [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        hash_seed: 7,
        v4_entropy_bits: 8,
        v6_entropy_bits: 16,
        _pad: [0; 2],
        capture_vip: 0,
        cache_generation: 0,
    });
    r.install_ring(0, &[(1, near4(1)), (2, near4(2))], RING);
    r.install_ring(1, &[(3, near6(1)), (4, near6(2))], RING);
    let v4 = r.vip_value(1, 0, RING, MODE_IPIP, 0);
    r.install_vip(VIP4.into(), 80, &[PROTO_TCP], v4);
    r.install_address_entry(VIP4.into(), v4);
    let v6 = r.vip_value(2, 1, RING, MODE_IPIP, 0);
    r.install_vip(VIP6.into(), 0, &[PROTO_UDP], v6);
    r.install_address_entry(VIP6.into(), v6);
}

fn is_vip(dst: IpAddr, dport: u16, proto: u8) -> bool {
    (dst == IpAddr::V4(VIP4) && dport == 80 && proto == PROTO_TCP)
        || (dst == IpAddr::V6(VIP6) && proto == PROTO_UDP)
}

fn has_address_entry(dst: IpAddr) -> bool {
    dst == IpAddr::V4(VIP4) || dst == IpAddr::V6(VIP6)
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    counter: Counter,
}

fn vlan_tagged(f: &[u8]) -> Vec<u8> {
    [&f[..12], &[0x81, 0x00, 0x00, 0x64], &f[12..]].concat()
}

/// `f` (Ethernet, IPv4 without options or IPv6 without extension headers, TCP) with its TCP
/// data offset set to `words`.
fn tcp_data_offset(f: &[u8], words: u8) -> Vec<u8> {
    let tcp = frames::plain_l4_offset(f);
    let mut out = f.to_vec();
    out[tcp + 12] = (words << 4) | (out[tcp + 12] & 0x0f);
    out
}

/// `f` (Ethernet, IPv4 without options or IPv6 without extension headers, UDP) with its UDP
/// length set to `len`.
fn udp_length(f: &[u8], len: u16) -> Vec<u8> {
    let udp = frames::plain_l4_offset(f);
    let mut out = f.to_vec();
    out[udp + 4..udp + 6].copy_from_slice(&len.to_be_bytes());
    out
}

/// Frames that are not for a VIP (or not well-formed): they pass unchanged.
fn cases() -> Vec<Case> {
    let v4 = |dst, dport, l4| frame(CLIENT4.into(), 40000, IpAddr::V4(dst), dport, l4);
    let v6 = |dst, dport, l4| frame(CLIENT6.into(), 40000, IpAddr::V6(dst), dport, l4);
    let c = |name, frame, counter| Case { name, frame, counter };
    vec![
        c("arp", arp_request(), Counter::PassNotIp),
        c("vlan_tagged_tcp4_to_vip", vlan_tagged(&v4(VIP4, 80, L4::TcpSyn)), Counter::PassNotIp),
        c("tcp4_other_host", v4(OTHER4, 80, L4::TcpSyn), Counter::PassNotVip),
        c("tcp4_vip_other_port", v4(VIP4, 81, L4::TcpSyn), Counter::PassNotVip),
        // A TCP header whose data offset is under its 5 fixed words, or reaches past the packet.
        c(
            "tcp4_vip_data_offset_3_words",
            tcp_data_offset(&v4(VIP4, 80, L4::TcpSyn), 3),
            Counter::PassMalformed,
        ),
        c(
            "tcp4_vip_data_offset_past_the_end",
            tcp_data_offset(&v4(VIP4, 80, L4::TcpSyn), 15),
            Counter::PassMalformed,
        ),
        c("tcp6_data_offset_0", tcp_data_offset(&v6(OTHER6, 80, L4::TcpSyn), 0), Counter::PassMalformed),
        // A UDP length under its 8-byte header, or past the packet.
        c("udp6_vip_length_7", udp_length(&v6(VIP6, 53, L4::Udp), 7), Counter::PassMalformed),
        c("udp6_vip_length_past_the_end", udp_length(&v6(VIP6, 53, L4::Udp), 1000), Counter::PassMalformed),
        c("udp4_length_0", udp_length(&v4(OTHER4, 53, L4::Udp), 0), Counter::PassMalformed),
        c("udp4_vip_tcp_port", v4(VIP4, 80, L4::Udp), Counter::PassNotVip),
        c(
            "tcp4_other_host_with_options",
            with_ipv4_options(&v4(OTHER4, 80, L4::TcpSyn), &[148, 4, 0, 0]),
            Counter::PassNotVip,
        ),
        c("tcp6_other_host", v6(OTHER6, 80, L4::TcpSyn), Counter::PassNotVip),
        c("tcp6_udp_only_vip", v6(VIP6, 53, L4::TcpSyn), Counter::PassNotVip),
        c(
            "udp6_other_host_with_ext_headers",
            with_ipv6_ext(&v6(OTHER6, 53, L4::Udp), &[Ext::HopByHop, Ext::DestOpts]),
            Counter::PassNotVip,
        ),
        c("echo4_other_host", echo_request(CLIENT4.into(), OTHER4.into(), 1, 1), Counter::PassNotVip),
        c("echo6_other_host", echo_request(CLIENT6.into(), OTHER6.into(), 1, 1), Counter::PassNotVip),
        c(
            "tcp4_fragment_other_host",
            ipv4_fragment(v4(OTHER4, 80, L4::TcpSyn), 0, true),
            Counter::PassFragment,
        ),
        c(
            "udp6_fragment_other_host",
            with_ipv6_ext(&v6(OTHER6, 53, L4::Udp), &[Ext::Fragment { offset: 0, more: true }]),
            Counter::PassFragment,
        ),
    ]
}

fn with_fixture(f: impl FnOnce(&mut XdpRunner) + Send) {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        install_vips(r);
        f(r)
    });
}

#[test]
fn each_frame_passes_unchanged_and_moves_its_counter() {
    with_fixture(|r| {
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
    });
}

/// Frames to cut: the pass cases and VIP packets of every kind.
fn frames_to_cut() -> Vec<(&'static str, Vec<u8>)> {
    let mut out: Vec<(&'static str, Vec<u8>)> = cases().into_iter().map(|c| (c.name, c.frame)).collect();
    let tcp4 = frame(CLIENT4.into(), 40000, VIP4.into(), 80, L4::TcpSyn);
    let udp6 = frame(CLIENT6.into(), 40000, VIP6.into(), 53, L4::Udp);
    out.extend([
        ("tcp4_vip", tcp4.clone()),
        ("udp6_vip", udp6.clone()),
        ("tcp4_vip_with_options", with_ipv4_options(&tcp4, &[1; 12])),
        (
            "udp6_vip_with_4_ext_headers",
            with_ipv6_ext(&udp6, &[Ext::HopByHop, Ext::DestOpts, Ext::Routing, Ext::Auth]),
        ),
        ("echo4_vip", echo_request(CLIENT4.into(), VIP4.into(), 1, 1)),
        ("echo6_vip", echo_request(CLIENT6.into(), VIP6.into(), 1, 1)),
        (
            "too_big4_quoting_vip",
            too_big(
                "198.18.5.1".parse().unwrap(),
                &frame(VIP4.into(), 80, CLIENT4.into(), 40000, L4::TcpSyn),
                None,
            ),
        ),
        (
            "too_big6_quoting_vip",
            too_big(
                "fd00:5::1".parse().unwrap(),
                &frame(VIP6.into(), 53, CLIENT6.into(), 40000, L4::Udp),
                None,
            ),
        ),
        ("tcp4_fragment_vip", ipv4_fragment(tcp4.clone(), 0, true)),
        ("udp6_fragment_vip", with_ipv6_ext(&udp6, &[Ext::Fragment { offset: 0, more: true }])),
    ]);
    out
}

/// Byte offset where the headers the balancer must read end: Ethernet, IP (with IPv4 options /
/// IPv6 extension headers), and the TCP (20), UDP (8) or ICMP (8) header; for fragments the
/// header that says it is one. 0 for frames that are not IP.
fn headers_end(f: &[u8]) -> usize {
    let (mut off, mut next, v6) = match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            if u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0 {
                return 14 + ihl;
            }
            (14 + ihl, f[14 + 9], false)
        }
        0x86dd => (54, f[20], true),
        _ => return 0,
    };
    while v6 && matches!(next, 0 | 43 | 60 | 51 | 44) {
        let len = match next {
            51 => (usize::from(f[off + 1]) + 2) * 4,
            44 => return off + 8,
            _ => (usize::from(f[off + 1]) + 1) * 8,
        };
        next = f[off];
        off += len;
    }
    off + if next == PROTO_TCP { 20 } else { 8 }
}

/// Every prefix of every frame, from 14 bytes (the least BPF_PROG_TEST_RUN takes) to the end of
/// its headers: each passes unchanged and counts as malformed (a header is incomplete).
#[test]
fn frames_cut_inside_their_headers_pass_as_malformed() {
    with_fixture(|r| {
        let mut bad = Vec::new();
        for (name, f) in frames_to_cut() {
            let end = headers_end(&f);
            // Not IP: every cut is "not IP".
            let (counter, upto) =
                if end == 0 { (Counter::PassNotIp, f.len()) } else { (Counter::PassMalformed, end) };
            for len in 14..upto.min(f.len()) {
                let cut = &f[..len];
                let before = r.counters();
                let out = r.run(cut);
                let after = r.counters();
                let moved: Vec<&str> = Counter::ALL
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| after[*i] != before[*i])
                    .map(|(_, c)| c.name())
                    .collect();
                if out.verdict != Verdict::Pass || out.frame != cut || moved != [counter.name()] {
                    let changed = if out.verdict == Verdict::Pass && out.frame != cut {
                        " (frame changed)"
                    } else {
                        ""
                    };
                    let outcome = format!(
                        "{:?}{changed}, counters {moved:?}; expected Pass, [{}] (headers end at {end})",
                        out.verdict,
                        counter.name()
                    );
                    push_range(&mut bad, name, len, outcome);
                }
            }
        }
        assert!(bad.is_empty(), "frames cut inside their headers mishandled:\n{}", ranges(&bad));
    });
}

/// Frames cut after their headers, inside the payload: the IP length says more than the frame
/// holds, so they are truncated packets, and none may be forwarded or answered: they pass
/// unchanged, counted by one Pass counter (fragments to a VIP address may be dropped as such).
#[test]
fn frames_cut_inside_their_payload_are_not_forwarded() {
    with_fixture(|r| {
        let mut bad = Vec::new();
        for (name, f) in frames_to_cut() {
            for len in headers_end(&f).max(14)..f.len() {
                let cut = &f[..len];
                let before = r.counters();
                let out = r.run(cut);
                let after = r.counters();
                let moved: Vec<&str> = Counter::ALL
                    .iter()
                    .enumerate()
                    .filter(|(i, c)| after[*i] != before[*i] && c.kind() != CounterKind::Event)
                    .map(|(_, c)| c.name())
                    .collect();
                let passed = Counter::ALL
                    .iter()
                    .enumerate()
                    .any(|(i, c)| c.kind() == CounterKind::Pass && after[i] == before[i] + 1);
                let dropped_fragment = fragment_to_vip_address(cut)
                    && out.verdict == Verdict::Drop
                    && moved == [Counter::DropFragmentToVip.name()];
                let passed = out.verdict == Verdict::Pass && out.frame == cut && passed && moved.len() == 1;
                if !passed && !dropped_fragment {
                    push_range(&mut bad, name, len, format!("{:?}, counters {moved:?}", out.verdict));
                }
            }
        }
        assert!(bad.is_empty(), "truncated frames not passed unchanged:\n{}", ranges(&bad));
    });
}

/// Failures of cut frames: (frame, first cut, last cut, outcome), one per run of consecutive
/// cuts of a frame with the same outcome.
type Cuts = Vec<(&'static str, usize, usize, String)>;

fn push_range(bad: &mut Cuts, name: &'static str, len: usize, outcome: String) {
    match bad.last_mut() {
        Some((n, _, last, o)) if *n == name && *o == outcome && *last + 1 == len => *last = len,
        _ => bad.push((name, len, len, outcome)),
    }
}

fn ranges(bad: &Cuts) -> String {
    let lines: Vec<String> = bad
        .iter()
        .map(|(name, from, to, outcome)| format!("{name} cut at {from}..={to}: {outcome}"))
        .collect();
    lines.join("\n")
}

/// What a correct balancer may do with a frame, by an independent reading of the spec.
#[derive(Debug, PartialEq)]
enum May {
    /// A well-formed TCP/UDP packet to a VIP, or an ICMP error quoting a VIP's flow: forward.
    Forward,
    /// A well-formed echo request to a VIP address: reply.
    Reply,
    /// A well-formed fragment to a VIP address, or TCP to a VIP with flags no connection
    /// sends: drop.
    Drop,
    /// Well-formed, but for nobody here: pass.
    Pass,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Err(why) for a malformed frame, which must pass unchanged.
fn oracle(f: &[u8]) -> Result<May, String> {
    match be16(f, 12) {
        0x0800 => {
            let ip = &f[14..];
            if ip.len() < 20 {
                return Err(format!("IPv4 header cut: {} bytes", ip.len()));
            }
            let (ver, ihl, tot) = (ip[0] >> 4, usize::from(ip[0] & 0x0f) * 4, usize::from(be16(ip, 2)));
            if ver != 4 {
                return Err(format!("IP version {ver} in an IPv4 frame"));
            }
            if ihl < 20 || ihl > ip.len() {
                return Err(format!("IPv4 header length {ihl}, {} bytes there", ip.len()));
            }
            if tot < ihl || tot > ip.len() {
                return Err(format!("IPv4 total length {tot}, header {ihl}, {} bytes there", ip.len()));
            }
            let ip = &ip[..tot];
            let dst = IpAddr::from(<[u8; 4]>::try_from(&ip[16..20]).unwrap());
            if be16(ip, 6) & 0x3fff != 0 {
                return Ok(if has_address_entry(dst) { May::Drop } else { May::Pass });
            }
            let src = IpAddr::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap());
            transport(ip[9], src, dst, &ip[ihl..], false)
        }
        0x86dd => {
            let ip = &f[14..];
            if ip.len() < 40 {
                return Err(format!("IPv6 header cut: {} bytes", ip.len()));
            }
            if ip[0] >> 4 != 6 {
                return Err(format!("IP version {} in an IPv6 frame", ip[0] >> 4));
            }
            let plen = usize::from(be16(ip, 4));
            if 40 + plen > ip.len() {
                return Err(format!("IPv6 payload length {plen}, {} bytes there", ip.len() - 40));
            }
            let ip = &ip[..40 + plen];
            let dst = IpAddr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
            let (mut next, mut off) = (ip[6], 40);
            for _ in 0..4 {
                let len = match next {
                    0 | 43 | 60 if off + 2 <= ip.len() => (usize::from(ip[off + 1]) + 1) * 8,
                    51 if off + 2 <= ip.len() => (usize::from(ip[off + 1]) + 2) * 4,
                    44 if off + 8 <= ip.len() => {
                        return Ok(if has_address_entry(dst) { May::Drop } else { May::Pass })
                    }
                    0 | 43 | 60 | 51 | 44 => return Err(format!("extension header {next} cut")),
                    _ => break,
                };
                if off + len > ip.len() {
                    return Err(format!("extension header {next} of {len} bytes, {} there", ip.len() - off));
                }
                next = ip[off];
                off += len;
            }
            if matches!(next, 0 | 43 | 60 | 51 | 44) {
                return Err("more than 4 extension headers".into());
            }
            let src = IpAddr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
            transport(next, src, dst, &ip[off..], true)
        }
        _ => Ok(May::Pass),
    }
}

/// Whether the frame's IP header (whatever follows) says it is a fragment to a VIP address: a
/// balancer that checks no more than that may drop it.
fn fragment_to_vip_address(f: &[u8]) -> bool {
    match be16(f, 12) {
        0x0800 if f.len() >= 34 => {
            be16(f, 20) & 0x3fff != 0
                && has_address_entry(IpAddr::from(<[u8; 4]>::try_from(&f[30..34]).unwrap()))
        }
        0x86dd if f.len() >= 54 => {
            let dst = IpAddr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap());
            let (mut next, mut off) = (f[20], 54);
            for _ in 0..5 {
                if next == 44 {
                    return has_address_entry(dst);
                }
                if !matches!(next, 0 | 43 | 60 | 51) || off + 2 > f.len() {
                    return false;
                }
                let len = if next == 51 {
                    (usize::from(f[off + 1]) + 2) * 4
                } else {
                    (usize::from(f[off + 1]) + 1) * 8
                };
                next = f[off];
                off += len;
            }
            false
        }
        _ => false,
    }
}

fn transport(proto: u8, src: IpAddr, dst: IpAddr, l4: &[u8], v6: bool) -> Result<May, String> {
    let need = match proto {
        PROTO_TCP => 20,
        PROTO_UDP | 1 | 58 => 8,
        _ => return Ok(May::Pass),
    };
    if l4.len() < need {
        return Err(format!("protocol {proto} header cut: {} bytes", l4.len()));
    }
    if proto == PROTO_TCP {
        let header = usize::from(l4[12] >> 4) * 4;
        if header < 20 || header > l4.len() {
            return Err(format!("TCP data offset {header} bytes, the segment {}", l4.len()));
        }
        if !is_vip(dst, be16(l4, 2), proto) {
            return Ok(May::Pass);
        }
        return Ok(if frames::tcp::no_connection_sends(l4[13]) { May::Drop } else { May::Forward });
    }
    if proto == PROTO_UDP {
        let len = usize::from(be16(l4, 4));
        if len < 8 || len > l4.len() {
            return Err(format!("UDP length {len}, the datagram {}", l4.len()));
        }
        return Ok(if is_vip(dst, be16(l4, 2), proto) { May::Forward } else { May::Pass });
    }
    if (proto == 1) == v6 {
        return Ok(May::Pass); // ICMP over IPv6 or ICMPv6 over IPv4
    }
    match (v6, l4[0], l4[1]) {
        // No reply to a source that names no single host (RFC 1812 4.3.2.7).
        (false, 8, _) | (true, 128, _) if has_address_entry(dst) => {
            let one_host = match src {
                IpAddr::V4(a) => !matches!(a.octets()[0], 0 | 127 | 224..),
                IpAddr::V6(a) => !(a.is_unspecified() || a.is_loopback() || a.is_multicast()),
            };
            Ok(if one_host { May::Reply } else { May::Drop })
        }
        (false, 3, 4) | (true, 2, _) => {
            // The quoted packet: VIP:port -> client; forwarding needs its ports.
            let q = &l4[8..];
            let (src, proto, l4q) = if !v6 && q.len() >= 20 && q[0] >> 4 == 4 && usize::from(q[0] & 0x0f) >= 5
            {
                let ihl = usize::from(q[0] & 0x0f) * 4;
                (IpAddr::from(<[u8; 4]>::try_from(&q[12..16]).unwrap()), q[9], q.get(ihl..))
            } else if v6 && q.len() >= 40 && q[0] >> 4 == 6 {
                (IpAddr::from(<[u8; 16]>::try_from(&q[8..24]).unwrap()), q[6], q.get(40..))
            } else {
                return Ok(May::Pass);
            };
            match l4q {
                // An error about a VIP's packet goes to that VIP (its source).
                Some(p) if p.len() >= 4 => {
                    Ok(if is_vip(src, be16(p, 0), proto) && src == dst { May::Forward } else { May::Pass })
                }
                _ if proto == PROTO_TCP || proto == PROTO_UDP => {
                    Err("ICMP error quoting a packet without its ports".into())
                }
                _ => Ok(May::Pass),
            }
        }
        _ => Ok(May::Pass),
    }
}

/// Seeded random frames: pure noise, prefixes of real VIP frames followed by noise, and real
/// frames with a few bytes changed. Whatever they are, the program never aborts; malformed
/// frames pass unchanged; only frames the oracle finds well-formed and meant for a VIP may be
/// forwarded; and every frame moves exactly one verdict counter.
#[test]
fn random_garbage_is_never_forwarded_unless_well_formed() {
    const N: usize = 6000;
    with_fixture(|r| {
        let mut rng = SmallRng::seed_from_u64(0x1b_5eed);
        let tcp4 = frame(CLIENT4.into(), 1, VIP4.into(), 80, L4::TcpSyn);
        let udp6 = frame(CLIENT6.into(), 1, VIP6.into(), 53, L4::Udp);
        let templates = [
            tcp4.clone(),
            udp6.clone(),
            with_ipv4_options(&tcp4, &[1; 8]),
            with_ipv6_ext(&udp6, &[Ext::HopByHop, Ext::Routing]),
            echo_request(CLIENT4.into(), VIP4.into(), 1, 1),
            echo_request(CLIENT6.into(), VIP6.into(), 1, 1),
            too_big(
                "198.18.5.1".parse().unwrap(),
                &frame(VIP4.into(), 80, CLIENT4.into(), 9, L4::TcpSyn),
                Some(28),
            ),
            too_big("fd00:5::1".parse().unwrap(), &frame(VIP6.into(), 53, CLIENT6.into(), 9, L4::Udp), None),
            ipv4_fragment(tcp4.clone(), 0, true),
            with_ipv6_ext(&udp6, &[Ext::Fragment { offset: 0, more: true }]),
        ];
        // Violations grouped by what went wrong: count and first example.
        let mut violations = std::collections::BTreeMap::<String, (usize, String)>::new();
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        let before = r.counters();
        for i in 0..N {
            let t = &templates[i % templates.len()];
            let f: Vec<u8> = match i % 3 {
                0 => (0..rng.gen_range(14..200)).map(|_| rng.gen()).collect(),
                1 => {
                    let len = rng.gen_range(14..200);
                    let keep = rng.gen_range(14..t.len()).min(len);
                    let mut f: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    f[..keep].copy_from_slice(&t[..keep]);
                    f
                }
                _ => {
                    let mut f = t.clone();
                    for _ in 0..rng.gen_range(1..=3) {
                        let at = rng.gen_range(14..f.len().min(14 + 80));
                        f[at] = rng.gen();
                    }
                    if rng.gen_bool(0.3) {
                        f.truncate(rng.gen_range(14..=f.len()));
                    }
                    f
                }
            };
            let may = oracle(&f);
            let out = r.run(&f);
            *seen
                .entry(format!("{:?} when {:?}", out.verdict, may.as_ref().map_err(|_| "malformed")))
                .or_default() += 1;
            let ok = match (&may, out.verdict) {
                (_, Verdict::Pass) => out.frame == f,
                (Ok(May::Forward), Verdict::Tx) => {
                    let outer = if be16(&f, 12) == 0x0800 { 20 } else { 40 };
                    out.frame.len() == f.len() + outer && out.frame[14 + outer..] == f[14..]
                }
                (Ok(May::Reply), Verdict::Tx) => out.frame.len() == f.len(),
                (Ok(May::Drop), Verdict::Drop) => true,
                (Err(_), Verdict::Drop) => fragment_to_vip_address(&f),
                _ => false,
            };
            if !ok {
                let why = match &may {
                    Err(why) => format!("malformed: {why}"),
                    Ok(m) => format!("{m:?}"),
                };
                let changed = if out.verdict == Verdict::Pass { " (frame changed)" } else { "" };
                // Grouped by the reason with its numbers left out.
                let mut kind = String::new();
                for c in why.chars() {
                    if !c.is_ascii_digit() {
                        kind.push(c);
                    } else if !kind.ends_with('N') {
                        kind.push('N');
                    }
                }
                let kind = format!("{:?}{changed} when {kind}", out.verdict);
                let entry =
                    violations.entry(kind).or_insert_with(|| (0, format!("frame {i}: {why}\n    {f:02x?}")));
                entry.0 += 1;
            }
        }
        let after = r.counters();
        let verdicts: u64 = Counter::ALL
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind() != CounterKind::Event)
            .map(|(i, _)| after[i] - before[i])
            .sum();
        eprintln!("outcomes: {seen:#?}");
        let total: usize = violations.values().map(|v| v.0).sum();
        let report: Vec<String> =
            violations.iter().map(|(kind, (n, first))| format!("{n} x {kind}\n  e.g. {first}")).collect();
        assert!(total == 0, "{total} of {N} random frames mishandled:\n{}", report.join("\n"));
        assert_eq!(verdicts, N as u64, "every frame moves exactly one verdict counter");
    });
}
