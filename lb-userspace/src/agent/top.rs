//! `lbctl top`: the sources sending the most now, read from the rate limiter's own per-source
//! state (SOURCES: VIPs with `[vip.limits]`), each CPU's entries added up.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Agent, AgentError};
use crate::{datapath, security::Prefix};

/// Sources `lbctl top` shows unless told otherwise.
pub const DEFAULT_LIMIT: usize = 10;

/// One source prefix of one VIP, in the last whole second.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopSource {
    pub vip: String,
    pub source: Prefix,
    /// Packets the flow cache did not answer (new flows, packets of no known flow, each flow's
    /// first packet a second).
    pub packets: u64,
    pub new_flows: u64,
    /// Packets the rate limits refused (dropped, or passed to the stack).
    pub refused: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Top {
    /// The busiest sources first (by packets, then new flows).
    pub sources: Vec<TopSource>,
    /// Source prefixes with traffic in the last second, all VIPs asked about.
    pub active: usize,
    /// VIPs asked about that keep no per-source state (no `[vip.limits]`).
    pub untracked: Vec<String>,
}

impl Agent {
    /// The `limit` busiest sources of `vip` (every VIP if none) in the last whole second.
    pub fn top(&self, vip: Option<&str>, limit: usize) -> Result<Top, AgentError> {
        if let Some(name) = vip {
            self.vip(name)?;
        }
        let asked = |name: &str| vip.is_none_or(|v| v == name);
        let names: BTreeMap<u32, (&str, u8)> = self
            .config
            .vips
            .iter()
            .filter(|v| asked(&v.name))
            .filter_map(|v| {
                let id = *self.applied.ids.vips.get(&v.name)?;
                let len = v.limits.as_ref()?.source_prefix_for(v.address);
                Some((id, (v.name.as_str(), len)))
            })
            .collect();
        let untracked = self
            .config
            .vips
            .iter()
            .filter(|v| asked(&v.name) && v.limits.is_none())
            .map(|v| v.name.clone())
            .collect();
        let now = datapath::monotonic_second();
        let mut sums: BTreeMap<(u32, std::net::IpAddr), [u64; 3]> = BTreeMap::new();
        for s in self.datapath.sources().map_err(|e| AgentError::Apply(e.into()))? {
            if !names.contains_key(&s.vip) {
                continue;
            }
            // The last whole second: the one before the entry's current second, or its current
            // one if that has ended.
            let st = &s.state;
            let slot = match now.checked_sub(st.second) {
                Some(0) => 1,
                Some(1) => 0,
                _ => continue,
            };
            let sum = sums.entry((s.vip, s.address)).or_default();
            sum[0] += u64::from(st.packets[slot]);
            sum[1] += u64::from(st.new_flows[slot]);
            sum[2] += u64::from(st.drops[slot]);
        }
        let active: BTreeSet<_> = sums.iter().filter(|(_, v)| v[0] > 0).map(|(k, _)| *k).collect();
        let mut sources: Vec<TopSource> = sums
            .into_iter()
            .filter(|(_, v)| v.iter().any(|n| *n > 0))
            .map(|((id, address), [packets, new_flows, refused])| {
                let (name, len) = names[&id];
                TopSource {
                    vip: name.to_owned(),
                    source: Prefix { address, len },
                    packets,
                    new_flows,
                    refused,
                }
            })
            .collect();
        sources.sort_by(|a, b| (b.packets, b.new_flows).cmp(&(a.packets, a.new_flows)));
        sources.truncate(limit);
        Ok(Top { sources, active: active.len(), untracked })
    }
}
