use aya_ebpf::programs::XdpContext;
use lb_common::Counter;
use network_types::eth::EthHdr;

use super::ptr_at;

pub const LEN: usize = EthHdr::LEN;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;

/// The frame's EtherType in host byte order. VLAN tags are not parsed: such frames pass.
#[inline(always)]
pub fn ether_type(ctx: &XdpContext) -> Result<u16, Counter> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // A frame shorter than an Ethernet header is not IP as far as we can tell.
    Ok(u16::from_be(unsafe { (*eth).ether_type }))
}
