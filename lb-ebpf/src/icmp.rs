//! ICMP for VIPs: the balancer answers echo requests to VIP addresses itself, sends the errors
//! that path-MTU discovery depends on to the backend of the flow they quote, and tells clients
//! whose packets would exceed the path MTU to a backend (tunnel header included) to send
//! smaller ones.
use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{Counter, FlowKey, FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{
    checksum, flow,
    parse::{self, ptr_at, ptr_at_mut, Packet, ETH_LEN},
};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const DEST_UNREACHABLE_V4: u8 = 3;
const FRAG_NEEDED_V4: u8 = 4;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
const PACKET_TOO_BIG_V6: u8 = 2;
/// An ICMP error's own header (type, code, checksum, 4 more bytes) before the quoted packet.
const ICMP_ERROR_HEADER: usize = 8;
/// Bytes of the offending packet a "too big" error quotes: IPv4, the longest header (60) and
/// the 8 bytes of its transport header a receiver needs (RFC 792); IPv6, its header, room for
/// extension headers and the transport header's first bytes. Multiples of 4 (bpf_csum_diff).
const QUOTE_V4: usize = 68;
const QUOTE_V6: usize = 256;
/// The TTL / hop limit of the packets the balancer sends itself (Linux's default).
const REPLY_TTL: u8 = 64;
const DONT_FRAGMENT: u8 = 0x40;

/// Answers echo requests to VIP addresses (`Err(IcmpEchoReply)`: a final verdict). For an error
/// that quotes a VIP flow, rewrites `pkt.key` to that flow as the client sends it and returns
/// `Ok(())`: the caller forwards the error like a packet of the flow. Anything else: `Err(pass)`.
/// Not inlined: its quoted headers would otherwise share the forwarding path's small stack.
#[inline(never)]
pub fn handle(ctx: &XdpContext, pkt: &mut Packet) -> Result<(), Counter> {
    // The parser checked that the whole 8-byte ICMP header is in the packet.
    let icmp: *mut [u8; 4] = ptr_at_mut(ctx, pkt.l4_offset)?;
    // SAFETY: ptr_at_mut checked bounds.
    let [kind, code, _, _] = unsafe { *icmp };
    let family = pkt.key.family;
    let v4 = family == FAMILY_V4;
    let (echo_request, echo_reply) =
        if v4 { (ECHO_REQUEST_V4, ECHO_REPLY_V4) } else { (ECHO_REQUEST_V6, ECHO_REPLY_V6) };
    if kind == echo_request {
        if !flow::is_vip_address(&pkt.key.dst, family) {
            return Err(Counter::PassNotVip);
        }
        if !names_one_host(&pkt.key.src, v4) {
            return Err(Counter::DropIcmpSource);
        }
        reply_to_echo(ctx, family, icmp, echo_reply)?;
        return Err(Counter::IcmpEchoReply);
    }
    let path_mtu_error =
        if v4 { kind == DEST_UNREACHABLE_V4 && code == FRAG_NEEDED_V4 } else { kind == PACKET_TOO_BIG_V6 };
    if !path_mtu_error {
        return Err(Counter::PassNotVip);
    }
    // The quoted packet went from the VIP to the client: its flow, seen from the client, is
    // the reverse.
    let quoted = parse::quoted_l3(ctx, pkt.l4_offset + ICMP_ERROR_HEADER, family)?;
    // Only TCP and UDP flows have backends (the balancer answers pings itself).
    if quoted.fragment || (quoted.proto != PROTO_TCP && quoted.proto != PROTO_UDP) {
        return Err(Counter::PassNotVip);
    }
    // An error goes to the quoted packet's source: a VIP's flow is quoted in errors to that VIP,
    // not in errors to another address (which may share its VIP_FILTER bit).
    if !same_address(&quoted.src, &pkt.key.dst) {
        return Err(Counter::PassNotVip);
    }
    // The quoted headers and ports must lie inside the ICMP packet, not in frame padding.
    if quoted.l4_offset + 4 > pkt.end {
        return Err(Counter::PassMalformed);
    }
    let (vip_port, client_port) = parse::quoted_ports(ctx, quoted.l4_offset)?;
    pkt.key = FlowKey {
        src: quoted.dst,
        dst: quoted.src,
        sport: client_port,
        dport: vip_port,
        proto: quoted.proto,
        family,
        _pad: [0; 2],
    };
    Ok(())
}

/// Turns the request into its reply in place: MACs and addresses swapped, type changed, TTL /
/// hop limit reset. The ICMP checksum changes by the type word only (the IPv6 pseudo-header sum
/// is symmetric, and holds no hop limit). The reply is a new packet: it starts with a fresh TTL
/// (Linux's default), not what is left of the request's, which a traceroute probe spent to 1.
#[inline(always)]
fn reply_to_echo(ctx: &XdpContext, family: u8, icmp: *mut [u8; 4], reply: u8) -> Result<(), Counter> {
    let eth: *mut EthHdr = ptr_at_mut(ctx, 0)?;
    // SAFETY: every pointer below was bounds-checked by ptr_at_mut.
    unsafe {
        let src_mac = (*eth).src_addr;
        (*eth).src_addr = (*eth).dst_addr;
        (*eth).dst_addr = src_mac;
    }
    if family == FAMILY_V4 {
        let ip: *mut Ipv4Hdr = ptr_at_mut(ctx, ETH_LEN)?;
        unsafe {
            let src = (*ip).src_addr;
            (*ip).src_addr = (*ip).dst_addr;
            (*ip).dst_addr = src;
            // TTL and protocol share a header word (swapped addresses leave the sum alone).
            let proto = (*ip).proto;
            let check = checksum::replace(
                u16::from_be_bytes((*ip).check),
                u16::from_be_bytes([(*ip).ttl, proto]),
                u16::from_be_bytes([REPLY_TTL, proto]),
            );
            (*ip).ttl = REPLY_TTL;
            (*ip).check = check.to_be_bytes();
        }
    } else {
        let ip: *mut Ipv6Hdr = ptr_at_mut(ctx, ETH_LEN)?;
        unsafe {
            let src = (*ip).src_addr;
            (*ip).src_addr = (*ip).dst_addr;
            (*ip).dst_addr = src;
            (*ip).hop_limit = REPLY_TTL;
        }
    }
    unsafe {
        let [kind, code, c0, c1] = *icmp;
        let check = checksum::replace(
            u16::from_be_bytes([c0, c1]),
            u16::from_be_bytes([kind, code]),
            u16::from_be_bytes([reply, code]),
        )
        .to_be_bytes();
        *icmp = [reply, code, check[0], check[1]];
    }
    Ok(())
}

/// Answers a packet too big for the path MTU towards its backend: an ICMP "fragmentation
/// needed" (IPv4 with DF) or ICMPv6 "packet too big" carrying `mtu` (what fits inside the
/// tunnel), from the VIP back to the client, out of the interface the packet came in on. An
/// IPv4 packet without DF is dropped instead (the balancer does not fragment). The verdict:
/// `IcmpTooBig` (XDP_TX) or `DropTooBig`.
#[inline(never)]
pub fn too_big(ctx: &XdpContext, family: u8, mtu: u16) -> Counter {
    let answered = if family == FAMILY_V4 { too_big_v4(ctx, mtu) } else { too_big_v6(ctx, mtu) };
    match answered {
        Ok(()) => Counter::IcmpTooBig,
        Err(()) => Counter::DropTooBig,
    }
}

/// The frame after [`turn_into_error`]: Ethernet, the new IP header (`H` bytes), the ICMP
/// header, the quoted packet (`Q` bytes: the start of the packet as it came, untouched).
#[repr(C)]
struct ErrorFrame<const H: usize, const Q: usize> {
    eth: EthHdr,
    ip: [u8; H],
    icmp: [u8; ICMP_ERROR_HEADER],
    quote: [u8; Q],
}

/// Cuts the frame to its Ethernet header and the first `Q` bytes of its IP packet, and makes
/// room in front for a new Ethernet header, `H` bytes of IP header and an ICMP header, so the
/// packet as it came becomes the quote without a copy. The new Ethernet header is the old one
/// with its addresses swapped (the answer goes back the way the packet came); the rest is for
/// the caller to write. The caller checked that the frame holds the quote.
#[inline(always)]
fn turn_into_error<const H: usize, const Q: usize>(ctx: &XdpContext) -> Result<*mut ErrorFrame<H, Q>, ()> {
    let len = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: the helpers only move the frame's end and start within the buffer.
    unsafe {
        if bpf_xdp_adjust_tail(ctx.ctx, (ETH_LEN + Q) as i32 - len) != 0 {
            return Err(());
        }
        if bpf_xdp_adjust_head(ctx.ctx, -((H + ICMP_ERROR_HEADER) as i32)) != 0 {
            return Err(());
        }
    }
    let f: *mut ErrorFrame<H, Q> = ptr_at_mut(ctx, 0).map_err(|_| ())?;
    // SAFETY: bounds-checked by ptr_at_mut; the old Ethernet header now ends where the quote
    // starts, inside the frame, and the new one does not overlap it.
    unsafe {
        let old = core::ptr::read_unaligned((f as *const u8).add(H + ICMP_ERROR_HEADER) as *const EthHdr);
        (*f).eth = EthHdr { dst_addr: old.src_addr, src_addr: old.dst_addr, ether_type: old.ether_type };
    }
    Ok(f)
}

/// The ones' complement sum of `len` bytes at `p` (a multiple of 4, at most 512), added to `seed`.
#[inline(always)]
fn sum(p: *const u8, len: usize, seed: u32) -> u32 {
    // SAFETY: the caller checked that `len` bytes at `p` are in the frame or on the stack.
    unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, len as u32, seed) as u32 }
}

