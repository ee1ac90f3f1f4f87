//! The schedulers in the data plane, packet by packet (BPF_PROG_TEST_RUN on one CPU): the
//! round-robin sequence walked in order by the CPU's cursor, least-conn's counts (+1 for a new
//! TCP flow, −1 once on FIN or RST) and its choice (predicted here from the same hashes, ring and
//! counts), and the flow table winning over a scheduler change.
use std::net::IpAddr;

use lb_common::{
    hash, BackendValue, ConfigValue, Counter, FlowValue, VipValue, MODE_L2DSR, PROTO_TCP, PROTO_UDP,
    SCHED_LEAST_CONN, SCHED_MAGLEV, SCHED_ROUND_ROBIN,
};
use lb_tests::{
    frames::{flow_key, frame, tcp, tcp_frame, L4},
    xdp::{
        fixture::{near4, near_mac},
        Fixture, Verdict, XdpRunner,
    },
};
use lb_userspace::{
    datapath::{open_connections, Sizes},
    maglev::{self, Member},
    schedule,
};

const RING: u32 = 1031;
const SIZES: Sizes = Sizes { flows: 16_384, max_vips: 256, max_rings: 1, ring_stride: RING, max_backends: 8 };
const SEED: u32 = 0x1234_5678;
const PORT: u16 = 80;

fn vip() -> IpAddr {
    [198, 18, 100, 1].into()
}

fn client() -> IpAddr {
    [198, 18, 5, 1].into()
}

/// Backends near4(1..=3) as ids 1..=3 with `weights`, the Maglev ring over them, the VIP (id 0,
/// ring 0, l2dsr: the output's destination MAC names the backend) with `scheduler`.
fn install(r: &mut XdpRunner, weights: [u16; 3], scheduler: u8) -> Vec<u32> {
    r.set_config(ConfigValue { src_v4: [198, 18, 1, 254], hash_seed: SEED, ..Default::default() });
    let mut members = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        let id = i as u32 + 1;
        let addr = near4(id as u8);
        r.datapath.set_backend(id, BackendValue::from(addr).with_weight(*w).taking_new_flows(true)).unwrap();
        members.push(Member::new(addr, id, u32::from(*w)));
    }
    let ring = maglev::build(&members, RING);
    r.write_ring(0, None, &ring);
    set_vip(r, scheduler, 0);
    ring
}

fn set_vip(r: &mut XdpRunner, scheduler: u8, rr_len: u16) {
    let value = VipValue { scheduler, rr_len, ..r.vip_value(0, 0, RING, MODE_L2DSR, 0) };
    r.install_vip(vip(), PORT, &[PROTO_TCP, PROTO_UDP], value);
}

/// Sends a TCP segment from the client's `sport` with `flags`: the backend it went to (1..=3).
fn send(r: &mut XdpRunner, sport: u16, flags: u8) -> u32 {
    let out = r.run(&tcp_frame(client(), sport, vip(), PORT, flags));
    assert_eq!(out.verdict, Verdict::Tx, "port {sport}, flags {flags:#x}");
    backend_of(&out.frame)
}

fn backend_of(frame: &[u8]) -> u32 {
    (1..=3u8).find(|&n| frame[..6] == near_mac(n)).unwrap_or_else(|| panic!("to no backend: {frame:02x?}"))
        as u32
}

fn active(r: &XdpRunner, id: u32) -> u64 {
    open_connections(r.datapath.active_connections(id).unwrap())
}

fn flow(r: &XdpRunner, sport: u16) -> Option<FlowValue> {
    let key = flow_key(client(), sport, vip(), PORT, PROTO_TCP);
    let mut found = None;
    let table = r.datapath.flow_table().unwrap();
    table
        .walk_values(|k, v, _| {
            if *k == key {
                found = Some(*v);
            }
        })
        .unwrap();
    found
}

