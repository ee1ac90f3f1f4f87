//! The flow table (FLOW_TABLE) mapped into this process, and its entries read, claimed and
//! written by lb-common/src/flow.rs's protocol: the data plane's CPUs write entries meanwhile,
//! so every access goes through `ctl` (atomic loads and compare-exchanges), never a plain
//! reference to an entry.
use std::{
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{fence, AtomicU16, AtomicU64, Ordering},
};

use lb_common::{FlowEntry, FLOW_BUSY, FLOW_COUNTED, FLOW_SEQ_MASK};

/// Tries at an entry a writer is writing before a read or a clear gives it up (a writer holds an
/// entry for a few hundred instructions).
const TRIES: u32 = 64;

/// Entries of the flow table in memory shared with the data plane (or, in tests, plain memory).
pub struct FlowEntries {
    base: NonNull<FlowEntry>,
    len: u32,
}

// SAFETY: the entries are shared memory that every access reaches through `ctl`'s atomics (see
// the module doc): no thread holds a reference into it.
unsafe impl Send for FlowEntries {}
unsafe impl Sync for FlowEntries {}

/// An entry claimed for writing (its `ctl` holds FLOW_BUSY): finish with [`FlowEntries::write`].
#[must_use = "a claimed entry stays busy (unreadable) until it is written"]
pub struct Claim {
    index: u32,
    /// `ctl` as claimed: the moved-on sequence and FLOW_BUSY.
    ctl: u64,
}

