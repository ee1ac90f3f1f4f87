//! The benches' XDP programs (`bench/src/bin/bench_xdp.rs` and `bench_conn.rs` are their only
//! users): a traffic generator, a counting sink, and floors to compare the balancer with. Built
//! only with this crate's `bench` feature, which lb-bench's build sets and lbd's never does: the
//! object lbd embeds has neither these programs nor their maps.
//!
//! - Both generators write each frame whole from `BENCH_FLOWGEN`'s template and give it the
//!   source of its flow in one of the traffic shapes of `lb_common::bench::shape` (checksums
//!   patched). `bench_gen` runs under `BPF_PROG_TEST_RUN` in live-frames mode (the kernel
//!   recycles its pages with whatever the programs downstream left in them) and returns XDP_TX:
//!   in live-frames mode that sends the frame out of the test run's ingress interface.
//!   `bench_flowgen`, the field generator, runs with a repeat count (not live: that works on
//!   every kernel that runs the balancer): each run first puts the frame back at its template's
//!   length (the program downstream may have pushed a header in the run before), and then
//!   tail-calls the program in `BENCH_CHAIN` (the balancer or a floor); with none there it
//!   returns XDP_TX, the frame as generated.
//! - `bench_sink` counts frames per CPU and drops them.
//! - `bench_mac_swap` swaps the MAC addresses and returns XDP_TX: the least an XDP forwarder does.
//! - `bench_encap` pushes an outer IPv4 (or IPv6) header, as the balancer's `ipip` mode does but
//!   with no lookup, and returns XDP_TX.
//! - `bench_flow_lookup` parses the packet as the balancer does, looks its flow up in
//!   FLOW_TABLE, swaps the MAC addresses and returns XDP_TX: the part of a packet's cost that is
//!   finding (or not finding) its flow's entry, not the balancer (a new flow's in a full table:
//!   a miss; an established flow's: a hit).
//! - `bench_forward` (`bench/src/bin/bench_conn.rs`) sends every IPv4 frame addressed to its
//!   host on to one fixed MAC address with XDP_TX and passes the rest (ARP, floods) to the
//!   stack: the least a balancer in front of a server does, to tell the hop's own cost from the
//!   balancer's.
//!
//! Their small maps (under 1 KiB in all) are private and never pinned.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::bench::{self as common, FlowGen, ForwardMacs, MAX_FRAME};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    checksum, flow_table,
    parse::{ptr_at, ptr_at_mut, ETH_LEN, ETH_P_IP, ETH_P_IPV6},
};

/// Packets generated, per CPU: the sequence numbers flows are numbered from.
#[map(name = "BENCH_GEN_SEQ")]
static BENCH_GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Frames the sink received, per CPU.
#[map(name = "BENCH_SINK")]
static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `bench_forward`'s Ethernet addresses.
#[map(name = "BENCH_FORWARD")]
static BENCH_FORWARD: Array<ForwardMacs> = Array::with_max_entries(1, 0);

/// The generators' template.
#[map(name = "BENCH_FLOWGEN")]
static BENCH_FLOWGEN: Array<FlowGen> = Array::with_max_entries(1, 0);

/// The program the field generator hands each frame to.
#[map(name = "BENCH_CHAIN")]
static BENCH_CHAIN: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Fixed outer addresses of the encapsulation floor.
const OUTER_SRC4: [u8; 4] = [198, 18, 1, 1];
const OUTER_DST4: [u8; 4] = [198, 18, 0, 17];
const OUTER_SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
const OUTER_DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];

/// The traffic generator, run in live-frames mode.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    match write_flow_frame(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

