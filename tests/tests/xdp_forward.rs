//! The balancer forwarding packets, branch by branch, IPv4 and IPv6: verdict, exact output bytes
//! (built independently from the spec in `lb_tests::frames::expect`), counters and per-VIP /
//! per-backend stats. Runs in a [`Fixture`] namespace so that every FIB answer is fixed.
use std::{collections::HashMap, net::IpAddr};

use lb_common::{
    hash, ConfigValue, Counter, FlowKey, TrafficStats, MODE_IPIP, MODE_L2DSR, PROTO_TCP, PROTO_UDP,
    VIP_HASH_SOURCE_ONLY,
};
use lb_tests::{
    frames::{self, addr::*, describe, expect, flow_key, Ext, L4},
    xdp::{fixture::*, Fixture, Verdict, XdpRunner},
};
use lb_userspace::datapath::Sizes;

const SIZES: Sizes =
    Sizes { flows: 16_384, max_vips: 256, max_rings: 10, ring_stride: 1031, max_backends: 64 };
/// Ring size of every VIP here (prime).
const RING: u32 = 1031;

const CONFIG: ConfigValue = ConfigValue {
    src_v4: [198, 18, 9, 0xa5],
    src_v6: [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa5, 0xa5],
    hash_seed: 0x5eed_1234,
    v4_entropy_bits: 8,
    v6_entropy_bits: 16,
    _pad: [0; 2],
    capture_vip: 0,
    cache_generation: 0,
};

fn vip4(n: u8) -> IpAddr {
    std::net::Ipv4Addr::new(198, 18, 100, n).into()
}
fn vip6(n: u8) -> IpAddr {
    std::net::Ipv6Addr::new(0xfd00, 0, 0, 100, 0, 0, 0, n.into()).into()
}
fn vip(v6: bool, n: u8) -> IpAddr {
    if v6 {
        vip6(n)
    } else {
        vip4(n)
    }
}
fn client(v6: bool) -> IpAddr {
    if v6 {
        CLIENT6.into()
    } else {
        CLIENT4.into()
    }
}
fn other(v6: bool) -> IpAddr {
    if v6 {
        OTHER6.into()
    } else {
        OTHER4.into()
    }
}
/// A router sending ICMP errors.
fn router(v6: bool) -> IpAddr {
    if v6 {
        std::net::Ipv6Addr::new(0xfd00, 5, 0, 0, 0, 0, 0, 1).into()
    } else {
        std::net::Ipv4Addr::new(198, 18, 5, 1).into()
    }
}

/// VIP address numbers (`vip4(n)` / `vip6(n)`) by role.
mod at {
    pub const MAIN: u8 = 1; // :80 TCP and :53 UDP
    pub const ANY: u8 = 2; // any port, TCP and UDP; :443 TCP has its own (l2dsr) entry
    pub const SOURCE: u8 = 3; // :80 TCP, source hash
    pub const L2DSR: u8 = 4; // :80 TCP, l2dsr
    pub const FAR: u8 = 5; // :80 TCP, backends behind eth1
    pub const FIB_FAIL: u8 = 6; // :80 TCP, backends without neighbour / route
    pub const EMPTY: u8 = 7; // :80 TCP, ring of NO_BACKEND
    pub const UNSET: u8 = 8; // :80 TCP, ring naming a backend id never set
    pub const TOO_BIG: u8 = 9; // :80 TCP, ring naming an id >= max_backends
    pub const MISMATCH: u8 = 10; // :80 TCP, ring of the other family's backends
    pub const NO_ENTRY: u8 = 20; // :80 TCP, no address entry
}

#[derive(Clone, Debug)]
struct Vip {
    id: u32,
    addr: IpAddr,
    port: u16,
    protos: &'static [u8],
    ring: u32,
    mode: u8,
    flags: u32,
    address_entry: bool,
}

/// The configuration the tests install, and the predictions the spec makes from it.
struct Net {
    config: ConfigValue,
    rings: HashMap<u32, Vec<u32>>,
    backends: HashMap<u32, IpAddr>,
    vips: Vec<Vip>,
}

/// Backends (id, address) of ring `ring`.
fn ring_backends(ring: u32) -> Vec<(u32, IpAddr)> {
    match ring {
        0 => vec![(1, near4(1)), (2, near4(2)), (3, routed4(1))],
        1 => vec![(4, near6(1)), (5, near6(2)), (6, routed6(1))],
        2 => vec![(7, far4(1)), (8, far4(2))],
        3 => vec![(9, far6(1)), (10, far6(2))],
        4 => vec![(11, NO_NEIGH4.into()), (12, NO_ROUTE4.into())],
        5 => vec![(13, NO_NEIGH6.into()), (14, NO_ROUTE6.into())],
        _ => vec![],
    }
}
const EMPTY_RING: u32 = 6;
const UNSET_RING: u32 = 7;
const UNSET_ID: u32 = 40;
const TOO_BIG_RING: u32 = 8;
const TOO_BIG_ID: u32 = 100;

