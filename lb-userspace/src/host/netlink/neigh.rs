//! Neighbour entries (`RTM_*NEIGH`), as `ip neigh` reads and writes them.
use std::{io, net::IpAddr};

use super::{address_bytes, attributes, family_of, parse_address, u32_at, Netlink, Request, Write};

const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NDA_PROTOCOL: u16 = 12;
const NDA_FLAGS_EXT: u16 = 15;
/// In NDA_FLAGS_EXT: the kernel keeps the entry resolved (probes it) on its own.
pub const NTF_EXT_MANAGED: u32 = 1 << 0;
/// In `ndm_flags`: learned by something outside the kernel (EVPN, a switch driver).
pub const NTF_EXT_LEARNED: u8 = 1 << 4;
/// In `ndm_flags`: a proxy entry.
const NTF_PROXY: u8 = 1 << 3;

/// Neighbour states (`NUD_*`, linux/neighbour.h).
pub mod nud {
    pub const INCOMPLETE: u16 = 0x01;
    pub const REACHABLE: u16 = 0x02;
    pub const STALE: u16 = 0x04;
    pub const DELAY: u16 = 0x08;
    pub const PROBE: u16 = 0x10;
    pub const FAILED: u16 = 0x20;
    pub const NOARP: u16 = 0x40;
    pub const PERMANENT: u16 = 0x80;
    /// States with a link-layer address the kernel (and `bpf_fib_lookup`) uses.
    pub const VALID: u16 = PERMANENT | NOARP | REACHABLE | PROBE | STALE | DELAY;
}

/// A neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub address: IpAddr,
    /// The link-layer address, once resolved.
    pub lladdr: Option<Vec<u8>>,
    /// `nud::*`.
    pub state: u16,
    /// `ndm_flags` (`NTF_*`).
    pub flags: u8,
    /// NDA_FLAGS_EXT (`NTF_EXT_*`).
    pub ext_flags: u32,
    /// NDA_PROTOCOL: who made it (0: the kernel, or someone who did not say).
    pub protocol: u8,
}

impl Neighbour {
    pub fn managed(&self) -> bool {
        self.ext_flags & NTF_EXT_MANAGED != 0
    }

    /// Resolved: it has a link-layer address the kernel sends to.
    pub fn valid(&self) -> bool {
        self.state & nud::VALID != 0 && self.lladdr.is_some()
    }

    /// The state as `ip neigh` prints it.
    pub fn state_name(&self) -> &'static str {
        state_name(self.state)
    }

    /// The link-layer address as `ip neigh` prints it (`02:00:00:00:00:01`).
    pub fn mac(&self) -> Option<String> {
        self.lladdr.as_ref().map(|a| a.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
    }
}

pub fn state_name(state: u16) -> &'static str {
    match state {
        nud::INCOMPLETE => "INCOMPLETE",
        nud::REACHABLE => "REACHABLE",
        nud::STALE => "STALE",
        nud::DELAY => "DELAY",
        nud::PROBE => "PROBE",
        nud::FAILED => "FAILED",
        nud::NOARP => "NOARP",
        nud::PERMANENT => "PERMANENT",
        0 => "NONE",
        _ => "UNKNOWN",
    }
}

/// struct ndmsg: family, pad, pad, ifindex, state, flags, type.
fn ndmsg(family: u8, ifindex: u32, state: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = family;
    h[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    h[8..10].copy_from_slice(&state.to_ne_bytes());
    h
}

impl Netlink {
    /// The entry for `address` on interface `ifindex`, if there is one.
    pub fn neighbour(&self, ifindex: u32, address: IpAddr) -> io::Result<Option<Neighbour>> {
        let request = Request::new(RTM_GETNEIGH, 0, &ndmsg(family_of(address), ifindex, 0))
            .attr(NDA_DST, &address_bytes(address));
        match self.get(request) {
            Ok(reply) => Ok(parse_neighbour(&reply.payload)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every IPv4 and IPv6 neighbour entry (no proxy entries) that `keep` keeps.
    pub fn neighbours(&self, keep: impl Fn(&Neighbour) -> bool) -> io::Result<Vec<Neighbour>> {
        let replies = self.dump(|| Request::new(RTM_GETNEIGH, 0, &ndmsg(0, 0, 0)))?;
        Ok(replies
            .iter()
            .filter(|m| m.kind == RTM_NEWNEIGH)
            .filter_map(|m| parse_neighbour(&m.payload))
            .filter(|n| n.flags & NTF_PROXY == 0 && keep(n))
            .collect())
    }

    /// Adds (or with [`Write::CreateOrReplace`] turns an existing entry into) a managed entry
    /// marked with `protocol`: the kernel resolves it at once and keeps it resolved. Never use
    /// it on a permanent entry: the kernel would drop its permanence.
    pub fn add_managed_neighbour(
        &self,
        ifindex: u32,
        address: IpAddr,
        protocol: u8,
        write: Write,
    ) -> io::Result<()> {
        // The state is left to the kernel: managed entries start resolving (NUD_NONE here, as
        // `ip neigh add ... managed` sends it), existing ones keep their address.
        let request = Request::new(RTM_NEWNEIGH, write.flags(), &ndmsg(family_of(address), ifindex, 0))
            .attr(NDA_DST, &address_bytes(address))
            .attr(NDA_PROTOCOL, &[protocol])
            .attr(NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes());
        self.change(request)
    }

    /// Deletes the entry for `address` on interface `ifindex`.
    pub fn delete_neighbour(&self, ifindex: u32, address: IpAddr) -> io::Result<()> {
        let request = Request::new(RTM_DELNEIGH, 0, &ndmsg(family_of(address), ifindex, 0))
            .attr(NDA_DST, &address_bytes(address));
        self.change(request)
    }
}

fn parse_neighbour(payload: &[u8]) -> Option<Neighbour> {
    let h = payload.get(..12)?;
    let ifindex = u32_at(h, 4);
    let state = u16::from_ne_bytes([h[8], h[9]]);
    let flags = h[10];
    let (mut address, mut lladdr, mut protocol, mut ext_flags) = (None, None, 0, 0);
    for (attr, data) in attributes(&payload[12..]) {
        match attr {
            NDA_DST => address = parse_address(data),
            NDA_LLADDR if !data.is_empty() => lladdr = Some(data.to_vec()),
            NDA_PROTOCOL => protocol = data.first().copied().unwrap_or(0),
            NDA_FLAGS_EXT => ext_flags = u32_at(data, 0),
            _ => {}
        }
    }
    Some(Neighbour { ifindex, address: address?, lladdr, state, flags, ext_flags, protocol })
}
