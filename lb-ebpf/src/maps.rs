//! Every map of the data plane. Names and default sizes come from lb-common; the agent resizes
//! the ones marked "load time" there when it loads the programs.
use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerfEventArray},
};
use lb_common::{
    limits, AclKey, BackendValue, CaptureMeta, ConfigValue, CounterBlock, DecapConfig, DecapSource, FlowKey,
    FlowValue, PolicyCounts, SourceKey, SourceState, TrafficStats, VipKey, VipPolicy, VipSlot, VipValue,
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

/// Connection -> backend, for confirmed flows (two packets or more recorded). One table that
/// every CPU sees (a connection whose packets move to another CPU keeps its backend) with a
/// separate LRU list per CPU (BPF_F_NO_COMMON_LRU), so inserts and evictions on one CPU do not
/// contend with the others. The loader sizes it to flows_per_cpu × possible CPUs.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(limits::FLOWS_PER_CPU, BPF_F_NO_COMMON_LRU);

/// Flows with one recorded packet, waiting for their next one to enter FLOWS (see flow.rs): a
/// flood of packets that each start a flow (spoofed sources) evicts only other unconfirmed
/// flows. Same layout as FLOWS; sized to pending_flows_per_cpu × possible CPUs.
#[map(name = "PENDING_FLOWS")]
pub static PENDING_FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(limits::PENDING_FLOWS_PER_CPU, BPF_F_NO_COMMON_LRU);

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
#[map(name = "NEXT_HOPS")]
pub static NEXT_HOPS: PerCpuArray<CachedHop> = PerCpuArray::with_max_entries(limits::MAX_BACKENDS, 0);

/// A flow as FLOW_CACHE keeps it: what the forwarding path needs of its FLOWS entry and VIP.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedFlow {
    pub key: FlowKey,
    pub backend: u32,
    pub hash: u32,
    pub vip: u32,
    /// `ConfigValue::cache_generation` when cached (never 0).
    pub generation: u32,
    pub mode: u8,
    pub counted: u8,
    /// Hits since the slot was filled, wrapping: the 256th goes to FLOWS (see flow.rs).
    pub hits: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<CachedFlow>() == 64);

/// Recently used flows, per CPU, direct-mapped by a hash of the key (flow.rs): a hit costs a
/// few instructions and one cache line instead of a flow-table lookup, whose hashing and
/// scattered memory are most of a known flow's cost. Entries count only under the current
/// `cache_generation`, which the agent moves on every second (each active flow then goes
/// through FLOWS again, staying recently used there) and whenever it voids or removes flows.
///
/// CPU c owns slots c × 2^FLOW_CACHE_BITS onwards (the loader sizes the array to slots × the
/// possible CPU ids). A plain array, not a PerCpuArray: a per-CPU lookup first loads the slot's
/// per-CPU pointer from a table as large as the cache, a second random memory access (10k-flow
/// traffic ran 4–12 % slower). Mmapable only for its layout: the values then start on a page,
/// so each 64-byte slot is exactly one cache line (after the map's header they straddle two).
#[map(name = "FLOW_CACHE")]
pub static FLOW_CACHE: Array<CachedFlow> = Array::with_max_entries(limits::FLOW_CACHE_SLOTS, BPF_F_MMAPABLE);

/// log2 of FLOW_CACHE's slots per CPU, 0 for no cache: set by the loader in this program's
/// read-only data, so it always matches the FLOW_CACHE this program was loaded with (a value in
/// the pinned CONFIG could be written by a restarting agent with other limits while the old
/// program still runs, and send two CPUs to the same slots).
#[unsafe(no_mangle)]
pub static FLOW_CACHE_BITS: u8 = 0;

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