fn vips() -> Vec<Vip> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let f = u32::from(v6) * 100; // ids: v4 1.., v6 101..
        let main_ring = u32::from(v6);
        let v = |id: u32, n: u8, port: u16, protos: &'static [u8], ring: u32, mode: u8, flags: u32| Vip {
            id: f + id,
            addr: vip(v6, n),
            port,
            protos,
            ring,
            mode,
            flags,
            address_entry: n != at::NO_ENTRY,
        };
        out.extend([
            v(1, at::MAIN, 80, &[PROTO_TCP], main_ring, MODE_IPIP, 0),
            v(2, at::MAIN, 53, &[PROTO_UDP], main_ring, MODE_IPIP, 0),
            v(3, at::ANY, 0, &[PROTO_TCP, PROTO_UDP], main_ring, MODE_IPIP, 0),
            v(4, at::ANY, 443, &[PROTO_TCP], main_ring, MODE_L2DSR, 0),
            v(5, at::SOURCE, 80, &[PROTO_TCP], main_ring, MODE_IPIP, VIP_HASH_SOURCE_ONLY),
            v(6, at::L2DSR, 80, &[PROTO_TCP], main_ring, MODE_L2DSR, 0),
            v(7, at::FAR, 80, &[PROTO_TCP], 2 + main_ring, MODE_IPIP, 0),
            v(8, at::FIB_FAIL, 80, &[PROTO_TCP], 4 + main_ring, MODE_IPIP, 0),
            v(9, at::EMPTY, 80, &[PROTO_TCP], EMPTY_RING, MODE_IPIP, 0),
            v(10, at::UNSET, 80, &[PROTO_TCP], UNSET_RING, MODE_IPIP, 0),
            v(11, at::TOO_BIG, 80, &[PROTO_TCP], TOO_BIG_RING, MODE_IPIP, 0),
            v(12, at::MISMATCH, 80, &[PROTO_TCP], 1 - main_ring, MODE_IPIP, 0),
            v(13, at::NO_ENTRY, 80, &[PROTO_TCP], main_ring, MODE_IPIP, 0),
        ]);
    }
    out
}

impl Net {
    /// Installs everything, as the agent would: config, backends, rings, VIPs, address entries.
    fn install(r: &mut XdpRunner) -> Net {
        r.set_config(CONFIG);
        let mut rings = HashMap::new();
        let mut backends = HashMap::new();
        for ring in 0..6 {
            let members = ring_backends(ring);
            backends.extend(members.iter().copied());
            rings.insert(ring, r.install_ring(ring, &members, RING));
        }
        rings.insert(EMPTY_RING, r.install_ring(EMPTY_RING, &[], RING));
        for (ring, id) in [(UNSET_RING, UNSET_ID), (TOO_BIG_RING, TOO_BIG_ID)] {
            let table = vec![id; RING as usize];
            r.write_ring(ring, None, &table);
            rings.insert(ring, table);
        }
        let vips = vips();
        for v in &vips {
            let value = r.vip_value(v.id, v.ring, RING, v.mode, v.flags);
            r.install_vip(v.addr, v.port, v.protos, value);
            if v.address_entry {
                r.install_address_entry(v.addr, value);
            }
        }
        Net { config: CONFIG, rings, backends, vips }
    }

    /// The VIP a packet matches: the port entry, then the any-port entry.
    fn vip(&self, dst: IpAddr, dport: u16, proto: u8) -> &Vip {
        let find =
            |port| self.vips.iter().find(|v| v.addr == dst && v.port == port && v.protos.contains(&proto));
        find(dport).or_else(|| find(0)).unwrap_or_else(|| panic!("no VIP for {dst}:{dport}/{proto}"))
    }

    fn hash(&self, vip: &Vip, key: &FlowKey) -> u32 {
        if vip.flags & VIP_HASH_SOURCE_ONLY != 0 {
            hash::source(key, self.config.hash_seed)
        } else {
            hash::flow(key, self.config.hash_seed)
        }
    }

    /// The backend id the ring gives a new flow.
    fn pick(&self, vip: &Vip, key: &FlowKey) -> u32 {
        let ring = &self.rings[&vip.ring];
        ring[hash::ring_slot(self.hash(vip, key), RING) as usize]
    }

    /// The frame the balancer should send for `input` of flow `key` going to `backend`, and the
    /// verdict; for source-hash VIPs also the frame with entropy from the 5-tuple hash (the spec
    /// says "the flow hash" there, which could mean either).
    fn forwarded(
        &self,
        vip: &Vip,
        key: &FlowKey,
        backend: u32,
        input: &[u8],
    ) -> (Verdict, Vec<u8>, Option<Vec<u8>>) {
        let addr = self.backends[&backend];
        let (far, mac) = next_hop(addr).expect("a reachable backend");
        let src_mac = if far { ETH1_MAC } else { ETH0_MAC };
        let verdict = if far { Verdict::Redirect } else { Verdict::Tx };
        if vip.mode == MODE_L2DSR {
            return (verdict, expect::mac_rewritten(input, mac, src_mac), None);
        }
        let encap = |h: u32| {
            let src = expect::outer_source(&self.config, addr.is_ipv6(), h);
            expect::encapsulated(input, mac, src_mac, src, addr, h)
        };
        let alt =
            (vip.flags & VIP_HASH_SOURCE_ONLY != 0).then(|| encap(hash::flow(key, self.config.hash_seed)));
        (verdict, encap(self.hash(vip, key)), alt)
    }
}

/// Failures collected over a table, reported together.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }

    fn frame(&mut self, case: &str, got: &[u8], want: &[u8]) {
        self.check(got == want, || {
            format!("{case}: output frame differs\n want {}\n got  {}", describe(want), describe(got))
        });
    }

    /// Every counter moved by exactly as many as `want` names it, except those in `dont_care`.
    fn counters(
        &mut self,
        case: &str,
        before: &[u64],
        after: &[u64],
        want: &[Counter],
        dont_care: &[Counter],
    ) {
        for (i, c) in Counter::ALL.iter().enumerate() {
            if dont_care.contains(c) {
                continue;
            }
            let moved = after[i] - before[i];
            let w = want.iter().filter(|x| *x == c).count() as u64;
            self.check(moved == w, || format!("{case}: counter {} moved by {moved}, expected {w}", c.name()));
        }
    }

    fn stats(
        &mut self,
        case: &str,
        what: &str,
        before: TrafficStats,
        after: TrafficStats,
        want: TrafficStats,
    ) {
        let moved = TrafficStats {
            packets: after.packets - before.packets,
            bytes: after.bytes - before.bytes,
            new_flows: after.new_flows - before.new_flows,
        };
        self.check(moved == want, || format!("{case}: {what} moved by {moved:?}, expected {want:?}"));
    }

    fn finish(self, what: &str) {
        assert!(self.0.is_empty(), "{what}: {} failure(s):\n{}", self.0.len(), self.0.join("\n"));
    }
}

