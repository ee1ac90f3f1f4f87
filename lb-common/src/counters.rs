/// Whether a counter tells what happened to a packet (each packet moves exactly one verdict
/// counter) or counts an event on the way (flow-table hits, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    Pass,
    Drop,
    Forward,
    Event,
}

macro_rules! counters {
    ($($variant:ident = $index:literal, $kind:ident, $name:literal, $help:literal;)*) => {
        /// Global per-CPU counters, one slot each in STATS's `CounterBlock`.
        ///
        /// Metric names, CLI columns and docs derive from this list (`ALL`, `name`, `help`),
        /// never from a second one.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $($variant = $index,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            /// Snake-case name used in metrics and CLI output.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }

            /// One line for operators.
            pub const fn help(self) -> &'static str {
                match self { $(Counter::$variant => $help,)* }
            }

            pub const fn kind(self) -> CounterKind {
                match self { $(Counter::$variant => CounterKind::$kind,)* }
            }
        }
    };
}

counters! {
    PassNotIp = 0, Pass, "pass_not_ip", "not IPv4 or IPv6 (ARP, LLDP, VLAN-tagged...): passed to the stack";
    PassMalformed = 1, Pass, "pass_malformed", "a header cut short or inconsistent: passed to the stack";
    PassNotVip = 2, Pass, "pass_not_vip", "addressed to no VIP: passed to the stack";
    PassFragment = 3, Pass, "pass_fragment", "a fragment not addressed to a VIP address: passed to the stack";
    PassFwdDisabled = 4, Pass, "pass_fwd_disabled", "forwarding is off on the interface the packet came in on (sysctl net.ipv4/ipv6.conf.IF.forwarding): passed; lbd turns it on unless host.forwarding = \"check\"";
    PassNoNeigh = 5, Pass, "pass_no_neigh", "the next hop towards the backend has no resolved neighbour entry (MAC) yet: passed (lbd keeps next hops resolved)";
    PassNoRoute = 6, Pass, "pass_no_route", "no usable route to the backend (unreachable, blackhole, prohibit, or a local address): passed";
    PassFibOther = 7, Pass, "pass_fib_other", "the kernel's route lookup failed for another reason (a lightweight-tunnel route, no source address): passed";
    PassNoTxPort = 8, Pass, "pass_no_tx_port", "the route to the backend leaves by an interface the balancer does not manage: passed";
    DropFragmentToVip = 9, Drop, "drop_fragment_to_vip", "a fragment addressed to a VIP address: dropped (it has no ports to pick a backend by)";
    DropNoBackend = 10, Drop, "drop_no_backend", "the VIP's ring slot names no configured backend: dropped";
    DropEncapFailed = 11, Drop, "drop_encap_failed", "no room to push the tunnel header: dropped";
    DropTooBig = 12, Drop, "drop_too_big", "larger than the path MTU towards the backend (with the tunnel header) and fragmenting allowed (IPv4 without DF): dropped, the balancer does not fragment; or with DF (IPv6) but from a source no ICMP error may go to (unspecified, loopback, multicast, broadcast): dropped unanswered";
    ForwardTx = 13, Forward, "forward_tx", "sent to a backend out of the interface it came in on (XDP_TX)";
    ForwardRedirect = 14, Forward, "forward_redirect", "sent to a backend out of another interface (redirect)";
    IcmpEchoReply = 15, Forward, "icmp_echo_reply", "an echo request to a VIP address, answered by the balancer";
    IcmpTooBig = 16, Forward, "icmp_too_big", "larger than the path MTU towards the backend (with the tunnel header), IPv4 with DF or IPv6: answered with ICMP fragmentation needed / ICMPv6 packet too big";
    FlowHit = 17, Event, "flow_hit", "packets whose flow was in the flow table";
    FlowMiss = 18, Event, "flow_miss", "packets that found no flow (or one of a VIP that is gone): backend picked by the VIP's scheduler";
    FlowPending = 19, Event, "flow_pending", "flows recorded unconfirmed (their first recorded packet): a flood of one-packet flows evicts only unconfirmed flows and idle connections";
    FlowConfirmed = 20, Event, "flow_confirmed", "unconfirmed flows whose next packet came: confirmed";
    SynRescheduled = 21, Event, "syn_rescheduled", "SYNs that found an earlier connection's flow pinned to a backend that takes no new flows (drained, down, removed): scheduled anew";
    IcmpErrorToBackend = 22, Event, "icmp_error_to_backend", "ICMP errors quoting a VIP flow, sent to that flow's backend";
    Decapsulated = 23, Event, "decapsulated", "tunnelled packets the decap program stripped and passed on (backend hosts)";
    DecapRefused = 24, Drop, "decap_refused", "tunnels from an outer source outside the backend host's allowed_sources, and packets to the host from such a source whose headers the program cannot walk (they may hide a tunnel): dropped (backend hosts)";
    DecapFragment = 25, Pass, "decap_fragment", "fragments of tunnel packets: passed unstripped to the stack, which reassembles (backend hosts)";
    DropAcl = 26, Drop, "drop_acl", "from a source the global deny list or the VIP's access lists refuse: dropped before its flow is recorded (a SYN before any flow lookup); and ICMP to a VIP address from a source the global deny list refuses";
    DropRateNewFlows = 27, Drop, "drop_rate_new_flows", "a new flow over its source's new-flows-a-second limit (vip.limits.new_flows_per_source): dropped";
    DropRatePackets = 28, Drop, "drop_rate_packets", "over its source's packets-a-second limit (vip.limits.packets_per_source): dropped";
    DropVipNewFlowCap = 29, Drop, "drop_vip_new_flow_cap", "a new flow over the VIP's new-flows-a-second cap (vip.limits.new_flows): dropped";
    PassRateLimited = 30, Pass, "pass_rate_limited", "a new TCP flow over a new-flow limit of a VIP with limits.over_limit = \"pass\": passed to the stack";
    FlowEvicted = 31, Event, "flow_evicted", "confirmed flows whose entry a new flow took (idle for two of the table's 1.07-s clock ticks or more, the longest idle of their two sets, a set crowded with active connections last): how a full table makes room, and mostly finished connections (normal); a connection still open is scheduled again by its next packet. A too-small limits.flows shows as flow_not_recorded";
    FlowNotRecorded = 32, Event, "flow_not_recorded", "new flows not recorded: every entry of their two sets held a connection active in the last two clock ticks (about 2 s), or another CPU wrote the chosen entry first; their next packet is scheduled again (a UDP flow's packets are then no new flows, to the new-flow limits or the stats); many mean limits.flows is too small";
    DecapCeNotEct = 33, Drop, "decap_ce_not_ect", "tunnels whose outer header a switch marked congestion experienced (CE) around an inner packet that is not ECN-capable: dropped, as RFC 6040 says (a drop is the congestion signal its sender understands) (backend hosts)";
    DropTcpFlags = 34, Drop, "drop_tcp_flags", "a TCP segment to a VIP whose flags no connection sends (SYN with FIN or RST; none of SYN, ACK and RST, as null, FIN and Xmas scans send): dropped before the policy checks and the flow table";
    FlowMidstream = 35, Event, "flow_midstream", "TCP flows recorded at a packet that was no SYN: connections that opened through another balancer host (a failover, an ECMP change), or a flood of ACKs (which takes only entries of unconfirmed flows and of connections idle for two clock ticks)";
    PassLinkGroup = 36, Pass, "pass_link_group", "addressed to a VIP, in a frame to a link-layer broadcast or multicast address: passed to the stack (a router forwards none, RFC 1812 5.3.4: each balancer on the segment would send a copy, and an echo reply would carry the group address as its source)";
    DropIcmpSource = 37, Drop, "drop_icmp_source", "an echo request to a VIP address from a source no reply may go to (0/8, 127/8, 224/4, 240/4; ::, ::1, ff00::/8): dropped unanswered (RFC 1812 4.3.2.7)";
}

