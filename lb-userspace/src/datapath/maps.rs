//! Typed access to the data plane's maps.
use std::{
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
};

use aya::maps::{Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray};
use lb_common::{
    hash, limits, map_names, BackendValue, ConfigValue, Counter, CounterBlock, FlowEntry, FlowKey, FlowValue,
    TrafficStats, VipKey, VipPolicy, VipSlot, VipValue, FAMILY_V4, FAMILY_V6, VIP_ADDRESS_ONLY,
};

use super::{flow_table::MappedFlowTable, Datapath, DatapathError};

impl Datapath {
    /// A global counter summed over all CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, DatapathError> {
        let name = map_names::STATS;
        let stats: PerCpuArray<&MapData, CounterBlock> =
            PerCpuArray::try_from(self.map(name)?).map_err(err(name))?;
        let per_cpu = stats.get(&0, 0).map_err(err(name))?;
        Ok(per_cpu.iter().map(|b| b.by_index[counter.index() as usize]).sum())
    }

    /// A VIP's traffic counters (by `VipValue::id`), summed over all CPUs.
    pub fn vip_stats(&self, id: u32) -> Result<TrafficStats, DatapathError> {
        self.traffic_stats(map_names::VIP_STATS, id)
    }

    /// A backend's traffic counters (by backend id), summed over all CPUs.
    pub fn backend_stats(&self, id: u32) -> Result<TrafficStats, DatapathError> {
        self.traffic_stats(map_names::BACKEND_STATS, id)
    }

    fn traffic_stats(&self, name: &'static str, id: u32) -> Result<TrafficStats, DatapathError> {
        let stats: PerCpuArray<&MapData, TrafficStats> =
            PerCpuArray::try_from(self.map(name)?).map_err(err(name))?;
        Ok(stats.get(&id, 0).map_err(err(name))?.iter().fold(TrafficStats::default(), |a, s| TrafficStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            new_flows: a.new_flows + s.new_flows,
        }))
    }

    /// Adds or replaces a VIP entry. Write its ring first: the VIP is live as soon as this
    /// returns. Its address's VIP_FILTER bit is set first, and a VIP's own entry (not an
    /// address entry) is also written to VIP_BY_ID, by id, with the id's generation unchanged.
    pub fn set_vip(&mut self, key: VipKey, value: VipValue) -> Result<(), DatapathError> {
        self.set_filter_bit(&key.addr)?;
        if value.flags & VIP_ADDRESS_ONLY == 0 {
            let name = map_names::VIP_BY_ID;
            let mut slots: Array<&mut MapData, VipSlot> =
                Array::try_from(self.map_mut(name)?).map_err(err(name))?;
            let generation = slots.get(&value.id, 0).map_err(err(name))?.generation;
            slots.set(value.id, VipSlot { vip: value, generation }, 0).map_err(err(name))?;
        }
        let name = map_names::VIPS;
        let mut vips: HashMap<&mut MapData, VipKey, VipValue> =
            HashMap::try_from(self.map_mut(name)?).map_err(err(name))?;
        vips.insert(key, value, 0).map_err(err(name))
    }

    /// Voids every flow recorded for VIP `id` so far (they find their backend again like new
    /// ones): call it when the id stops meaning the VIP those flows belong to.
    pub fn void_vip_flows(&mut self, id: u32) -> Result<(), DatapathError> {
        let name = map_names::VIP_BY_ID;
        let mut slots: Array<&mut MapData, VipSlot> =
            Array::try_from(self.map_mut(name)?).map_err(err(name))?;
        let mut slot = slots.get(&id, 0).map_err(err(name))?;
        slot.generation = slot.generation.wrapping_add(1);
        slots.set(id, slot, 0).map_err(err(name))
    }

    /// Every entry of the VIP map (to find entries no agent knows about).
    pub fn vips(&self) -> Result<Vec<(VipKey, VipValue)>, DatapathError> {
        let name = map_names::VIPS;
        let vips: HashMap<&MapData, VipKey, VipValue> =
            HashMap::try_from(self.map(name)?).map_err(err(name))?;
        vips.iter().collect::<Result<_, _>>().map_err(err(name))
    }

    /// Every key in the VIP map.
    pub fn vip_keys(&self) -> Result<Vec<VipKey>, DatapathError> {
        let name = map_names::VIPS;
        let vips: HashMap<&MapData, VipKey, VipValue> =
            HashMap::try_from(self.map(name)?).map_err(err(name))?;
        vips.keys().collect::<Result<_, _>>().map_err(err(name))
    }

    /// Removes a VIP entry. Its address's VIP_FILTER bit stays set (a set bit only costs other
    /// traffic a lookup) until [`Self::sync_vip_filter`], which a batch of removals calls once.
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<(), DatapathError> {
        let name = map_names::VIPS;
        let mut vips: HashMap<&mut MapData, VipKey, VipValue> =
            HashMap::try_from(self.map_mut(name)?).map_err(err(name))?;
        vips.remove(key).map_err(err(name))
    }

    fn set_filter_bit(&mut self, addr: &[u8; 16]) -> Result<(), DatapathError> {
        let bit = hash::vip_filter_bit(addr);
        let name = map_names::VIP_FILTER;
        let mut words: Array<&mut MapData, u64> = Array::try_from(self.map_mut(name)?).map_err(err(name))?;
        let word = words.get(&(bit / 64), 0).map_err(err(name))?;
        let set = word | 1 << (bit % 64);
        if set != word {
            words.set(bit / 64, set, 0).map_err(err(name))?;
        }
        Ok(())
    }

    /// Clears the VIP_FILTER bits that no VIP entry needs any more (only words that change are
    /// written).
    pub fn sync_vip_filter(&mut self) -> Result<(), DatapathError> {
        let mut want = vec![0u64; (limits::VIP_FILTER_BITS / 64) as usize];
        for key in self.vip_keys()? {
            let bit = hash::vip_filter_bit(&key.addr);
            want[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        let name = map_names::VIP_FILTER;
        let mut words: Array<&mut MapData, u64> = Array::try_from(self.map_mut(name)?).map_err(err(name))?;
        for (i, w) in want.into_iter().enumerate() {
            if words.get(&(i as u32), 0).map_err(err(name))? != w {
                words.set(i as u32, w, 0).map_err(err(name))?;
            }
        }
        Ok(())
    }

    /// Backend `id` as BACKENDS holds it (all zero if never set).
    pub fn backend(&self, id: u32) -> Result<BackendValue, DatapathError> {
        if id == 0 || id >= self.sizes.max_backends {
            return Err(DatapathError::BackendId(id));
        }
        let name = map_names::BACKENDS;
        let backends: Array<&MapData, BackendValue> = Array::try_from(self.map(name)?).map_err(err(name))?;
        backends.get(&id, 0).map_err(err(name))
    }

    /// Zeroes backend `id`'s traffic counters on every CPU.
    pub fn reset_backend_stats(&mut self, id: u32) -> Result<(), DatapathError> {
        self.zero_per_cpu::<TrafficStats>(map_names::BACKEND_STATS, id)
    }

    /// Zeroes VIP `id`'s traffic and policy counters on every CPU.
    pub fn reset_vip_stats(&mut self, id: u32) -> Result<(), DatapathError> {
        self.zero_per_cpu::<TrafficStats>(map_names::VIP_STATS, id)?;
        self.zero_per_cpu::<lb_common::PolicyCounts>(map_names::POLICY_STATS, id)
    }

    /// Zeroes entry `id` of per-CPU array `name` on every CPU.
    fn zero_per_cpu<T: aya::Pod + Default + Clone>(
        &mut self,
        name: &'static str,
        id: u32,
    ) -> Result<(), DatapathError> {
        let mut stats: PerCpuArray<&mut MapData, T> =
            PerCpuArray::try_from(self.map_mut(name)?).map_err(err(name))?;
        let cpus = super::loader::possible_cpus()? as usize;
        let zeros =
            aya::maps::PerCpuValues::try_from(vec![T::default(); cpus]).map_err(|e| DatapathError::Map {
                name,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "per-CPU values",
                    io_error: e,
                }),
            })?;
        stats.set(id, zeros, 0).map_err(err(name))
    }

    /// Sets backend `id` (1..max_backends). Write it before any ring names it.
    pub fn set_backend(&mut self, id: u32, value: BackendValue) -> Result<(), DatapathError> {
        if id == 0 || id >= self.sizes.max_backends {
            return Err(DatapathError::BackendId(id));
        }
        let name = map_names::BACKENDS;
        let mut backends: Array<&mut MapData, BackendValue> =
            Array::try_from(self.map_mut(name)?).map_err(err(name))?;
        backends.set(id, value, 0).map_err(err(name))
    }

    /// Writes ring number `ring`, only the slots where `new` differs from `old` (pass `None` for a
    /// ring never written). Each slot is one 4-byte store, so the data plane sees every slot
    /// either old or new, never a torn value.
    pub fn write_ring(
        &mut self,
        ring: u32,
        old: Option<&[u32]>,
        new: &[u32],
    ) -> Result<usize, DatapathError> {
        let Sizes { max_rings, ring_stride, .. } = self.sizes;
        if ring >= max_rings {
            return Err(DatapathError::NoSuchRing { ring, max_rings });
        }
        if new.len() > ring_stride as usize {
            return Err(DatapathError::RingTooLarge { len: new.len(), stride: ring_stride });
        }
        let name = map_names::RINGS;
        let mut rings: Array<&mut MapData, u32> = Array::try_from(self.map_mut(name)?).map_err(err(name))?;
        let base = ring * ring_stride;
        let mut written = 0;
        for (i, &id) in new.iter().enumerate() {
            if old.and_then(|o| o.get(i)) != Some(&id) {
                rings.set(base + i as u32, id, 0).map_err(err(name))?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// Writes the round-robin sequence of VIP `ring` (its id), only the slots where `new` differs
    /// from `old` (`None`: never written). Write it before the VIP entry that gives its length:
    /// the data plane reads slots below the length it sees, each one old or new, never torn.
    pub fn write_rr_sequence(
        &mut self,
        ring: u32,
        old: Option<&[u32]>,
        new: &[u32],
    ) -> Result<usize, DatapathError> {
        let max_rings = self.sizes.max_rings;
        if ring >= max_rings {
            return Err(DatapathError::NoSuchRing { ring, max_rings });
        }
        let stride = lb_common::limits::RR_SEQ_LEN;
        if new.len() > stride as usize {
            return Err(DatapathError::RingTooLarge { len: new.len(), stride });
        }
        let name = map_names::RR_SEQS;
        let mut seqs: Array<&mut MapData, u32> = Array::try_from(self.map_mut(name)?).map_err(err(name))?;
        let mut written = 0;
        for (i, &id) in new.iter().enumerate() {
            if old.and_then(|o| o.get(i)) != Some(&id) {
                seqs.set(ring * stride + i as u32, id, 0).map_err(err(name))?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// The word in which the data plane counts backend `id`'s open connections (least-conn
    /// VIPs), as stored. It counts with atomic adds and subtracts, so a count may dip below zero
    /// (wrap) for a moment after a correction: see [`open_connections`].
    pub fn active_connections(&self, id: u32) -> Result<u64, DatapathError> {
        let name = map_names::ACTIVE_CONNS;
        let counts: Array<&MapData, u64> = Array::try_from(self.map(name)?).map_err(err(name))?;
        counts.get(&id, 0).map_err(err(name))
    }

    /// Sets backend `id`'s count of open connections (a new id, or a correction from the flow
    /// table).
    pub fn set_active_connections(&mut self, id: u32, count: u64) -> Result<(), DatapathError> {
        let name = map_names::ACTIVE_CONNS;
        let mut counts: Array<&mut MapData, u64> = Array::try_from(self.map_mut(name)?).map_err(err(name))?;
        counts.set(id, count, 0).map_err(err(name))
    }

    /// First slot of ring number `ring` in RINGS (for `VipValue::ring_offset`).
    pub fn ring_offset(&self, ring: u32) -> u32 {
        ring * self.sizes.ring_stride
    }

    /// The CONFIG entry as it stands (all zero in fresh maps).
    pub fn config(&self) -> Result<ConfigValue, DatapathError> {
        let name = map_names::CONFIG;
        let cfg: Array<&MapData, ConfigValue> = Array::try_from(self.map(name)?).map_err(err(name))?;
        cfg.get(&0, 0).map_err(err(name))
    }

    pub fn set_config(&mut self, config: ConfigValue) -> Result<(), DatapathError> {
        let name = map_names::CONFIG;
        let mut cfg: Array<&mut MapData, ConfigValue> =
            Array::try_from(self.map_mut(name)?).map_err(err(name))?;
        cfg.set(0, config, 0).map_err(err(name))
    }

    /// Lets the balancer redirect packets out of interface `ifindex` (other than the one they
    /// came in on). Interfaces are in the namespace the programs are attached in.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let name = map_names::TX_PORTS;
        let mut ports: DevMapHash<&mut MapData> =
            DevMapHash::try_from(self.map_mut(name)?).map_err(err(name))?;
        ports.insert(ifindex, ifindex, None, 0).map_err(|source| DatapathError::TxPort { ifindex, source })
    }

    /// Makes the decap program accept tunnels addressed to `addr` (a local address of the host).
    pub fn add_decap_addr(&mut self, addr: IpAddr) -> Result<(), DatapathError> {
        let name = map_names::DECAP_ADDRS;
        let mut addrs: HashMap<&mut MapData, [u8; 16], u8> =
            HashMap::try_from(self.map_mut(name)?).map_err(err(name))?;
        let (key, family) = match addr {
            IpAddr::V4(a) => (BackendValue::v4(a.octets()).addr, FAMILY_V4),
            IpAddr::V6(a) => (a.octets(), FAMILY_V6),
        };
        addrs.insert(key, family, 0).map_err(err(name))
    }

    pub(super) fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DatapathError> {
        self.ebpf.map(name).ok_or(DatapathError::NoMap(name))
    }

    pub(super) fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DatapathError> {
        self.ebpf.map_mut(name).ok_or(DatapathError::NoMap(name))
    }
}

use super::loader::Sizes;

/// A count of open connections as stored (see [`Datapath::active_connections`]): below zero
/// reads as none.
pub fn open_connections(stored: u64) -> u64 {
    (stored as i64).max(0) as u64
}

pub(super) fn err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// An own mapping of the flow table (FLOW_TABLE), to walk it without holding the [`Datapath`].
/// Made in a few system calls (the agent makes one under its lock); a walk reads the
/// generations it needs itself, on the walking thread.
pub struct FlowTable {
    entries: MappedFlowTable,
    /// Own handles of VIP_BY_ID and BACKENDS: each VIP id's and each backend id's generation.
    vip_slots: aya::maps::Map,
    backends: aya::maps::Map,
    /// Own handle of VIP_POLICY: each VIP id's policy generation ([`FlowTable::census_walk`]).
    policies: aya::maps::Map,
}

/// Each VIP id's and each backend id's generation when a walk starts: entries recorded under
/// other ones are void (their VIP is gone or was replaced, or their backend's id has another
/// owner) and the walk skips them.
struct Generations {
    vips: Vec<u32>,
    backends: Vec<u32>,
}

/// What [`FlowTable::census_walk`] saw and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CensusWalk {
    pub walk: FlowWalk,
    /// Flows whose stale policy stamp was forgotten.
    pub stamps_forgotten: u64,
    /// Counted connections idle too long, no longer counted: how many, by backend id (their
    /// backends' counts are still to be lowered by as many).
    pub counts_expired: std::collections::BTreeMap<u32, u64>,
}

/// What [`FlowTable::remove_backend`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub flows: u64,
    /// Of them, connections least-conn counted open.
    pub counted: u64,
}

/// What a walk of the flow table saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowWalk {
    /// Flows visited (void entries not counted).
    pub flows: u64,
    /// False if some entry was being written through every read of it (heavy churn): its flow,
    /// if any, was not visited.
    pub complete: bool,
}

impl Datapath {
    /// A second mapping of the flow table: a walk can then run on another thread while the
    /// agent goes on serving.
    pub fn flow_table(&self) -> Result<FlowTable, DatapathError> {
        let own = |name| self.own_handle(name).map(aya::maps::Map::Array);
        Ok(FlowTable {
            entries: self.flow_entries()?,
            vip_slots: own(map_names::VIP_BY_ID)?,
            backends: own(map_names::BACKENDS)?,
            policies: own(map_names::VIP_POLICY)?,
        })
    }

    /// A handle of map `name` of its own (its descriptor duplicated): what walks on other
    /// threads read through, without the agent's `Datapath`.
    pub(super) fn own_handle(&self, name: &'static str) -> Result<MapData, DatapathError> {
        use std::os::fd::AsFd as _;
        let data = match self.map(name)? {
            aya::maps::Map::Array(data) | aya::maps::Map::LruHashMap(data) => data,
            _ => return Err(DatapathError::NoMap(name)),
        };
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|io_error| DatapathError::Map {
            name,
            source: MapError::SyscallError(aya::sys::SyscallError { call: "dup", io_error }),
        })?;
        MapData::from_fd(fd).map_err(err(name))
    }
}

