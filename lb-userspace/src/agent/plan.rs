//! Desired state x what the maps hold -> the steps that take the maps there, in an order that
//! is safe at every step for packets in flight. Pure: nothing here touches a map (reconcile.rs
//! takes the steps). Ids are stable slots; a ring change writes only the slots that differ;
//! everything that can fail for a reason the operator controls (out of ids) fails here, before
//! the first write.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    BackendValue, VipKey, VipValue, MODE_IPIP, MODE_L2DSR, NO_BACKEND, PROTO_ICMP, PROTO_ICMPV6,
    SCHED_LEAST_CONN, SCHED_MAGLEV, SCHED_ROUND_ROBIN, VIP_ADDRESS_ONLY, VIP_HASH_SOURCE_ONLY,
};
use serde::{Deserialize, Serialize};

use super::{policy, reconcile::ApplyError};
use crate::{
    config::{AllDown, ForwardMode, HashMode, Scheduler, Source, Vip},
    datapath::{AclEntry, Sizes},
    maglev, schedule,
};

/// Which map slots the agent gave to which VIP and backend. Persisted, so a restarted agent
/// keeps them (and with them every live connection).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    /// VIP name -> VIP id (its VIP_STATS index and its ring number).
    pub vips: BTreeMap<String, u32>,
    /// VIP name -> backend address -> backend id.
    pub backends: BTreeMap<String, BTreeMap<IpAddr, u32>>,
    /// Where the search for a free backend id starts: ids of removed backends are reused last,
    /// because flows still in the table may point at them.
    pub next_backend: u32,
}

impl Ids {
    pub fn backend(&self, vip: &str, address: IpAddr) -> Option<u32> {
        self.backends.get(vip)?.get(&address).copied()
    }

    /// Ids for `vips`: existing ones kept, new ones taken from the free slots (VIP ids: the
    /// lowest free; backend ids: from `next_backend` on, round, so that the id of a backend
    /// just removed, whose flows may still be in the table, is handed out last).
    ///
    /// A backend id is never one this change frees: until the change is through, the ring of
    /// the VIP that loses the backend still names it, and a new flow there would go to the new
    /// owner (another VIP's backend, maybe). Nor, while any other is free, one of `retired`
    /// (removed backends whose flows go on: a new owner ends them).
    pub fn allocate(&self, vips: &[Vip], sizes: &Sizes, retired: &BTreeSet<u32>) -> Result<Ids, ApplyError> {
        let mut next = Ids { next_backend: self.next_backend.max(1), ..Ids::default() };
        for v in vips {
            if let Some(&id) = self.vips.get(&v.name) {
                next.vips.insert(v.name.clone(), id);
            }
        }
        for v in vips {
            if next.vips.contains_key(&v.name) {
                continue;
            }
            let used: BTreeSet<u32> = next.vips.values().copied().collect();
            let id = (0..sizes.max_rings)
                .find(|i| !used.contains(i))
                .ok_or(ApplyError::NoVipSlot(sizes.max_rings))?;
            next.vips.insert(v.name.clone(), id);
        }
        let mut used: BTreeSet<u32> = BTreeSet::new();
        for v in vips {
            for b in &v.backends {
                if let Some(id) = self.backend(&v.name, b.address) {
                    next.backends.entry(v.name.clone()).or_default().insert(b.address, id);
                    used.insert(id);
                }
            }
        }
        let freed: BTreeSet<u32> = self
            .backends
            .values()
            .flat_map(|by_address| by_address.values())
            .copied()
            .filter(|id| !used.contains(id))
            .collect();
        for v in vips {
            for b in &v.backends {
                if next.backend(&v.name, b.address).is_some() {
                    continue;
                }
                let max = sizes.max_backends;
                let start = next.next_backend;
                let round = || (0..max - 1).map(|i| (start - 1 + i) % (max - 1) + 1);
                let free = |id: &u32| !used.contains(id) && !freed.contains(id);
                let id = round()
                    .find(|id| free(id) && !retired.contains(id))
                    .or_else(|| round().find(free))
                    .ok_or(if freed.is_empty() {
                        ApplyError::NoBackendId(max)
                    } else {
                        ApplyError::NoBackendIdInOneChange(max)
                    })?;
                used.insert(id);
                next.next_backend = id % (max - 1) + 1;
                next.backends.entry(v.name.clone()).or_default().insert(b.address, id);
            }
        }
        Ok(next)
    }
}

/// What the maps hold, as far as this agent wrote them.
#[derive(Debug, Default)]
pub struct Applied {
    pub ids: Ids,
    pub rings: BTreeMap<String, Vec<u32>>,
    pub keys: BTreeMap<String, VipKey>,
    pub address_entries: BTreeSet<VipKey>,
    pub source: Option<Source>,
    /// VIP id + 1 being captured (`lbctl capture`), 0 for none.
    pub capture_vip: u32,
    /// See `ConfigValue::cache_generation`; 0 until the agent's first tick or change.
    pub cache_generation: u32,
    /// Round-robin sequences written, by VIP name (round-robin VIPs only).
    pub rr_seqs: BTreeMap<String, Vec<u32>>,
    /// BACKENDS entries written, by backend id.
    pub backends: BTreeMap<u32, BackendValue>,
    /// Each VIP's scheduler as written.
    pub schedulers: BTreeMap<String, Scheduler>,
    /// VIP ids whose flows were voided once and must be voided again once the packets then in
    /// flight are through, each with when ([`void_again`]).
    pub void_again: Vec<(std::time::Instant, u32)>,
    /// Access-list entries written (global and per VIP).
    pub acl: BTreeMap<AclEntry, u32>,
    /// VIP_POLICY entries written, by VIP id.
    pub policies: BTreeMap<u32, lb_common::VipPolicy>,
    /// VIP ids whose policy generation a change set to 0 and has not moved on yet (until the
    /// change's last step; after a change that failed half-way, until the next one's).
    pub rechecks_due: BTreeSet<u32>,
}

