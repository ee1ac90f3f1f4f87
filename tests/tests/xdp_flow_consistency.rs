//! Connection consistency through a backend change: 10,000 flows go through the balancer, then
//! one backend leaves the ring (rewritten in place, slot by slot, as the agent does). Every flow
//! already in the flow table keeps its backend, the removed one included; new flows never go to
//! the removed backend and land where the new ring says.
use std::{collections::HashMap, net::IpAddr};

use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice};
use lb_common::{hash, ConfigValue, Counter, FlowKey, MODE_IPIP, PROTO_TCP};
use lb_tests::{
    frames::{self, addr::*, describe, expect, flow_key, L4},
    xdp::{allowed_cpus, fixture::*, pin_to_cpu, Fixture, Verdict, XdpRunner},
};
use lb_userspace::{
    datapath::Sizes,
    maglev::{self, Member},
};

const RING: u32 = 65_537;
const FLOWS: u32 = 10_000;
const BACKENDS: u8 = 8;
const REMOVED: u32 = 3;
const VIP_ID: u32 = 1;

const CONFIG: ConfigValue = ConfigValue {
    src_v4: [198, 18, 9, 0],
    src_v6: [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    hash_seed: 0xc0ff_ee00,
    v4_entropy_bits: 8,
    v6_entropy_bits: 16,
    _pad: [0; 2],
    capture_vip: 0,
    cache_generation: 0,
};

/// Room for every flow of the test (old and new, 20,000), sets far from full.
fn sizes() -> Sizes {
    Sizes { flows: 1 << 20, max_vips: 256, max_rings: 2, ring_stride: RING, max_backends: 64 }
}

/// Flow number `i` of generation `gen` (0: before the change, 1: after): distinct clients and
/// ports, all from 198.19.0.0/16 or fd00:c::/32.
fn flow(v6: bool, gen: u32, i: u32) -> (Vec<u8>, FlowKey) {
    let n = gen * FLOWS + i;
    let client: IpAddr = if v6 {
        std::net::Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, (n >> 16) as u16, n as u16).into()
    } else {
        std::net::Ipv4Addr::new(198, 19, (n >> 8) as u8, n as u8).into()
    };
    let sport = 1024 + (n * 7919 % 60000) as u16;
    let vip: IpAddr = if v6 { VIP6.into() } else { VIP4.into() };
    // Mid-connection packets (the first one sent records the flow, as a SYN would).
    (frames::frame(client, sport, vip, 80, L4::TcpAck), flow_key(client, sport, vip, 80, PROTO_TCP))
}

struct World {
    v6: bool,
    backends: HashMap<u32, IpAddr>,
    by_addr: HashMap<IpAddr, u32>,
}

impl World {
    /// Sends one packet; checks that it was encapsulated to `want`, byte for byte, and returns
    /// the backend it went to.
    fn send(&self, r: &mut XdpRunner, frame: &[u8], key: &FlowKey, want: u32, case: &str) -> u32 {
        let out = r.run(frame);
        assert_eq!(out.verdict, Verdict::Tx, "{case}: verdict");
        let dst: IpAddr = if self.v6 {
            Ipv6HeaderSlice::from_slice(&out.frame[14..]).map(|h| h.destination_addr().into()).ok()
        } else {
            Ipv4HeaderSlice::from_slice(&out.frame[14..]).map(|h| h.destination_addr().into()).ok()
        }
        .unwrap_or_else(|| panic!("{case}: no outer IP header: {}", describe(&out.frame)));
        let got = *self.by_addr.get(&dst).unwrap_or_else(|| panic!("{case}: sent to {dst}, no backend"));
        assert_eq!(got, want, "{case}: went to backend {got}, expected {want}");
        let h = hash::flow(key, CONFIG.hash_seed);
        let addr = self.backends[&want];
        let src = expect::outer_source(&CONFIG, self.v6, h);
        let (_, mac) = next_hop(addr).unwrap();
        let expected = expect::encapsulated(frame, mac, ETH0_MAC, src, addr, h);
        assert!(
            out.frame == expected,
            "{case}: frame\n want {}\n got  {}",
            describe(&expected),
            describe(&out.frame)
        );
        got
    }
}

fn counter_moves(r: &XdpRunner, before: &[u64]) -> HashMap<&'static str, u64> {
    let after = r.counters();
    Counter::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| after[*i] != before[*i])
        .map(|(i, c)| (c.name(), after[i] - before[i]))
        .collect()
}

