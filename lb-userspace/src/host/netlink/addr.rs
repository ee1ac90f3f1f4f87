//! Interface addresses (`RTM_*ADDR`), as `ip address` reads and writes them.
use std::{io, net::IpAddr};

use super::{address_bytes, attributes, family_of, parse_address, Netlink, Request, Write};

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
/// No duplicate address detection: the address is usable at once.
const IFA_F_NODAD: u32 = 0x02;

/// An address of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    pub ifindex: u32,
    pub address: IpAddr,
    pub prefix_len: u8,
}

/// struct ifaddrmsg: family, prefixlen, flags, scope (0: global), index.
fn ifaddrmsg(family: u8, prefix_len: u8, ifindex: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = family;
    h[1] = prefix_len;
    h[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    h
}

impl Netlink {
    /// Every address of every interface (`ip address`).
    pub fn addresses(&self) -> io::Result<Vec<Address>> {
        let replies = self.dump(|| Request::new(RTM_GETADDR, 0, &ifaddrmsg(0, 0, 0)))?;
        Ok(replies
            .iter()
            .filter(|m| m.kind == RTM_NEWADDR)
            .filter_map(|m| parse_address_message(&m.payload))
            .collect())
    }

    /// The addresses of interface `ifindex`.
    pub fn interface_addresses(&self, ifindex: u32) -> io::Result<Vec<Address>> {
        Ok(self.addresses()?.into_iter().filter(|a| a.ifindex == ifindex).collect())
    }

    /// Adds `address/prefix_len` to interface `ifindex` (scope global, no duplicate address
    /// detection). An address already there is an error of kind `AlreadyExists`.
    pub fn add_address(&self, ifindex: u32, address: IpAddr, prefix_len: u8) -> io::Result<()> {
        let bytes = address_bytes(address);
        let request = Request::new(
            RTM_NEWADDR,
            Write::Create.flags(),
            &ifaddrmsg(family_of(address), prefix_len, ifindex),
        )
        .attr(IFA_LOCAL, &bytes)
        .attr(IFA_ADDRESS, &bytes)
        .attr(IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
        self.change(request)
    }

    /// Removes `address/prefix_len` from interface `ifindex`.
    pub fn delete_address(&self, ifindex: u32, address: IpAddr, prefix_len: u8) -> io::Result<()> {
        let bytes = address_bytes(address);
        let request = Request::new(RTM_DELADDR, 0, &ifaddrmsg(family_of(address), prefix_len, ifindex))
            .attr(IFA_LOCAL, &bytes)
            .attr(IFA_ADDRESS, &bytes);
        self.change(request)
    }
}

fn parse_address_message(payload: &[u8]) -> Option<Address> {
    let h = payload.get(..8)?;
    let prefix_len = h[1];
    let ifindex = u32::from_ne_bytes(h[4..8].try_into().ok()?);
    let (mut local, mut address) = (None, None);
    for (attr, data) in attributes(&payload[8..]) {
        match attr {
            IFA_LOCAL => local = parse_address(data),
            IFA_ADDRESS => address = parse_address(data),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on point-to-point
    // links. IPv6 sends only IFA_ADDRESS.
    Some(Address { ifindex, address: local.or(address)?, prefix_len })
}
