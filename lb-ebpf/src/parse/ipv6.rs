use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, FAMILY_V6};
use network_types::ip::Ipv6Hdr;

use super::{fits, ptr_at, Whole, L3};

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTS: u8 = 60;
/// More extension headers than this and the packet goes to the stack: real traffic has one or two.
const MAX_EXT_HEADERS: usize = 4;

/// Generic extension header prefix: next header and length.
#[repr(C)]
struct ExtHdr {
    next_hdr: u8,
    len: u8,
}

/// Parses an IPv6 header at `offset` and skips the usual extension headers. A fragment header
/// ends the walk: the packet is a fragment.
#[inline(always)]
pub fn parse(ctx: &XdpContext, offset: usize, whole: Whole) -> Result<L3, Counter> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, offset)?;
    // SAFETY: ptr_at checked that the whole fixed header is inside the frame.
    let ip = unsafe { &*ip };
    let end = offset + Ipv6Hdr::LEN + u16::from_be_bytes(ip.payload_len) as usize;
    if ip.vcf[0] >> 4 != 6 || (whole == Whole::Yes && !fits(ctx, offset, end - offset)) {
        return Err(Counter::PassMalformed);
    }
    let mut proto = ip.next_hdr;
    let mut l4_offset = offset + Ipv6Hdr::LEN;
    let mut fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        let ext: *const ExtHdr = match proto {
            // Every extension header is at least 8 bytes long.
            HOP_BY_HOP | ROUTING | DEST_OPTS | AUTH | FRAGMENT => {
                ptr_at::<[u8; 8]>(ctx, l4_offset)? as *const ExtHdr
            }
            _ => break,
        };
        // SAFETY: ptr_at checked the two bytes are inside the frame.
        let (next, len) = unsafe { ((*ext).next_hdr, (*ext).len as usize) };
        if proto == FRAGMENT {
            fragment = true;
            proto = next;
            break;
        }
        l4_offset += if proto == AUTH { (len + 2) * 4 } else { (len + 1) * 8 };
        proto = next;
    }
    if !fragment && matches!(proto, HOP_BY_HOP | ROUTING | DEST_OPTS | AUTH | FRAGMENT) {
        return Err(Counter::PassMalformed);
    }
    if whole == Whole::Yes && l4_offset > end {
        return Err(Counter::PassMalformed);
    }
    Ok(L3 { family: FAMILY_V6, proto, fragment, src: ip.src_addr, dst: ip.dst_addr, l4_offset, end })
}
