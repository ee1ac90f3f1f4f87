//! Test frames built with etherparse, so checksums and lengths are right by construction.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const PAYLOAD: &[u8] = b"hello, balancer";

/// Layer-4 part of a test frame.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    /// A TCP SYN: a connection's first packet.
    TcpSyn,
    /// A TCP ACK: any later packet of the connection.
    TcpAck,
    Udp,
}

/// An Ethernet frame from `src:sport` to `dst:dport` carrying [`PAYLOAD`].
pub fn frame(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, l4: L4) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families: {src} -> {dst}"),
    };
    let mut out = Vec::new();
    match l4 {
        L4::TcpSyn => ip.tcp(sport, dport, 1, 64240).syn().write(&mut out, PAYLOAD),
        L4::TcpAck => ip.tcp(sport, dport, 2, 64240).ack(1).write(&mut out, PAYLOAD),
        L4::Udp => ip.udp(sport, dport).write(&mut out, PAYLOAD),
    }
    .expect("etherparse writes to a Vec");
    out
}

/// TCP header flags, for [`tcp_frame`].
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;

    /// Flags no connection sends (RFC 9293): SYN with FIN or RST, or none of SYN, ACK and RST
    /// (null, FIN and Xmas scans). The balancer drops them at a VIP.
    pub fn no_connection_sends(flags: u8) -> bool {
        (flags & SYN != 0 && flags & (FIN | RST) != 0) || flags & (SYN | ACK | RST) == 0
    }
}

/// Where the L4 header starts in an Ethernet frame of IPv4 without options or IPv6 without
/// extension headers.
pub fn plain_l4_offset(frame: &[u8]) -> usize {
    if frame[12..14] == [0x86, 0xdd] {
        14 + 40
    } else {
        14 + 20
    }
}

/// A TCP segment from `src:sport` to `dst:dport` with `flags` (of [`tcp`]) carrying [`PAYLOAD`].
pub fn tcp_frame(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families: {src} -> {dst}"),
    };
    let mut b = ip.tcp(sport, dport, 1, 64240);
    if flags & tcp::SYN != 0 {
        b = b.syn();
    }
    if flags & tcp::FIN != 0 {
        b = b.fin();
    }
    if flags & tcp::RST != 0 {
        b = b.rst();
    }
    if flags & tcp::ACK != 0 {
        b = b.ack(1);
    }
    let mut out = Vec::new();
    b.write(&mut out, PAYLOAD).expect("etherparse writes to a Vec");
    out
}

/// A TCP segment (ACK) from `src:sport` to `dst:dport` whose IP packet is `ip_len` bytes long
/// (IPv4 with DF, as etherparse builds it).
pub fn tcp_frame_of_len(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, ip_len: usize) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let (ip, header) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (eth.ipv4(s.octets(), d.octets(), 64), 20),
        (IpAddr::V6(s), IpAddr::V6(d)) => (eth.ipv6(s.octets(), d.octets(), 64), 40),
        _ => panic!("mixed address families: {src} -> {dst}"),
    };
    let payload: Vec<u8> = (0..ip_len - header - 20).map(|i| i as u8).collect();
    let mut out = Vec::new();
    ip.tcp(sport, dport, 1, 64240).ack(1).write(&mut out, &payload).expect("etherparse writes to a Vec");
    assert_eq!(out.len(), 14 + ip_len);
    out
}

/// The Internet checksum (RFC 1071) of `data`: 0 over data that carries its own valid checksum.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ARP request (who-has 198.18.0.2, tell 198.18.0.1), 42 bytes as on the wire.
pub fn arp_request() -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&Ipv4Addr::new(198, 18, 0, 1).octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&Ipv4Addr::new(198, 18, 0, 2).octets());
    f
}

/// Test addresses, all in the benchmarking range 198.18.0.0/15 or fd00::/8.
pub mod addr {
    use super::*;
    pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
    pub const OTHER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 100, 0, 0, 0, 1);
    pub const OTHER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
}

/// An ICMP (v4) or ICMPv6 echo request from `src` to `dst` carrying [`PAYLOAD`].
pub fn echo_request(src: IpAddr, dst: IpAddr, id: u16, seq: u16) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            eth.ipv4(s.octets(), d.octets(), 64).icmpv4_echo_request(id, seq).write(&mut out, PAYLOAD)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            eth.ipv6(s.octets(), d.octets(), 64).icmpv6_echo_request(id, seq).write(&mut out, PAYLOAD)
        }
        _ => panic!("mixed address families: {src} -> {dst}"),
    }
    .expect("etherparse writes to a Vec");
    out
}

