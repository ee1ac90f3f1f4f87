//! Test frames built with etherparse, so checksums and lengths are right by construction.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const PAYLOAD: &[u8] = b"hello, balancer";

/// Layer-4 part of a test frame.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    /// A TCP SYN.
    TcpSyn,
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
        L4::Udp => ip.udp(sport, dport).write(&mut out, PAYLOAD),
    }
    .expect("etherparse writes to a Vec");
    out
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