impl Applied {
    /// Notes what `step` wrote (the executor calls it once the write is done, so a change that
    /// fails half-way leaves a record of exactly what reached the maps). A `Backend` step's
    /// value is recorded as given: the executor gives it the generation it wrote.
    pub fn record(&mut self, step: &Step) {
        match step {
            Step::Source(s) => self.source = Some(s.clone()),
            Step::Backend { id, value, .. } => {
                self.backends.insert(*id, *value);
            }
            Step::Ring { vip, new, .. } => {
                self.rings.insert(vip.clone(), new.clone());
            }
            Step::RrSequence { vip, new, .. } => {
                self.rr_seqs.insert(vip.clone(), new.clone());
            }
            Step::DropRrSequence { vip } => {
                self.rr_seqs.remove(vip);
            }
            Step::VoidFlows(id) => self.void_again.retain(|(_, i)| i != id),
            Step::SetVip { vip, key, scheduler, .. } => {
                self.keys.insert(vip.clone(), *key);
                self.schedulers.insert(vip.clone(), *scheduler);
            }
            Step::SetAddress { key, .. } => {
                self.address_entries.insert(*key);
            }
            Step::RemoveAddress(key) => {
                self.address_entries.remove(key);
            }
            Step::ForgetVip(name) => {
                self.keys.remove(name);
                self.rings.remove(name);
                self.rr_seqs.remove(name);
                self.schedulers.remove(name);
            }
            Step::Ids(ids) => self.ids = ids.clone(),
            Step::Acl { entry, value } => {
                self.acl.insert(*entry, *value);
            }
            Step::RemoveAcl(entry) => {
                self.acl.remove(entry);
            }
            Step::Policy { id, value } => {
                self.policies.insert(*id, *value);
                self.rechecks_due.insert(*id);
            }
            Step::PolicyGeneration { ids, generation } => {
                for id in ids {
                    if let Some(p) = self.policies.get_mut(id) {
                        p.generation = *generation;
                    }
                    self.rechecks_due.remove(id);
                }
            }
            Step::ResetBackend(_)
            | Step::ResetVip(_)
            | Step::RemoveVip(_)
            | Step::VoidMoved(_)
            | Step::SyncFilter
            | Step::MoveCacheGeneration => {}
        }
    }
}

/// Backends whose health check failed, by (VIP name, address).
pub type Down = BTreeSet<(String, IpAddr)>;

/// A backend in service: not drained, its weight above 0.
fn in_service(b: &crate::config::Backend) -> bool {
    !b.drained && b.weight > 0
}

/// Whether `vip`'s backend `b` is not down by its health check.
fn up(vip: &Vip, b: &crate::config::Backend, down: &Down) -> bool {
    !down.contains(&(vip.name.clone(), b.address))
}

/// The ring a VIP should have: the full table over its configured backends, with the slots of
/// unavailable ones (drained or down) handed out as a table over the available ones would, so
/// that only their slots move. None in service (drained, weight 0): every slot empty (new
/// flows are dropped). All of those down: the ring over every backend in service, as if none
/// were down (fail open), unless the VIP says `all_down = "drop"`. A pure function of the
/// config and the down set: not of the order in which backends went down.
pub fn ring(vip: &Vip, ids: &Ids, down: &Down) -> Vec<u32> {
    let members: Vec<maglev::Member> = vip
        .backends
        .iter()
        .filter_map(|b| {
            ids.backend(&vip.name, b.address).map(|id| maglev::Member::new(b.address, id, b.weight))
        })
        .collect();
    let in_service: Vec<&crate::config::Backend> = vip.backends.iter().filter(|b| in_service(b)).collect();
    let healthy: BTreeSet<u32> = in_service
        .iter()
        .filter(|b| up(vip, b, down))
        .filter_map(|b| ids.backend(&vip.name, b.address))
        .collect();
    let empty = || vec![NO_BACKEND; vip.ring_size as usize];
    if in_service.is_empty() {
        return empty();
    }
    let available: BTreeSet<u32> = match (healthy.is_empty(), vip.all_down) {
        (false, _) => healthy,
        (true, AllDown::Drop) => return empty(),
        (true, AllDown::FailOpen) => {
            in_service.iter().filter_map(|b| ids.backend(&vip.name, b.address)).collect()
        }
    };
    maglev::build_available(&members, &|id| available.contains(&id), vip.ring_size)
}

/// The backends of `vip` in service and up that have no slot of `ring` (its ring as built):
/// Maglev shares slots by weight, so a backend far lighter than the others (1 against 65535 in
/// a ring of a few thousand slots) may get none, and with it no new flow of a ring scheduler.
pub fn without_slots(vip: &Vip, ids: &Ids, down: &Down, ring: &[u32]) -> Vec<IpAddr> {
    let in_ring: BTreeSet<u32> = ring.iter().copied().collect();
    vip.backends
        .iter()
        .filter(|b| in_service(b) && up(vip, b, down))
        .filter(|b| ids.backend(&vip.name, b.address).is_some_and(|id| !in_ring.contains(&id)))
        .map(|b| b.address)
        .collect()
}

/// The round-robin sequence a VIP should have: over the backends that take new flows (not
/// drained, weight > 0, not down), as its ring is. All of those down: over every backend in
/// service (fail open), or none with `all_down = "drop"`. Empty: new flows are dropped.
pub fn rr_sequence(vip: &Vip, ids: &Ids, down: &Down) -> Vec<u32> {
    let in_service: Vec<&crate::config::Backend> = vip.backends.iter().filter(|b| in_service(b)).collect();
    let healthy: Vec<&crate::config::Backend> =
        in_service.iter().copied().filter(|b| up(vip, b, down)).collect();
    let members = |backends: &[&crate::config::Backend]| -> Vec<maglev::Member> {
        backends
            .iter()
            .filter_map(|b| {
                ids.backend(&vip.name, b.address).map(|id| maglev::Member::new(b.address, id, b.weight))
            })
            .collect()
    };
    let len = lb_common::limits::RR_SEQ_LEN as usize;
    match (healthy.is_empty(), vip.all_down) {
        (false, _) => schedule::round_robin(&members(&healthy), len),
        (true, AllDown::FailOpen) => schedule::round_robin(&members(&in_service), len),
        (true, AllDown::Drop) => Vec::new(),
    }
}

fn vip_key(vip: &Vip) -> VipKey {
    VipKey::from((vip.address, vip.port, vip.protocol.number()))
}

fn address_key(address: IpAddr) -> VipKey {
    let proto = if address.is_ipv4() { PROTO_ICMP } else { PROTO_ICMPV6 };
    VipKey::from((address, 0, proto))
}

fn vip_value(vip: &Vip, id: u32, sizes: &Sizes, rr_len: usize) -> VipValue {
    let source = vip.hash == HashMode::Source || vip.scheduler == Scheduler::SourceHash;
    VipValue {
        id,
        flags: if source { VIP_HASH_SOURCE_ONLY } else { 0 },
        // Ring number `id` (a VIP's id is its ring's number).
        ring_offset: id * sizes.ring_stride,
        ring_size: vip.ring_size,
        mode: match vip.mode {
            ForwardMode::Ipip => MODE_IPIP,
            ForwardMode::L2dsr => MODE_L2DSR,
        },
        scheduler: match vip.scheduler {
            Scheduler::Maglev | Scheduler::SourceHash => SCHED_MAGLEV,
            Scheduler::RoundRobin => SCHED_ROUND_ROBIN,
            Scheduler::LeastConn => SCHED_LEAST_CONN,
        },
        rr_len: u16::try_from(rr_len).expect("round-robin sequences are at most RR_SEQ_LEN long"),
    }
}

