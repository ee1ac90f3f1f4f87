//! The standard end-to-end topology: client, lb and backends on a bridge in a fabric namespace.
//!
//! ```text
//!   client (eth0 198.18.0.1, fd00::1)            routes the VIP prefixes via the lb
//!   lb     (eth0 198.18.0.2, fd00::2)            balancer attached natively on eth0
//!   b1..bN (eth0 198.18.0.17.., fd00::11..)      `lbd backend-host`: VIPs on lo, decap on eth0
//!      \ each eth0 is a veth whose peer is a port of bridge br0 in namespace "fabric",
//!        named after its host: "client", "lb", "b1"...
//! ```
//!
//! The hosts are set up as real ones are: addresses and routes only. What the balancer host
//! needs from the kernel (forwarding, resolved next hops) comes from lbd's own code
//! (`lb_userspace::host`), and the backend hosts run `lbd backend-host`
//! ([`Topology::start_backend_hosts`]). What only veth needs is set here, each with a comment.
//!
//! The balancer sends every packet back out of the interface it came in on (XDP_TX), so it needs
//! no TX_PORTS entry. It is attached either directly ([`Topology::start_balancer`]) or by a real
//! lbd in the lb's namespace ([`Topology::start_lbd`], with
//! [`Topology::start_lb_port_passthrough`]). Everything is removed when the [`Topology`] is
//! dropped (namespaces, and with them the veths). Drop the [`Datapath`]s and backend hosts
//! first: declare them after the topology.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    BackendValue, ConfigValue, VipKey, VipValue, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
    VIP_ADDRESS_ONLY,
};
use lb_userspace::{
    datapath::{self, Datapath, Mode, Sizes, BALANCER, DECAP},
    host::{forwarding, neighbours::NextHops},
    maglev,
};

use crate::{
    backend_host::BackendHost,
    lbd::{Lbd, LbdFiles},
    netns::{bridge, run, veth, Netns},
};

/// Ring size of the test services: prime, and small enough to write quickly (the production
/// default is `limits::RING_SIZE`).
pub const RING_SIZE: u32 = 4099;

/// Outer source of the balancer's tunnels: 198.18.1.0/24, the low 8 bits from the flow hash.
pub const TUNNEL_SRC4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 0);
/// Outer source of IPv6 tunnels: fd00:0:0:1::/112, the low 16 bits from the flow hash.
pub const TUNNEL_SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 0);
pub const HASH_SEED: u32 = 0x5eed_1b05;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// VIP number `n` (1..=254) of a family: 198.18.100.n or fd00:0:0:100::n.
pub fn vip(family: Family, n: u8) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::new(198, 18, 100, n).into(),
        Family::V6 => Ipv6Addr::new(0xfd00, 0, 0, 0x100, 0, 0, 0, n.into()).into(),
    }
}

/// One host of the topology: its namespace, whose `eth0` is a veth to the bridge.
pub struct Host {
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// MAC address of `eth0`, as `ip` prints it.
    pub mac: String,
    /// Name of the bridge port (in the fabric namespace) that is the peer of `eth0`.
    pub port: String,
}

impl Host {
    pub fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.v4.into(),
            Family::V6 => self.v6.into(),
        }
    }
}

/// A service the balancer serves for TCP and for UDP: a VIP address and port, forwarded in
/// `mode` (`MODE_IPIP` or `MODE_L2DSR`) to every backend host (by its address of the VIP's family).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    pub vip: IpAddr,
    pub port: u16,
    pub mode: u8,
}

impl Service {
    /// VIP_STATS id of service number `index` (its position in the list given to
    /// [`Topology::start_balancer`]) for `proto` (`PROTO_TCP` or `PROTO_UDP`).
    pub fn stats_id(index: usize, proto: u8) -> u32 {
        2 * index as u32 + if proto == PROTO_TCP { 1 } else { 2 }
    }
}

/// Map sizes for programs loaded only to pass frames through (or for a bench floor).
pub const TINY: Sizes = Sizes { flows: 1024, max_vips: 256, max_rings: 1, ring_stride: 251, max_backends: 2 };

