//! What the flow table records, and when a recorded flow stops counting (BPF_PROG_TEST_RUN, each
//! test on one CPU but the one that moves a flow between two): every scheduler's SYNs record
//! their flow unconfirmed and the packet after the SYN confirms it (so a ring change in the
//! handshake moves no connection); a flow whose VIP is gone or was replaced is never forwarded
//! by its entry; the VIP address filter follows the VIP entries; both CPUs see one table; a new
//! flow takes an idle connection's entry, never an active one's; a flow's entry carries the tick
//! of its last packet on the clock lbd's census reads (`flow_clock_now`); a full table with half
//! its entries held by active connections records nearly every new flow.
use std::net::IpAddr;

use aya::maps::{Array, MapData};
use lb_common::{
    hash, limits, map_names, BackendValue, ConfigValue, Counter, FlowKey, VipKey, VipValue, MODE_L2DSR,
    PROTO_ICMP, PROTO_TCP, SCHED_MAGLEV, SCHED_ROUND_ROBIN,
};
use lb_tests::{
    frames::{flow_key, tcp, tcp_frame},
    xdp::{
        allowed_cpus,
        fixture::{near4, near_mac},
        pin_to_cpu, Fixture, Verdict, XdpRunner,
    },
};
use lb_userspace::{
    datapath::{flow_clock_now, Sizes},
    maglev::{self, Member},
};

const RING: u32 = 1031;
/// Rings up to VIP_ID's: round-robin sequences are by VIP id.
const SIZES: Sizes = Sizes { flows: 16_384, max_vips: 256, max_rings: 8, ring_stride: RING, max_backends: 8 };
const PORT: u16 = 80;
const VIP_ID: u32 = 7;

fn vip() -> IpAddr {
    [198, 18, 100, 1].into()
}

fn client() -> IpAddr {
    [198, 18, 5, 1].into()
}

/// Backends near4(1..=3), their ring, and the TCP VIP (l2dsr: the output's destination MAC
/// names the backend) with `scheduler`, plus its address entry.
fn install(r: &mut XdpRunner, scheduler: u8) {
    caches(r, 0);
    let mut members = Vec::new();
    for id in 1..=3u32 {
        r.datapath.set_backend(id, BackendValue::from(near4(id as u8)).taking_new_flows(true)).unwrap();
        members.push(Member::new(near4(id as u8), id, 1));
    }
    let ring = maglev::build(&members, RING);
    r.write_ring(0, None, &ring);
    // Round robin: backend 2 only.
    r.datapath.write_rr_sequence(VIP_ID, None, &[2]).unwrap();
    let value = VipValue { scheduler, rr_len: 1, ..r.vip_value(VIP_ID, 0, RING, MODE_L2DSR, 0) };
    r.install_vip(vip(), PORT, &[PROTO_TCP], value);
    r.install_address_entry(vip(), value);
}

/// CONFIG with the per-CPU next-hop cache under `generation` (0: off).
fn caches(r: &mut XdpRunner, generation: u32) {
    r.set_config(ConfigValue {
        src_v4: [198, 18, 1, 254],
        hash_seed: 0x5eed,
        cache_generation: generation,
        ..Default::default()
    });
}

fn key(sport: u16) -> FlowKey {
    flow_key(client(), sport, vip(), PORT, PROTO_TCP)
}

/// Sends a segment from the client's `sport`: the backend it went to, or None if passed.
fn send(r: &mut XdpRunner, sport: u16, flags: u8) -> Option<u32> {
    let out = r.run(&tcp_frame(client(), sport, vip(), PORT, flags));
    match out.verdict {
        Verdict::Tx => Some(
            (1..=3u8)
                .find(|&n| out.frame[..6] == near_mac(n))
                .unwrap_or_else(|| panic!("port {sport}: to no backend: {:02x?}", out.frame))
                as u32,
        ),
        Verdict::Pass => None,
        v => panic!("port {sport}, flags {flags:#x}: verdict {v:?}"),
    }
}