impl Datapath {
    /// The flow table's entries as they are, void ones included (tests; the agent walks a
    /// [`FlowTable`]).
    pub fn flow_entries(&self) -> Result<MappedFlowTable, DatapathError> {
        let name = map_names::FLOW_TABLE;
        let aya::maps::Map::Array(data) = self.map(name)? else { return Err(DatapathError::NoMap(name)) };
        map_flow_table(data).map_err(err(name))
    }
}

/// Maps FLOW_TABLE `map` (an agent's, or the pinned one) into this process.
fn map_flow_table(map: &MapData) -> Result<MappedFlowTable, MapError> {
    use std::os::fd::AsFd as _;
    let info = map.info()?;
    let expected = size_of::<FlowEntry>();
    if info.value_size() as usize != expected {
        return Err(MapError::InvalidValueSize { size: info.value_size() as usize, expected });
    }
    MappedFlowTable::map(map.fd().as_fd(), info.max_entries())
        .map_err(|io_error| MapError::SyscallError(aya::sys::SyscallError { call: "mmap", io_error }))
}

/// Maps the FLOW_TABLE pinned at `path` into this process (test kits and benches, which write
/// flows as the data plane would).
pub fn map_pinned_flow_table(path: &std::path::Path) -> Result<MappedFlowTable, DatapathError> {
    let name = map_names::FLOW_TABLE;
    map_flow_table(&MapData::from_pin(path).map_err(err(name))?).map_err(err(name))
}