/// A packet of a TCP or UDP flow towards a VIP.
struct Flow {
    name: String,
    /// Its first packet (a TCP SYN or a UDP datagram).
    frame: Vec<u8>,
    /// Any later packet (a TCP ACK, or the same datagram again).
    next: Vec<u8>,
    key: FlowKey,
}

impl Flow {
    /// The same flow with `edit` applied to each of its frames.
    fn edit(self, edit: impl Fn(Vec<u8>) -> Vec<u8>) -> Flow {
        Flow { frame: edit(self.frame), next: edit(self.next), ..self }
    }
}

fn flow(name: impl Into<String>, src: IpAddr, sport: u16, dst: IpAddr, dport: u16, l4: L4) -> Flow {
    let (proto, next) = match l4 {
        L4::TcpSyn | L4::TcpAck => (PROTO_TCP, L4::TcpAck),
        L4::Udp => (PROTO_UDP, L4::Udp),
    };
    Flow {
        name: name.into(),
        frame: frames::frame(src, sport, dst, dport, l4),
        next: frames::frame(src, sport, dst, dport, next),
        key: flow_key(src, sport, dst, dport, proto),
    }
}

fn ip_of(b: [u8; 16], v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from(b)
    } else {
        IpAddr::from([b[0], b[1], b[2], b[3]])
    }
}

/// Sends a flow's packets: its first (a TCP SYN or a UDP datagram) is a flow-table miss that
/// picks the ring's backend, counts a new flow and records the flow unconfirmed; its next is a
/// hit that confirms it, and the one after that a plain hit. Every packet must produce the
/// spec's frame, verdict, counters and stats. Returns the backend (the output frames prove the
/// packets went there).
fn forward_flow(r: &mut XdpRunner, net: &Net, f: &Flow, fails: &mut Failures) -> u32 {
    let v6 = f.key.family == lb_common::FAMILY_V6;
    let vip = net.vip(ip_of(f.key.dst, v6), f.key.dport, f.key.proto).clone();
    let backend = net.pick(&vip, &f.key);
    const PENDING: &[Counter] = &[Counter::FlowMiss, Counter::FlowPending];
    const CONFIRMED: &[Counter] = &[Counter::FlowHit, Counter::FlowConfirmed];
    const HIT: &[Counter] = &[Counter::FlowHit];
    let packets: [(&str, &Vec<u8>, &[Counter], u64); 3] = [
        ("first packet", &f.frame, PENDING, 1),
        ("known flow", &f.next, CONFIRMED, 0),
        ("confirmed flow", &f.next, HIT, 0),
    ];
    for (what, frame, flow_counters, new_flows) in packets {
        let (verdict, want, alt) = net.forwarded(&vip, &f.key, backend, frame);
        let forward_counter =
            if verdict == Verdict::Tx { Counter::ForwardTx } else { Counter::ForwardRedirect };
        let case = format!("{} ({what})", f.name);
        let (before, vip_before, be_before) = (r.counters(), r.vip_stats(vip.id), r.backend_stats(backend));
        let out = r.run(frame);
        fails.check(out.verdict == verdict, || {
            format!("{case}: verdict {:?}, expected {verdict:?}", out.verdict)
        });
        if alt.as_deref() != Some(&out.frame[..]) {
            fails.frame(&case, &out.frame, &want);
        }
        let moved: Vec<Counter> =
            [forward_counter].into_iter().chain(flow_counters.iter().copied()).collect();
        fails.counters(&case, &before, &r.counters(), &moved, &[]);
        let stats = TrafficStats { packets: 1, bytes: frame.len() as u64, new_flows };
        fails.stats(&case, &format!("VIP {} stats", vip.id), vip_before, r.vip_stats(vip.id), stats);
        fails.stats(&case, &format!("backend {backend} stats"), be_before, r.backend_stats(backend), stats);
    }
    backend
}

