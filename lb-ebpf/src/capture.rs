//! `lbctl capture`: copies of a VIP's forwarded packets, before and after the rewrite, to a
//! perf buffer (XDP-handled traffic never reaches tcpdump on the interface).
use aya_ebpf::programs::XdpContext;
use lb_common::{CaptureMeta, CAPTURE_SNAPLEN};

use crate::maps::CAPTURE;

/// Sends the frame as it is now, with `stage` and `vip`. The kernel appends the packet bytes
/// (the length rides in the upper half of the flags). Not inlined: it runs only while capturing,
/// and its header stays off the forwarding path's stack (512 bytes for all frames).
#[inline(never)]
pub fn packet(ctx: &XdpContext, vip: u32, stage: u32) {
    let frame = (ctx.data_end() - ctx.data()) as u32;
    let len = if frame > CAPTURE_SNAPLEN { CAPTURE_SNAPLEN } else { frame };
    // SAFETY: a plain helper call (only while capturing: the clock costs nothing otherwise).
    let at_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    CAPTURE.output(ctx, CaptureMeta { stage, vip, len, wire_len: frame, at_ns }, len);
}
