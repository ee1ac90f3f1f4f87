/// Global per-CPU counters, one slot each in the `STATS` array.
///
/// Every packet the balancer sees moves exactly one counter: metric names, CLI columns and docs
/// derive from this list (`ALL`, `name`, `help`), never from a second one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed to the stack.
    PassNotIp = 0,
    /// A header was cut short or inconsistent: passed to the stack, which drops or answers it.
    PassMalformed = 1,
    /// Addressed to no VIP: passed to the stack.
    PassNotVip = 2,
    /// A fragment (no ports to match): passed to the stack.
    PassFragment = 3,
    /// Matched a VIP that has no forwarding yet: passed to the stack.
    PassVipNoForwarding = 4,
}

impl Counter {
    pub const ALL: [Counter; 5] = [
        Counter::PassNotIp,
        Counter::PassMalformed,
        Counter::PassNotVip,
        Counter::PassFragment,
        Counter::PassVipNoForwarding,
    ];
    /// Number of slots the `STATS` array needs.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Snake-case name used in metrics and CLI output.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassMalformed => "pass_malformed",
            Counter::PassNotVip => "pass_not_vip",
            Counter::PassFragment => "pass_fragment",
            Counter::PassVipNoForwarding => "pass_vip_no_forwarding",
        }
    }
}

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