/// Every forwarding branch: TCP/UDP, port and any-port VIPs, source hash, ipip and l2dsr, TX and
/// redirect, IPv4 options and IPv6 extension headers, TOS/DF/traffic class carried to the outer
/// header, backends on-link and behind a gateway.
#[test]
fn vip_packets_are_forwarded_exactly_as_the_spec_says() {
    let fx = Fixture::new();
    let eth1 = fx.eth1;
    fx.run(SIZES, |r| {
        let net = Net::install(r);
        r.add_tx_port(eth1);
        let mut fails = Failures::default();
        let mut seen_backends = std::collections::BTreeSet::new();
        for v6 in [false, true] {
            let fam = if v6 { "v6" } else { "v4" };
            let c = client(v6);
            let mut flows = vec![
                flow(format!("tcp{fam}_port_vip"), c, 40001, vip(v6, at::MAIN), 80, L4::TcpSyn),
                flow(format!("udp{fam}_port_vip"), c, 40002, vip(v6, at::MAIN), 53, L4::Udp),
                flow(format!("tcp{fam}_any_port_vip"), c, 40003, vip(v6, at::ANY), 8080, L4::TcpSyn),
                flow(format!("udp{fam}_any_port_vip"), c, 40004, vip(v6, at::ANY), 5353, L4::Udp),
                flow(
                    format!("tcp{fam}_port_entry_beats_any_port"),
                    c,
                    40005,
                    vip(v6, at::ANY),
                    443,
                    L4::TcpSyn,
                ),
                flow(format!("tcp{fam}_l2dsr"), c, 40006, vip(v6, at::L2DSR), 80, L4::TcpSyn),
                flow(format!("tcp{fam}_redirect_to_eth1"), c, 40007, vip(v6, at::FAR), 80, L4::TcpSyn),
                flow(format!("tcp{fam}_no_address_entry"), c, 40008, vip(v6, at::NO_ENTRY), 80, L4::TcpSyn),
            ];
            // Many source ports so that every backend of the ring, near and behind the gateway,
            // and both far ones, is hit.
            for sport in 0..24 {
                flows.push(flow(
                    format!("tcp{fam}_spread_{sport}"),
                    c,
                    41000 + sport,
                    vip(v6, at::MAIN),
                    80,
                    L4::TcpSyn,
                ));
                flows.push(flow(
                    format!("tcp{fam}_far_{sport}"),
                    c,
                    41000 + sport,
                    vip(v6, at::FAR),
                    80,
                    L4::TcpSyn,
                ));
                flows.push(flow(
                    format!("tcp{fam}_l2dsr_{sport}"),
                    c,
                    41000 + sport,
                    vip(v6, at::L2DSR),
                    80,
                    L4::TcpSyn,
                ));
            }
            // The inner packet's TOS / DF / traffic class / flow label.
            let base = flow(format!("tcp{fam}_marked"), c, 40010, vip(v6, at::MAIN), 80, L4::TcpSyn);
            if v6 {
                flows.push(base.edit(|f| frames::set_ipv6_class_label(f, 0xb9, 0x12345)));
            } else {
                let f = base.edit(|f| frames::set_ipv4_tos_df(f, 0xb9, false));
                flows.push(Flow { name: "tcpv4_tos_b9_df_clear".into(), ..f });
                let f = flow("tcpv4_tos_2e_df_set", c, 40011, vip(v6, at::MAIN), 80, L4::TcpSyn);
                flows.push(f.edit(|f| frames::set_ipv4_tos_df(f, 0x2e, true)));
            }
            // Headers the parser must step over; the inner packet stays as it was.
            if v6 {
                // An atomic fragment (offset 0, no more fragments: RFC 6946) is a whole packet.
                let atomic = Ext::Fragment { offset: 0, more: false };
                let exts: [(&str, &[Ext]); 7] = [
                    ("hop_by_hop", &[Ext::HopByHop]),
                    ("dest_opts", &[Ext::DestOpts]),
                    ("routing", &[Ext::Routing]),
                    ("auth", &[Ext::Auth]),
                    ("four_ext_headers", &[Ext::HopByHop, Ext::DestOpts, Ext::Routing, Ext::Auth]),
                    ("atomic_fragment", &[atomic]),
                    ("atomic_fragment_after_hop_by_hop", &[Ext::HopByHop, atomic]),
                ];
                for (i, (name, chain)) in exts.iter().enumerate() {
                    for (l4, proto, dport) in [(L4::TcpSyn, "tcp", 80), (L4::Udp, "udp", 53)] {
                        let sport = 42000 + i as u16;
                        let f = flow(format!("{proto}v6_{name}"), c, sport, vip(v6, at::MAIN), dport, l4);
                        flows.push(f.edit(|f| frames::with_ipv6_ext(&f, chain)));
                    }
                }
            } else {
                let opts: [(&str, Vec<u8>); 2] =
                    [("router_alert", vec![148, 4, 0, 0, 1, 1, 1, 0]), ("40_bytes_of_options", vec![1; 40])];
                for (i, (name, o)) in opts.iter().enumerate() {
                    for (l4, proto, dport) in [(L4::TcpSyn, "tcp", 80), (L4::Udp, "udp", 53)] {
                        let sport = 42000 + i as u16;
                        let f =
                            flow(format!("{proto}v4_options_{name}"), c, sport, vip(v6, at::MAIN), dport, l4);
                        flows.push(f.edit(|f| frames::with_ipv4_options(&f, o)));
                    }
                }
            }
            for f in &flows {
                seen_backends.insert(forward_flow(r, &net, f, &mut fails));
            }
        }
        // The table really covered every reachable backend (on-link, gateway, far; v4 and v6).
        for id in 1..=10 {
            fails.check(seen_backends.contains(&id), || {
                format!("no case went to backend {id}: widen the spread")
            });
        }
        fails.finish("forwarding table");
    });
}

/// Source-hash VIP: one client's flows (any port) all go to one backend, the one the ring gives
/// its source hash; other clients spread over the ring.
#[test]
fn source_hash_vip_keeps_a_client_on_one_backend() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        let net = Net::install(r);
        let mut fails = Failures::default();
        for v6 in [false, true] {
            let fam = if v6 { "v6" } else { "v4" };
            let mut per_client = std::collections::BTreeMap::<IpAddr, std::collections::BTreeSet<u32>>::new();
            for host in 1..=12u8 {
                let c = match client(v6) {
                    IpAddr::V4(a) => IpAddr::from([a.octets()[0], a.octets()[1], 7, host]),
                    IpAddr::V6(a) => {
                        let mut s = a.segments();
                        s[6] = 7;
                        s[7] = host.into();
                        IpAddr::from(s)
                    }
                };
                for port in 0..8 {
                    let f = flow(
                        format!("tcp{fam}_client_{c}_port_{}", 50000 + port),
                        c,
                        50000 + port,
                        vip(v6, at::SOURCE),
                        80,
                        L4::TcpSyn,
                    );
                    let b = forward_flow(r, &net, &f, &mut fails);
                    per_client.entry(c).or_default().insert(b);
                }
            }
            for (c, b) in &per_client {
                fails.check(b.len() == 1, || format!("{fam}: client {c} went to several backends: {b:?}"));
            }
            let all: std::collections::BTreeSet<u32> = per_client.values().flatten().copied().collect();
            fails.check(all.len() > 1, || format!("{fam}: twelve clients all went to one backend {all:?}"));
        }
        fails.finish("source hash");
    });
}

