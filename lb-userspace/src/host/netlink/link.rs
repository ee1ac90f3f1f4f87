//! Interface names and indexes, in the calling thread's network namespace (the C library's
//! `if_nametoindex` and `if_indextoname`, which ask the kernel with an ioctl), and the XDP
//! programs attached to an interface (`RTM_GETLINK`, as `ip link` reads them).
use std::{
    ffi::{CStr, CString},
    io,
};

use super::{attributes, u32_at, Netlink, Request};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
/// struct ifinfomsg: family, pad, type, index, flags, change.
const IFINFOMSG_LEN: usize = 16;
const IFLA_MASTER: u16 = 10;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;

/// The ids of the XDP programs attached to an interface, by mode (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpPrograms {
    /// In the driver (native mode).
    pub driver: u32,
    /// In the generic path.
    pub generic: u32,
}

impl Netlink {
    /// The XDP programs attached to interface `ifindex` (one that does not exist: `ENODEV`).
    pub fn xdp_programs(&self, ifindex: u32) -> io::Result<XdpPrograms> {
        let link = self.link(ifindex)?;
        let mut programs = XdpPrograms::default();
        let nested = attributes(&link).filter(|(kind, _)| *kind == IFLA_XDP);
        for (_, xdp) in nested {
            for (kind, data) in attributes(xdp) {
                match kind {
                    IFLA_XDP_DRV_PROG_ID => programs.driver = u32_at(data, 0),
                    IFLA_XDP_SKB_PROG_ID => programs.generic = u32_at(data, 0),
                    _ => {}
                }
            }
        }
        Ok(programs)
    }

    /// The interface `ifindex` is a port of (a bridge's, a bond's), if any.
    pub fn master(&self, ifindex: u32) -> io::Result<Option<u32>> {
        let link = self.link(ifindex)?;
        let master =
            attributes(&link).find(|(kind, _)| *kind == IFLA_MASTER).map(|(_, data)| u32_at(data, 0));
        Ok(master)
    }

    /// Interface `ifindex`'s attributes (`RTM_GETLINK`).
    fn link(&self, ifindex: u32) -> io::Result<Vec<u8>> {
        let mut header = [0u8; IFINFOMSG_LEN];
        header[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        let reply = self.get(Request::new(RTM_GETLINK, 0, &header))?;
        if reply.kind != RTM_NEWLINK || reply.payload.len() < IFINFOMSG_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "RTM_GETLINK answered without a link"));
        }
        Ok(reply.payload[IFINFOMSG_LEN..].to_vec())
    }
}

/// The index of interface `name`, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string the call only reads.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The name of interface `index`, if it exists.
pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as the call requires.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Some(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}
