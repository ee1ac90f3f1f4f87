//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016): a pure function from
//! (backends, weights, table size) to a table of backend ids, the same on every host.
//!
//! Two builders:
//!
//! * [`build`] is plain weighted Maglev over the members of positive weight. Removing a member
//!   from the configuration moves its own slots plus a few more: plain Maglev's excess, which
//!   grows with N and shrinks with slots per backend (measured, equal weights: 0.02/N of the
//!   table at N = 10 and 0.7/N at N = 128 with 65537 slots; 5.6/N at N = 1000 with 100003).
//! * [`build_available`] adds availability: a member that leaves the ring only for a while
//!   (drained or unhealthy) keeps its place in the table over the whole configuration, and only
//!   its own slots go elsewhere. Bringing members down or up moves exactly their slots, and the
//!   table is still a pure function of (configured members, weights, available subset), so every
//!   balancer host that agrees on those computes the same table whatever it computed before.
//!
//! Table sizes are primes of at least [`SLOTS_PER_BACKEND`] slots per backend:
//! [`check_table_size`] says whether a size is acceptable and what to use instead.
use std::{cmp::Reverse, collections::BinaryHeap, net::IpAddr};

use lb_common::NO_BACKEND;

/// Slots a table needs per backend, at least: with fewer, shares drift from the weights and
/// removals move more than their own slots.
pub const SLOTS_PER_BACKEND: u32 = 100;
/// Smallest table size [`check_table_size`] accepts (the smallest prime ≥ 1000), so that even a
/// pool of one or two backends resolves weights to about 0.1%.
pub const MIN_TABLE_SIZE: u32 = 1009;
/// Largest table size [`check_table_size`] accepts: the largest prime below 2^20 (4 MiB a
/// table). The default is [`lb_common::limits::RING_SIZE`].
pub const MAX_TABLE_SIZE: u32 = 1_048_573;

/// One backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Identity that fixes the backend's permutation and its place in the turn order: derived
    /// from its address, so every balancer host computes the same table whatever ids its agent
    /// handed out and in whatever order it lists the members. Keys should be distinct.
    pub key: u64,
    /// What the table holds for this backend.
    pub id: u32,
    /// Relative share of slots. 0 = no slots at all, the same as leaving the backend out of the
    /// configuration (other backends' slots move as for a removal). To drain a backend for a
    /// while, keep its weight and report it unavailable to [`build_available`]: then only its
    /// own slots move.
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

/// A member's permutation of a table of `size` slots (a prime): `offset + j * skip (mod size)`
/// for j = 0, 1, ... visits every slot once.
fn permutation(key: u64, size: u32) -> (u32, u32) {
    let size = size as u64;
    let offset = splitmix(key) % size;
    let skip = splitmix(key ^ 0x5bd1_e995) % (size - 1).max(1) + 1;
    (offset as u32, skip as u32)
}

/// Plain weighted Maglev: a table of `size` slots holding [`Member::id`]s. Each member of
/// positive weight gets a share of slots proportional to its weight (within a slot or two);
/// members of weight 0 get none; with no member of positive weight every slot is
/// [`NO_BACKEND`]. The table depends only on the set of members (their keys, weights and ids),
/// not on their order in `members`.
///
/// The members take turns round by round, as in the paper: a member of weight `w` takes
/// `w / max_weight` turns per round (its k-th turn is in round `ceil(k * max_weight / w)`), and
/// within a round heavier members go first, then members of equal weight in the order of their
/// keys. So equal weights give classic Maglev, and only the ratios of weights matter. In each
/// turn a member takes the next free slot of its permutation; every turn fills one slot, which
/// is what makes the shares follow the weights.
///
/// # Panics
///
/// If `size` is not prime (its permutations would not cover the table). [`check_table_size`]
/// validates a size beforehand.
pub fn build(members: &[Member], size: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev table size {size} is not prime");
    let live = turn_order(members);
    if live.is_empty() {
        return vec![NO_BACKEND; size as usize];
    }
    let mut table = fill(members, &live, size, Schedule::Auto);
    for slot in &mut table {
        *slot = members[*slot as usize].id;
    }
    table
}