/// One step of a change: a write to a map, or a note for the agent's record of what the maps
/// hold ([`Applied::record`]). [`steps`] orders them so that nothing a packet can reach ever
/// names what is not there yet: backends before the rings that name them, rings and sequences
/// before the VIP entries that point at them, removals and voids last.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// CONFIG gets the new tunnel source and flow-hash seed.
    Source(Source),
    /// A backend id handed out anew: its open-connection count and traffic counters start at
    /// zero (its earlier owner's).
    ResetBackend(u32),
    /// A VIP id handed out anew: its traffic and policy counters start at zero (its earlier
    /// owner's would show as the new VIP's, or as a spike in its rates).
    ResetVip(u32),
    /// BACKENDS[`id`] = `value`. `new_owner`: the id changes hands, so its generation moves on
    /// and the flows its earlier owner left are void; else the generation stays.
    Backend { id: u32, value: BackendValue, new_owner: bool },
    /// Ring number `ring` (VIP `vip`'s): only the slots where `new` differs from `old` (`None`:
    /// never written) are written.
    Ring { vip: String, ring: u32, old: Option<Vec<u32>>, new: Vec<u32> },
    /// VIP `vip`'s round-robin sequence (in RR_SEQS by ring number), likewise.
    RrSequence { vip: String, ring: u32, old: Option<Vec<u32>>, new: Vec<u32> },
    /// VIP `vip` has no round-robin sequence any more (another scheduler): a note only.
    DropRrSequence { vip: String },
    /// A VIP's service entry removed from VIPS (the VIP is gone or moved).
    RemoveVip(VipKey),
    /// The flows of VIP id `.0` voided now: the id goes to another VIP.
    VoidFlows(u32),
    /// VIP `vip`'s service entry (VIPS and VIP_BY_ID).
    SetVip { vip: String, key: VipKey, value: VipValue, scheduler: Scheduler },
    /// The entry of a VIP address (answers pings, drops fragments).
    SetAddress { key: VipKey, value: VipValue },
    /// The entry of an address no VIP has now.
    RemoveAddress(VipKey),
    /// VIP `.0` is gone: a note only (its entry, if no other VIP took its key, was removed).
    ForgetVip(String),
    /// The ids the new state uses, from now on: a note only.
    Ids(Ids),
    /// The flows of these VIP ids (moved or gone VIPs) voided, now and again once the packets
    /// in flight are through.
    VoidMoved(Vec<u32>),
    /// VIP_FILTER bits no VIP entry needs any more cleared.
    SyncFilter,
    /// Everything the data plane caches per CPU (flows, next hops) looked up afresh: every
    /// change reaches cached flows at once.
    MoveCacheGeneration,
    /// An access-list entry (`ACL_ALLOW` or `ACL_DENY`), new or changed.
    Acl { entry: AclEntry, value: u32 },
    /// An access-list entry nothing asks for any more.
    RemoveAcl(AclEntry),
    /// VIP_POLICY[`id`]: the VIP's limits and whether it has access lists, generation 0 (no
    /// confirmed flow skips the checks until [`Step::PolicyGeneration`]).
    Policy { id: u32, value: lb_common::VipPolicy },
    /// The cache generation moved on, and given to these VIP ids' policies as their generation
    /// (`VipPolicy::generation`; filled in by the executor): their confirmed flows pass the
    /// checks again, once, under the lists and limits just written.
    PolicyGeneration { ids: Vec<u32>, generation: u32 },
}