/// Whether FLOW_TABLE holds a flow for `key`, void or not (walks skip void ones).
fn in_table(r: &XdpRunner, key: &FlowKey) -> bool {
    let entries = r.datapath.flow_entries().expect("FLOW_TABLE mapped");
    (0..entries.len()).any(|i| entries.read_settled(i).is_some_and(|e| e.holds_flow() && e.key == *key))
}

/// The flows a walk of the table lists (as `lbctl flows` and the connection recount see them).
fn recorded(r: &XdpRunner) -> Vec<FlowKey> {
    let mut keys = Vec::new();
    r.datapath.flow_table().unwrap().walk_values(|k, _, _| keys.push(*k)).unwrap();
    keys
}

/// What a packet did to the flow-table counters: (hits, misses).
fn flow_counters(r: &mut XdpRunner, sport: u16, flags: u8) -> (Option<u32>, u64, u64) {
    let (hits, misses) = (r.counter(Counter::FlowHit), r.counter(Counter::FlowMiss));
    let to = send(r, sport, flags);
    (to, r.counter(Counter::FlowHit) - hits, r.counter(Counter::FlowMiss) - misses)
}

#[test]
fn maglev_syns_record_their_flow_and_the_next_packet_confirms_it() {
    Fixture::new().run(SIZES, |r| {
        install(r, SCHED_MAGLEV);
        // SYNs: each forwarded, a new flow of its backend, each recorded unconfirmed.
        let news = r.vip_stats(VIP_ID).new_flows;
        let (pending, midstream) = (r.counter(Counter::FlowPending), r.counter(Counter::FlowMidstream));
        let picks: Vec<u32> =
            (0..200).map(|i| send(r, 20_000 + i, tcp::SYN).expect("SYN forwarded")).collect();
        assert_eq!(r.vip_stats(VIP_ID).new_flows - news, 200, "every SYN is a new flow");
        assert_eq!(r.counter(Counter::FlowPending) - pending, 200, "every SYN records its flow");
        assert_eq!(r.counter(Counter::FlowMidstream), midstream, "a SYN's record is no midstream one");
        assert_eq!(recorded(r).len(), 200);
        // A connection this host never saw open (another balancer host's): recorded at its ACK,
        // and counted so (a flood of ACKs shows there), no new flow.
        let news = r.vip_stats(VIP_ID).new_flows;
        for i in 0..5 {
            assert_eq!(flow_counters(r, 20_500 + i, tcp::ACK).2, 1, "an unseen connection's ACK misses");
        }
        assert_eq!(r.counter(Counter::FlowMidstream) - midstream, 5, "five recorded midstream");
        assert_eq!(r.vip_stats(VIP_ID).new_flows, news, "and none a new flow");
        assert_eq!(flow_counters(r, 20_500, tcp::ACK).1, 1, "the next packet finds it");
        assert_eq!(r.counter(Counter::FlowMidstream) - midstream, 5);
        // The packet after a SYN is a hit on the SYN's entry (confirming it), to the SYN's
        // backend, and no new flow.
        let (news, confirmed) = (r.vip_stats(VIP_ID).new_flows, r.counter(Counter::FlowConfirmed));
        for (i, &b) in picks.iter().enumerate().take(20) {
            let sport = 20_000 + i as u16;
            assert_eq!(flow_counters(r, sport, tcp::ACK), (Some(b), 1, 0), "flow {i}: after the SYN");
        }
        assert_eq!(r.vip_stats(VIP_ID).new_flows, news);
        assert_eq!(r.counter(Counter::FlowConfirmed) - confirmed, 20);
        // A SYN of a recorded flow (a retransmission) goes where the flow is.
        assert_eq!(send(r, 20_000, tcp::SYN), Some(picks[0]));
    });
}

