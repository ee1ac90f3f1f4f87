//! The policy maps: access lists (ACL), each VIP's policy (VIP_POLICY), what the policy step
//! refused (POLICY_STATS), and the per-source state behind `lbctl top` (SOURCES).
use std::net::IpAddr;

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, MapData, MapError, PerCpuArray,
};
use lb_common::{map_names, AclKey, PolicyCounts, SourceKey, SourceState, VipPolicy, FAMILY_V4, FAMILY_V6};

use super::{maps::err, Datapath, DatapathError};

/// One access-list entry: a prefix of a scope (0: the global list; VIP id + 1: a VIP's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclEntry {
    pub scope: u32,
    /// The prefix's address, host bits clear.
    pub address: IpAddr,
    pub len: u8,
}

impl AclEntry {
    /// The entry's scope: `None` for the global list, else the VIP id.
    pub fn vip(&self) -> Option<u32> {
        self.scope.checked_sub(1)
    }

    fn key(&self) -> Key<AclKey> {
        let (family, addr) = match self.address {
            IpAddr::V4(a) => {
                let mut addr = [0; 16];
                addr[..4].copy_from_slice(&a.octets());
                (FAMILY_V4, addr)
            }
            IpAddr::V6(a) => (FAMILY_V6, a.octets()),
        };
        let data = AclKey { scope: self.scope.to_be_bytes(), family, addr, _pad: [0; 3] };
        Key::new(AclKey::prefix_len(self.len.into()), data)
    }

    fn from_key(key: &Key<AclKey>) -> AclEntry {
        let data = key.data();
        let address = if data.family == FAMILY_V4 {
            IpAddr::from([data.addr[0], data.addr[1], data.addr[2], data.addr[3]])
        } else {
            IpAddr::from(data.addr)
        };
        let len = key.prefix_len().saturating_sub(AclKey::SCOPE_BITS) as u8;
        AclEntry { scope: u32::from_be_bytes(data.scope), address, len }
    }
}

/// One CPU's state of one source prefix of a VIP, as SOURCES holds it.
#[derive(Clone, Copy, Debug)]
pub struct SourceSample {
    pub vip: u32,
    /// The source prefix's address (host bits clear, by the VIP's source prefix length).
    pub address: IpAddr,
    pub state: SourceState,
}

impl Datapath {
    /// Sets an access-list entry (`ACL_ALLOW` or `ACL_DENY`).
    pub fn set_acl(&mut self, entry: &AclEntry, value: u32) -> Result<(), DatapathError> {
        let name = map_names::ACL;
        let mut trie: LpmTrie<&mut MapData, AclKey, u32> =
            LpmTrie::try_from(self.map_mut(name)?).map_err(err(name))?;
        trie.insert(&entry.key(), value, 0).map_err(err(name))
    }

    /// Removes an access-list entry (one already gone is fine).
    pub fn remove_acl(&mut self, entry: &AclEntry) -> Result<(), DatapathError> {
        let name = map_names::ACL;
        let mut trie: LpmTrie<&mut MapData, AclKey, u32> =
            LpmTrie::try_from(self.map_mut(name)?).map_err(err(name))?;
        match trie.remove(&entry.key()) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(err(name)(e)),
        }
    }

    /// Every access-list entry with its value (what an earlier agent left, at start).
    pub fn acl_entries(&self) -> Result<Vec<(AclEntry, u32)>, DatapathError> {
        let name = map_names::ACL;
        let trie: LpmTrie<&MapData, AclKey, u32> = LpmTrie::try_from(self.map(name)?).map_err(err(name))?;
        let keys: Vec<Key<AclKey>> = trie.keys().collect::<Result<_, _>>().map_err(err(name))?;
        let mut entries = Vec::with_capacity(keys.len());
        for key in &keys {
            match trie.get(key, 0) {
                Ok(value) => entries.push((AclEntry::from_key(key), value)),
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(err(name)(e)),
            }
        }
        Ok(entries)
    }

    /// VIP_POLICY[`id`]: what the policy step does for VIP `id`. Write it before the VIP's
    /// entry, and its ACL entries before it says `POLICY_ACL`.
    pub fn set_vip_policy(&mut self, id: u32, policy: VipPolicy) -> Result<(), DatapathError> {
        let name = map_names::VIP_POLICY;
        let mut map: Array<&mut MapData, VipPolicy> =
            Array::try_from(self.map_mut(name)?).map_err(err(name))?;
        map.set(id, policy, 0).map_err(err(name))
    }

    /// What the policy step refused for VIP `id`, summed over CPUs.
    pub fn policy_counts(&self, id: u32) -> Result<PolicyCounts, DatapathError> {
        let name = map_names::POLICY_STATS;
        let map: PerCpuArray<&MapData, PolicyCounts> =
            PerCpuArray::try_from(self.map(name)?).map_err(err(name))?;
        Ok(map.get(&id, 0).map_err(err(name))?.iter().fold(PolicyCounts::default(), |mut a, c| {
            for (sum, n) in a.dropped.iter_mut().zip(c.dropped) {
                *sum += n;
            }
            a.passed += c.passed;
            a
        }))
    }

    /// The CPUs that run XDP programs (online now): rate limits are shared out among them.
    pub fn cpus(&self) -> Result<u32, DatapathError> {
        let cpus = aya::util::online_cpus().map_err(|(path, e)| DatapathError::Cpus(path, e))?;
        Ok(cpus.len().max(1) as u32)
    }

    /// A handle of SOURCES of its own: [`Sources::samples`] can then walk it on another thread
    /// while the agent goes on serving (a full table takes a second's system calls).
    pub fn sources(&self) -> Result<Sources, DatapathError> {
        Ok(Sources(aya::maps::Map::LruHashMap(self.own_handle(map_names::SOURCES)?)))
    }
}

/// SOURCES, through a handle of its own ([`Datapath::sources`]).
pub struct Sources(aya::maps::Map);

impl Sources {
    /// Every entry, each CPU's apart, each once. A walk of at most two steps per slot: sources
    /// evicted meanwhile are skipped.
    pub fn samples(&self) -> Result<Vec<SourceSample>, DatapathError> {
        let name = map_names::SOURCES;
        let map: HashMap<&MapData, SourceKey, SourceState> = HashMap::try_from(&self.0).map_err(err(name))?;
        let bound = 2 * lb_common::limits::TRACKED_SOURCES as usize;
        let mut samples = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for item in map.iter().take(bound) {
            let (key, state) = match item {
                Ok(kv) => kv,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(err(name)(e)),
            };
            // The kernel's walk starts over from the first bucket when the entry it stood on
            // was evicted (a flood of new sources evicts all the time): entries come round
            // again, and counted twice they would double a source's rates.
            if !seen.insert(key) {
                continue;
            }
            let address = if key.family == FAMILY_V4 {
                IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
            } else {
                IpAddr::from(key.addr)
            };
            samples.push(SourceSample { vip: key.vip, address, state });
        }
        Ok(samples)
    }
}

/// The data plane's clock (`bpf_ktime_get_ns`: CLOCK_MONOTONIC), in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
