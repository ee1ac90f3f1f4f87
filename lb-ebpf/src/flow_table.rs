//! The data plane's side of the flow table (FLOW_TABLE; layout, eviction rule and the
//! write protocol in lb-common/src/flow.rs): find a flow in its sets, record a new one, confirm
//! one, free one, and the atomic moves of its count bit.
use core::{
    intrinsics::{atomic_cxchg, AtomicOrdering::Relaxed},
    ptr::{read_volatile, write_volatile},
};

use lb_common::{
    hash, FlowKey, FLOW_BUSY, FLOW_CLOCK_SHIFT, FLOW_CONFIRMED, FLOW_COUNTED, FLOW_FIRST_SET_ALONE,
    FLOW_IDLE_EVICT, FLOW_PENDING, FLOW_SEQ_MASK, FLOW_TO_COUNT, FLOW_WAYS,
};

use crate::{
    maps::{CLOCK_CACHE, FLOW_SETS, FLOW_TABLE},
    opaque::opaque,
};

/// `Slot::index` of no entry.
pub const NONE: u32 = u32::MAX;
/// An entry as 64-bit words: the key's five, then (backend, hash), (vip, generations), ctl.
const KEY_WORDS: usize = 5;
const WORD_BACKEND: usize = 5;
const WORD_IDS: usize = 6;
const WORD_CTL: usize = 7;
/// Any state: the entry holds a flow.
const HOLDS: u64 = FLOW_PENDING | FLOW_CONFIRMED;

/// A consistent copy of a flow's entry (its value words) and where it is; `index` NONE: none.
/// Plain integers, all always set: the verifier refuses spilled undefined registers, which an
/// `Option` payload leaves.
#[derive(Clone, Copy)]
pub struct Slot {
    pub index: u32,
    /// Backend id (low half) and flow hash (high half).
    pub backend_hash: u64,
    /// VIP id, VIP generation, backend generation, policy generation: 16 bits each, low first.
    pub ids: u64,
    pub ctl: u64,
}

impl Slot {
    pub const EMPTY: Slot = Slot { index: NONE, backend_hash: 0, ids: 0, ctl: 0 };

    #[inline(always)]
    pub fn found(&self) -> bool {
        self.index != NONE
    }
    #[inline(always)]
    pub fn backend(&self) -> u32 {
        self.backend_hash as u32
    }
    #[inline(always)]
    pub fn hash(&self) -> u32 {
        (self.backend_hash >> 32) as u32
    }
    #[inline(always)]
    pub fn vip(&self) -> u32 {
        (self.ids & 0xffff) as u32
    }
    #[inline(always)]
    pub fn vip_generation(&self) -> u16 {
        (self.ids >> 16) as u16
    }
    #[inline(always)]
    pub fn backend_generation(&self) -> u16 {
        (self.ids >> 32) as u16
    }
    #[inline(always)]
    pub fn policy_generation(&self) -> u16 {
        (self.ids >> 48) as u16
    }
    #[inline(always)]
    pub fn confirmed(&self) -> bool {
        self.ctl & FLOW_CONFIRMED != 0
    }
    #[inline(always)]
    pub fn counted(&self) -> bool {
        self.ctl & FLOW_COUNTED != 0
    }
}

/// The value words of a new entry.
#[inline(always)]
pub fn value_words(
    backend: u32,
    hash: u32,
    vip: u32,
    vip_generation: u32,
    backend_generation: u32,
) -> (u64, u64) {
    let ids =
        (vip as u16 as u64) | (vip_generation as u16 as u64) << 16 | (backend_generation as u16 as u64) << 32;
    (backend as u64 | (hash as u64) << 32, ids)
}