/// `two_cpus`: the flows' first packets run on one CPU, every later packet on another (the
/// table is one for all CPUs: a connection whose packets move keeps its backend).
fn consistency(v6: bool, two_cpus: bool) {
    let cpus = allowed_cpus();
    assert!(
        !two_cpus || cpus.len() >= 2,
        "this test needs two CPUs to run the program on; it may use only {cpus:?}"
    );
    let fx = Fixture::new();
    fx.run(sizes(), |r| {
        r.set_config(CONFIG);
        pin_to_cpu(cpus[0]);
        let addr = |n: u8| if v6 { near6(n) } else { near4(n) };
        let members: Vec<(u32, IpAddr)> = (1..=BACKENDS).map(|n| (u32::from(n), addr(n))).collect();
        let old = r.install_ring(0, &members, RING);
        let vip: IpAddr = if v6 { VIP6.into() } else { VIP4.into() };
        let value = r.vip_value(VIP_ID, 0, RING, MODE_IPIP, 0);
        r.install_vip(vip, 80, &[PROTO_TCP], value);
        r.install_address_entry(vip, value);
        let world = World {
            v6,
            backends: members.iter().copied().collect(),
            by_addr: members.iter().map(|&(id, a)| (a, id)).collect(),
        };
        let pick = |ring: &[u32], key: &FlowKey| ring[hash::ring_slot(hash::flow(key, CONFIG.hash_seed), RING) as usize];

        // 1. Ten thousand new flows, each to the backend the ring gives it.
        let before = r.counters();
        let mut pinned = Vec::with_capacity(FLOWS as usize);
        for i in 0..FLOWS {
            let (frame, key) = flow(v6, 0, i);
            pinned.push(world.send(r, &frame, &key, pick(&old, &key), &format!("flow {i}, first packet")));
        }
        let moves = counter_moves(r, &before);
        let n = u64::from(FLOWS);
        // (Mid-connection packets: recorded midstream, as another balancer host's connections.)
        let want = HashMap::from([("forward_tx", n), ("flow_miss", n), ("flow_pending", n), ("flow_midstream", n)]);
        assert_eq!(moves, want, "counters over the first packets of {FLOWS} flows");
        let on_removed = pinned.iter().filter(|&&b| b == REMOVED).count();
        assert!(on_removed > 0, "no flow went to backend {REMOVED}: the test proves nothing");

        // 2. Backend 3 leaves: the ring is rewritten in place, only the slots that change.
        let remaining: Vec<Member> =
            members.iter().filter(|m| m.0 != REMOVED).map(|&(id, a)| Member::new(a, id, 1)).collect();
        let new = maglev::build(&remaining, RING);
        let changed = old.iter().zip(&new).filter(|(o, n)| o != n).count();
        let written = r.write_ring(0, Some(&old), &new);
        assert_eq!(written, changed, "write_ring wrote {written} slots, {changed} differ");
        assert!(!new.contains(&REMOVED));
        let moved = (0..FLOWS).filter(|&i| pick(&new, &flow(v6, 0, i).1) != pinned[i as usize]).count();
        assert!(moved >= on_removed, "only {moved} flows would move under the new ring");

        // 3. Every flow in the table keeps its backend, the removed one included.
        if two_cpus {
            pin_to_cpu(cpus[1]);
        }
        let before = r.counters();
        for i in 0..FLOWS {
            let (frame, key) = flow(v6, 0, i);
            world.send(r, &frame, &key, pinned[i as usize], &format!("flow {i} after the ring change"));
        }
        let moves = counter_moves(r, &before);
        // (Their second packet: each confirms its flow.)
        let want = HashMap::from([("forward_tx", n), ("flow_hit", n), ("flow_confirmed", n)]);
        assert_eq!(moves, want, "counters over {FLOWS} known flows after the change ({moved} would move)");

        // 4. New flows follow the new ring, never to the removed backend.
        let before = r.counters();
        for i in 0..FLOWS {
            let (frame, key) = flow(v6, 1, i);
            let b = world.send(r, &frame, &key, pick(&new, &key), &format!("new flow {i} after the change"));
            assert_ne!(b, REMOVED, "new flow {i} went to the removed backend");
        }
        let moves = counter_moves(r, &before);
        // (Mid-connection packets: recorded midstream, as another balancer host's connections.)
        let want = HashMap::from([("forward_tx", n), ("flow_miss", n), ("flow_pending", n), ("flow_midstream", n)]);
        assert_eq!(moves, want, "counters over {FLOWS} new flows after the change");

        // 5. The old flows are still pinned after the new ones were added.
        for i in (0..FLOWS).step_by(7) {
            let (frame, key) = flow(v6, 0, i);
            world.send(r, &frame, &key, pinned[i as usize], &format!("flow {i} at the end"));
        }
        eprintln!(
            "v6 {v6}, two CPUs {two_cpus}: {on_removed} of {FLOWS} flows on backend {REMOVED}, {written} ring slots rewritten, \
             {moved} known flows kept a backend the new ring would not give them"
        );
    });
}

#[test]
fn known_flows_keep_their_backend_when_one_leaves_v4() {
    consistency(false, false);
}

#[test]
fn known_flows_keep_their_backend_when_one_leaves_v6() {
    consistency(true, false);
}

#[test]
fn known_flows_keep_their_backend_when_one_leaves_v4_packets_on_two_cpus() {
    consistency(false, true);
}

#[test]
fn known_flows_keep_their_backend_when_one_leaves_v6_packets_on_two_cpus() {
    consistency(true, true);
}
