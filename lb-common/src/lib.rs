//! Everything both sides of the balancer must agree on, defined once.
//!
//! Map values carry no `bool`, `Option` or enum: plain integers with explicit padding and a size
//! assertion per type, so the kernel and user-space layouts cannot drift apart.
#![no_std]

mod backend;
pub mod bench;
mod config;
mod counters;
mod decap;
mod flow;
pub mod hash;
mod policy;
mod vip;

pub use backend::{BackendValue, BACKEND_TAKES_NEW_FLOWS, NO_BACKEND};
pub use config::{CaptureMeta, ConfigValue, CAPTURE_AFTER, CAPTURE_BEFORE, CAPTURE_SNAPLEN};
pub use counters::{Counter, CounterBlock, CounterKind, TrafficStats};
pub use decap::{DecapConfig, DecapSource};
pub use flow::{
    flow_clock, FlowEntry, FlowKey, FlowValue, FLOW_BUSY, FLOW_CLOCK_SHIFT, FLOW_CONFIRMED, FLOW_COUNTED,
    FLOW_FIRST_SET_ALONE, FLOW_IDLE_EVICT, FLOW_PENDING, FLOW_SEQ_MASK, FLOW_TO_COUNT, FLOW_WAYS,
};
pub use policy::{
    AclKey, Gcra, PolicyCounts, PolicyReason, SourceKey, SourceState, VipPolicy, ACL_ALLOW, ACL_DENY,
    POLICY_ACL, POLICY_GLOBAL_DENY, POLICY_PASS_OVER_LIMIT, POLICY_TRACK,
};
pub use vip::{
    VipKey, VipSlot, VipValue, FAMILY_V4, FAMILY_V6, MODE_IPIP, MODE_L2DSR, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_TCP, PROTO_UDP, SCHED_LEAST_CONN, SCHED_MAGLEV, SCHED_ROUND_ROBIN, VIP_ADDRESS_ONLY,
    VIP_HASH_SOURCE_ONLY,
};

/// The layout version of the pinned maps: an agent pins under `pin_path/<PIN_LAYOUT>` and adopts
/// only pins of its own layout. Move it on (v7 -> v8) whenever a pinned map's key or value
/// changes, and record the new layouts in [`PINNED_LAYOUTS`]: a test compares the object's
/// pinned maps with that record, so a layout cannot change under the same version.
/// (v7: STATS has room for 64 counters; v6: STATS grew by `decap_ce_not_ect`; v5: the flow
/// table.)
pub const PIN_LAYOUT: &str = "v7";

/// The pinned maps of layout [`PIN_LAYOUT`]: (name, key size, value size), as the object defines
/// them (the kernel's sizes: a value array's 8-byte alignment is not counted).
pub const PINNED_LAYOUTS: &[(&str, u32, u32)] = &[
    (map_names::ACL, 28, 4),
    (map_names::ACTIVE_CONNS, 4, 8),
    (map_names::BACKENDS, 4, 24),
    (map_names::BACKEND_STATS, 4, 24),
    (map_names::CONFIG, 4, 36),
    (map_names::DECAP_ADDRS, 16, 1),
    (map_names::DECAP_CONFIG, 4, 4),
    (map_names::DECAP_SOURCES, 24, 1),
    (map_names::FIB_SCRATCH, 4, 64),
    (map_names::FLOW_TABLE, 4, 64),
    (map_names::POLICY_STATS, 4, 40),
    (map_names::RINGS, 4, 4),
    (map_names::RR_CURSORS, 4, 4),
    (map_names::RR_SEQS, 4, 4),
    (map_names::STATS, 4, 8 * counters::CounterBlock::SLOTS as u32),
    (map_names::TX_PORTS, 4, 8),
    (map_names::VIPS, 20, 20),
    (map_names::VIP_BY_ID, 4, 24),
    (map_names::VIP_FILTER, 4, 8),
    (map_names::VIP_POLICY, 4, 72),
    (map_names::VIP_STATS, 4, 24),
];

