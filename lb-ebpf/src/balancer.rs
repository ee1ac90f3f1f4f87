//! The balancer's pipeline: parse, match a VIP, (later) pick a backend and forward.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{Counter, VipKey};

use crate::{maps::VIPS, parse, stats};

pub fn run(ctx: &XdpContext) -> u32 {
    let reason = match parse::packet(ctx) {
        Ok(pkt) => match lookup_vip(&pkt) {
            Some(_) => Counter::PassVipNoForwarding,
            None => Counter::PassNotVip,
        },
        Err(reason) => reason,
    };
    stats::count(reason);
    xdp_action::XDP_PASS
}

/// The VIP for this packet: the port-specific entry first, then the address's any-port entry.
#[inline(always)]
fn lookup_vip(pkt: &parse::Packet) -> Option<lb_common::VipValue> {
    let mut key = VipKey { addr: pkt.dst, port: pkt.dport, proto: pkt.proto, family: pkt.family };
    // SAFETY: VIP values are plain integers written whole by the agent.
    if let Some(v) = unsafe { VIPS.get(&key) } {
        return Some(*v);
    }
    key.port = 0;
    unsafe { VIPS.get(&key) }.copied()
}