/// Weighted Maglev with availability: a member that is configured (weight > 0) but not
/// `available` (drained, failed its health checks) gives up only its own slots, and every other
/// slot keeps its backend. `available` is asked once per member, by [`Member::id`].
///
/// The result is `full[i]` where `full = build(members)` holds an available member, and
/// `avail[i]` elsewhere, where `avail = build(available members)`. It is a pure function of
/// (members, weights, available subset): it does not depend on the order in which members went
/// down. Relative to `full`, bringing any set of members down moves exactly their slots; their
/// slots go to the available members in proportion to their weights (as in `avail`).
///
/// If no configured member is available the result is `full` (fail open: traffic keeps going
/// to the configured backends rather than being dropped). Callers that prefer to fail closed
/// check for that case themselves. With no member of positive weight every slot is
/// [`NO_BACKEND`].
///
/// # Panics
///
/// If `size` is not prime, as [`build`].
pub fn build_available(members: &[Member], available: &dyn Fn(u32) -> bool, size: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev table size {size} is not prime");
    let live = turn_order(members);
    if live.is_empty() {
        return vec![NO_BACKEND; size as usize];
    }
    let mut up = vec![false; members.len()];
    for &i in &live {
        up[i] = available(members[i].id);
    }
    let live_up: Vec<usize> = live.iter().copied().filter(|&i| up[i]).collect();
    let mut table = fill(members, &live, size, Schedule::Auto);
    if live_up.len() == live.len() || live_up.is_empty() {
        for slot in &mut table {
            *slot = members[*slot as usize].id;
        }
        return table;
    }
    let avail = fill(members, &live_up, size, Schedule::Auto);
    for (slot, &other) in table.iter_mut().zip(&avail) {
        let owner = if up[*slot as usize] { *slot } else { other };
        *slot = members[owner as usize].id;
    }
    table
}

/// The slots whose backend differs between two tables of the same size.
///
/// # Panics
///
/// If the tables differ in size.
pub fn slots_moved(old: &[u32], new: &[u32]) -> usize {
    assert_eq!(old.len(), new.len(), "comparing Maglev tables of different sizes");
    old.iter().zip(new).filter(|(a, b)| a != b).count()
}

/// The share of new flows that pick another backend in `new` than in `old` (a flow of hash `h`
/// takes slot `h mod len` of a table).
///
/// Tables of one size: the share of slots that differ. Tables of two sizes (distinct primes, as
/// every table size is): for a uniform hash, `(h mod |old|, h mod |new|)` is uniform over every
/// pair of slots (Chinese remainder theorem, exact over any multiple of `|old| × |new|` hashes),
/// so a flow keeps its backend with the chance that two independent picks agree:
/// `sum over backends of old share × new share`. A new size moves most flows whatever the
/// backends: with three equal backends, two thirds.
pub fn share_moved(old: &[u32], new: &[u32]) -> f64 {
    if old.len() == new.len() {
        return if new.is_empty() { 0.0 } else { slots_moved(old, new) as f64 / new.len() as f64 };
    }
    if old.is_empty() || new.is_empty() {
        return 1.0;
    }
    let mut old_slots: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for &id in old {
        *old_slots.entry(id).or_default() += 1;
    }
    let mut kept = 0u128;
    for &id in new {
        // A slot with no backend is no flow kept.
        if id != NO_BACKEND {
            kept += old_slots.get(&id).copied().unwrap_or(0) as u128;
        }
    }
    1.0 - kept as f64 / (old.len() as f64 * new.len() as f64)
}

/// Indices of the members of positive weight, in turn order (by key; weight and id break ties
/// between members that share an address, which they should not).
fn turn_order(members: &[Member]) -> Vec<usize> {
    let mut live: Vec<usize> = (0..members.len()).filter(|&i| members[i].weight > 0).collect();
    live.sort_unstable_by_key(|&i| (members[i].key, members[i].weight, members[i].id));
    live
}

