//! Which backend a packet goes to: the flow table, and on a miss the VIP lookup and the VIP's
//! scheduler (schedule.rs).
use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    hash, BackendValue, ConfigValue, Counter, CounterBlock, FlowKey, FlowValue, VipKey, VipValue,
    BACKEND_TAKES_NEW_FLOWS, FAMILY_V4, FLOW_COUNTED, NO_BACKEND, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
    SCHED_MAGLEV, VIP_HASH_SOURCE_ONLY,
};

use crate::{
    maps::{
        CachedFlow, BACKENDS, FLOWS, FLOW_CACHE, FLOW_CACHE_BITS, PENDING_FLOWS, VIPS, VIP_BY_ID, VIP_FILTER,
    },
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

/// The backend for a packet with flow key `key`. A known flow wins (drains, ring and scheduler
/// changes never move a live connection): this CPU's FLOW_CACHE first (not for a SYN), then
/// FLOWS (confirmed flows), then PENDING_FLOWS (flows with one recorded packet). An entry names
/// its VIP, read by id, so a known flow costs no VIP lookup. The access lists and rate limits
/// (policy.rs) check a recorded packet before PENDING_FLOWS: every packet but those of a
/// confirmed flow that passed them under its VIP's policy generation. A SYN follows a known flow only to a backend that
/// takes new flows: a client reusing a port (NAT) after its backend was drained, went down or
/// was removed gets a backend anew.
///
/// A miss looks the VIP up and asks its scheduler; `record` (the client's own packets, not ICMP
/// errors about them) remembers the choice in PENDING_FLOWS, and the flow's next packet moves
/// it into FLOWS: packets that come once, as a spoofed flood's do, never evict a confirmed
/// connection. The SYN of a Maglev VIP records nothing at all: the ring gives the connection's
/// next packet the same backend.
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
    let cached = match FLOW_CACHE.get_ptr_mut((cpu << bits) | hash::flow_cache_slot(key, bits)) {
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
            if !syn {
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
            // A SYN starts a flow: the policy checks it, and the table decides (a backend that
            // takes no new flows drops the flow). The slot answers no more.
            c.generation = 0;
        }
    }
    // A void FLOWS entry (its VIP or backend id means another one now) is replaced, not kept.
    let mut void = false;
    // The access lists and rate limits (policy.rs), before any flow-table work but the lookup
    // of a confirmed flow, which skips them once one of its packets passed them under its VIP's
    // policy generation (read here, before them). A SYN starts a flow: checked first, always.
    // (One call site: each one the verifier walks anew.)
    let mut flow = core::ptr::null_mut();
    if !(record && syn) {
        flow = FLOWS.get_ptr_mut(key).unwrap_or(core::ptr::null_mut());
    }
    // SAFETY (the dereferences of `flow`): a FLOWS entry or null; flow values are plain
    // integers written whole, but the policy stamp, which any CPU may write (a u32 it read).
    let confirmed = record && !flow.is_null() && live(unsafe { &*flow }).is_some();
    // 0: none (no confirmed flow, or a VIP policy no flow skips).
    let policy_generation = if confirmed { crate::policy::generation(unsafe { &*flow }) } else { 0 };
    let stamp = if flow.is_null() { 0 } else { unsafe { (*flow).policy_generation } };
    if record && (policy_generation == 0 || stamp != policy_generation) {
        crate::policy::screen(key, syn)?;
        if policy_generation != 0 {
            // Passed under it (a change written meanwhile moved it on: checked again).
            unsafe { (*flow).policy_generation = policy_generation };
        }
    }
    if record && syn {
        flow = FLOWS.get_ptr_mut(key).unwrap_or(core::ptr::null_mut());
    }
    if !flow.is_null() {
        let f = unsafe { &*flow };
        match live(f) {
            Some((mode, takes)) if !syn || takes => {
                // A known flow needs no hashing either: its hash was kept with it.
                if record {
                    crate::stats::add(counters, Counter::FlowHit);
                }
                let counted = f.flags & FLOW_COUNTED != 0;
                let choice =
                    Choice { id: f.backend, hash: f.hash, vip: f.vip, mode, new_flow: false, counted: false };
                remember(cached, key, &choice, counted, generation);
                return Ok(Choice { counted: record && counted, ..choice });
            }
            Some(_) => {
                // An earlier connection on this port, pinned to a backend that takes no new
                // flows: it is over (a SYN opens a new one), its entry goes.
                crate::stats::add(counters, Counter::SynRescheduled);
                schedule::forget(key, f.backend);
            }
            None => void = true,
        }
    }
    // SAFETY: as above.
    if let Some(f) = unsafe { PENDING_FLOWS.get(key) } {
        match live(f) {
            Some((mode, takes)) if !syn || takes => {
                let mut choice =
                    Choice { id: f.backend, hash: f.hash, vip: f.vip, mode, new_flow: false, counted: false };
                if record {
                    crate::stats::add(counters, Counter::FlowHit);
                    choice.counted = confirm(key, f, void, counters);
                    remember(cached, key, &choice, choice.counted, generation);
                }
                return Ok(choice);
            }
            Some(_) => {
                crate::stats::add(counters, Counter::SynRescheduled);
                let _ = PENDING_FLOWS.remove(key);
            }
            None => {}
        }
    }
    let vip = lookup_vip(&key.dst, key.dport, key.proto, key.family).ok_or(Counter::PassNotVip)?;
    if vip.ring_size == 0 {
        return Err(Counter::DropNoBackend);
    }
    if record && key.proto != PROTO_TCP {
        // It starts a flow: the VIP's new-flow limits (a TCP flow's were its SYN's).
        crate::policy::new_flow(key, vip.id)?;
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
    let choice = Choice { id, hash, vip: vip.id, mode: vip.mode, new_flow, counted: false };
    if record && !(syn && vip.scheduler == SCHED_MAGLEV) {
        let vip_generation = VIP_BY_ID.get(vip.id).map_or(0, |s| s.generation);
        let value = FlowValue {
            backend: id,
            hash,
            vip: vip.id,
            vip_generation,
            backend_generation,
            policy_generation: 0,
            flags: schedule::flow_flags(vip, key),
        };
        // A full table evicts its least recently used (unconfirmed) flow; an error here only
        // costs a re-pick.
        if PENDING_FLOWS.insert(key, &value, 0).is_ok() {
            crate::stats::add(counters, Counter::FlowPending);
        }
    }
    Ok(choice)
}

/// A flow entry's VIP mode and whether its backend takes new flows, if the entry is live (its
/// VIP and backend ids still mean what they meant when it was recorded).
#[inline(always)]
fn live(f: &FlowValue) -> Option<(u8, bool)> {
    match (VIP_BY_ID.get(f.vip), BACKENDS.get(f.backend)) {
        (Some(slot), Some(b))
            if slot.generation == f.vip_generation && b.generation == f.backend_generation =>
        {
            // (Its backend's family is checked where it is used: forward.rs.)
            Some((slot.vip.mode, b.flags & BACKEND_TAKES_NEW_FLOWS != 0))
        }
        _ => None,
    }
}

/// The second recorded packet of a flow: it moves from PENDING_FLOWS into FLOWS. Returns
/// whether it now counts as an open connection of its backend (least-conn): only the CPU whose
/// insert made the entry counts it (unless it replaced a void one). Not inlined: it runs once a
/// flow.
#[inline(never)]
fn confirm(key: &FlowKey, f: &FlowValue, void: bool, counters: *mut CounterBlock) -> bool {
    let value = *f;
    let counted = value.flags & FLOW_COUNTED != 0;
    let mode = if counted && !void { BPF_NOEXIST as u64 } else { 0 };
    let recorded = FLOWS.insert(key, &value, mode).is_ok();
    let _ = PENDING_FLOWS.remove(key);
    if recorded {
        crate::stats::add(counters, Counter::FlowConfirmed);
    }
    if recorded && counted {
        schedule::opened(value.backend);
    }
    recorded && counted
}

#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    let (a, b) = (hash::words(a), hash::words(b));
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
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
