pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A virtual service: destination address, port and protocol of the packets it catches.
///
/// IPv4 addresses sit in the first four bytes of `addr`, the rest zero. `port` is in host byte
/// order; port 0 is the VIP's any-port entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

impl VipKey {
    pub const fn v4(addr: [u8; 4], port: u16, proto: u8) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self { addr: a, port, proto, family: FAMILY_V4 }
    }

    pub const fn v6(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self { addr, port, proto, family: FAMILY_V6 }
    }
}

/// What the data plane knows about a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipValue {
    /// Stable index of the VIP, chosen by the agent; keys the per-VIP counters and ring.
    pub id: u32,
    /// Per-VIP option bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<VipValue>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays without padding (sizes asserted above).
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipValue {}
}

#[cfg(feature = "user")]
impl From<(core::net::IpAddr, u16, u8)> for VipKey {
    fn from((addr, port, proto): (core::net::IpAddr, u16, u8)) -> Self {
        match addr {
            core::net::IpAddr::V4(a) => Self::v4(a.octets(), port, proto),
            core::net::IpAddr::V6(a) => Self::v6(a.octets(), port, proto),
        }
    }
}