/// The ticks of the flows in the table (the census's input).
fn last_ticks(r: &XdpRunner) -> Vec<u32> {
    let mut ticks = Vec::new();
    r.datapath.flow_table().unwrap().walk_values(|_, v, _| ticks.push(v.last_tick)).unwrap();
    ticks
}

#[test]
fn a_flow_carries_the_tick_of_its_last_packet_on_the_clock_lbd_reads() {
    Fixture::new().run(SIZES, |r| {
        install(r, SCHED_MAGLEV);
        let before = flow_clock_now();
        send(r, 21_000, tcp::SYN).expect("SYN forwarded");
        let after = flow_clock_now();
        let ticks = last_ticks(r);
        assert!(
            ticks.len() == 1 && (before..=after).contains(&ticks[0]),
            "the SYN's flow has ticks {ticks:?}; lbd's flow clock read {before}, then {after}"
        );
        // A packet a tick later moves it on.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1_500);
        while flow_clock_now() == ticks[0] && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let before = flow_clock_now();
        send(r, 21_000, tcp::ACK).expect("ACK forwarded");
        let after = flow_clock_now();
        let moved = last_ticks(r);
        assert!(
            before > ticks[0] && moved.len() == 1 && (before..=after).contains(&moved[0]),
            "after a packet at ticks {before}..={after} the flow's tick is {moved:?} (was {ticks:?})"
        );
    });
}

#[test]
fn a_ring_change_between_a_syn_and_its_ack_moves_no_connection() {
    Fixture::new().run(SIZES, |r| {
        install(r, SCHED_MAGLEV);
        let picks: Vec<u32> =
            (0..60).map(|i| send(r, 23_000 + i, tcp::SYN).expect("SYN forwarded")).collect();
        // The ring changes in the handshake's round trip: backend 1 is drained (out of the
        // ring, taking no new flows), so its slots go to 2 and 3.
        r.datapath.set_backend(1, BackendValue::from(near4(1)).taking_new_flows(false)).unwrap();
        let members: Vec<Member> = (2..=3u32).map(|id| Member::new(near4(id as u8), id, 1)).collect();
        r.write_ring(0, None, &maglev::build(&members, RING));
        let on_drained = picks.iter().filter(|&&b| b == 1).count();
        assert!(on_drained > 5, "only {on_drained} of 60 SYNs went to backend 1: the test needs some");
        // Every ACK follows its SYN, to the drained backend too: the connection is open there.
        for (i, &b) in picks.iter().enumerate() {
            assert_eq!(send(r, 23_000 + i as u16, tcp::ACK), Some(b), "flow {i}: its ACK moved");
        }
        // A new connection goes by the new ring.
        assert_ne!(send(r, 24_000, tcp::SYN), Some(1), "a new flow reached the drained backend");
    });
}

#[test]
fn round_robin_syns_record_their_flow() {
    Fixture::new().run(SIZES, |r| {
        install(r, SCHED_ROUND_ROBIN);
        // Not consistent: the packet after the SYN could not find the SYN's backend again.
        assert_eq!(send(r, 21_000, tcp::SYN), Some(2));
        assert_eq!(recorded(r), vec![key(21_000)]);
        assert_eq!(flow_counters(r, 21_000, tcp::ACK), (Some(2), 1, 0));
    });
}

