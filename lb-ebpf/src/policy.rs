//! Edge policy, before any flow-table work: the access lists (the global deny list first, then
//! the VIP's allow and deny lists, longest prefix wins) and the VIP's rate limits (per source:
//! packets and new flows a second; the whole VIP: new flows a second).
//!
//! It runs for the client's packets that no confirmed flow answers for: a confirmed flow skips it
//! once one of its packets passed it under the VIP's current policy generation
//! (`VipPolicy::generation`, stamped in the flow's entry), which the agent moves on with every
//! change of the lists or limits: a new deny reaches established flows at once while their
//! packets cost nothing more here. A SYN (a new flow) always runs it. Buckets are per CPU (no
//! lock or atomic shared between CPUs): each CPU admits its share of a rate (`Gcra::share`).
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns},
    maps::lpm_trie::Key,
};
use lb_common::{
    AclKey, Counter, FlowKey, PolicyReason, SourceKey, SourceState, VipPolicy, ACL_DENY, POLICY_ACL,
    POLICY_GLOBAL_DENY, POLICY_PASS_OVER_LIMIT, POLICY_TRACK,
};

use crate::maps::{ACL, POLICY_STATS, SOURCES, VIP_FLOW_BUCKETS, VIP_POLICY};

/// What the checks below answer: admitted, or the index of the counter that ends the packet.
/// (A plain integer: the checks are subprograms, whose results travel in one register.)
const ADMIT: u32 = 0;

/// `screen`'s VIP id for a packet that matches no VIP (the pipeline passes it).
pub const NO_VIP: u32 = u32::MAX;

/// A packet of flow `key` to VIP `vip` (its id, or [`NO_VIP`]) that no confirmed flow answers
/// for (`syn`: a TCP SYN, which starts a flow): admitted, or the verdict that ends it. The
/// caller looked the VIP up: it needs it too, and one hash-map lookup a packet is enough.
#[inline(always)]
pub fn screen(key: &FlowKey, vip: u32, syn: bool) -> Result<(), Counter> {
    verdict(check(key, vip, syn))
}

/// Whether the global deny list denies the packet's source (for ICMP to a VIP address, which
/// meets no VIP's checks).
#[inline(always)]
pub fn globally_denied(key: &FlowKey) -> bool {
    denied(AclKey::GLOBAL, key)
}

/// The policy generation of VIP `vip` (0: no flow skips the checks): a confirmed flow of it
/// skips them if one of its packets passed them under it. Read before the checks, once (a
/// change written meanwhile moves it on, and the flow is checked again).
#[inline(always)]
pub fn generation(vip: u32) -> u32 {
    match VIP_POLICY.get_ptr(vip) {
        // SAFETY: an array slot of plain integers; volatile: read once, here.
        Some(p) => unsafe { core::ptr::read_volatile(&(*p).generation) },
        None => 0,
    }
}

/// A non-TCP packet that found no flow and that the flow table has an entry for (it starts a
/// flow) to VIP `vip`: admitted, or the verdict. (A TCP flow's start is its SYN, which
/// [`screen`] already limited.)
#[inline(always)]
pub fn new_flow(key: &FlowKey, vip: u32) -> Result<(), Counter> {
    verdict(check_new_flow(key, vip))
}

#[inline(never)]
fn check(key: &FlowKey, id: u32, syn: bool) -> u32 {
    // (NO_VIP: no slot.)
    let Some(policy) = VIP_POLICY.get(id) else { return ADMIT };
    let global = policy.flags & POLICY_GLOBAL_DENY != 0 && denied(AclKey::GLOBAL, key);
    if global || (policy.flags & POLICY_ACL != 0 && denied(AclKey::scope_of(id), key)) {
        return refuse(id, PolicyReason::Acl, false, policy);
    }
    if policy.flags & POLICY_TRACK == 0 {
        return ADMIT;
    }
    let Some(state) = source(key, id, policy) else { return ADMIT };
    // SAFETY: a plain helper call; `state` is this CPU's own entry (the CPU is in its key).
    let (now, s) = unsafe { (bpf_ktime_get_coarse_ns(), &mut *state) };
    s.roll(now / 1_000_000_000);
    s.packets[0] = s.packets[0].wrapping_add(1);
    if !policy.source_packets.admit(&mut s.packet_tat, now) {
        s.drops[0] = s.drops[0].wrapping_add(1);
        return refuse(id, PolicyReason::RatePackets, false, policy);
    }
    if syn {
        return admit_new_flow(id, policy, s, now, true);
    }
    ADMIT
}