/// An ICMP "fragmentation needed" (v4 type 3 code 4) or ICMPv6 "packet too big" (type 2) from
/// `router`, quoting `quoted` (an Ethernet frame: its IP packet, cut to `quote_len` bytes if
/// given), and addressed to the quoted packet's source.
pub fn too_big(router: IpAddr, quoted: &[u8], quote_len: Option<usize>) -> Vec<u8> {
    use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type, Icmpv6Type};
    let ip = &quoted[14..];
    let ip = &ip[..quote_len.unwrap_or(ip.len()).min(ip.len())];
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let mut out = Vec::new();
    match router {
        IpAddr::V4(r) => {
            let to: [u8; 4] = ip[12..16].try_into().unwrap();
            let t = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1400,
            });
            eth.ipv4(r.octets(), to, 60).icmpv4(t).write(&mut out, ip)
        }
        IpAddr::V6(r) => {
            let to: [u8; 16] = ip[8..24].try_into().unwrap();
            eth.ipv6(r.octets(), to, 60).icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 }).write(&mut out, ip)
        }
    }
    .expect("etherparse writes to a Vec");
    out
}

/// Recomputes the IPv4 header checksum of an Ethernet+IPv4 frame (IHL honoured).
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24..26].fill(0);
    let sum =
        etherparse::checksum::Sum16BitWords::new().add_slice(&frame[14..14 + ihl]).ones_complement().to_be();
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
}

/// Sets the IPv4 TOS byte and the DF bit (and fixes the checksum).
pub fn set_ipv4_tos_df(mut frame: Vec<u8>, tos: u8, df: bool) -> Vec<u8> {
    frame[15] = tos;
    frame[20] = (frame[20] & !0x40) | if df { 0x40 } else { 0 };
    fix_ipv4_checksum(&mut frame);
    frame
}

/// Sets the IPv6 traffic class and flow label.
pub fn set_ipv6_class_label(mut frame: Vec<u8>, class: u8, label: u32) -> Vec<u8> {
    let word = (6u32 << 28) | (u32::from(class) << 20) | (label & 0xfffff);
    frame[14..18].copy_from_slice(&word.to_be_bytes());
    frame
}

/// Sets the IPv4 TTL (and fixes the checksum) or the IPv6 hop limit.
pub fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    if frame[12..14] == [0x08, 0x00] {
        frame[22] = ttl;
        fix_ipv4_checksum(&mut frame);
    } else {
        frame[21] = ttl;
    }
    frame
}

/// Sets the (outermost) IP header's IPv4 TOS byte (and fixes the checksum) or IPv6 traffic
/// class, keeping everything else.
pub fn with_tos(mut frame: Vec<u8>, tos: u8) -> Vec<u8> {
    if frame[12..14] == [0x08, 0x00] {
        frame[15] = tos;
        fix_ipv4_checksum(&mut frame);
    } else {
        frame[14] = 0x60 | (tos >> 4);
        frame[15] = (tos << 4) | (frame[15] & 0x0f);
    }
    frame
}

/// An IPv4 frame made a fragment: `more` fragments flag and `offset` (in 8-byte units).
pub fn ipv4_fragment(mut frame: Vec<u8>, offset: u16, more: bool) -> Vec<u8> {
    let flags = (u16::from(frame[20]) << 8) & 0x4000; // keep DF
    let field = flags | if more { 0x2000 } else { 0 } | (offset & 0x1fff);
    frame[20..22].copy_from_slice(&field.to_be_bytes());
    fix_ipv4_checksum(&mut frame);
    frame
}

/// Inserts IPv4 options (a multiple of 4 bytes, at most 40) after the fixed header.
pub fn with_ipv4_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4) && options.len() <= 40, "bad options length {}", options.len());
    assert_eq!(frame[14], 0x45, "the frame already has options");
    let mut out = frame[..34].to_vec();
    out.extend_from_slice(options);
    out.extend_from_slice(&frame[34..]);
    out[14] = 0x40 | (5 + options.len() / 4) as u8;
    let tot = u16::from_be_bytes([out[16], out[17]]) + options.len() as u16;
    out[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ipv4_checksum(&mut out);
    out
}