#[test]
fn a_flow_of_a_voided_or_removed_vip_is_not_forwarded_by_its_entry() {
    Fixture::new().run(SIZES, |r| {
        install(r, SCHED_MAGLEV);
        let to = send(r, 22_000, tcp::ACK).expect("forwarded");
        assert_eq!(flow_counters(r, 22_000, tcp::ACK), (Some(to), 1, 0));
        // Voided (the id went to another VIP, or this one moved): the entry no longer counts;
        // the packet is placed again and records the flow anew.
        r.datapath.void_vip_flows(VIP_ID).unwrap();
        assert_eq!(flow_counters(r, 22_000, tcp::ACK), (Some(to), 0, 1), "after voiding");
        assert_eq!(flow_counters(r, 22_000, tcp::ACK), (Some(to), 1, 0), "recorded again");
        // Removed: the entry is still in the table, but the packet is passed as not for a VIP.
        for proto in [PROTO_TCP, PROTO_ICMP] {
            let port = if proto == PROTO_TCP { PORT } else { 0 };
            r.datapath.remove_vip(&VipKey::from((vip(), port, proto))).unwrap();
        }
        r.datapath.void_vip_flows(VIP_ID).unwrap();
        assert!(in_table(r, &key(22_000)), "the entry is still there");
        assert!(recorded(r).is_empty(), "a walk listed a void entry");
        let passed = r.counter(Counter::PassNotVip);
        assert_eq!(send(r, 22_000, tcp::ACK), None, "a removed VIP's flow was forwarded");
        assert_eq!(r.counter(Counter::PassNotVip), passed + 1);
    });
}

#[test]
fn the_vip_address_filter_follows_the_vip_entries() {
    Fixture::new().run(SIZES, |r| {
        let filter_bit = |r: &XdpRunner| -> bool {
            let bit = hash::vip_filter_bit(&VipKey::from((vip(), 0, PROTO_TCP)).addr);
            let map = r.datapath.raw().map(map_names::VIP_FILTER).expect("VIP_FILTER");
            let words: Array<&MapData, u64> = Array::try_from(map).unwrap();
            assert_eq!(words.len(), limits::VIP_FILTER_BITS / 64);
            words.get(&(bit / 64), 0).unwrap() & 1 << (bit % 64) != 0
        };
        assert!(!filter_bit(r));
        install(r, SCHED_MAGLEV);
        assert!(filter_bit(r), "set with the VIP");
        assert!(send(r, 23_000, tcp::SYN).is_some());
        // One entry of the address left: the bit stays.
        r.datapath.remove_vip(&VipKey::from((vip(), PORT, PROTO_TCP))).unwrap();
        r.datapath.sync_vip_filter().unwrap();
        assert!(filter_bit(r), "cleared while the address entry remains");
        r.datapath.remove_vip(&VipKey::from((vip(), 0, PROTO_ICMP))).unwrap();
        r.datapath.sync_vip_filter().unwrap();
        assert!(!filter_bit(r), "left set with no entry for the address");
        let passed = r.counter(Counter::PassNotVip);
        assert_eq!(send(r, 23_000, tcp::SYN), None);
        assert_eq!(r.counter(Counter::PassNotVip), passed + 1);
    });
}

#[test]
fn both_cpus_see_one_flow_table() {
    let cpus = allowed_cpus();
    assert!(cpus.len() >= 2, "this test needs two CPUs to run the program on; it may use only {cpus:?}");
    let (first, second) = (cpus[0], cpus[1]);
    Fixture::new().run(SIZES, |r| {
        install(r, SCHED_MAGLEV);
        // Recorded on one CPU, confirmed by a packet on the other, found by both.
        pin_to_cpu(first);
        let (to, _, misses) = flow_counters(r, 24_000, tcp::ACK);
        assert_eq!(misses, 1, "the first packet found a flow");
        let to = to.expect("forwarded");
        pin_to_cpu(second);
        let confirmed = r.counter(Counter::FlowConfirmed);
        assert_eq!(flow_counters(r, 24_000, tcp::ACK), (Some(to), 1, 0), "the second CPU missed the flow");
        assert_eq!(r.counter(Counter::FlowConfirmed), confirmed + 1, "the second CPU did not confirm it");
        pin_to_cpu(first);
        assert_eq!(flow_counters(r, 24_000, tcp::ACK), (Some(to), 1, 0), "the first CPU lost the flow");
        assert_eq!(recorded(r), vec![key(24_000)]);
        // Taken out of the table: neither CPU answers from anything else.
        r.datapath
            .flow_table()
            .unwrap()
            .remove_backend(to, &std::sync::atomic::AtomicBool::new(true))
            .unwrap();
        assert!(recorded(r).is_empty());
        assert_eq!(flow_counters(r, 24_000, tcp::ACK), (Some(to), 0, 1), "a removed flow was found");
        pin_to_cpu(second);
        assert_eq!(
            flow_counters(r, 24_000, tcp::ACK),
            (Some(to), 1, 0),
            "recorded again, seen by the other CPU"
        );
    });
}