#[test]
fn round_robin_walks_the_sequence_in_order_and_known_flows_stay() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        install(r, [100, 200, 300], SCHED_ROUND_ROBIN);
        let members: Vec<Member> = (1..=3u32).map(|id| Member::new(near4(id as u8), id, 100 * id)).collect();
        let seq = schedule::round_robin(&members, 4096);
        assert_eq!(seq.len(), 6, "1:2:3 reduces to a cycle of 6: {seq:?}");
        r.datapath.write_rr_sequence(0, None, &seq).unwrap();
        set_vip(r, SCHED_ROUND_ROBIN, seq.len() as u16);

        // Twice round the cycle, in its order: this CPU's cursor starts at 0.
        let got: Vec<u32> = (0..12).map(|i| send(r, 30_000 + i, tcp::SYN)).collect();
        let want: Vec<u32> = seq.iter().chain(&seq).copied().collect();
        assert_eq!(got, want, "new flows follow the sequence");
        // Known flows keep their backend and do not move the cursor.
        for i in 0..12 {
            assert_eq!(send(r, 30_000 + i, tcp::ACK), want[i as usize], "flow {i} again");
        }
        assert_eq!(send(r, 30_100, tcp::SYN), seq[0], "the cursor did not move for known flows");

        // A shorter sequence (equal weights): the cursor (at 1) stays inside it.
        let equal = [1u32, 2, 3];
        r.datapath.write_rr_sequence(0, Some(&seq), &equal).unwrap();
        set_vip(r, SCHED_ROUND_ROBIN, 3);
        let got: Vec<u32> = (0..6).map(|i| send(r, 30_200 + i, tcp::SYN)).collect();
        assert_eq!(got, vec![2, 3, 1, 2, 3, 1]);

        // No backend available: new flows are dropped, known ones still forwarded.
        set_vip(r, SCHED_ROUND_ROBIN, 0);
        let out = r.run(&tcp_frame(client(), 30_300, vip(), PORT, tcp::SYN));
        assert_eq!(out.verdict, Verdict::Drop);
        assert_eq!(send(r, 30_000, tcp::ACK), want[0]);

        // UDP flows take their turns as well; the drop moved no cursor.
        set_vip(r, SCHED_ROUND_ROBIN, 3);
        let udp = r.run(&frame(client(), 30_400, vip(), PORT, L4::Udp));
        assert_eq!(udp.verdict, Verdict::Tx);
        assert_eq!(backend_of(&udp.frame), 2, "the cursor was at 1");
    });
}

#[test]
fn a_scheduler_change_moves_no_known_flow() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        install(r, [100, 100, 100], SCHED_MAGLEV);
        // Each connection's SYN records its flow; its ACK follows it.
        let before: Vec<u32> = (0..30)
            .map(|i| {
                let b = send(r, 31_000 + i, tcp::SYN);
                assert_eq!(send(r, 31_000 + i, tcp::ACK), b, "flow {i}: its ACK went elsewhere");
                b
            })
            .collect();
        // Round robin over backend 1 only: new flows all go there, known ones stay.
        r.datapath.write_rr_sequence(0, None, &[1]).unwrap();
        set_vip(r, SCHED_ROUND_ROBIN, 1);
        for (i, &b) in before.iter().enumerate() {
            assert_eq!(send(r, 31_000 + i as u16, tcp::ACK), b, "flow {i} after the change");
        }
        assert!(before.iter().any(|&b| b != 1), "some flows were elsewhere: {before:?}");
        for i in 0..10 {
            assert_eq!(send(r, 31_100 + i, tcp::SYN), 1);
        }
        // Maglev flows are not counted, whatever the VIP becomes.
        set_vip(r, SCHED_LEAST_CONN, 0);
        send(r, 31_000, tcp::FIN | tcp::ACK);
        assert_eq!((1..=3).map(|id| active(r, id)).sum::<u64>(), 0);
    });
}

