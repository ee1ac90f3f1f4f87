//! IPv4-in-IPv4 and IPv6-in-IPv6: an outer header pushed between Ethernet and the untouched
//! inner packet.
use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{ConfigValue, Counter, FAMILY_V4};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    checksum,
    parse::{ptr_at, ptr_at_mut, v4_in_16, ETH_LEN},
};

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const OUTER_TTL: u8 = 64;
const DONT_FRAGMENT: u8 = 0x40;

/// The outer source: the configured address with its lowest `*_entropy_bits` bits taken from
/// the flow hash, so that backends' RSS spreads tunnels over their receive queues.
#[inline(always)]
pub fn outer_source(family: u8, cfg: &ConfigValue, hash: u32) -> [u8; 16] {
    let bits = if family == FAMILY_V4 { cfg.v4_entropy_bits } else { cfg.v6_entropy_bits };
    let bits = if bits > 16 { 16 } else { bits };
    let mask = (1u32 << bits) - 1;
    let mix = |base: [u8; 4]| ((u32::from_be_bytes(base) & !mask) | (hash & mask)).to_be_bytes();
    if family == FAMILY_V4 {
        return v4_in_16(mix(cfg.src_v4));
    }
    let mut out = cfg.src_v6;
    let low = mix([out[12], out[13], out[14], out[15]]);
    out[12..].copy_from_slice(&low);
    out
}

/// Pushes an outer IPv4 header from `src` to `dst` in front of the IPv4 packet at ETH_LEN.
/// The Ethernet header is left for the caller to write.
///
/// The outer header keeps the inner one's DF bit. Its ID is the inner ID mixed with the flow
/// hash: an outer packet that may be fragmented on the way needs an ID that its neighbours in
/// time from the same balancer address do not share, and the inner ID already counts up per
/// flow at its sender; the hash keeps flows of different clients apart.
#[inline(always)]
pub fn push_ipv4(ctx: &XdpContext, src: &[u8; 16], dst: &[u8; 16], hash: u32) -> Result<(), Counter> {
    let inner: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: ptr_at checked bounds.
    let (tos, inner_len, df, inner_id) = unsafe {
        (
            (*inner).tos,
            u16::from_be_bytes((*inner).tot_len),
            (*inner).frags[0] & DONT_FRAGMENT,
            u16::from_be_bytes((*inner).id),
        )
    };
    let id = inner_id ^ (hash as u16);
    let total = inner_len.checked_add(Ipv4Hdr::LEN as u16).ok_or(Counter::DropEncapFailed)?;
    grow(ctx, Ipv4Hdr::LEN)?;
    let outer: *mut Ipv4Hdr = ptr_at_mut(ctx, ETH_LEN).map_err(|_| Counter::DropEncapFailed)?;
    // SAFETY: ptr_at_mut checked bounds. Written in place: the BPF stack is too small for copies.
    unsafe {
        (*outer).vihl = 0x45;
        (*outer).tos = tos;
        (*outer).tot_len = total.to_be_bytes();
        (*outer).id = id.to_be_bytes();
        (*outer).frags = [df, 0];
        (*outer).ttl = OUTER_TTL;
        (*outer).proto = IPPROTO_IPIP;
        (*outer).check = [0, 0];
        (*outer).src_addr = [src[0], src[1], src[2], src[3]];
        (*outer).dst_addr = [dst[0], dst[1], dst[2], dst[3]];
        (*outer).check = checksum::ipv4_header(&*(outer as *const [u8; 20])).to_be_bytes();
    }
    Ok(())
}

/// Pushes an outer IPv6 header in front of the IPv6 packet at ETH_LEN. The flow label carries
/// the flow hash: routers and NICs that hash on it spread tunnels too.
#[inline(always)]
pub fn push_ipv6(ctx: &XdpContext, src: &[u8; 16], dst: &[u8; 16], hash: u32) -> Result<(), Counter> {
    let inner: *const Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: ptr_at checked bounds.
    let (vcf, inner_payload) = unsafe { ((*inner).vcf, u16::from_be_bytes((*inner).payload_len)) };
    let payload = inner_payload.checked_add(Ipv6Hdr::LEN as u16).ok_or(Counter::DropEncapFailed)?;
    grow(ctx, Ipv6Hdr::LEN)?;
    let class = (vcf[0] << 4) | (vcf[1] >> 4);
    let label = hash & 0x000f_ffff;
    let outer: *mut Ipv6Hdr = ptr_at_mut(ctx, ETH_LEN).map_err(|_| Counter::DropEncapFailed)?;
    // SAFETY: ptr_at_mut checked bounds.
    unsafe {
        (*outer).vcf =
            [0x60 | (class >> 4), (class << 4) | (label >> 16) as u8, (label >> 8) as u8, label as u8];
        (*outer).payload_len = payload.to_be_bytes();
        (*outer).next_hdr = IPPROTO_IPV6;
        (*outer).hop_limit = OUTER_TTL;
        (*outer).src_addr = *src;
        (*outer).dst_addr = *dst;
    }
    Ok(())
}

/// Makes room for `len` more bytes in front of the frame.
#[inline(always)]
fn grow(ctx: &XdpContext, len: usize) -> Result<(), Counter> {
    // SAFETY: the helper only moves the frame's start within the driver-provided headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(len as i32)) } != 0 {
        return Err(Counter::DropEncapFailed);
    }
    Ok(())
}
