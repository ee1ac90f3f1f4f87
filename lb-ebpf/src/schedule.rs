//! The schedulers: which backend a new flow gets. They run only on a flow-table miss: a flow's
//! first packet (or a packet whose flow the table lost: evicted, or recorded by another
//! balancer host); every later packet finds its backend in the flow table, whatever the VIP's
//! scheduler is or becomes.
//!
//! - Maglev (and source hash, the same with the client-address hash): the ring slot of the hash.
//! - Round robin: the next entry of the VIP's sequence (RR_SEQS, computed by the agent: smooth
//!   weighted round robin over the available backends), by a cursor per CPU (RR_CURSORS): no
//!   atomics and no sharing between CPUs, so each CPU's shares are exact and the interleaving
//!   across CPUs is not.
//! - Least connections: the power of two choices. Two ring picks (weighted by the ring), the one
//!   with fewer open connections per unit of weight wins; no loop over the backends. Counts are
//!   kept in ACTIVE_CONNS with atomic adds: +1 when a TCP flow of such a VIP enters the flow
//!   table confirmed (marked `FLOW_COUNTED`), −1 on the client's first FIN or RST of a marked
//!   flow ([`closing`]) or when a new flow takes its entry ([`closed`]); the agent corrects
//!   drift from the flow table.
use core::intrinsics::{atomic_xadd, atomic_xsub, AtomicOrdering::Relaxed};

use aya_ebpf::programs::XdpContext;
use lb_common::{
    hash, limits::RR_SEQ_LEN, FlowKey, VipValue, BACKEND_TAKES_NEW_FLOWS, NO_BACKEND, PROTO_TCP,
    SCHED_LEAST_CONN, SCHED_ROUND_ROBIN,
};

use crate::{
    flow_table::{self, Slot},
    maps::{ACTIVE_CONNS, BACKENDS, RINGS, RR_CURSORS, RR_SEQS, VIP_BY_ID},
    parse::ptr_at,
};

/// Further ring picks the least-conn scheduler makes when its second pick is its first backend
/// again (the VIP has a dominant backend, or one only): after these it takes the first.
const SECOND_PICK_TRIES: u32 = 4;
/// Further ring picks a new flow makes when its pick names a backend that takes no new flows
/// ([`repick`]); after these it keeps its pick.
const REPICK_TRIES: u32 = 4;
/// TCP header flags (byte 13).
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// The backend for a new flow of `vip` with hash `hash` (`NO_BACKEND`: none). `record`: the
/// flow is being created (an ICMP error about an unknown flow only borrows a ring pick and
/// moves no round-robin cursor).
#[inline(always)]
pub fn pick(vip: &VipValue, hash: u32, record: bool) -> u32 {
    if vip.scheduler == SCHED_ROUND_ROBIN && record {
        round_robin(vip)
    } else if vip.scheduler == SCHED_LEAST_CONN {
        least_conn(vip, hash)
    } else {
        ring(vip, hash)
    }
}

/// A new flow's pick `id` named a backend that takes no new flows: only while the agent rewrites
/// the VIP's ring (or sequence) slot by slot, after a drain, a removal or a health change, whose
/// steps mark the backend first. The first of up to [`REPICK_TRIES`] further ring picks that
/// takes new flows, else `id`. Without it, a SYN in those milliseconds (a 65,537-slot ring is
/// tens of thousands of writes) would pin a new connection to a drained or removed backend for
/// its whole life. Not inlined: it runs only then.
#[inline(never)]
pub fn repick(vip: &VipValue, hash: u32, id: u32) -> u32 {
    let mut h = hash;
    let mut i = 0;
    while i < REPICK_TRIES {
        h = hash::rehash(h);
        let other = ring(vip, h);
        if BACKENDS.get(other).is_some_and(|b| b.flags & BACKEND_TAKES_NEW_FLOWS != 0) {
            return other;
        }
        i += 1;
    }
    id
}

/// Whether a new flow counts as an open connection once confirmed: TCP flows of least-conn VIPs.
#[inline(always)]
pub fn counts(vip: &VipValue, key: &FlowKey) -> bool {
    vip.scheduler == SCHED_LEAST_CONN && key.proto == PROTO_TCP
}

/// A counted flow entered the flow table: one more open connection on backend `id`.
#[inline(always)]
pub fn opened(id: u32) {
    if let Some(count) = ACTIVE_CONNS.get_ptr_mut(id) {
        // SAFETY: a u64 in a map value, 8-byte aligned; every writer uses atomics (or the
        // agent's whole-word update). `core`'s atomic types have no read-modify-write operations
        // on BPF targets: the intrinsic is the BPF atomic add.
        unsafe { atomic_xadd::<u64, u64, { Relaxed }>(count, 1) };
    }
}

/// A packet of a counted flow pinned to backend `id`, in FLOW_TABLE entry `entry` (read with
/// ctl word `ctl`): if it carries FIN or RST, the flow stops counting (once, whichever CPU sees
/// it first) and so does its backend's count. The TCP header at `l4_offset` was checked whole by
/// the parser.
#[inline(always)]
pub fn closing(ctx: &XdpContext, l4_offset: usize, entry: u32, ctl: u64, id: u32) {
    let Ok(flags) = ptr_at::<u8>(ctx, l4_offset + TCP_FLAGS_OFFSET) else { return };
    // SAFETY: bounds checked by ptr_at.
    if unsafe { *flags } & (TCP_FIN | TCP_RST) != 0 {
        uncount(entry, ctl, id);
    }
}

