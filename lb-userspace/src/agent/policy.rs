//! The access lists and VIP policies the desired state asks for, and the steps that take the
//! maps there (called by plan.rs). Precedence, made here so that the data plane needs two
//! lookups at most: the global deny list first (its own scope); then, in the VIP's scope, the
//! longest prefix between its allow and deny lists (a prefix in both: deny); a VIP with an allow
//! list gets a catch-all deny of its family (`/0`), which any allow prefix outranks.
use std::collections::{BTreeMap, BTreeSet};

use lb_common::{VipPolicy, ACL_ALLOW, ACL_DENY, POLICY_GLOBAL_DENY};

use super::{
    plan::{Applied, Ids, Step},
    reconcile::ApplyError,
};
use crate::{
    config::Vip,
    datapath::AclEntry,
    security::{self, Deny, Prefix, Security},
};

/// What the policy maps should hold, besides the VIPs: the global list, the operator's denies
/// (the unexpired ones), and the CPUs rates are shared out among.
#[derive(Clone, Copy, Debug)]
pub struct Desired<'a> {
    pub security: &'a Security,
    pub denies: &'a [Deny],
    pub cpus: u32,
}

impl Desired<'_> {
    /// Nothing: no lists, no denies, one CPU.
    pub const NONE: Desired<'static> = Desired { security: &NO_SECURITY, denies: &[], cpus: 1 };
}

static NO_SECURITY: Security = Security { deny: Vec::new() };

fn entry(scope: u32, p: &Prefix) -> AclEntry {
    AclEntry { scope, address: p.address, len: p.len }
}

/// Every access-list entry `vips` (with `ids`) and `desired` ask for, with its value.
pub fn acl(vips: &[Vip], ids: &Ids, desired: &Desired) -> BTreeMap<AclEntry, u32> {
    let mut out = BTreeMap::new();
    let global = desired.denies.iter().filter(|d| d.vip.is_none()).map(|d| &d.prefix);
    for p in desired.security.deny.iter().chain(global) {
        out.insert(entry(0, p), ACL_DENY);
    }
    for v in vips {
        let Some(&id) = ids.vips.get(&v.name) else { continue };
        let scope = id + 1;
        if !v.allow.is_empty() {
            let any = Prefix { address: Prefix::masked(v.address, 0), len: 0 };
            out.insert(entry(scope, &any), ACL_DENY);
        }
        for p in &v.allow {
            out.insert(entry(scope, p), ACL_ALLOW);
        }
        let runtime = desired.denies.iter().filter(|d| d.vip.as_deref() == Some(v.name.as_str()));
        for p in v.deny.iter().chain(runtime.map(|d| &d.prefix)) {
            out.insert(entry(scope, p), ACL_DENY);
        }
    }
    out
}

/// Whether the access-list map has room for `acl`, and for the change to it from what
/// `current` records: the entries a change adds are written before those it drops go (a
/// narrower deny dropped before the wider one replacing it is in would let its sources
/// through), so for a moment the map holds both.
pub fn check_room(current: &Applied, acl: &BTreeMap<AclEntry, u32>) -> Result<(), ApplyError> {
    let max = lb_common::limits::MAX_ACL_ENTRIES as usize;
    if acl.len() > max {
        return Err(ApplyError::AclFull { entries: acl.len(), max });
    }
    let peak = acl.len() + current.acl.keys().filter(|e| !acl.contains_key(e)).count();
    if peak > max {
        return Err(ApplyError::AclPeak { entries: peak, max });
    }
    Ok(())
}

/// VIP `v`'s policy, given the entries of `acl` (from [`acl`]); its generation 0 (the executor
/// gives it one: [`Step::PolicyGeneration`]).
pub fn vip_policy(v: &Vip, id: u32, acl: &BTreeMap<AclEntry, u32>, cpus: u32) -> VipPolicy {
    let mut policy = security::vip_policy(v.address, v.limits.as_ref(), has_scope(acl, id + 1), cpus);
    if has_scope(acl, 0) {
        policy.flags |= POLICY_GLOBAL_DENY;
    }
    policy
}

/// Whether `acl` has entries of `scope`.
fn has_scope<V>(acl: &BTreeMap<AclEntry, V>, scope: u32) -> bool {
    acl.range(AclEntry { scope, address: [0u8; 4].into(), len: 0 }..)
        .next()
        .is_some_and(|(e, _)| e.scope == scope)
}

/// What VIP_POLICY holds for a VIP, but its generation.
pub fn without_generation(p: &VipPolicy) -> VipPolicy {
    VipPolicy { generation: 0, ..*p }
}