#[test]
fn least_conn_counts_each_connection_once() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        install(r, [100, 100, 100], SCHED_LEAST_CONN);
        let b = send(r, 32_000, tcp::SYN);
        assert_eq!(active(r, b), 0, "a SYN alone counts nothing (it may be spoofed)");
        assert_eq!(flow(r, 32_000).map(|f| f.counted), Some(false), "recorded at the SYN, not counted yet");
        let confirmed = r.counter(Counter::FlowConfirmed);
        assert_eq!(send(r, 32_000, tcp::SYN), b, "a retransmitted SYN keeps its backend");
        assert_eq!(active(r, b), 0, "and counts nothing: the connection has not opened");
        assert_eq!(r.counter(Counter::FlowConfirmed), confirmed, "nor confirms the flow");
        assert_eq!(send(r, 32_000, tcp::ACK), b);
        assert_eq!(active(r, b), 1, "a confirmed TCP flow counts");
        assert_eq!(flow(r, 32_000).map(|f| f.counted), Some(true), "and is marked counted");
        for flags in [tcp::SYN, tcp::ACK, tcp::ACK] {
            assert_eq!(send(r, 32_000, flags), b);
        }
        assert_eq!(active(r, b), 1, "its later packets do not");
        send(r, 32_000, tcp::FIN | tcp::ACK);
        assert_eq!(active(r, b), 0, "FIN uncounts it");
        assert_eq!(flow(r, 32_000).map(|f| f.counted), Some(false), "and clears the mark");
        for flags in [tcp::FIN | tcp::ACK, tcp::RST, tcp::ACK] {
            assert_eq!(send(r, 32_000, flags), b, "the flow keeps its backend");
        }
        assert_eq!(active(r, b), 0, "a retransmitted FIN or a RST after it uncounts nothing more");

        let c = send(r, 32_001, tcp::SYN);
        send(r, 32_001, tcp::RST);
        assert_eq!(active(r, c), 0, "RST uncounts too");
        let d = send(r, 32_002, tcp::RST);
        assert_eq!(active(r, d), 0, "a flow whose first packet is a RST never counts");
        // UDP flows are not counted.
        let out = r.run(&frame(client(), 32_003, vip(), PORT, L4::Udp));
        assert_eq!(out.verdict, Verdict::Tx);
        assert_eq!((1..=3).map(|id| active(r, id)).sum::<u64>(), 0);
    });
}

/// A client that reuses the 5-tuple of a connection that closed (NAT gateways and busy clients
/// do, once their TIME_WAIT is over) opens a new connection on the old entry: it keeps the
/// entry's backend (a late SYN of a live connection must not move it), is a new flow in the
/// VIP's and the backend's figures, and counts once the client's ACK confirms it, as any
/// connection does.
#[test]
fn least_conn_counts_a_new_connection_on_a_closed_ones_port() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        install(r, [100, 100, 100], SCHED_LEAST_CONN);
        let b = send(r, 33_000, tcp::SYN);
        assert_eq!(send(r, 33_000, tcp::ACK), b);
        assert_eq!(active(r, b), 1, "the first connection counts");
        send(r, 33_000, tcp::FIN | tcp::ACK);
        assert_eq!(active(r, b), 0, "and is uncounted at its FIN");
        let (vip_news, backend_news) = (r.vip_stats(0).new_flows, r.backend_stats(b).new_flows);
        assert_eq!(send(r, 33_000, tcp::SYN), b, "a new connection on the port keeps the entry's backend");
        assert_eq!(r.vip_stats(0).new_flows - vip_news, 1, "a new flow of the VIP");
        assert_eq!(r.backend_stats(b).new_flows - backend_news, 1, "and of the backend");
        assert_eq!(active(r, b), 0, "its SYN alone counts nothing");
        assert_eq!(send(r, 33_000, tcp::SYN), b);
        assert_eq!(r.vip_stats(0).new_flows - vip_news, 1, "its retransmitted SYN is no other new flow");
        assert_eq!(send(r, 33_000, tcp::ACK), b);
        assert_eq!(active(r, b), 1, "the new connection counts once the client's ACK confirms it");
        assert_eq!(flow(r, 33_000).map(|f| f.counted), Some(true), "and is marked counted");
        send(r, 33_000, tcp::SYN);
        assert_eq!(active(r, b), 1, "a late SYN of the open connection counts nothing more");
        send(r, 33_000, tcp::RST);
        assert_eq!(active(r, b), 0, "its RST uncounts it");
    });
}

