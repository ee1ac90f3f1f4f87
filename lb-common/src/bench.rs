//! What the bench programs (lb-ebpf's `bench` feature) and the benches (lb-bench) share. Nothing
//! in the product uses it: the object lbd embeds has neither these programs nor their maps.

/// Largest template frame of the traffic generator.
pub const MAX_FRAME: usize = 128;

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

/// Traffic shapes of the field generator (`bench_flowgen`): how flow number `f` becomes a
/// client's source address (in 198.18.0.0/15) and port. Within a shape distinct flows have
/// distinct sources, and no two shapes share one: a flow of one shape never hits another's.
pub mod shape {
    /// Random 5-tuples: a bijective mix of `f`, spread over the /15 and ports 32768-65535.
    pub const RANDOM: u32 = 0;
    /// Clients in 198.19.0.0/16 with sequential addresses, each client's ports sequential
    /// from 1024.
    pub const CLIENTS_16: u32 = 1;
    /// A NAT gateway: 198.18.0.1 with 31744 sequential source ports (1024-32767), then the
    /// next address.
    pub const NAT: u32 = 2;
    /// Many clients (198.19.0.0/16) on one source port (20000), the next port after 65536.
    pub const ONE_PORT: u32 = 3;
    pub const ALL: [u32; 4] = [RANDOM, CLIENTS_16, NAT, ONE_PORT];

    /// The shape's name in bench output.
    pub fn name(shape: u32) -> &'static str {
        match shape {
            RANDOM => "random",
            CLIENTS_16 => "one /16, sequential",
            NAT => "NAT, one address",
            ONE_PORT => "many clients, one port",
            _ => "unknown",
        }
    }
}

/// Flow `flow`'s source in `shape`: (what is added to the low 32 bits of the source address,
/// the source port). Shared by the generator and the benches so that both build the same
/// frames.
#[inline(always)]
pub fn flow_source(shape: u32, flow: u32) -> (u32, u16) {
    match shape {
        shape::CLIENTS_16 => (0x1_0000 + (flow & 0xffff), 1024 + (flow >> 16) as u16),
        shape::NAT => (1 + flow / 31744, 1024 + (flow % 31744) as u16),
        shape::ONE_PORT => (0x1_0000 + (flow & 0xffff), 20000 + (flow >> 16) as u16),
        _ => {
            let x = mix32(flow);
            (x >> 15, 0x8000 | (x & 0x7fff) as u16)
        }
    }
}

/// A bijection of u32 (lowbias32): distinct flows stay distinct, neighbours land far apart.
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// What the generators (`bench_gen`, live frames; `bench_flowgen`, chained) send:
/// BENCH_FLOWGEN's one value.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlowGen {
    /// Frame length: a multiple of 4, at most MAX_FRAME.
    pub len: u32,
    /// Flows cycled through (0 counts as 1).
    pub flows: u32,
    /// Packet `seq` is of flow `((seq >> repeat_shift) * cpus + cpu % cpus) % flows`: each
    /// flow sent 2^repeat_shift times in a row (2 records a flow), and CPUs (cpus > 1) sending
    /// disjoint flows, as RSS would spread them.
    pub repeat_shift: u32,
    pub cpus: u32,
    /// Added to the flow number (before the shape): blocks of flows never sent before.
    pub first: u32,
    /// One of [`shape`].
    pub shape: u32,
    /// Offsets of the source address's low 32 bits (zero in the template), the source port
    /// (zero in the template), the IPv4 header checksum (0 for IPv6) and the L4 checksum.
    pub addr_off: u32,
    pub port_off: u32,
    pub ip_csum_off: u32,
    pub l4_csum_off: u32,
    /// The source address's low 32 bits that the shape's offsets are added to.
    pub addr_base: u32,
    /// UDP: a checksum that comes out 0 is sent as 0xffff (0 means none).
    pub udp: u32,
    /// Flow 0's frame with zero in both fields and checksums to match.
    pub frame: [u8; MAX_FRAME],
}
const _: () = assert!(core::mem::size_of::<FlowGen>() == 176);

#[cfg(feature = "user")]
// SAFETY: integers and a byte array, no padding (size asserted above).
unsafe impl aya::Pod for FlowGen {}

impl FlowGen {
    /// The flow number of packet `seq` sent on `cpu`.
    #[inline(always)]
    pub fn flow(&self, seq: u64, cpu: u32) -> u32 {
        let cpus = if self.cpus == 0 { 1 } else { self.cpus as u64 };
        let n = (seq >> (self.repeat_shift & 7)) * cpus + (cpu as u64 % cpus);
        ((n % self.flows.max(1) as u64) as u32).wrapping_add(self.first)
    }
}

/// Names of the bench programs' maps.
pub mod map_names {
    /// Packets generated, per CPU: the sequence numbers flows are numbered from.
    pub const GEN_SEQ: &str = "BENCH_GEN_SEQ";
    /// Frames the sink received, per CPU.
    pub const SINK: &str = "BENCH_SINK";
    /// `bench_forward`'s addresses ([`super::ForwardMacs`]).
    pub const FORWARD: &str = "BENCH_FORWARD";
    /// The generators' template ([`super::FlowGen`]).
    pub const FLOWGEN: &str = "BENCH_FLOWGEN";
    /// Where the field generator hands each frame on (a program array of one).
    pub const CHAIN: &str = "BENCH_CHAIN";
    pub const ALL: [&str; 5] = [GEN_SEQ, SINK, FORWARD, FLOWGEN, CHAIN];
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::HashSet;

    use super::{flow_source, shape};

    /// The bench's checks count on it: a flow of one shape never lands on another flow's entry,
    /// of its own shape or any other, and every source stays in 198.18.0.0/15.
    #[test]
    fn shapes_give_distinct_sources_inside_the_benchmarking_range() {
        let flows = (0..300_000u32).chain((1 << 22)..(1 << 22) + 300_000).chain([(1 << 22) * 2]);
        let mut seen = HashSet::new();
        for s in shape::ALL {
            for f in flows.clone() {
                let (offset, port) = flow_source(s, f);
                assert!(offset < 1 << 17, "{}: flow {f} leaves the /15 (offset {offset:#x})", shape::name(s));
                assert!(port >= 1024, "{}: flow {f} has port {port}", shape::name(s));
                assert!(seen.insert((offset, port)), "{}: flow {f} shares its source", shape::name(s));
            }
        }
    }
}