/// The steps before the VIPs' entries: the policy generation of every VIP the change concerns
/// set to 0 (its confirmed flows are checked again from now on), every access-list entry that
/// is new or changes, the entries of ids that change owner removed, then each VIP's policy
/// that changes (generation 0). A list that changes holds both versions' entries for a moment
/// (an entry in both changes in one write).
pub fn steps_before(
    current: &Applied,
    acl: &BTreeMap<AclEntry, u32>,
    vips: &[Vip],
    ids: &Ids,
    cpus: u32,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for id in to_recheck(current, acl, vips, ids, cpus) {
        if let Some(p) = current.policies.get(&id).filter(|p| p.generation != 0) {
            steps.push(Step::Policy { id, value: without_generation(p) });
        }
    }
    for (e, &value) in acl {
        if current.acl.get(e) != Some(&value) {
            steps.push(Step::Acl { entry: *e, value });
        }
    }
    // An id handed to another VIP: its earlier owner's lists go before the new owner's entry.
    let fresh: BTreeSet<u32> = vips
        .iter()
        .filter_map(|v| {
            ids.vips.get(&v.name).filter(|id| current.ids.vips.get(&v.name) != Some(id)).map(|id| id + 1)
        })
        .collect();
    for e in current.acl.keys().filter(|e| !acl.contains_key(e) && fresh.contains(&e.scope)) {
        steps.push(Step::RemoveAcl(*e));
    }
    for v in vips {
        let id = ids.vips[&v.name];
        let value = vip_policy(v, id, acl, cpus);
        if current.policies.get(&id).map(without_generation) != Some(value) {
            steps.push(Step::Policy { id, value });
        }
    }
    steps
}

/// The VIP ids whose confirmed flows must pass the checks again: their policy, their lists or
/// the global list change, or they have no generation yet (new, or a change that set it to 0
/// failed half-way).
fn to_recheck(
    current: &Applied,
    acl: &BTreeMap<AclEntry, u32>,
    vips: &[Vip],
    ids: &Ids,
    cpus: u32,
) -> Vec<u32> {
    let changed: BTreeSet<u32> = acl
        .iter()
        .filter(|(e, v)| current.acl.get(e) != Some(v))
        .map(|(e, _)| e.scope)
        .chain(current.acl.keys().filter(|e| !acl.contains_key(e)).map(|e| e.scope))
        .collect();
    vips.iter()
        .map(|v| (v, ids.vips[&v.name]))
        .filter(|&(v, id)| {
            let written = current.policies.get(&id);
            written.is_none_or(|p| without_generation(p) != vip_policy(v, id, acl, cpus))
                || current.rechecks_due.contains(&id)
                || changed.contains(&0)
                || changed.contains(&(id + 1))
        })
        .map(|(_, id)| id)
        .collect()
}

/// The steps after the VIPs' entries: the access-list entries nothing asks for any more, then
/// the new policy generation of every VIP the change concerns (last: a flow that passes the
/// checks under it has met every entry of the change).
pub fn steps_after(
    current: &Applied,
    acl: &BTreeMap<AclEntry, u32>,
    vips: &[Vip],
    ids: &Ids,
    cpus: u32,
    before: &[Step],
) -> Vec<Step> {
    let removed: BTreeSet<AclEntry> =
        before.iter().filter_map(|s| if let Step::RemoveAcl(e) = s { Some(*e) } else { None }).collect();
    let mut steps: Vec<Step> = current
        .acl
        .keys()
        .filter(|e| !acl.contains_key(e) && !removed.contains(e))
        .map(|e| Step::RemoveAcl(*e))
        .collect();
    let ids = to_recheck(current, acl, vips, ids, cpus);
    if !ids.is_empty() {
        steps.push(Step::PolicyGeneration { ids, generation: 0 });
    }
    steps
}

/// For `lbctl plan`: the entries of VIP `id`'s lists that would be written or removed.
pub fn changes_of(current: &Applied, acl: &BTreeMap<AclEntry, u32>, scope: u32) -> usize {
    let set = acl.iter().filter(|(e, v)| e.scope == scope && current.acl.get(e) != Some(v)).count();
    let gone = current.acl.keys().filter(|e| e.scope == scope && !acl.contains_key(e)).count();
    set + gone
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::IpAddr};

    use super::{check_room, AclEntry, Applied, ApplyError};

    /// `n` global /32 denies from the n-th address of a block at `first`.
    fn denies(first: u32, n: u32) -> BTreeMap<AclEntry, u32> {
        (first..first + n)
            .map(|a| {
                (AclEntry { scope: 0, address: IpAddr::from(a.to_be_bytes()), len: 32 }, lb_common::ACL_DENY)
            })
            .collect()
    }

    #[test]
    fn a_change_needs_room_for_the_old_lists_and_the_new_at_once() {
        let max = lb_common::limits::MAX_ACL_ENTRIES;
        let empty = Applied::default();
        assert!(check_room(&empty, &denies(0, max)).is_ok(), "a full map");
        let over = check_room(&empty, &denies(0, max + 1));
        assert!(
            matches!(over, Err(ApplyError::AclFull { entries, .. }) if entries == max as usize + 1),
            "{over:?}"
        );
        let current = Applied { acl: denies(0, 150_000), ..Applied::default() };
        // 100,000 kept, 50,000 dropped, 50,000 new: 200,000 at the peak.
        assert!(check_room(&current, &denies(50_000, 150_000)).is_ok());
        // A different list of 150,000: 300,000 at the peak.
        let swap = check_room(&current, &denies(1 << 20, 150_000));
        assert!(matches!(swap, Err(ApplyError::AclPeak { entries: 300_000, .. })), "{swap:?}");
        let message = swap.unwrap_err().to_string();
        assert!(message.contains("in a change of their own first"), "{message}");
    }
}
