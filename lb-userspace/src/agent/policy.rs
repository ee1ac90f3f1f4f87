//! The access lists and VIP policies the desired state asks for, and the steps that take the
//! maps there (called by plan.rs). Precedence, made here so that the data plane needs two
//! lookups at most: the global deny list first (its own scope); then, in the VIP's scope, the
//! longest prefix between its allow and deny lists (a prefix in both: deny); a VIP with an allow
//! list gets a catch-all deny of its family (`/0`), which any allow prefix outranks.
use std::collections::{BTreeMap, BTreeSet};

use lb_common::{VipPolicy, ACL_ALLOW, ACL_DENY};

use super::plan::{Applied, Ids, Step};
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

/// VIP `v`'s policy, given the entries of `acl` (from [`acl`]).
pub fn vip_policy(v: &Vip, id: u32, acl: &BTreeMap<AclEntry, u32>, cpus: u32) -> VipPolicy {
    let scope = id + 1;
    let has_acl = acl
        .range(AclEntry { scope, address: [0u8; 4].into(), len: 0 }..)
        .next()
        .is_some_and(|(e, _)| e.scope == scope);
    security::vip_policy(v.address, v.limits.as_ref(), has_acl, cpus)
}

/// The steps before the VIPs' entries are written: every access-list entry that is new or
/// changes, the entries of ids that change owner removed, then each VIP's policy. A list that
/// changes holds both versions' entries for a moment (an entry in both changes in one write).
pub fn steps_before(
    current: &Applied,
    acl: &BTreeMap<AclEntry, u32>,
    vips: &[Vip],
    ids: &Ids,
    cpus: u32,
) -> Vec<Step> {
    let mut steps = Vec::new();
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
        if current.policies.get(&id) != Some(&value) {
            steps.push(Step::Policy { id, value });
        }
    }
    steps
}

/// The steps after the VIPs' entries: the access-list entries nothing asks for any more.
pub fn steps_after(current: &Applied, acl: &BTreeMap<AclEntry, u32>, before: &[Step]) -> Vec<Step> {
    let removed: BTreeSet<AclEntry> =
        before.iter().filter_map(|s| if let Step::RemoveAcl(e) = s { Some(*e) } else { None }).collect();
    current
        .acl
        .keys()
        .filter(|e| !acl.contains_key(e) && !removed.contains(e))
        .map(|e| Step::RemoveAcl(*e))
        .collect()
}

/// For `lbctl plan`: the entries of VIP `id`'s lists that would be written or removed.
pub fn changes_of(current: &Applied, acl: &BTreeMap<AclEntry, u32>, scope: u32) -> usize {
    let set = acl.iter().filter(|(e, v)| e.scope == scope && current.acl.get(e) != Some(v)).count();
    let gone = current.acl.keys().filter(|e| e.scope == scope && !acl.contains_key(e)).count();
    set + gone
}