/// The Maglev table over `members[live]` (non-empty, in turn order, weights > 0) as indices into
/// `members`. `size` is prime.
fn fill(members: &[Member], live: &[usize], size: u32, schedule: Schedule) -> Vec<u32> {
    debug_assert!(!live.is_empty() && is_prime(size));
    // Per member (by position in `live`): the next slot of its permutation and the step.
    let (mut next, skip): (Vec<u32>, Vec<u32>) =
        live.iter().map(|&i| permutation(members[i].key, size)).unzip();
    let mut table = vec![0u32; size as usize];
    // Occupied slots, a bit each: 16 KiB for 131071 slots, so probes stay in L1.
    let mut taken = vec![0u64; (size as usize).div_ceil(64)];
    // A turn: member j takes the next free slot of its permutation (there is one while the
    // table is not full, since `size` is prime and the permutation covers it).
    let mut turn = |j: usize| {
        let (step, back) = (skip[j], size - skip[j]);
        let mut slot = next[j];
        loop {
            let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
            // slot + step (mod size), without a division.
            let following = if slot >= back { slot - back } else { slot + step };
            if taken[word] & bit == 0 {
                taken[word] |= bit;
                table[slot as usize] = live[j] as u32;
                next[j] = following;
                return;
            }
            slot = following;
        }
    };

    // Members of equal weight take their turns in the same rounds, so schedule weight classes,
    // heaviest first within a round; the members of a class take their turns in key order.
    let mut by_weight: Vec<u32> = (0..live.len() as u32).collect();
    by_weight.sort_by_key(|&j| Reverse(members[live[j as usize]].weight)); // stable: key order within
    let mut classes: Vec<(u64, std::ops::Range<usize>)> = Vec::new(); // (weight, range of by_weight)
    for (k, &j) in by_weight.iter().enumerate() {
        let weight = members[live[j as usize]].weight as u64;
        match classes.last_mut() {
            Some((w, range)) if *w == weight => range.end = k + 1,
            _ => classes.push((weight, k..k + 1)),
        }
    }
    // A class of weight w earns w credits a round and a turn costs max_weight credits, so its
    // k-th turn is in round ceil(k * max_weight / w); within a round, heavier classes go first.
    // The heaviest class takes a turn every round; equal weights give classic Maglev.
    let max_weight = classes[0].0;
    let mut remaining = size as usize;
    // Each member of class c takes a turn; true once the table is full.
    let mut class_turn = |c: usize| {
        for &j in &by_weight[classes[c].1.clone()] {
            turn(j as usize);
            remaining -= 1;
            if remaining == 0 {
                return true;
            }
        }
        false
    };
    let total_weight: u64 = classes.iter().map(|(w, range)| w * range.len() as u64).sum();
    let rounds_cost = (max_weight as u128 * classes.len() as u128).div_ceil(total_weight as u128);
    if schedule == Schedule::Rounds || (schedule == Schedule::Auto && rounds_cost <= 8) {
        // Round by round: about size * max_weight / total_weight rounds of one step per class.
        let mut credit = vec![0u64; classes.len()];
        loop {
            for (c, (weight, _)) in classes.iter().enumerate() {
                credit[c] += weight;
                if credit[c] >= max_weight {
                    credit[c] -= max_weight;
                    if class_turn(c) {
                        return table;
                    }
                }
            }
        }
    }
    // The same order from a heap of classes by (round of their next turn, class), for weights so
    // uneven that most classes would sit out most rounds. `credit` is what a class has left after
    // its last turn (less than its weight): its next turn is ceil((max_weight - credit) / w)
    // rounds on.
    let mut credit = vec![0u64; classes.len()];
    let rounds_to_next = |credit: &mut u64, weight: u64| {
        let rounds = (max_weight - *credit).div_ceil(weight);
        *credit = *credit + rounds * weight - max_weight;
        rounds
    };
    let mut turns: BinaryHeap<Reverse<(u64, usize)>> =
        (0..classes.len()).map(|c| Reverse((rounds_to_next(&mut credit[c], classes[c].0), c))).collect();
    loop {
        let mut top = turns.peek_mut().expect("at least one class");
        let Reverse((round, c)) = *top;
        if class_turn(c) {
            return table;
        }
        *top = Reverse((round + rounds_to_next(&mut credit[c], classes[c].0), c));
    }
}

/// How [`fill`] orders the turns (both ways give the same order; tests compare them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schedule {
    /// Whichever is quicker for the weights.
    Auto,
    #[cfg_attr(not(test), allow(dead_code))]
    Rounds,
    #[cfg_attr(not(test), allow(dead_code))]
    Heap,
}

/// Whether `n` is prime.
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = n as u64;
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// The smallest prime ≥ `n`, if it fits in a u32.
fn prime_at_least(n: u64) -> Option<u32> {
    (n..=u32::MAX as u64).map(|c| c as u32).find(|&c| is_prime(c))
}

/// The smallest table size for `backends` backends: the smallest prime ≥ 100 × `backends`
/// and ≥ [`MIN_TABLE_SIZE`]. Beyond [`MAX_TABLE_SIZE`] / 100 backends it is more than
/// [`MAX_TABLE_SIZE`] (and saturates at the largest prime below 2^32).
pub fn min_table_size(backends: usize) -> u32 {
    let needed = (backends as u64).saturating_mul(SLOTS_PER_BACKEND as u64).max(MIN_TABLE_SIZE as u64);
    prime_at_least(needed).unwrap_or(4_294_967_291)
}

