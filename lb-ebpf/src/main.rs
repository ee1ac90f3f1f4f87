//! Entry points of the XDP programs. Each stage of the pipeline lives in its own module.
#![no_std]
#![no_main]
// BPF atomics (schedule.rs): `core`'s atomic types have no read-modify-write operations on BPF
// targets, the intrinsics compile to the BPF atomic instructions.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod balancer;
mod bench;
mod capture;
mod checksum;
mod decap;
mod encap;
mod flow;
mod forward;
mod icmp;
mod maps;
mod parse;
mod schedule;
mod stats;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Catches packets for virtual services and sends them to a backend; everything else goes to
/// the stack untouched.
#[xdp]
pub fn balancer(ctx: XdpContext) -> u32 {
    balancer::run(&ctx)
}

/// On backend hosts: strips the balancer's tunnel header from packets addressed to the host.
#[xdp]
pub fn decap(ctx: XdpContext) -> u32 {
    decap::run(&ctx)
}

/// Bench only (tests/src/bin/bench_xdp.rs): the traffic generator, run in live-frames mode.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    bench::generate(&ctx)
}

/// Bench only: counts and drops every frame.
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    bench::sink(&ctx)
}

/// Bench only: the floor, MAC addresses swapped and XDP_TX.
#[xdp]
pub fn bench_mac_swap(ctx: XdpContext) -> u32 {
    bench::mac_swap(&ctx)
}

/// Bench only: the encapsulation floor, an outer header pushed and XDP_TX.
#[xdp]
pub fn bench_encap(ctx: XdpContext) -> u32 {
    bench::encap(&ctx)
}

/// Bench only: a flow-table lookup, then the MAC-swap floor.
#[xdp]
pub fn bench_flow_miss(ctx: XdpContext) -> u32 {
    bench::flow_miss(&ctx)
}

/// Bench only (tests/src/bin/bench_conn.rs): IPv4 frames for this host on to one fixed MAC.
#[xdp]
pub fn bench_forward(ctx: XdpContext) -> u32 {
    bench::forward(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: bpf_fib_lookup and friends are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