/// IPv6 extension headers for [`with_ipv6_ext`].
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-hop options, 16 bytes (one PadN).
    HopByHop,
    /// Destination options, 8 bytes (one PadN).
    DestOpts,
    /// A routing header of 24 bytes (type 253, experimental; no segments left).
    Routing,
    /// An authentication header with a 12-byte ICV (24 bytes).
    Auth,
    /// A fragment header: offset in 8-byte units, more-fragments flag.
    Fragment { offset: u16, more: bool },
}

impl Ext {
    pub fn number(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::DestOpts => 60,
            Ext::Routing => 43,
            Ext::Auth => 51,
            Ext::Fragment { .. } => 44,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop => [&[next, 1, 1, 12][..], &[0; 12]].concat(),
            Ext::DestOpts => vec![next, 0, 1, 4, 0, 0, 0, 0],
            Ext::Routing => [&[next, 2, 253, 0, 0, 0, 0, 0][..], &addr::OTHER6.octets()].concat(),
            Ext::Auth => {
                [&[next, 4, 0, 0][..], &0x1234u32.to_be_bytes(), &1u32.to_be_bytes(), &[0xaa; 12]].concat()
            }
            Ext::Fragment { offset, more } => {
                let field = (offset << 3) | u16::from(more);
                [&[next, 0][..], &field.to_be_bytes(), &0xdead_beefu32.to_be_bytes()].concat()
            }
        }
    }
}

/// Inserts IPv6 extension headers, in the given order, between the fixed header and the
/// upper-layer header of an Ethernet+IPv6 frame without any.
pub fn with_ipv6_ext(frame: &[u8], exts: &[Ext]) -> Vec<u8> {
    let upper = frame[14 + 6];
    let mut chain = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(upper, |e| e.number());
        chain.extend(ext.bytes(next));
    }
    let mut out = frame[..54].to_vec();
    if let Some(first) = exts.first() {
        out[14 + 6] = first.number();
    }
    out.extend_from_slice(&chain);
    out.extend_from_slice(&frame[54..]);
    let len = u16::from_be_bytes([out[18], out[19]]) + chain.len() as u16;
    out[18..20].copy_from_slice(&len.to_be_bytes());
    out
}

/// The flow table key of a packet from `src:sport` to `dst:dport` (as the data plane builds it).
pub fn flow_key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> lb_common::FlowKey {
    let a = |ip: IpAddr| lb_common::BackendValue::from(ip).addr;
    let family = if src.is_ipv4() { lb_common::FAMILY_V4 } else { lb_common::FAMILY_V6 };
    lb_common::FlowKey { src: a(src), dst: a(dst), sport, dport, proto, family, _pad: [0; 2] }
}

/// What the data plane's output should be, built independently of it from the spec.
pub mod expect {
    use etherparse::{IpNumber, Ipv4Dscp, Ipv4Ecn, Ipv4Header, Ipv6FlowLabel, Ipv6Header};
    use lb_common::ConfigValue;

    use super::*;

    /// The outer source of an encapsulated packet: the configured source with its lowest
    /// entropy bits replaced by the same bits of the flow hash.
    pub fn outer_source(config: &ConfigValue, v6: bool, hash: u32) -> IpAddr {
        if v6 {
            let bits = u32::from(config.v6_entropy_bits);
            let mask = (1u128 << bits) - 1;
            let base = u128::from_be_bytes(config.src_v6);
            Ipv6Addr::from((base & !mask) | (u128::from(hash) & mask)).into()
        } else {
            let bits = u32::from(config.v4_entropy_bits);
            let mask = ((1u64 << bits) - 1) as u32;
            let base = u32::from_be_bytes(config.src_v4);
            Ipv4Addr::from((base & !mask) | (hash & mask)).into()
        }
    }