/// Writes a checksum where `at` points, in the byte order the sum was taken in.
#[inline(always)]
fn put_checksum(at: *mut u8, sum: u32) {
    let [c0, c1] = (!checksum::fold(sum)).to_ne_bytes();
    // SAFETY: the caller points at the two bytes of a checksum field inside the frame.
    unsafe {
        *at = c0;
        *at.add(1) = c1;
    }
}

/// Whether `src` (a flow key's 16-byte address: IPv4 in its first 4 bytes) names a single host
/// a reply may go to (RFC 1812 4.3.2.7, RFC 4443 2.4(e)): not this network (0/8), loopback,
/// multicast or reserved (224/4, 240/4, the broadcast address); not ::, ::1 or ff00::/8.
#[inline(always)]
fn names_one_host(src: &[u8; 16], v4: bool) -> bool {
    if v4 {
        let first = src[0];
        return first != 0 && first != 127 && first < 224;
    }
    let high = u64::from_be_bytes([src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7]]);
    let low = u64::from_be_bytes([src[8], src[9], src[10], src[11], src[12], src[13], src[14], src[15]]);
    !(high == 0 && low <= 1) && src[0] != 0xff
}

#[inline(always)]
fn too_big_v4(ctx: &XdpContext, mtu: u16) -> Result<(), ()> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN).map_err(|_| ())?;
    // SAFETY: bounds-checked by ptr_at.
    let (df, [first, ..]) = unsafe { ((*ip).frags[0] & DONT_FRAGMENT != 0, (*ip).src_addr) };
    // No error goes to a source that names no single host (RFC 1812 4.3.2.7).
    let mut key_form = [0u8; 16];
    key_form[0] = first;
    if !df || !names_one_host(&key_form, true) || !parse::fits(ctx, ETH_LEN, QUOTE_V4) {
        return Err(());
    }
    let f = turn_into_error::<{ Ipv4Hdr::LEN }, QUOTE_V4>(ctx)?;
    // SAFETY: the whole error frame is in the packet (checked by turn_into_error).
    unsafe {
        let ip = &raw mut (*f).ip as *mut Ipv4Hdr;
        let quoted = &raw const (*f).quote as *const Ipv4Hdr;
        (*ip).vihl = 0x45;
        (*ip).tos = 0;
        (*ip).tot_len = ((Ipv4Hdr::LEN + ICMP_ERROR_HEADER + QUOTE_V4) as u16).to_be_bytes();
        (*ip).id = [0, 0];
        (*ip).frags = [0, 0];
        (*ip).ttl = REPLY_TTL;
        (*ip).proto = PROTO_ICMP;
        (*ip).check = [0, 0];
        (*ip).src_addr = (*quoted).dst_addr;
        (*ip).dst_addr = (*quoted).src_addr;
        (*ip).check = checksum::ipv4_header(&(*f).ip).to_be_bytes();
        let [m0, m1] = mtu.to_be_bytes();
        (*f).icmp = [DEST_UNREACHABLE_V4, FRAG_NEEDED_V4, 0, 0, 0, 0, m0, m1];
        let icmp = &raw mut (*f).icmp as *mut u8;
        put_checksum(icmp.add(2), sum(icmp, ICMP_ERROR_HEADER + QUOTE_V4, 0));
    }
    Ok(())
}