/// Two sets of four: every flow's two sets are among them.
const TINY: Sizes = Sizes { flows: 8, ..SIZES };

/// Records (two packets) flows from port `from` on until `n` are in the table; their ports.
fn fill(r: &mut XdpRunner, from: u16, n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut port = from;
    while recorded(r).len() < n {
        assert!(port < from + 200, "{n} flows do not fit in {} entries: {:?}", TINY.flows, recorded(r));
        send(r, port, tcp::ACK).expect("forwarded");
        send(r, port, tcp::ACK).expect("forwarded");
        if recorded(r).contains(&key(port)) {
            ports.push(port);
        }
        port += 1;
    }
    ports
}

#[test]
fn a_new_flow_takes_an_idle_connection_s_entry_never_an_active_one() {
    Fixture::new().run(TINY, |r| {
        install(r, lb_common::SCHED_LEAST_CONN);
        // Six connections (counted: least-conn) fill what the tiny table's sets give them.
        let active = fill(r, 40_000, 6);
        let held = r.datapath.flow_entries().unwrap();
        let full = (0..held.len()).filter(|&i| held.read_settled(i).is_some_and(|e| e.holds_flow())).count();
        let counted: u64 = (1..=3).map(|id| r.datapath.active_connections(id).unwrap()).sum();
        assert_eq!(counted, 6, "six counted connections");
        // New one-packet flows while those were active in the last tick: none evicts one.
        let (not_recorded, evicted) = (r.counter(Counter::FlowNotRecorded), r.counter(Counter::FlowEvicted));
        for port in 41_000..41_050u16 {
            send(r, port, tcp::ACK).expect("forwarded");
        }
        for p in &active {
            assert!(recorded(r).contains(&key(*p)), "a one-packet flow evicted active connection {p}");
        }
        assert_eq!(r.counter(Counter::FlowEvicted), evicted, "an active connection was evicted");
        if full == 8 {
            assert!(r.counter(Counter::FlowNotRecorded) > not_recorded, "a full table recorded a new flow");
        }
        // Idle for two clock ticks (2^31 ns): new flows take the connections' entries, and the
        // evicted connections stop counting.
        std::thread::sleep(std::time::Duration::from_millis(2_300));
        for port in 42_000..42_050u16 {
            send(r, port, tcp::ACK).expect("forwarded");
            send(r, port, tcp::ACK).expect("forwarded");
        }
        let gone = active.iter().filter(|p| !recorded(r).contains(&key(**p))).count();
        assert_eq!(gone, active.len(), "idle connections kept their entries against new flows");
        assert!(r.counter(Counter::FlowEvicted) >= evicted + active.len() as u64, "evictions not counted");
        let counted_now: u64 = (1..=3).map(|id| r.datapath.active_connections(id).unwrap()).sum();
        let live = recorded(r).len() as u64;
        assert_eq!(
            counted_now, live,
            "counts after evictions: {counted_now} for {live} confirmed connections"
        );
    });
}

