//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016): a pure function from
//! (backends, weights, table size) to a table of backend ids, the same on every host.
use std::net::IpAddr;

use lb_common::NO_BACKEND;

/// One backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Identity that fixes the backend's permutation: derived from its address, so every
    /// balancer host computes the same table whatever ids its agent handed out.
    pub key: u64,
    /// What the table holds for this backend.
    pub id: u32,
    /// Relative share of slots; 0 = none (drained).
    pub weight: u32,
}

impl Member {
    pub fn new(addr: IpAddr, id: u32, weight: u32) -> Self {
        let bytes = match addr {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        let key = u64::from_le_bytes(bytes[..8].try_into().unwrap())
            ^ splitmix(u64::from_le_bytes(bytes[8..].try_into().unwrap()));
        Member { key, id, weight }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Builds a table of `size` slots (a prime). Each backend gets a share of slots proportional to
/// its weight; with no backend of positive weight every slot is `NO_BACKEND`.
pub fn build(members: &[Member], size: u32) -> Vec<u32> {
    let size = size as u64;
    let mut table = vec![NO_BACKEND; size as usize];
    let live: Vec<&Member> = members.iter().filter(|m| m.weight > 0).collect();
    let Some(max_weight) = live.iter().map(|m| m.weight as u64).max() else { return table };
    // Each backend walks its own permutation of the slots: offset + j * skip (mod size).
    let mut perm: Vec<(u64, u64, u64, u64)> = live
        .iter()
        .map(|m| (splitmix(m.key) % size, splitmix(m.key ^ 0x5bd1_e995) % (size - 1) + 1, 0, 0))
        .collect();
    let mut filled = 0u64;
    while filled < size {
        for (m, (offset, skip, next, credit)) in live.iter().zip(perm.iter_mut()) {
            // A backend of weight w takes w/max_weight turns per round, on average.
            *credit += m.weight as u64;
            while *credit >= max_weight && filled < size {
                *credit -= max_weight;
                loop {
                    let slot = ((*offset + *next * *skip) % size) as usize;
                    *next += 1;
                    if table[slot] == NO_BACKEND {
                        table[slot] = m.id;
                        filled += 1;
                        break;
                    }
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Member::new(IpAddr::from([198, 18, 1, i as u8 + 10]), i as u32 + 1, w))
            .collect()
    }

    fn share(table: &[u32], id: u32) -> f64 {
        table.iter().filter(|&&s| s == id).count() as f64 / table.len() as f64
    }

    #[test]
    fn slots_follow_weights_and_every_slot_is_filled() {
        let m = members(&[1, 2, 3, 0]);
        let t = build(&m, 65_537);
        assert!(t.iter().all(|&s| (1..=3).contains(&s)), "a slot holds no live backend");
        for (id, want) in [(1, 1.0 / 6.0), (2, 2.0 / 6.0), (3, 3.0 / 6.0)] {
            assert!((share(&t, id) - want).abs() < 0.01, "backend {id}: {} vs {want}", share(&t, id));
        }
    }

    #[test]
    fn same_input_same_table_and_no_backends_gives_an_empty_table() {
        let m = members(&[1, 1, 1]);
        assert_eq!(build(&m, 251), build(&m, 251));
        assert!(build(&members(&[0, 0]), 251).iter().all(|&s| s == NO_BACKEND));
    }

    #[test]
    fn removing_one_of_ten_moves_few_other_slots() {
        let m = members(&[1; 10]);
        let before = build(&m, 65_537);
        let after = build(&m[1..], 65_537);
        let moved_others = before.iter().zip(&after).filter(|(b, a)| **b != 1 && b != a).count();
        // Plain Maglev moves a little more than the removed backend's own slots.
        assert!(moved_others < 65_537 / 10, "{moved_others} slots of other backends moved");
    }
}