impl Generations {
    /// Whether the flow was recorded under its VIP's and its backend's current generations
    /// (entries keep their low 16 bits): it is live.
    fn recorded(&self, entry: &FlowEntry) -> bool {
        let current = |generations: &[u32], id: u32, recorded: u16| {
            generations.get(id as usize).is_some_and(|&g| g as u16 == recorded)
        };
        current(&self.vips, entry.vip.into(), entry.vip_generation)
            && current(&self.backends, entry.backend, entry.backend_generation)
    }
}

impl FlowTable {
    /// The table's entries: the flows it can hold.
    pub fn entries(&self) -> u64 {
        self.entries.len().into()
    }

    /// Calls `visit` once for each flow in the table, confirmed or not, with its whole value and
    /// whether it is confirmed. Void entries (of a VIP that is gone or was replaced, or of a
    /// backend id with another owner: the data plane ignores them) are skipped.
    ///
    /// The data plane goes on adding and evicting flows meanwhile: each entry is read by the
    /// flow table's protocol (lb-common/src/flow.rs), so no flow is read torn; a flow that moves
    /// in while the walk is past its set is not visited, one evicted before is not either.
    pub fn walk_values(
        &self,
        mut visit: impl FnMut(&FlowKey, &FlowValue, bool),
    ) -> Result<FlowWalk, DatapathError> {
        self.walk_entries(|_, entry| {
            visit(&entry.key, &entry.value(), entry.confirmed());
        })
    }

