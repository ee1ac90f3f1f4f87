//! The flow table as operators see it: which connections are pinned to which backend, so that
//! an operator can tell when a drained backend has no flows left, and how many flows are only
//! unconfirmed (one packet seen: a handshake under way, a one-datagram UDP flow, or a flood's
//! spoofed packets).
//!
//! A flow is shown under the VIP its entry names by id, as the data plane forwards it (not the
//! VIP its destination would match now: a VIP added on the port of an any-port VIP's open
//! connections leaves them with the any-port VIP; entries of a VIP that went are void and
//! skipped). Its backend comes from the backend id it is pinned to, mapped back to (VIP,
//! address) through the agent's ids; a removed backend's flows go on (retired.rs), by its
//! address and under no row of the answer.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use lb_common::{FlowKey, FAMILY_V4, PROTO_TCP, PROTO_UDP};
use serde::{Deserialize, Serialize};

use super::{Agent, AgentError};
use crate::datapath::{DatapathError, FlowTable};

/// Sample rows when the caller names no limit.
pub const DEFAULT_SAMPLE: usize = 20;
/// The most sample rows one answer carries.
pub const MAX_SAMPLE: usize = 10_000;

/// A flow's state in the table: every flow is recorded unconfirmed by its first packet and
/// confirmed by its second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FlowState {
    /// Two packets or more seen: an established connection (or a UDP flow that goes on).
    Confirmed,
    /// One packet seen: a SYN waiting for its ACK, a one-packet UDP flow, or a flood's spoofed
    /// packet. A new flow takes such an entry before any confirmed flow's.
    Unconfirmed,
}

impl FlowState {
    /// As the API and `lbctl flows --state` spell it.
    pub fn name(self) -> &'static str {
        match self {
            FlowState::Confirmed => "confirmed",
            FlowState::Unconfirmed => "unconfirmed",
        }
    }
}

/// The flows matching a query: counts over all of them, and a sample.
#[derive(Debug, Serialize, Deserialize)]
pub struct Flows {
    /// Flows matching the filters, all of them (not only the sample).
    pub total: u64,
    /// Of `total`, the unconfirmed ones.
    pub unconfirmed: u64,
    /// Every backend in scope with the flows pinned to it, also those with none, in config
    /// order.
    pub backends: Vec<BackendFlows>,
    /// Flows in scope pinned to a backend id that no configured backend has now (one removed
    /// since): `total` is the sum of `backends[].flows` and this.
    pub other: u64,
    /// Of `other`, the unconfirmed ones.
    pub other_unconfirmed: u64,
    /// Up to `limit` of the matching flows, in the table's order.
    pub sample: Vec<Flow>,
    /// Flows in the whole table, of every VIP.
    pub table: u64,
    /// False if some entry was being written at every read of it (heavy churn): the counts are
    /// then lower bounds.
    pub complete: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendFlows {
    pub vip: String,
    pub address: IpAddr,
    pub weight: u32,
    pub drained: bool,
    pub flows: u64,
    /// Of `flows`, the unconfirmed ones.
    pub unconfirmed: u64,
}

/// One flow, as the client sent it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Flow {
    /// The VIP whose service the destination matches (none: a VIP removed since).
    pub vip: Option<String>,
    pub client: SocketAddr,
    pub destination: SocketAddr,
    /// `tcp`, `udp`, or the protocol number.
    pub protocol: String,
    /// The backend the flow is pinned to (none: a backend removed since).
    pub backend: Option<IpAddr>,
    pub state: FlowState,
}

/// A flow-table query: everything it needs from the agent, so that the walk (which can take a
/// while on a big table) runs without holding the agent.
pub struct FlowQuery {
    table: FlowTable,
    /// VIP id -> VIP name.
    vip_names: HashMap<u32, String>,
    /// Backend id -> (VIP name, address); a removed backend's: (no name, address).
    ids: HashMap<u32, (String, IpAddr)>,
    vip: Option<String>,
    backend: Option<IpAddr>,
    state: Option<FlowState>,
    limit: usize,
    /// The rows of the answer, with no flows counted yet.
    rows: Vec<BackendFlows>,
}

impl Agent {
    /// Prepares a walk of the flow table for the flows of `vip` (any VIP if `None`) pinned to
    /// `backend` (any backend if `None`) in `state` (either if `None`), with a sample of at most
    /// `limit` of them.
    pub fn flow_query(
        &self,
        vip: Option<&str>,
        backend: Option<IpAddr>,
        state: Option<FlowState>,
        limit: usize,
    ) -> Result<FlowQuery, AgentError> {
        if let Some(name) = vip {
            self.vip(name)?;
        }
        if let Some(address) = backend {
            // A removed backend's flows go on until they end: they can be looked for too.
            let removed = self.retired.values().any(|a| *a == address);
            match vip {
                Some(name) if !removed => {
                    self.backend(name, address)?;
                }
                None if removed || self.config.vips.iter().any(|v| v.backend(address).is_some()) => {}
                Some(_) => {}
                None => {
                    return Err(AgentError::NotFound(format!(
                        "{address} is not a backend of any VIP, nor a removed one whose flows go on: \
                         `lbctl vip list` shows the VIPs and their backends"
                    )))
                }
            }
        }
        let vip_names = self.applied.ids.vips.iter().map(|(name, id)| (*id, name.clone())).collect();
        let ids = self
            .applied
            .ids
            .backends
            .iter()
            .flat_map(|(vip, by_address)| by_address.iter().map(move |(a, id)| (*id, (vip.clone(), *a))))
            .chain(self.retired.iter().map(|(id, a)| (*id, (String::new(), *a))))
            .collect();
        let rows = self
            .config
            .vips
            .iter()
            .filter(|v| vip.is_none_or(|name| name == v.name))
            .flat_map(|v| {
                v.backends.iter().filter(|b| backend.is_none_or(|a| a == b.address)).map(|b| BackendFlows {
                    vip: v.name.clone(),
                    address: b.address,
                    weight: b.weight,
                    drained: b.drained,
                    flows: 0,
                    unconfirmed: 0,
                })
            })
            .collect();
        Ok(FlowQuery {
            table: self.datapath.flow_table().map_err(|e| AgentError::Apply(e.into()))?,
            vip_names,
            ids,
            vip: vip.map(str::to_owned),
            backend,
            state,
            limit: limit.min(MAX_SAMPLE),
            rows,
        })
    }
}