#[inline(always)]
fn too_big_v6(ctx: &XdpContext, mtu: u16) -> Result<(), ()> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_LEN).map_err(|_| ())?;
    // SAFETY: bounds-checked by ptr_at.
    let src = unsafe { (*ip).src_addr };
    // No error goes to the unspecified address, loopback or a multicast source (RFC 4443
    // 2.4(e)).
    if !names_one_host(&src, false) || !parse::fits(ctx, ETH_LEN, QUOTE_V6) {
        return Err(());
    }
    let f = turn_into_error::<{ Ipv6Hdr::LEN }, QUOTE_V6>(ctx)?;
    let payload = (ICMP_ERROR_HEADER + QUOTE_V6) as u32;
    // SAFETY: the whole error frame is in the packet (checked by turn_into_error).
    unsafe {
        let ip = &raw mut (*f).ip as *mut Ipv6Hdr;
        let quoted = &raw const (*f).quote as *const Ipv6Hdr;
        (*ip).vcf = [0x60, 0, 0, 0];
        (*ip).payload_len = (payload as u16).to_be_bytes();
        (*ip).next_hdr = PROTO_ICMPV6;
        (*ip).hop_limit = REPLY_TTL;
        (*ip).src_addr = (*quoted).dst_addr;
        (*ip).dst_addr = (*quoted).src_addr;
        let [m0, m1, m2, m3] = (mtu as u32).to_be_bytes();
        (*f).icmp = [PACKET_TOO_BIG_V6, 0, 0, 0, m0, m1, m2, m3];
        // The pseudo-header: both addresses (in the packet, back to back), then the length and
        // the next header.
        let addresses = &raw const (*ip).src_addr as *const u8;
        let [l0, l1, l2, l3] = payload.to_be_bytes();
        let rest: [u8; 8] = [l0, l1, l2, l3, 0, 0, 0, PROTO_ICMPV6];
        let pseudo = sum(rest.as_ptr(), 8, sum(addresses, 32, 0));
        let icmp = &raw mut (*f).icmp as *mut u8;
        put_checksum(icmp.add(2), sum(icmp, ICMP_ERROR_HEADER + QUOTE_V6, pseudo));
    }
    Ok(())
}

/// Whether two addresses are the same, compared as two 64-bit words (an array compare would be
/// a call to aya's byte-wise `memcmp`).
#[inline(always)]
fn same_address(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let half = |x: &[u8; 16], i: usize| {
        u64::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3], x[i + 4], x[i + 5], x[i + 6], x[i + 7]])
    };
    half(a, 0) == half(b, 0) && half(a, 8) == half(b, 8)
}