#[test]
fn a_flow_does_not_follow_its_backend_id_to_the_next_owner() {
    Fixture::new().run(SIZES, |r| {
        install(r, SCHED_MAGLEV);
        let to = send(r, 26_000, tcp::ACK).expect("forwarded");
        assert_eq!(flow_counters(r, 26_000, tcp::ACK), (Some(to), 1, 0));
        // The id goes to another backend: the agent moves the id's generation, and the entry
        // pinned to the earlier owner no longer counts (the packet is placed again).
        let b = r.datapath.backend(to).unwrap();
        r.datapath.set_backend(to, BackendValue { generation: b.generation.wrapping_add(1), ..b }).unwrap();
        assert!(in_table(r, &key(26_000)) && recorded(r).is_empty(), "a walk listed a void entry");
        assert_eq!(flow_counters(r, 26_000, tcp::ACK), (Some(to), 0, 1), "after the id changed hands");
        assert_eq!(flow_counters(r, 26_000, tcp::ACK), (Some(to), 1, 0), "recorded again");
    });
}

/// Takes backend `id` out of service as the agent does for a drain: its entry says it takes no
/// new flows, and the ring is rebuilt over the others.
fn drain(r: &mut XdpRunner, id: u32) {
    let b = r.datapath.backend(id).unwrap();
    r.datapath.set_backend(id, b.taking_new_flows(false)).unwrap();
    let members: Vec<Member> =
        (1..=3u32).filter(|&i| i != id).map(|i| Member::new(near4(i as u8), i, 1)).collect();
    r.write_ring(0, None, &maglev::build(&members, RING));
}

#[test]
fn a_syn_on_a_reused_port_does_not_follow_the_old_flow_to_a_drained_backend() {
    for cache in [0, 1] {
        Fixture::new().run(SIZES, |r| {
            install(r, SCHED_MAGLEV);
            caches(r, cache);
            let to = send(r, 30_000, tcp::ACK).expect("forwarded");
            assert_eq!(send(r, 30_000, tcp::ACK), Some(to), "confirmed");
            // A retransmitted SYN of a live flow follows it.
            assert_eq!(send(r, 30_000, tcp::SYN), Some(to), "cache {cache}: a SYN left a live flow");
            drain(r, to);
            // The open connection stays on its backend...
            assert_eq!(send(r, 30_000, tcp::ACK), Some(to), "cache {cache}: an open flow moved");
            // ...but a SYN on that port (a client behind NAT reusing it) is a new connection,
            // scheduled anew; the old flow is gone, so its next packets follow the new backend.
            let rescheduled = r.counter(Counter::SynRescheduled);
            let new = send(r, 30_000, tcp::SYN).expect("SYN forwarded");
            assert_ne!(new, to, "cache {cache}: a SYN went to the drained backend");
            assert_eq!(r.counter(Counter::SynRescheduled), rescheduled + 1);
            for i in 0..3 {
                assert_eq!(send(r, 30_000, tcp::ACK), Some(new), "cache {cache}: packet {i} after the SYN");
            }
        });
    }
    // Round robin records at the SYN, in the table of unconfirmed flows: the same there.
    Fixture::new().run(SIZES, |r| {
        install(r, SCHED_ROUND_ROBIN);
        assert_eq!(send(r, 30_001, tcp::SYN), Some(2));
        drain(r, 2);
        r.datapath.write_rr_sequence(VIP_ID, Some(&[2]), &[3]).unwrap();
        assert_eq!(
            send(r, 30_001, tcp::SYN),
            Some(3),
            "a SYN followed an unconfirmed flow to a drained backend"
        );
        assert_eq!(send(r, 30_001, tcp::ACK), Some(3));
    });
}