/// Why a table size is refused, and what to use instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableSizeError {
    #[error("ring size {size} is not prime; use {suggested}")]
    NotPrime { size: u32, suggested: u32 },
    #[error(
        "ring size {size} is less than {per_backend} × {backends} backends; use at least {suggested}",
        per_backend = SLOTS_PER_BACKEND
    )]
    TooSmallForBackends { size: u32, backends: usize, suggested: u32 },
    #[error("ring size {size} is less than the smallest supported, {min}; use at least {min}")]
    TooSmall { size: u32, min: u32 },
    #[error("ring size {size} is more than the largest supported, {max}; use at most {max}")]
    TooLarge { size: u32, max: u32 },
    #[error(
        "{backends} backends need a ring of more than {max} slots, the largest supported \
         ({per_backend} slots a backend); use at most {max_backends} backends",
        per_backend = SLOTS_PER_BACKEND
    )]
    TooManyBackends { backends: usize, max: u32, max_backends: usize },
}

/// Checks that a table of `size` slots suits `backends` backends: prime, at least 100 slots a
/// backend and at least [`MIN_TABLE_SIZE`], at most [`MAX_TABLE_SIZE`].
pub fn check_table_size(size: u32, backends: usize) -> Result<(), TableSizeError> {
    let needed = (backends as u64).saturating_mul(SLOTS_PER_BACKEND as u64);
    if needed > MAX_TABLE_SIZE as u64 {
        // MAX_TABLE_SIZE is prime, so 100 slots a backend is all it takes.
        let max_backends = (MAX_TABLE_SIZE / SLOTS_PER_BACKEND) as usize;
        return Err(TableSizeError::TooManyBackends { backends, max: MAX_TABLE_SIZE, max_backends });
    }
    if size > MAX_TABLE_SIZE {
        return Err(TableSizeError::TooLarge { size, max: MAX_TABLE_SIZE });
    }
    if (size as u64) < needed {
        return Err(TableSizeError::TooSmallForBackends {
            size,
            backends,
            suggested: min_table_size(backends),
        });
    }
    if size < MIN_TABLE_SIZE {
        return Err(TableSizeError::TooSmall { size, min: MIN_TABLE_SIZE });
    }
    if !is_prime(size) {
        // MAX_TABLE_SIZE is prime, so there is one in range.
        let suggested = prime_at_least(size as u64).expect("a prime up to MAX_TABLE_SIZE");
        return Err(TableSizeError::NotPrime { size, suggested });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Members with ids 1..=n and the given weights, at distinct addresses.
    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Member::new(IpAddr::from([198, 18, (i >> 8) as u8, i as u8]), i as u32 + 1, w))
            .collect()
    }

    /// Some uneven weights 1..=5.
    fn mixed_weights(n: usize) -> Vec<u32> {
        (0..n).map(|i| 1 + (i * 7 % 5) as u32).collect()
    }

    fn count(table: &[u32], id: u32) -> usize {
        table.iter().filter(|&&s| s == id).count()
    }

    /// Slots per id: `counts(table)[id]`.
    fn counts(table: &[u32]) -> Vec<usize> {
        let mut counts = vec![0; *table.iter().max().unwrap_or(&0) as usize + 1];
        table.iter().for_each(|&id| counts[id as usize] += 1);
        counts
    }

    /// Table size for `n` backends in the share tests.
    fn size_for(n: usize) -> u32 {
        min_table_size(n).max(65_537)
    }

    /// Asserts that every member of `members` for which `counted` holds gets its weight's share
    /// of the table (among those members) within ±1% of the table, and within `slack` slots of
    /// the exact share; returns the largest deviation in slots.
    fn assert_shares(
        table: &[u32],
        members: &[Member],
        counted: impl Fn(&Member) -> bool,
        slack: f64,
    ) -> f64 {
        let total: u64 = members.iter().filter(|m| counted(m)).map(|m| m.weight as u64).sum();
        let size = table.len() as f64;
        let counts = counts(table);
        let mut worst = 0.0f64;
        for m in members.iter().filter(|m| counted(m)) {
            let want = m.weight as f64 / total as f64;
            let got = counts.get(m.id as usize).copied().unwrap_or(0) as f64;
            assert!(
                (got / size - want).abs() <= 0.01,
                "{} members: backend {} (weight {}) has {:.4} of the slots, not {want:.4}",
                members.len(),
                m.id,
                m.weight,
                got / size
            );
            worst = worst.max((got - want * size).abs());
        }
        assert!(worst <= slack, "{} members: a share is {worst} slots off (allowed {slack})", members.len());
        worst
    }

    /// The paper's population algorithm, written independently: members sorted by (weight
    /// descending, key); round by round, each member earns its weight and takes a turn for
    /// every max_weight credits, walking `offset + j * skip (mod size)`.
    fn reference(members: &[Member], size: u32) -> Vec<u32> {
        let mut live: Vec<&Member> = members.iter().filter(|m| m.weight > 0).collect();
        live.sort_by_key(|m| (Reverse(m.weight), m.key));
        let mut table = vec![NO_BACKEND; size as usize];
        let Some(max_weight) = live.iter().map(|m| m.weight as u64).max() else { return table };
        let mut state: Vec<(u64, u64, u64, u64)> = live
            .iter()
            .map(|m| {
                let (offset, skip) = permutation(m.key, size);
                (offset as u64, skip as u64, 0, 0)
            })
            .collect();
        let mut filled = 0;
        while filled < size {
            for (m, (offset, skip, j, credit)) in live.iter().zip(&mut state) {
                *credit += m.weight as u64;
                if *credit >= max_weight && filled < size {
                    *credit -= max_weight;
                    loop {
                        let slot = ((*offset + *j * *skip) % size as u64) as usize;
                        *j += 1;
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

    fn fill_ids(members: &[Member], size: u32, schedule: Schedule) -> Vec<u32> {
        let live = turn_order(members);
        fill(members, &live, size, schedule).into_iter().map(|i| members[i as usize].id).collect()
    }

    #[test]
    fn shares_follow_weights_for_1_to_1000_backends() {
        let ns = (1..=40).chain([50, 64, 100, 128, 200, 250, 500, 750, 1000]).chain((41..1000).step_by(53));
        let mut worst = 0.0f64;
        for n in ns {
            let size = size_for(n);
            // n backends of mixed weights, plus one of weight 0.
            let mut weights = mixed_weights(n);
            weights.push(0);
            let m = members(&weights);
            let table = build(&m, size);
            let drained = m[n].id;
            let counts = counts(&table);
            assert!(counts.len() <= drained as usize, "{n} backends: the backend of weight 0 has slots");
            assert_eq!(
                m[..n].iter().map(|b| counts[b.id as usize]).sum::<usize>(),
                size as usize,
                "{n} backends: a slot holds no configured backend"
            );
            // Each backend takes one slot per turn, so its count is within a slot or two of its
            // exact share, far tighter than ±1%.
            worst = worst.max(assert_shares(&table, &m, |b| b.weight > 0, 2.0));
        }
        println!("shares: at most {worst:.2} slots from exact");
    }

    #[test]
    fn equal_weights_split_the_table_evenly() {
        for n in [1, 2, 3, 10, 33, 128, 1000] {
            let size = size_for(n);
            let m = members(&vec![3; n]);
            let table = build(&m, size);
            let counts: Vec<usize> = counts(&table)[1..].to_vec();
            assert_eq!(counts.len(), n);
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "{n} equal backends: between {lo} and {hi} slots each");
        }
    }

    #[test]
    fn weights_1_2_3_within_one_percent_at_65537() {
        let m = members(&[1, 2, 3, 0]);
        let t = build(&m, 65_537);
        assert!(t.iter().all(|&s| (1..=3).contains(&s)), "a slot holds no live backend");
        for (id, want) in [(1, 1.0 / 6.0), (2, 2.0 / 6.0), (3, 3.0 / 6.0)] {
            let share = count(&t, id) as f64 / t.len() as f64;
            assert!((share - want).abs() < 0.01, "backend {id}: {share} vs {want}");
        }
        assert_shares(&t, &m, |b| b.weight > 0, 2.0);
    }

    #[test]
    fn equal_weights_are_classic_maglev_and_only_weight_ratios_matter() {
        for n in [1, 2, 3, 7, 20, 100] {
            let m = members(&vec![1; n]);
            let table = build(&m, 65_537);
            assert_eq!(table, reference(&m, 65_537), "{n} backends of weight 1");
            let heavy = members(&vec![250; n]);
            assert_eq!(build(&heavy, 65_537), table, "{n} backends of weight 250");
        }
        assert_eq!(build(&members(&[2, 4, 6]), 1031), build(&members(&[1, 2, 3]), 1031));
    }

    #[test]
    fn weighted_turns_match_the_reference_whichever_schedule() {
        let distinct: Vec<u32> = (1..=60).collect();
        let skewed: Vec<u32> = (0..50).map(|i| if i == 7 { 1_000_000 } else { i % 9 + 1 }).collect();
        let sets: [&[u32]; 6] = [
            &[1, 2, 3],
            &[5, 1, 1, 1000],
            &[u32::MAX, 1, u32::MAX - 1],
            &mixed_weights(30),
            &distinct,
            &skewed,
        ];
        for weights in sets {
            let m = members(weights);
            for size in [1031, 65_537] {
                let want = reference(&m, size);
                assert_eq!(build(&m, size), want, "weights {weights:?}, {size} slots");
                assert_eq!(fill_ids(&m, size, Schedule::Rounds), want, "rounds, weights {weights:?}");
                assert_eq!(fill_ids(&m, size, Schedule::Heap), want, "heap, weights {weights:?}");
            }
        }
    }

    #[test]
    fn identical_input_gives_an_identical_table_in_any_order() {
        let m = members(&mixed_weights(57));
        let table = build(&m, 65_537);
        assert_eq!(build(&m, 65_537), table);
        let mut shuffled = m.clone();
        shuffled.reverse();
        shuffled.rotate_left(13);
        assert_eq!(build(&shuffled, 65_537), table, "member order changed the table");
        let down = |id: u32| id % 5 != 2;
        let available = build_available(&m, &down, 65_537);
        assert_eq!(build_available(&shuffled, &down, 65_537), available);
        let up: HashSet<u32> = m.iter().map(|b| b.id).filter(|&id| down(id)).collect();
        assert_eq!(build_available(&m, &|id| up.contains(&id), 65_537), available);
        // Another host that numbered the same backends differently has the same layout.
        let renumbered: Vec<Member> = m.iter().map(|b| Member { id: b.id + 1000, ..*b }).collect();
        let other = build(&renumbered, 65_537);
        assert!(table.iter().zip(&other).all(|(a, b)| a + 1000 == *b), "ids changed the layout");
        // The key derives from the address alone.
        let addr = IpAddr::from([192, 0, 2, 7]);
        assert_eq!(Member::new(addr, 1, 1).key, Member::new(addr, 99, 3).key);
        assert_ne!(Member::new(addr, 1, 1).key, Member::new(IpAddr::from([192, 0, 2, 8]), 1, 1).key);
    }

    /// `build_available` with the members whose ids are in `down` unavailable.
    fn with_down(m: &[Member], down: &[u32], size: u32) -> Vec<u32> {
        build_available(m, &|id| !down.contains(&id), size)
    }

    #[test]
    fn taking_one_or_two_backends_down_moves_exactly_their_slots() {
        for (n, weighted) in
            [(2, false), (3, true), (5, false), (10, true), (37, false), (128, true), (400, true)]
        {
            let weights = if weighted { mixed_weights(n) } else { vec![1; n] };
            let m = members(&weights);
            let size = size_for(n);
            let full = build(&m, size);
            assert_eq!(build_available(&m, &|_| true, size), full);
            let last = n as u32;
            let mut choices: Vec<Vec<u32>> = vec![vec![1], vec![last], vec![last / 2 + 1]];
            if n >= 3 {
                choices.extend([vec![1, 2], vec![1, last], vec![last / 2, last / 2 + 1]]);
            }
            for down in choices {
                let table = with_down(&m, &down, size);
                let theirs = full.iter().filter(|s| down.contains(s)).count();
                assert!(theirs > 0);
                assert_eq!(slots_moved(&full, &table), theirs, "{n} backends, {down:?} down");
                for (i, (&before, &after)) in full.iter().zip(&table).enumerate() {
                    if down.contains(&before) {
                        assert!(!down.contains(&after), "{n} backends: slot {i} kept {down:?}");
                    } else {
                        assert_eq!(before, after, "{n} backends, {down:?} down: slot {i} moved");
                    }
                }
                // The slots they gave up are spread by weight over the others.
                assert_shares(&table, &m, |b| !down.contains(&b.id), f64::INFINITY);
                // Back up: exactly their slots move back.
                assert_eq!(slots_moved(&table, &build_available(&m, &|_| true, size)), theirs);
            }
        }
    }

    #[test]
    fn a_second_backend_going_down_moves_no_slot_of_the_others() {
        for n in [5, 20, 64, 128] {
            let m = members(&vec![1; n]);
            let size = size_for(n);
            let full = build(&m, size);
            let (a, b) = (3, n as u32 - 1);
            let one = with_down(&m, &[a], size);
            let two = with_down(&m, &[a, b], size);
            let mut extra = 0;
            for i in 0..size as usize {
                if full[i] != a && full[i] != b {
                    assert_eq!(one[i], two[i], "{n} backends: slot {i} of backend {} moved", full[i]);
                } else if full[i] == a && one[i] != two[i] && one[i] != b {
                    extra += 1; // one of a's slots that moved, though not from b
                }
            }
            // Only among a's own slots, and fewer than plain Maglev moves when it rebuilds over
            // the available backends (a's slots are about 1/n of its excess).
            let without = |down: &[u32]| -> Vec<Member> {
                m.iter().filter(|x| !down.contains(&x.id)).copied().collect()
            };
            let plain = excess(&build(&without(&[a]), size), &build(&without(&[a, b]), size), b);
            println!("{n} backends, {a} down, then {b}: {extra} other slots moved, plain Maglev {plain}");
            assert!(extra <= plain, "{n} backends: {extra} of {a}'s slots moved (plain Maglev: {plain})");
            assert!(extra * n <= size as usize, "{n} backends: {extra} of {a}'s slots moved");
        }
    }

    /// Slots that moved between `old` and `new`, other than those `removed` held in `old`.
    fn excess(old: &[u32], new: &[u32], removed: u32) -> usize {
        old.iter().zip(new).filter(|(o, n)| **o != removed && o != n).count()
    }

    #[test]
    fn removing_a_backend_moves_no_more_than_plain_maglev() {
        for n in [2, 3, 5, 10, 16, 32, 64, 128] {
            let m = members(&vec![1; n]);
            let size = size_for(n);
            let full = build(&m, size);
            let drained = 2; // unavailable while another is removed from the configuration
            for removed in [1, n / 2, n - 1] {
                let id = m[removed].id;
                let rest: Vec<Member> = m.iter().filter(|b| b.id != id).copied().collect();
                let plain = excess(&full, &build(&rest, size), id);
                assert!(plain * n <= size as usize, "{n} backends: removing {id} moved {plain} others");
                // With everything available, build_available is plain Maglev.
                assert_eq!(build_available(&rest, &|_| true, size), build(&rest, size));
                if n < 4 || id == drained {
                    continue;
                }
                // With a backend down, a removal moves at most plain Maglev's excess over the
                // whole configuration (the slots of backends that are up) plus its excess over
                // the available backends (the down backend's slots), and still ≤ 1/n.
                let (old, new) = (with_down(&m, &[drained], size), with_down(&rest, &[drained], size));
                let ours = excess(&old, &new, id);
                let up = |b: &&Member| b.id != drained;
                let all_up: Vec<Member> = m.iter().filter(up).copied().collect();
                let rest_up: Vec<Member> = rest.iter().filter(up).copied().collect();
                let plain_up = excess(&build(&all_up, size), &build(&rest_up, size), id);
                println!("{n} backends, {drained} down, {id} removed: {ours} others moved (plain {plain}, {plain_up})");
                assert!(
                    ours <= plain + plain_up && ours * n <= size as usize,
                    "{n} backends, {drained} down: removing {id} moved {ours} others (plain {plain}, {plain_up})"
                );
            }
        }
    }

    #[test]
    fn an_all_unavailable_set_fails_open_and_nothing_configured_gives_no_backend() {
        let m = members(&[1, 2, 0, 3]);
        let full = build(&m, 1031);
        assert_eq!(build_available(&m, &|_| false, 1031), full);
        // Only the member of weight 0 available: no configured member is.
        assert_eq!(build_available(&m, &|id| id == 3, 1031), full);
        assert!(!full.contains(&3), "the member of weight 0 has slots");
        for none in [members(&[0, 0]), Vec::new()] {
            assert!(build(&none, 1031).iter().all(|&s| s == NO_BACKEND));
            assert!(build_available(&none, &|_| true, 1031).iter().all(|&s| s == NO_BACKEND));
        }
    }

    #[test]
    #[should_panic(expected = "not prime")]
    fn a_size_that_is_not_prime_is_refused() {
        build(&members(&[1, 1]), 65_536);
    }

    #[test]
    fn slots_moved_counts_the_slots_that_differ() {
        assert_eq!(slots_moved(&[1, 2, 3, 4], &[1, 3, 3, 0]), 2);
        assert_eq!(slots_moved(&[], &[]), 0);
    }

    #[test]
    fn the_share_moved_between_sizes_is_what_every_hash_sees() {
        let m = members(&[1, 2, 3, 1]);
        let (a, b) = (1009, 1013);
        let (old, new) = (build(&m, a), build(&m, b));
        // Every hash of a full period of both sizes, by brute force.
        let period = a as usize * b as usize;
        let moved = (0..period).filter(|h| old[h % a as usize] != new[h % b as usize]).count();
        let share = share_moved(&old, &new);
        assert!((share - moved as f64 / period as f64).abs() < 1e-12, "{share} vs {moved}/{period}");
        // One size: the share of slots that differ.
        let mut changed = old.clone();
        changed[..10].fill(NO_BACKEND);
        let differ = old[..10].iter().filter(|&&id| id != NO_BACKEND).count();
        assert_eq!(share_moved(&old, &changed), differ as f64 / a as f64);
        assert_eq!(share_moved(&old, &old), 0.0);
    }

    #[test]
    fn primes_and_table_sizes() {
        let mut sieve = vec![true; 20_000];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..sieve.len() {
            if sieve[i] {
                (2 * i..sieve.len()).step_by(i).for_each(|j| sieve[j] = false);
            }
        }
        for (n, &prime) in sieve.iter().enumerate() {
            assert_eq!(is_prime(n as u32), prime, "{n}");
        }
        for p in [65_537, 131_071, MAX_TABLE_SIZE, 4_294_967_291] {
            assert!(is_prime(p), "{p}");
        }
        for c in [65_536, 1 << 20, 4_294_967_295, 65_537 * 65_521] {
            assert!(!is_prime(c), "{c}");
        }
        assert_eq!(min_table_size(0), 1009);
        assert_eq!(min_table_size(1), 1009);
        assert_eq!(min_table_size(12), 1201);
        assert_eq!(min_table_size(655), 65_519);
        assert_eq!(min_table_size(1000), 100_003);
        assert_eq!(min_table_size(usize::MAX), 4_294_967_291);
        assert!(check_table_size(lb_common::limits::RING_SIZE, 655).is_ok());
        assert!(check_table_size(MAX_TABLE_SIZE, 10_485).is_ok());
        assert!(check_table_size(MIN_TABLE_SIZE, 0).is_ok());

        let message = |size, backends| check_table_size(size, backends).unwrap_err().to_string();
        assert_eq!(message(65_536, 12), "ring size 65536 is not prime; use 65537");
        assert_eq!(message(1009, 12), "ring size 1009 is less than 100 × 12 backends; use at least 1201");
        assert_eq!(
            message(101, 1),
            "ring size 101 is less than the smallest supported, 1009; use at least 1009"
        );
        assert_eq!(
            message(1 << 21, 3),
            "ring size 2097152 is more than the largest supported, 1048573; use at most 1048573"
        );
        assert_eq!(
            message(65_537, 20_000),
            "20000 backends need a ring of more than 1048573 slots, the largest supported (100 slots a \
             backend); use at most 10485 backends"
        );
        // Whatever is refused, what the error suggests is accepted.
        for backends in [0, 1, 9, 10, 11, 12, 100, 655, 656, 1000, 10_485] {
            for size in [0, 2, 100, 1000, 1009, 1100, 1200, 65_536, 65_537, 100_000, MAX_TABLE_SIZE + 1] {
                let suggested = match check_table_size(size, backends) {
                    Ok(()) => continue,
                    Err(TableSizeError::NotPrime { suggested, .. }) => suggested,
                    Err(TableSizeError::TooSmallForBackends { suggested, .. }) => suggested,
                    Err(TableSizeError::TooSmall { min, .. }) => min,
                    Err(TableSizeError::TooLarge { max, .. }) => max,
                    Err(e @ TableSizeError::TooManyBackends { .. }) => panic!("{backends} backends: {e}"),
                };
                let retry = check_table_size(suggested, backends);
                // A suggestion fixes what was wrong; what else is wrong is reported next.
                if let Err(e) = retry {
                    assert!(
                        matches!(
                            (check_table_size(size, backends), e),
                            (
                                Err(TableSizeError::TooLarge { .. }),
                                TableSizeError::TooSmallForBackends { .. }
                            )
                        ),
                        "{size} slots for {backends} backends: {suggested} refused too: {e}"
                    );
                }
            }
        }
    }
}
