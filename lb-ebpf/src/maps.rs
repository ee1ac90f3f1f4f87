//! Every map of the data plane. Names and default sizes come from lb-common; the agent resizes
//! the ones marked "load time" there when it loads the programs.
use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerfEventArray},
};
use lb_common::{
    limits, AclKey, BackendValue, CaptureMeta, ConfigValue, CounterBlock, DecapConfig, DecapSource,
    FlowEntry, PolicyCounts, SourceKey, SourceState, TrafficStats, VipKey, VipPolicy, VipSlot, VipValue,
};

/// Sized by the loader: two entries a VIP (its service, its address's entry).
#[map(name = "VIPS")]
pub static VIPS: HashMap<VipKey, VipValue> = HashMap::with_max_entries(limits::MAX_VIPS, 0);

/// VIPs by id: a packet of a known flow finds its VIP here, by the id its flow entry holds,
/// with a direct array load instead of a second hash-map lookup. Sized by the loader (max_vips).
#[map(name = "VIP_BY_ID")]
pub static VIP_BY_ID: Array<VipSlot> = Array::with_max_entries(limits::MAX_VIPS, 0);

/// A bit per `hash::vip_filter_bit` of every VIP address (set by the agent before the VIP's
/// entries, cleared after them): a clear bit proves the address is no VIP's.
#[map(name = "VIP_FILTER")]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(limits::VIP_FILTER_BITS / 64, 0);

/// All Maglev rings back to back; a VIP's ring starts at its `ring_offset`. Read-only here.
#[map(name = "RINGS")]
pub static RINGS: Array<u32> = Array::with_max_entries(limits::MAX_RINGS * limits::RING_SIZE, 0);

#[map(name = "BACKENDS")]
pub static BACKENDS: Array<BackendValue> = Array::with_max_entries(limits::MAX_BACKENDS, 0);

/// The flow table: connections and their backends, confirmed or waiting for their second
/// packet, in sets of FLOW_WAYS entries (lb-common/src/flow.rs; the data plane's side is
/// flow_table.rs). One table every CPU sees: a connection whose packets move to another CPU
/// keeps its backend. Sized by the loader (limits.flows). Mmapable: the values then start on a
/// page, so every 64-byte entry is one cache line and every set four neighbouring ones; user
/// space walks it through the mapping.
#[map(name = "FLOW_TABLE")]
pub static FLOW_TABLE: Array<FlowEntry> = Array::with_max_entries(limits::FLOWS, BPF_F_MMAPABLE);

/// FLOW_TABLE's sets (its entries / FLOW_WAYS): set by the loader in this program's read-only
/// data, from the size it gives the map (a pinned table of another size is refused).
#[unsafe(no_mangle)]
pub static FLOW_SETS: u32 = limits::FLOWS / lb_common::FLOW_WAYS;

#[map(name = "CONFIG")]
pub static CONFIG: Array<ConfigValue> = Array::with_max_entries(1, 0);

/// Interfaces the balancer may redirect to, keyed by ifindex.
#[map(name = "TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(limits::MAX_TX_PORTS, 0);

/// Local addresses (IPv4 in the first 4 bytes) the decap program strips tunnels for.
#[map(name = "DECAP_ADDRS")]
pub static DECAP_ADDRS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(limits::MAX_DECAP_ADDRS, 0);

/// Outer source prefixes (balancers) the decap program accepts tunnels from, when
/// DECAP_CONFIG's `check_sources` is set. Both families in one trie: see `DecapSource`.
#[map(name = "DECAP_SOURCES")]
pub static DECAP_SOURCES: LpmTrie<DecapSource, u8> = LpmTrie::with_max_entries(limits::MAX_DECAP_SOURCES, 0);

#[map(name = "DECAP_CONFIG")]
pub static DECAP_CONFIG: Array<DecapConfig> = Array::with_max_entries(1, 0);