/// Outer source: the configured address with its lowest N bits from the flow hash; IPv6 flow
/// label: the hash's low 20 bits. Several N, many flows.
#[test]
fn outer_source_carries_flow_hash_entropy() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        let net = Net::install(r);
        let mut fails = Failures::default();
        let mut sport = 30000;
        for bits in [0u8, 1, 4, 8, 12, 16] {
            let config = ConfigValue { v4_entropy_bits: bits, v6_entropy_bits: bits, ..CONFIG };
            r.set_config(config);
            let net = Net {
                config,
                rings: net.rings.clone(),
                backends: net.backends.clone(),
                vips: net.vips.clone(),
            };
            for v6 in [false, true] {
                let mut sources = std::collections::BTreeSet::new();
                for _ in 0..32 {
                    sport += 1;
                    let f = flow(
                        format!("entropy_{bits}_bits_v{}_sport_{sport}", if v6 { 6 } else { 4 }),
                        client(v6),
                        sport,
                        vip(v6, at::MAIN),
                        80,
                        L4::TcpSyn,
                    );
                    let out = r.run(&f.frame);
                    let vipv = net.vip(vip(v6, at::MAIN), 80, PROTO_TCP);
                    let (_, want, _) = net.forwarded(vipv, &f.key, net.pick(vipv, &f.key), &f.frame);
                    fails.frame(&f.name, &out.frame, &want);
                    let src_at = if v6 { 14 + 8..14 + 24 } else { 14 + 12..14 + 16 };
                    sources.insert(out.frame.get(src_at).map(<[u8]>::to_vec));
                }
                let want_distinct = if bits == 0 { 1 } else { 2 };
                fails.check(sources.len() >= want_distinct && (bits != 0 || sources.len() == 1), || {
                    format!(
                        "{bits} entropy bits, v6 {v6}: {} distinct outer sources over 32 flows",
                        sources.len()
                    )
                });
            }
        }
        fails.finish("entropy");
    });
}

/// Egress by another interface with no TX_PORTS entry: passed before any rewrite.
#[test]
fn route_out_of_an_unmanaged_interface_passes_unchanged() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        let net = Net::install(r); // no add_tx_port
        let mut fails = Failures::default();
        for v6 in [false, true] {
            for sport in 0..8 {
                let f = flow(
                    format!("far_v{}_{sport}", if v6 { 6 } else { 4 }),
                    client(v6),
                    43000 + sport,
                    vip(v6, at::FAR),
                    80,
                    L4::TcpSyn,
                );
                let before = r.counters();
                let out = r.run(&f.frame);
                fails.check(out.verdict == Verdict::Pass, || {
                    format!("{}: verdict {:?}, expected Pass", f.name, out.verdict)
                });
                fails.frame(&f.name, &out.frame, &f.frame);
                let flows = [Counter::FlowHit, Counter::FlowMiss, Counter::FlowPending];
                fails.counters(&f.name, &before, &r.counters(), &[Counter::PassNoTxPort], &flows);
            }
            // A near backend of the same runner is still sent by XDP_TX.
            let f = flow(
                format!("near_v{}", if v6 { 6 } else { 4 }),
                client(v6),
                43100,
                vip(v6, at::MAIN),
                80,
                L4::TcpSyn,
            );
            forward_flow(r, &net, &f, &mut fails);
        }
        fails.finish("no TX port");
    });
}

/// Packets that must not be forwarded: FIB failure (no neighbour, no route), ring slots with no
/// usable backend. Flow-table and per-VIP counters are left out: the spec does not say.
#[test]
fn fib_failures_pass_and_unusable_ring_slots_drop() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        let net = Net::install(r);
        let mut fails = Failures::default();
        let mut fib_backends = std::collections::BTreeSet::new();
        for v6 in [false, true] {
            let fam = if v6 { "v6" } else { "v4" };
            let mut cases = Vec::new();
            for sport in 0..16 {
                let f = flow(
                    format!("tcp{fam}_fib_failure_{sport}"),
                    client(v6),
                    44000 + sport,
                    vip(v6, at::FIB_FAIL),
                    80,
                    L4::TcpSyn,
                );
                let backend = net.pick(net.vip(vip(v6, at::FIB_FAIL), 80, PROTO_TCP), &f.key);
                fib_backends.insert(backend);
                // Ring 4 and 5: 11 and 13 have no neighbour entry, 12 and 14 no route.
                let reason = if backend % 2 == 1 { Counter::PassNoNeigh } else { Counter::PassNoRoute };
                cases.push((f, Verdict::Pass, reason));
            }
            for (n, what) in [
                (at::EMPTY, "empty_slot"),
                (at::UNSET, "backend_never_set"),
                (at::TOO_BIG, "backend_id_out_of_range"),
                (at::MISMATCH, "backend_of_other_family"),
            ] {
                for sport in 0..2 {
                    let f = flow(
                        format!("tcp{fam}_{what}_{sport}"),
                        client(v6),
                        44100 + sport,
                        vip(v6, n),
                        80,
                        L4::TcpSyn,
                    );
                    cases.push((f, Verdict::Drop, Counter::DropNoBackend));
                }
            }
            for (f, verdict, counter) in &cases {
                for run in 1..=2 {
                    let case = format!("{} (packet {run})", f.name);
                    let before = r.counters();
                    let out = r.run(&f.frame);
                    fails.check(out.verdict == *verdict, || {
                        format!("{case}: verdict {:?}, expected {verdict:?}", out.verdict)
                    });
                    if *verdict == Verdict::Pass {
                        fails.frame(&case, &out.frame, &f.frame);
                    }
                    let flows =
                        [Counter::FlowHit, Counter::FlowMiss, Counter::FlowPending, Counter::FlowConfirmed];
                    fails.counters(&case, &before, &r.counters(), &[*counter], &flows);
                }
            }
        }
        // Both kinds of FIB failure were exercised, for each family.
        for id in 11..=14 {
            fails.check(fib_backends.contains(&id), || format!("no FIB-failure case picked backend {id}"));
        }
        fails.finish("FIB failure / no backend");
    });
}

