//! Typed access to the data plane's maps.
use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use lb_common::{map_names, Counter, VipKey, VipValue};

use super::{Datapath, DatapathError};

impl Datapath {
    /// A global counter summed over all CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, DatapathError> {
        let stats: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(map_names::STATS)?).map_err(|e| map_error(map_names::STATS, e))?;
        let per_cpu = stats.get(&counter.index(), 0).map_err(|e| map_error(map_names::STATS, e))?;
        Ok(per_cpu.iter().sum())
    }

    /// Adds or replaces a VIP.
    pub fn set_vip(&mut self, key: VipKey, value: VipValue) -> Result<(), DatapathError> {
        let mut vips: HashMap<&mut MapData, VipKey, VipValue> =
            HashMap::try_from(self.map_mut(map_names::VIPS)?).map_err(|e| map_error(map_names::VIPS, e))?;
        vips.insert(key, value, 0).map_err(|e| map_error(map_names::VIPS, e))
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DatapathError> {
        self.ebpf.map(name).ok_or(DatapathError::NoMap(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DatapathError> {
        self.ebpf.map_mut(name).ok_or(DatapathError::NoMap(name))
    }
}

fn map_error(name: &'static str, source: MapError) -> DatapathError {
    DatapathError::Map { name, source }
}
