//! Sending a packet to its backend: next hop from the kernel's FIB, rewrite, then XDP_TX out of
//! the ingress interface or a redirect through TX_PORTS to another one.
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_UNREACHABLE,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{ConfigValue, Counter, FlowKey, CAPTURE_AFTER, CAPTURE_BEFORE, FAMILY_V4, MODE_IPIP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    capture, encap,
    flow::{self, Choice},
    icmp,
    maps::{CachedHop, BACKEND_STATS, FIB_SCRATCH, NEXT_HOPS, TX_PORTS, VIP_STATS},
    parse::{ptr_at_mut, ETH_P_IP, ETH_P_IPV6},
    stats,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

struct NextHop {
    smac: [u8; 6],
    dmac: [u8; 6],
    ifindex: u32,
    /// The backend's address.
    addr: [u8; 16],
    /// The path MTU towards the next hop.
    mtu: u16,
}

/// Bytes a VIP's mode adds in front of the packet: the outer IP header of a tunnel.
#[inline(always)]
fn overhead(mode: u8, family: u8) -> usize {
    match (mode == MODE_IPIP, family == FAMILY_V4) {
        (false, _) => 0,
        (true, true) => Ipv4Hdr::LEN,
        (true, false) => Ipv6Hdr::LEN,
    }
}

/// Sends the packet to `choice`'s backend the VIP's way (its mode). Every check that can fail runs before
/// the packet is modified, so a pass verdict always passes the packet as it arrived. `ip_len`:
/// the IP packet's length; `icmp_error`: the packet is an ICMP error (never answered with one).
#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    key: &FlowKey,
    choice: &Choice,
    cfg: &ConfigValue,
    ip_len: usize,
    icmp_error: bool,
) -> Counter {
    match send(ctx, key, choice, cfg, ip_len, icmp_error) {
        Ok(c) | Err(c) => c,
    }
}

#[inline(always)]
fn send(
    ctx: &XdpContext,
    key: &FlowKey,
    choice: &Choice,
    cfg: &ConfigValue,
    ip_len: usize,
    icmp_error: bool,
) -> Result<Counter, Counter> {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let capture = cfg.capture_vip != 0 && cfg.capture_vip == choice.vip + 1;
    let ipip = choice.mode == MODE_IPIP;
    let extra = overhead(choice.mode, key.family);
    let len = ip_len + extra;
    let src = if ipip { encap::outer_source(key.family, cfg, choice.hash) } else { key.src };
    let hop = next_hop(ctx, key.family, &src, choice.id, cfg.cache_generation, len)?;
    if len > hop.mtu as usize {
        // The balancer does not fragment: the client learns the path MTU (less the tunnel
        // header), as from any router, or the packet goes.
        if icmp_error {
            return Err(Counter::DropTooBig);
        }
        return Err(icmp::too_big(ctx, key.family, hop.mtu - extra as u16));
    }
    let redirect = hop.ifindex != ctx.ingress_ifindex() as u32;
    if redirect && TX_PORTS.get_ifindex(hop.ifindex).is_none() {
        return Err(Counter::PassNoTxPort);
    }
    if capture {
        capture::packet(ctx, choice.vip, CAPTURE_BEFORE);
    }
    if ipip {
        if key.family == FAMILY_V4 {
            encap::push_ipv4(ctx, &src, &hop.addr, choice.hash)?;
        } else {
            encap::push_ipv6(ctx, &src, &hop.addr, choice.hash)?;
        }
    }
    let ether_type = if key.family == FAMILY_V4 { ETH_P_IP } else { ETH_P_IPV6 };
    let eth: *mut EthHdr = ptr_at_mut(ctx, 0).map_err(|_| Counter::DropEncapFailed)?;
    // SAFETY: ptr_at_mut checked bounds.
    unsafe { *eth = EthHdr { dst_addr: hop.dmac, src_addr: hop.smac, ether_type: ether_type.to_be() } };
    if capture {
        capture::packet(ctx, choice.vip, CAPTURE_AFTER);
    }
    stats::traffic(&VIP_STATS, choice.vip, bytes, choice.new_flow);
    stats::traffic(&BACKEND_STATS, choice.id, bytes, choice.new_flow);
    if !redirect {
        return Ok(Counter::ForwardTx);
    }
    // Checked above; if the port went away since, the stack gets the rewritten packet.
    Ok(match TX_PORTS.redirect(hop.ifindex, 0) {
        Ok(_) => Counter::ForwardRedirect,
        Err(_) => Counter::PassNoTxPort,
    })
}