/// Names of the maps in the eBPF object. User space looks maps up by these names.
pub mod map_names {
    pub const VIPS: &str = "VIPS";
    /// VIPs by id, with the generation that voids flows of a VIP that is gone.
    pub const VIP_BY_ID: &str = "VIP_BY_ID";
    /// A bitmap of VIP addresses (`hash::vip_filter_bit`): most traffic for other addresses is
    /// passed without a hash-map lookup.
    pub const VIP_FILTER: &str = "VIP_FILTER";
    pub const RINGS: &str = "RINGS";
    pub const BACKENDS: &str = "BACKENDS";
    /// The flow table: a set-associative array of `FlowEntry` (see lb-common/src/flow.rs).
    pub const FLOW_TABLE: &str = "FLOW_TABLE";
    pub const CONFIG: &str = "CONFIG";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    /// Outer source prefixes the decap program accepts tunnels from (an LPM trie keyed by
    /// `DecapSource`), when DECAP_CONFIG says to check them.
    pub const DECAP_SOURCES: &str = "DECAP_SOURCES";
    /// The decap program's settings (`DecapConfig`).
    pub const DECAP_CONFIG: &str = "DECAP_CONFIG";
    pub const STATS: &str = "STATS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const FIB_SCRATCH: &str = "FIB_SCRATCH";
    /// Round-robin sequences of backend ids, `limits::RR_SEQ_LEN` slots per VIP (by VIP id).
    pub const RR_SEQS: &str = "RR_SEQS";
    /// Each CPU's position in each VIP's round-robin sequence.
    pub const RR_CURSORS: &str = "RR_CURSORS";
    /// Active connections per backend id (`least-conn` VIPs), kept with atomic adds.
    pub const ACTIVE_CONNS: &str = "ACTIVE_CONNS";
    /// Per-CPU next-hop cache by backend id: per program instance, never pinned.
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    /// Perf buffer of captured packets: per program instance, never pinned.
    pub const CAPTURE: &str = "CAPTURE";
    /// Access lists, global and per VIP (an LPM trie keyed by `AclKey`).
    pub const ACL: &str = "ACL";
    /// Each VIP's lists and limits as the data plane applies them (`VipPolicy`), by VIP id.
    pub const VIP_POLICY: &str = "VIP_POLICY";
    /// Packets the policy step dropped (or passed over a limit) per VIP id and reason, per CPU.
    pub const POLICY_STATS: &str = "POLICY_STATS";
    /// Per-source buckets and counts, an entry per (VIP, source prefix, CPU): per program
    /// instance, never pinned (a new program starts every source with a full bucket).
    pub const SOURCES: &str = "SOURCES";
    /// Each VIP's new-flow bucket, per CPU: per program instance, never pinned.
    pub const VIP_FLOW_BUCKETS: &str = "VIP_FLOW_BUCKETS";
    /// Each CPU's flow-table clock tick and the jiffy it was read in: per program instance,
    /// never pinned.
    pub const CLOCK_CACHE: &str = "CLOCK_CACHE";
    /// The maps of a program instance: a new agent's programs start with new ones.
    pub const UNPINNED: [&str; 5] = [NEXT_HOPS, CAPTURE, SOURCES, VIP_FLOW_BUCKETS, CLOCK_CACHE];
    /// The maps the decap program uses: what a backend host pins.
    pub const DECAP: [&str; 4] = [DECAP_ADDRS, DECAP_SOURCES, DECAP_CONFIG, STATS];
    /// Every map that outlives the agent, for pinning.
    pub const ALL: [&str; 21] = [
        VIPS,
        VIP_BY_ID,
        VIP_FILTER,
        RINGS,
        BACKENDS,
        FLOW_TABLE,
        CONFIG,
        TX_PORTS,
        DECAP_ADDRS,
        DECAP_SOURCES,
        DECAP_CONFIG,
        STATS,
        VIP_STATS,
        BACKEND_STATS,
        FIB_SCRATCH,
        RR_SEQS,
        RR_CURSORS,
        ACTIVE_CONNS,
        ACL,
        VIP_POLICY,
        POLICY_STATS,
    ];
}

/// Default map sizes, compiled into the object. The agent may change the ones marked
/// "load time" when it loads the programs (aya's `EbpfLoader::set_max_entries`).
pub mod limits {
    /// VIP map entries: one per (address, port, protocol), plus one address entry per VIP address.
    pub const MAX_VIPS: u32 = 1024;
    /// Bits of VIP_FILTER (a power of two): with 1024 VIP addresses, 1.6 % of other addresses
    /// share a bit with one and take the VIP lookup.
    pub const VIP_FILTER_BITS: u32 = 1 << 16;
    /// Backend ids are 1..MAX_BACKENDS (0 means "no backend"). Load time.
    pub const MAX_BACKENDS: u32 = 4096;
    /// Default and largest Maglev ring size: prime, so every backend's permutation covers it.
    pub const RING_SIZE: u32 = 65_537;
    /// Rings the RINGS array holds at RING_SIZE slots each (the kernel stores array values in
    /// 8 bytes: 0.5 MiB a ring, 32 MiB for 64). Load time.
    pub const MAX_RINGS: u32 = 64;
    /// Flows the table holds, all CPUs together (`limits.flows`'s default), confirmed or
    /// waiting for their second packet: 64 bytes each (64 MiB at this default). Load time.
    pub const FLOWS: u32 = 1 << 20;
    /// The most flows `limits.flows` may ask for (8 GiB of table).
    pub const MAX_FLOWS: u32 = 1 << 27;
    /// Interfaces the balancer can redirect to (devmap keyed by ifindex). Load time.
    pub const MAX_TX_PORTS: u32 = 64;
    /// Local addresses the decap program accepts tunnels for. Load time.
    pub const MAX_DECAP_ADDRS: u32 = 64;
    /// Outer source prefixes the decap program accepts tunnels from.
    pub const MAX_DECAP_SOURCES: u32 = 256;
    /// Slots of one VIP's round-robin sequence in RR_SEQS (which holds one per ring): the most
    /// backends a round-robin VIP takes, and the longest cycle of its weights (longer ones are
    /// scaled down to it).
    pub const RR_SEQ_LEN: u32 = 4096;
    /// Entries of the access lists (global and every VIP's, with a catch-all entry per VIP that
    /// has an allow list): allocated as they are added (about 100 bytes each).
    pub const MAX_ACL_ENTRIES: u32 = 1 << 18;
    /// Per-source entries (VIP, source prefix, CPU) of VIPs with `[vip.limits]`, each CPU
    /// evicting its own least recently used (about 150 bytes each).
    pub const TRACKED_SOURCES: u32 = 1 << 18;
}