    /// `input` encapsulated per the spec (IPv4-in-IPv4 or IPv6-in-IPv6), with new MACs. The outer
    /// IPv4 ID is the inner one mixed with the low 16 bits of the flow hash.
    pub fn encapsulated(
        input: &[u8],
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: IpAddr,
        dst: IpAddr,
        hash: u32,
    ) -> Vec<u8> {
        let inner = &input[14..];
        let mut out = Vec::new();
        out.extend_from_slice(&dst_mac);
        out.extend_from_slice(&src_mac);
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                out.extend_from_slice(&0x0800u16.to_be_bytes());
                let tos = inner[1];
                let mut h = Ipv4Header {
                    dscp: Ipv4Dscp::try_new(tos >> 2).unwrap(),
                    ecn: Ipv4Ecn::try_new(tos & 3).unwrap(),
                    total_len: u16::from_be_bytes([inner[2], inner[3]]) + 20,
                    identification: u16::from_be_bytes([inner[4], inner[5]]) ^ hash as u16,
                    dont_fragment: inner[6] & 0x40 != 0,
                    more_fragments: false,
                    fragment_offset: Default::default(),
                    time_to_live: 64,
                    protocol: IpNumber::IPV4,
                    header_checksum: 0,
                    source: s.octets(),
                    destination: d.octets(),
                    options: Default::default(),
                };
                h.header_checksum = h.calc_header_checksum();
                out.extend_from_slice(&h.to_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                out.extend_from_slice(&0x86ddu16.to_be_bytes());
                let h = Ipv6Header {
                    traffic_class: (u32::from_be_bytes(inner[..4].try_into().unwrap()) >> 20) as u8,
                    flow_label: Ipv6FlowLabel::try_new(hash & 0xfffff).unwrap(),
                    payload_length: u16::from_be_bytes([inner[4], inner[5]]) + 40,
                    next_header: IpNumber::IPV6,
                    hop_limit: 64,
                    source: s.octets(),
                    destination: d.octets(),
                };
                out.extend_from_slice(&h.to_bytes());
            }
            _ => panic!("mixed families {src} -> {dst}"),
        }
        out.extend_from_slice(inner);
        out
    }

    /// `input` with only its MACs changed (l2dsr).
    pub fn mac_rewritten(input: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
        let mut out = input.to_vec();
        out[..6].copy_from_slice(&dst_mac);
        out[6..12].copy_from_slice(&src_mac);
        out
    }

    /// The echo reply to an echo request frame made by [`echo_request`](super::echo_request):
    /// MACs and addresses swapped, TTL / hop limit 64 (a fresh packet's, as Linux sends it),
    /// type 0 / 129, checksums recomputed, nothing else changed.
    pub fn echo_reply(request: &[u8]) -> Vec<u8> {
        let mut out = with_ttl(request.to_vec(), 64);
        out[..6].copy_from_slice(&request[6..12]);
        out[6..12].copy_from_slice(&request[..6]);
        let mut sum = etherparse::checksum::Sum16BitWords::new();
        let l4 = if request[12..14] == [0x08, 0x00] {
            out[26..30].copy_from_slice(&request[30..34]);
            out[30..34].copy_from_slice(&request[26..30]);
            fix_ipv4_checksum(&mut out);
            let l4 = 14 + usize::from(request[14] & 0x0f) * 4;
            out[l4] = 0;
            l4
        } else {
            out[22..38].copy_from_slice(&request[38..54]);
            out[38..54].copy_from_slice(&request[22..38]);
            out[54] = 129;
            // ICMPv6 sums a pseudo header too: addresses, length, next header.
            sum = sum
                .add_slice(&out[22..54])
                .add_4bytes(((out.len() - 54) as u32).to_be_bytes())
                .add_2bytes([0, 58]);
            54
        };
        out[l4 + 2..l4 + 4].fill(0);
        let sum = sum.add_slice(&out[l4..]).ones_complement().to_be();
        out[l4 + 2..l4 + 4].copy_from_slice(&sum.to_be_bytes());
        out
    }
}

/// A readable account of a frame's headers (for failure messages): Ethernet, the IP header, and
/// the inner IP header of an IP-in-IP packet.
pub fn describe(frame: &[u8]) -> String {
    use etherparse::{Ethernet2HeaderSlice, Ipv4HeaderSlice, Ipv6HeaderSlice};
    let mut s = String::new();
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(frame) else {
        return format!("{} bytes: {frame:02x?}", frame.len());
    };
    s += &format!("{:?}", eth.to_header());
    let mut rest = &frame[14..];
    let mut ethertype = eth.ether_type().0;
    for _ in 0..2 {
        match ethertype {
            0x0800 => match Ipv4HeaderSlice::from_slice(rest) {
                Ok(h) => {
                    let h = h.to_header();
                    s += &format!("\n  {h:?} (checksum should be {:#06x})", h.calc_header_checksum());
                    ethertype = if h.protocol.0 == 4 { 0x0800 } else { 0 };
                    rest = &rest[h.header_len()..];
                }
                Err(e) => return s + &format!("\n  bad IPv4 header: {e}"),
            },
            0x86dd => match Ipv6HeaderSlice::from_slice(rest) {
                Ok(h) => {
                    let h = h.to_header();
                    s += &format!("\n  {h:?}");
                    ethertype = if h.next_header.0 == 41 { 0x86dd } else { 0 };
                    rest = &rest[40..];
                }
                Err(e) => return s + &format!("\n  bad IPv6 header: {e}"),
            },
            _ => break,
        }
    }
    s + &format!("\n  {} more bytes: {rest:02x?}", rest.len())
}

