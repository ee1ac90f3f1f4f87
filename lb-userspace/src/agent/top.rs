//! `lbctl top`: the sources sending the most now, read from the rate limiter's own per-source
//! state (SOURCES: VIPs with `[vip.limits]`), each CPU's entries added up.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Agent, AgentError};
use crate::{datapath, security::Prefix};

/// Sources `lbctl top` shows unless told otherwise.
pub const DEFAULT_LIMIT: usize = 10;

/// One source prefix of one VIP: what it sent a second, since the start of the second before
/// the current one (the data plane counts by whole second).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopSource {
    pub vip: String,
    pub source: Prefix,
    /// Packets the policy checks saw (new flows, packets of no confirmed flow, a confirmed
    /// flow's first packet after its VIP's policy changed).
    pub packets: u64,
    pub new_flows: u64,
    /// Packets the rate limits refused (dropped, or passed to the stack).
    pub refused: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Top {
    /// The busiest sources first (by packets, then new flows).
    pub sources: Vec<TopSource>,
    /// Source prefixes with traffic in that window, all VIPs asked about.
    pub active: usize,
    /// VIPs asked about that keep no per-source state (no `[vip.limits]`).
    pub untracked: Vec<String>,
}

/// A `lbctl top` prepared under the agent's lock, to run without it ([`TopQuery::run`]).
pub struct TopQuery {
    sources: datapath::Sources,
    /// VIP id -> (name, prefix length the sources are added up by), for the VIPs asked about.
    names: BTreeMap<u32, (String, u8)>,
    untracked: Vec<String>,
    limit: usize,
}

impl Agent {
    /// Prepares the `limit` busiest sources of `vip` (every VIP if none) now (see
    /// [`TopSource`]); `prefix`: added up by prefixes of that length (shorter than the VIP's
    /// source prefix), to see which blocks a spoofed flood comes from.
    pub fn top_query(
        &self,
        vip: Option<&str>,
        limit: usize,
        prefix: Option<u8>,
    ) -> Result<TopQuery, AgentError> {
        if let Some(name) = vip {
            self.vip(name)?;
        }
        let asked = |name: &str| vip.is_none_or(|v| v == name);
        let names = self
            .config
            .vips
            .iter()
            .filter(|v| asked(&v.name))
            .filter_map(|v| {
                let id = *self.applied.ids.vips.get(&v.name)?;
                let tracked = v.limits.as_ref()?.source_prefix_for(v.address);
                let len = prefix.map_or(tracked, |p| p.min(tracked));
                Some((id, (v.name.clone(), len)))
            })
            .collect();
        let untracked = self
            .config
            .vips
            .iter()
            .filter(|v| asked(&v.name) && v.limits.is_none())
            .map(|v| v.name.clone())
            .collect();
        let sources = self.datapath.sources().map_err(|e| AgentError::Apply(e.into()))?;
        Ok(TopQuery { sources, names, untracked, limit })
    }
}

impl TopQuery {
    /// Walks SOURCES (blocking: under a flood, a full table's system calls take a second).
    pub fn run(self) -> Result<Top, datapath::DatapathError> {
        let TopQuery { sources: map, names, untracked, limit } = self;
        let now_ns = datapath::monotonic_ns();
        let now = now_ns / 1_000_000_000;
        // The window: the previous second and the current one so far.
        let window = 1.0 + (now_ns % 1_000_000_000) as f64 / 1e9;
        let mut sums: BTreeMap<(u32, std::net::IpAddr), [u64; 3]> = BTreeMap::new();
        for s in map.samples()? {
            if !names.contains_key(&s.vip) {
                continue;
            }
            // Its counts of the current and the previous second, as far as they fall in the window.
            let st = &s.state;
            let slots: &[usize] = match now.checked_sub(st.second) {
                Some(0) => &[0, 1],
                Some(1) => &[0],
                _ => continue,
            };
            let sum = sums.entry((s.vip, Prefix::masked(s.address, names[&s.vip].1))).or_default();
            for &i in slots {
                sum[0] += u64::from(st.packets[i]);
                sum[1] += u64::from(st.new_flows[i]);
                sum[2] += u64::from(st.drops[i]);
            }
        }
        let per_second = |n: u64| (n as f64 / window).round() as u64;
        let active: BTreeSet<_> = sums.iter().filter(|(_, v)| v[0] > 0).map(|(k, _)| *k).collect();
        let mut sources: Vec<TopSource> = sums
            .into_iter()
            .filter(|(_, v)| v.iter().any(|n| *n > 0))
            .map(|((id, address), [packets, new_flows, refused])| {
                let (name, len) = &names[&id];
                TopSource {
                    vip: name.clone(),
                    source: Prefix { address, len: *len },
                    packets: per_second(packets),
                    new_flows: per_second(new_flows),
                    refused: per_second(refused),
                }
            })
            .collect();
        sources.sort_by_key(|s| std::cmp::Reverse((s.packets, s.new_flows)));
        sources.truncate(limit);
        Ok(Top { sources, active: active.len(), untracked })
    }
}
