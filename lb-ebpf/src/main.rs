//! Entry points of the XDP programs. Each stage of the pipeline lives in its own module.
#![no_std]
#![no_main]
// BPF atomics (schedule.rs): `core`'s atomic types have no read-modify-write operations on BPF
// targets, the intrinsics compile to the BPF atomic instructions.
#![feature(core_intrinsics)]
// A register move in `asm!` hides a value from the compiler (opaque.rs).
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod balancer;
// The benches' programs (lb-bench builds the object with them; lbd's has none).
#[cfg(feature = "bench")]
mod bench;
mod capture;
mod checksum;
mod decap;
mod encap;
mod flow;
mod flow_table;
mod forward;
mod icmp;
mod maps;
mod opaque;
mod parse;
mod policy;
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: bpf_fib_lookup and friends are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