pub struct Topology {
    pub client: Host,
    pub lb: Host,
    pub backends: Vec<Host>,
    /// Holds bridge `br0`. Declared last: dropped after the hosts.
    pub fabric: Netns,
}

impl Topology {
    /// Creates the namespaces, links, addresses and routes, with no XDP program attached and no
    /// backend host set up yet (see [`Topology::start_backend_hosts`],
    /// [`Topology::start_balancer`], [`Topology::start_lbd`]).
    pub fn new(backends: usize) -> Self {
        assert!((1..=50).contains(&backends), "{backends} backends: 1 to 50 fit the address plan");
        let fabric = Netns::new("fabric");
        let host = |role: &str, last: u8| {
            let ns = Netns::new(role);
            ns.skip_dad();
            veth((&ns, "eth0"), (&fabric, role));
            let v4 = Ipv4Addr::new(198, 18, 0, last);
            let v6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last.into());
            ns.addr("eth0", &format!("{v4}/24"));
            ns.addr("eth0", &format!("{v6}/64"));
            let mac = mac_of(&ns, "eth0");
            Host { ns, v4, v6, mac, port: role.to_owned() }
        };
        let client = host("client", 1);
        let lb = host("lb", 2);
        // Backends: 0x11, 0x12...: 198.18.0.17, .18... and fd00::11, fd00::12...
        let backends: Vec<Host> = (1..=backends).map(|i| host(&format!("b{i}"), 0x10 + i as u8)).collect();
        let t = Topology { client, lb, backends, fabric };
        t.wire_fabric();
        t.configure_client();
        t
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        [&self.client, &self.lb].into_iter().chain(&self.backends)
    }

    fn wire_fabric(&self) {
        let ports: Vec<&str> = self.hosts().map(|h| h.port.as_str()).collect();
        bridge(&self.fabric, "br0", &ports);
        // No multicast snooping: neighbour solicitations are flooded without waiting for MLD.
        self.fabric.ip(&["link", "set", "br0", "type", "bridge", "mcast_snooping", "0"]);
        // veth delivers frames sent by XDP (XDP_TX on the lb's eth0) only to a peer with NAPI,
        // which GRO turns on; on its own that is not enough for XDP_TX (see
        // `attach_lb_port_passthrough`). The lb's port is the only one that receives such
        // frames: the decap program on the backends passes packets to their own stack.
        ethtool(&self.fabric, &["-K", &self.lb.port, "gro", "on"]);
    }

    fn configure_client(&self) {
        let c = &self.client.ns;
        for (prefix, via) in
            [("198.18.100.0/24", self.lb.v4.to_string()), ("fd00:0:0:100::/64", self.lb.v6.to_string())]
        {
            c.ip(&["route", "add", prefix, "via", &via, "dev", "eth0"]);
        }
        // Full checksums in what the client sends. Over a veth the kernel leaves TCP and UDP
        // checksums to "the hardware" (CHECKSUM_PARTIAL: only the pseudo-header sum is in the
        // packet) and the skb carries that fact along; a frame the balancer sends with XDP_TX is
        // no skb any more, so the backend sees a bad checksum and drops the segment (without
        // this, every handshake times out). Real NICs receive complete checksums: this only
        // undoes a veth artefact.
        ethtool(c, &["-K", "eth0", "tx", "off"]);
    }

    /// Runs `lbd backend-host` on every backend (as a real backend host does): decap attached
    /// natively on `eth0`, VIPs 1 and 2 of both families on `lo`, the ARP settings. Keep the
    /// result alive as long as needed: dropping it stops them, which undoes all of it.
    pub fn start_backend_hosts(&self) -> Vec<BackendHost> {
        let vips: Vec<String> = [Family::V4, Family::V6]
            .into_iter()
            .flat_map(|f| [vip(f, 1), vip(f, 2)])
            .map(|a| format!("\"{a}\""))
            .collect();
        // The balancer's tunnel sources, entropy bits and all: anywhere in the test ranges.
        let settings = format!(
            "interfaces = [\"eth0\"]\nvips = [{}]\nallowed_sources = [\"198.18.0.0/15\", \"fd00::/8\"]\n",
            vips.join(", ")
        );
        self.backends.iter().map(|b| BackendHost::start(&b.ns, &settings)).collect()
    }

    /// Backend id of backend host `index` (0-based) for `family`: 1..=N for IPv4, N+1..=2N for IPv6.
    pub fn backend_id(&self, index: usize, family: Family) -> u32 {
        let n = self.backends.len() as u32;
        index as u32 + 1 + if family == Family::V6 { n } else { 0 }
    }

    /// Loads the programs with test-sized maps, configures them as the agent would (config,
    /// every backend of both families, one Maglev ring of [`RING_SIZE`] per service, TCP and UDP
    /// VIP entries, address entries) and attaches `balancer` natively on the lb's `eth0`.
    pub fn start_balancer(&self, services: &[Service]) -> Datapath {
        let sizes = Sizes {
            flows: 65_536,
            max_vips: 256,
            max_rings: services.len().max(1) as u32,
            ring_stride: RING_SIZE,
            max_backends: 2 * self.backends.len() as u32 + 1,
        };
        let mut dp = datapath::load_with(sizes).unwrap_or_else(|e| panic!("loading the XDP programs: {e}"));
        dp.set_config(ConfigValue {
            src_v4: TUNNEL_SRC4.octets(),
            src_v6: TUNNEL_SRC6.octets(),
            hash_seed: HASH_SEED,
            v4_entropy_bits: 8,
            v6_entropy_bits: 16,
            _pad: [0; 2],
            capture_vip: 0,
            cache_generation: 0,
        })
        .expect("set_config");
        for family in [Family::V4, Family::V6] {
            for (i, b) in self.backends.iter().enumerate() {
                dp.set_backend(
                    self.backend_id(i, family),
                    BackendValue::from(b.addr(family)).taking_new_flows(true),
                )
                .unwrap_or_else(|e| panic!("backend {}: {e}", b.addr(family)));
            }
        }
        for (index, s) in services.iter().enumerate() {
            let family = Family::of(s.vip);
            let members: Vec<maglev::Member> = (0..self.backends.len())
                .map(|i| maglev::Member::new(self.backends[i].addr(family), self.backend_id(i, family), 1))
                .collect();
            let ring_no = index as u32;
            let ring = maglev::build(&members, RING_SIZE);
            dp.write_ring(ring_no, None, &ring).unwrap_or_else(|e| panic!("ring of {s:?}: {e}"));
            let value = |id, flags| VipValue {
                id,
                flags,
                ring_offset: dp.ring_offset(ring_no),
                ring_size: RING_SIZE,
                mode: s.mode,
                scheduler: lb_common::SCHED_MAGLEV,
                rr_len: 0,
            };
            let tcp = value(Service::stats_id(index, PROTO_TCP), 0);
            let udp = value(Service::stats_id(index, PROTO_UDP), 0);
            let address = value(Service::stats_id(index, PROTO_TCP), VIP_ADDRESS_ONLY);
            let icmp = if family == Family::V4 { PROTO_ICMP } else { PROTO_ICMPV6 };
            for (key, value) in [
                (VipKey::from((s.vip, s.port, PROTO_TCP)), tcp),
                (VipKey::from((s.vip, s.port, PROTO_UDP)), udp),
                (VipKey::from((s.vip, 0, icmp)), address),
            ] {
                dp.set_vip(key, value).unwrap_or_else(|e| panic!("VIP {key:?} of {s:?}: {e}"));
            }
        }
        self.lb
            .ns
            .run(|| dp.attach(BALANCER, "eth0", Mode::Native))
            .expect("attaching the balancer on lb eth0");
        self.provide_for_the_balancer();
        // The pass-through lives as long as `dp`.
        self.attach_lb_port_passthrough(&mut dp);
        dp
    }

    /// What lbd provides a balancer it runs, for one attached without lbd: forwarding on the lb's
    /// eth0 and managed neighbour entries for every backend, resolved (lbd's own code).
    fn provide_for_the_balancer(&self) {
        let interfaces = ["eth0".to_owned()];
        let backends: std::collections::BTreeSet<IpAddr> =
            self.backends.iter().flat_map(|b| [b.addr(Family::V4), b.addr(Family::V6)]).collect();
        self.lb.ns.run(|| {
            let families = [lb_userspace::host::Family::Ipv4, lb_userspace::host::Family::Ipv6].into();
            forwarding::ensure(&interfaces, &families, forwarding::Policy::Enable)
                .expect("forwarding on the lb");
            let mut hops = NextHops::new(&interfaces).expect("next hops on the lb");
            hops.sync(&backends).expect("neighbour entries for the backends");
            hops.wait_resolved(&backends, std::time::Duration::from_secs(5)).expect("the backends' MACs");
        });
    }

    /// For a balancer attached by something else (lbd, see [`Topology::start_lbd`]): loads the
    /// programs with tiny maps and attaches the pass-through program on the lb's bridge port
    /// (see [`Topology::attach_lb_port_passthrough`]). Keep the result alive as long as the
    /// balancer runs; declare it after the topology.
    pub fn start_lb_port_passthrough(&self) -> Datapath {
        let mut dp = datapath::load_with(TINY)
            .unwrap_or_else(|e| panic!("loading the XDP programs for the pass-through: {e}"));
        self.attach_lb_port_passthrough(&mut dp);
        dp
    }

    /// Attaches `dp`'s `decap` program, with no decap address, natively on the lb's bridge port
    /// (in the fabric namespace): a pass-through that every frame crosses unchanged.
    ///
    /// GRO gives the lb's bridge port NAPI, so XDP_TX frames from the lb's `eth0` are queued to
    /// it, but veth only schedules the peer's NAPI after XDP_TX when the peer has an XDP program
    /// of its own (drivers/net/veth.c, veth_xdp_flush: "xdp_ring is initialized on receive
    /// side?"; an XDP_REDIRECT into a veth flushes regardless). Without one the frames sit in the
    /// ring until some other packet happens to schedule NAPI: in practice they are lost, and
    /// every handshake times out. `decap` with no decap address passes every frame unchanged
    /// and counts nothing. It stays attached as long as `dp` lives.
    pub fn attach_lb_port_passthrough(&self, dp: &mut Datapath) {
        self.fabric
            .run(|| dp.attach(DECAP, &self.lb.port, Mode::Native))
            .expect("attaching a pass-through program on the lb's bridge port");
    }

    /// A config for an lbd running the lb: `files`' paths and small maps, attached to the lb's
    /// `eth0`, the lb's own addresses as tunnel sources, then `vips` (TOML `[[vip]]` tables, or
    /// nothing).
    pub fn lbd_config(&self, files: &LbdFiles, vips: &str) -> String {
        let header = files.header(&["eth0"], &self.lb.v4.to_string(), &self.lb.v6.to_string());
        format!("{header}{vips}")
    }

    /// Writes [`Topology::lbd_config`] and starts lbd in the lb's namespace, where it attaches
    /// the balancer on `eth0` (pinned under `files`) and serves its API; returns once the API
    /// answers. The lb's bridge port needs [`Topology::start_lb_port_passthrough`] as well for
    /// forwarded frames to leave. Declare `files` after the topology, the [`Lbd`] after `files`.
    pub fn start_lbd(&self, files: &LbdFiles, vips: &str) -> Lbd {
        Lbd::start(&self.lb.ns, files, &self.lbd_config(files, vips))
    }
}

/// The id of the XDP program attached to `interface` in `ns`, if any.
pub fn xdp_prog_id(ns: &Netns, interface: &str) -> Option<u32> {
    let out = ns.ip(&["link", "show", "dev", interface]);
    out.split("prog/xdp id ").nth(1)?.split_whitespace().next()?.parse().ok()
}

/// MAC address of `interface` in `ns`.
pub fn mac_of(ns: &Netns, interface: &str) -> String {
    let out = ns.ip(&["-o", "link", "show", "dev", interface]);
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC address for {interface} in {}: {out}", ns.name()))
        .to_owned()
}

/// The bytes of a MAC address as `ip` prints it.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap_or_else(|e| panic!("MAC address {s}: {e}"));
    }
    mac
}

/// Runs `ethtool ARGS` inside `ns`.
pub fn ethtool(ns: &Netns, args: &[&str]) {
    run(ns.command("ethtool").args(args));
}
