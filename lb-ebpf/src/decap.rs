//! Backend side of `ipip` mode: strips the outer header of tunnels addressed to this host and
//! passes the inner packet to the stack, where the VIP is bound to `lo`.
//!
//! An IPIP or IP6IP6 packet whose outer destination is in DECAP_ADDRS is, in this order:
//! 1. dropped if its outer source is not allowed (DECAP_CONFIG's `check_sources` set and no
//!    DECAP_SOURCES prefix holds it), counted `decap_refused`. Fragments too: a refused
//!    source's fragments never reach the stack's reassembly.
//! 2. passed unchanged if the outer packet is a fragment (IPv4 MF or offset, an IPv6 fragment
//!    header), counted `decap_fragment`: this frame does not hold the whole inner packet. The
//!    stack reassembles it (and needs a tunnel device of its own to decapsulate it).
//! 3. stripped (outer IPv4 options and IPv6 extension headers with it); then, if the outer ECN
//!    field says congestion experienced (CE), per RFC 6040 (normal mode): an ECN-capable inner
//!    packet is marked CE too, a Not-ECT one is dropped, counted `decap_ce_not_ect`.
//! 4. passed, counted `decapsulated`.
//!
//! A packet to this host whose headers the parser cannot walk (more than four IPv6 extension
//! headers, lengths that do not add up) is dropped and counted `decap_refused` if its source is
//! not allowed: it may hide a tunnel, which a kernel tunnel device would strip past the list.
//!
//! Everything else passes untouched and uncounted.
use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_adjust_head, maps::lpm_trie::Key, programs::XdpContext,
};
use lb_common::{Counter, DecapSource, FAMILY_V4};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{
    checksum,
    maps::{DECAP_ADDRS, DECAP_CONFIG, DECAP_SOURCES},
    parse::{self, ptr_at, ptr_at_mut, ETH_LEN, L3},
    stats,
};

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
/// ECN codepoints (RFC 3168), the low two bits of the IPv4 TOS / IPv6 traffic class.
const ECN_NOT_ECT: u8 = 0b00;
const ECN_CE: u8 = 0b11;

pub fn run(ctx: &XdpContext) -> u32 {
    let outer = match parse::l3(ctx) {
        Ok(outer) => outer,
        // A header the parser cannot walk (more IPv6 extension headers than it follows, a length
        // that does not add up) may hide a tunnel, which a kernel tunnel device of the host
        // would strip past the allow list: from a refused source to this host, it is dropped.
        Err(Counter::PassMalformed) if unwalkable_from_refused(ctx) => {
            stats::count(Counter::DecapRefused);
            return xdp_action::XDP_DROP;
        }
        Err(_) => return xdp_action::XDP_PASS,
    };
    let Some(outer) = tunnel(outer) else { return xdp_action::XDP_PASS };
    if !source_allowed(&outer) {
        stats::count(Counter::DecapRefused);
        return xdp_action::XDP_DROP;
    }
    if outer.fragment {
        stats::count(Counter::DecapFragment);
        return xdp_action::XDP_PASS;
    }
    let outer_ecn = ecn(ctx, outer.family);
    if strip(ctx, outer.l4_offset - ETH_LEN).is_err() {
        return xdp_action::XDP_PASS;
    }
    if outer_ecn == Some(ECN_CE) && mark_congestion(ctx, outer.family).is_err() {
        stats::count(Counter::DecapCeNotEct);
        return xdp_action::XDP_DROP;
    }
    stats::count(Counter::Decapsulated);
    xdp_action::XDP_PASS
}

/// The outer header, if this is a same-family tunnel addressed to this host.
#[inline(always)]
fn tunnel(outer: L3) -> Option<L3> {
    let inner = if outer.family == FAMILY_V4 { IPPROTO_IPIP } else { IPPROTO_IPV6 };
    if outer.proto != inner || DECAP_ADDRS.get_ptr(&outer.dst).is_none() {
        return None;
    }
    Some(outer)
}

/// Whether tunnels from the outer source are accepted: from anyone unless DECAP_CONFIG says
/// to check, else from the prefixes in DECAP_SOURCES.
#[inline(always)]
fn source_allowed(outer: &L3) -> bool {
    allowed(outer.family, outer.src)
}

