//! Which backend a packet goes to: the flow table (flow_table.rs), and on a miss the VIP lookup
//! and the VIP's scheduler (schedule.rs).
use lb_common::{
    hash, BackendValue, ConfigValue, Counter, CounterBlock, FlowKey, VipKey, VipValue,
    BACKEND_TAKES_NEW_FLOWS, FAMILY_V4, NO_BACKEND, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
    VIP_HASH_SOURCE_ONLY,
};

use crate::{
    flow_table::{self, NewFlow, Slot},
    maps::{BACKENDS, VIPS, VIP_BY_ID, VIP_FILTER},
    policy::NO_VIP,
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

/// Where a packet goes: plain integers, copied from the flow table or the scheduler.
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
    /// The flow's FLOW_TABLE entry and its ctl word as read (`flow_table::NONE`: not recorded).
    pub entry: u32,
    pub ctl: u64,
}

/// The backend for a packet with flow key `key`. A known flow wins (drains, ring and scheduler
/// changes never move a live connection): its entry in FLOW_TABLE (flow_table.rs), in its first
/// set of four neighbouring cache lines (or its second), names its backend and its VIP, read by
/// id, so a known flow costs no hashing beyond the sets' and no VIP lookup. The access lists and rate limits
/// (policy.rs) check every recorded packet but those of a confirmed flow that passed them under
/// its VIP's policy generation; a SYN starts a flow and is checked first, before any flow-table
/// work. A SYN follows a known flow only to a backend that takes new flows: a client reusing a
/// port (NAT) after its backend was drained, went down or was removed gets a backend anew.
///
/// A miss looks the VIP up and asks its scheduler; `record` (the client's own packets, not ICMP
/// errors about them) records the choice unconfirmed, and the flow's next packet that is no SYN
/// confirms it: a new flow takes an empty entry of its set, an unconfirmed flow's, or an idle
/// connection's (lb-common/src/flow.rs), so packets that come once, as a spoofed flood's do,
/// never evict a connection active in the last second. A SYN records its flow too, whatever
/// the scheduler: the lines of both sets are in the cache from its lookup, so the entry costs a
/// few stores there, where the connection's next packet would pay the lookup's misses again.
#[inline(always)]
pub fn choose(
    key: &FlowKey,
    cfg: &ConfigValue,
    record: bool,
    syn: bool,
    counters: *mut CounterBlock,
) -> Result<Choice, Counter> {
    let sets = flow_table::sets_of(key, cfg.hash_seed);
    // The VIP, looked up once, where first needed: at once for a SYN, else on a miss or for the
    // checks of a flow that is not known yet.
    let mut vip = None;
    // The scheduler's hash (`hashed`: computed already, for a SYN's VIP).
    let (mut hash, mut hashed) = (0, false);
    if syn {
        // A SYN starts a flow: the checks first, before any flow-table work (a refused SYN
        // costs no more). Then its ring slot is read ahead, to overlap the flow table's misses
        // (about 10 % off a SYN in a full table; reading the flow's sets ahead as well made it
        // slower: bench_flows, December 2026).
        vip = lookup_vip(&key.dst, key.dport, key.proto, key.family);
        // (One call site per check: each one the verifier walks anew.)
        if record {
            crate::policy::screen(key, vip.map_or(NO_VIP, |v| v.id), true)?;
        }
        if let Some(v) = vip {
            (hash, hashed) = (flow_hash(v, key, cfg.hash_seed), true);
            schedule::prefetch(v, hash);
        }
    }
    let slot = flow_table::find(sets, key);
    let state = if slot.found() { live(&slot) } else { None };
    if record && !syn {
        // The VIP's policy generation, read before the checks (0: no flow, or a VIP policy no
        // flow skips). A confirmed flow stamped with it skips them; an unconfirmed one is
        // checked, and stamped too, so that from its confirmation on it skips them.
        let generation = if state.is_some() { crate::policy::generation(slot.vip()) } else { 0 };
        if generation == 0 || !slot.confirmed() || generation as u16 != slot.policy_generation() {
            let id = if state.is_some() {
                slot.vip()
            } else {
                vip = lookup_vip(&key.dst, key.dport, key.proto, key.family);
                vip.map_or(NO_VIP, |v| v.id)
            };
            crate::policy::screen(key, id, false)?;
            if generation != 0 && generation as u16 != slot.policy_generation() {
                // Passed under it (a change written meanwhile moved it on: checked again).
                flow_table::stamp_policy(&slot, generation);
            }
        }
    }
    // The flow's own entry, void or over: a new record of it takes that one first.
    let reuse = match state {
        Some((mode, takes)) if !syn || takes => {
            let mut counted = record && slot.counted();
            let mut new_flow = false;
            if record {
                crate::stats::add(counters, Counter::FlowHit);
                flow_table::touch(&slot, flow_table::clock());
                // A retransmitted SYN confirms nothing: the connection is open only once the
                // client answers the backend's SYN-ACK (else retransmits, or a spoofed flood
                // that repeats its SYNs, would count connections that never opened). A SYN on
                // the entry of a connection that closed opens a new one on a reused port
                // (schedule::reopen). One hidden condition for both, then the rare path: the
                // verifier walked 200,000 instructions more for two branches, and the known
                // flow's packet paid about 5 ns for a second one.
                let confirms = !slot.confirmed() & !syn;
                let reopens = syn & slot.confirmed() & !slot.counted() & (key.proto == PROTO_TCP);
                if crate::opaque::opaque((confirms | reopens) as u64) != 0 {
                    if syn {
                        new_flow = schedule::reopen(&slot);
                    } else {
                        let (confirmed, to_count) = flow_table::confirm(&slot);
                        if confirmed {
                            crate::stats::add(counters, Counter::FlowConfirmed);
                            if to_count {
                                schedule::opened(slot.backend());
                            }
                        }
                        counted = to_count;
                    }
                }
            }
            return Ok(Choice {
                id: slot.backend(),
                hash: slot.hash(),
                vip: slot.vip(),
                mode,
                new_flow,
                counted,
                entry: slot.index,
                ctl: slot.ctl,
            });
        }
        Some(_) => {
            // An earlier connection on this port, pinned to a backend that takes no new flows:
            // it is over (a SYN opens a new one), its entry goes.
            crate::stats::add(counters, Counter::SynRescheduled);
            schedule::forget(&slot);
            slot.index
        }
        None => slot.index,
    };
    let vip = match vip {
        Some(v) => v,
        None => lookup_vip(&key.dst, key.dport, key.proto, key.family).ok_or(Counter::PassNotVip)?,
    };
    if !hashed {
        hash = flow_hash(vip, key, cfg.hash_seed);
    }
    if vip.ring_size == 0 {
        return Err(Counter::DropNoBackend);
    }
    // A flow to record: its entry is chosen first, its backend once the limits admitted it.
    let mut new = NewFlow {
        sets,
        reuse,
        now: 0,
        to_count: false,
        backend_hash: 0,
        ids: 0,
        entry: flow_table::NONE,
        entry_ctl: 0,
        entry_rank: 0,
        evicted_counted: NO_BACKEND,
    };
    // A TCP flow's new flow is its SYN (limited before any flow-table work); a packet without SYN
    // continues a connection. Another protocol's flow starts with a packet of no flow that the
    // table records: only then does it meet the VIP's new-flow limits (once its entry is chosen,
    // before anything is written or a round-robin cursor moves: a refused flow leaves no trace)
    // and count as a new flow. A flow the table cannot record (its sets full of active
    // connections) is scheduled anew on every packet, first or not: counted new, each would
    // meet the limits, and an established stream would be refused packet after packet once the
    // table is full.
    let limited = key.proto != PROTO_TCP;
    if record {
        new.now = flow_table::clock();
        if flow_table::choose_entry(&mut new) && limited {
            crate::policy::new_flow(key, vip.id)?;
        }
    }
    let mut id = schedule::pick(vip, hash, record);
    let mut chosen = backend(id, key.family)?;
    // A ring the agent is rewriting (slot by slot, after a drain, a removal or a health change;
    // the backend's entry says first that it takes no new flows) may still name it.
    if record && chosen.flags & BACKEND_TAKES_NEW_FLOWS == 0 {
        id = schedule::repick(vip, hash, id);
        chosen = backend(id, key.family)?;
    }
    let backend_generation = chosen.generation;
    let mut new_flow = record && syn;
    if record {
        crate::stats::add(counters, Counter::FlowMiss);
        let vip_generation = VIP_BY_ID.get(vip.id).map_or(0, |s| s.generation);
        (new.backend_hash, new.ids) =
            flow_table::value_words(id, hash, vip.id, vip_generation, backend_generation);
        new.to_count = schedule::counts(vip, key);
        let outcome = flow_table::record(key, &mut new);
        new_flow |= limited && outcome != flow_table::NOT_RECORDED;
        // A TCP flow recorded at a packet that is no SYN: a connection that opened through
        // another balancer host, or a flood of ACKs (counted without a branch: one more path
        // here is one more walk of the rest for the verifier).
        let midstream = !limited & !syn & (outcome != flow_table::NOT_RECORDED);
        crate::stats::add_if(counters, Counter::FlowMidstream, midstream);
        match outcome {
            flow_table::RECORDED => crate::stats::add(counters, Counter::FlowPending),
            flow_table::EVICTED => {
                crate::stats::add(counters, Counter::FlowPending);
                crate::stats::add(counters, Counter::FlowEvicted);
                schedule::closed(new.evicted_counted);
            }
            _ => crate::stats::add(counters, Counter::FlowNotRecorded),
        }
    }
    Ok(Choice {
        id,
        hash,
        vip: vip.id,
        mode: vip.mode,
        new_flow,
        counted: false,
        entry: flow_table::NONE,
        ctl: 0,
    })
}

/// The hash a new flow of `vip` is scheduled by: its 5-tuple's, or its client address's.
#[inline(always)]
fn flow_hash(vip: &VipValue, key: &FlowKey, seed: u32) -> u32 {
    if vip.flags & VIP_HASH_SOURCE_ONLY != 0 {
        hash::source(key, seed)
    } else {
        hash::flow(key, seed)
    }
}

/// A flow entry's VIP mode and whether its backend takes new flows, if the entry is live (its
/// VIP and backend ids still mean what they meant when it was recorded).
#[inline(always)]
fn live(f: &Slot) -> Option<(u8, bool)> {
    match (VIP_BY_ID.get(f.vip()), BACKENDS.get(f.backend())) {
        (Some(slot), Some(b))
            if slot.generation as u16 == f.vip_generation()
                && b.generation as u16 == f.backend_generation() =>
        {
            // (Its backend's family is checked where it is used: forward.rs.)
            Some((slot.vip.mode, b.flags & BACKEND_TAKES_NEW_FLOWS != 0))
        }
        _ => None,
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
