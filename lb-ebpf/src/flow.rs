//! Which backend a packet goes to: the flow table, and on a miss the VIP lookup and the VIP's
//! scheduler (schedule.rs).
use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    hash, BackendValue, ConfigValue, Counter, CounterBlock, FlowKey, FlowValue, VipKey, VipValue, FAMILY_V4,
    FLOW_COUNTED, NO_BACKEND, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, SCHED_MAGLEV, VIP_HASH_SOURCE_ONLY,
};

use crate::{
    maps::{CachedFlow, BACKENDS, FLOWS, FLOW_CACHE, FLOW_CACHE_BITS, VIPS, VIP_BY_ID, VIP_FILTER},
    schedule,
};

/// The VIP for (address, port, protocol): the port-specific entry first, then the any-port one.
#[inline(always)]
pub fn lookup_vip(addr: &[u8; 16], port: u16, proto: u8, family: u8) -> Option<&'static VipValue> {
    let mut key = VipKey { addr: *addr, port, proto, family };
    // SAFETY: VIP values are plain integers written whole by the agent.
    if let Some(v) = unsafe { VIPS.get(&key) } {
        return Some(v);
    }
    if port == 0 {
        return None;
    }
    key.port = 0;
    unsafe { VIPS.get(&key) }
}

/// False if `addr` is certainly no VIP's address (its VIP_FILTER bit is clear): the cheap test
/// that passes traffic for other addresses without a hash-map lookup.
#[inline(always)]
pub fn may_be_vip(addr: &[u8; 16]) -> bool {
    let bit = hash::vip_filter_bit(addr);
    match VIP_FILTER.get(bit / 64) {
        Some(word) => *word & (1 << (bit % 64)) != 0,
        None => true,
    }
}

/// Whether `addr` is a VIP address (the agent adds an ICMP entry for each).
#[inline(always)]
pub fn is_vip_address(addr: &[u8; 16], family: u8) -> bool {
    let proto = if family == FAMILY_V4 { PROTO_ICMP } else { PROTO_ICMPV6 };
    let key = VipKey { addr: *addr, port: 0, proto, family };
    VIPS.get_ptr(&key).is_some()
}

/// Where a packet goes: plain integers, copied from the flow cache, the flow table or the
/// scheduler.
pub struct Choice {
    pub id: u32,
    /// The flow hash, also used for tunnel source entropy.
    pub hash: u32,
    /// The VIP's id (`VipValue::id`) and forwarding mode.
    pub vip: u32,
    pub mode: u8,
    /// The packet starts a flow: counted in the VIP's and the backend's new flows.
    pub new_flow: bool,
    /// The flow counts as an open connection of its backend (least-conn): its FIN or RST
    /// uncounts it (`schedule::closing`).
    pub counted: bool,
}

