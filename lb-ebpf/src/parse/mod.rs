//! Header parsing. Every read is bounds-checked against the frame; anything short or
//! inconsistent becomes a named pass reason, never a crash or a forward.
mod eth;
mod ipv4;
mod ipv6;
mod l4;

use aya_ebpf::programs::XdpContext;
use lb_common::Counter;

/// What the balancer needs to know about a packet.
pub struct Packet {
    pub family: u8,
    /// L4 protocol number (after IPv6 extension headers).
    pub proto: u8,
    pub dst: [u8; 16],
    /// Host byte order; 0 for protocols without ports.
    pub dport: u16,
}

/// Where the IP header says the L4 header starts, and which protocol it is.
pub struct L3 {
    pub family: u8,
    pub proto: u8,
    pub dst: [u8; 16],
    pub l4_offset: usize,
}

pub fn packet(ctx: &XdpContext) -> Result<Packet, Counter> {
    let l3 = match eth::ether_type(ctx)? {
        eth::ETH_P_IP => ipv4::parse(ctx, eth::LEN)?,
        eth::ETH_P_IPV6 => ipv6::parse(ctx, eth::LEN)?,
        _ => return Err(Counter::PassNotIp),
    };
    let (_sport, dport) = l4::ports(ctx, l3.l4_offset, l3.proto)?;
    Ok(Packet { family: l3.family, proto: l3.proto, dst: l3.dst, dport })
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