/// Echo requests to a VIP address (one with an address entry) are answered in place, the reply
/// with a fresh TTL / hop limit of 64 whatever the request's was (a traceroute's probe that
/// arrives with 1 left must not be answered with 1); to any other address they pass.
#[test]
fn echo_requests_to_vip_addresses_are_answered() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        Net::install(r);
        let mut fails = Failures::default();
        for v6 in [false, true] {
            let fam = if v6 { "v6" } else { "v4" };
            let addresses = [at::MAIN, at::ANY, at::FIB_FAIL, at::EMPTY].into_iter().enumerate();
            for ((i, n), ttl) in addresses.flat_map(|a| [(a, 64), (a, 1), (a, 255)]) {
                let req =
                    frames::with_ttl(frames::echo_request(client(v6), vip(v6, n), 0x4242, i as u16), ttl);
                let case = format!("echo{fam}_ttl{ttl}_to_vip_address_{}", vip(v6, n));
                let before = r.counters();
                let out = r.run(&req);
                fails.check(out.verdict == Verdict::Tx, || {
                    format!("{case}: verdict {:?}, expected Tx", out.verdict)
                });
                let hop_limit = out.frame.get(if v6 { 21 } else { 22 }).copied();
                fails.check(hop_limit == Some(64), || {
                    format!("{case}: reply TTL / hop limit {hop_limit:?}, expected 64")
                });
                if !v6 && out.frame.len() >= 34 {
                    let sum = frames::internet_checksum(&out.frame[14..34]);
                    fails.check(sum == 0, || {
                        format!("{case}: reply's IPv4 header checksum does not add up ({sum:#06x})")
                    });
                }
                fails.frame(&case, &out.frame, &expect::echo_reply(&req));
                fails.counters(&case, &before, &r.counters(), &[Counter::IcmpEchoReply], &[]);
            }
            for (what, dst) in
                [("other_host", other(v6)), ("vip_without_address_entry", vip(v6, at::NO_ENTRY))]
            {
                let req = frames::echo_request(client(v6), dst, 0x4242, 99);
                passes(r, &mut fails, &format!("echo{fam}_to_{what}"), &req, Counter::PassNotVip);
            }
            // No reply to a source that names no single host (RFC 1812 4.3.2.7): it would go to
            // a group, to nobody, or back into this host.
            let sources: &[&str] = if v6 {
                &["::", "::1", "ff02::1"]
            } else {
                &["0.0.0.0", "127.0.0.1", "224.0.0.5", "255.255.255.255"]
            };
            for src in sources {
                let req = frames::echo_request(src.parse().unwrap(), vip(v6, at::MAIN), 0x4242, 97);
                let case = format!("echo{fam}_from_{src}");
                let before = r.counters();
                let out = r.run(&req);
                fails.check(out.verdict == Verdict::Drop, || {
                    format!("{case}: verdict {:?}, expected Drop", out.verdict)
                });
                fails.counters(&case, &before, &r.counters(), &[Counter::DropIcmpSource], &[]);
            }
            // The other family's ICMP protocol number (IPv4 with 58, IPv6 with next header 1)
            // carries no ICMP message of this family: no reply, nothing quoted and forwarded.
            let mut req = frames::echo_request(client(v6), vip(v6, at::MAIN), 0x4242, 98);
            if v6 {
                req[20] = 1;
            } else {
                req[23] = 58;
                frames::fix_ipv4_checksum(&mut req);
            }
            passes(
                r,
                &mut fails,
                &format!("echo{fam}_with_the_other_familys_icmp"),
                &req,
                Counter::PassNotVip,
            );
        }
        fails.finish("echo");
    });
}

/// A VIP's packets in frames to a link-layer group (broadcast, IPv4 or IPv6 multicast MACs) go
/// to the stack unchanged: no balancer forwards them (each one on the segment would send a copy)
/// and no echo reply goes out with a group address as its source. Sent to the host's own MAC,
/// the same packets are forwarded and answered.
#[test]
fn vip_packets_in_frames_to_a_link_group_pass() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        Net::install(r);
        let mut fails = Failures::default();
        for v6 in [false, true] {
            let fam = if v6 { "v6" } else { "v4" };
            let packets = [
                ("syn", frames::tcp_frame(client(v6), 41_000, vip(v6, at::MAIN), 80, frames::tcp::SYN)),
                ("echo", frames::echo_request(client(v6), vip(v6, at::MAIN), 0x4242, 7)),
            ];
            for (what, frame) in packets {
                let unicast = r.run(&frame);
                fails.check(unicast.verdict == Verdict::Tx, || {
                    format!("{fam}_{what}_to_the_host: verdict {:?}, expected Tx", unicast.verdict)
                });
                for (group, mac) in [
                    ("broadcast", [0xff; 6]),
                    ("ipv4_multicast", [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]),
                    ("ipv6_multicast", [0x33, 0x33, 0x00, 0x00, 0x00, 0x01]),
                ] {
                    let mut f = frame.clone();
                    f[..6].copy_from_slice(&mac);
                    passes(r, &mut fails, &format!("{fam}_{what}_to_{group}"), &f, Counter::PassLinkGroup);
                }
            }
        }
        fails.finish("link group");
    });
}

