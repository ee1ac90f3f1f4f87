pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Forwarding modes (`VipValue::mode`).
/// IPv4-in-IPv4 / IPv6-in-IPv6 to the backend, which decapsulates (the default).
pub const MODE_IPIP: u8 = 0;
/// Destination MAC rewrite only: backends on the same L2 segment with the VIP on `lo`.
pub const MODE_L2DSR: u8 = 1;

/// `VipValue::flags`: pick the backend by the client address only (client affinity): the
/// `source-hash` scheduler is Maglev with this flag.
pub const VIP_HASH_SOURCE_ONLY: u32 = 1 << 0;
/// `VipValue::flags`: the address entry of a VIP address (key: address, port 0, ICMP/ICMPv6). It
/// makes the balancer answer pings to the address and drop fragments sent to it.
pub const VIP_ADDRESS_ONLY: u32 = 1 << 1;

/// A virtual service: destination address, port and protocol of the packets it catches.
///
/// IPv4 addresses sit in the first four bytes of `addr`, the rest zero. `port` is in host byte
/// order; port 0 is the VIP's any-port entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

impl VipKey {
    pub const fn v4(addr: [u8; 4], port: u16, proto: u8) -> Self {
        Self { addr: crate::backend::v4_in_16(addr), port, proto, family: FAMILY_V4 }
    }

    pub const fn v6(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self { addr, port, proto, family: FAMILY_V6 }
    }
}

/// Schedulers (`VipValue::scheduler`): what picks a new flow's backend. Only a flow's first
/// packet asks; the flow table keeps every later one on the backend it got.
/// Weighted Maglev: the ring slot of the flow hash (of the 5-tuple, or of the client address
/// with `VIP_HASH_SOURCE_ONLY`).
pub const SCHED_MAGLEV: u8 = 0;
/// Weighted round robin: the next entry of the VIP's sequence in RR_SEQS (`rr_len` entries),
/// by a per-CPU cursor.
pub const SCHED_ROUND_ROBIN: u8 = 1;
/// Weighted least connections: of two ring picks, the one with fewer active connections
/// (ACTIVE_CONNS) per unit of weight (`BackendValue::weight`).
pub const SCHED_LEAST_CONN: u8 = 2;

/// What the data plane knows about a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipValue {
    /// Stable index chosen by the agent: keys VIP_STATS.
    pub id: u32,
    /// `VIP_*` bits.
    pub flags: u32,
    /// First slot of this VIP's ring in RINGS (ring number × ring stride).
    pub ring_offset: u32,
    /// Slots in this VIP's ring (prime, ≤ the stride).
    pub ring_size: u32,
    /// `MODE_*`.
    pub mode: u8,
    /// `SCHED_*`.
    pub scheduler: u8,
    /// Round robin: entries of this VIP's sequence in RR_SEQS (from `id × RR_SEQ_LEN`); 0 = no
    /// backend available (new flows are dropped).
    pub rr_len: u16,
}
const _: () = assert!(core::mem::size_of::<VipValue>() == 20);

/// VIP_BY_ID's value: a VIP by its id, for packets of known flows (which skip the VIPS lookup).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    pub vip: VipValue,
    /// Moved on by the agent whenever the id stops meaning the VIP its flows were recorded for
    /// (the VIP is removed, changes address, port or protocol, or the id is reused): flows
    /// recorded under another generation are void.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<VipSlot>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays without padding (sizes asserted above).
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipValue {}
    unsafe impl aya::Pod for super::VipSlot {}
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
