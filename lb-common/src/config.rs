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
    /// VIP id + 1 whose forwarded packets are copied to CAPTURE (before and after the
    /// rewrite); 0 = no capture. Read from the entry the fast path loads anyway: no extra cost.
    pub capture_vip: u32,
    /// What the data plane caches per CPU stays valid while this matches the generation it
    /// was cached under: next hops (MACs, egress interface) from `bpf_fib_lookup`. The agent
    /// moves it on every second, so a changed route or neighbour is picked up within a second,
    /// and at once after every change. 0 = no caching: every packet asks the FIB.
    pub cache_generation: u32,
}
const _: () = assert!(core::mem::size_of::<ConfigValue>() == 36);

/// Capture stages (`CaptureMeta::stage`).
pub const CAPTURE_BEFORE: u32 = 0;
pub const CAPTURE_AFTER: u32 = 1;

/// Header of a captured packet in the CAPTURE perf buffer; `len` packet bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureMeta {
    pub stage: u32,
    pub vip: u32,
    /// Bytes of the packet that follow (the whole frame, up to the capture limit).
    pub len: u32,
    /// The whole frame's length (more than `len` for a frame over the limit).
    pub wire_len: u32,
    /// When the program saw the frame: CLOCK_MONOTONIC, in nanoseconds.
    pub at_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CaptureMeta>() == 24);

/// Longest frame prefix a capture copies.
pub const CAPTURE_SNAPLEN: u32 = 2048;

#[cfg(feature = "user")]
// SAFETY: plain integers and byte arrays without padding (size asserted above).
unsafe impl aya::Pod for ConfigValue {}
