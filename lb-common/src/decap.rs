//! What the decap program (backend hosts) and its agent share.
use crate::{
    backend::v4_in_16,
    vip::{FAMILY_V4, FAMILY_V6},
};

/// The data of a DECAP_SOURCES key (an LPM trie): the family, then the address (IPv4 in the
/// first 4 bytes). With the family first, one trie holds both families: an address prefix of
/// `n` bits is a key prefix of `8 + n` bits ([`DecapSource::prefix_len`]), which always
/// matches the family byte in full, so an IPv4 prefix never matches an IPv6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapSource {
    pub family: u8,
    pub addr: [u8; 16],
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<DecapSource>() == 20);

impl DecapSource {
    /// Bits of an address of `family`: what a lookup matches.
    pub const fn address_bits(family: u8) -> u32 {
        if family == FAMILY_V4 {
            32
        } else {
            128
        }
    }

    /// The key prefix length of an address prefix of `bits` bits.
    pub const fn prefix_len(bits: u32) -> u32 {
        8 + bits
    }

    pub const fn v4(addr: [u8; 4]) -> Self {
        Self { family: FAMILY_V4, addr: v4_in_16(addr), _pad: [0; 3] }
    }

    pub const fn v6(addr: [u8; 16]) -> Self {
        Self { family: FAMILY_V6, addr, _pad: [0; 3] }
    }
}

#[cfg(feature = "user")]
// SAFETY: bytes only, no padding (size asserted above).
unsafe impl aya::Pod for DecapSource {}

#[cfg(feature = "user")]
impl From<core::net::IpAddr> for DecapSource {
    fn from(addr: core::net::IpAddr) -> Self {
        match addr {
            core::net::IpAddr::V4(a) => Self::v4(a.octets()),
            core::net::IpAddr::V6(a) => Self::v6(a.octets()),
        }
    }
}

/// DECAP_CONFIG's one value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    /// 1: accept tunnels only from outer sources in DECAP_SOURCES (others are dropped and
    /// counted `decap_refused`); 0: from any source (fresh maps: the default).
    pub check_sources: u32,
}
const _: () = assert!(core::mem::size_of::<DecapConfig>() == 4);

#[cfg(feature = "user")]
// SAFETY: one integer.
unsafe impl aya::Pod for DecapConfig {}