/// Room for one bpf_fib_lookup request per CPU, off the 512-byte BPF stack.
#[map(name = "FIB_SCRATCH")]
pub static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// A backend's address and the next hop towards it from `bpf_fib_lookup`, cached per backend
/// and CPU (see forward.rs).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedHop {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub ifindex: u32,
    /// `ConfigValue::cache_generation` when it was cached.
    pub generation: u32,
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: u8,
    /// The path MTU towards the next hop (the route's, else the interface's), from the FIB.
    pub mtu: u16,
}

/// Next hops by backend id, per CPU: no locking, no torn MACs. Sized like BACKENDS.
/// This CPU's flow-table clock tick and the jiffy it was read in (flow_table.rs, `clock`).
#[map(name = "CLOCK_CACHE")]
pub static CLOCK_CACHE: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "NEXT_HOPS")]
pub static NEXT_HOPS: PerCpuArray<CachedHop> = PerCpuArray::with_max_entries(limits::MAX_BACKENDS, 0);

/// Round-robin sequences of backend ids: VIP id × RR_SEQ_LEN onwards, `VipValue::rr_len` of them
/// (see schedule.rs). Read-only here. The loader sizes it to max_rings × RR_SEQ_LEN.
#[map(name = "RR_SEQS")]
pub static RR_SEQS: Array<u32> = Array::with_max_entries(limits::MAX_RINGS * limits::RR_SEQ_LEN, 0);

/// Where each CPU is in each VIP's round-robin sequence, by VIP id.
#[map(name = "RR_CURSORS")]
pub static RR_CURSORS: PerCpuArray<u32> = PerCpuArray::with_max_entries(limits::MAX_RINGS, 0);

/// Open TCP connections by backend id, for `least-conn` VIPs: atomic adds by every CPU. Read as
/// an i64 (a correction by the agent may race a decrement below zero for a moment).
#[map(name = "ACTIVE_CONNS")]
pub static ACTIVE_CONNS: Array<u64> = Array::with_max_entries(limits::MAX_BACKENDS, 0);

/// Captured packets for `lbctl capture` (see capture.rs).
#[map(name = "CAPTURE")]
pub static CAPTURE: PerfEventArray<CaptureMeta> = PerfEventArray::new(0);

/// One entry: all global counters of a CPU (see stats.rs).
#[map(name = "STATS")]
pub static STATS: PerCpuArray<CounterBlock> = PerCpuArray::with_max_entries(1, 0);

/// Sized by the loader (max_vips).
#[map(name = "VIP_STATS")]
pub static VIP_STATS: PerCpuArray<TrafficStats> = PerCpuArray::with_max_entries(limits::MAX_VIPS, 0);

#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<TrafficStats> = PerCpuArray::with_max_entries(limits::MAX_BACKENDS, 0);

/// Access lists (see policy.rs): the global deny list (scope 0) and each VIP's allow and deny
/// lists (scope VIP id + 1), `ACL_ALLOW` or `ACL_DENY` by longest prefix.
#[map(name = "ACL")]
pub static ACL: LpmTrie<AclKey, u32> = LpmTrie::with_max_entries(limits::MAX_ACL_ENTRIES, 0);

/// Each VIP's policy by VIP id (written by the agent). Sized by the loader (max_vips).
#[map(name = "VIP_POLICY")]
pub static VIP_POLICY: Array<VipPolicy> = Array::with_max_entries(limits::MAX_VIPS, 0);

/// What the policy step refused, by VIP id and reason, per CPU. Sized by the loader (max_vips).
#[map(name = "POLICY_STATS")]
pub static POLICY_STATS: PerCpuArray<PolicyCounts> = PerCpuArray::with_max_entries(limits::MAX_VIPS, 0);

/// Per-source buckets and counts of VIPs with limits: each CPU has its own entries (the CPU is
/// in the key) and its own LRU list, so no lock or atomic is shared between CPUs.
#[map(name = "SOURCES")]
pub static SOURCES: LruHashMap<SourceKey, SourceState> =
    LruHashMap::with_max_entries(limits::TRACKED_SOURCES, BPF_F_NO_COMMON_LRU);

/// Each VIP's new-flow bucket (its theoretical arrival time), per CPU. Sized by the loader.
#[map(name = "VIP_FLOW_BUCKETS")]
pub static VIP_FLOW_BUCKETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(limits::MAX_VIPS, 0);