#[test]
fn a_flood_of_one_packet_flows_does_not_evict_a_confirmed_flow() {
    // 900 confirmed connections in a table of 1024 a CPU (the kernel's LRU alone keeps a few
    // busy flows through a flood, not most of a full table's).
    Fixture::new().run(Sizes { flows: 4096, ..SIZES }, |r| {
        install(r, SCHED_MAGLEV);
        let pinned: Vec<u32> = (0..900u16)
            .map(|i| {
                let to = send(r, 31_000 + i, tcp::ACK).expect("forwarded");
                assert_eq!(send(r, 31_000 + i, tcp::ACK), Some(to), "flow {i} confirmed");
                to
            })
            .collect();
        // Only backend 1 in the ring now: a flow that lost its entry would go there.
        r.write_ring(0, None, &maglev::build(&[Member::new(near4(1), 1, 1)], RING));
        // 5,000 spoofed ACKs from random sources, each forwarded by the ring, none seen twice.
        let (pending, confirmed) = (r.counter(Counter::FlowPending), r.counter(Counter::FlowConfirmed));
        let mut x: u32 = 0x9e37_79b9;
        for i in 0..5_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let source: IpAddr = [198, 18 + (x >> 31) as u8, (x >> 16) as u8, (x >> 8) as u8].into();
            let out = r.run(&tcp_frame(source, 1024 + (x % 60_000) as u16, vip(), PORT, tcp::ACK));
            assert_eq!(out.verdict, Verdict::Tx, "spoofed ACK {i}");
        }
        assert_eq!(r.counter(Counter::FlowPending) - pending, 5_000);
        assert_eq!(r.counter(Counter::FlowConfirmed), confirmed, "a one-packet flow was confirmed");
        let lost = (0..900u16).filter(|&i| send(r, 31_000 + i, tcp::ACK) != Some(pinned[i as usize])).count();
        assert_eq!(lost, 0, "the flood evicted {lost} of 900 confirmed flows");
    });
}

/// Flows of the churn test: client `i`'s one connection (a source address each, in
/// 198.18.0.0/15).
fn churn_frame(i: u32, flags: u8) -> Vec<u8> {
    let source: IpAddr = [198, 18 + ((i >> 16) & 1) as u8, (i >> 8) as u8, i as u8].into();
    tcp_frame(source, 40_000, vip(), PORT, flags)
}

/// The share of entries a new flow may not take (confirmed, a packet in the last
/// FLOW_IDLE_EVICT ticks), with "now" the newest tick in the table: the churn test touches its
/// active flows just before.
fn held_share(r: &XdpRunner) -> f64 {
    let entries = r.datapath.flow_entries().unwrap();
    let all: Vec<_> = (0..entries.len()).filter_map(|i| entries.read_settled(i)).collect();
    let tick = |e: &lb_common::FlowEntry| (e.ctl >> lb_common::FLOW_CLOCK_SHIFT) as u32;
    let now = all.iter().filter(|e| e.holds_flow()).map(tick).max().unwrap_or(0);
    let held = all
        .iter()
        .filter(|e| e.holds_flow() && e.confirmed() && now.wrapping_sub(tick(e)) < lb_common::FLOW_IDLE_EVICT)
        .count();
    held as f64 / entries.len() as f64
}

