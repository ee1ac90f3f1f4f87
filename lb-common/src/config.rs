/// Balancer-wide settings, the single entry of the CONFIG array, written by the agent.
///
/// Outer source of encapsulated packets: `src_v4`/`src_v6` with their lowest `*_entropy_bits`
/// bits replaced by bits of the flow hash. Backends' NICs spread received tunnels over queues by
/// the outer addresses (RSS); with a fixed source every tunnel from one balancer would land on
/// one queue. Replies go straight to clients (DSR), so those source addresses need no route back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigValue {
    pub src_v4: [u8; 4],
    pub src_v6: [u8; 16],
    /// Seed of the flow hash: the same on every balancer host behind one ECMP group.
    pub hash_seed: u32,
    /// 0..=16: how many low bits of the outer IPv4 source vary per flow.
    pub v4_entropy_bits: u8,
    /// 0..=16: how many low bits of the outer IPv6 source vary per flow.
    pub v6_entropy_bits: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<ConfigValue>() == 28);

#[cfg(feature = "user")]
// SAFETY: plain integers and byte arrays without padding (size asserted above).
unsafe impl aya::Pod for ConfigValue {}
