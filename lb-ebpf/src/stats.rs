use aya_ebpf::maps::PerCpuArray;
use lb_common::{Counter, CounterBlock, TrafficStats};

use crate::maps::STATS;

/// This CPU's global counters, null if the map has no entry (it always has one). A packet that
/// moves several counters looks them up once with this and [`add`].
#[inline(always)]
pub fn block() -> *mut CounterBlock {
    STATS.get_ptr_mut(0).unwrap_or(core::ptr::null_mut())
}

/// Adds one to a global counter of `block`. Per-CPU: no atomics needed.
#[inline(always)]
pub fn add(block: *mut CounterBlock, counter: Counter) {
    if let Some(slot) = slot(block, counter) {
        *slot += 1;
    }
}

/// Adds one to a global counter of `block` if `yes`, without a branch.
#[inline(always)]
pub fn add_if(block: *mut CounterBlock, counter: Counter, yes: bool) {
    if let Some(slot) = slot(block, counter) {
        *slot += crate::opaque::opaque(yes as u64);
    }
}

/// `counter`'s slot in `block` (none if `block` is null).
#[inline(always)]
fn slot(block: *mut CounterBlock, counter: Counter) -> Option<&'static mut u64> {
    if block.is_null() {
        return None;
    }
    // SAFETY: this CPU's entry: nothing else writes it while we run.
    unsafe { (*block).by_index.get_mut(counter.index() as usize) }
}

/// Adds one to a global counter.
#[inline(always)]
pub fn count(counter: Counter) {
    add(block(), counter);
}

/// Adds a packet of `bytes` (and maybe a new flow) to entry `id` of VIP_STATS or BACKEND_STATS.
#[inline(always)]
pub fn traffic(map: &PerCpuArray<TrafficStats>, id: u32, bytes: u64, new_flow: bool) {
    if let Some(s) = map.get_ptr_mut(id) {
        // SAFETY: as above, a per-CPU slot.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += new_flow as u64;
        }
    }
}