/// What the data plane should pick for a new flow: its ring pick and the first different one
/// of up to four rehashes, the fewer connections per unit of weight (the first on a tie).
fn predict(ring: &[u32], sport: u16, counts: &[u64; 4], weights: [u16; 3]) -> u32 {
    let key = flow_key(client(), sport, vip(), PORT, PROTO_TCP);
    let h = hash::flow(&key, SEED);
    let first = ring[hash::ring_slot(h, RING) as usize];
    let mut second = first;
    let mut g = h;
    for _ in 0..4 {
        g = hash::rehash(g);
        second = ring[hash::ring_slot(g, RING) as usize];
        if second != first {
            break;
        }
    }
    let load = |id: u32| (counts[id as usize], u64::from(weights[id as usize - 1]));
    let ((a, wa), (b, wb)) = (load(first), load(second));
    if b * wa < a * wb {
        second
    } else {
        first
    }
}

#[test]
fn least_conn_picks_the_less_loaded_of_two_ring_picks_by_weight() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        let weights = [100, 100, 300];
        let ring = install(r, weights, SCHED_LEAST_CONN);
        // Backend 1 is busy; 2 and 3 start empty. Every new connection stays open.
        r.datapath.set_active_connections(1, 40).unwrap();
        let mut counts = [0u64, 40, 0, 0];
        let mut got = [0u32; 4];
        for i in 0..200u16 {
            let sport = 33_000 + i;
            let want = predict(&ring, sport, &counts, weights);
            let b = send(r, sport, tcp::SYN);
            assert_eq!(b, want, "connection {i}, counts {counts:?}");
            // The handshake's last packet confirms the flow: it counts from then.
            assert_eq!(send(r, sport, tcp::ACK), b, "connection {i}: its ACK went elsewhere");
            counts[b as usize] += 1;
            got[b as usize] += 1;
            assert_eq!(active(r, b), counts[b as usize]);
        }
        eprintln!("200 connections, weights {weights:?}, backend 1 starting at 40: {:?}", &got[1..]);
        // Per unit of weight the three end close together: 3's share is about three times 2's.
        let per_weight: Vec<f64> = (1..=3).map(|i| counts[i] as f64 / f64::from(weights[i - 1])).collect();
        let spread = per_weight.iter().cloned().fold(f64::MIN, f64::max)
            - per_weight.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread < 0.15, "connections per unit of weight {per_weight:?}");
        // Negative counts (a correction racing a FIN) read as none.
        r.datapath.set_active_connections(2, u64::MAX).unwrap();
        assert_eq!(active(r, 2), 0);
    });
}

/// A ring pick for a new flow from `sport`, then up to four further ones (rehashes) while it
/// names backend `skip`: (the first pick, the one the data plane takes).
fn predict_repick(ring: &[u32], sport: u16, skip: u32) -> (u32, u32) {
    let key = flow_key(client(), sport, vip(), PORT, PROTO_TCP);
    let h = hash::flow(&key, SEED);
    let first = ring[hash::ring_slot(h, RING) as usize];
    let mut g = h;
    for _ in 0..4 {
        if first != skip {
            break;
        }
        g = hash::rehash(g);
        let other = ring[hash::ring_slot(g, RING) as usize];
        if other != skip {
            return (first, other);
        }
    }
    (first, first)
}