/// Backend `id` (of the packet's `family`: else no backend) and the next hop towards it: from
/// this CPU's cache while `generation` is the one they were cached under (the agent moves it on
/// every second and after every change), else from BACKENDS and the kernel's FIB (and cached).
/// The FIB lookup is the largest single cost of a packet; the cache turns it, and the BACKENDS
/// lookup, into a compare. Cached per backend, not per flow: routes that depend on the source are
/// not followed per flow. `len`: the packet's length as it will leave (for the MTU).
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    family: u8,
    src: &[u8; 16],
    id: u32,
    generation: u32,
    len: usize,
) -> Result<NextHop, Counter> {
    let cached = NEXT_HOPS.get_ptr_mut(id);
    if let Some(c) = cached {
        // SAFETY: this CPU's own slot; nothing else writes it while we run.
        let c = unsafe { &*c };
        if generation != 0 && c.generation == generation {
            if c.family != family {
                return Err(Counter::DropNoBackend);
            }
            return Ok(NextHop { smac: c.smac, dmac: c.dmac, ifindex: c.ifindex, addr: c.addr, mtu: c.mtu });
        }
    }
    let backend = flow::backend(id, family)?;
    let dst = backend.addr;
    let caching = cached.is_some() && generation != 0;
    // A lookup that checks a length answers with the path MTU only when the length exceeds it,
    // and then without MACs. Uncached: the packet's own length (it fits, or the MTU is all
    // that is needed). To cache: the largest length first, for the MTU, then the MACs.
    let probe = if caching { u16::MAX } else { len.min(u16::MAX as usize) as u16 };
    let mut hop = match fib_answer(fib_lookup(ctx, family, src, &dst, probe)) {
        Ok(hop) => NextHop { mtu: u16::MAX, ..hop },
        Err(Fib::TooBig(mtu)) if !caching => {
            return Ok(NextHop { smac: [0; 6], dmac: [0; 6], ifindex: 0, addr: dst, mtu })
        }
        Err(Fib::TooBig(mtu)) => match fib_answer(fib_lookup(ctx, family, src, &dst, 0)) {
            Ok(hop) => NextHop { mtu, ..hop },
            Err(e) => return Err(e.reason()),
        },
        Err(e) => return Err(e.reason()),
    };
    hop.addr = dst;
    if let (Some(c), true) = (cached, caching) {
        let entry = CachedHop {
            smac: hop.smac,
            dmac: hop.dmac,
            ifindex: hop.ifindex,
            generation,
            addr: dst,
            family,
            _pad: 0,
            mtu: hop.mtu,
        };
        // SAFETY: as above.
        unsafe { *c = entry };
    }
    Ok(hop)
}

/// Why `bpf_fib_lookup` gave no next hop.
enum Fib {
    /// The length asked about exceeds the path MTU (this one).
    TooBig(u16),
    /// Any other failure, by its `BPF_FIB_LKUP_RET_*` code.
    Failed(i64),
}

impl Fib {
    #[inline(always)]
    fn reason(&self) -> Counter {
        match self {
            Fib::TooBig(_) => Counter::PassFibOther,
            Fib::Failed(rc) => fib_failure(*rc),
        }
    }
}

/// Asks the kernel's FIB for the next hop towards `dst`, as seen from the ingress interface;
/// `len` (0: none) is checked against the path MTU. The answer stays in FIB_SCRATCH for
/// [`fib_answer`]; returns the helper's `BPF_FIB_LKUP_RET_*` code (negative: no request made).
/// Not inlined: it runs on next-hop cache misses only, twice to fill the cache, and one copy of
/// it keeps the program's stack small.
#[inline(never)]
fn fib_lookup(ctx: &XdpContext, family: u8, src: &[u8; 16], dst: &[u8; 16], len: u16) -> i64 {
    // In a per-CPU scratch slot rather than on the 512-byte BPF stack.
    let Some(p) = FIB_SCRATCH.get_ptr_mut(0) else { return -1 };
    // All zero, a valid empty request, as eight 8-byte stores: `mem::zeroed()` compiles to a call
    // to aya's byte-by-byte memset, 64 turns of a loop. Volatile: LLVM must not merge them back.
    const _: () = assert!(core::mem::size_of::<FibParams>() == 64);
    for i in 0..8 {
        // SAFETY: a per-CPU slot only this program run uses, 8-byte aligned (map values are).
        unsafe { core::ptr::write_volatile((p as *mut u64).add(i), 0) };
    }
    // SAFETY: as above.
    let p = unsafe { &mut *p };
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_1.tot_len = len;
    if family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    } else {
        p.family = AF_INET6;
        // SAFETY: plain integer unions.
        unsafe {
            words(src, &mut p.__bindgen_anon_3.ipv6_src);
            words(dst, &mut p.__bindgen_anon_4.ipv6_dst);
        }
    }
    // SAFETY: p is a properly sized, initialised request.
    unsafe { bpf_fib_lookup(ctx.as_ptr(), p as *mut FibParams, core::mem::size_of::<FibParams>() as i32, 0) }
}

/// What [`fib_lookup`] answered (code `rc`): the next hop (MTU not filled in), or why none.
#[inline(always)]
fn fib_answer(rc: i64) -> Result<NextHop, Fib> {
    let p = FIB_SCRATCH.get_ptr(0).ok_or(Fib::Failed(-1))?;
    // SAFETY: this CPU's scratch slot, written by the helper just now.
    let p = unsafe { &*p };
    match rc as u32 {
        0 => Ok(NextHop { smac: p.smac, dmac: p.dmac, ifindex: p.ifindex, addr: [0; 16], mtu: 0 }),
        // SAFETY: a plain integer union, written by the helper.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(Fib::TooBig(unsafe { p.__bindgen_anon_1.mtu_result })),
        _ => Err(Fib::Failed(rc)),
    }
}

/// The pass reason for a failed `bpf_fib_lookup` (its `BPF_FIB_LKUP_RET_*` code).
#[inline(always)]
fn fib_failure(rc: i64) -> Counter {
    match rc as u32 {
        BPF_FIB_LKUP_RET_FWD_DISABLED => Counter::PassFwdDisabled,
        BPF_FIB_LKUP_RET_NO_NEIGH => Counter::PassNoNeigh,
        BPF_FIB_LKUP_RET_BLACKHOLE
        | BPF_FIB_LKUP_RET_UNREACHABLE
        | BPF_FIB_LKUP_RET_PROHIBIT
        | BPF_FIB_LKUP_RET_NOT_FWDED => Counter::PassNoRoute,
        _ => Counter::PassFibOther,
    }
}

#[inline(always)]
fn words(a: &[u8; 16], out: &mut [u32; 4]) {
    out[0] = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
    out[1] = u32::from_ne_bytes([a[4], a[5], a[6], a[7]]);
    out[2] = u32::from_ne_bytes([a[8], a[9], a[10], a[11]]);
    out[3] = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
}