impl FlowQuery {
    /// Walks the flow table (blocking: it reads the whole mapped table).
    pub fn run(self) -> Result<Flows, DatapathError> {
        let FlowQuery { table, vip_names, ids, vip, backend, state, limit, mut rows } = self;
        let row_of: HashMap<(String, IpAddr), usize> =
            rows.iter().enumerate().map(|(i, r)| ((r.vip.clone(), r.address), i)).collect();
        let (mut total, mut unconfirmed, mut other, mut other_unconfirmed) = (0, 0, 0, 0);
        let mut sample = Vec::new();
        let walk = table.walk_values(|key, value, confirmed| {
            let flow_state = if confirmed { FlowState::Confirmed } else { FlowState::Unconfirmed };
            if state.is_some_and(|s| s != flow_state) {
                return;
            }
            let id = value.backend;
            let Some((client, destination)) = endpoints(key) else { return };
            let flow_vip = vip_names.get(&value.vip);
            if vip.is_some() && flow_vip != vip.as_ref() {
                return;
            }
            let pinned = ids.get(&id);
            if backend.is_some() && pinned.map(|(_, a)| *a) != backend {
                return;
            }
            let unconfirmed_flow = u64::from(!confirmed);
            total += 1;
            unconfirmed += unconfirmed_flow;
            match pinned.and_then(|p| row_of.get(p)) {
                Some(&i) => {
                    rows[i].flows += 1;
                    rows[i].unconfirmed += unconfirmed_flow;
                }
                None => {
                    other += 1;
                    other_unconfirmed += unconfirmed_flow;
                }
            }
            if sample.len() < limit {
                sample.push(Flow {
                    vip: flow_vip.cloned(),
                    client,
                    destination,
                    protocol: match key.proto {
                        PROTO_TCP => "tcp".into(),
                        PROTO_UDP => "udp".into(),
                        p => p.to_string(),
                    },
                    backend: pinned.map(|(_, a)| *a),
                    state: flow_state,
                });
            }
        })?;
        Ok(Flows {
            total,
            unconfirmed,
            backends: rows,
            other,
            other_unconfirmed,
            sample,
            table: walk.flows,
            complete: walk.complete,
        })
    }
}

/// (client, destination) of a flow key; `None` for a key of no known family.
fn endpoints(key: &FlowKey) -> Option<(SocketAddr, SocketAddr)> {
    let addr = |a: &[u8; 16]| -> IpAddr {
        if key.family == FAMILY_V4 {
            Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
        } else {
            Ipv6Addr::from(*a).into()
        }
    };
    if key.family != FAMILY_V4 && key.family != lb_common::FAMILY_V6 {
        return None;
    }
    Some((SocketAddr::new(addr(&key.src), key.sport), SocketAddr::new(addr(&key.dst), key.dport)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_are_the_api_spelling() {
        for state in [FlowState::Confirmed, FlowState::Unconfirmed] {
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{}\"", state.name()));
            let value = clap::ValueEnum::to_possible_value(&state).unwrap();
            assert_eq!(value.get_name(), state.name(), "lbctl flows --state");
        }
    }

    #[test]
    fn endpoints_of_both_families() {
        let mut key =
            FlowKey { sport: 40_000, dport: 80, proto: PROTO_TCP, family: FAMILY_V4, ..Default::default() };
        key.src[..4].copy_from_slice(&[198, 18, 0, 1]);
        key.dst[..4].copy_from_slice(&[198, 18, 100, 1]);
        let (c, d) = endpoints(&key).unwrap();
        assert_eq!(c, "198.18.0.1:40000".parse().unwrap());
        assert_eq!(d, "198.18.100.1:80".parse().unwrap());
        key.family = lb_common::FAMILY_V6;
        key.src = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        key.dst = "fd00:0:0:100::1".parse::<Ipv6Addr>().unwrap().octets();
        let (c, d) = endpoints(&key).unwrap();
        assert_eq!(c, "[fd00::1]:40000".parse().unwrap());
        assert_eq!(d, "[fd00:0:0:100::1]:80".parse().unwrap());
        key.family = 0;
        assert_eq!(endpoints(&key), None);
    }
}