impl FlowEntries {
    /// # Safety
    /// `base` points to `len` entries, 8-byte aligned, valid for reads and writes (by this
    /// process through these entries only, or by others through the same protocol) for as long
    /// as the value lives.
    pub unsafe fn from_raw(base: NonNull<FlowEntry>, len: u32) -> FlowEntries {
        FlowEntries { base, len }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn entry(&self, index: u32) -> *mut FlowEntry {
        assert!(index < self.len, "flow entry {index} of {}", self.len);
        // SAFETY: in bounds (checked above).
        unsafe { self.base.as_ptr().add(index as usize) }
    }

    fn ctl(&self, index: u32) -> &AtomicU64 {
        // SAFETY: `ctl` is an aligned u64 inside a live entry, only ever accessed atomically
        // (readers' copies of the whole entry aside, which only read).
        unsafe { AtomicU64::from_ptr(std::ptr::addr_of_mut!((*self.entry(index)).ctl)) }
    }

    /// Entry `index` read whole, or `None` if a writer held it or rewrote it during the read (its
    /// `ctl` saw FLOW_BUSY, or two sequences). Fields written in place (the use time, the count
    /// bits) may move during the read: the copy's `ctl` is the second read's.
    pub fn read(&self, index: u32) -> Option<FlowEntry> {
        let ctl = self.ctl(index);
        let before = ctl.load(Ordering::Acquire);
        if before & FLOW_BUSY != 0 {
            return None;
        }
        // SAFETY: in bounds; a racing writer can only make the copy torn, which the sequence
        // check below catches (every field is a plain integer: any bits are a valid value).
        let mut copy = unsafe { std::ptr::read_volatile(self.entry(index)) };
        fence(Ordering::Acquire);
        let after = ctl.load(Ordering::Relaxed);
        if after & FLOW_BUSY != 0 || (after ^ before) & FLOW_SEQ_MASK != 0 {
            return None;
        }
        copy.ctl = after;
        Some(copy)
    }

    /// [`Self::read`], tried again while a writer holds the entry; `None` if one still does.
    pub fn read_settled(&self, index: u32) -> Option<FlowEntry> {
        (0..TRIES).find_map(|_| {
            let entry = self.read(index);
            if entry.is_none() {
                std::hint::spin_loop();
            }
            entry
        })
    }

    /// Empties entry `index` if it still holds what `seen` (a [`Self::read`] of it) holds: same
    /// sequence, no writer. Its `ctl` goes to the next sequence with no state bits, by a
    /// compare-exchange, so a writer that claimed the entry meanwhile wins and readers see the
    /// sequence move. Returns the control word it cleared, if this cleared it.
    pub fn clear(&self, index: u32, seen: &FlowEntry) -> Option<u64> {
        let ctl = self.ctl(index);
        let mut current = ctl.load(Ordering::Acquire);
        for _ in 0..TRIES {
            if current & FLOW_BUSY != 0 || (current ^ seen.ctl) & FLOW_SEQ_MASK != 0 {
                return None;
            }
            let cleared = (current + 1) & FLOW_SEQ_MASK;
            // The use time or a count bit may move in place between the load and the exchange:
            // then the exchange fails and is tried from the new value.
            match ctl.compare_exchange(current, cleared, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(current),
                Err(now) => current = now,
            }
        }
        None
    }

    /// Clears the count bit of entry `index` if the entry is still exactly as `seen` (a
    /// [`Self::read`] of it) was, its bit set: true if this cleared it (its backend's count is
    /// then one lower, once: the data plane's own `take_count` finds the bit gone). A packet of
    /// the flow meanwhile (its use time moved) or any write makes it leave the bit.
    pub fn take_count(&self, index: u32, seen: &FlowEntry) -> bool {
        if seen.ctl & (FLOW_COUNTED | FLOW_BUSY) != FLOW_COUNTED {
            return false;
        }
        self.ctl(index)
            .compare_exchange(seen.ctl, seen.ctl & !FLOW_COUNTED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Forgets the policy stamp of entry `index` (sets it to 0, which no policy generation
    /// is) if it still is `stamp`: a compare-exchange of that field alone. The data plane
    /// stores the field in place too; whatever a race with it or with a new flow's record
    /// leaves, a forgotten stamp only costs the flow one more pass through the checks.
    pub fn forget_policy_stamp(&self, index: u32, stamp: u16) -> bool {
        // SAFETY: an aligned u16 inside a live entry; the data plane writes it whole.
        let field =
            unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*self.entry(index)).policy_generation)) };
        field.compare_exchange(stamp, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Claims entry `index` for writing, as a data-plane writer does: FLOW_BUSY set and the
    /// sequence moved on, by a compare-exchange. `None` if another writer holds it.
    pub fn claim(&self, index: u32) -> Option<Claim> {
        let ctl = self.ctl(index);
        let current = ctl.load(Ordering::Acquire);
        if current & FLOW_BUSY != 0 {
            return None;
        }
        let claimed = (current & !FLOW_SEQ_MASK) | ((current + 1) & FLOW_SEQ_MASK) | FLOW_BUSY;
        ctl.compare_exchange(current, claimed, Ordering::AcqRel, Ordering::Relaxed).ok()?;
        Some(Claim { index, ctl: claimed })
    }

    /// Writes `entry` into a claimed entry and releases it: its `ctl` becomes `entry.ctl`'s state
    /// bits and clock with the claim's sequence.
    pub fn write(&self, claim: Claim, entry: &FlowEntry) {
        let target = self.entry(claim.index);
        let released = (entry.ctl & !(FLOW_SEQ_MASK | FLOW_BUSY)) | (claim.ctl & FLOW_SEQ_MASK);
        // SAFETY: in bounds, and this claim holds the entry: no other writer touches it, readers
        // see FLOW_BUSY in the `ctl` written here until the release below.
        unsafe { std::ptr::write_volatile(target, FlowEntry { ctl: claim.ctl, ..*entry }) };
        self.ctl(claim.index).store(released, Ordering::Release);
    }
}

/// The flow table's clock tick now ([`lb_common::flow_clock`]), on the clock the data plane
/// stamps a flow's last packet with (`bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC_COARSE).
pub fn flow_clock_now() -> u32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    lb_common::flow_clock(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// A BPF array map of `FlowEntry` (made with BPF_F_MMAPABLE) mapped shared, read and write.
pub struct MappedFlowTable {
    entries: FlowEntries,
    mapped_len: usize,
}

impl MappedFlowTable {
    /// Maps the `entries` values of array map `fd` (the mapping keeps the map alive: `fd` may be
    /// closed after).
    pub fn map(fd: BorrowedFd<'_>, entries: u32) -> std::io::Result<MappedFlowTable> {
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let mapped_len = (entries as usize * size_of::<FlowEntry>()).div_ceil(page).max(1) * page;
        // SAFETY: a new mapping of the map's memory, at an address the kernel picks; nothing
        // else in this process is at that address.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(base as *mut FlowEntry).expect("mmap returns no null mapping");
        // SAFETY: the mapping holds `entries` entries (page-aligned, so 64-byte aligned), lives
        // until drop, and the data plane writes them through the same protocol.
        let entries = unsafe { FlowEntries::from_raw(base, entries) };
        Ok(MappedFlowTable { entries, mapped_len })
    }
}

impl std::ops::Deref for MappedFlowTable {
    type Target = FlowEntries;

    fn deref(&self) -> &FlowEntries {
        &self.entries
    }
}

impl Drop for MappedFlowTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; `entries` goes with it.
        unsafe { libc::munmap(self.entries.base.as_ptr().cast(), self.mapped_len) };
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{FlowKey, FLOW_CLOCK_SHIFT, FLOW_CONFIRMED, FLOW_COUNTED, FLOW_PENDING};

    use super::*;

    fn entries(memory: &mut [FlowEntry]) -> FlowEntries {
        // SAFETY: the slice outlives the view in each test, and only the view touches it.
        unsafe { FlowEntries::from_raw(NonNull::new(memory.as_mut_ptr()).unwrap(), memory.len() as u32) }
    }

    fn flow(sport: u16, state: u64) -> FlowEntry {
        FlowEntry {
            key: FlowKey { sport, ..Default::default() },
            backend: 7,
            ctl: state | (5 << FLOW_CLOCK_SHIFT),
            ..Default::default()
        }
    }

    #[test]
    fn a_written_entry_reads_back_with_the_claims_sequence() {
        let mut memory = vec![FlowEntry::default(); 4];
        let table = entries(&mut memory);
        let claim = table.claim(2).expect("a free entry is claimed");
        assert!(table.read(2).is_none(), "a claimed entry is not read");
        assert!(table.claim(2).is_none(), "nor claimed twice");
        table.write(claim, &flow(80, FLOW_CONFIRMED | FLOW_COUNTED));
        let read = table.read(2).expect("a released entry is read");
        assert_eq!(read.key.sport, 80);
        assert_eq!(
            read.ctl,
            1 | FLOW_CONFIRMED | FLOW_COUNTED | (5 << FLOW_CLOCK_SHIFT),
            "sequence 1, no busy bit"
        );
        assert!(read.holds_flow() && read.confirmed() && read.value().counted);
        assert_eq!(read.value().last_tick, 5, "the tick of the flow's last packet");
        assert!(!table.read(0).unwrap().holds_flow(), "an untouched entry holds no flow");
    }

    #[test]
    fn the_flow_clock_now_is_the_coarse_monotonic_clock_in_ticks() {
        // The coarse clock is the monotonic one as of the last timer interrupt: behind it by up
        // to its resolution (a jiffy; twice that allowed).
        let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid timespec to fill.
        assert_eq!(unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) }, 0);
        let lag = 2 * (res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64);
        let before = crate::datapath::monotonic_ns();
        let now = flow_clock_now();
        let after = crate::datapath::monotonic_ns();
        let (low, high) = (lb_common::flow_clock(before.saturating_sub(lag)), lb_common::flow_clock(after));
        assert!((low..=high).contains(&now), "tick {now}, CLOCK_MONOTONIC's ticks {low}..={high}");
    }