    /// [`Self::walk_values`] for lbd's census, which also forgets every stale policy stamp: a
    /// flow's stamp that is not its VIP's current policy generation (read before the walk) is
    /// set to 0, which no generation is. A stamp is kept as the generation's low 16 bits, and
    /// generations move on every second: without this, a flow refused since (its packets
    /// dropped, its stamp left behind) would skip the checks again under the generation 65,536
    /// later, some 18 hours on. A change racing the walk only costs a flow one more check.
    ///
    /// And it stops counting (least-conn) a connection with no packet in `count_idle` clock
    /// ticks up to `now`: the backend's own RST or FIN never passes the balancer (replies go
    /// straight to the client), so a connection the backend closed (a restart, a timeout)
    /// would otherwise count against it until a new flow takes its entry. The visit sees such
    /// a flow as not counted.
    pub fn census_walk(
        &self,
        now: u32,
        count_idle: u32,
        mut visit: impl FnMut(&FlowKey, &FlowValue, bool),
    ) -> Result<CensusWalk, DatapathError> {
        let name = map_names::VIP_POLICY;
        let policies: Array<&MapData, VipPolicy> = Array::try_from(&self.policies).map_err(err(name))?;
        let current: Vec<u16> = policies
            .iter()
            .map(|p| p.map(|p| p.generation as u16))
            .collect::<Result<_, _>>()
            .map_err(err(name))?;
        let (mut stamps_forgotten, mut counts_expired) = (0, std::collections::BTreeMap::new());
        let walk = self.walk_entries(|index, entry| {
            let stamp = entry.policy_generation;
            if stamp != 0
                && current.get(entry.vip as usize) != Some(&stamp)
                && self.entries.forget_policy_stamp(index, stamp)
            {
                stamps_forgotten += 1;
            }
            let mut value = entry.value();
            if value.counted
                && now.saturating_sub(value.last_tick) >= count_idle
                && self.entries.take_count(index, entry)
            {
                value.counted = false;
                *counts_expired.entry(value.backend).or_insert(0) += 1;
            }
            visit(&entry.key, &value, entry.confirmed());
        })?;
        Ok(CensusWalk { walk, stamps_forgotten, counts_expired })
    }

