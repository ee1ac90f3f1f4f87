use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, FAMILY_V6};
use network_types::ip::Ipv6Hdr;

use super::{fits, ptr_at, Whole, L3};

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTS: u8 = 60;
/// The fragment header's offset (8-byte units, shifted by 3) and more-fragments flag.
const FRAGMENT_OFFSET: u16 = 0xfff8;
const MORE_FRAGMENTS: u16 = 0x0001;
/// Where L4 may start at the latest: the end of a 4 KiB frame (an XDP frame fits in a page).
const MAX_L4_OFFSET: usize = 0xfff;
/// More extension headers than this and the packet goes to the stack: real traffic has one or two.
const MAX_EXT_HEADERS: usize = 4;

/// Generic extension header prefix: next header and length.
#[repr(C)]
struct ExtHdr {
    next_hdr: u8,
    len: u8,
}

/// Parses an IPv6 header at `offset` and skips the usual extension headers. A fragment header
/// of a real fragment ends the walk: the packet is a fragment.
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
        // SAFETY: ptr_at checked the 8 bytes are inside the frame.
        let (next, len, field) =
            unsafe { ((*ext).next_hdr, (*ext).len as usize, *(ext as *const [u8; 2]).add(1)) };
        // A fragment header with an offset or more to come ends the walk. With neither, it is
        // an atomic fragment (RFC 6946): a whole packet that a translator or an old stack sent
        // with a fragment header, whose ports follow it.
        if proto == FRAGMENT && u16::from_be_bytes(field) & (FRAGMENT_OFFSET | MORE_FRAGMENTS) != 0 {
            fragment = true;
            proto = next;
            break;
        }
        l4_offset += match proto {
            AUTH => (len + 2) * 4,
            FRAGMENT => 8,
            _ => (len + 1) * 8,
        };
        if l4_offset > MAX_L4_OFFSET {
            return Err(Counter::PassMalformed);
        }
        // One range for every kind of header (the mask changes no value below it): the
        // verifier then walks what follows once for all chains of headers, not once for each,
        // which took it past its million instructions.
        l4_offset = crate::opaque::opaque(l4_offset as u64) as usize & MAX_L4_OFFSET;
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