/// The field generator: a frame of the next flow, handed to BENCH_CHAIN's program.
#[xdp]
pub fn bench_flowgen(ctx: XdpContext) -> u32 {
    if write_flow_frame(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a tail call returns only if it failed (no program in the slot).
    unsafe { BENCH_CHAIN.tail_call(&ctx, 0) };
    xdp_action::XDP_TX
}

/// Counts and drops every frame.
#[xdp]
pub fn bench_sink(_ctx: XdpContext) -> u32 {
    if let Some(c) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

/// The floor: MAC addresses swapped and XDP_TX.
#[xdp]
pub fn bench_mac_swap(ctx: XdpContext) -> u32 {
    mac_swap(&ctx)
}

/// The encapsulation floor: an outer header pushed and XDP_TX.
#[xdp]
pub fn bench_encap(ctx: XdpContext) -> u32 {
    match push_outer(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

/// A flow-table lookup (its answer counted in BENCH_SINK, so that it is made), then the
/// MAC-swap floor.
#[xdp]
pub fn bench_flow_lookup(ctx: XdpContext) -> u32 {
    let Ok(pkt) = crate::parse::packet(&ctx) else { return xdp_action::XDP_ABORTED };
    let seed = crate::maps::CONFIG.get(0).map_or(0, |c| c.hash_seed);
    let sets = flow_table::sets_of(&pkt.key, seed);
    let found = flow_table::find(sets, &pkt.key).found();
    if let Some(c) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *c += found as u64 };
    }
    mac_swap(&ctx)
}

/// IPv4 frames for this host on to one fixed MAC address.
#[xdp]
pub fn bench_forward(ctx: XdpContext) -> u32 {
    forward(&ctx)
}

#[inline(always)]
fn write_flow_frame(ctx: &XdpContext) -> Option<()> {
    let cfg = BENCH_FLOWGEN.get(0)?;
    let seq = BENCH_GEN_SEQ.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; nothing else writes it while we run.
    let n = unsafe {
        let n = *seq;
        *seq = n + 1;
        n
    };
    // SAFETY: a plain helper call.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    let (offset, port) = common::flow_source(cfg.shape, cfg.flow(n, cpu));
    let addr = cfg.addr_base.wrapping_add(offset);
    let len = cfg.len as usize;
    // Without live frames the frame stays as the last program left it: undo its push. (Live
    // frames come back at the test frame's bounds, headroom included.)
    let grown = (ctx.data_end() - ctx.data()) as i64 - len as i64;
    if !(0..=256).contains(&grown) || len > MAX_FRAME {
        return None;
    }
    // SAFETY: the helper only moves the frame's start within the frame.
    if grown > 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, grown as i32) } != 0 {
        return None;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + len != end {
        return None;
    }
    let words = cfg.frame.as_ptr() as *const u32;
    let mut i = 0;
    while i < MAX_FRAME / 4 {
        if i * 4 >= len {
            break;
        }
        if data + i * 4 + 4 > end {
            return None;
        }
        // SAFETY: both within bounds (checked above); the template is 4-byte aligned in the map
        // value and the frame data is too (page offset + 256 bytes of headroom).
        unsafe { *((data + i * 4) as *mut u32) = *words.add(i) };
        i += 1;
    }
    let (hi, lo) = (addr >> 16, addr & 0xffff);
    set16(ctx, cfg.addr_off, hi as u16)?;
    set16(ctx, cfg.addr_off + 2, lo as u16)?;
    set16(ctx, cfg.port_off, port)?;
    // The three fields were zero in the template: the checksums grow by their new values.
    if cfg.ip_csum_off != 0 {
        let c = get16(ctx, cfg.ip_csum_off)?;
        set16(ctx, cfg.ip_csum_off, !checksum::fold(!c as u32 + hi + lo))?;
    }
    let c = get16(ctx, cfg.l4_csum_off)?;
    let mut c = !checksum::fold(!c as u32 + hi + lo + port as u32);
    if c == 0 && cfg.udp != 0 {
        c = 0xffff;
    }
    set16(ctx, cfg.l4_csum_off, c)
}

#[inline(always)]
fn get16(ctx: &XdpContext, off: u32) -> Option<u16> {
    let p: *const [u8; 2] = ptr_at(ctx, (off & 0x7f) as usize).ok()?;
    // SAFETY: bounds checked by ptr_at.
    Some(u16::from_be_bytes(unsafe { *p }))
}

#[inline(always)]
fn set16(ctx: &XdpContext, off: u32, v: u16) -> Option<()> {
    let p: *mut [u8; 2] = ptr_at_mut(ctx, (off & 0x7f) as usize).ok()?;
    // SAFETY: bounds checked by ptr_at_mut.
    unsafe { *p = v.to_be_bytes() };
    Some(())
}

#[inline(always)]
fn mac_swap(ctx: &XdpContext) -> u32 {
    let Ok(eth) = ptr_at_mut::<EthHdr>(ctx, 0) else { return xdp_action::XDP_ABORTED };
    // SAFETY: bounds checked by ptr_at_mut.
    unsafe {
        let src = (*eth).src_addr;
        (*eth).src_addr = (*eth).dst_addr;
        (*eth).dst_addr = src;
    }
    xdp_action::XDP_TX
}

#[inline(always)]
fn forward(ctx: &XdpContext) -> u32 {
    let Some(macs) = BENCH_FORWARD.get(0) else { return xdp_action::XDP_PASS };
    let to = macs.to;
    let unset = to[0] | to[1] | to[2] | to[3] | to[4] | to[5] == 0;
    let Ok(eth) = ptr_at_mut::<EthHdr>(ctx, 0) else { return xdp_action::XDP_PASS };
    // SAFETY: bounds checked by ptr_at_mut.
    unsafe {
        // Only frames for the hop itself: the bridge floods unknown unicast to every port.
        let own = macs.own;
        if (*eth).ether_type != ETH_P_IP.to_be() || unset || !same_mac(&(*eth).dst_addr, &own) {
            return xdp_action::XDP_PASS;
        }
        (*eth).dst_addr = to;
        (*eth).src_addr = own;
    }
    xdp_action::XDP_TX
}

/// Byte by byte without a loop: a slice comparison would call `memcmp`, a loop here.
#[inline(always)]
fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5]) == 0
}

