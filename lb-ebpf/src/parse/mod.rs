//! Header parsing. Every read is bounds-checked against the frame; anything short or
//! inconsistent becomes a named pass reason, never a crash or a forward.
mod eth;
mod ipv4;
mod ipv6;
mod l4;

use aya_ebpf::programs::XdpContext;
pub use eth::{ether_type, ETH_P_IP, ETH_P_IPV6, LEN as ETH_LEN};
pub use l4::TcpKind;
use lb_common::{Counter, FlowKey};

/// What the balancer needs to know about a packet.
pub struct Packet {
    /// Addresses, ports (0 for protocols without ports and for fragments), L4 protocol (after
    /// IPv6 extension headers), family: the flow-table key as it stands.
    pub key: FlowKey,
    /// A fragment: no L4 header was parsed.
    pub fragment: bool,
    /// What its TCP flags make it (`TcpKind`; `OTHER` for other protocols and fragments).
    pub tcp: u8,
    pub l4_offset: usize,
    /// Offset just past the IP packet (frames may carry padding after it).
    pub end: usize,
}

/// What the IP header says: addresses, protocol, where L4 starts and the packet ends, whether
/// it is a fragment.
pub struct L3 {
    pub family: u8,
    pub proto: u8,
    pub fragment: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub l4_offset: usize,
    /// Offset just past the IP packet, by its length field. A real packet must fit in the frame
    /// (a cut one is malformed); a packet quoted in an ICMP error is cut by design.
    pub end: usize,
}

/// Whether a parsed IP header's length must fit in the frame.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Whole {
    /// A packet as received: its length must fit in the frame.
    Yes,
    /// A packet quoted in an ICMP error: only its headers are there.
    Quoted,
}

// Inlined: as a BPF subprogram (it would be one once two programs call it) it takes packet
// pointers as arguments, which the verifier refuses.
#[inline(always)]
pub fn packet(ctx: &XdpContext) -> Result<Packet, Counter> {
    let l3 = l3(ctx)?;
    let (sport, dport, tcp) =
        if l3.fragment { (0, 0, TcpKind::OTHER) } else { l4::ports(ctx, l3.l4_offset, l3.end, l3.proto)? };
    Ok(Packet {
        key: FlowKey {
            src: l3.src,
            dst: l3.dst,
            sport,
            dport,
            proto: l3.proto,
            family: l3.family,
            _pad: [0; 2],
        },
        fragment: l3.fragment,
        tcp,
        l4_offset: l3.l4_offset,
        end: l3.end,
    })
}

/// Whether the frame's destination MAC address is a group's (broadcast or multicast: its first
/// byte's lowest bit).
#[inline(always)]
pub fn to_link_group(ctx: &XdpContext) -> bool {
    // (The whole header: a one-byte check compiles to a compare the verifier cannot read.)
    // SAFETY: ptr_at checked bounds.
    ptr_at::<network_types::eth::EthHdr>(ctx, 0).is_ok_and(|eth| unsafe { (*eth).dst_addr[0] } & 1 != 0)
}

/// The frame's IP header (IPv4 or IPv6, extension headers skipped).
#[inline(always)]
pub fn l3(ctx: &XdpContext) -> Result<L3, Counter> {
    match eth::ether_type(ctx)? {
        ETH_P_IP => ipv4::parse(ctx, ETH_LEN, Whole::Yes),
        ETH_P_IPV6 => ipv6::parse(ctx, ETH_LEN, Whole::Yes),
        _ => Err(Counter::PassNotIp),
    }
}

/// An IP header quoted inside an ICMP error at `offset`: the same checks as a real one.
#[inline(always)]
pub fn quoted_l3(ctx: &XdpContext, offset: usize, family: u8) -> Result<L3, Counter> {
    if family == lb_common::FAMILY_V4 {
        ipv4::parse(ctx, offset, Whole::Quoted)
    } else {
        ipv6::parse(ctx, offset, Whole::Quoted)
    }
}

/// Source and destination port of a quoted TCP/UDP header (ICMP quotes only its first 8 bytes).
#[inline(always)]
pub fn quoted_ports(ctx: &XdpContext, offset: usize) -> Result<(u16, u16), Counter> {
    let ports: *const [u8; 4] = ptr_at(ctx, offset)?;
    let p = unsafe { *ports };
    Ok((u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
}

/// An IPv4 address as the 16-byte form of keys: its 4 bytes, then zeros. Built as two 64-bit
/// words: a zeroed byte array would compile to a call to aya's byte-by-byte `memset`.
#[inline(always)]
pub fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    let low = u64::from_ne_bytes([a[0], a[1], a[2], a[3], 0, 0, 0, 0]);
    // SAFETY: two u64s and 16 bytes have the same size, and any bytes are a valid [u8; 16].
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([low, 0]) }
}

/// Whether `len` bytes from `offset` lie inside the frame.
#[inline(always)]
pub fn fits(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    ctx.data() + offset + len <= ctx.data_end()
}

/// A pointer to a `T` at `offset` in the frame, if the whole `T` lies inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Counter> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Counter::PassMalformed);
    }
    Ok((start + offset) as *const T)
}

/// A writable pointer, same check as [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Counter> {
    ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
}
