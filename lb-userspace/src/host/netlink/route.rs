//! Route lookups (`RTM_GETROUTE`), as `ip route get [fibmatch]` does them.
use std::{io, net::IpAddr};

use super::{address_bytes, attributes, family_of, parse_address, u32_at, Netlink, Request};

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_MULTIPATH: u16 = 9;
const RTA_VIA: u16 = 18;
/// Answer with the route that matched (every path of a multipath route), not the one path
/// the kernel chose for this destination.
const RTM_F_FIB_MATCH: u32 = 0x2000;
/// `struct rtnexthop`: length, flags, hops, ifindex.
const RTNH_LEN: usize = 8;

/// Route types (`rtm_type`).
pub const RTN_UNICAST: u8 = 1;
pub const RTN_LOCAL: u8 = 2;

/// The route the kernel uses for a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `RTN_UNICAST`, `RTN_LOCAL`, ...
    pub kind: u8,
    /// Every path; one for a plain route.
    pub hops: Vec<RouteHop>,
}

/// One path of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteHop {
    /// The interface the packets leave by.
    pub ifindex: u32,
    /// The router they go to; `None` on-link: the destination is the neighbour itself. May be
    /// of the other family (an IPv4 route via an IPv6 router).
    pub gateway: Option<IpAddr>,
}

impl Netlink {
    /// The route that matches `destination` with all its paths (`ip route get fibmatch`).
    /// No route, or an unreachable, prohibit or blackhole one, is an error (ENETUNREACH,
    /// EHOSTUNREACH, EACCES, EINVAL).
    pub fn route_match(&self, destination: IpAddr) -> io::Result<Route> {
        self.route_get(destination, RTM_F_FIB_MATCH)
    }

    fn route_get(&self, destination: IpAddr, flags: u32) -> io::Result<Route> {
        let bits = if destination.is_ipv4() { 32 } else { 128 };
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut header = [0u8; 12];
        header[0] = family_of(destination);
        header[1] = bits;
        header[8..12].copy_from_slice(&flags.to_ne_bytes());
        let request = Request::new(RTM_GETROUTE, 0, &header).attr(RTA_DST, &address_bytes(destination));
        let reply = self.get(request)?;
        if reply.kind != RTM_NEWROUTE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a route lookup answered message type {}", reply.kind),
            ));
        }
        parse_route(&reply.payload)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a route message cut short"))
    }
}

fn parse_route(payload: &[u8]) -> Option<Route> {
    let header = payload.get(..12)?;
    let mut route = Route { kind: header[7], hops: Vec::new() };
    let (mut oif, mut gateway) = (None, None);
    for (attr, data) in attributes(&payload[12..]) {
        match attr {
            RTA_OIF => oif = Some(u32_at(data, 0)),
            RTA_GATEWAY => gateway = parse_address(data),
            RTA_VIA => gateway = parse_via(data),
            RTA_MULTIPATH => route.hops = parse_multipath(data),
            _ => {}
        }
    }
    if route.hops.is_empty() {
        if let Some(ifindex) = oif {
            route.hops.push(RouteHop { ifindex, gateway });
        }
    }
    Some(route)
}

/// `struct rtvia`: a family (u16), then the address.
fn parse_via(data: &[u8]) -> Option<IpAddr> {
    parse_address(data.get(2..)?)
}

/// RTA_MULTIPATH: `struct rtnexthop` after `struct rtnexthop`, each followed by its attributes.
fn parse_multipath(mut data: &[u8]) -> Vec<RouteHop> {
    let mut hops = Vec::new();
    while data.len() >= RTNH_LEN {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        if len < RTNH_LEN || len > data.len() {
            break;
        }
        let ifindex = u32_at(data, 4);
        let mut gateway = None;
        for (attr, value) in attributes(&data[RTNH_LEN..len]) {
            match attr {
                RTA_GATEWAY => gateway = parse_address(value),
                RTA_VIA => gateway = parse_via(value),
                _ => {}
            }
        }
        hops.push(RouteHop { ifindex, gateway });
        data = &data[super::align(len).min(data.len())..];
    }
    hops
}