/// An outer header in front of the IP packet, the Ethernet header rewritten with the MACs
/// swapped: the balancer's `ipip` rewrite minus its lookups.
#[inline(always)]
fn push_outer(ctx: &XdpContext) -> Option<()> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok()?;
    // SAFETY: bounds checked by ptr_at.
    let (dmac, smac, ether_type) = unsafe { ((*eth).src_addr, (*eth).dst_addr, (*eth).ether_type) };
    if ether_type == ETH_P_IP.to_be() {
        let inner: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN).ok()?;
        // SAFETY: bounds checked by ptr_at.
        let (tos, len) = unsafe { ((*inner).tos, u16::from_be_bytes((*inner).tot_len)) };
        grow(ctx, Ipv4Hdr::LEN)?;
        let outer: *mut Ipv4Hdr = ptr_at_mut(ctx, ETH_LEN).ok()?;
        // SAFETY: bounds checked by ptr_at_mut.
        unsafe {
            (*outer).vihl = 0x45;
            (*outer).tos = tos;
            (*outer).tot_len = (len + Ipv4Hdr::LEN as u16).to_be_bytes();
            (*outer).id = [0, 0];
            (*outer).frags = [0x40, 0];
            (*outer).ttl = 64;
            (*outer).proto = 4;
            (*outer).check = [0, 0];
            (*outer).src_addr = OUTER_SRC4;
            (*outer).dst_addr = OUTER_DST4;
            (*outer).check = checksum::ipv4_header(&*(outer as *const [u8; 20])).to_be_bytes();
        }
    } else if ether_type == ETH_P_IPV6.to_be() {
        let inner: *const Ipv6Hdr = ptr_at(ctx, ETH_LEN).ok()?;
        // SAFETY: bounds checked by ptr_at.
        let (vcf, payload) = unsafe { ((*inner).vcf, u16::from_be_bytes((*inner).payload_len)) };
        grow(ctx, Ipv6Hdr::LEN)?;
        let outer: *mut Ipv6Hdr = ptr_at_mut(ctx, ETH_LEN).ok()?;
        // SAFETY: bounds checked by ptr_at_mut.
        unsafe {
            (*outer).vcf = [vcf[0], vcf[1] & 0xf0, 0, 0];
            (*outer).payload_len = (payload + Ipv6Hdr::LEN as u16).to_be_bytes();
            (*outer).next_hdr = 41;
            (*outer).hop_limit = 64;
            (*outer).src_addr = OUTER_SRC6;
            (*outer).dst_addr = OUTER_DST6;
        }
    } else {
        return None;
    }
    let eth: *mut EthHdr = ptr_at_mut(ctx, 0).ok()?;
    // SAFETY: bounds checked by ptr_at_mut.
    unsafe { *eth = EthHdr { dst_addr: dmac, src_addr: smac, ether_type } };
    Some(())
}

#[inline(always)]
fn grow(ctx: &XdpContext, len: usize) -> Option<()> {
    // SAFETY: the helper only moves the frame's start within the headroom.
    (unsafe { bpf_xdp_adjust_head(ctx.ctx, -(len as i32)) } == 0).then_some(())
}