#[cfg(test)]
mod tests {
    use etherparse::{Ipv4HeaderSlice, PacketBuilder};

    use super::*;

    fn ipv4_checksum_ok(f: &[u8]) -> bool {
        let h = Ipv4HeaderSlice::from_slice(&f[14..]).expect("IPv4 header").to_header();
        h.header_checksum == h.calc_header_checksum()
    }

    #[test]
    fn edited_ipv4_frames_keep_a_valid_header_checksum() {
        let f = frame(addr::CLIENT4.into(), 1, addr::VIP4.into(), 80, L4::TcpSyn);
        assert!(ipv4_checksum_ok(&f));
        assert!(ipv4_checksum_ok(&with_ipv4_options(&f, &[148, 4, 0, 0])));
        assert!(ipv4_checksum_ok(&ipv4_fragment(f.clone(), 100, true)));
        assert!(ipv4_checksum_ok(&set_ipv4_tos_df(f.clone(), 0xb9, false)));
        assert!(ipv4_checksum_ok(&with_tos(f.clone(), 0xbb)));
        assert!(ipv4_checksum_ok(&with_ttl(f, 1)));
    }

    #[test]
    fn with_tos_sets_the_ipv6_traffic_class_and_keeps_the_flow_label() {
        let f =
            set_ipv6_class_label(frame(addr::CLIENT6.into(), 1, addr::VIP6.into(), 80, L4::Udp), 0, 0xabcde);
        let h = etherparse::Ipv6HeaderSlice::from_slice(&with_tos(f, 0xbb)[14..]).expect("IPv6").to_header();
        assert_eq!((h.traffic_class, h.flow_label.value()), (0xbb, 0xabcde));
    }

    #[test]
    fn echo_reply_matches_the_one_etherparse_builds() {
        let (c4, v4): (IpAddr, IpAddr) = (addr::CLIENT4.into(), addr::VIP4.into());
        let mut want = Vec::new();
        PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC)
            .ipv4(addr::VIP4.octets(), addr::CLIENT4.octets(), 64)
            .icmpv4_echo_reply(7, 9)
            .write(&mut want, PAYLOAD)
            .unwrap();
        assert_eq!(expect::echo_reply(&echo_request(c4, v4, 7, 9)), want);
        assert_eq!(expect::echo_reply(&with_ttl(echo_request(c4, v4, 7, 9), 1)), want);
        let (c6, v6): (IpAddr, IpAddr) = (addr::CLIENT6.into(), addr::VIP6.into());
        let mut want = Vec::new();
        PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC)
            .ipv6(addr::VIP6.octets(), addr::CLIENT6.octets(), 64)
            .icmpv6_echo_reply(7, 9)
            .write(&mut want, PAYLOAD)
            .unwrap();
        assert_eq!(expect::echo_reply(&echo_request(c6, v6, 7, 9)), want);
        assert_eq!(expect::echo_reply(&with_ttl(echo_request(c6, v6, 7, 9), 1)), want);
    }

    #[test]
    fn ipv6_extension_headers_parse() {
        let f = frame(addr::CLIENT6.into(), 1, addr::VIP6.into(), 53, L4::Udp);
        let chain = [Ext::HopByHop, Ext::DestOpts, Ext::Routing, Ext::Auth];
        let with = with_ipv6_ext(&f, &chain);
        let parsed = etherparse::SlicedPacket::from_ethernet(&with).expect("parses");
        assert!(matches!(parsed.transport, Some(etherparse::TransportSlice::Udp(_))), "{parsed:?}");
        assert_eq!(with.len(), f.len() + 16 + 8 + 24 + 24);
    }
}