#[inline(never)]
fn check_new_flow(key: &FlowKey, id: u32) -> u32 {
    let Some(policy) = VIP_POLICY.get(id) else { return ADMIT };
    if policy.flags & POLICY_TRACK == 0 {
        return ADMIT;
    }
    let Some(state) = source(key, id, policy) else { return ADMIT };
    // SAFETY: as in `check`.
    let (now, s) = unsafe { (bpf_ktime_get_coarse_ns(), &mut *state) };
    s.roll(now / 1_000_000_000);
    admit_new_flow(id, policy, s, now, false)
}

/// A flow's start from source state `s`: its source's new-flow bucket, then the VIP's.
#[inline(always)]
fn admit_new_flow(id: u32, policy: &VipPolicy, s: &mut SourceState, now: u64, tcp: bool) -> u32 {
    s.new_flows[0] = s.new_flows[0].wrapping_add(1);
    let reason = if !policy.source_flows.admit(&mut s.flow_tat, now) {
        PolicyReason::RateNewFlows
    } else {
        match VIP_FLOW_BUCKETS.get_ptr_mut(id) {
            // SAFETY: this CPU's slot.
            Some(tat) if !policy.vip_flows.admit(unsafe { &mut *tat }, now) => PolicyReason::VipNewFlowCap,
            _ => return ADMIT,
        }
    };
    s.drops[0] = s.drops[0].wrapping_add(1);
    refuse(id, reason, tcp, policy)
}

/// Whether the longest prefix of `scope` that holds the packet's source says deny.
#[inline(always)]
fn denied(scope: [u8; 4], key: &FlowKey) -> bool {
    let data = AclKey { scope, family: key.family, addr: key.src, _pad: [0; 3] };
    let k = Key::new(AclKey::prefix_len(AclKey::address_bits(key.family)), data);
    matches!(ACL.get(&k), Some(&ACL_DENY))
}

/// This CPU's entry for the packet's source prefix at VIP `id`, made if it has none (a full
/// table evicts this CPU's least recently used source).
#[inline(always)]
fn source(key: &FlowKey, id: u32, policy: &VipPolicy) -> Option<*mut SourceState> {
    // SAFETY: `src` starts the 8-byte aligned FlowKey; any 16 bytes are two u64s.
    let src = unsafe { &*(&key.src as *const [u8; 16] as *const [u64; 2]) };
    let masked = [src[0] & policy.source_mask[0], src[1] & policy.source_mask[1]];
    let skey = SourceKey {
        // SAFETY: two u64s and 16 bytes have the same size, and any bytes are a valid [u8; 16].
        addr: unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(masked) },
        vip: id,
        // SAFETY: a plain helper call.
        cpu: unsafe { bpf_get_smp_processor_id() },
        family: key.family,
        _pad: [0; 3],
    };
    if let Some(p) = SOURCES.get_ptr_mut(&skey) {
        return Some(p);
    }
    let fresh = SourceState {
        flow_tat: 0,
        packet_tat: 0,
        second: 0,
        packets: [0; 2],
        new_flows: [0; 2],
        drops: [0; 2],
    };
    let _ = SOURCES.insert(&skey, &fresh, BPF_NOEXIST as u64);
    SOURCES.get_ptr_mut(&skey)
}

/// Counts a refusal for VIP `id` and answers its verdict: over a new-flow limit, a new TCP flow
/// of a VIP that says so goes to the stack; everything else is dropped.
#[inline(always)]
fn refuse(id: u32, reason: PolicyReason, tcp_flow: bool, policy: &VipPolicy) -> u32 {
    let pass = tcp_flow && policy.flags & POLICY_PASS_OVER_LIMIT != 0;
    if let Some(c) = POLICY_STATS.get_ptr_mut(id) {
        // SAFETY: this CPU's slot.
        let c = unsafe { &mut *c };
        if pass {
            c.passed += 1;
        } else if let Some(n) = c.dropped.get_mut(reason as usize) {
            *n += 1;
        }
    }
    let counter = match reason {
        _ if pass => Counter::PassRateLimited,
        PolicyReason::Acl => Counter::DropAcl,
        PolicyReason::RateNewFlows => Counter::DropRateNewFlows,
        PolicyReason::RatePackets => Counter::DropRatePackets,
        PolicyReason::VipNewFlowCap => Counter::DropVipNewFlowCap,
    };
    counter.index()
}

#[inline(always)]
fn verdict(code: u32) -> Result<(), Counter> {
    match code {
        ADMIT => Ok(()),
        c if c == Counter::DropAcl.index() => Err(Counter::DropAcl),
        c if c == Counter::DropRateNewFlows.index() => Err(Counter::DropRateNewFlows),
        c if c == Counter::DropRatePackets.index() => Err(Counter::DropRatePackets),
        c if c == Counter::DropVipNewFlowCap.index() => Err(Counter::DropVipNewFlowCap),
        _ => Err(Counter::PassRateLimited),
    }
}
