/// A connection as the client sends it: the flow table's key, and the input of the flow hash.
/// IPv4 addresses sit in the first four bytes, the rest zero. Ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// The flow table's value: the backend a connection is pinned to, and the flow's hash (so a
/// packet of a known flow needs no hashing: the tunnel source's entropy bits come from it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub backend: u32,
    pub hash: u32,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain integers and byte arrays without padding (sizes asserted above).
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
}