/// The backend for a packet with flow key `key`. A flow-table hit wins (drains, ring and
/// scheduler changes never move a live connection) and costs one hash-map lookup: the entry
/// names its VIP, read by id. A miss looks the VIP up and asks its scheduler; `record` (the
/// client's own packets, not ICMP errors about them) remembers the choice, except for the SYN
/// (`syn`) of a Maglev VIP: the ring gives the connection's next packet the same backend, and
/// that packet records the flow. So a SYN flood from spoofed addresses fills no flow-table
/// entry and evicts no connection. This CPU's FLOW_CACHE answers for the flow table when it
/// holds the flow under the current cache generation.
#[inline(always)]
pub fn choose(
    key: &FlowKey,
    cfg: &ConfigValue,
    record: bool,
    syn: bool,
    counters: *mut CounterBlock,
) -> Result<Choice, Counter> {
    let generation = cfg.cache_generation;
    // SAFETY: a read of the program's own read-only data.
    let bits = unsafe { core::ptr::read_volatile(&FLOW_CACHE_BITS) } as u32;
    let on = generation != 0 && bits != 0 && bits <= 24;
    // SAFETY: a plain helper call.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    // A plain pointer, null for none: an `Option` leaves its payload undefined when None, and
    // the verifier refuses a spilled undefined register.
    let cached = match FLOW_CACHE.get_ptr_mut((cpu << bits) | cache_slot(key, bits)) {
        Some(c) if on => c,
        _ => core::ptr::null_mut(),
    };
    if !cached.is_null() {
        // SAFETY: this CPU's own slot; nothing else writes it while we run.
        let c = unsafe { &mut *cached };
        // Every 256th hit goes to the flow table instead (and refills the slot): the table's
        // LRU then sees the flow as used even while no lbd moves the generation.
        c.hits = c.hits.wrapping_add(1);
        if c.generation == generation && c.hits != 0 && same_key(&c.key, key) {
            if record {
                crate::stats::add(counters, Counter::FlowHit);
            }
            let counted = record && c.counted != 0;
            return Ok(Choice {
                id: c.backend,
                hash: c.hash,
                vip: c.vip,
                mode: c.mode,
                new_flow: false,
                counted,
            });
        }
    }
    // SAFETY: flow values are plain integers written whole.
    let stale = match unsafe { FLOWS.get(key) } {
        Some(f) => match (VIP_BY_ID.get(f.vip as u32), BACKENDS.get(f.backend)) {
            // A known flow needs no hashing either: its hash was kept with it.
            (Some(slot), Some(b))
                if slot.generation == f.vip_generation && b.generation == f.backend_generation =>
            {
                // (Its backend's family is checked where it is used: forward.rs.)
                let (id, hash, vip, flags) = (f.backend, f.hash, f.vip as u32, f.flags);
                if record {
                    crate::stats::add(counters, Counter::FlowHit);
                }
                let choice = Choice { id, hash, vip, mode: slot.vip.mode, new_flow: false, counted: false };
                remember(cached, key, &choice, flags & FLOW_COUNTED != 0, generation);
                return Ok(Choice { counted: record && flags & FLOW_COUNTED != 0, ..choice });
            }
            // Its VIP is gone, or its VIP's or backend's id names another one now.
            _ => true,
        },
        None => false,
    };
    let vip = lookup_vip(&key.dst, key.dport, key.proto, key.family).ok_or(Counter::PassNotVip)?;
    if vip.ring_size == 0 {
        return Err(Counter::DropNoBackend);
    }
    let hash = if vip.flags & VIP_HASH_SOURCE_ONLY != 0 {
        hash::source(key, cfg.hash_seed)
    } else {
        hash::flow(key, cfg.hash_seed)
    };
    let id = schedule::pick(vip, hash, record);
    let backend_generation = backend(id, key.family)?.generation;
    if record {
        crate::stats::add(counters, Counter::FlowMiss);
    }
    // A TCP packet without SYN continues a connection: its SYN was the new flow.
    let new_flow = record && (key.proto != PROTO_TCP || syn);
    let flags = schedule::flow_flags(vip, key);
    let mut choice = Choice { id, hash, vip: vip.id, mode: vip.mode, new_flow, counted: false };
    if record && !(syn && vip.scheduler == SCHED_MAGLEV) {
        let vip_generation = VIP_BY_ID.get(vip.id).map_or(0, |s| s.generation);
        // A full table evicts its least recently used flow; an error here only costs a re-pick.
        // A counted flow counts only if this packet made it (not another CPU's at the same
        // time); a stale entry is replaced.
        let counted = flags & FLOW_COUNTED != 0;
        let mode = if counted && !stale { BPF_NOEXIST as u64 } else { 0 };
        let value = FlowValue {
            backend: id,
            hash,
            vip: vip.id as u16,
            backend_generation,
            _pad: 0,
            vip_generation,
            flags,
        };
        let recorded = FLOWS.insert(key, &value, mode).is_ok();
        choice.counted = recorded && counted;
        if choice.counted {
            schedule::opened(id);
        }
        if recorded {
            remember(cached, key, &choice, choice.counted, generation);
        }
    }
    Ok(choice)
}

/// FLOW_CACHE's slot for `key` in a cache of 2^`bits` slots (1..=24): its five words folded
/// and scattered by a multiplication, the top bits kept.
#[inline(always)]
fn cache_slot(key: &FlowKey, bits: u32) -> u32 {
    let w = words(key);
    let h = w[0] ^ w[1].rotate_left(13) ^ w[2].rotate_left(29) ^ w[3].rotate_left(43) ^ w[4].rotate_left(7);
    (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - (bits & 63))) as u32
}

#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    let (a, b) = (words(a), words(b));
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
}

/// A flow key as 64-bit words (no byte-wise compare: aya's `memcmp` is a byte loop).
#[inline(always)]
fn words(key: &FlowKey) -> &[u64; 5] {
    const _: () = assert!(core::mem::size_of::<FlowKey>() == 40 && core::mem::align_of::<FlowKey>() == 8);
    // SAFETY: same size, FlowKey is 8-byte aligned, and every byte of it is an integer field.
    unsafe { &*(key as *const FlowKey as *const [u64; 5]) }
}

/// Puts the flow in this CPU's cache slot (if caching is on).
#[inline(always)]
fn remember(slot: *mut CachedFlow, key: &FlowKey, c: &Choice, counted: bool, generation: u32) {
    if !slot.is_null() {
        let entry = CachedFlow {
            key: *key,
            backend: c.id,
            hash: c.hash,
            vip: c.vip,
            generation,
            mode: c.mode,
            counted: counted as u8,
            hits: 0,
            _pad: [0; 5],
        };
        // SAFETY: this CPU's own slot.
        unsafe { *slot = entry };
    }
}

/// Backend `id` if it is configured and of the packet's family.
#[inline(always)]
pub fn backend(id: u32, family: u8) -> Result<&'static BackendValue, Counter> {
    match BACKENDS.get(id) {
        Some(b) if id != NO_BACKEND && b.family == family => Ok(b),
        _ => Err(Counter::DropNoBackend),
    }
}
