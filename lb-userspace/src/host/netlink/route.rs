//! Route lookups (`RTM_GETROUTE`), as `ip route get [fibmatch]` does them; and the routes of one
//! table marked with one protocol, added, deleted and listed as `ip route add|del|show table T
//! proto P` does (the VIPs lbd announces, see `crate::announce`).
use std::{io, net::IpAddr};

use super::{address_bytes, attributes, family_of, parse_address, u32_at, Netlink, Request, Write};

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const RTA_VIA: u16 = 18;
/// `rtm_table` of a route whose table is in RTA_TABLE (numbers above 255 fit only there).
const RT_TABLE_UNSPEC: u8 = 0;
/// Scope of a route without a gateway (`ip route add ... dev lo` makes the same).
const RT_SCOPE_LINK: u8 = 253;
/// In a delete: any scope.
const RT_SCOPE_NOWHERE: u8 = 255;
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

/// A route to `destination/prefix_len` in a table of its own (see [`Netlink::table_routes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRoute {
    pub destination: IpAddr,
    pub prefix_len: u8,
}

impl TableRoute {
    /// The host route of `address`: /32 or /128.
    pub fn host(address: IpAddr) -> TableRoute {
        TableRoute { destination: address, prefix_len: if address.is_ipv4() { 32 } else { 128 } }
    }
}

impl std::fmt::Display for TableRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.destination, self.prefix_len)
    }
}

/// `struct rtmsg` of a unicast route in `table`, marked with `protocol`.
fn rtmsg(route: &TableRoute, table: u32, protocol: u8, scope: u8) -> [u8; 12] {
    // family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    let mut header = [0u8; 12];
    header[0] = family_of(route.destination);
    header[1] = route.prefix_len;
    header[4] = u8::try_from(table).unwrap_or(RT_TABLE_UNSPEC);
    header[5] = protocol;
    header[6] = scope;
    header[7] = RTN_UNICAST;
    header
}

impl Netlink {
    /// Adds `route` to `table` on interface `ifindex`, marked with `protocol`, or replaces the
    /// route that is there (one message: `ip route replace ... dev IF proto P table T`).
    pub fn add_table_route(
        &self,
        table: u32,
        protocol: u8,
        route: TableRoute,
        ifindex: u32,
    ) -> io::Result<()> {
        let header = rtmsg(&route, table, protocol, RT_SCOPE_LINK);
        let request = Request::new(RTM_NEWROUTE, Write::CreateOrReplace.flags(), &header)
            .attr(RTA_DST, &address_bytes(route.destination))
            .attr(RTA_TABLE, &table.to_ne_bytes())
            .attr(RTA_OIF, &ifindex.to_ne_bytes());
        self.change(request)
    }

    /// Deletes `route` from `table` if `protocol` marks it: a route of another protocol stays
    /// (`ESRCH`, as for no route at all).
    pub fn delete_table_route(&self, table: u32, protocol: u8, route: TableRoute) -> io::Result<()> {
        let header = rtmsg(&route, table, protocol, RT_SCOPE_NOWHERE);
        let request = Request::new(RTM_DELROUTE, 0, &header)
            .attr(RTA_DST, &address_bytes(route.destination))
            .attr(RTA_TABLE, &table.to_ne_bytes());
        self.change(request)
    }

    /// The routes of both families in `table` marked with `protocol`, sorted.
    pub fn table_routes(&self, table: u32, protocol: u8) -> io::Result<Vec<TableRoute>> {
        let mut routes = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let replies =
                self.dump(|| Request::new(RTM_GETROUTE, 0, &[family, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))?;
            routes.extend(
                replies
                    .iter()
                    .filter(|m| m.kind == RTM_NEWROUTE)
                    .filter_map(|m| parse_table_route(&m.payload))
                    .filter(|(t, p, _)| (*t, *p) == (table, protocol))
                    .map(|(_, _, route)| route),
            );
        }
        routes.sort();
        Ok(routes)
    }
}

/// A dumped route: its table, protocol, destination and prefix length (`None` for another
/// family's message).
fn parse_table_route(payload: &[u8]) -> Option<(u32, u8, TableRoute)> {
    let header = payload.get(..12)?;
    let (family, prefix_len, protocol) = (header[0], header[1], header[5]);
    let mut table = u32::from(header[4]);
    let mut destination = None;
    for (attr, data) in attributes(&payload[12..]) {
        match attr {
            RTA_TABLE => table = u32_at(data, 0),
            RTA_DST => destination = parse_address(data),
            _ => {}
        }
    }
    let destination = match (family as i32, destination) {
        (_, Some(d)) => d,
        // A default route carries no destination.
        (libc::AF_INET, None) => IpAddr::from([0u8; 4]),
        (libc::AF_INET6, None) => IpAddr::from([0u8; 16]),
        _ => return None,
    };
    Some((table, protocol, TableRoute { destination, prefix_len }))
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
