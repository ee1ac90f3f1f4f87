use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// Type, code, checksum and the 4 bytes every ICMP message has.
const ICMP_HEADER: usize = 8;
use network_types::{tcp::TcpHdr, udp::UdpHdr};

use super::ptr_at;

/// TCP header flags (byte 13); the data offset, the header's length in words (byte 12, high
/// nibble).
const TCP_FLAGS_OFFSET: usize = 13;
const DATA_OFFSET: usize = 12;

/// Source and destination ports (host order) and, for TCP, what its flags make it
/// ([`TcpKind`]; other protocols: `TcpKind::OTHER`), of a TCP or UDP
/// header at `offset`; zeros for other protocols. The TCP or UDP header (ICMP: its 8-byte
/// header) must be whole and inside the IP packet, which ends at `end`.
#[inline(always)]
pub fn ports(ctx: &XdpContext, offset: usize, end: usize, proto: u8) -> Result<(u16, u16, u8), Counter> {
    let header = match proto {
        PROTO_TCP => core::mem::size_of::<TcpHdr>(),
        PROTO_UDP => core::mem::size_of::<UdpHdr>(),
        PROTO_ICMP | PROTO_ICMPV6 => ICMP_HEADER,
        _ => 0,
    };
    if offset + header > end {
        return Err(Counter::PassMalformed);
    }
    match proto {
        PROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(ctx, offset)?;
            // SAFETY: ptr_at checked that the whole TCP header is in the frame.
            let (data_offset, flags) =
                unsafe { (*(tcp as *const u8).add(DATA_OFFSET), *(tcp as *const u8).add(TCP_FLAGS_OFFSET)) };
            // The header's own length: at least the fixed 20 bytes, and inside the packet.
            let header_len = (data_offset >> 4) as usize * 4;
            if header_len < core::mem::size_of::<TcpHdr>() || offset + header_len > end {
                return Err(Counter::PassMalformed);
            }
            let tcp = unsafe { &*tcp };
            Ok((u16::from_be_bytes(tcp.source), u16::from_be_bytes(tcp.dest), tcp_kind(flags)))
        }
        PROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, offset)?;
            let udp = unsafe { &*udp };
            // Its length: at least the header, and inside the packet (shorter is padding, as
            // the stack reads it).
            let len = u16::from_be_bytes(udp.len) as usize;
            if len < core::mem::size_of::<UdpHdr>() || offset + len > end {
                return Err(Counter::PassMalformed);
            }
            Ok((u16::from_be_bytes(udp.src), u16::from_be_bytes(udp.dst), TcpKind::OTHER))
        }
        _ => Ok((0, 0, TcpKind::OTHER)),
    }
}

/// What a TCP segment's flags make it, for the pipeline.
pub struct TcpKind;

impl TcpKind {
    /// Any segment of an open connection (and every packet of other protocols).
    pub const OTHER: u8 = 0;
    /// SYN without ACK: a connection's first segment.
    pub const SYN: u8 = 1;
    /// Flags no connection sends (RFC 9293): SYN with FIN or RST, or none of SYN, ACK and RST
    /// (null, FIN and Xmas scans).
    pub const BAD: u8 = 2;
}

/// The [`TcpKind`] of TCP `flags`, by arithmetic: a table of the sixteen combinations of FIN,
/// SYN, RST and ACK, two bits each (branches here would multiply the verifier's paths).
#[inline(always)]
fn tcp_kind(flags: u8) -> u8 {
    const FIN: u64 = 0x01;
    const SYN: u64 = 0x02;
    const RST: u64 = 0x04;
    const ACK: u64 = 0x10;
    const fn kind(c: u64) -> u64 {
        let (fin, syn, rst, ack) = (c & 1 != 0, c & 2 != 0, c & 4 != 0, c & 8 != 0);
        if (syn && (fin || rst)) || !(syn || ack || rst) {
            TcpKind::BAD as u64
        } else if syn && !ack {
            TcpKind::SYN as u64
        } else {
            TcpKind::OTHER as u64
        }
    }
    const TABLE: u64 = {
        let (mut t, mut c) = (0, 0);
        while c < 16 {
            t |= kind(c) << (2 * c);
            c += 1;
        }
        t
    };
    let f = flags as u64;
    let combination = (f & (FIN | SYN | RST)) | (f & ACK) >> 1;
    (crate::opaque::opaque(TABLE >> (2 * combination)) & 3) as u8
}
