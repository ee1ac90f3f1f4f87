//! Desired state -> map writes. Ids are stable slots; a ring rebuild writes only the slots that
//! changed; everything that can fail for a reason the operator controls (out of ids) fails
//! before the first write.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    BackendValue, ConfigValue, VipKey, VipValue, MODE_IPIP, MODE_L2DSR, NO_BACKEND, PROTO_ICMP, PROTO_ICMPV6,
    SCHED_LEAST_CONN, SCHED_MAGLEV, SCHED_ROUND_ROBIN, VIP_ADDRESS_ONLY, VIP_HASH_SOURCE_ONLY,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    config::{AllDown, ForwardMode, HashMode, Scheduler, Source, Vip},
    datapath::{Datapath, DatapathError, Sizes},
    maglev, schedule,
};

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(
        "no free VIP slot: all {0} are in use (raise limits.max_vips; it takes effect with a new pin path)"
    )]
    NoVipSlot(u32),
    #[error("no free backend id: all {0} are in use (raise limits.max_backends; it takes effect with a new pin path)")]
    NoBackendId(u32),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

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

    /// Ids for `vips`: existing ones kept, new ones taken from the free slots. A pure function:
    /// [`apply`] allocates the same.
    pub fn allocate(&self, vips: &[Vip], sizes: &Sizes) -> Result<Ids, ApplyError> {
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
        for v in vips {
            for b in &v.backends {
                if next.backend(&v.name, b.address).is_some() {
                    continue;
                }
                let max = sizes.max_backends;
                let start = next.next_backend;
                let id = (0..max - 1)
                    .map(|i| (start - 1 + i) % (max - 1) + 1)
                    .find(|id| !used.contains(id))
                    .ok_or(ApplyError::NoBackendId(max))?;
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
}

/// Backends whose health check failed, by (VIP name, address).
pub type Down = BTreeSet<(String, IpAddr)>;

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
    let in_service: Vec<&crate::config::Backend> =
        vip.backends.iter().filter(|b| !b.drained && b.weight > 0).collect();
    let healthy: BTreeSet<u32> = in_service
        .iter()
        .filter(|b| !down.contains(&(vip.name.clone(), b.address)))
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

/// The round-robin sequence a VIP should have: over the backends that take new flows (not
/// drained, weight > 0, not down), as its ring is. All of those down: over every backend in
/// service (fail open), or none with `all_down = "drop"`. Empty: new flows are dropped.
pub fn rr_sequence(vip: &Vip, ids: &Ids, down: &Down) -> Vec<u32> {
    let in_service: Vec<&crate::config::Backend> =
        vip.backends.iter().filter(|b| !b.drained && b.weight > 0).collect();
    let healthy: Vec<&crate::config::Backend> =
        in_service.iter().copied().filter(|b| !down.contains(&(vip.name.clone(), b.address))).collect();
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

fn vip_value(vip: &Vip, id: u32, dp: &Datapath, rr_len: usize) -> VipValue {
    let source = vip.hash == HashMode::Source || vip.scheduler == Scheduler::SourceHash;
    VipValue {
        id,
        flags: if source { VIP_HASH_SOURCE_ONLY } else { 0 },
        ring_offset: dp.ring_offset(id),
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

/// How long a packet that read a VIP entry can still be on its way through the data plane (an
/// XDP run takes microseconds): after it, nothing can record a flow from an entry that is gone.
pub const PACKETS_IN_FLIGHT: std::time::Duration = std::time::Duration::from_millis(5);

/// Voids the recorded flows of VIP `ids` (whose entries were just removed or moved), and marks
/// them to be voided again once the packets in flight are through ([`void_again`]): one that
/// looked the old entry up before its removal and recorded its flow after the first void is
/// caught by the second. The caller then moves the cache generation, for the copies of those
/// flows in every CPU's flow cache.
fn void_vip_flows(dp: &mut Datapath, applied: &mut Applied, ids: &[u32]) -> Result<(), ApplyError> {
    let due = std::time::Instant::now() + PACKETS_IN_FLIGHT;
    for &id in ids {
        dp.void_vip_flows(id)?;
        applied.void_again.push((due, id));
    }
    Ok(())
}

/// The second void of the VIP ids whose time has come (see [`void_vip_flows`]), then a move of
/// the cache generation; the others stay marked. Returns when the next one is due.
pub fn void_again(
    dp: &mut Datapath,
    applied: &mut Applied,
    now: std::time::Instant,
) -> Result<Option<std::time::Instant>, ApplyError> {
    let (due, later): (Vec<_>, Vec<_>) = applied.void_again.iter().partition(|(at, _)| *at <= now);
    applied.void_again = later;
    for &(_, id) in &due {
        dp.void_vip_flows(id)?;
    }
    if !due.is_empty() {
        move_cache_generation(dp, applied)?;
    }
    Ok(applied.void_again.iter().map(|(at, _)| *at).min())
}

/// Ends everything the data plane cached per CPU (next hops, flows): it is looked up afresh.
pub fn move_cache_generation(dp: &mut Datapath, applied: &mut Applied) -> Result<(), ApplyError> {
    applied.cache_generation = applied.cache_generation.wrapping_add(1).max(1);
    write_config(dp, applied)
}

/// Writes CONFIG from the applied source and capture setting.
pub fn write_config(dp: &mut Datapath, applied: &Applied) -> Result<(), ApplyError> {
    let source = applied.source.clone().unwrap_or_default();
    Ok(dp.set_config(config_value(&source, applied.capture_vip, applied.cache_generation))?)
}

fn config_value(s: &Source, capture_vip: u32, cache_generation: u32) -> ConfigValue {
    ConfigValue {
        src_v4: s.ipv4.map(|a| a.octets()).unwrap_or_default(),
        src_v6: s.ipv6.map(|a| a.octets()).unwrap_or_default(),
        hash_seed: s.hash_seed,
        v4_entropy_bits: s.ipv4_entropy_bits,
        v6_entropy_bits: s.ipv6_entropy_bits,
        _pad: [0; 2],
        capture_vip,
        cache_generation,
    }
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
}

pub fn plan(
    applied: &Applied,
    vips: &[Vip],
    sizes: &Sizes,
    down: &Down,
) -> Result<Vec<PlanEntry>, ApplyError> {
    let ids = applied.ids.allocate(vips, sizes)?;
    let mut entries = Vec::new();
    for v in vips {
        let new = ring(v, &ids, down);
        let was = applied.schedulers.get(&v.name).copied().filter(|s| *s != v.scheduler);
        let (action, share) = match applied.rings.get(&v.name) {
            None => ("add", 1.0),
            Some(old) => {
                let share = maglev::share_moved(old, &new);
                let same_key = applied.keys.get(&v.name) == Some(&vip_key(v));
                (if share == 0.0 && same_key && was.is_none() { "keep" } else { "change" }, share)
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
            });
        }
    }
    Ok(entries)
}

/// Makes the maps hold `vips` and `source`. Order matters: backends before the rings that name
/// them, rings before the VIPs that point at them, removals last.
pub fn apply(
    dp: &mut Datapath,
    applied: &mut Applied,
    source: &Source,
    vips: &[Vip],
    down: &Down,
) -> Result<usize, ApplyError> {
    let ids = applied.ids.allocate(vips, &dp.sizes)?;
    if applied.source.as_ref() != Some(source) {
        applied.source = Some(source.clone());
        write_config(dp, applied)?;
    }
    let mut slots = 0;
    // VIP ids whose flows are voided once every entry is written (moved or gone VIPs).
    let mut to_void = Vec::new();
    let mut removed = false;
    // The keys the new config takes: an old key in it is not removed (VIPs may be renamed or
    // swap addresses).
    let taken: BTreeSet<VipKey> = vips.iter().map(vip_key).collect();
    // What each VIP's scheduler will hand out (its ring; round robin: its sequence too), first:
    // the backends in them take new flows, and their entries say so before a ring names them.
    let schedules: Vec<(Vec<u32>, Option<Vec<u32>>)> = vips
        .iter()
        .map(|v| {
            let seq = (v.scheduler == Scheduler::RoundRobin).then(|| rr_sequence(v, &ids, down));
            (ring(v, &ids, down), seq)
        })
        .collect();
    let taking: BTreeSet<u32> =
        schedules.iter().flat_map(|(ring, seq)| ring.iter().chain(seq.iter().flatten())).copied().collect();
    let mut current = BTreeSet::new();
    for v in vips {
        for b in &v.backends {
            let id = ids.backend(&v.name, b.address).expect("allocated above");
            current.insert(id);
            let fresh = applied.ids.backend(&v.name, b.address) != Some(id);
            if fresh {
                // An id handed out anew starts with no connections and no traffic (its earlier
                // owner's).
                dp.set_active_connections(id, 0)?;
                dp.reset_backend_stats(id)?;
            }
            let value = BackendValue::from(b.address)
                .with_weight(b.weight.min(u16::MAX as u32) as u16)
                .taking_new_flows(taking.contains(&id));
            let same =
                applied.backends.get(&id).is_some_and(|a| BackendValue { generation: 0, ..*a } == value);
            if fresh || !same {
                // A fresh id voids the flows its earlier owner left in the table.
                let generation = dp.backend(id)?.generation;
                let generation = if fresh { generation.wrapping_add(1) } else { generation };
                let value = BackendValue { generation, ..value };
                dp.set_backend(id, value)?;
                applied.backends.insert(id, value);
            }
        }
    }
    // A removed backend's entry stays for its open flows (until its id is reused), but takes no
    // new ones: a SYN that finds an old flow of it gets a backend anew.
    let gone_backends: Vec<(u32, BackendValue)> = applied
        .backends
        .iter()
        .filter(|(id, b)| !current.contains(id) && b.takes_new_flows())
        .map(|(&id, &b)| (id, b.taking_new_flows(false)))
        .collect();
    for (id, value) in gone_backends {
        dp.set_backend(id, value)?;
        applied.backends.insert(id, value);
    }
    for (v, (new, seq)) in vips.iter().zip(schedules) {
        let id = ids.vips[&v.name];
        // A VIP that got another slot (it cannot, but a new one can reuse a freed slot) starts clean.
        let old = applied.rings.get(&v.name).filter(|_| applied.ids.vips.get(&v.name) == Some(&id));
        slots += dp.write_ring(id, old.map(Vec::as_slice), &new)?;
        applied.rings.insert(v.name.clone(), new);
        // The sequence before the VIP entry that gives its length.
        let rr_len = match seq {
            Some(seq) => {
                let old = applied.rr_seqs.get(&v.name).filter(|_| applied.ids.vips.get(&v.name) == Some(&id));
                dp.write_rr_sequence(id, old.map(Vec::as_slice), &seq)?;
                let len = seq.len();
                applied.rr_seqs.insert(v.name.clone(), seq);
                len
            }
            None => {
                applied.rr_seqs.remove(&v.name);
                0
            }
        };
        applied.schedulers.insert(v.name.clone(), v.scheduler);
        let key = vip_key(v);
        // Flows recorded for the id's earlier VIP, or for this VIP's earlier address, port or
        // protocol, must not be forwarded: the old key goes first, then its flows are voided.
        // (Unless another VIP takes that key now.)
        let old = applied.keys.get(&v.name).copied().filter(|old| *old != key);
        if let Some(old) = old.filter(|old| !taken.contains(old)) {
            dp.remove_vip(&old)?;
            removed = true;
        }
        if old.is_some() {
            // Voided once every entry is written: until then the old key may still name it.
            to_void.push(id);
        } else if applied.ids.vips.get(&v.name) != Some(&id) {
            // A fresh id: its earlier owner's flows go before this VIP records its first. A
            // second void still due for the earlier owner would void this VIP's flows: this
            // one, later than the first, takes its place.
            dp.void_vip_flows(id)?;
            applied.void_again.retain(|(_, i)| *i != id);
        }
        dp.set_vip(key, vip_value(v, id, dp, rr_len))?;
        applied.keys.insert(v.name.clone(), key);
        let addr = address_key(v.address);
        if applied.address_entries.insert(addr) {
            dp.set_vip(addr, VipValue { flags: VIP_ADDRESS_ONLY, ..vip_value(v, id, dp, rr_len) })?;
        }
    }
    let gone: Vec<String> =
        applied.keys.keys().filter(|n| !vips.iter().any(|v| &v.name == *n)).cloned().collect();
    for name in gone {
        // A renamed VIP keeps its key under its new name: that entry stays.
        if let Some(key) = applied.keys.remove(&name).filter(|k| !taken.contains(k)) {
            dp.remove_vip(&key)?;
            removed = true;
        }
        if let Some(&id) = applied.ids.vips.get(&name) {
            to_void.push(id);
        }
        applied.rings.remove(&name);
        applied.rr_seqs.remove(&name);
        applied.schedulers.remove(&name);
    }
    let wanted: BTreeSet<VipKey> = vips.iter().map(|v| address_key(v.address)).collect();
    let stale: Vec<VipKey> = applied.address_entries.difference(&wanted).copied().collect();
    for key in stale {
        dp.remove_vip(&key)?;
        applied.address_entries.remove(&key);
        removed = true;
    }
    applied.ids = ids;
    void_vip_flows(dp, applied, &to_void)?;
    if removed {
        dp.sync_vip_filter()?;
    }
    // Every change (a VIP's mode included) reaches cached flows at once.
    move_cache_generation(dp, applied)?;
    Ok(slots)
}

/// Removes VIP entries the maps hold but this agent did not write (left by an agent whose
/// saved state is gone): a VIP nobody knows about must not keep forwarding, by its entry or by
/// its recorded flows (voided, even if a known VIP has taken its id since).
pub fn remove_unknown_vips(dp: &mut Datapath, applied: &mut Applied) -> Result<usize, ApplyError> {
    let known: BTreeSet<VipKey> = applied.keys.values().chain(&applied.address_entries).copied().collect();
    let unknown: Vec<(VipKey, VipValue)> =
        dp.vips()?.into_iter().filter(|(k, _)| !known.contains(k)).collect();
    let mut ids = Vec::new();
    for (key, value) in &unknown {
        dp.remove_vip(key)?;
        // Address entries record no flows.
        if value.flags & VIP_ADDRESS_ONLY == 0 {
            ids.push(value.id);
        }
    }
    void_vip_flows(dp, applied, &ids)?;
    dp.sync_vip_filter()?;
    move_cache_generation(dp, applied)?;
    Ok(unknown.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, Protocol};

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
            backends: addresses
                .iter()
                .zip([100, 200, 300])
                .map(|(&address, weight)| Backend { address, weight, drained: false, health: None })
                .collect(),
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
        let sizes = Sizes {
            flows_per_cpu: 1024,
            pending_flows_per_cpu: 1024,
            max_vips: 4,
            max_rings: 4,
            ring_stride: 4099,
            max_backends: 16,
            flow_cache_slots: 0,
        };
        v.ring_size = 2003;
        let entries = plan(&applied, &[v], &sizes, &none).expect("a plan");
        let e = &entries[0];
        assert_eq!((e.action.as_str(), e.ring_size), ("change", 2003), "{e:?}");
        // Rings of unrelated sizes: a flow keeps its backend with the chance that two independent
        // picks agree, sum of share² over weights 1:2:3 = 14/36.
        assert!((e.share_moved - 22.0 / 36.0).abs() < 0.01, "{e:?}");
        assert_eq!(e.slots_moved, (e.share_moved * 2003.0).round() as usize, "{e:?}");
    }
}
