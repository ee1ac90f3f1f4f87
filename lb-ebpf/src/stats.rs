use aya_ebpf::maps::PerCpuArray;
use lb_common::{Counter, TrafficStats};

use crate::maps::STATS;

/// Adds one to a global counter. Per-CPU slots: no atomics needed.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(counter.index()) {
        // SAFETY: the slot belongs to this CPU and nothing else writes it while we run.
        unsafe { *slot += 1 };
    }
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
