//! What the bench programs (lb-ebpf's `bench` feature) and the benches (lb-bench) share. Nothing
//! in the product uses it: the object lbd embeds has neither these programs nor their maps.

/// Largest template frame of the traffic generator.
pub const MAX_FRAME: usize = 128;

/// What the generator (`bench_gen`) sends: BENCH_GEN_CONFIG's one value.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GenConfig {
    /// Frame length: a multiple of 4, at most MAX_FRAME, and the test run's frame length.
    pub len: u32,
    /// Flow number = packet sequence number modulo `flows`; 0: no modulo, each packet a new flow.
    pub flows: u32,
    /// Offset of the last 16 bits of the source address, set to 1 + (flow >> 14) % 32768.
    pub addr_off: u32,
    /// Offset of the source port, set to 1024 + flow % 16384.
    pub port_off: u32,
    /// Offset of the IPv4 header checksum; 0 for IPv6.
    pub ip_csum_off: u32,
    /// Offset of the TCP or UDP checksum, which covers both fields above.
    pub l4_csum_off: u32,
    /// UDP: a checksum of 0 is sent as 0xffff.
    pub udp: u32,
    pub _pad: u32,
    /// The frame for flow 0 with zero in both fields and checksums to match.
    pub frame: [u8; MAX_FRAME],
}
const _: () = assert!(core::mem::size_of::<GenConfig>() == 160);

#[cfg(feature = "user")]
// SAFETY: integers and a byte array, no padding (size asserted above).
unsafe impl aya::Pod for GenConfig {}

/// `bench_forward`'s Ethernet addresses: BENCH_FORWARD's one value. All zero: pass everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardMacs {
    /// Where the frames go (the backend's address).
    pub to: [u8; 6],
    /// The hop's own address: the frames it takes are those sent to it, and it sends from it.
    pub own: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<ForwardMacs>() == 12);

#[cfg(feature = "user")]
// SAFETY: bytes only, no padding (size asserted above).
unsafe impl aya::Pod for ForwardMacs {}

/// Names of the bench programs' maps.
pub mod map_names {
    /// The generator's template ([`super::GenConfig`]).
    pub const GEN_CONFIG: &str = "BENCH_GEN_CONFIG";
    /// Packets generated, per CPU: the sequence numbers flows are numbered from.
    pub const GEN_SEQ: &str = "BENCH_GEN_SEQ";
    /// Frames the sink received, per CPU.
    pub const SINK: &str = "BENCH_SINK";
    /// `bench_forward`'s addresses ([`super::ForwardMacs`]).
    pub const FORWARD: &str = "BENCH_FORWARD";
    pub const ALL: [&str; 4] = [GEN_CONFIG, GEN_SEQ, SINK, FORWARD];
}
