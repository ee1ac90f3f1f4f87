//! Counters read from the maps, named the way operators and scripts see them.
use lb_common::Counter;
use serde::{Deserialize, Serialize};

use super::Agent;
use crate::datapath::DatapathError;

#[derive(Debug, Serialize, Deserialize)]
pub struct Stats {
    /// Every global counter by its name (`lb_common::Counter::name`).
    pub counters: Vec<(String, u64)>,
    pub vips: Vec<VipStats>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VipStats {
    pub name: String,
    pub service: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Packets its policy dropped, by `lb_common::PolicyReason` (acl, rate_new_flows,
    /// rate_packets, vip_new_flow_cap).
    #[serde(default)]
    pub policy_drops: [u64; 4],
    /// New TCP flows over a limit passed to the stack.
    #[serde(default)]
    pub policy_passed: u64,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BackendStats {
    pub address: String,
    pub weight: u32,
    pub drained: bool,
    /// "up", "down", or "-" when the backend has no health check.
    pub health: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Open TCP connections the data plane counts (least-conn VIPs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
}

pub fn collect(agent: &Agent) -> Result<Stats, DatapathError> {
    let dp = &agent.datapath;
    let counters = Counter::ALL
        .iter()
        .map(|c| Ok((c.name().to_owned(), dp.counter(*c)?)))
        .collect::<Result<_, DatapathError>>()?;
    let mut vips = Vec::new();
    for v in &agent.config.vips {
        let Some(&id) = agent.applied.ids.vips.get(&v.name) else { continue };
        let s = dp.vip_stats(id)?;
        let policy = dp.policy_counts(id)?;
        let mut backends = Vec::new();
        for b in &v.backends {
            let Some(bid) = agent.applied.ids.backend(&v.name, b.address) else { continue };
            let bs = dp.backend_stats(bid)?;
            backends.push(BackendStats {
                address: b.address.to_string(),
                weight: b.weight,
                drained: b.drained,
                health: agent.health_of(&v.name, b.address).0,
                packets: bs.packets,
                bytes: bs.bytes,
                new_flows: bs.new_flows,
                connections: agent.connections_of(v, bid)?,
            });
        }
        vips.push(VipStats {
            name: v.name.clone(),
            service: v.service(),
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
            policy_drops: policy.dropped,
            policy_passed: policy.passed,
            backends,
        });
    }
    Ok(Stats { counters, vips })
}
