//! Takes the steps of a change ([`super::plan::steps`]) against the maps, noting each in the
//! agent's record of what they hold; and the writes outside changes: voids of removed VIPs'
//! flows, the cache generation, CONFIG, entries nobody accounts for.
use std::collections::BTreeSet;

use lb_common::{BackendValue, ConfigValue, VipKey, VipValue, VIP_ADDRESS_ONLY};
use thiserror::Error;

pub use super::plan::{preview, ring, rr_sequence, Applied, Down, Ids, PlanEntry};
use super::{
    plan::{steps, Step},
    policy::Desired,
};
use crate::{
    config::{Source, Vip},
    datapath::{Datapath, DatapathError},
};

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(
        "no free VIP slot: all {0} are in use (raise limits.max_vips; it takes effect with a new pin path)"
    )]
    NoVipSlot(u32),
    #[error("no free backend id: all {0} are in use (raise limits.max_backends; it takes effect with a new pin path)")]
    NoBackendId(u32),
    #[error("no free backend id but those of backends this change removes, which their VIPs' rings name until it is through: remove them in a change of their own first, or raise limits.max_backends ({0}; it takes effect with a new pin path)")]
    NoBackendIdInOneChange(u32),
    #[error("the access lists ask for {entries} entries ([security] deny, the VIPs' allow and deny lists, lbctl deny): the map holds {max}; use wider prefixes")]
    AclFull { entries: usize, max: usize },
    #[error("this change needs {entries} access-list entries at once (the entries it adds are written before the ones it drops go, so that no source slips through between them): the map holds {max}; drop the old entries in a change of their own first, then add the new ones")]
    AclPeak { entries: usize, max: usize },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// Makes the maps hold `vips` under `ids`, `source` and the lists and limits `desired` asks for:
/// the planned steps, taken in order. Returns how many ring slots were written.
pub fn apply(
    dp: &mut Datapath,
    applied: &mut Applied,
    ids: &Ids,
    source: &Source,
    vips: &[Vip],
    down: &Down,
    desired: &Desired,
) -> Result<usize, ApplyError> {
    let mut slots = 0;
    for step in steps(applied, ids, source, vips, down, &dp.sizes, desired)? {
        let step = take(dp, applied, step, &mut slots)?;
        applied.record(&step);
    }
    Ok(slots)
}

/// Writes what `step` writes; returns it as written (a backend with its generation).
fn take(dp: &mut Datapath, applied: &mut Applied, step: Step, slots: &mut usize) -> Result<Step, ApplyError> {
    match &step {
        Step::Source(s) => {
            applied.source = Some(s.clone());
            write_config(dp, applied)?;
        }
        Step::ResetVip(id) => dp.reset_vip_stats(*id)?,
        Step::ResetBackend(id) => {
            dp.set_active_connections(*id, 0)?;
            dp.reset_backend_stats(*id)?;
        }
        Step::Backend { id, value, new_owner } => {
            let generation = dp.backend(*id)?.generation;
            let generation = if *new_owner { generation.wrapping_add(1) } else { generation };
            let value = BackendValue { generation, ..*value };
            dp.set_backend(*id, value)?;
            return Ok(Step::Backend { id: *id, value, new_owner: *new_owner });
        }
        Step::Ring { ring, old, new, .. } => *slots += dp.write_ring(*ring, old.as_deref(), new)?,
        Step::RrSequence { ring, old, new, .. } => {
            dp.write_rr_sequence(*ring, old.as_deref(), new)?;
        }
        Step::RemoveVip(key) | Step::RemoveAddress(key) => dp.remove_vip(key)?,
        Step::VoidFlows(id) => dp.void_vip_flows(*id)?,
        Step::SetVip { key, value, .. } | Step::SetAddress { key, value } => dp.set_vip(*key, *value)?,
        Step::VoidMoved(ids) => void_vip_flows(dp, applied, ids)?,
        Step::SyncFilter => dp.sync_vip_filter()?,
        Step::MoveCacheGeneration => move_cache_generation(dp, applied)?,
        Step::Acl { entry, value } => dp.set_acl(entry, *value)?,
        Step::RemoveAcl(entry) => dp.remove_acl(entry)?,
        Step::Policy { id, value } => dp.set_vip_policy(*id, *value)?,
        Step::PolicyGeneration { ids, .. } => {
            // A generation no policy ever had (the cache generation never comes back): moved
            // on and written to CONFIG first, so a change that fails half-way never hands the
            // same one out twice.
            move_cache_generation(dp, applied)?;
            let generation = applied.cache_generation;
            for id in ids {
                if let Some(p) = applied.policies.get(id) {
                    dp.set_vip_policy(*id, lb_common::VipPolicy { generation, ..*p })?;
                }
            }
            return Ok(Step::PolicyGeneration { ids: ids.clone(), generation });
        }
        Step::DropRrSequence { .. } | Step::ForgetVip(_) | Step::Ids(_) => {}
    }
    Ok(step)
}