#[inline(always)]
fn allowed(family: u8, src: [u8; 16]) -> bool {
    if DECAP_CONFIG.get(0).is_none_or(|c| c.check_sources == 0) {
        return true;
    }
    let source = DecapSource { family, addr: src, _pad: [0; 3] };
    let key = Key::new(DecapSource::prefix_len(DecapSource::address_bits(family)), source);
    DECAP_SOURCES.get(&key).is_some()
}

/// Whether a packet the parser found malformed is addressed to this host (DECAP_ADDRS) from a
/// source tunnels are not accepted from, by its fixed IP header's addresses.
#[inline(always)]
fn unwalkable_from_refused(ctx: &XdpContext) -> bool {
    let (family, src, dst) = match parse::ether_type(ctx) {
        Ok(parse::ETH_P_IPV6) => match ptr_at::<Ipv6Hdr>(ctx, ETH_LEN) {
            // SAFETY: bounds-checked by ptr_at.
            Ok(ip) => unsafe { (lb_common::FAMILY_V6, (*ip).src_addr, (*ip).dst_addr) },
            Err(_) => return false,
        },
        Ok(parse::ETH_P_IP) => match ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) {
            // SAFETY: bounds-checked by ptr_at.
            Ok(ip) => unsafe {
                (FAMILY_V4, parse::v4_in_16((*ip).src_addr), parse::v4_in_16((*ip).dst_addr))
            },
            Err(_) => return false,
        },
        _ => return false,
    };
    DECAP_ADDRS.get_ptr(&dst).is_some() && !allowed(family, src)
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

/// The ECN field of the IP header at ETH_LEN (of `family`), if the header is in the frame.
#[inline(always)]
fn ecn(ctx: &XdpContext, family: u8) -> Option<u8> {
    // Both families keep it in their second byte: IPv4 its low bits, IPv6 bits 4 and 5.
    let head: *const [u8; 2] = ptr_at(ctx, ETH_LEN).ok()?;
    // SAFETY: bounds-checked by ptr_at.
    let second = unsafe { (*head)[1] };
    Some(if family == FAMILY_V4 { second & 0b11 } else { (second >> 4) & 0b11 })
}

/// The outer header said congestion experienced: RFC 6040 (normal mode) carries that to the
/// inner packet at ETH_LEN. ECT(0) or ECT(1) becomes CE (the IPv4 checksum follows); CE stays.
/// Not-ECT: `Err`, the caller drops it, as RFC 6040 says and Linux's tunnels do: its sender
/// understands no mark, a drop is the congestion signal it reacts to, and passing it unmarked
/// would hide the congestion. (The balancer copies the inner ECN field to the outer header, so
/// only a switch that marks Not-ECT packets, against RFC 3168, brings this about: counted.)
/// Outer ECT(1) over inner ECT(0) is not carried (as in Linux): only CE is a signal here.
/// An inner header cut short is left alone (the stack drops it).
#[inline(always)]
fn mark_congestion(ctx: &XdpContext, family: u8) -> Result<(), ()> {
    let Some(inner) = ecn(ctx, family) else { return Ok(()) };
    if inner == ECN_NOT_ECT {
        return Err(());
    }
    if inner == ECN_CE {
        return Ok(());
    }
    if family == FAMILY_V4 {
        let Ok(ip) = ptr_at_mut::<Ipv4Hdr>(ctx, ETH_LEN) else { return Ok(()) };
        // SAFETY: bounds-checked by ptr_at_mut.
        unsafe {
            let (vihl, tos) = ((*ip).vihl, (*ip).tos);
            let check = checksum::replace(
                u16::from_be_bytes((*ip).check),
                u16::from_be_bytes([vihl, tos]),
                u16::from_be_bytes([vihl, tos | ECN_CE]),
            );
            (*ip).tos = tos | ECN_CE;
            (*ip).check = check.to_be_bytes();
        }
    } else {
        let Ok(ip) = ptr_at_mut::<Ipv6Hdr>(ctx, ETH_LEN) else { return Ok(()) };
        // SAFETY: bounds-checked by ptr_at_mut.
        unsafe { (*ip).vcf[1] |= ECN_CE << 4 };
    }
    Ok(())
}