/// A drain's first step marks the backend as taking no new flows; its ring slots then go to
/// the others one write at a time (tens of thousands for a large ring). Meanwhile a new flow
/// whose slot still names it is scheduled by further ring picks, not pinned to it for good; its
/// open connections stay.
#[test]
fn a_new_flow_is_not_given_a_backend_that_takes_none_while_its_ring_is_rewritten() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        let ring = install(r, [100, 100, 100], SCHED_MAGLEV);
        let open = (34_000..34_100).find(|&p| predict_repick(&ring, p, 0).0 == 1).expect("a port on 1");
        assert_eq!(send(r, open, tcp::SYN), 1);
        assert_eq!(send(r, open, tcp::ACK), 1);
        r.datapath
            .set_backend(1, BackendValue::from(near4(1)).with_weight(100).taking_new_flows(false))
            .unwrap();
        let (mut slots_on_1, mut kept_on_1) = (0, 0);
        for i in 0..300u16 {
            let sport = 34_100 + i;
            let (first, want) = predict_repick(&ring, sport, 1);
            slots_on_1 += (first == 1) as u32;
            kept_on_1 += (want == 1) as u32;
            assert_eq!(send(r, sport, tcp::SYN), want, "new flow {i}: first pick {first}");
        }
        eprintln!(
            "300 new flows: {slots_on_1} picked backend 1 first, {kept_on_1} kept it (every pick on it)"
        );
        assert!(
            slots_on_1 > 50 && kept_on_1 < slots_on_1 / 10,
            "{slots_on_1} first picks of 1, {kept_on_1} kept"
        );
        assert_eq!(send(r, open, tcp::ACK), 1, "the open connection left its backend");
    });
}

/// A least-conn connection that its backend closed (the backend's RST or FIN goes straight to
/// the client, never through the balancer) stops counting once it has had no packet for the
/// census's limit: the census clears its count bit, and the agent's correction then lowers the
/// backend's count; a FIN of the client's after that uncounts nothing a second time.
#[test]
fn the_census_stops_counting_a_connection_idle_past_its_limit() {
    let fx = Fixture::new();
    fx.run(SIZES, |r| {
        install(r, [100, 100, 100], SCHED_LEAST_CONN);
        let ports = [35_000u16, 35_001, 35_002];
        for p in ports {
            let b = send(r, p, tcp::SYN);
            assert_eq!(send(r, p, tcp::ACK), b);
            assert!(flow(r, p).is_some_and(|f| f.counted), "connection {p} counted");
        }
        let table = r.datapath.flow_table().unwrap();
        let now = lb_userspace::datapath::flow_clock_now();
        let idle = lb_common::flow_clock(lb_userspace::agent::COUNT_IDLE.as_nanos() as u64);
        let census = |at: u32| {
            let mut counted = 0;
            let walk = table.census_walk(at, idle, |_, v, _| counted += u32::from(v.counted)).unwrap();
            // By backend: the agent lowers each one's count by as many.
            let by_backend: u64 = (1..=3).map(|id| walk.counts_expired.get(&id).copied().unwrap_or(0)).sum();
            assert_eq!(by_backend, walk.counts_expired.values().sum::<u64>(), "{:?}", walk.counts_expired);
            (by_backend, counted)
        };
        assert_eq!(census(now), (0, 3), "just used: still counted");
        assert_eq!(census(now + idle - 2), (0, 3), "short of the limit");
        assert_eq!(census(now + idle + 1), (3, 0), "past the limit");
        for p in ports {
            assert!(flow(r, p).is_some_and(|f| !f.counted), "connection {p} still counted");
        }
        let before: Vec<u64> = (1..=3).map(|id| active(r, id)).collect();
        for p in ports {
            send(r, p, tcp::FIN | tcp::ACK);
        }
        assert_eq!((1..=3).map(|id| active(r, id)).collect::<Vec<_>>(), before, "a FIN uncounted again");
    });
}