impl Counter {
    /// Number of counters (the `CounterBlock` slots in use).
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn index(self) -> u32 {
        self as u32
    }
}

/// Per-VIP and per-backend counters (VIP_STATS, BACKEND_STATS), per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<TrafficStats>() == 24);

#[cfg(feature = "user")]
// SAFETY: plain integers (size asserted above).
unsafe impl aya::Pod for TrafficStats {}

/// STATS's one value, per CPU: every global counter, by `Counter::index`. One entry, so that a
/// packet that moves several counters looks STATS up once. Room for [`CounterBlock::SLOTS`]
/// counters, more than there are: a new counter takes a free slot and leaves the pinned map's
/// layout as it was.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterBlock {
    pub by_index: [u64; CounterBlock::SLOTS],
}

impl CounterBlock {
    pub const SLOTS: usize = 64;
}
const _: () = assert!(Counter::COUNT as usize <= CounterBlock::SLOTS);

impl Default for CounterBlock {
    fn default() -> Self {
        Self { by_index: [0; CounterBlock::SLOTS] }
    }
}

#[cfg(feature = "user")]
// SAFETY: an array of integers.
unsafe impl aya::Pod for CounterBlock {}

#[cfg(test)]
mod tests {
    use super::Counter;

    #[test]
    fn all_lists_every_counter_at_its_own_index() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i, "{} is out of place in Counter::ALL", c.name());
        }
    }
}