/// How long a packet that read a VIP entry can still be on its way through the data plane (an
/// XDP run takes microseconds): after it, nothing can record a flow from an entry that is gone.
pub const PACKETS_IN_FLIGHT: std::time::Duration = std::time::Duration::from_millis(5);

/// Voids the recorded flows of VIP `ids` (whose entries were just removed or moved), and marks
/// them to be voided again once the packets in flight are through ([`void_again`]): one that
/// looked the old entry up before its removal and recorded its flow after the first void is
/// caught by the second.
fn void_vip_flows(dp: &mut Datapath, applied: &mut Applied, ids: &[u32]) -> Result<(), ApplyError> {
    let due = std::time::Instant::now() + PACKETS_IN_FLIGHT;
    for &id in ids {
        dp.void_vip_flows(id)?;
        applied.void_again.push((due, id));
    }
    Ok(())
}

/// The second void of the VIP ids whose time has come (see [`void_vip_flows`]), then a move of
/// the cache generation; the others stay marked. Returns when the next one is due.
pub fn void_again(
    dp: &mut Datapath,
    applied: &mut Applied,
    now: std::time::Instant,
) -> Result<Option<std::time::Instant>, ApplyError> {
    let (due, later): (Vec<_>, Vec<_>) = applied.void_again.iter().partition(|(at, _)| *at <= now);
    applied.void_again = later;
    for &(_, id) in &due {
        dp.void_vip_flows(id)?;
    }
    if !due.is_empty() {
        move_cache_generation(dp, applied)?;
    }
    Ok(applied.void_again.iter().map(|(at, _)| *at).min())
}

/// Ends what the data plane cached per CPU (next hops): it is looked up afresh.
pub fn move_cache_generation(dp: &mut Datapath, applied: &mut Applied) -> Result<(), ApplyError> {
    applied.cache_generation = next_generation(applied.cache_generation);
    write_config(dp, applied)
}

/// The cache generation after `g`. Never one whose low 16 bits are 0: a policy generation is
/// a cache generation, flows keep its low 16 bits as their policy stamp, and 0 is the stamp of
/// none (a new flow's, or one the census forgot: `FlowTable::census_walk`).
pub fn next_generation(g: u32) -> u32 {
    let next = g.wrapping_add(1);
    if next as u16 == 0 {
        next.wrapping_add(1)
    } else {
        next
    }
}

/// Writes CONFIG from the applied source and capture setting.
pub fn write_config(dp: &mut Datapath, applied: &Applied) -> Result<(), ApplyError> {
    let source = applied.source.clone().unwrap_or_default();
    Ok(dp.set_config(config_value(&source, applied.capture_vip, applied.cache_generation))?)
}

fn config_value(s: &Source, capture_vip: u32, cache_generation: u32) -> ConfigValue {
    ConfigValue {
        src_v4: s.ipv4.map(|a| a.octets()).unwrap_or_default(),
        src_v6: s.ipv6.map(|a| a.octets()).unwrap_or_default(),
        hash_seed: s.hash_seed,
        v4_entropy_bits: s.ipv4_entropy_bits,
        v6_entropy_bits: s.ipv6_entropy_bits,
        _pad: [0; 2],
        capture_vip,
        cache_generation,
    }
}

/// Removes VIP entries the maps hold but this agent did not write (left by an agent whose
/// saved state is gone): a VIP nobody knows about must not keep forwarding, by its entry or by
/// its recorded flows (voided, even if a known VIP has taken its id since).
pub fn remove_unknown_vips(dp: &mut Datapath, applied: &mut Applied) -> Result<usize, ApplyError> {
    let known: BTreeSet<VipKey> = applied.keys.values().chain(&applied.address_entries).copied().collect();
    let unknown: Vec<(VipKey, VipValue)> =
        dp.vips()?.into_iter().filter(|(k, _)| !known.contains(k)).collect();
    let mut ids = Vec::new();
    for (key, value) in &unknown {
        dp.remove_vip(key)?;
        // Address entries record no flows.
        if value.flags & VIP_ADDRESS_ONLY == 0 {
            ids.push(value.id);
        }
    }
    void_vip_flows(dp, applied, &ids)?;
    dp.sync_vip_filter()?;
    move_cache_generation(dp, applied)?;
    Ok(unknown.len())
}

/// Takes what the access lists hold as this agent's record of them, at start: entries an
/// earlier agent wrote that the desired state no longer asks for are then removed.
pub fn adopt_acl(dp: &Datapath, applied: &mut Applied) -> Result<(), ApplyError> {
    applied.acl = dp.acl_entries()?.into_iter().collect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::next_generation;

    #[test]
    fn no_generation_has_the_stamp_of_none() {
        assert_eq!(next_generation(1), 2);
        assert_eq!(next_generation(0xffff), 0x1_0001, "0x10000 would stamp flows with 0");
        assert_eq!(next_generation(0x2_fffe), 0x2_ffff);
        assert_eq!(next_generation(u32::MAX), 1, "past the end: not 0");
        let mut g = 0xfff0;
        for _ in 0..0x30000 {
            g = next_generation(g);
            assert_ne!(g as u16, 0, "generation {g:#x}");
        }
    }
}
