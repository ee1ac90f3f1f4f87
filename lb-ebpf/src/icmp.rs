//! ICMP for VIPs: the balancer answers echo requests to VIP addresses itself, and sends the
//! errors that path-MTU discovery depends on to the backend of the flow they quote.
use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, FlowKey, FAMILY_V4, PROTO_TCP, PROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{
    checksum, flow,
    parse::{self, ptr_at_mut, Packet, ETH_LEN},
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

/// Turns the request into its reply in place: MACs and addresses swapped, type changed. The
/// checksum changes by the type word only (the IPv6 pseudo-header sum is symmetric).
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
        }
    } else {
        let ip: *mut Ipv6Hdr = ptr_at_mut(ctx, ETH_LEN)?;
        unsafe {
            let src = (*ip).src_addr;
            (*ip).src_addr = (*ip).dst_addr;
            (*ip).dst_addr = src;
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