/// Frees the entry of a connection that is over (a SYN reused its port), uncounting it first if
/// it still counts. Not inlined: it runs rarely.
#[inline(never)]
pub fn forget(slot: &Slot) {
    uncount(slot.index, slot.ctl, slot.backend());
    flow_table::free(slot);
}

/// A SYN found the confirmed, uncounted entry of its TCP flow: if the flow's VIP is least-conn,
/// the connection it held closed (its count went at its FIN or RST; a late SYN of an open one
/// finds it counted), and this is a new connection on a reused port (NAT gateways and busy
/// clients reuse ports once TIME_WAIT is over). Its entry goes back to unconfirmed, to be
/// counted when the client's ACK confirms it, as any new connection is. True if it did: a new
/// flow. Not inlined: it runs once per reused port.
#[inline(never)]
pub fn reopen(slot: &Slot) -> bool {
    match VIP_BY_ID.get(slot.vip()) {
        Some(v) if v.vip.scheduler == SCHED_LEAST_CONN => flow_table::reopen(slot),
        _ => false,
    }
}

/// A counted connection left the table (its entry went to a new flow): one less on backend `id`
/// (`NO_BACKEND`: none was counted).
#[inline(always)]
pub fn closed(id: u32) {
    if id == NO_BACKEND {
        return;
    }
    if let Some(count) = ACTIVE_CONNS.get_ptr_mut(id) {
        // SAFETY: as in `opened`.
        unsafe { atomic_xsub::<u64, u64, { Relaxed }>(count, 1) };
    }
}

/// Not inlined: it runs once per counted connection and keeps the common path as it was. (No
/// packet pointer crosses the call: the verifier refuses what LLVM makes of one passed in.)
#[inline(never)]
fn uncount(entry: u32, ctl: u64, id: u32) {
    if flow_table::take_count(entry, ctl) {
        closed(id);
    }
}

/// The VIP's ring slot for `hash` in RINGS (none for an empty ring: slot 0 would be another
/// ring's).
#[inline(always)]
fn ring_slot(vip: &VipValue, hash: u32) -> Option<*const u32> {
    if vip.ring_size == 0 {
        return None;
    }
    RINGS.get_ptr(vip.ring_offset + hash::ring_slot(hash, vip.ring_size))
}

/// The backend of the VIP's ring slot for `hash`.
#[inline(always)]
fn ring(vip: &VipValue, hash: u32) -> u32 {
    match ring_slot(vip, hash) {
        // SAFETY: a u32 of the map's value, written whole by the agent.
        Some(p) => unsafe { *p },
        None => NO_BACKEND,
    }
}

/// Starts reading the ring slot that [`pick`] will read for a new flow of `vip` with hash
/// `hash` (a SYN's: most likely a cache miss in a ring of 65,537 slots), so that the read
/// overlaps the flow table's misses instead of following them.
#[inline(always)]
pub fn prefetch(vip: &VipValue, hash: u32) {
    if vip.scheduler == SCHED_ROUND_ROBIN {
        return;
    }
    if let Some(p) = ring_slot(vip, hash) {
        // SAFETY: as in `ring`; the value is not needed, only the line.
        unsafe { core::ptr::read_volatile(p) };
    }
}

/// The next entry of the VIP's round-robin sequence for this CPU.
#[inline(always)]
fn round_robin(vip: &VipValue) -> u32 {
    let len = vip.rr_len as u32;
    let Some(cursor) = RR_CURSORS.get_ptr_mut(vip.id) else { return NO_BACKEND };
    if len == 0 {
        return NO_BACKEND;
    }
    // SAFETY: this CPU's slot: nothing else writes it while we run.
    let at = unsafe {
        let at = *cursor;
        // The sequence may have shrunk since.
        let at = if at >= len { 0 } else { at };
        *cursor = if at + 1 >= len { 0 } else { at + 1 };
        at
    };
    RR_SEQS.get(vip.id * RR_SEQ_LEN + at).copied().unwrap_or(NO_BACKEND)
}

/// Of two ring picks, the backend with fewer open connections per unit of weight (the first
/// pick on a tie, and when no second backend turns up).
#[inline(always)]
fn least_conn(vip: &VipValue, hash: u32) -> u32 {
    let first = ring(vip, hash);
    let mut second = first;
    let mut h = hash;
    let mut i = 0;
    while i < SECOND_PICK_TRIES {
        h = hash::rehash(h);
        second = ring(vip, h);
        if second != first {
            break;
        }
        i += 1;
    }
    if second == first {
        return first;
    }
    let (a, wa) = load(first);
    let (b, wb) = load(second);
    // b / wb < a / wa without a division.
    if (b as u64) * (wa as u64) < (a as u64) * (wb as u64) {
        second
    } else {
        first
    }
}

/// Backend `id`'s open connections (negative counts read as 0, huge ones capped) and weight (at
/// least 1).
#[inline(always)]
fn load(id: u32) -> (u32, u32) {
    let active = match ACTIVE_CONNS.get_ptr(id) {
        // SAFETY: an aligned u64 in a map value, read whole.
        Some(c) => (unsafe { core::ptr::read_volatile(c) }) as i64,
        None => 0,
    };
    let weight = match BACKENDS.get(id) {
        Some(b) if b.weight > 0 => b.weight as u32,
        _ => 1,
    };
    let active = if active < 0 {
        0
    } else if active > u32::MAX as i64 {
        u32::MAX
    } else {
        active as u32
    };
    (active, weight)
}
