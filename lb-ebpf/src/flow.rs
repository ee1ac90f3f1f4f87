//! Which backend a packet goes to: VIP lookup, flow table, and on a miss the VIP's scheduler
//! (schedule.rs).
use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    hash, BackendValue, ConfigValue, Counter, FlowKey, FlowValue, VipKey, VipValue, FAMILY_V4, FLOW_COUNTED,
    NO_BACKEND, PROTO_ICMP, PROTO_ICMPV6, VIP_HASH_SOURCE_ONLY,
};

use crate::{
    maps::{BACKENDS, FLOWS, VIPS},
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

/// Whether `addr` is a VIP address (the agent adds an ICMP entry for each).
#[inline(always)]
pub fn is_vip_address(addr: &[u8; 16], family: u8) -> bool {
    let proto = if family == FAMILY_V4 { PROTO_ICMP } else { PROTO_ICMPV6 };
    let key = VipKey { addr: *addr, port: 0, proto, family };
    VIPS.get_ptr(&key).is_some()
}

/// Plain integers only: it crosses a BPF function call through the stack, where the verifier
/// does not let a spilled map pointer be read back in pieces.
pub struct Choice {
    pub id: u32,
    /// The flow hash, also used for tunnel source entropy.
    pub hash: u32,
    pub new_flow: bool,
    /// The flow counts as an open connection of its backend (least-conn): its FIN or RST
    /// uncounts it (`schedule::closing`).
    pub counted: bool,
}

/// A flow-table hit wins (drains, ring and scheduler changes never move a live connection); a
/// miss asks the VIP's scheduler and, if `record`, remembers the choice.
#[inline(never)]
pub fn choose(vip: &VipValue, key: &FlowKey, cfg: &ConfigValue, record: bool) -> Result<Choice, Counter> {
    // SAFETY: flow values are plain integers written whole.
    let (id, hash, new_flow, flags) = match unsafe { FLOWS.get(key) } {
        // A known flow needs no hashing: its hash was kept with it.
        Some(v) => (v.backend, v.hash, false, v.flags),
        None => {
            if vip.ring_size == 0 {
                return Err(Counter::DropNoBackend);
            }
            let hash = if vip.flags & VIP_HASH_SOURCE_ONLY != 0 {
                hash::source(key, cfg.hash_seed)
            } else {
                hash::flow(key, cfg.hash_seed)
            };
            (schedule::pick(vip, hash, record), hash, true, schedule::flow_flags(vip, key))
        }
    };
    backend(id, key.family)?;
    // Only the client's own packets make (and count as) flows; an ICMP error about one does not.
    let new_flow = new_flow && record;
    if record {
        crate::stats::count(if new_flow { Counter::FlowMiss } else { Counter::FlowHit });
    }
    let mut counted = record && flags & FLOW_COUNTED != 0;
    if new_flow {
        // A full table evicts its least recently used flow; an error here only costs a re-pick.
        // A counted flow counts only if this packet made it (not another CPU's at the same time).
        let mode = if counted { BPF_NOEXIST as u64 } else { 0 };
        counted = FLOWS.insert(key, &FlowValue { backend: id, hash, flags }, mode).is_ok() && counted;
        if counted {
            schedule::opened(id);
        }
    }
    Ok(Choice { id, hash, new_flow, counted })
}

/// Backend `id` if it is configured and of the packet's family.
#[inline(always)]
pub fn backend(id: u32, family: u8) -> Result<&'static BackendValue, Counter> {
    match BACKENDS.get(id) {
        Some(b) if id != NO_BACKEND && b.family == family => Ok(b),
        _ => Err(Counter::DropNoBackend),
    }
}
