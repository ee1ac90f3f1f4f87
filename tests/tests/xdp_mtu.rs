//! Packets that would exceed the path MTU towards their backend once encapsulated
//! (BPF_PROG_TEST_RUN, the FIB fixture's route of MTU 1400): the balancer never fragments and never
//! sends a frame the next hop cannot take. An IPv4 packet with DF, or any IPv6 packet, is
//! answered with ICMP "fragmentation needed" / ICMPv6 "packet too big" carrying what fits inside
//! the tunnel, from the VIP to the client, back out of the interface it came in on; an IPv4
//! packet without DF is dropped and counted. Packets that fit are forwarded. With and without the
//! next-hop cache (which keeps the MTU with the next hop).
use std::net::IpAddr;

use lb_common::{ConfigValue, Counter, MODE_IPIP, PROTO_TCP};
use lb_tests::{
    frames::{addr::*, internet_checksum, set_ipv4_tos_df, tcp_frame_of_len, CLIENT_MAC, LB_MAC},
    xdp::{fixture::*, Fixture, Verdict, XdpRunner},
};
use lb_userspace::datapath::Sizes;

const RING: u32 = 251;
const SIZES: Sizes = Sizes { flows: 16_384, max_vips: 8, max_rings: 2, ring_stride: RING, max_backends: 8 };

