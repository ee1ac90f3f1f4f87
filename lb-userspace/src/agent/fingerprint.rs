//! Ring fingerprints: the same answer on every balancer host. Behind ECMP routers a flow can
//! reach any host (and moves when one leaves), so every host must pick the same backend for it:
//! the same hash seed, scheduler and ring, slot by slot. Backend ids are per host (handed out
//! in the order backends were added), so a fingerprint hashes each slot as the backend's
//! *address*: two hosts whose fingerprints of a VIP are equal pick the same backend for every
//! flow of it (Maglev and source hash; round robin and least connections pick by per-host
//! state and cannot agree).
use std::{collections::BTreeMap, net::IpAddr};

use lb_common::NO_BACKEND;
use serde::{Deserialize, Serialize};

use super::Agent;
use crate::config::Scheduler;

/// One VIP's fingerprint, as `lbctl status` and `lbctl vip list --json` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingFingerprint {
    pub vip: String,
    pub service: String,
    pub scheduler: Scheduler,
    /// 16 hex digits; equal on two hosts: the same picks.
    pub fingerprint: String,
}

/// FNV-1a, 64 bits: stable across builds and hosts (std's hashers are not).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The fingerprint of a ring (and round-robin sequence, if any) under `seed` and `scheduler`,
/// each slot hashed as the address `addresses` gives its id (an empty slot, or an id of no
/// backend, as a marker of its own).
pub fn fingerprint(
    seed: u32,
    scheduler: Scheduler,
    ring: &[u32],
    sequence: &[u32],
    addresses: &BTreeMap<u32, IpAddr>,
) -> String {
    let mut h = Fnv::new();
    h.write(&seed.to_le_bytes());
    h.write(scheduler.name().as_bytes());
    for part in [ring, sequence] {
        h.write(&(part.len() as u64).to_le_bytes());
        for id in part {
            match addresses.get(id).filter(|_| *id != NO_BACKEND) {
                Some(IpAddr::V4(a)) => h.write(&a.to_ipv6_mapped().octets()),
                Some(IpAddr::V6(a)) => h.write(&a.octets()),
                None => h.write(&[0xff; 16]),
            }
        }
    }
    format!("{:016x}", h.0)
}

impl Agent {
    /// Every VIP's fingerprint, from the rings the maps hold.
    pub fn ring_fingerprints(&self) -> Vec<RingFingerprint> {
        let seed = self.config.source.hash_seed;
        self.config
            .vips
            .iter()
            .map(|v| {
                let addresses: BTreeMap<u32, IpAddr> = self
                    .applied
                    .ids
                    .backends
                    .get(&v.name)
                    .map(|by_address| by_address.iter().map(|(a, id)| (*id, *a)).collect())
                    .unwrap_or_default();
                let ring = self.applied.rings.get(&v.name).map(Vec::as_slice).unwrap_or_default();
                let sequence = self.applied.rr_seqs.get(&v.name).map(Vec::as_slice).unwrap_or_default();
                RingFingerprint {
                    vip: v.name.clone(),
                    service: v.service(),
                    scheduler: v.scheduler,
                    fingerprint: fingerprint(seed, v.scheduler, ring, sequence, &addresses),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        agent::plan::{ring, Ids},
        config::parse,
    };

    /// The ring of a config's only VIP as an agent that added its backends in the config's
    /// order would hold it, with the ids it would give them.
    fn held(backends: &[&str], down: &[&str]) -> (Vec<u32>, BTreeMap<u32, IpAddr>) {
        let mut text = "interfaces = [\"eth0\"]\n[source]\nipv4 = \"198.18.0.2\"\n\
                        [[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\nring_size = 1009\n"
            .to_owned();
        for b in backends {
            text += &format!("[[vip.backend]]\naddress = \"{b}\"\n");
        }
        let c = parse(&text, "t.toml").unwrap();
        let ids = Ids::default()
            .allocate(&c.vips, &crate::datapath::Sizes::default(), &Default::default())
            .unwrap();
        let down = down.iter().map(|a| ("web".to_owned(), a.parse().unwrap())).collect();
        let addresses = ids.backends["web"].iter().map(|(a, id)| (*id, *a)).collect();
        (ring(&c.vips[0], &ids, &down), addresses)
    }

    #[test]
    fn hosts_that_added_backends_in_another_order_have_the_same_fingerprint() {
        let (a, ids_a) = held(&["198.18.0.11", "198.18.0.12", "198.18.0.13"], &[]);
        let (b, ids_b) = held(&["198.18.0.13", "198.18.0.11", "198.18.0.12"], &[]);
        assert_ne!(a, b, "the rings hold ids, which differ");
        let print = |ring: &[u32], ids| fingerprint(7, Scheduler::Maglev, ring, &[], ids);
        assert_eq!(print(&a, &ids_a), print(&b, &ids_b));
        assert_eq!(print(&a, &ids_a).len(), 16);
    }

    #[test]
    fn anything_that_changes_a_pick_changes_the_fingerprint() {
        let (ring_all, ids) = held(&["198.18.0.11", "198.18.0.12", "198.18.0.13"], &[]);
        let base = fingerprint(7, Scheduler::Maglev, &ring_all, &[], &ids);
        let (ring_down, ids_down) = held(&["198.18.0.11", "198.18.0.12", "198.18.0.13"], &["198.18.0.12"]);
        let (ring_other, ids_other) = held(&["198.18.0.11", "198.18.0.12", "198.18.0.14"], &[]);
        for (what, other) in [
            ("another seed", fingerprint(8, Scheduler::Maglev, &ring_all, &[], &ids)),
            ("another scheduler", fingerprint(7, Scheduler::SourceHash, &ring_all, &[], &ids)),
            ("a backend down", fingerprint(7, Scheduler::Maglev, &ring_down, &[], &ids_down)),
            ("another backend", fingerprint(7, Scheduler::Maglev, &ring_other, &[], &ids_other)),
        ] {
            assert_ne!(base, other, "{what}");
        }
    }
}