#[test]
fn a_full_table_with_half_its_entries_active_turns_away_few_new_flows() {
    // The field's steady state: a table full of finished connections (idle, taken by new flows)
    // with about half its entries held by active ones, new connections replacing old ones.
    const ENTRIES: u32 = 16_384;
    const ACTIVE: u32 = 7_000;
    const NEW_A_ROUND: u32 = 150;
    const ROUNDS: u32 = 48;
    const WARM_UP: u32 = 12;
    const ROUND_GAP: std::time::Duration = std::time::Duration::from_millis(250);
    Fixture::new().run(Sizes { flows: ENTRIES, ..SIZES }, |r| {
        install(r, SCHED_MAGLEV);
        let mut next = 0u32;
        let mut open = |r: &mut XdpRunner| {
            let i = next;
            next += 1;
            let before = r.counter(Counter::FlowNotRecorded);
            assert_eq!(r.run(&churn_frame(i, tcp::SYN)).verdict, Verdict::Tx, "SYN of flow {i}");
            let kept = r.counter(Counter::FlowNotRecorded) == before;
            assert_eq!(r.run(&churn_frame(i, tcp::ACK)).verdict, Verdict::Tx, "ACK of flow {i}");
            (i, kept)
        };
        // Finished connections fill the table, then go idle.
        for _ in 0..2 * ENTRIES {
            open(r);
        }
        std::thread::sleep(std::time::Duration::from_millis(2_300));
        let mut active: std::collections::VecDeque<u32> =
            (0..ACTIVE).map(|_| open(r)).filter(|&(_, kept)| kept).map(|(i, _)| i).collect();
        let (mut opened, mut turned_away, mut held) = (0u32, 0u32, Vec::new());
        for round in 0..ROUNDS {
            let start = std::time::Instant::now();
            for &i in &active {
                assert_eq!(r.run(&churn_frame(i, tcp::ACK)).verdict, Verdict::Tx, "flow {i}");
            }
            if round >= WARM_UP {
                held.push(held_share(r));
            }
            // The oldest connections end; new ones open (one turned away is not kept: its
            // packets would be scheduled anew every time).
            for _ in 0..NEW_A_ROUND {
                active.pop_front();
            }
            // Bounded: a table that turns every new flow away fails the test, not hangs it.
            let mut tries = 0;
            while active.len() < ACTIVE as usize {
                tries += 1;
                assert!(
                    tries <= 100 * NEW_A_ROUND,
                    "round {round}: {tries} new flows tried, too few recorded"
                );
                let (i, kept) = open(r);
                if round >= WARM_UP {
                    opened += 1;
                    turned_away += u32::from(!kept);
                }
                if kept {
                    active.push_back(i);
                }
            }
            std::thread::sleep(ROUND_GAP.saturating_sub(start.elapsed()));
        }
        let held = held.iter().sum::<f64>() / held.len() as f64;
        let share = turned_away as f64 / opened as f64;
        eprintln!(
            "{:.1} % of the entries held by active connections; {turned_away} of {opened} new flows \
             not recorded ({:.2} %)",
            held * 100.0,
            share * 100.0
        );
        assert!((0.40..0.58).contains(&held), "the test meant about half the entries held: {held:.3}");
        // Placing new connections by the sets' active connections gives about 0.3 % here; by
        // the age of the finished ones alone (as before December 2026) 0.8-1.2 %.
        assert!(share < 0.006, "{turned_away} of {opened} new flows not recorded");
    });
}

#[test]
fn idle_connections_keep_their_entries_while_the_table_has_room() {
    // Half the entries hold connections that have gone quiet (idle keep-alives: their next
    // packet may come any time); new flows fill a tenth more. They take empty ways, evicting
    // next to no idle connection: where a new flow goes among empty ways follows the flows the
    // sets hold, idle ones included.
    const ENTRIES: u32 = 16_384;
    Fixture::new().run(Sizes { flows: ENTRIES, ..SIZES }, |r| {
        install(r, SCHED_MAGLEV);
        let open = |r: &mut XdpRunner, i: u32| {
            assert_eq!(r.run(&churn_frame(i, tcp::SYN)).verdict, Verdict::Tx, "SYN of flow {i}");
            assert_eq!(r.run(&churn_frame(i, tcp::ACK)).verdict, Verdict::Tx, "ACK of flow {i}");
        };
        for i in 0..ENTRIES / 2 {
            open(r, i);
        }
        std::thread::sleep(std::time::Duration::from_millis(2_300));
        let (evicted, pending) = (r.counter(Counter::FlowEvicted), r.counter(Counter::FlowPending));
        for i in ENTRIES / 2..ENTRIES / 2 + ENTRIES / 10 {
            open(r, i);
        }
        let evicted = r.counter(Counter::FlowEvicted) - evicted;
        let new = r.counter(Counter::FlowPending) - pending;
        eprintln!("{evicted} idle connections evicted by {new} new flows");
        // 10 of 1,638 here; placing new flows by active connections alone (which sees no idle
        // flow, so sets fill unevenly) evicted 32.
        assert!(evicted * 100 < new, "{evicted} idle connections evicted by {new} new flows");
    });
}
