use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, PROTO_TCP, PROTO_UDP};
use network_types::{tcp::TcpHdr, udp::UdpHdr};

use super::ptr_at;

/// Source and destination ports (host order) of a TCP or UDP header at `offset`; (0, 0) for
/// other protocols. A TCP header must be whole, a UDP header too.
#[inline(always)]
pub fn ports(ctx: &XdpContext, offset: usize, proto: u8) -> Result<(u16, u16), Counter> {
    match proto {
        PROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(ctx, offset)?;
            let tcp = unsafe { &*tcp };
            Ok((u16::from_be_bytes(tcp.source), u16::from_be_bytes(tcp.dest)))
        }
        PROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, offset)?;
            let udp = unsafe { &*udp };
            Ok((u16::from_be_bytes(udp.src), u16::from_be_bytes(udp.dst)))
        }
        _ => Ok((0, 0)),
    }
}
