//! The decap program's maps: the addresses it strips tunnels for, the outer sources it accepts
//! them from, and the counters a backend host shows.
use std::{collections::BTreeSet, net::IpAddr, path::Path};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, MapData, PerCpuArray,
};
use lb_common::{map_names, Counter, CounterBlock, DecapConfig, DecapSource, FAMILY_V4};

use super::{maps::err, Datapath, DatapathError};

/// The 16-byte key form of an address (IPv4 in the first 4 bytes) and its family.
fn key_of(address: IpAddr) -> ([u8; 16], u8) {
    let s = DecapSource::from(address);
    (s.addr, s.family)
}

/// The address a key of `family` holds.
fn address_of(bytes: [u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(bytes)
    }
}

impl Datapath {
    /// Makes DECAP_ADDRS hold exactly `addresses`: the decap program strips tunnels addressed to
    /// them (and only them).
    pub fn set_decap_addrs(&mut self, addresses: &BTreeSet<IpAddr>) -> Result<(), DatapathError> {
        let name = map_names::DECAP_ADDRS;
        let mut map: HashMap<&mut MapData, [u8; 16], u8> =
            HashMap::try_from(self.map_mut(name)?).map_err(err(name))?;
        let want: BTreeSet<([u8; 16], u8)> = addresses.iter().map(|&a| key_of(a)).collect();
        let have: Vec<[u8; 16]> = map.keys().collect::<Result<_, _>>().map_err(err(name))?;
        for &(key, family) in &want {
            map.insert(key, family, 0).map_err(err(name))?;
        }
        for key in have.iter().filter(|k| !want.iter().any(|(w, _)| w == *k)) {
            map.remove(key).map_err(err(name))?;
        }
        Ok(())
    }

    /// Makes the decap program accept tunnels only from outer sources in `prefixes` (address
    /// with its host bits clear, prefix length), or from any source when it is empty. The
    /// switch moves after the entries are in, and before they go: a change never refuses a
    /// source that both the old and the new list accept.
    pub fn set_decap_sources(&mut self, prefixes: &BTreeSet<(IpAddr, u8)>) -> Result<(), DatapathError> {
        if prefixes.is_empty() {
            self.set_decap_config(DecapConfig { check_sources: 0 })?;
        }
        let name = map_names::DECAP_SOURCES;
        let mut trie: LpmTrie<&mut MapData, DecapSource, u8> =
            LpmTrie::try_from(self.map_mut(name)?).map_err(err(name))?;
        let want: Vec<Key<DecapSource>> = prefixes
            .iter()
            .map(|&(address, len)| Key::new(DecapSource::prefix_len(len.into()), DecapSource::from(address)))
            .collect();
        let have: Vec<Key<DecapSource>> = trie.keys().collect::<Result<_, _>>().map_err(err(name))?;
        for key in &want {
            trie.insert(key, 1, 0).map_err(err(name))?;
        }
        let same = |a: &Key<DecapSource>, b: &Key<DecapSource>| {
            a.prefix_len() == b.prefix_len() && a.data() == b.data()
        };
        for key in have.iter().filter(|k| !want.iter().any(|w| same(w, k))) {
            trie.remove(key).map_err(err(name))?;
        }
        if !prefixes.is_empty() {
            self.set_decap_config(DecapConfig { check_sources: 1 })?;
        }
        Ok(())
    }

    fn set_decap_config(&mut self, config: DecapConfig) -> Result<(), DatapathError> {
        let name = map_names::DECAP_CONFIG;
        let mut map: Array<&mut MapData, DecapConfig> =
            Array::try_from(self.map_mut(name)?).map_err(err(name))?;
        map.set(0, config, 0).map_err(err(name))
    }
}

/// What a backend host's pinned decap maps hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecapView {
    /// `decapsulated`, `decap_refused`, `decap_fragment`, `decap_ce_not_ect`, summed over CPUs.
    pub counters: Vec<(Counter, u64)>,
    /// Outer destinations it strips tunnels for.
    pub addresses: Vec<IpAddr>,
    /// Outer sources it accepts tunnels from; `None`: any.
    pub sources: Option<Vec<(IpAddr, u8)>>,
}

/// The counters a backend host shows.
pub const DECAP_COUNTERS: [Counter; 4] =
    [Counter::Decapsulated, Counter::DecapRefused, Counter::DecapFragment, Counter::DecapCeNotEct];

/// Reads the decap maps pinned under `dir` (by a running or crashed `lbd backend-host`).
pub fn read_pinned_decap(dir: &Path) -> Result<DecapView, DatapathError> {
    let open = |name: &'static str| MapData::from_pin(dir.join(name)).map_err(err(name));
    let name = map_names::STATS;
    let stats: PerCpuArray<MapData, CounterBlock> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(open(name)?)).map_err(err(name))?;
    let blocks = stats.get(&0, 0).map_err(err(name))?;
    let counters = DECAP_COUNTERS
        .iter()
        .map(|&c| (c, blocks.iter().map(|b| b.by_index[c.index() as usize]).sum()))
        .collect();

    let name = map_names::DECAP_ADDRS;
    let addrs: HashMap<MapData, [u8; 16], u8> =
        HashMap::try_from(aya::maps::Map::HashMap(open(name)?)).map_err(err(name))?;
    let mut addresses: Vec<IpAddr> = addrs
        .iter()
        .map(|r| r.map(|(k, family)| address_of(k, family)))
        .collect::<Result<_, _>>()
        .map_err(err(name))?;
    addresses.sort();

    let name = map_names::DECAP_CONFIG;
    let config: Array<MapData, DecapConfig> =
        Array::try_from(aya::maps::Map::Array(open(name)?)).map_err(err(name))?;
    let check = config.get(&0, 0).map_err(err(name))?.check_sources != 0;
    let name = map_names::DECAP_SOURCES;
    let trie: LpmTrie<MapData, DecapSource, u8> =
        LpmTrie::try_from(aya::maps::Map::LpmTrie(open(name)?)).map_err(err(name))?;
    let mut sources: Vec<(IpAddr, u8)> = trie
        .keys()
        .map(|k| {
            k.map(|k| {
                let source = k.data();
                let bits = k.prefix_len().saturating_sub(8) as u8;
                (address_of(source.addr, source.family), bits)
            })
        })
        .collect::<Result<_, _>>()
        .map_err(err(name))?;
    sources.sort();
    Ok(DecapView { counters, addresses, sources: check.then_some(sources) })
}