/// TCP segments with flags no connection sends (RFC 9293: SYN with FIN or RST; none of SYN, ACK
/// and RST, as null, FIN and Xmas scans send) are dropped at a VIP and counted, before the
/// policy checks and the flow table (no flow counter moves); to another address they pass. Every
/// other combination of FIN, SYN, RST and ACK is forwarded.
#[test]
fn tcp_segments_with_flags_no_connection_sends_drop_at_a_vip() {
    use frames::tcp::{ACK, FIN, RST, SYN};
    const PSH: u8 = 0x08;
    const URG: u8 = 0x20;
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        Net::install(r);
        let mut fails = Failures::default();
        for v6 in [false, true] {
            let fam = if v6 { "v6" } else { "v4" };
            let segment = |flags: u8, dst: IpAddr| {
                let sport = 47_000 + u16::from(flags);
                let mut f = frames::tcp_frame(client(v6), sport, dst, 80, flags & (FIN | SYN | RST | ACK));
                // PSH and URG, which tcp_frame does not set (the balancer reads no checksum).
                let tcp = frames::plain_l4_offset(&f);
                f[tcp + 13] |= flags & (PSH | URG);
                f
            };
            let combinations = (0..16u8).map(|c| (c & 7) | (c & 8) << 1).chain([FIN | PSH | URG]);
            for flags in combinations {
                let bad = frames::tcp::no_connection_sends(flags);
                let case = format!("tcp{fam}_flags_{flags:#04x}");
                let before = r.counters();
                let out = r.run(&segment(flags, vip(v6, at::MAIN)));
                let want = if bad { Verdict::Drop } else { Verdict::Tx };
                fails.check(out.verdict == want, || {
                    format!("{case}: verdict {:?}, expected {want:?}", out.verdict)
                });
                if bad {
                    fails.counters(&case, &before, &r.counters(), &[Counter::DropTcpFlags], &[]);
                    let f = segment(flags, other(v6));
                    passes(r, &mut fails, &format!("{case}_to_other_host"), &f, Counter::PassNotVip);
                }
            }
        }
        fails.finish("TCP flags");
    });
}

/// Fragments to a VIP address are dropped (no ports to pick a backend by); elsewhere they pass.
#[test]
fn fragments_to_vip_addresses_drop_and_others_pass() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        Net::install(r);
        let mut fails = Failures::default();
        let v4 = |dst: IpAddr| frames::frame(CLIENT4.into(), 45000, dst, 80, L4::TcpSyn);
        let v6 = |dst: IpAddr| frames::frame(CLIENT6.into(), 45000, dst, 80, L4::TcpSyn);
        let first = Ext::Fragment { offset: 0, more: true };
        let later = Ext::Fragment { offset: 100, more: false };
        let cases: Vec<(&str, Vec<u8>, Verdict, Counter)> = vec![
            (
                "v4_first_fragment_to_vip",
                frames::ipv4_fragment(v4(vip4(at::MAIN)), 0, true),
                Verdict::Drop,
                Counter::DropFragmentToVip,
            ),
            (
                "v4_last_fragment_to_vip",
                frames::ipv4_fragment(v4(vip4(at::MAIN)), 100, false),
                Verdict::Drop,
                Counter::DropFragmentToVip,
            ),
            (
                "v4_middle_fragment_to_vip",
                frames::ipv4_fragment(v4(vip4(at::ANY)), 100, true),
                Verdict::Drop,
                Counter::DropFragmentToVip,
            ),
            (
                "v4_fragmented_echo_to_vip",
                frames::ipv4_fragment(frames::echo_request(CLIENT4.into(), vip4(at::MAIN), 1, 1), 0, true),
                Verdict::Drop,
                Counter::DropFragmentToVip,
            ),
            (
                "v4_fragment_to_other_host",
                frames::ipv4_fragment(v4(OTHER4.into()), 0, true),
                Verdict::Pass,
                Counter::PassFragment,
            ),
            (
                "v4_fragment_to_vip_without_address_entry",
                frames::ipv4_fragment(v4(vip4(at::NO_ENTRY)), 0, true),
                Verdict::Pass,
                Counter::PassFragment,
            ),
            (
                "v6_first_fragment_to_vip",
                frames::with_ipv6_ext(&v6(vip6(at::MAIN)), &[first]),
                Verdict::Drop,
                Counter::DropFragmentToVip,
            ),
            (
                "v6_last_fragment_to_vip",
                frames::with_ipv6_ext(&v6(vip6(at::MAIN)), &[later]),
                Verdict::Drop,
                Counter::DropFragmentToVip,
            ),
            (
                "v6_fragment_after_hop_by_hop_to_vip",
                frames::with_ipv6_ext(&v6(vip6(at::ANY)), &[Ext::HopByHop, first]),
                Verdict::Drop,
                Counter::DropFragmentToVip,
            ),
            (
                "v6_fragmented_echo_to_vip",
                frames::with_ipv6_ext(&frames::echo_request(CLIENT6.into(), vip6(at::MAIN), 1, 1), &[first]),
                Verdict::Drop,
                Counter::DropFragmentToVip,
            ),
            (
                "v6_fragment_to_other_host",
                frames::with_ipv6_ext(&v6(OTHER6.into()), &[first]),
                Verdict::Pass,
                Counter::PassFragment,
            ),
            (
                "v6_fragment_to_vip_without_address_entry",
                frames::with_ipv6_ext(&v6(vip6(at::NO_ENTRY)), &[first]),
                Verdict::Pass,
                Counter::PassFragment,
            ),
        ];
        for (name, frame, verdict, counter) in cases {
            let before = r.counters();
            let out = r.run(&frame);
            fails.check(out.verdict == verdict, || {
                format!("{name}: verdict {:?}, expected {verdict:?}", out.verdict)
            });
            if verdict == Verdict::Pass {
                fails.frame(name, &out.frame, &frame);
            }
            fails.counters(name, &before, &r.counters(), &[counter], &[]);
        }
        fails.finish("fragments");
    });
}

