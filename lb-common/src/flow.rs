/// A connection as the client sends it: the flow table's key, and the input of the flow hash.
/// IPv4 addresses sit in the first four bytes, the rest zero. Ports in host byte order.
/// 8-byte aligned (no padding: 40 bytes), so that the data plane compares and hashes it as five
/// 64-bit words.
#[repr(C, align(8))]
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

/// The flow table's value: the backend a connection is pinned to, the flow's hash (so a packet
/// of a known flow needs no hashing: the tunnel source's entropy bits come from it), and its VIP
/// (so a packet of a known flow needs no VIP lookup either). Both tables (FLOWS and
/// PENDING_FLOWS) hold it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub backend: u32,
    pub hash: u32,
    /// `VipValue::id` of the VIP the flow belongs to.
    pub vip: u32,
    /// `VipSlot::generation` of that VIP when the flow was recorded: the flow is void once the
    /// VIP is removed or its id goes to another VIP (the agent moves the generation on).
    pub vip_generation: u32,
    /// `BackendValue::generation` of `backend` when the flow was recorded.
    pub backend_generation: u32,
    /// `VipPolicy::generation` of the flow's VIP when one of its packets last passed the policy
    /// checks (lb-ebpf/src/policy.rs); 0 for none since it was recorded. A confirmed flow whose
    /// stamp is its VIP's current generation skips the checks: any change of the VIP's lists,
    /// the global deny list or the VIP's limits moves the generation on.
    pub policy_generation: u32,
    /// `FLOW_*` bits. A word of its own: the data plane clears bits with an atomic fetch-and
    /// (64-bit: the BPF target has no 32-bit atomics in `core`), so that a flow is uncounted
    /// exactly once.
    pub flags: u64,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 32);

/// `FlowValue::flags`: an open TCP connection of a `least-conn` VIP, counted in its backend's
/// ACTIVE_CONNS entry; cleared (and the count decremented) by the first FIN or RST the client
/// sends.
pub const FLOW_COUNTED: u64 = 1 << 0;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain integers and byte arrays without padding (sizes asserted above).
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
}
