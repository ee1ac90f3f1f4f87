//! The balancer as the benches configure it, the way the agent sets one up: an IPv4 and an
//! IPv6 VIP (TCP and UDP on port 80, ICMP on the address) in ipip mode, three backends each,
//! a Maglev ring of the production size, next hops cached.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    limits, BackendValue, ConfigValue, VipKey, VipValue, MODE_IPIP, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
    PROTO_UDP, VIP_ADDRESS_ONLY,
};
use lb_userspace::{
    datapath::{self, Datapath, Sizes},
    maglev,
};

pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0x100, 0, 0, 0, 1);
pub const PORT: u16 = 80;
pub const BACKENDS: u8 = 3;

/// The flow table's entries under lbd's default `[limits]` on this host: "the production table
/// size".
pub fn production_flows() -> u32 {
    let cpus = datapath::possible_cpus().unwrap_or_else(|e| panic!("possible CPUs: {e}"));
    lb_userspace::config::Limits::default().sizes(cpus).flows
}

/// Loads the benches' object with a flow table of `flows` entries (a multiple of
/// `lb_common::FLOW_WAYS`) and configures it; `backend(v6, n)` is the address of backend `n`
/// (1..=3) of the family.
pub fn load(flows: u32, backend: impl Fn(bool, u8) -> IpAddr) -> Datapath {
    let sizes = Sizes { flows, max_vips: 256, max_rings: 2, ring_stride: limits::RING_SIZE, max_backends: 8 };
    let mut dp = crate::programs::load(sizes);
    dp.set_config(ConfigValue {
        src_v4: [198, 18, 1, 0],
        src_v6: Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 0).octets(),
        hash_seed: 0x5eed_1b05,
        v4_entropy_bits: 8,
        v6_entropy_bits: 16,
        // As under lbd: next hops cached (lbd moves the generation on once a second, which
        // costs one FIB lookup per backend and CPU a second: nothing at these rates).
        cache_generation: 1,
        ..Default::default()
    })
    .expect("set_config");
    for (family, v6, vip) in [(0u32, false, IpAddr::from(VIP4)), (1, true, IpAddr::from(VIP6))] {
        let members: Vec<maglev::Member> = (1..=BACKENDS)
            .map(|n| {
                let id = n as u32 + 3 * family;
                let addr = backend(v6, n);
                dp.set_backend(id, BackendValue::from(addr).taking_new_flows(true)).expect("set_backend");
                maglev::Member::new(addr, id, 1)
            })
            .collect();
        let ring = maglev::build(&members, limits::RING_SIZE);
        dp.write_ring(family, None, &ring).expect("write_ring");
        let value = |id, flags| VipValue {
            id,
            flags,
            ring_offset: dp.ring_offset(family),
            ring_size: limits::RING_SIZE,
            mode: MODE_IPIP,
            scheduler: lb_common::SCHED_MAGLEV,
            rr_len: 0,
        };
        let icmp = if v6 { PROTO_ICMPV6 } else { PROTO_ICMP };
        let (tcp, udp) = (1 + 2 * family, 2 + 2 * family);
        for (key, value) in [
            (VipKey::from((vip, PORT, PROTO_TCP)), value(tcp, 0)),
            (VipKey::from((vip, PORT, PROTO_UDP)), value(udp, 0)),
            (VipKey::from((vip, 0, icmp)), value(tcp, VIP_ADDRESS_ONLY)),
        ] {
            dp.set_vip(key, value).expect("set_vip");
        }
        // As lbd leaves every VIP after its first apply: no lists or limits, under a policy
        // generation its confirmed flows pass once and then skip.
        for id in [tcp, udp] {
            let policy = lb_common::VipPolicy { generation: 1, ..Default::default() };
            dp.set_vip_policy(id, policy).expect("set_vip_policy");
        }
    }
    dp
}
