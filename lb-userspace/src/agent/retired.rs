//! Backends taken out of the config whose flows go on. A removed backend's BACKENDS entry stays
//! for the flows pinned to it (`lbctl backend remove`: they continue until they end), and those
//! flows need its next hop as much as they did: on-link, lbd's managed neighbour entry for the
//! backend itself. So a retired backend's next hops stay managed until its id goes to another
//! backend, or a census of the flow table finds none of its flows used within [`RETIRED_IDLE`]
//! (its connections are over, or idle that long). Saved with the state: a restarted lbd keeps
//! them too.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use lb_common::{flow_clock, FlowValue};

use super::plan::Ids;

/// How long a retired backend's flows may go without a packet before its next hops are let go:
/// IPVS's default timeout of an established TCP connection.
pub const RETIRED_IDLE: Duration = Duration::from_secs(15 * 60);

/// The retired backends: id -> address.
pub type Retired = BTreeMap<u32, IpAddr>;

/// `retired` after a change from `before` to `after`: every id no configured backend holds any
/// more joins it; an id a configured backend holds (again) leaves it.
pub fn follow(retired: &Retired, before: &Ids, after: &Ids) -> Retired {
    let held: BTreeSet<u32> =
        after.backends.values().flat_map(|by_address| by_address.values()).copied().collect();
    let dropped = before.backends.values().flat_map(|by_address| by_address.iter().map(|(a, id)| (*id, *a)));
    retired.iter().map(|(id, a)| (*id, *a)).chain(dropped).filter(|(id, _)| !held.contains(id)).collect()
}

/// The addresses whose next hops stay managed for retired backends.
pub fn addresses(retired: &Retired) -> BTreeSet<IpAddr> {
    retired.values().copied().collect()
}

/// What a census walk found of the retired backends' flows.
#[derive(Debug, Default)]
pub struct RetiredFlows {
    /// The ids retired when the walk started: only these can be let go after it.
    looked_at: BTreeSet<u32>,
    /// Id -> the latest clock tick of its flows ([`lb_common::flow_clock`]).
    last_used: BTreeMap<u32, u32>,
}

impl RetiredFlows {
    pub fn of(retired: &Retired) -> RetiredFlows {
        RetiredFlows { looked_at: retired.keys().copied().collect(), last_used: BTreeMap::new() }
    }

    /// Notes one flow of the walk.
    pub fn see(&mut self, flow: &FlowValue) {
        if self.looked_at.contains(&flow.backend) {
            let last = self.last_used.entry(flow.backend).or_insert(flow.last_tick);
            *last = (*last).max(flow.last_tick);
        }
    }
}

/// After a complete walk that found `flows`, at clock tick `now`: takes out of `retired` the
/// backends whose flows were all idle for [`RETIRED_IDLE`] or more (or that had none), and
/// returns them.
pub fn release_idle(retired: &mut Retired, flows: &RetiredFlows, now: u32) -> Vec<(u32, IpAddr)> {
    let idle_ticks = flow_clock(RETIRED_IDLE.as_nanos() as u64);
    let idle = |id: &u32| flows.last_used.get(id).is_none_or(|&t| now.saturating_sub(t) >= idle_ticks);
    let released: Vec<(u32, IpAddr)> = retired
        .iter()
        .filter(|(id, _)| flows.looked_at.contains(id) && idle(id))
        .map(|(i, a)| (*i, *a))
        .collect();
    for (id, _) in &released {
        retired.remove(id);
    }
    released
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(backends: &[(&str, &str, u32)]) -> Ids {
        let mut ids = Ids::default();
        for (vip, address, id) in backends {
            ids.backends.entry(vip.to_string()).or_default().insert(address.parse().unwrap(), *id);
        }
        ids
    }

    fn flow(backend: u32, last_used: u32) -> FlowValue {
        FlowValue { backend, last_tick: last_used, ..Default::default() }
    }

    #[test]
    fn removed_backends_retire_until_their_id_is_held_again() {
        let before = ids(&[("web", "198.18.0.17", 1), ("web", "198.18.0.18", 2), ("api", "198.18.0.17", 3)]);
        // 198.18.0.17 leaves web (id 1), api's backend 3 goes with its VIP.
        let after = ids(&[("web", "198.18.0.18", 2)]);
        let retired = follow(&Retired::new(), &before, &after);
        assert_eq!(
            retired,
            [(1, "198.18.0.17".parse().unwrap()), (3, "198.18.0.17".parse().unwrap())].into()
        );
        assert_eq!(addresses(&retired), ["198.18.0.17".parse().unwrap()].into());
        // Id 1 goes to a new backend: its earlier owner's flows are void, nothing to keep for it.
        let reused = ids(&[("web", "198.18.0.18", 2), ("web", "198.18.0.19", 1)]);
        let retired = follow(&retired, &after, &reused);
        assert_eq!(retired, [(3, "198.18.0.17".parse().unwrap())].into());
        // Put back: configured again, no longer retired.
        let back = ids(&[("web", "198.18.0.18", 2), ("web", "198.18.0.19", 1), ("api", "198.18.0.17", 3)]);
        assert!(follow(&retired, &reused, &back).is_empty());
    }

    #[test]
    fn a_census_releases_backends_whose_flows_are_idle_or_gone() {
        let idle_ticks = flow_clock(RETIRED_IDLE.as_nanos() as u64);
        let now = 100_000;
        let a = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mut retired: Retired =
            [(1, a("198.18.0.17")), (2, a("198.18.0.18")), (3, a("198.18.0.19")), (4, a("198.18.0.20"))]
                .into();
        let mut flows = RetiredFlows::of(&retired);
        // Retired after the walk started: not looked at, kept whatever it found.
        retired.insert(5, a("198.18.0.21"));
        flows.see(&flow(1, now - 3)); // in use
        flows.see(&flow(1, now - idle_ticks - 10)); // an older flow of the same backend
        flows.see(&flow(2, now - idle_ticks)); // idle for RETIRED_IDLE
        flows.see(&flow(7, now)); // a configured backend's flow
        flows.see(&flow(4, now + 1)); // a tick past the census's clock (a coarser clock)
        let released = release_idle(&mut retired, &flows, now);
        assert_eq!(released, [(2, a("198.18.0.18")), (3, a("198.18.0.19"))], "idle, and without flows");
        assert_eq!(retired.keys().copied().collect::<Vec<_>>(), [1, 4, 5]);
    }
}