/// The flow table's clock now (a tick of 2^30 ns), read once per jiffy on each CPU: every
/// known flow's packet asks for it, and the clock helper is a call, where `bpf_jiffies64` is
/// two loads once the verifier inlines it. A tick read in this jiffy is at most one jiffy (10
/// ms or less) behind.
#[inline(always)]
pub fn clock() -> u32 {
    // SAFETY: a plain helper call.
    let jiffy = unsafe { aya_ebpf::helpers::bpf_jiffies64() };
    let Some(cached) = CLOCK_CACHE.get_ptr_mut(0) else {
        // SAFETY: a plain helper call.
        return lb_common::flow_clock(unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() });
    };
    // SAFETY: this CPU's slot: nothing else writes it while this program runs.
    unsafe {
        // (A jiffy of 0, which the counter passes once five minutes after boot, is read anew.)
        if (*cached)[0] == jiffy && jiffy != 0 {
            return (*cached)[1] as u32;
        }
        let now = lb_common::flow_clock(aya_ebpf::helpers::bpf_ktime_get_coarse_ns());
        *cached = [jiffy, now as u64];
        now
    }
}

/// The two sets of `key`, first choice and second (`seed`: the flow hash's).
#[inline(always)]
pub fn sets_of(key: &FlowKey, seed: u32) -> Sets {
    // SAFETY: a read of the program's own read-only data.
    let sets = unsafe { read_volatile(&FLOW_SETS) };
    let (first, second) = hash::flow_sets(key, seed, sets);
    Sets { first: first.wrapping_mul(FLOW_WAYS), second: second.wrapping_mul(FLOW_WAYS) }
}

/// Where a flow may be: the first entries of its two sets.
#[derive(Clone, Copy)]
pub struct Sets {
    pub first: u32,
    pub second: u32,
}

impl Sets {
    /// Way `way` of the first set (0..FLOW_WAYS), then of the second.
    #[inline(always)]
    fn entry(&self, way: u32) -> u32 {
        if way < FLOW_WAYS {
            self.first + way
        } else {
            self.second + (way - FLOW_WAYS)
        }
    }
}

#[inline(always)]
fn words(index: u32) -> *mut u64 {
    match FLOW_TABLE.get_ptr_mut(index) {
        Some(e) => e as *mut u64,
        None => core::ptr::null_mut(),
    }
}

/// The entry of `key` in its sets (the first set first: the second's lines are read only when
/// the first does not hold it), read whole (skipping a way being written, or rewritten while it
/// was read: as if the flow were not there).
#[inline(always)]
pub fn find(sets: Sets, key: &FlowKey) -> Slot {
    let k = hash::words(key);
    let mut way = 0;
    while way < 2 * FLOW_WAYS {
        let index = sets.entry(way);
        let w = words(index);
        if w.is_null() {
            break;
        }
        // SAFETY: an entry of the array, 8 words, 8-byte aligned; volatile: each word read once,
        // in this order (the protocol in lb-common/src/flow.rs).
        unsafe {
            let before = read_volatile(w.add(WORD_CTL));
            if before & FLOW_BUSY == 0 && before & HOLDS != 0 {
                let mut diff = 0;
                let mut i = 0;
                while i < KEY_WORDS {
                    diff |= read_volatile(w.add(i)) ^ k[i];
                    i += 1;
                }
                if diff == 0 {
                    let backend_hash = read_volatile(w.add(WORD_BACKEND));
                    let ids = read_volatile(w.add(WORD_IDS));
                    let after = read_volatile(w.add(WORD_CTL));
                    if (before ^ after) & (FLOW_SEQ_MASK | FLOW_BUSY) == 0 {
                        return Slot { index, backend_hash, ids, ctl: after };
                    }
                }
            }
        }
        way += 1;
    }
    Slot::EMPTY
}

/// Marks the flow at `slot` used at tick `now` (a store only when the tick moved on).
#[inline(always)]
pub fn touch(slot: &Slot, now: u32) {
    if (slot.ctl >> FLOW_CLOCK_SHIFT) as u32 != now {
        let w = words(slot.index);
        if !w.is_null() {
            // SAFETY: the high half of the entry's ctl word (little endian), a u32 of its own.
            unsafe { write_volatile((w.add(WORD_CTL) as *mut u32).add(1), now) };
        }
    }
}

/// Stores the policy generation the flow at `slot` passed the checks under.
#[inline(always)]
pub fn stamp_policy(slot: &Slot, generation: u32) {
    let w = words(slot.index);
    if !w.is_null() {
        // SAFETY: the top 16 bits of the ids word (little endian), a u16 of its own.
        unsafe { write_volatile((w.add(WORD_IDS) as *mut u16).add(3), generation as u16) };
    }
}