    #[test]
    fn a_busy_entry_is_not_read_until_its_writer_releases_it() {
        let mut memory = vec![flow(80, FLOW_PENDING)];
        let table = entries(&mut memory);
        table.ctl(0).store(FLOW_BUSY | 3, Ordering::Relaxed);
        assert!(table.read(0).is_none() && table.read_settled(0).is_none(), "busy");
        table.ctl(0).store(4 | FLOW_PENDING, Ordering::Relaxed);
        assert_eq!(table.read(0).map(|e| e.ctl), Some(4 | FLOW_PENDING));
    }

    #[test]
    fn clear_empties_the_entry_read_and_moves_the_sequence_on() {
        let mut memory = vec![flow(80, FLOW_CONFIRMED | 0xffff)];
        let table = entries(&mut memory);
        let seen = table.read(0).unwrap();
        // The data plane moves the use time and counts the connection open, in place: the clear
        // still applies, and says what it cleared (the count bit too).
        table.ctl(0).fetch_add(1 << FLOW_CLOCK_SHIFT, Ordering::Relaxed);
        table.ctl(0).fetch_or(lb_common::FLOW_COUNTED, Ordering::Relaxed);
        let cleared = table.clear(0, &seen).expect("cleared");
        assert_ne!(cleared & lb_common::FLOW_COUNTED, 0, "the count bit it cleared");
        assert_eq!(table.ctl(0).load(Ordering::Relaxed), 0, "sequence 0xffff + 1 wraps, no state, no clock");
        assert!(!table.read(0).unwrap().holds_flow());
        assert_eq!(table.clear(0, &seen), None, "the sequence moved: cleared already");
    }

    #[test]
    fn clear_loses_to_a_writer_that_took_the_entry() {
        let mut memory = vec![flow(80, FLOW_CONFIRMED)];
        let table = entries(&mut memory);
        let seen = table.read(0).unwrap();
        let claim = table.claim(0).unwrap();
        assert_eq!(table.clear(0, &seen), None, "busy: the writer's");
        table.write(claim, &flow(443, FLOW_PENDING));
        assert_eq!(table.clear(0, &seen), None, "another flow, under the next sequence");
        assert_eq!(table.read(0).unwrap().key.sport, 443, "the writer's flow stays");
    }
}