/// ICMP "fragmentation needed" / ICMPv6 "packet too big" quoting a VIP flow's reply goes to
/// that flow's backend: the one in the flow table even after the ring changed, else the ring's
/// pick, which is not remembered (no flow-table insert).
#[test]
fn icmp_too_big_follows_the_flow_it_quotes() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        let mut net = Net::install(r);
        let mut fails = Failures::default();
        for v6 in [false, true] {
            let fam = if v6 { "v6" } else { "v4" };
            let (c, vaddr) = (client(v6), vip(v6, at::MAIN));
            let vipv = net.vip(vaddr, 80, PROTO_TCP).clone();
            let ring_no = vipv.ring;
            // 1. A flow goes to its backend.
            let known = flow(format!("tcp{fam}_known"), c, 46000, vaddr, 80, L4::TcpSyn);
            let known_backend = net.pick(&vipv, &known.key);
            forward_flow(r, &net, &known, &mut fails);
            // 2. The ring changes under it: its slot now names another backend.
            let other_id = |id: u32| ring_backends(ring_no).iter().map(|b| b.0).find(|&b| b != id).unwrap();
            let slot = hash::ring_slot(net.hash(&vipv, &known.key), RING) as usize;
            let old = net.rings[&ring_no].clone();
            let mut new = old.clone();
            new[slot] = other_id(known_backend);
            assert_eq!(r.write_ring(ring_no, Some(&old), &new), 1);
            net.rings.insert(ring_no, new);
            // The reply of a never-seen flow, quoted whole (v6) or header + 8 bytes (v4).
            let unseen = flow(format!("tcp{fam}_unseen"), c, 46001, vaddr, 80, L4::TcpSyn);
            let quote_len = if v6 { None } else { Some(28) };
            let reply = |f: &Flow| {
                let sport = f.key.sport;
                frames::frame(vaddr, 80, c, sport, L4::TcpSyn)
            };
            let unseen_backend = net.pick(&vipv, &unseen.key);
            for (f, backend, what) in [
                (&known, known_backend, "known flow: flow-table backend"),
                (&unseen, unseen_backend, "unseen flow: ring pick"),
            ] {
                let icmp = frames::too_big(router(v6), &reply(f), quote_len);
                let case = format!("icmp{fam}_too_big_for_{} ({what})", f.name);
                let (before, be_before) = (r.counters(), r.backend_stats(backend));
                let out = r.run(&icmp);
                let (verdict, want, _) = net.forwarded(&vipv, &f.key, backend, &icmp);
                fails.check(out.verdict == verdict, || {
                    format!("{case}: verdict {:?}, expected {verdict:?}", out.verdict)
                });
                fails.frame(&case, &out.frame, &want);
                let flows = [Counter::FlowHit, Counter::FlowMiss];
                fails.counters(
                    &case,
                    &before,
                    &r.counters(),
                    &[Counter::ForwardTx, Counter::IcmpErrorToBackend],
                    &flows,
                );
                let new_flows = r.backend_stats(backend).new_flows - be_before.new_flows;
                fails.check(new_flows == 0, || {
                    format!("{case}: backend {backend} new_flows moved by {new_flows}")
                });
            }
            // 3. The ICMP error did not insert the unseen flow: change its slot, then the flow
            // itself goes to the new slot's backend as a new flow.
            let slot = hash::ring_slot(net.hash(&vipv, &unseen.key), RING) as usize;
            let old = net.rings[&ring_no].clone();
            let mut new = old.clone();
            new[slot] = other_id(unseen_backend);
            r.write_ring(ring_no, Some(&old), &new);
            net.rings.insert(ring_no, new);
            forward_flow(r, &net, &unseen, &mut fails);
            // An ICMP error quoting no VIP flow passes; so does one quoting a VIP flow that is
            // addressed elsewhere than the quoted packet's source (here another VIP address:
            // errors go to the sender of what they quote).
            let elsewhere =
                readdressed(&frames::too_big(router(v6), &reply(&known), quote_len), vip(v6, at::ANY));
            for (what, icmp) in [
                (
                    "quoting_no_vip",
                    frames::too_big(
                        router(v6),
                        &frames::frame(other(v6), 80, c, 46002, L4::TcpSyn),
                        quote_len,
                    ),
                ),
                ("to_another_vip_address_quoting_a_vip_flow", elsewhere),
            ] {
                passes(r, &mut fails, &format!("icmp{fam}_too_big_{what}"), &icmp, Counter::PassNotVip);
            }
        }
        fails.finish("ICMP errors");
    });
}

/// Runs `frame` and checks that it passed unchanged and moved `counter` alone.
fn passes(r: &mut XdpRunner, fails: &mut Failures, case: &str, frame: &[u8], counter: Counter) {
    let before = r.counters();
    let out = r.run(frame);
    fails.check(out.verdict == Verdict::Pass, || format!("{case}: verdict {:?}, expected Pass", out.verdict));
    fails.frame(case, &out.frame, frame);
    fails.counters(case, &before, &r.counters(), &[counter], &[]);
}

/// `frame` (Ethernet, IPv4 or IPv6) sent to `dst` instead (the IPv4 header checksum fixed; an
/// ICMPv6 checksum is left as it was: the balancer does not check it).
fn readdressed(frame: &[u8], dst: IpAddr) -> Vec<u8> {
    let mut out = frame.to_vec();
    match dst {
        IpAddr::V4(a) => {
            out[30..34].copy_from_slice(&a.octets());
            frames::fix_ipv4_checksum(&mut out);
        }
        IpAddr::V6(a) => out[38..54].copy_from_slice(&a.octets()),
    }
    out
}

/// Forwarding off on the interface packets come in on: bpf_fib_lookup refuses, the packet passes
/// unchanged, counted as such (what a host with Linux's defaults does until lbd turns it on).
#[test]
fn forwarding_off_on_the_ingress_interface_passes_and_says_so() {
    let fx = Fixture::new();
    for key in ["net.ipv4.conf.eth0.forwarding", "net.ipv6.conf.eth0.forwarding"] {
        fx.ns.sysctl(key, "0");
    }
    fx.run(SIZES, |r| {
        Net::install(r);
        for v6 in [false, true] {
            let f = flow("fwd_off", client(v6), 45_000, vip(v6, at::MAIN), 80, L4::TcpSyn);
            let before = r.counter(Counter::PassFwdDisabled);
            let out = r.run(&f.frame);
            assert_eq!(out.verdict, Verdict::Pass, "v6 {v6}");
            assert_eq!(out.frame, f.frame, "v6 {v6}: a passed packet was changed");
            assert_eq!(r.counter(Counter::PassFwdDisabled), before + 1, "v6 {v6}");
        }
    });
}
