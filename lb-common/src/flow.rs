//! The flow table (FLOW_TABLE): connections and the backend each is pinned to, in a
//! set-associative array the data plane manages itself (lb-ebpf/src/flow_table.rs).
//!
//! Sets of [`FLOW_WAYS`] entries, 64 bytes each (one cache line), a set's lines side by side.
//! A flow has two sets ([`crate::hash::flow_sets`]) and is looked for in its first, then its
//! second: a known flow costs one set's lines (its second set's too when it was recorded there),
//! a miss (a SYN) both sets'. A new flow takes its own old entry, else an empty one, else the
//! unconfirmed flow used longest ago, else the confirmed flow used longest ago if that one has
//! been idle for [`FLOW_IDLE_EVICT`] clock ticks: a flood of packets that each start a flow never
//! evicts a connection that was active in the last second. An empty way is taken from the
//! first set while that holds under [`FLOW_FIRST_SET_ALONE`] flows, else from the set that holds
//! fewer. An unconfirmed or idle flow's way is taken oldest first, but not from a set where
//! [`FLOW_FIRST_SET_ALONE`] ways hold active connections while the other set has fewer: entries
//! are freed only by being taken, so a busy table runs full of finished connections, and what
//! turns new flows away is a set whose every way holds an active one. With half the entries held
//! by active connections in a full table, 0.3 % of new flows find all eight ways taken, against
//! 0.8-1.2 % when the age alone chose (tests/tests/xdp_flow_table.rs, on the data plane).
//!
//! An entry is written whole by one CPU at a time: the writer claims it by setting
//! [`FLOW_BUSY`] with an atomic compare-and-exchange of `ctl` (which also moves the write
//! sequence on), writes key and value, then stores `ctl` without the bit. A reader reads `ctl`,
//! the key and the value, then `ctl` again, and takes the entry only if neither read saw the
//! bit and both saw the same sequence: nothing is read torn. (Plain loads in program order, as
//! x86 keeps them: the balancer's hosts.) Fields written in place by any CPU (the use time, the
//! policy stamp, the state and count bits) are single aligned words.

/// A connection as the client sends it: the flow table's key, and the input of the flow hash.
/// IPv4 addresses sit in the first four bytes, the rest zero. Ports in host byte order.
/// 8-byte aligned (no padding: 40 bytes), so that the data plane compares and hashes it as five
/// 64-bit words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Ways of a flow-table set: four 64-byte lines side by side.
pub const FLOW_WAYS: u32 = 4;

/// A new flow takes an empty way of its first set while that set holds fewer flows than this;
/// past it, of the set that holds fewer. (By simulation of a table filling to half: 10 % of
/// flows in their second set and 0.03 % turned away; with the first set always first, 4 % and
/// 0.4 %; with the emptier set always, 27 % and 0.003 %.) And a set where this many ways hold
/// active connections gives up no unconfirmed or idle way while the other set has fewer.
pub const FLOW_FIRST_SET_ALONE: u32 = 3;

/// One way of the flow table: a flow's key and the backend it is pinned to. Generations are
/// kept as their low 16 bits (a flow of an id reused 65,536 times over would pass as current:
/// ids are reused once per VIP or backend removal).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub key: FlowKey,
    pub backend: u32,
    /// The flow hash: a packet of a known flow needs no hashing (the tunnel source's entropy
    /// bits come from it).
    pub hash: u32,
    /// `VipValue::id` of the flow's VIP: a known flow needs no VIP lookup.
    pub vip: u16,
    /// `VipSlot::generation` of that VIP when the flow was recorded: the flow is void once the
    /// VIP is removed or its id goes to another VIP (the agent moves the generation on).
    pub vip_generation: u16,
    /// `BackendValue::generation` of `backend` when the flow was recorded.
    pub backend_generation: u16,
    /// `VipPolicy::generation` of the flow's VIP when one of its packets last passed the policy
    /// checks (lb-ebpf/src/policy.rs), its low 16 bits; 0 for none since it was recorded, or
    /// forgotten by lbd's census once stale. A confirmed flow whose stamp is its VIP's current
    /// generation skips the checks.
    pub policy_generation: u16,
    /// The write sequence, [`FLOW_BUSY`], the state and flags (`FLOW_*`) in the low 32 bits,
    /// and the clock tick of the flow's last packet ([`flow_clock`]) in the high 32.
    pub ctl: u64,
}
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 64);

/// `FlowEntry::ctl`: the write sequence, moved on by every writer.
pub const FLOW_SEQ_MASK: u64 = 0xffff;
/// `FlowEntry::ctl`: a writer is writing the entry (readers skip it).
pub const FLOW_BUSY: u64 = 1 << 16;
/// `FlowEntry::ctl`: the entry holds a flow with one recorded packet, waiting for its next.
pub const FLOW_PENDING: u64 = 1 << 17;
/// `FlowEntry::ctl`: the entry holds a confirmed flow (two packets or more recorded).
pub const FLOW_CONFIRMED: u64 = 1 << 18;
/// `FlowEntry::ctl`: an open TCP connection of a `least-conn` VIP, counted in its backend's
/// ACTIVE_CONNS entry; cleared (and the count decremented) by the first FIN or RST the client
/// sends, when the entry is taken by another flow, or by lbd's census once the connection has
/// had no packet for 15 minutes (lbd then lowers the count).
pub const FLOW_COUNTED: u64 = 1 << 19;
/// `FlowEntry::ctl`: an unconfirmed flow of a `least-conn` VIP: counted when confirmed.
pub const FLOW_TO_COUNT: u64 = 1 << 20;
/// `FlowEntry::ctl`: where the clock tick sits.
pub const FLOW_CLOCK_SHIFT: u32 = 32;
/// Clock ticks a confirmed flow must have been idle before a new flow may take its entry.
pub const FLOW_IDLE_EVICT: u32 = 2;

/// The flow table's clock tick of a CLOCK_MONOTONIC time in nanoseconds: 2^30 ns (1.07 s).
pub const fn flow_clock(monotonic_ns: u64) -> u32 {
    (monotonic_ns >> 30) as u32
}

impl FlowEntry {
    /// Whether the entry holds a flow (pending or confirmed) that no writer is writing.
    pub fn holds_flow(&self) -> bool {
        self.ctl & FLOW_BUSY == 0 && self.ctl & (FLOW_PENDING | FLOW_CONFIRMED) != 0
    }

    pub fn confirmed(&self) -> bool {
        self.ctl & FLOW_CONFIRMED != 0
    }

    /// The flow as user space reads it.
    pub fn value(&self) -> FlowValue {
        FlowValue {
            backend: self.backend,
            hash: self.hash,
            vip: self.vip as u32,
            vip_generation: self.vip_generation,
            backend_generation: self.backend_generation,
            policy_generation: self.policy_generation,
            counted: self.ctl & FLOW_COUNTED != 0,
            last_tick: (self.ctl >> FLOW_CLOCK_SHIFT) as u32,
        }
    }
}

/// A flow's backend and bookkeeping, as user space reads it from a [`FlowEntry`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub backend: u32,
    pub hash: u32,
    pub vip: u32,
    /// Low 16 bits of the VIP's generation when the flow was recorded.
    pub vip_generation: u16,
    /// Low 16 bits of the backend's generation when the flow was recorded.
    pub backend_generation: u16,
    pub policy_generation: u16,
    /// An open connection counted in its backend's ACTIVE_CONNS entry.
    pub counted: bool,
    /// The clock tick ([`flow_clock`]) of the flow's last packet.
    pub last_tick: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain integers and byte arrays without padding (sizes asserted above).
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowEntry {}
}
