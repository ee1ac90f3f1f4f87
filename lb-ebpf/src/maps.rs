//! Every map of the data plane. Names and sizes come from lb-common; the agent may resize at load.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use lb_common::{limits, Counter, VipKey, VipValue};

#[map(name = "VIPS")]
pub static VIPS: HashMap<VipKey, VipValue> = HashMap::with_max_entries(limits::MAX_VIPS, 0);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