/// The steps that make the maps (as `current` records them) hold `vips` under `ids` (from
/// [`Ids::allocate`]), `source` and the access lists and limits `desired` asks for
/// (agent/policy.rs).
pub fn steps(
    current: &Applied,
    ids: &Ids,
    source: &Source,
    vips: &[Vip],
    down: &Down,
    sizes: &Sizes,
    desired: &policy::Desired,
) -> Result<Vec<Step>, ApplyError> {
    let acl = policy::acl(vips, ids, desired);
    policy::check_room(current, &acl)?;
    let mut steps = Vec::new();
    if current.source.as_ref() != Some(source) {
        steps.push(Step::Source(source.clone()));
    }
    // What each VIP's scheduler will hand out (its ring; round robin: its sequence too), first:
    // the backends in them take new flows, and their entries say so before a ring names them.
    let schedules: Vec<(Vec<u32>, Option<Vec<u32>>)> = vips
        .iter()
        .map(|v| {
            let seq = (v.scheduler == Scheduler::RoundRobin).then(|| rr_sequence(v, ids, down));
            (ring(v, ids, down), seq)
        })
        .collect();
    let taking: BTreeSet<u32> =
        schedules.iter().flat_map(|(ring, seq)| ring.iter().chain(seq.iter().flatten())).copied().collect();
    let mut configured = BTreeSet::new();
    for v in vips {
        for b in &v.backends {
            let id = ids.backend(&v.name, b.address).expect("ids allocated for these VIPs");
            configured.insert(id);
            let fresh = current.ids.backend(&v.name, b.address) != Some(id);
            if fresh {
                steps.push(Step::ResetBackend(id));
            }
            let value = BackendValue::from(b.address)
                .with_weight(b.weight.min(u16::MAX as u32) as u16)
                .taking_new_flows(taking.contains(&id));
            let same =
                current.backends.get(&id).is_some_and(|a| BackendValue { generation: 0, ..*a } == value);
            if fresh || !same {
                steps.push(Step::Backend { id, value, new_owner: fresh });
            }
        }
    }
    // A removed backend's entry stays for its open flows (until its id is reused), but takes no
    // new ones: a SYN that finds an old flow of it gets a backend anew.
    for (&id, b) in &current.backends {
        if !configured.contains(&id) && b.takes_new_flows() {
            steps.push(Step::Backend { id, value: b.taking_new_flows(false), new_owner: false });
        }
    }
    // A VIP's lists and limits before its entry: its first packet meets them.
    let before = policy::steps_before(current, &acl, vips, ids, desired.cpus);
    let after = policy::steps_after(current, &acl, vips, ids, desired.cpus, &before);
    steps.extend(before);
    // The keys the new config takes: an old key in it is not removed (VIPs may be renamed or
    // swap addresses).
    let taken: BTreeSet<VipKey> = vips.iter().map(vip_key).collect();
    let mut addresses = current.address_entries.clone();
    let (mut to_void, mut removed) = (Vec::new(), false);
    // A VIP no longer configured leaves first: a new VIP may take its id, and so its ring, and
    // while its key still named that ring its clients' new flows would go to the new VIP's
    // backends. (A renamed VIP keeps its key under its new name: that entry stays.)
    let gone: Vec<&String> = current.keys.keys().filter(|n| !vips.iter().any(|v| &v.name == *n)).collect();
    for name in &gone {
        if let Some(key) = current.keys.get(*name).filter(|k| !taken.contains(k)) {
            steps.push(Step::RemoveVip(*key));
            removed = true;
        }
    }
    // So do the addresses no VIP keeps: the map has room for as many as `max_vips`, and a VIP
    // moved at the limit takes its new address's room only once its old one is freed.
    let wanted: BTreeSet<VipKey> = vips.iter().map(|v| address_key(v.address)).collect();
    for key in current.address_entries.difference(&wanted) {
        steps.push(Step::RemoveAddress(*key));
        addresses.remove(key);
        removed = true;
    }
    for (v, (new, seq)) in vips.iter().zip(schedules) {
        let id = ids.vips[&v.name];
        // A VIP that got another slot (it cannot, but a new one can reuse a freed slot) starts clean.
        let same_slot = current.ids.vips.get(&v.name) == Some(&id);
        let old = current.rings.get(&v.name).filter(|_| same_slot).cloned();
        steps.push(Step::Ring { vip: v.name.clone(), ring: id, old, new });
        // The sequence before the VIP entry that gives its length.
        let rr_len = match seq {
            Some(new) => {
                let len = new.len();
                let old = current.rr_seqs.get(&v.name).filter(|_| same_slot).cloned();
                steps.push(Step::RrSequence { vip: v.name.clone(), ring: id, old, new });
                len
            }
            None => {
                if current.rr_seqs.contains_key(&v.name) {
                    steps.push(Step::DropRrSequence { vip: v.name.clone() });
                }
                0
            }
        };
        let key = vip_key(v);
        // Flows recorded for the id's earlier VIP, or for this VIP's earlier address, port or
        // protocol, must not be forwarded: the old key goes first, then its flows are voided.
        // (Unless another VIP takes that key now.)
        let moved = current.keys.get(&v.name).copied().filter(|old| *old != key);
        if let Some(old) = moved.filter(|old| !taken.contains(old)) {
            steps.push(Step::RemoveVip(old));
            removed = true;
        }
        if moved.is_some() {
            // Voided once every entry is written: until then the old key may still name it.
            to_void.push(id);
        } else if !same_slot {
            // A fresh id: its earlier owner's flows go before this VIP records its first (and a
            // second void still due for the earlier owner is this one, later).
            steps.push(Step::VoidFlows(id));
        }
        if !same_slot {
            steps.push(Step::ResetVip(id));
        }
        let value = vip_value(v, id, sizes, rr_len);
        steps.push(Step::SetVip { vip: v.name.clone(), key, value, scheduler: v.scheduler });
        let address = address_key(v.address);
        if addresses.insert(address) {
            steps.push(Step::SetAddress {
                key: address,
                value: VipValue { flags: VIP_ADDRESS_ONLY, ..value },
            });
        }
    }
    let taken_ids: BTreeSet<u32> = ids.vips.values().copied().collect();
    for name in gone {
        // Its id taken by a VIP of this change: voided once already, before that VIP's entry
        // (a second void after it would take the new VIP's first flows).
        if let Some(&id) = current.ids.vips.get(name).filter(|id| !taken_ids.contains(id)) {
            to_void.push(id);
        }
        steps.push(Step::ForgetVip(name.clone()));
    }
    steps.extend(after);
    steps.push(Step::Ids(ids.clone()));
    if !to_void.is_empty() {
        steps.push(Step::VoidMoved(to_void));
    }
    if removed {
        steps.push(Step::SyncFilter);
    }
    steps.push(Step::MoveCacheGeneration);
    Ok(steps)
}

/// What applying `vips` would change, per VIP: the share of its ring that moves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanEntry {
    pub vip: String,
    /// "add", "remove", "change" or "keep".
    pub action: String,
    /// Slots of the new ring whose backend changes; with a new ring size, where slots do not
    /// correspond, `share_moved × ring_size`.
    pub slots_moved: usize,
    pub ring_size: u32,
    /// The share of new flows that would pick another backend (see [`maglev::share_moved`]).
    pub share_moved: f64,
    /// The VIP's scheduler after the change.
    #[serde(default)]
    pub scheduler: Scheduler,
    /// Its scheduler before, when the change sets another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_was: Option<Scheduler>,
    /// Entries of its access lists (the global list's, for the `[security]` row) that would be
    /// written or removed.
    #[serde(default)]
    pub acl_changes: usize,
    /// Its rate limits (or whether it has access lists) would change.
    #[serde(default)]
    pub limits_change: bool,
}

/// The name of `lbctl plan`'s row for the global deny list.
pub const GLOBAL_ROW: &str = "[security]";

