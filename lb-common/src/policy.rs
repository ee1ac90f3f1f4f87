//! Edge policy: access lists and rate limits, checked by the balancer before any flow-table work
//! (lb-ebpf/src/policy.rs), written by the agent.
use crate::vip::FAMILY_V4;

/// The data of an ACL key (an LPM trie): the scope (VIP id + 1, big-endian; 0 for the global
/// list), the family, then the source address (IPv4 in the first 4 bytes). An address prefix of
/// `n` bits is a key prefix of `40 + n` bits ([`AclKey::prefix_len`]): the scope and family
/// always match whole, so a lookup finds the longest prefix of one scope and one family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclKey {
    pub scope: [u8; 4],
    pub family: u8,
    pub addr: [u8; 16],
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AclKey>() == 24);

/// `ACL` values: what a source matched by the longest prefix of a scope gets.
pub const ACL_ALLOW: u32 = 1;
pub const ACL_DENY: u32 = 2;

impl AclKey {
    /// Bits of the key before the address: scope and family.
    pub const SCOPE_BITS: u32 = 40;

    /// The scope of VIP `id`'s list; [`Self::GLOBAL`] is every VIP's.
    pub const fn scope_of(id: u32) -> [u8; 4] {
        (id + 1).to_be_bytes()
    }

    pub const GLOBAL: [u8; 4] = [0; 4];

    /// The key prefix length of an address prefix of `bits` bits.
    pub const fn prefix_len(bits: u32) -> u32 {
        Self::SCOPE_BITS + bits
    }

    /// Bits of an address of `family`: what a lookup matches.
    pub const fn address_bits(family: u8) -> u32 {
        if family == FAMILY_V4 {
            32
        } else {
            128
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: bytes only, no padding (size asserted above).
unsafe impl aya::Pod for AclKey {}

/// A token bucket as the generic cell rate algorithm keeps it: one timestamp per bucket (the
/// theoretical arrival time of the next packet), so a check is a compare and an add. This CPU's
/// share of a rate: one arrival every `interval_ns`, up to `tolerance_ns` early (the burst).
/// `interval_ns` 0: no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gcra {
    pub interval_ns: u64,
    pub tolerance_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Gcra>() == 16);

impl Gcra {
    /// Each of `cpus` CPUs' share of `per_second` (at least 1 a second each), with a burst of one
    /// second's share: together, at most `per_second` a second once the burst is spent, when a
    /// source's packets spread evenly over the CPUs (docs/data-plane.md, "Rate limits").
    pub const fn share(per_second: u32, cpus: u32) -> Gcra {
        if per_second == 0 {
            return Gcra { interval_ns: 0, tolerance_ns: 0 };
        }
        let cpus = if cpus == 0 { 1 } else { cpus } as u64;
        let per_cpu = per_second as u64 / cpus;
        let interval_ns = cpus * 1_000_000_000 / per_second as u64;
        let burst = if per_cpu == 0 { 1 } else { per_cpu };
        Gcra { interval_ns, tolerance_ns: (burst - 1) * interval_ns }
    }

    /// Whether an arrival at `now` conforms; if it does, `tat` moves on by one interval.
    #[inline(always)]
    pub fn admit(&self, tat: &mut u64, now: u64) -> bool {
        if self.interval_ns == 0 {
            return true;
        }
        let t = if *tat > now { *tat } else { now };
        if t - now > self.tolerance_ns {
            return false;
        }
        *tat = t + self.interval_ns;
        true
    }
}

/// `VipPolicy::flags`: the VIP has entries in ACL (its scope is looked up).
pub const POLICY_ACL: u32 = 1 << 0;
/// The VIP keeps per-source state in SOURCES (rate limits, `lbctl top`).
pub const POLICY_TRACK: u32 = 1 << 1;
/// A new TCP flow over a new-flow limit goes to the stack (`pass_rate_limited`) instead of
/// being dropped.
pub const POLICY_PASS_OVER_LIMIT: u32 = 1 << 2;
/// The global deny list has entries (its scope is looked up): an empty one costs no lookup.
pub const POLICY_GLOBAL_DENY: u32 = 1 << 3;

/// VIP_POLICY's value, by VIP id: what the policy step does for the VIP's packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipPolicy {
    /// `POLICY_*` bits.
    pub flags: u32,
    /// Moved on by the agent (to its cache generation, which never comes back) once the VIP's
    /// lists, the global deny list or the VIP's limits changed and every entry of the change is
    /// written: a confirmed flow whose `FlowValue::policy_generation` is this one passed the
    /// checks under what they say now, and skips them. 0: no flow skips them.
    pub generation: u32,
    /// The source address ANDed with this is a SOURCES key's address.
    pub source_mask: [u64; 2],
    /// New flows a second per source (this CPU's share).
    pub source_flows: Gcra,
    /// Packets a second per source (this CPU's share).
    pub source_packets: Gcra,
    /// New flows a second to the whole VIP (this CPU's share).
    pub vip_flows: Gcra,
}
const _: () = assert!(core::mem::size_of::<VipPolicy>() == 72);

/// SOURCES' key: a source prefix of a VIP, as one CPU saw it (each CPU keeps its own entries:
/// no lock or atomic shared between CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// The masked source address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    pub vip: u32,
    pub cpu: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<SourceKey>() == 28);