    fn generations(&self) -> Result<Generations, DatapathError> {
        let name = map_names::VIP_BY_ID;
        let slots: Array<&MapData, VipSlot> = Array::try_from(&self.vip_slots).map_err(err(name))?;
        let vips =
            slots.iter().map(|s| s.map(|s| s.generation)).collect::<Result<_, _>>().map_err(err(name))?;
        let name = map_names::BACKENDS;
        let backends: Array<&MapData, BackendValue> = Array::try_from(&self.backends).map_err(err(name))?;
        let backends =
            backends.iter().map(|b| b.map(|b| b.generation)).collect::<Result<_, _>>().map_err(err(name))?;
        Ok(Generations { vips, backends })
    }

    /// Every live flow's entry, with its index.
    fn walk_entries(&self, mut visit: impl FnMut(u32, &FlowEntry)) -> Result<FlowWalk, DatapathError> {
        let generations = self.generations()?;
        let mut walk = FlowWalk { flows: 0, complete: true };
        for index in 0..self.entries.len() {
            let Some(entry) = self.entries.read_settled(index) else {
                walk.complete = false;
                continue;
            };
            if entry.holds_flow() && generations.recorded(&entry) {
                walk.flows += 1;
                visit(index, &entry);
            }
        }
        Ok(walk)
    }

    /// Removes every flow pinned to backend `id` (their next packets pick a backend from the
    /// ring again) while `wanted` holds, and says how many this removed. An entry a data-plane
    /// writer takes meanwhile stays the writer's.
    pub fn remove_backend(&mut self, id: u32, wanted: &AtomicBool) -> Result<Removed, DatapathError> {
        let mut removed = Removed::default();
        let entries = &self.entries;
        self.walk_entries(|index, entry| {
            if entry.backend != id || !wanted.load(Ordering::Relaxed) {
                return;
            }
            if let Some(ctl) = entries.clear(index, entry) {
                removed.flows += 1;
                removed.counted += u64::from(ctl & lb_common::FLOW_COUNTED != 0);
            }
        })?;
        Ok(removed)
    }
}