/// A VIP per family, each over one backend behind the narrow route.
fn install(r: &mut XdpRunner, generation: u32) {
    r.set_config(ConfigValue {
        src_v4: [198, 18, 9, 1],
        src_v6: [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        hash_seed: 7,
        cache_generation: generation,
        ..Default::default()
    });
    for (id, v6) in [(1, false), (2, true)] {
        let backend = if v6 { narrow6(1) } else { narrow4(1) };
        r.install_ring(id - 1, &[(id, backend)], RING);
        let vip: IpAddr = if v6 { VIP6.into() } else { VIP4.into() };
        let value = r.vip_value(id, id - 1, RING, MODE_IPIP, 0);
        r.install_vip(vip, 80, &[PROTO_TCP], value);
        r.install_address_entry(vip, value);
    }
}

/// What fits inside the tunnel on the narrow route.
fn inner_mtu(v6: bool) -> usize {
    usize::from(NARROW_MTU) - if v6 { 40 } else { 20 }
}

fn packet(v6: bool, ip_len: usize) -> Vec<u8> {
    let (client, vip): (IpAddr, IpAddr) =
        if v6 { (CLIENT6.into(), VIP6.into()) } else { (CLIENT4.into(), VIP4.into()) };
    tcp_frame_of_len(client, 40_000, vip, 80, ip_len)
}

/// `frame` (IPv4 or IPv6) with its source address `source` (the IPv4 header checksum fixed).
fn from(source: IpAddr, frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    match source {
        IpAddr::V4(a) => {
            out[26..30].copy_from_slice(&a.octets());
            lb_tests::frames::fix_ipv4_checksum(&mut out);
        }
        IpAddr::V6(a) => out[22..38].copy_from_slice(&a.octets()),
    }
    out
}

/// Checks that `out` is the ICMP error answering `input` with `mtu`, and says what is wrong.
fn check_too_big(input: &[u8], out: &[u8], v6: bool, mtu: usize) -> Result<(), String> {
    if out[..6] != CLIENT_MAC || out[6..12] != LB_MAC {
        return Err(format!("MACs not swapped: {:02x?}", &out[..12]));
    }
    let (client, vip) = if v6 { (&input[22..38], &input[38..54]) } else { (&input[26..30], &input[30..34]) };
    if v6 {
        let (ip, icmp) = (&out[14..54], &out[54..]);
        let want = [0x86, 0xdd];
        if out[12..14] != want || ip[0] >> 4 != 6 || ip[6] != 58 || ip[7] != 64 {
            return Err(format!("not an ICMPv6 packet: {:02x?}", &out[12..54]));
        }
        if &ip[8..24] != vip || &ip[24..40] != client {
            return Err("not from the VIP to the client".into());
        }
        if usize::from(u16::from_be_bytes([ip[4], ip[5]])) != icmp.len() || icmp.len() != 8 + 256 {
            return Err(format!(
                "payload length {} for {} bytes",
                u16::from_be_bytes([ip[4], ip[5]]),
                icmp.len()
            ));
        }
        if icmp[..2] != [2, 0] || u32::from_be_bytes(icmp[4..8].try_into().unwrap()) as usize != mtu {
            return Err(format!("not a packet too big with MTU {mtu}: {:02x?}", &icmp[..8]));
        }
        let mut pseudo = ip[8..40].to_vec();
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(icmp);
        if internet_checksum(&pseudo) != 0 {
            return Err("bad ICMPv6 checksum".into());
        }
        if icmp[8..] != input[14..14 + 256] {
            return Err("the quote is not the packet's start".into());
        }
    } else {
        let (ip, icmp) = (&out[14..34], &out[34..]);
        if out[12..14] != [0x08, 0x00] || ip[0] != 0x45 || ip[9] != 1 || ip[8] != 64 {
            return Err(format!("not an ICMP packet: {:02x?}", &out[12..34]));
        }
        if internet_checksum(ip) != 0 {
            return Err("bad IPv4 header checksum".into());
        }
        if &ip[12..16] != vip || &ip[16..20] != client {
            return Err("not from the VIP to the client".into());
        }
        if usize::from(u16::from_be_bytes([ip[2], ip[3]])) != out.len() - 14 || icmp.len() != 8 + 68 {
            return Err(format!(
                "total length {} for {} bytes",
                u16::from_be_bytes([ip[2], ip[3]]),
                out.len() - 14
            ));
        }
        if icmp[..2] != [3, 4] || usize::from(u16::from_be_bytes([icmp[6], icmp[7]])) != mtu {
            return Err(format!("not a fragmentation needed with MTU {mtu}: {:02x?}", &icmp[..8]));
        }
        if internet_checksum(icmp) != 0 {
            return Err("bad ICMP checksum".into());
        }
        if icmp[8..] != input[14..14 + 68] {
            return Err("the quote is not the packet's start".into());
        }
    }
    Ok(())
}

#[test]
fn packets_over_the_path_mtu_are_answered_with_the_mtu_inside_the_tunnel() {
    let fx = Fixture::new();
    for generation in [0, 1] {
        fx.run(SIZES, |r| {
            install(r, generation);
            for v6 in [false, true] {
                let case = format!("v6 {v6}, next-hop cache {}", generation != 0);
                // The largest packet that fits is forwarded (twice: a cached next hop too).
                for _ in 0..2 {
                    let before = r.counter(Counter::ForwardTx);
                    let out = r.run(&packet(v6, inner_mtu(v6)));
                    assert_eq!(out.verdict, Verdict::Tx, "{case}: a packet that fits");
                    assert_eq!(r.counter(Counter::ForwardTx), before + 1, "{case}: a packet that fits");
                    assert_eq!(out.frame.len(), 14 + usize::from(NARROW_MTU), "{case}");
                }
                // One byte more: answered, not forwarded.
                for _ in 0..2 {
                    let input = packet(v6, inner_mtu(v6) + 1);
                    let before = r.counters();
                    let out = r.run(&input);
                    assert_eq!(out.verdict, Verdict::Tx, "{case}: one byte too big");
                    if let Err(e) = check_too_big(&input, &out.frame, v6, inner_mtu(v6)) {
                        panic!("{case}: {e}: {:02x?}", &out.frame[..out.frame.len().min(80)]);
                    }
                    let after = r.counters();
                    let moved: Vec<&str> = Counter::ALL
                        .iter()
                        .filter(|c| after[c.index() as usize] != before[c.index() as usize])
                        .map(|c| c.name())
                        .collect();
                    assert!(moved.contains(&"icmp_too_big"), "{case}: counters {moved:?}");
                    assert!(!moved.contains(&"forward_tx"), "{case}: counters {moved:?}");
                }
            }
            // From a source no error may go to (RFC 1812 4.3.2.7, RFC 4443 2.4(e)): dropped, not
            // answered (a spoofed flood would otherwise be reflected to a group or to nobody).
            for source in
                ["0.0.0.0", "127.0.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::", "::1", "ff02::1"]
            {
                let source: IpAddr = source.parse().unwrap();
                let input = from(source, &packet(source.is_ipv6(), inner_mtu(source.is_ipv6()) + 1));
                let before = r.counter(Counter::DropTooBig);
                let out = r.run(&input);
                assert_eq!(out.verdict, Verdict::Drop, "generation {generation}: too big from {source}");
                assert_eq!(r.counter(Counter::DropTooBig), before + 1, "too big from {source}");
            }
            // IPv4 without DF may be fragmented, which the balancer does not do: dropped.
            let before = r.counter(Counter::DropTooBig);
            let out = r.run(&set_ipv4_tos_df(packet(false, inner_mtu(false) + 1), 0, false));
            assert_eq!(out.verdict, Verdict::Drop, "generation {generation}: a too big packet without DF");
            assert_eq!(r.counter(Counter::DropTooBig), before + 1);
        });
    }
}