/// A new flow to record: where, and its value words. (One argument: BPF functions take five.)
pub struct NewFlow {
    pub sets: Sets,
    /// Its own entry, void or over, to take first; NONE if none.
    pub reuse: u32,
    pub now: u32,
    /// A least-conn TCP flow: counted once confirmed.
    pub to_count: bool,
    pub backend_hash: u64,
    pub ids: u64,
    /// Set by [`choose_entry`]: the entry the flow takes (NONE: none), its ctl word as read,
    /// and its rank there (1: a confirmed flow's, evicted).
    pub entry: u32,
    pub entry_ctl: u64,
    pub entry_rank: u32,
    /// Set by [`record`] when it evicted a counted connection: that connection's backend
    /// (NO_BACKEND otherwise), whose count the caller drops.
    pub evicted_counted: u32,
}

/// [`record`]: recorded in an empty entry or one of an unconfirmed flow.
pub const RECORDED: u32 = 0;
/// [`record`]: recorded in the entry of a confirmed flow idle long enough: that flow is gone.
pub const EVICTED: u32 = 1;
/// [`record`]: every way of the set holds a flow that may not be evicted, or another CPU wrote
/// the chosen one meanwhile.
pub const NOT_RECORDED: u32 = 2;

/// Chooses the entry new flow `new` takes (`new.entry`), and says whether there is one: none if
/// every way of its sets holds a flow that may not be evicted. Writes no entry: [`record`] does,
/// so that the caller can refuse the flow in between. Not inlined: it runs once per flow.
///
/// The victim, by rank: 5 its own entry, 4 an empty way of the preferred set, 3 of the other, 2
/// an unconfirmed flow's, 1 a confirmed flow's idle long enough, 0 none (being written, or a
/// connection active in the last FLOW_IDLE_EVICT ticks). An empty way: of the first set while
/// it holds few flows, else of the set that holds fewer (most flows are found in their first
/// set, and the table fills evenly). An unconfirmed or idle flow's way: the older first, but not
/// in a set crowded with active connections when the other is not. A busy table is full of
/// finished connections (entries are freed only by being taken), and which of them a new
/// connection replaces decides which sets its successors find taken (tests/tests/xdp_flow_table.rs
/// measures the share of new flows turned away).
///
/// How: each way's control word is read once and scored by arithmetic (rank, then order), each
/// set keeps its best way, and the two are weighed at the end, where what depends on both sets
/// (which is preferred, which crowded) is known. No branch but the bounds checks: compares on a
/// table's random states mispredict, and each branch would have the verifier walk the rest, the
/// caller's included, once more (the values are hidden from the compiler, `opaque`, which would
/// otherwise make branches of them). The earlier form, a compare per rank and a second read of
/// the ways, cost about 20 ns more a SYN of some 440 (bench_flows, December 2026), and 42,000
/// more of the verifier's instructions.
#[inline(never)]
pub fn choose_entry(new: &mut NewFlow) -> bool {
    let (sets, reuse, now) = (new.sets, new.reuse, new.now);
    new.evicted_counted = lb_common::NO_BACKEND;
    // Per set, the ways holding a flow and those a new flow may not take, a byte each: first
    // set's held, second's, first's taken, second's (few live values: the frame is small).
    let mut counts = 0u64;
    let (mut first_best, mut second_best) = (Best::NONE, Best::NONE);
    // Unrolled by hand: the verifier walks a loop's body again for each state it comes with.
    macro_rules! way {
        ($ways:lifetime, $way:expr) => {{
            let w = words(sets.entry($way));
            if w.is_null() {
                break $ways;
            }
            // SAFETY: as in `find`.
            let ctl = unsafe { read_volatile(w.add(WORD_CTL)) };
            let age = now.wrapping_sub((ctl >> FLOW_CLOCK_SHIFT) as u32);
            // 1 while the tick of its last packet is under FLOW_IDLE_EVICT ago (or ahead: a race).
            let active = ((age as i32 as i64 - FLOW_IDLE_EVICT as i64) >> 63) as u64 & 1;
            // The way's state (busy, pending, confirmed, active) picks its rank in the set (an
            // empty way's 3 either set) and the rest from tables.
            let state = opaque(((ctl >> FLOW_BUSY.trailing_zeros()) & 7) | active << 3);
            let set = ($way / FLOW_WAYS) as u64;
            counts += ((HELD_TAKEN >> state) & 0x1_0001) << (8 * set);
            let rank = (RANK_AGED >> (4 * state)) & 7;
            let aged = (RANK_AGED >> (4 * state + 3)) & 1;
            // Its own entry ranks 5 (unless being written).
            let own = opaque(((sets.entry($way) ^ reuse) as u64).wrapping_sub(1) >> 63) & (state ^ 1) & 1;
            let rank = rank + own * (5 - rank);
            // Ties: the older flow first (unconfirmed and idle ways), else the earlier way.
            let score = rank << 40 | (aged * (age as u64 & 0x7fff_ffff)) << 3 | (7 - $way as u64);
            if $way < FLOW_WAYS {
                first_best.keep(score, ctl);
            } else {
                second_best.keep(score, ctl);
            }
        }};
    }
    'ways: {
        way!('ways, 0);
        way!('ways, 1);
        way!('ways, 2);
        way!('ways, 3);
        way!('ways, 4);
        way!('ways, 5);
        way!('ways, 6);
        way!('ways, 7);
    }
    let count = |byte: u64| (counts >> (8 * byte)) & 0xff;
    let (held_first, held_second) = (count(0), count(1));
    let prefer_first = below(held_first, FLOW_FIRST_SET_ALONE as u64) | (below(held_second, held_first) ^ 1);
    // Crowded: taken reaches FLOW_FIRST_SET_ALONE.
    let crowded = |taken: u64| below(taken, FLOW_FIRST_SET_ALONE as u64) ^ 1;
    let first = first_best.ranked(prefer_first, crowded(count(2)));
    let second = second_best.ranked(prefer_first ^ 1, crowded(count(3)));
    // The second set's way if it ranks higher, or the same (an unconfirmed or idle flow's) and
    // orders higher: (rank, order) compared as one number.
    let take = opaque(0u64.wrapping_sub(below(first, second)));
    let rank = ((second & take) | (first & !take)) >> 32;
    // Its way from its score's low bits (7 - way), its entry from its set's first.
    let way = |best: &Best| 7 - (best.score & 7) as u32;
    let first_entry = sets.first.wrapping_add(way(&first_best)) as u64;
    let second_entry = sets.second.wrapping_add(way(&second_best)).wrapping_sub(FLOW_WAYS) as u64;
    let found = opaque(0u64.wrapping_sub(below(0, rank)));
    let entry = (second_entry & take) | (first_entry & !take);
    new.entry = ((entry & found) | (NONE as u64 & !found)) as u32;
    new.entry_ctl = (second_best.ctl & take) | (first_best.ctl & !take);
    new.entry_rank = rank as u32;
    new.entry != NONE
}

/// [`choose_entry`]'s tables, by a way's state: bits 0 to 2 its control word's FLOW_BUSY,
/// FLOW_PENDING and FLOW_CONFIRMED, bit 3 whether its flow was active in the last
/// FLOW_IDLE_EVICT ticks. Its rank in its set (3 bits) and whether ties go by age (1 bit).
const RANK_AGED: u64 = {
    assert!(FLOW_PENDING == FLOW_BUSY << 1 && FLOW_CONFIRMED == FLOW_BUSY << 2);
    let mut table = 0u64;
    let mut state = 0;
    while state < 16 {
        let (busy, pending, confirmed, active) =
            (state & 1 != 0, state & 2 != 0, state & 4 != 0, state & 8 != 0);
        let rank = if busy {
            0
        } else if !pending && !confirmed {
            3
        } else if pending {
            2
        } else if !active {
            1
        } else {
            0
        };
        let aged = (pending || confirmed) as u64;
        table |= (rank | aged << 3) << (4 * state);
        state += 1;
    }
    table
};
/// Whether a way of each state holds a flow (bit `state`) and whether a new flow may not take
/// it (bit `state + 16`): being written, or an active connection's.
const HELD_TAKEN: u64 = {
    let mut table = 0u64;
    let mut state = 0;
    while state < 16 {
        let (busy, pending, confirmed, active) =
            (state & 1 != 0, state & 2 != 0, state & 4 != 0, state & 8 != 0);
        table |= ((busy || pending || confirmed) as u64) << state;
        table |= ((busy || (confirmed && active)) as u64) << (state + 16);
        state += 1;
    }
    table
};

/// 1 if `a < b`, else 0, without a branch (both under 2^63).
#[inline(always)]
fn below(a: u64, b: u64) -> u64 {
    opaque(a.wrapping_sub(b) >> 63)
}

/// A set's best way for a new flow so far ([`choose_entry`]): its score (rank << 40, the age of
/// an unconfirmed or idle flow << 3, then 7 - way) and control word.
#[derive(Clone, Copy)]
struct Best {
    score: u64,
    ctl: u64,
}

impl Best {
    const NONE: Best = Best { score: 0, ctl: 0 };

    /// Takes a way that scores higher, without a branch.
    #[inline(always)]
    fn keep(&mut self, score: u64, ctl: u64) {
        // (Scores are under 2^63: the difference wraps to the top bit set when `score` is higher.)
        let take = opaque(0u64.wrapping_sub(below(self.score, score)));
        self.score = (score & take) | (self.score & !take);
        self.ctl = (ctl & take) | (self.ctl & !take);
    }

    /// The way's rank among both sets' (an empty way ranks 4 in the `preferred` set) << 32, and
    /// its order: an unconfirmed or idle flow's way orders after the other set's when its set
    /// is `crowded`, then by age.
    #[inline(always)]
    fn ranked(&self, preferred: u64, crowded: u64) -> u64 {
        let rank = self.score >> 40;
        let empty = below(rank ^ 3, 1);
        (rank + empty * preferred) << 32 | (crowded ^ 1) << 31 | ((self.score >> 3) & 0x7fff_ffff)
    }
}

/// Records new unconfirmed flow `key` as `new` says, in the entry [`choose_entry`] chose. Not
/// inlined: it runs once per flow.
#[inline(never)]
pub fn record(key: &FlowKey, new: &mut NewFlow) -> u32 {
    let (victim_ctl, victim_rank, now) = (new.entry_ctl, new.entry_rank, new.now);
    let w = words(new.entry);
    if w.is_null() {
        return NOT_RECORDED;
    }
    // Whose count goes with an evicted connection: read before the claim, which fails if the
    // entry changed since its ctl was read.
    // SAFETY: as in `find`.
    let old_backend = unsafe { read_volatile(w.add(WORD_BACKEND)) } as u32;
    let seq = victim_ctl & FLOW_SEQ_MASK;
    let claimed = ((seq + 1) & FLOW_SEQ_MASK) | FLOW_BUSY;
    // SAFETY: an aligned u64 of the entry; every writer claims it this way.
    let (_, ok) =
        unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(w.add(WORD_CTL), victim_ctl, claimed) };
    if !ok {
        return NOT_RECORDED;
    }
    let k = hash::words(key);
    let flags = FLOW_PENDING | if new.to_count { FLOW_TO_COUNT } else { 0 };
    // SAFETY: the entry is this CPU's until the ctl store below.
    unsafe {
        let mut i = 0;
        while i < KEY_WORDS {
            write_volatile(w.add(i), k[i]);
            i += 1;
        }
        write_volatile(w.add(WORD_BACKEND), new.backend_hash);
        write_volatile(w.add(WORD_IDS), new.ids);
        write_volatile(
            w.add(WORD_CTL),
            ((seq + 2) & FLOW_SEQ_MASK) | flags | (now as u64) << FLOW_CLOCK_SHIFT,
        );
    }
    if victim_rank != 1 {
        return RECORDED;
    }
    if victim_ctl & FLOW_COUNTED != 0 {
        new.evicted_counted = old_backend;
    }
    EVICTED
}

/// Confirms the unconfirmed flow at `slot` (its second recorded packet). Returns whether this
/// CPU confirmed it and whether it now counts as an open connection (least-conn): only the CPU
/// whose compare-and-exchange confirmed it counts it.
#[inline(always)]
pub fn confirm(slot: &Slot) -> (bool, bool) {
    let w = words(slot.index);
    if w.is_null() {
        return (false, false);
    }
    let mut seen = slot.ctl;
    // Another CPU may move the use tick meanwhile: a second try.
    let mut tries = 0;
    while tries < 2 {
        if seen & FLOW_PENDING == 0 || (seen ^ slot.ctl) & FLOW_SEQ_MASK != 0 || seen & FLOW_BUSY != 0 {
            return (false, false);
        }
        let counted = seen & FLOW_TO_COUNT != 0;
        let next = (seen & !(FLOW_PENDING | FLOW_TO_COUNT))
            | FLOW_CONFIRMED
            | if counted { FLOW_COUNTED } else { 0 };
        // SAFETY: as in `record`.
        let (was, ok) = unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(w.add(WORD_CTL), seen, next) };
        if ok {
            return (true, counted);
        }
        seen = was;
        tries += 1;
    }
    (false, false)
}

/// Sets the confirmed flow at `slot`, whose connection closed, back to unconfirmed and to be
/// counted: a SYN opened a new connection on its 5-tuple, which the client's next packet
/// confirms (and counts) as any new one. True if this CPU did. Not inlined: it runs once per
/// reused port, and its paths stay out of the caller's.
#[inline(never)]
pub fn reopen(slot: &Slot) -> bool {
    let w = words(slot.index);
    if w.is_null() {
        return false;
    }
    // SAFETY: as in `find`.
    let mut seen = unsafe { read_volatile(w.add(WORD_CTL)) };
    // Another CPU may move the use tick meanwhile: a second try.
    let mut tries = 0;
    while tries < 2 {
        let closed = seen & (FLOW_CONFIRMED | FLOW_COUNTED | FLOW_BUSY) == FLOW_CONFIRMED;
        if !closed || (seen ^ slot.ctl) & FLOW_SEQ_MASK != 0 {
            return false;
        }
        let next = (seen & !FLOW_CONFIRMED) | FLOW_PENDING | FLOW_TO_COUNT;
        // SAFETY: as in `record`.
        let (was, ok) = unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(w.add(WORD_CTL), seen, next) };
        if ok {
            return true;
        }
        seen = was;
        tries += 1;
    }
    false
}

/// Clears the count bit of the flow at `index` if it still holds the flow `ctl` was read from
/// (same write sequence) and the bit is set: true if this CPU cleared it (the caller then
/// uncounts the backend, once).
#[inline(always)]
pub fn take_count(index: u32, ctl: u64) -> bool {
    let w = words(index);
    if w.is_null() {
        return false;
    }
    // SAFETY: as in `find`.
    let mut seen = unsafe { read_volatile(w.add(WORD_CTL)) };
    let mut tries = 0;
    while tries < 2 {
        if seen & FLOW_COUNTED == 0 || (seen ^ ctl) & FLOW_SEQ_MASK != 0 || seen & FLOW_BUSY != 0 {
            return false;
        }
        // SAFETY: as in `record`.
        let (was, ok) = unsafe {
            atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(w.add(WORD_CTL), seen, seen & !FLOW_COUNTED)
        };
        if ok {
            return true;
        }
        seen = was;
        tries += 1;
    }
    false
}

/// Frees the entry at `slot` if it still holds that flow (a connection that is over).
#[inline(always)]
pub fn free(slot: &Slot) {
    let w = words(slot.index);
    if w.is_null() {
        return;
    }
    // SAFETY: as in `find`.
    let seen = unsafe { read_volatile(w.add(WORD_CTL)) };
    if (seen ^ slot.ctl) & FLOW_SEQ_MASK != 0 || seen & FLOW_BUSY != 0 {
        return;
    }
    // The sequence moves on: a reader mid-way through the entry drops what it read.
    let next = ((seen & FLOW_SEQ_MASK) + 1) & FLOW_SEQ_MASK;
    // SAFETY: as in `record`.
    let _ = unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(w.add(WORD_CTL), seen, next) };
}