/// SOURCES' value: a source's buckets on one CPU and what it sent, by whole second
/// (`bpf_ktime_get_ns` / 10^9): index 0 the current second (`second`), 1 the one before.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    pub flow_tat: u64,
    pub packet_tat: u64,
    pub second: u64,
    pub packets: [u32; 2],
    pub new_flows: [u32; 2],
    pub drops: [u32; 2],
}
const _: () = assert!(core::mem::size_of::<SourceState>() == 48);

impl SourceState {
    /// Moves the windows on to `second`.
    #[inline(always)]
    pub fn roll(&mut self, second: u64) {
        if self.second == second {
            return;
        }
        let adjacent = self.second + 1 == second;
        self.packets = [0, if adjacent { self.packets[0] } else { 0 }];
        self.new_flows = [0, if adjacent { self.new_flows[0] } else { 0 }];
        self.drops = [0, if adjacent { self.drops[0] } else { 0 }];
        self.second = second;
    }
}

/// Why the policy step refused a packet: the `reason` label of the per-VIP drop metric, and the
/// slot of `PolicyCounts`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyReason {
    Acl = 0,
    RateNewFlows = 1,
    RatePackets = 2,
    VipNewFlowCap = 3,
}

impl PolicyReason {
    pub const ALL: [PolicyReason; 4] = [
        PolicyReason::Acl,
        PolicyReason::RateNewFlows,
        PolicyReason::RatePackets,
        PolicyReason::VipNewFlowCap,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            PolicyReason::Acl => "acl",
            PolicyReason::RateNewFlows => "rate_new_flows",
            PolicyReason::RatePackets => "rate_packets",
            PolicyReason::VipNewFlowCap => "vip_new_flow_cap",
        }
    }
}

/// POLICY_STATS' value, by VIP id, per CPU: packets the policy step dropped, by
/// `PolicyReason`, and new TCP flows over a limit it passed to the stack instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCounts {
    pub dropped: [u64; 4],
    pub passed: u64,
}
const _: () = assert!(core::mem::size_of::<PolicyCounts>() == 40);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain integers and byte arrays without padding (sizes asserted above).
    unsafe impl aya::Pod for super::Gcra {}
    unsafe impl aya::Pod for super::VipPolicy {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::SourceState {}
    unsafe impl aya::Pod for super::PolicyCounts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_admits_its_rate_after_a_burst_of_one_second() {
        // 10 a second on one CPU: 10 at once, then one every 100 ms.
        let g = Gcra::share(10, 1);
        assert_eq!(g, Gcra { interval_ns: 100_000_000, tolerance_ns: 900_000_000 });
        let mut tat = 0;
        let t0 = 5_000_000_000;
        assert_eq!((0..20).filter(|_| g.admit(&mut tat, t0)).count(), 10);
        assert!(!g.admit(&mut tat, t0 + 99_000_000));
        assert!(g.admit(&mut tat, t0 + 100_000_000));
        // Two CPUs: each 5 a second.
        assert_eq!(Gcra::share(10, 2).interval_ns, 200_000_000);
        // Less than one a second per CPU: still one at a time, at the share's pace.
        assert_eq!(Gcra::share(1, 2), Gcra { interval_ns: 2_000_000_000, tolerance_ns: 0 });
        assert_eq!(Gcra::share(0, 2).interval_ns, 0, "no limit");
        assert!(Gcra::share(0, 2).admit(&mut 0, 0));
    }

    #[test]
    fn windows_roll_by_whole_seconds() {
        let mut s = SourceState {
            second: 7,
            packets: [5, 1],
            new_flows: [2, 0],
            drops: [1, 0],
            ..Default::default()
        };
        s.roll(8);
        assert_eq!((s.packets, s.new_flows, s.drops), ([0, 5], [0, 2], [0, 1]));
        s.packets[0] = 3;
        s.roll(10);
        assert_eq!(s.packets, [0, 0], "a second without packets in between");
    }
}