/// What applying `vips` would change (`lbctl plan`), without changing anything.
pub fn preview(
    applied: &Applied,
    ids: &Ids,
    vips: &[Vip],
    down: &Down,
    desired: &policy::Desired,
) -> Result<Vec<PlanEntry>, ApplyError> {
    let acl = policy::acl(vips, ids, desired);
    policy::check_room(applied, &acl)?;
    let mut entries = Vec::new();
    for v in vips {
        let new = ring(v, ids, down);
        let was = applied.schedulers.get(&v.name).copied().filter(|s| *s != v.scheduler);
        let id = ids.vips[&v.name];
        let acl_changes = policy::changes_of(applied, &acl, id + 1);
        // (Whether the global list is looked up shows in its own row.)
        let shown = |p: &lb_common::VipPolicy| lb_common::VipPolicy {
            flags: p.flags & !lb_common::POLICY_GLOBAL_DENY,
            ..policy::without_generation(p)
        };
        let limits_change = applied.policies.get(&id).map(shown)
            != Some(shown(&policy::vip_policy(v, id, &acl, desired.cpus)));
        let (action, share) = match applied.rings.get(&v.name) {
            None => ("add", 1.0),
            Some(old) => {
                let share = maglev::share_moved(old, &new);
                let same_key = applied.keys.get(&v.name) == Some(&vip_key(v));
                let same = share == 0.0 && same_key && was.is_none() && acl_changes == 0 && !limits_change;
                (if same { "keep" } else { "change" }, share)
            }
        };
        entries.push(PlanEntry {
            vip: v.name.clone(),
            action: action.into(),
            slots_moved: (share * new.len() as f64).round() as usize,
            ring_size: v.ring_size,
            share_moved: share,
            scheduler: v.scheduler,
            scheduler_was: was,
            acl_changes,
            limits_change,
        });
    }
    for (name, old) in &applied.rings {
        if !vips.iter().any(|v| &v.name == name) {
            entries.push(PlanEntry {
                vip: name.clone(),
                action: "remove".into(),
                slots_moved: old.len(),
                ring_size: old.len() as u32,
                share_moved: 1.0,
                scheduler: applied.schedulers.get(name).copied().unwrap_or_default(),
                scheduler_was: None,
                acl_changes: policy::changes_of(
                    applied,
                    &acl,
                    applied.ids.vips.get(name).map_or(0, |id| id + 1),
                ),
                limits_change: false,
            });
        }
    }
    let global = policy::changes_of(applied, &acl, 0);
    if global > 0 || acl.keys().any(|e| e.scope == 0) {
        entries.push(PlanEntry {
            vip: GLOBAL_ROW.into(),
            action: if global > 0 { "change" } else { "keep" }.into(),
            slots_moved: 0,
            ring_size: 0,
            share_moved: 0.0,
            scheduler: Scheduler::default(),
            scheduler_was: None,
            acl_changes: global,
            limits_change: false,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{Backend, Protocol},
        security::Deny,
    };

    fn vip(all_down: AllDown) -> (Vip, Ids) {
        let addresses: Vec<IpAddr> = (1..=3).map(|i| IpAddr::from([198, 18, 0, 10 + i])).collect();
        let vip = Vip {
            name: "web".into(),
            address: IpAddr::from([198, 18, 100, 1]),
            port: 80,
            protocol: Protocol::Tcp,
            mode: ForwardMode::Ipip,
            hash: HashMode::FiveTuple,
            scheduler: Scheduler::RoundRobin,
            ring_size: 1009,
            health: None,
            all_down,
            on_down: Default::default(),
            announce: Default::default(),
            backends: addresses
                .iter()
                .zip([100, 200, 300])
                .map(|(&address, weight)| Backend { address, weight, drained: false, health: None })
                .collect(),
            allow: Vec::new(),
            deny: Vec::new(),
            limits: None,
        };
        let mut ids = Ids::default();
        for (i, a) in addresses.iter().enumerate() {
            ids.backends.entry("web".into()).or_default().insert(*a, i as u32 + 1);
        }
        (vip, ids)
    }

    fn count(seq: &[u32], id: u32) -> usize {
        seq.iter().filter(|&&x| x == id).count()
    }

    #[test]
    fn the_round_robin_sequence_covers_the_available_backends() {
        let (mut v, ids) = vip(AllDown::FailOpen);
        let none = Down::new();
        let seq = rr_sequence(&v, &ids, &none);
        assert_eq!((1..=3).map(|id| count(&seq, id)).collect::<Vec<_>>(), [1, 2, 3]);
        // Drained, weight 0 and down backends take no turn.
        v.backends[0].drained = true;
        let down: Down = [("web".to_string(), v.backends[1].address)].into();
        assert_eq!(rr_sequence(&v, &ids, &down), [3]);
        v.backends[2].weight = 0;
        assert_eq!(rr_sequence(&v, &ids, &none), [2]);
        // Every backend in service down: all of them (fail open), or none.
        let (v, ids) = vip(AllDown::FailOpen);
        let all: Down = v.backends.iter().map(|b| ("web".to_string(), b.address)).collect();
        assert_eq!(rr_sequence(&v, &ids, &all).len(), 6);
        let (v, ids) = vip(AllDown::Drop);
        assert!(rr_sequence(&v, &ids, &all).is_empty());
    }

    #[test]
    fn every_backend_down_fails_open_over_every_backend_in_service() {
        let (mut v, ids) = vip(AllDown::FailOpen);
        v.scheduler = Scheduler::Maglev;
        let none = Down::new();
        let all: Down = v.backends.iter().map(|b| ("web".to_string(), b.address)).collect();
        // Whatever order they went down in: the ring of no backend down.
        assert_eq!(ring(&v, &ids, &all), ring(&v, &ids, &none));
        // Drained ones stay out.
        v.backends[0].drained = true;
        let open = ring(&v, &ids, &all);
        assert_eq!(open, ring(&v, &ids, &none));
        assert_eq!(count(&open, 1), 0);
        assert!(count(&open, 2) > 300 && count(&open, 3) > 500, "{} {}", count(&open, 2), count(&open, 3));
        v.all_down = AllDown::Drop;
        assert!(ring(&v, &ids, &all).iter().all(|&id| id == NO_BACKEND));
    }

    #[test]
    fn a_new_ring_size_is_planned_with_the_share_of_new_flows_that_move() {
        let (mut v, ids) = vip(AllDown::FailOpen);
        v.scheduler = Scheduler::Maglev;
        let none = Down::new();
        let applied = Applied {
            ids: ids.clone(),
            rings: [("web".to_string(), ring(&v, &ids, &none))].into(),
            keys: [("web".to_string(), vip_key(&v))].into(),
            schedulers: [("web".to_string(), Scheduler::Maglev)].into(),
            ..Applied::default()
        };
        let sizes = Sizes { flows: 1024, max_vips: 4, max_rings: 4, ring_stride: 4099, max_backends: 16 };
        v.ring_size = 2003;
        let vips = [v];
        let ids = applied.ids.allocate(&vips, &sizes, &BTreeSet::new()).unwrap();
        let entries = preview(&applied, &ids, &vips, &none, &policy::Desired::NONE).expect("a plan");
        let e = &entries[0];
        assert_eq!((e.action.as_str(), e.ring_size), ("change", 2003), "{e:?}");
        // Rings of unrelated sizes: a flow keeps its backend with the chance that two independent
        // picks agree, sum of share² over weights 1:2:3 = 14/36.
        assert!((e.share_moved - 22.0 / 36.0).abs() < 0.01, "{e:?}");
        assert_eq!(e.slots_moved, (e.share_moved * 2003.0).round() as usize, "{e:?}");
    }

    // ------------------------------------------------------------------------------------------
    // Ids
    // ------------------------------------------------------------------------------------------

    fn sizes(max_rings: u32, max_backends: u32) -> Sizes {
        Sizes { flows: 1024, max_vips: max_rings, max_rings, ring_stride: 1009, max_backends }
    }

    /// A VIP `name` on 198.18.100.`n`:80/tcp, Maglev, ring 1009, with backends 198.18.`n`.`b`.
    fn simple(name: &str, n: u8, backends: &[u8]) -> Vip {
        let (mut v, _) = vip(AllDown::FailOpen);
        v.name = name.into();
        v.address = IpAddr::from([198, 18, 100, n]);
        v.scheduler = Scheduler::Maglev;
        v.backends = backends
            .iter()
            .map(|&b| Backend {
                address: IpAddr::from([198, 18, n, b]),
                weight: 100,
                drained: false,
                health: None,
            })
            .collect();
        v
    }

    /// The steps of a change of lists from `current` (recorded as the executor would, with
    /// generation `g` for the VIPs it moves on).
    fn policy_change(current: &mut Applied, vips: &[Vip], denies: &[Deny], g: u32) -> Vec<Step> {
        let desired = policy::Desired { security: &Default::default(), denies, cpus: 1 };
        let ids = current.ids.allocate(vips, &sizes(4, 8), &BTreeSet::new()).unwrap();
        let steps = steps(current, &ids, &Source::default(), vips, &Down::new(), &sizes(4, 8), &desired)
            .expect("a plan");
        for step in &steps {
            match step {
                Step::PolicyGeneration { ids, .. } => {
                    current.record(&Step::PolicyGeneration { ids: ids.clone(), generation: g })
                }
                other => current.record(other),
            }
        }
        steps
    }

    #[test]
    fn a_policy_generation_moves_after_every_entry_of_a_change_for_the_vips_it_concerns() {
        let mut a = simple("a", 1, &[1]);
        a.allow = vec!["198.18.0.0/16".parse().unwrap()];
        let b = simple("b", 2, &[1]);
        let vips = [a.clone(), b];
        let mut current = Applied::default();
        let first = policy_change(&mut current, &vips, &[], 7);
        assert!(
            first.iter().any(|s| matches!(s, Step::PolicyGeneration { ids, .. } if ids == &[0, 1])),
            "new VIPs get a generation: {first:?}"
        );
        assert_eq!(current.policies[&0].generation, 7);
        let again = policy_change(&mut current, &vips, &[], 8);
        assert!(!again.iter().any(|s| matches!(s, Step::Policy { .. } | Step::PolicyGeneration { .. })));
        // a's allow list narrowed: its /16 entry goes after the VIP entries.
        let mut narrowed = a.clone();
        narrowed.allow = vec!["198.18.8.0/24".parse().unwrap()];
        let vips = [narrowed, vips[1].clone()];
        let steps = policy_change(&mut current, &vips, &[], 9);
        let at = |f: &dyn Fn(&Step) -> bool| steps.iter().position(f);
        let zero =
            at(&|s| matches!(s, Step::Policy { id: 0, value } if value.generation == 0)).expect("a zeroed");
        let first_acl = at(&|s| matches!(s, Step::Acl { .. } | Step::RemoveAcl(_))).expect("entries");
        let last_acl =
            steps.iter().rposition(|s| matches!(s, Step::Acl { .. } | Step::RemoveAcl(_))).unwrap();
        let moved = at(&|s| matches!(s, Step::PolicyGeneration { .. })).expect("a generation");
        assert!(zero < first_acl && last_acl < moved, "zeroed, entries, then moved on: {steps:?}");
        assert!(matches!(&steps[moved], Step::PolicyGeneration { ids, .. } if ids == &[0]), "a only");
        assert_eq!((current.policies[&0].generation, current.policies[&1].generation), (9, 7));
        // An operator's global deny concerns every VIP.
        let deny = Deny { prefix: "198.19.0.0/16".parse().unwrap(), vip: None, expires_unix: None };
        let steps = policy_change(&mut current, &vips, std::slice::from_ref(&deny), 10);
        assert!(steps.iter().any(|s| matches!(s, Step::PolicyGeneration { ids, .. } if ids == &[0, 1])));
        assert!(current
            .policies
            .values()
            .all(|p| p.generation == 10 && p.flags & lb_common::POLICY_GLOBAL_DENY != 0));
        // A change that failed after zeroing: the next plan moves the generation on.
        let mut failed = Applied {
            ids: current.ids.clone(),
            acl: current.acl.clone(),
            policies: current.policies.clone(),
            rechecks_due: [1].into(),
            ..Default::default()
        };
        let steps = policy_change(&mut failed, &vips, &[deny], 11);
        assert!(
            steps.iter().any(|s| matches!(s, Step::PolicyGeneration { ids, .. } if ids == &[1])),
            "{steps:?}"
        );
    }

    #[test]
    fn ids_are_kept_and_new_ones_take_free_slots() {
        let sizes = sizes(4, 8);
        let none = BTreeSet::new();
        let a = simple("a", 1, &[1, 2]);
        let b = simple("b", 2, &[1]);
        let first = Ids::default().allocate(&[a.clone(), b.clone()], &sizes, &none).unwrap();
        assert_eq!(first.vips, [("a".to_string(), 0), ("b".to_string(), 1)].into());
        assert_eq!(first.backend("a", a.backends[0].address), Some(1));
        assert_eq!(first.backend("b", b.backends[0].address), Some(3));
        // Kept whatever the order; a removed VIP's slot goes to the next new one.
        let c = simple("c", 3, &[1]);
        let second = first.allocate(&[b.clone(), c.clone()], &sizes, &none).unwrap();
        assert_eq!(second.vips, [("b".to_string(), 1), ("c".to_string(), 0)].into());
        assert_eq!(second.backend("b", b.backends[0].address), Some(3));
        // Backend ids go on from where the last one was taken: a removed backend's id (1, 2:
        // its flows may still be in the table) comes back last.
        assert_eq!(second.backend("c", c.backends[0].address), Some(4));
        let many = simple("c", 3, &[1, 2, 3, 4, 5]);
        let third = second.allocate(&[b.clone(), many.clone()], &sizes, &none).unwrap();
        let got: Vec<u32> = many.backends.iter().map(|x| third.backend("c", x.address).unwrap()).collect();
        assert_eq!(got, [4, 5, 6, 7, 1], "ids 1 and 2 were freed last-but-one and last");
        // Out of ids: refused here, before any write.
        let too_many = simple("c", 3, &[1, 2, 3, 4, 5, 6, 7]);
        assert!(matches!(
            third.allocate(&[b.clone(), too_many], &sizes, &none),
            Err(ApplyError::NoBackendId(8))
        ));
        let vips: Vec<Vip> = (1..=5).map(|i| simple(&format!("v{i}"), i, &[])).collect();
        assert!(matches!(Ids::default().allocate(&vips, &sizes, &none), Err(ApplyError::NoVipSlot(4))));
    }

    /// After the ids have gone round (`next_backend` back at 1), a change that removes web's
    /// backend 1 and adds one to api: the new backend must not take id 1, which web's ring names
    /// until the change is through (a new flow of web's there would reach api's backend).
    #[test]
    fn a_backend_far_lighter_than_the_others_is_found_without_slots() {
        let mut v = simple("web", 1, &[1, 2, 3]);
        v.ring_size = 1009;
        let weights = [1, 65535, 100];
        for (b, w) in v.backends.iter_mut().zip(weights) {
            b.weight = w;
        }
        let ids = Ids::default().allocate(std::slice::from_ref(&v), &sizes(4, 8), &BTreeSet::new()).unwrap();
        let down = Down::new();
        let built = ring(&v, &ids, &down);
        assert_eq!(without_slots(&v, &ids, &down, &built), [v.backends[0].address], "weight 1 of 65636");
        v.backends[0].weight = 1000;
        let built = ring(&v, &ids, &down);
        assert!(without_slots(&v, &ids, &down, &built).is_empty(), "weight 1000 gets slots");
        // A down or drained one has none, as it should.
        let down: Down = [("web".to_string(), v.backends[2].address)].into();
        let built = ring(&v, &ids, &down);
        assert!(without_slots(&v, &ids, &down, &built).is_empty());
    }

    #[test]
    fn a_backend_id_is_not_handed_out_in_the_change_that_frees_it() {
        let sizes = sizes(4, 8); // backend ids 1 to 7
        let web = simple("web", 1, &[1, 2]);
        let api = simple("api", 2, &[1]);
        let mut before =
            Ids::default().allocate(&[web.clone(), api.clone()], &sizes, &BTreeSet::new()).unwrap();
        assert_eq!(before.backend("web", web.backends[0].address), Some(1));
        before.next_backend = 1;
        let web_after = simple("web", 1, &[2]);
        let api_after = simple("api", 2, &[1, 9]);
        let new = api_after.backends[1].address;
        let vips = [web_after, api_after];
        let after = before.allocate(&vips, &sizes, &BTreeSet::new()).unwrap();
        assert_eq!(after.backend("api", new), Some(4), "1 is freed by this change, 2 and 3 are held");
        // A retired backend's id (its flows go on) only when no other is free.
        let after = before.allocate(&vips, &sizes, &[4, 5].into()).unwrap();
        assert_eq!(after.backend("api", new), Some(6));
        let after = before.allocate(&vips, &sizes, &[4, 5, 6, 7].into()).unwrap();
        assert_eq!(after.backend("api", new), Some(4), "every free id retired: the first of them");
        // Nothing free but the id this change frees: refused, saying how to get there.
        let small = self::sizes(4, 4); // backend ids 1 to 3
        let before = Ids::default().allocate(&[web, api], &small, &BTreeSet::new()).unwrap();
        let refused = before.allocate(&vips, &small, &BTreeSet::new());
        assert!(matches!(refused, Err(ApplyError::NoBackendIdInOneChange(4))), "{refused:?}");
    }

    // ------------------------------------------------------------------------------------------
    // Steps
    // ------------------------------------------------------------------------------------------

    /// What the maps would hold after `steps`, as far as a packet can see: BACKENDS by id, and
    /// for every check, the config's VIPs. Checks each step against the ones before it.
    struct Model {
        backends: BTreeMap<u32, BackendValue>,
        rings: BTreeMap<u32, Vec<u32>>,
    }

    impl Model {
        /// Takes `steps` from `current`, checking that no ring or sequence names a backend
        /// that is not in BACKENDS (with an address of that VIP) when it is written, that each
        /// VIP entry comes after its ring and names it, and that no removal takes a key the
        /// config holds. Returns the record after them.
        fn take(&mut self, current: &Applied, steps: &[Step], vips: &[Vip], sizes: &Sizes) -> Applied {
            let mut next = Applied { ids: current.ids.clone(), ..Default::default() };
            next.rings = current.rings.clone();
            next.keys = current.keys.clone();
            next.address_entries = current.address_entries.clone();
            next.source = current.source.clone();
            next.rr_seqs = current.rr_seqs.clone();
            next.backends = current.backends.clone();
            next.schedulers = current.schedulers.clone();
            next.acl = current.acl.clone();
            next.policies = current.policies.clone();
            let taken: BTreeSet<VipKey> = vips.iter().map(vip_key).collect();
            let by_name: BTreeMap<&str, &Vip> = vips.iter().map(|v| (v.name.as_str(), v)).collect();
            let mut written_rings = BTreeSet::new();
            for (i, step) in steps.iter().enumerate() {
                let named_ok = |vip: &str, ids: &[u32]| {
                    let v = by_name[vip];
                    for &id in ids.iter().filter(|&&id| id != NO_BACKEND) {
                        let b = self.backends.get(&id).unwrap_or_else(|| {
                            panic!("step {i}: ring of {vip} names backend {id}, not in BACKENDS yet")
                        });
                        assert!(
                            v.backends.iter().any(|x| BackendValue::from(x.address).addr == b.addr),
                            "step {i}: ring of {vip} names backend {id}, another VIP's ({:?})",
                            b.addr
                        );
                        assert!(
                            b.takes_new_flows(),
                            "step {i}: ring of {vip} names {id}, which takes no new flows"
                        );
                    }
                };
                match step {
                    Step::Backend { id, value, new_owner } => {
                        let generation = self.backends.get(id).map_or(0, |b| b.generation);
                        let generation = if *new_owner { generation + 1 } else { generation };
                        self.backends.insert(*id, BackendValue { generation, ..*value });
                    }
                    Step::Ring { vip, ring, new, .. } => {
                        named_ok(vip, new);
                        self.rings.insert(*ring, new.clone());
                        written_rings.insert(vip.clone());
                    }
                    Step::RrSequence { vip, new, .. } => named_ok(vip, new),
                    Step::SetVip { vip, key, value, .. } => {
                        assert!(written_rings.contains(vip), "step {i}: {vip}'s entry before its ring");
                        let v = by_name[vip.as_str()];
                        assert_eq!(*key, vip_key(v));
                        assert_eq!(value.ring_offset, value.id * sizes.ring_stride);
                        assert_eq!(value.ring_size, v.ring_size);
                    }
                    Step::RemoveVip(key) => {
                        assert!(!taken.contains(key), "step {i}: removes {key:?}, a VIP's")
                    }
                    _ => {}
                }
                let recorded = match step {
                    Step::Backend { id, .. } => {
                        Step::Backend { id: *id, value: self.backends[id], new_owner: false }
                    }
                    other => other.clone(),
                };
                next.record(&recorded);
            }
            next
        }
    }

    /// Plans `vips` from `current`, checks the steps with `model`, returns the record after them.
    fn change(model: &mut Model, current: &Applied, vips: &[Vip], down: &Down) -> (Applied, Vec<Step>) {
        let sizes = sizes(16, 256);
        let ids = current.ids.allocate(vips, &sizes, &BTreeSet::new()).expect("ids");
        let steps = steps(current, &ids, &Source::default(), vips, down, &sizes, &policy::Desired::NONE)
            .expect("a plan");
        let next = model.take(current, &steps, vips, &sizes);
        // The record says what the config asks for.
        for v in vips {
            assert_eq!(next.keys.get(&v.name), Some(&vip_key(v)), "{}", v.name);
            assert_eq!(next.rings[&v.name], ring(v, &next.ids, down), "{}", v.name);
        }
        assert_eq!(next.keys.len(), vips.len());
        let wanted: BTreeSet<VipKey> = vips.iter().map(|v| address_key(v.address)).collect();
        assert_eq!(next.address_entries, wanted);
        (next, steps)
    }

    #[test]
    fn no_step_lets_a_ring_name_a_backend_that_is_not_there() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let mut model = Model { backends: BTreeMap::new(), rings: BTreeMap::new() };
        let mut current = Applied::default();
        for round in 0..200 {
            // A random config of up to 5 VIPs (names and addresses from small sets, so that
            // VIPs come, go, are renamed and swap addresses), 0..6 backends each, random
            // drains, weights, schedulers; and random backends down.
            let n = rng.gen_range(1..=5);
            let mut vips: Vec<Vip> = Vec::new();
            for _ in 0..n {
                let name = format!("v{}", rng.gen_range(0..7));
                let address = rng.gen_range(1..=6u8);
                if vips.iter().any(|v| v.name == name || v.address == IpAddr::from([198, 18, 100, address])) {
                    continue;
                }
                let backends: Vec<u8> = (1..=6u8).filter(|_| rng.gen_bool(0.6)).collect();
                let mut v = simple(&name, address, &backends);
                for b in &mut v.backends {
                    b.drained = rng.gen_bool(0.2);
                    b.weight = [0, 1, 100, 300][rng.gen_range(0..4)];
                }
                v.scheduler =
                    [Scheduler::Maglev, Scheduler::RoundRobin, Scheduler::LeastConn][rng.gen_range(0..3)];
                vips.push(v);
            }
            let down: Down = vips
                .iter()
                .flat_map(|v| v.backends.iter().map(move |b| (v.name.clone(), b.address)))
                .filter(|_| rng.gen_bool(0.2))
                .collect();
            let (next, _) = change(&mut model, &current, &vips, &down);
            // Applied again, nothing changes: no write but the rings' (which write no slot).
            let (again, steps) = change(&mut model, &next, &vips, &down);
            for step in &steps {
                match step {
                    Step::Ring { old, new, .. } | Step::RrSequence { old, new, .. } => {
                        assert_eq!(old.as_ref(), Some(new), "round {round}: an unchanged ring rewritten")
                    }
                    Step::SetVip { .. } | Step::Ids(_) | Step::MoveCacheGeneration => {}
                    other => panic!("round {round}: the same config again takes {other:?}"),
                }
            }
            current = again;
        }
    }

    #[test]
    fn a_drain_writes_only_the_drained_backends_slots_and_marks_it() {
        let mut model = Model { backends: BTreeMap::new(), rings: BTreeMap::new() };
        let v = simple("web", 1, &[1, 2, 3]);
        let (current, _) = change(&mut model, &Applied::default(), std::slice::from_ref(&v), &Down::new());
        let drained_id = current.ids.backend("web", v.backends[1].address).unwrap();
        let mut drained = v.clone();
        drained.backends[1].drained = true;
        let (_, steps) = change(&mut model, &current, &[drained], &Down::new());
        let (old, new) = steps
            .iter()
            .find_map(|s| match s {
                Step::Ring { old: Some(old), new, .. } => Some((old.clone(), new.clone())),
                _ => None,
            })
            .expect("a ring step");
        let moved: Vec<usize> = (0..old.len()).filter(|&i| old[i] != new[i]).collect();
        assert!(!moved.is_empty() && moved.iter().all(|&i| old[i] == drained_id), "other slots moved");
        let backend = steps.iter().find_map(|s| match s {
            Step::Backend { id, value, new_owner: false } if *id == drained_id => Some(*value),
            _ => None,
        });
        assert!(backend.is_some_and(|b| !b.takes_new_flows()), "the drained backend still takes new flows");
    }

    #[test]
    fn renames_and_swaps_keep_their_entries_and_void_the_old_ids() {
        let mut model = Model { backends: BTreeMap::new(), rings: BTreeMap::new() };
        let (a, b) = (simple("a", 1, &[1]), simple("b", 2, &[1]));
        let (current, _) = change(&mut model, &Applied::default(), &[a.clone(), b.clone()], &Down::new());
        let old_a = current.ids.vips["a"];
        // Renamed: the entry stays (no removal of its key), the old id's flows are voided.
        let mut a2 = a.clone();
        a2.name = "a2".into();
        let (current, steps) = change(&mut model, &current, &[a2.clone(), b.clone()], &Down::new());
        assert!(!steps.iter().any(|s| matches!(s, Step::RemoveVip(_))), "{steps:?}");
        let set_a2 = steps.iter().position(|s| matches!(s, Step::SetVip { vip, .. } if vip == "a2")).unwrap();
        let voids: Vec<usize> = (0..steps.len())
            .filter(|&i| {
                matches!(&steps[i], Step::VoidFlows(id) if *id == old_a)
                    || matches!(&steps[i], Step::VoidMoved(ids) if ids.contains(&old_a))
            })
            .collect();
        assert!(
            voids.len() == 1 && voids[0] < set_a2,
            "old id voided once, before a2's entry: {voids:?}, a2 at {set_a2}"
        );
        // Swapped addresses: each key is rewritten, none removed; both ids voided.
        let (mut x, mut y) = (a2.clone(), b.clone());
        std::mem::swap(&mut x.address, &mut y.address);
        let (_, steps) = change(&mut model, &current, &[x, y], &Down::new());
        assert!(!steps.iter().any(|s| matches!(s, Step::RemoveVip(_))), "{steps:?}");
        let voided: BTreeSet<u32> = steps
            .iter()
            .filter_map(|s| match s {
                Step::VoidMoved(ids) => Some(ids.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(voided, [current.ids.vips["a2"], current.ids.vips["b"]].into());
    }

    #[test]
    fn a_removed_vips_key_goes_before_a_new_vip_rewrites_its_ring() {
        let mut model = Model { backends: BTreeMap::new(), rings: BTreeMap::new() };
        let (old, new) = (simple("old", 1, &[1]), simple("new", 2, &[1]));
        let (current, _) = change(&mut model, &Applied::default(), std::slice::from_ref(&old), &Down::new());
        let (next, steps) = change(&mut model, &current, &[new], &Down::new());
        let ring = current.ids.vips["old"];
        assert_eq!(
            next.ids.vips["new"], ring,
            "the new VIP takes the freed id (else the test shows nothing)"
        );
        let removed =
            steps.iter().position(|s| *s == Step::RemoveVip(vip_key(&old))).expect("old's key removed");
        let written =
            steps.iter().position(|s| matches!(s, Step::Ring { ring: r, .. } if *r == ring)).unwrap();
        assert!(
            removed < written,
            "old's key (removed at step {removed}) still names ring {ring} while new's backends are written in (step {written})"
        );
        let set = steps.iter().position(|s| matches!(s, Step::SetVip { vip, .. } if vip == "new")).unwrap();
        assert!(
            steps[..set].contains(&Step::ResetVip(ring)),
            "new's counters are not reset before its entry"
        );
        assert!(
            !steps[set..].iter().any(|s| matches!(s, Step::VoidFlows(id) if *id == ring)
                || matches!(s, Step::VoidMoved(ids) if ids.contains(&ring))),
            "the id's flows are voided after new's entry: new's first flows go"
        );
    }
}
