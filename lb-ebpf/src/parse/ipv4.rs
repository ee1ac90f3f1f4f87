use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, FAMILY_V4};
use network_types::ip::Ipv4Hdr;

use super::{fits, ptr_at, Whole, L3};

const MORE_FRAGMENTS: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// Parses an IPv4 header at `offset`, honouring IHL (options are skipped, not interpreted).
#[inline(always)]
pub fn parse(ctx: &XdpContext, offset: usize, whole: Whole) -> Result<L3, Counter> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, offset)?;
    // SAFETY: ptr_at checked that the whole fixed header is inside the frame.
    let ip = unsafe { &*ip };
    let header_len = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Err(Counter::PassMalformed);
    }
    let total = u16::from_be_bytes(ip.tot_len) as usize;
    if total < header_len || (whole == Whole::Yes && !fits(ctx, offset, total)) {
        return Err(Counter::PassMalformed);
    }
    let frags = u16::from_be_bytes(ip.frags);
    let src = super::v4_in_16(ip.src_addr);
    let dst = super::v4_in_16(ip.dst_addr);
    Ok(L3 {
        family: FAMILY_V4,
        proto: ip.proto,
        fragment: frags & (MORE_FRAGMENTS | OFFSET_MASK) != 0,
        src,
        dst,
        l4_offset: offset + header_len,
        end: offset + total,
    })
}
