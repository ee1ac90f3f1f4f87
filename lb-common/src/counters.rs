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
    PassFibFailed = 4, Pass, "pass_fib_failed", "no route or no neighbour entry towards the backend: passed to the stack";
    PassNoTxPort = 5, Pass, "pass_no_tx_port", "the route to the backend leaves by an interface the balancer does not manage: passed";
    DropFragmentToVip = 6, Drop, "drop_fragment_to_vip", "a fragment addressed to a VIP address: dropped (it has no ports to pick a backend by)";
    DropNoBackend = 7, Drop, "drop_no_backend", "the VIP's ring slot names no configured backend: dropped";
    DropEncapFailed = 8, Drop, "drop_encap_failed", "no room to push the tunnel header: dropped";
    ForwardTx = 9, Forward, "forward_tx", "sent to a backend out of the interface it came in on (XDP_TX)";
    ForwardRedirect = 10, Forward, "forward_redirect", "sent to a backend out of another interface (redirect)";
    IcmpEchoReply = 11, Forward, "icmp_echo_reply", "an echo request to a VIP address, answered by the balancer";
    FlowHit = 12, Event, "flow_hit", "packets whose flow was in the flow table";
    FlowMiss = 13, Event, "flow_miss", "packets that found no flow (or one of a VIP that is gone): backend picked by the VIP's scheduler";
    IcmpErrorToBackend = 14, Event, "icmp_error_to_backend", "ICMP errors quoting a VIP flow, sent to that flow's backend";
    Decapsulated = 15, Event, "decapsulated", "tunnelled packets the decap program stripped and passed on (backend hosts)";
}

impl Counter {
    /// Number of counters (`CounterBlock` slots).
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
/// packet that moves several counters looks STATS up once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterBlock {
    pub by_index: [u64; Counter::COUNT as usize],
}

impl Default for CounterBlock {
    fn default() -> Self {
        Self { by_index: [0; Counter::COUNT as usize] }
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
