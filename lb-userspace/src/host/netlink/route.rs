//! Route lookups (`RTM_GETROUTE`), as `ip route get [fibmatch]` does them; the routes of one
//! table marked with one protocol, added, deleted and listed as `ip route add|del|show table T
//! proto P` does (the VIPs lbd announces, see `crate::announce`); and blackhole routes in the
//! main table, as `ip route add|del blackhole PREFIX proto P` (see `crate::host::vip_routes`).
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
/// The main table: the one `ip route` shows and changes when no table is named.
pub const RT_TABLE_MAIN: u32 = 254;
/// Scope of a route that is no unicast route on a link (blackhole, unreachable...).
const RT_SCOPE_UNIVERSE: u8 = 0;
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
pub const RTN_BLACKHOLE: u8 = 6;

/// A route type's name, as `ip route` prints it.
pub fn type_name(kind: u8) -> String {
    let name = match kind {
        RTN_UNICAST => "unicast",
        RTN_LOCAL => "local",
        3 => "broadcast",
        4 => "anycast",
        5 => "multicast",
        RTN_BLACKHOLE => "blackhole",
        7 => "unreachable",
        8 => "prohibit",
        9 => "throw",
        10 => "nat",
        other => return format!("type {other}"),
    };
    name.to_owned()
}

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

/// A route as a table dump lists it: where it goes, who made it, what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListedRoute {
    pub route: TableRoute,
    /// `rtm_protocol`: who made it (2 kernel, 3 boot, 4 static; lbd's are marked with its own).
    pub protocol: u8,
    /// `rtm_type`: [`RTN_UNICAST`], [`RTN_BLACKHOLE`], ...
    pub kind: u8,
}

impl std::fmt::Display for ListedRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} proto {}", type_name(self.kind), self.route, self.protocol)
    }
}

/// `struct rtmsg` of a route of type `kind` in `table`, marked with `protocol`.
fn rtmsg(route: &TableRoute, table: u32, protocol: u8, scope: u8, kind: u8) -> [u8; 12] {
    // family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    let mut header = [0u8; 12];
    header[0] = family_of(route.destination);
    header[1] = route.prefix_len;
    header[4] = u8::try_from(table).unwrap_or(RT_TABLE_UNSPEC);
    header[5] = protocol;
    header[6] = scope;
    header[7] = kind;
    header
}

impl Netlink {
    /// Adds `route` to `table` on interface `ifindex`, marked with `protocol` (one message:
    /// `ip route add ... dev IF proto P table T`). `EEXIST` if the table holds a route to that
    /// destination already, of any protocol: one of another is not lbd's to replace.
    pub fn add_table_route(
        &self,
        table: u32,
        protocol: u8,
        route: TableRoute,
        ifindex: u32,
    ) -> io::Result<()> {
        let header = rtmsg(&route, table, protocol, RT_SCOPE_LINK, RTN_UNICAST);
        let request = Request::new(RTM_NEWROUTE, Write::Create.flags(), &header)
            .attr(RTA_DST, &address_bytes(route.destination))
            .attr(RTA_TABLE, &table.to_ne_bytes())
            .attr(RTA_OIF, &ifindex.to_ne_bytes());
        self.change(request)
    }

    /// Deletes `route` from `table` if `protocol` marks it: a route of another protocol stays
    /// (`ESRCH`, as for no route at all).
    pub fn delete_table_route(&self, table: u32, protocol: u8, route: TableRoute) -> io::Result<()> {
        let header = rtmsg(&route, table, protocol, RT_SCOPE_NOWHERE, RTN_UNICAST);
        let request = Request::new(RTM_DELROUTE, 0, &header)
            .attr(RTA_DST, &address_bytes(route.destination))
            .attr(RTA_TABLE, &table.to_ne_bytes());
        self.change(request)
    }

    /// The routes of both families in `table` marked with `protocol`, sorted.
    pub fn table_routes(&self, table: u32, protocol: u8) -> io::Result<Vec<TableRoute>> {
        let listed = self.routes_of_table(table)?;
        Ok(listed.into_iter().filter(|r| r.protocol == protocol).map(|r| r.route).collect())
    }

    /// Every route of both families in `table`, sorted.
    pub fn routes_of_table(&self, table: u32) -> io::Result<Vec<ListedRoute>> {
        let mut routes = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let replies =
                self.dump(|| Request::new(RTM_GETROUTE, 0, &[family, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))?;
            routes.extend(
                replies
                    .iter()
                    .filter(|m| m.kind == RTM_NEWROUTE)
                    .filter_map(|m| parse_table_route(&m.payload))
                    .filter(|(t, _)| *t == table)
                    .map(|(_, route)| route),
            );
        }
        routes.sort();
        Ok(routes)
    }

    /// Adds a blackhole `route` to the main table, marked with `protocol`, unless a route with
    /// the same prefix and metric is there (`EEXIST`): `ip route add blackhole PREFIX proto P`.
    pub fn add_blackhole_route(&self, protocol: u8, route: TableRoute) -> io::Result<()> {
        let header = rtmsg(&route, RT_TABLE_MAIN, protocol, RT_SCOPE_UNIVERSE, RTN_BLACKHOLE);
        let request = Request::new(RTM_NEWROUTE, Write::Create.flags(), &header)
            .attr(RTA_DST, &address_bytes(route.destination))
            .attr(RTA_TABLE, &RT_TABLE_MAIN.to_ne_bytes());
        self.change(request)
    }

    /// Deletes the blackhole `route` marked with `protocol` from the main table (`ESRCH` when
    /// there is none).
    pub fn delete_blackhole_route(&self, protocol: u8, route: TableRoute) -> io::Result<()> {
        let header = rtmsg(&route, RT_TABLE_MAIN, protocol, RT_SCOPE_NOWHERE, RTN_BLACKHOLE);
        let request = Request::new(RTM_DELROUTE, 0, &header)
            .attr(RTA_DST, &address_bytes(route.destination))
            .attr(RTA_TABLE, &RT_TABLE_MAIN.to_ne_bytes());
        self.change(request)
    }
}

/// A dumped route and its table (`None` for another family's message).
fn parse_table_route(payload: &[u8]) -> Option<(u32, ListedRoute)> {
    let header = payload.get(..12)?;
    let (family, prefix_len, protocol, kind) = (header[0], header[1], header[5], header[7]);
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
    Some((table, ListedRoute { route: TableRoute { destination, prefix_len }, protocol, kind }))
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
