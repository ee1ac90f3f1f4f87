//! Backend side of `ipip` mode: strips the outer header of tunnels addressed to this host and
//! passes the inner packet to the stack, where the VIP is bound to `lo`.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::Counter;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    maps::DECAP_ADDRS,
    parse::{ptr_at, ptr_at_mut, ETH_LEN, ETH_P_IP, ETH_P_IPV6},
    stats,
};

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;

pub fn run(ctx: &XdpContext) -> u32 {
    if let Some(outer_len) = tunnel_header_len(ctx) {
        if strip(ctx, outer_len).is_ok() {
            stats::count(Counter::Decapsulated);
        }
    }
    xdp_action::XDP_PASS
}

/// Length of the outer header if this is a same-family tunnel addressed to this host.
#[inline(always)]
fn tunnel_header_len(ctx: &XdpContext) -> Option<usize> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok()?;
    let mut dst = [0u8; 16];
    // SAFETY: every pointer below was bounds-checked by ptr_at.
    let len = match u16::from_be(unsafe { (*eth).ether_type }) {
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN).ok()?;
            let ip = unsafe { &*ip };
            let len = ((ip.vihl & 0x0f) as usize) * 4;
            if ip.vihl >> 4 != 4 || len < Ipv4Hdr::LEN || ip.proto != IPPROTO_IPIP {
                return None;
            }
            dst[..4].copy_from_slice(&ip.dst_addr);
            len
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_LEN).ok()?;
            let ip = unsafe { &*ip };
            if ip.next_hdr != IPPROTO_IPV6 {
                return None;
            }
            dst = ip.dst_addr;
            Ipv6Hdr::LEN
        }
        _ => return None,
    };
    DECAP_ADDRS.get_ptr(&dst).map(|_| len)
}

/// Moves the Ethernet header forward over the outer IP header and drops the bytes before it.
#[inline(always)]
fn strip(ctx: &XdpContext, outer_len: usize) -> Result<(), Counter> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked; the helper shrinks the frame from the front within its length
    // (the caller saw a whole outer header after the Ethernet header).
    let eth = unsafe { *eth };
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(Counter::PassMalformed);
    }
    let new_eth: *mut EthHdr = ptr_at_mut(ctx, 0)?;
    unsafe { *new_eth = eth };
    Ok(())
}
