use lb_common::Counter;

use crate::maps::STATS;

/// Adds one to a global counter. Per-CPU slots: no atomics needed.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(counter.index()) {
        // SAFETY: the slot belongs to this CPU and nothing else writes it while we run.
        unsafe { *slot += 1 };
    }
}
