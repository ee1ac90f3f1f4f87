//! Desired state -> map writes. Ids are stable slots; a ring rebuild writes only the slots that
//! changed; everything that can fail for a reason the operator controls (out of ids) fails
//! before the first write.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    BackendValue, ConfigValue, VipKey, VipValue, MODE_IPIP, MODE_L2DSR, NO_BACKEND, PROTO_ICMP, PROTO_ICMPV6,
    VIP_ADDRESS_ONLY, VIP_HASH_SOURCE_ONLY,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    config::{AllDown, ForwardMode, HashMode, Source, Vip},
    datapath::{Datapath, DatapathError, Sizes},
    maglev,
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

    /// Ids for `vips`: existing ones kept, new ones taken from the free slots.
    fn allocate(&self, vips: &[Vip], sizes: &Sizes) -> Result<Ids, ApplyError> {
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
    /// See `ConfigValue::next_hop_generation`; 0 until the agent's first tick.
    pub next_hop_generation: u32,
}

/// Backends whose health check failed, by (VIP name, address).
pub type Down = BTreeSet<(String, IpAddr)>;

/// The ring a VIP should have: the full table over its configured backends, with the slots of
/// unavailable ones (drained or down) handed out as a table over the available ones would, so
/// that only their slots move. None drained-in: every slot empty (new flows are dropped). All
/// of those down: the last ring stays (fail open), unless the VIP says `all_down = "drop"`.
pub fn ring(vip: &Vip, ids: &Ids, down: &Down, last: Option<&Vec<u32>>) -> Vec<u32> {
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
    if healthy.is_empty() {
        return match (vip.all_down, last) {
            (AllDown::Drop, _) => empty(),
            (AllDown::KeepLastRing, Some(last)) if last.len() == vip.ring_size as usize => last.clone(),
            // No last ring of this size: spread over every backend in service.
            (AllDown::KeepLastRing, _) => {
                let all: BTreeSet<u32> =
                    in_service.iter().filter_map(|b| ids.backend(&vip.name, b.address)).collect();
                maglev::build_available(&members, &|id| all.contains(&id), vip.ring_size)
            }
        };
    }
    maglev::build_available(&members, &|id| healthy.contains(&id), vip.ring_size)
}

fn vip_key(vip: &Vip) -> VipKey {
    VipKey::from((vip.address, vip.port, vip.protocol.number()))
}

fn address_key(address: IpAddr) -> VipKey {
    let proto = if address.is_ipv4() { PROTO_ICMP } else { PROTO_ICMPV6 };
    VipKey::from((address, 0, proto))
}

fn vip_value(vip: &Vip, id: u32, dp: &Datapath) -> VipValue {
    VipValue {
        id,
        flags: if vip.hash == HashMode::Source { VIP_HASH_SOURCE_ONLY } else { 0 },
        ring_offset: dp.ring_offset(id),
        ring_size: vip.ring_size,
        mode: match vip.mode {
            ForwardMode::Ipip => MODE_IPIP,
            ForwardMode::L2dsr => MODE_L2DSR,
        },
        _pad: [0; 3],
    }
}

/// Writes CONFIG from the applied source and capture setting.
pub fn write_config(dp: &mut Datapath, applied: &Applied) -> Result<(), ApplyError> {
    let source = applied.source.clone().unwrap_or_default();
    Ok(dp.set_config(config_value(&source, applied.capture_vip, applied.next_hop_generation))?)
}

fn config_value(s: &Source, capture_vip: u32, next_hop_generation: u32) -> ConfigValue {
    ConfigValue {
        src_v4: s.ipv4.map(|a| a.octets()).unwrap_or_default(),
        src_v6: s.ipv6.map(|a| a.octets()).unwrap_or_default(),
        hash_seed: s.hash_seed,
        v4_entropy_bits: s.ipv4_entropy_bits,
        v6_entropy_bits: s.ipv6_entropy_bits,
        _pad: [0; 2],
        capture_vip,
        next_hop_generation,
    }
}

/// What applying `vips` would change, per VIP: the share of its ring that moves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanEntry {
    pub vip: String,
    /// "add", "remove", "change" or "keep".
    pub action: String,
    pub slots_moved: usize,
    pub ring_size: u32,
    /// slots_moved / ring_size: the share of new flows that would pick another backend.
    pub share_moved: f64,
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
        let new = ring(v, &ids, down, applied.rings.get(&v.name));
        let (action, moved) = match applied.rings.get(&v.name) {
            None => ("add", new.len()),
            Some(old) => {
                let moved = maglev::slots_moved(old, &new);
                let same_key = applied.keys.get(&v.name) == Some(&vip_key(v));
                (if moved == 0 && same_key { "keep" } else { "change" }, moved)
            }
        };
        entries.push(PlanEntry {
            vip: v.name.clone(),
            action: action.into(),
            slots_moved: moved,
            ring_size: v.ring_size,
            share_moved: moved as f64 / v.ring_size as f64,
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
    for v in vips {
        for b in &v.backends {
            let id = ids.backend(&v.name, b.address).expect("allocated above");
            if applied.ids.backend(&v.name, b.address) != Some(id) {
                dp.set_backend(id, BackendValue::from(b.address))?;
            }
        }
    }
    for v in vips {
        let id = ids.vips[&v.name];
        // A VIP that got another slot (it cannot, but a new one can reuse a freed slot) starts clean.
        let old = applied.rings.get(&v.name).filter(|_| applied.ids.vips.get(&v.name) == Some(&id));
        let new = ring(v, &ids, down, old);
        slots += dp.write_ring(id, old.map(Vec::as_slice), &new)?;
        applied.rings.insert(v.name.clone(), new);
        let key = vip_key(v);
        dp.set_vip(key, vip_value(v, id, dp))?;
        if let Some(old_key) = applied.keys.insert(v.name.clone(), key) {
            if old_key != key {
                dp.remove_vip(&old_key)?;
            }
        }
        let addr = address_key(v.address);
        if applied.address_entries.insert(addr) {
            dp.set_vip(addr, VipValue { flags: VIP_ADDRESS_ONLY, ..vip_value(v, id, dp) })?;
        }
    }
    let gone: Vec<String> =
        applied.keys.keys().filter(|n| !vips.iter().any(|v| &v.name == *n)).cloned().collect();
    for name in gone {
        if let Some(key) = applied.keys.remove(&name) {
            dp.remove_vip(&key)?;
        }
        applied.rings.remove(&name);
    }
    let wanted: BTreeSet<VipKey> = vips.iter().map(|v| address_key(v.address)).collect();
    let stale: Vec<VipKey> = applied.address_entries.difference(&wanted).copied().collect();
    for key in stale {
        dp.remove_vip(&key)?;
        applied.address_entries.remove(&key);
    }
    applied.ids = ids;
    Ok(slots)
}

/// Removes VIP entries the maps hold but this agent did not write (left by an agent whose
/// saved state is gone): a VIP nobody knows about must not keep forwarding.
pub fn remove_unknown_vips(dp: &mut Datapath, applied: &Applied) -> Result<usize, ApplyError> {
    let known: BTreeSet<VipKey> = applied.keys.values().chain(&applied.address_entries).copied().collect();
    let unknown: Vec<VipKey> = dp.vip_keys()?.into_iter().filter(|k| !known.contains(k)).collect();
    for key in &unknown {
        dp.remove_vip(key)?;
    }
    Ok(unknown.len())
}
