//! The balancer on field traffic: many flows in the traffic shapes clients present (random
//! 5-tuples; one /16 with sequential addresses; a NAT gateway's one address with many ports;
//! many clients on one port), per packet and in packets per second, each shape against the
//! MAC-swap and encapsulation floors measured in the same run, the worst shape against each
//! target.
//!
//! ```sh
//! cargo run --release -p lb-bench --bin bench_flows [-- --rounds N --packets P --max-flows F]
//! cargo run --release -p lb-bench --bin bench_flows -- --cases new --cost-only   # one part
//! ```
//!
//! # Method
//! Everything runs with `BPF_PROG_TEST_RUN` on one pinned CPU (the pps rows with two CPUs use
//! both), the frames' ingress device a veth `lb0` in the bench's namespace, whose routes and
//! next hops lbd's own host code sets up (forwarding, managed neighbour entries): the
//! balancer's FIB lookups answer as on a host. Nothing is sent; no live frames are needed
//! (kernels and VMs that refuse them still run this bench).
//! - Cost per packet (`flows cost`): one test run per packet, each frame built here for its
//!   flow, and the kernel's BPF statistics of the program under test (run_time_ns / run_cnt),
//!   the same measure as the MAC-swap floor's. The kernel reads its clock around each run: on
//!   a KVM guest that is most of the floor.
//! - Packets per second (`flows pps`): `bench_flowgen` (lb-ebpf/src/bench.rs) writes each
//!   frame from a template in the shape and tail-calls the program under test, repeated in one
//!   test run; the rate is the kernel's own time for the runs, generator included. There is no
//!   driver in this path (no veth, no page recycling), so the balancer's share of the time is
//!   larger than on a wire and its ratio to the encapsulation floor a stricter one.
//! - Flow counts 1, 10k, 100k, 1M and 4M (`--max-flows`), in a flow table of two entries for
//!   each flow of the count (at that load about 0.03 % of flows find both their sets full and
//!   are not recorded: up to 0.5 % of an established run's packets may miss); every flow
//!   recorded first (two packets each: the first records it unconfirmed, the second confirms
//!   it). New flows run against a second balancer with the production table size, filled and
//!   left idle for three of the table's clock ticks before each round, as a full table's oldest
//!   flows are: SYNs (each records its flow), each SYN followed by its ACK with the ACK alone
//!   timed (BPF statistics read around it), and packets of connections the table never saw.
//! - Each measured run is checked: the balancer's verdict counters moved by exactly the
//!   packets sent (forward_tx, and flow_hit or flow_miss, flow_pending, flow_confirmed as the
//!   case must); a run that fails is void and gives no number; the bench then exits 1.
//! - Rounds (`--rounds`) of each case run back to back after its warm-up; rows are medians.
//!
//! Prints `ROW|section|case|value|unit|ratio|target|status` lines (see xtask/src/bench.rs).
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    sync::Barrier,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData, ProgramArray},
    programs::{TestRun, TestRunOptions, Xdp},
    sys::{enable_stats, Stats},
};
use etherparse::PacketBuilder;
use lb_bench::{
    balancer::{self, PORT, VIP4},
    by_shape::ByShape,
    programs::{ENCAP, FLOWGEN, FLOW_LOOKUP, MAC_SWAP},
    row::Row,
    stats::{median, run_stats},
    thread::ThreadIn,
};
use lb_common::{
    bench::{flow_source, map_names as bench_maps, shape, FlowGen, MAX_FRAME},
    Counter,
};
use lb_tests::netns::Netns;
use lb_userspace::{
    datapath::{self, Datapath, BALANCER},
    host::{
        forwarding::{self, Policy},
        neighbours::NextHops,
        Family,
    },
};

/// Frames of one test run with a repeat count (pps, warm-ups).
const CHUNK: u32 = 1 << 16;
/// Upper bound of any warm-up.
const WARM_UP_LIMIT: Duration = Duration::from_secs(60);
/// Clients' addresses: 198.18.0.0/15 plus the shape's offset.
const CLIENT_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x19, 0x01];
/// The balancer's interface and its address; the backends are on the far side.
const LB_IF: &str = "lb0";
const LB_ADDR: &str = "198.18.0.2/24";
/// New flows are numbered from here on: no established case uses these.
const FRESH_FLOWS: u32 = 1 << 22;
const XDP_TX: u32 = 3;
/// New flows a shape's SYN pps runs draw from: more than they send (a few Mpps for a few
/// 300-ms runs), so that every SYN is a new flow's.
const SYN_PPS_FLOWS: u32 = 8 << 20;

fn backend(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 0x10 + n)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Packet {
    Syn,
    Ack,
}

/// The frame of flow `flow` in `shape`, built independently of the generator.
fn frame(kind: Packet, shape: u32, flow: u32, dst_mac: [u8; 6]) -> Vec<u8> {
    let (offset, port) = flow_source(shape, flow);
    build(kind, CLIENT_BASE.wrapping_add(offset).to_be_bytes(), port, dst_mac)
}

fn build(kind: Packet, src: [u8; 4], sport: u16, dst_mac: [u8; 6]) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(CLIENT_MAC, dst_mac).ipv4(src, VIP4.octets(), 64);
    let tcp = ip.tcp(sport, PORT, 1, 64240);
    let tcp = if kind == Packet::Syn { tcp.syn() } else { tcp.ack(1) };
    let mut out = Vec::new();
    tcp.write(&mut out, &[0; 10]).expect("etherparse writes to a Vec");
    assert!(out.len() % 4 == 0 && out.len() <= MAX_FRAME, "a {}-byte frame", out.len());
    out
}

/// The generator's template for `kind` in `shape`.
fn flowgen(kind: Packet, shape: u32, flows: u32, dst_mac: [u8; 6]) -> FlowGen {
    let template = build(kind, [0; 4], 0, dst_mac);
    let mut g = FlowGen {
        len: template.len() as u32,
        flows,
        repeat_shift: 0,
        cpus: 1,
        first: 0,
        shape,
        addr_off: 14 + 12,
        port_off: 34,
        ip_csum_off: 14 + 10,
        l4_csum_off: 34 + 16,
        addr_base: CLIENT_BASE,
        udp: 0,
        frame: [0; MAX_FRAME],
    };
    g.frame[..template.len()].copy_from_slice(&template);
    g
}

/// Which balancer a case runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    /// Sized for the largest flow count on one CPU; established flows.
    Large,
    /// The production size, kept full; new flows.
    Full,
}

/// What a measured run must move in the balancer's counters, per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A floor program: no balancer counter moves; every run returns XDP_TX.
    Floor,
    Established,
    /// A SYN of a flow never seen: a miss, recorded unconfirmed (in an empty entry, an
    /// unconfirmed flow's or an idle one's).
    New,
    /// A packet (no SYN) of a connection another balancer host recorded: as `New`, and
    /// recorded midstream.
    Midstream,
    /// Two packets of each new flow (its SYN, then its ACK): one miss and recorded, one hit
    /// and confirmed.
    Pair,
}

/// Packets of an established run that may miss their flow (one in this many): flows the warm-up
/// could not record (both their sets full: about 0.03 % at the two entries a flow the bench
/// gives the table), and, at millions of flows, measured flows (the first recorded, idle for
/// seconds by then) whose entries later flows that found both their sets full took (0.2 % at
/// 4M).
const MISS_TOLERANCE: u64 = 200;

impl Expect {
    /// How far each counter must move for `packets` frames: (counter, least, most); counters
    /// not listed must not move.
    fn bounds(self, packets: u64) -> Vec<(Counter, u64, u64)> {
        let half = packets / 2;
        let exact = |c, n| (c, n, n);
        match self {
            Expect::Floor => vec![],
            Expect::Established => {
                // A flow the warm-up could not record misses: scheduled again, recorded if it
                // finds room (maybe an idle flow's entry), else not.
                let few = packets / MISS_TOLERANCE;
                vec![
                    exact(Counter::ForwardTx, packets),
                    (Counter::FlowHit, packets - few, packets),
                    (Counter::FlowMiss, 0, few),
                    (Counter::FlowPending, 0, few),
                    (Counter::FlowConfirmed, 0, few),
                    (Counter::FlowNotRecorded, 0, few),
                    (Counter::FlowEvicted, 0, few),
                    (Counter::FlowMidstream, 0, few),
                ]
            }
            // New flows in a full table take idle flows' entries, or empty ones.
            Expect::New | Expect::Midstream => {
                let mut bounds = vec![
                    exact(Counter::ForwardTx, packets),
                    exact(Counter::FlowMiss, packets),
                    exact(Counter::FlowPending, packets),
                    (Counter::FlowEvicted, 0, packets),
                ];
                if self == Expect::Midstream {
                    bounds.push(exact(Counter::FlowMidstream, packets));
                }
                bounds
            }
            Expect::Pair => vec![
                exact(Counter::ForwardTx, packets),
                exact(Counter::FlowMiss, half),
                exact(Counter::FlowPending, half),
                exact(Counter::FlowHit, half),
                exact(Counter::FlowConfirmed, half),
                (Counter::FlowEvicted, 0, half),
            ],
        }
    }
}

struct Bench {
    // Dropped first: the programs go before the namespaces.
    large: Datapath,
    full: Datapath,
    large_chain: ProgramArray<MapData>,
    full_chain: ProgramArray<MapData>,
    ingress: u32,
    lb_mac: [u8; 6],
    /// The next new flow's number.
    fresh: u32,
    /// The full table was filled (once is enough: new flows run against it idle).
    full_table_filled: bool,
    _hops: NextHops,
    dut: Netns,
    _far: Netns,
}

impl Bench {
    /// Sets up the namespaces and both balancers; the calling thread must be in `dut` already
    /// (lbd's host code works in the calling thread's namespace).
    fn new(dut: Netns, far: Netns) -> Self {
        dut.ip(&["link", "add", LB_IF, "type", "veth", "peer", "name", "bk0", "netns", far.name()]);
        dut.ip(&["addr", "add", LB_ADDR, "dev", LB_IF]);
        dut.ip(&["link", "set", LB_IF, "up"]);
        for n in 1..=balancer::BACKENDS {
            far.ip(&["addr", "add", &format!("{}/24", backend(n)), "dev", "bk0"]);
        }
        far.ip(&["link", "set", "bk0", "up"]);
        // What lbd does on its host: forwarding on (bpf_fib_lookup answers only then) and a
        // managed neighbour entry for every backend's next hop, resolved before traffic.
        let interfaces = [LB_IF.to_owned()];
        forwarding::ensure(&interfaces, &BTreeSet::from([Family::Ipv4]), Policy::Enable)
            .unwrap_or_else(|e| panic!("enabling forwarding on {LB_IF}: {e}"));
        let mut hops = NextHops::new(&interfaces).unwrap_or_else(|e| panic!("next hops: {e}"));
        let backends: BTreeSet<IpAddr> = (1..=balancer::BACKENDS).map(|n| backend(n).into()).collect();
        hops.sync(&backends).unwrap_or_else(|e| panic!("neighbour entries for the backends: {e}"));
        hops.wait_resolved(&backends, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("the backends' next hops did not resolve: {e}"));
        let ingress = lb_userspace::host::netlink::link::ifindex(LB_IF).expect("lb0's index");
        let lb_mac = lb_tests::topology::parse_mac(&lb_tests::topology::mac_of(&dut, LB_IF));

        let (large, large_chain) = load(1024, &[FLOWGEN, MAC_SWAP, ENCAP, FLOW_LOOKUP]);
        let (full, full_chain) = load(balancer::production_flows(), &[FLOWGEN, FLOW_LOOKUP]);
        Bench {
            large,
            full,
            large_chain,
            full_chain,
            ingress,
            lb_mac,
            fresh: FRESH_FLOWS,
            full_table_filled: false,
            _hops: hops,
            dut,
            _far: far,
        }
    }

    /// A new large table, two entries for each of `flows` (a whole number of sets).
    fn size_large_table(&mut self, flows: u32) {
        let entries = (2 * flows).max(1024).next_multiple_of(lb_common::FLOW_WAYS);
        let (dp, chain) = load(entries, &[FLOWGEN, MAC_SWAP, ENCAP, FLOW_LOOKUP]);
        self.large = dp;
        self.large_chain = chain;
    }

    fn datapath(&self, table: Table) -> &Datapath {
        match table {
            Table::Large => &self.large,
            Table::Full => &self.full,
        }
    }

    fn program(&self, table: Table, name: &str) -> &Xdp {
        let prog = self.datapath(table).raw().program(name).unwrap_or_else(|| panic!("no program {name}"));
        prog.try_into().unwrap_or_else(|_| panic!("{name} is no XDP program"))
    }

    /// Puts `name` behind the generator of `table`'s object.
    fn chain_to(&mut self, table: Table, name: &str) {
        let fd = self.program(table, name).fd().expect("a loaded program").try_clone().expect("dup");
        let chain = match table {
            Table::Large => &mut self.large_chain,
            Table::Full => &mut self.full_chain,
        };
        chain.set(0, &fd, 0).unwrap_or_else(|e| panic!("BENCH_CHAIN[0] = {name}: {e}"));
    }

    fn set_flowgen(&mut self, table: Table, gen: FlowGen) {
        let dp = match table {
            Table::Large => &mut self.large,
            Table::Full => &mut self.full,
        };
        let map = dp.raw_mut().map_mut(bench_maps::FLOWGEN).expect("the BENCH_FLOWGEN map");
        let mut array: Array<&mut MapData, FlowGen> = Array::try_from(map).expect("BENCH_FLOWGEN");
        array.set(0, gen, 0).expect("writing the generator's template");
    }

    fn counters(&self, table: Table) -> Vec<u64> {
        let dp = self.datapath(table);
        Counter::ALL.iter().map(|c| dp.counter(*c).expect("reading STATS")).collect()
    }

    /// Checks that the counters moved by exactly what `expect` says for `packets` frames.
    fn check(expect: Expect, packets: u64, before: &[u64], after: &[u64]) -> Result<(), String> {
        let bounds = expect.bounds(packets);
        let mut problems = Vec::new();
        for (i, c) in Counter::ALL.iter().enumerate() {
            let moved = after[i] - before[i];
            let (least, most) = bounds.iter().find(|(bc, ..)| bc == c).map_or((0, 0), |&(_, l, m)| (l, m));
            if !(least..=most).contains(&moved) {
                problems.push(format!("{} moved by {moved}, {least}..={most} expected", c.name()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// One test run of `xdp` (program `name`) with `frame`, which must answer XDP_TX.
    fn run_once(&self, xdp: &Xdp, name: &str, frame: &[u8]) -> Result<(), String> {
        let ctx = lb_tests::xdp::xdp_md(frame.len(), self.ingress);
        let r = xdp
            .test_run(TestRunOptions { data_in: Some(frame), ctx_in: Some(&ctx), ..Default::default() })
            .map_err(|e| format!("test run of {name}: {e}"))?;
        if r.return_value != XDP_TX {
            return Err(format!("{name} returned {} (XDP_TX expected)", r.return_value));
        }
        Ok(())
    }

    /// One test run per frame of `prog` (in `table`'s object); the program's cost per run by
    /// the kernel's BPF statistics (on while this runs).
    fn cost(&self, table: Table, prog: &str, expect: Expect, frames: &[Vec<u8>]) -> Result<f64, String> {
        let xdp = self.program(table, prog);
        let before = (run_stats(xdp), self.counters(table));
        for frame in frames {
            self.run_once(xdp, prog, frame)?;
        }
        let after = (run_stats(xdp), self.counters(table));
        Self::check(expect, frames.len() as u64, &before.1, &after.1)?;
        let (ns, runs) = (after.0 .0 - before.0 .0, after.0 .1 - before.0 .1);
        if runs != frames.len() as u64 {
            return Err(format!("{prog} ran {runs} times for {} frames", frames.len()));
        }
        Ok(ns as f64 / runs as f64)
    }

    /// The cost of the second packet of each pair in `frames` (each flow's SYN, then its ACK,
    /// one test run each), by the BPF statistics read around it: what a connection's ACK costs
    /// right after its SYN, as it comes one round trip later.
    fn cost_of_seconds(&self, table: Table, frames: &[Vec<u8>]) -> Result<f64, String> {
        let xdp = self.program(table, BALANCER);
        let before = self.counters(table);
        let (mut ns, mut runs) = (0u64, 0u64);
        for (i, frame) in frames.iter().enumerate() {
            let timed = i % 2 == 1;
            let start = if timed { Some(run_stats(xdp)) } else { None };
            self.run_once(xdp, BALANCER, frame)?;
            if let Some((t0, n0)) = start {
                let (t1, n1) = run_stats(xdp);
                ns += t1 - t0;
                runs += n1 - n0;
            }
        }
        Self::check(Expect::Pair, frames.len() as u64, &before, &self.counters(table))?;
        if runs != frames.len() as u64 / 2 {
            return Err(format!("the balancer ran {runs} times for {} timed frames", frames.len() / 2));
        }
        Ok(ns as f64 / runs as f64)
    }

    /// Runs the generator of `table` with `gen` for `packets` frames (whole chunks) or `limit`;
    /// returns (frames, the kernel's ns for them).
    fn generate(&mut self, table: Table, gen: FlowGen, packets: u64, limit: Duration) -> (u64, u64) {
        self.set_flowgen(table, gen);
        let template = gen.frame[..gen.len as usize].to_vec();
        let ctx = lb_tests::xdp::xdp_md(template.len(), self.ingress);
        let xdp = self.program(table, FLOWGEN);
        let (mut sent, mut ns) = (0u64, 0u64);
        let start = Instant::now();
        while sent < packets && start.elapsed() < limit {
            let repeat = (packets - sent).min(CHUNK as u64) as u32;
            let r = xdp
                .test_run(TestRunOptions {
                    data_in: Some(&template),
                    ctx_in: Some(&ctx),
                    repeat,
                    ..Default::default()
                })
                .unwrap_or_else(|e| panic!("test run of the generator: {e}"));
            assert_eq!(r.return_value, XDP_TX, "the chained program's verdict");
            sent += repeat as u64;
            ns += r.duration.as_nanos() as u64 * repeat as u64;
        }
        (sent, ns)
    }

    /// Packets per second of `gen` through `target`, checked against `expect`.
    fn pps(
        &mut self,
        table: Table,
        target: &str,
        gen: FlowGen,
        expect: Expect,
        budget: Duration,
    ) -> Result<f64, String> {
        self.chain_to(table, target);
        let before = self.counters(table);
        let (sent, ns) = self.generate(table, gen, u64::MAX, budget);
        let after = self.counters(table);
        Self::check(expect, sent, &before, &after)?;
        Ok(sent as f64 * 1e9 / ns as f64)
    }

    /// A large table of its own for flows 0..flows of `shape`, each recorded (two packets).
    fn warm(&mut self, shape: u32, flows: u32) {
        self.size_large_table(flows);
        self.chain_to(Table::Large, BALANCER);
        let mut gen = flowgen(Packet::Ack, shape, flows, self.lb_mac);
        gen.repeat_shift = 1;
        let t = Instant::now();
        let (sent, ns) = self.generate(Table::Large, gen, 2 * flows as u64 + 2, WARM_UP_LIMIT);
        eprintln!(
            "bench_flows: warm-up {}, {flows} flows: {sent} frames, {:.0} ns/frame, {:.1?}",
            shape::name(shape),
            ns as f64 / sent as f64,
            t.elapsed()
        );
    }

    /// Fills the production-size table with new flows.
    fn fill_full_table(&mut self) {
        self.chain_to(Table::Full, BALANCER);
        let flows = balancer::production_flows() as u64 * 11 / 10;
        // A block of new flow numbers, each flow sent twice in a row (recorded).
        let mut gen = flowgen(Packet::Ack, shape::RANDOM, flows as u32, self.lb_mac);
        gen.repeat_shift = 1;
        gen.first = self.take_fresh(flows as u32);
        let (sent, ns) = self.generate(Table::Full, gen, 2 * flows, WARM_UP_LIMIT);
        self.full_table_filled = true;
        eprintln!(
            "bench_flows: filling the full table: {sent} frames, {:.0} ns/frame",
            ns as f64 / sent as f64
        );
    }

    /// Lets every flow of the full table go idle long enough for a new flow to take its entry
    /// (as a full table's oldest flows are): two of the flow table's clock ticks.
    fn idle_full_table() {
        std::thread::sleep(Duration::from_nanos(u64::from(lb_common::FLOW_IDLE_EVICT + 1) << 30));
    }

    /// `n` flow numbers never used before.
    fn take_fresh(&mut self, n: u32) -> u32 {
        let first = self.fresh;
        self.fresh = self.fresh.wrapping_add(n);
        first
    }

    /// Compares the generator's frames (nothing chained) with the ones built here.
    fn check_generator(&mut self) {
        // Without a program in BENCH_CHAIN the generator returns its frame.
        // (Empty at first: nothing to clear is no error.)
        let _ = self.large_chain.clear_index(&0);
        for s in shape::ALL {
            for flow in [0u32, 1, 777, 65_535, 65_536, 131_071, 1_000_003, FRESH_FLOWS + 5] {
                // One flow, numbered `first`: whatever the sequence number.
                let mut gen = flowgen(Packet::Ack, s, 1, self.lb_mac);
                gen.first = flow;
                self.set_flowgen(Table::Large, gen);
                let template = gen.frame[..gen.len as usize].to_vec();
                let ctx = lb_tests::xdp::xdp_md(template.len(), self.ingress);
                let mut out = vec![0u8; 256];
                let r = self
                    .program(Table::Large, FLOWGEN)
                    .test_run(TestRunOptions {
                        data_in: Some(&template),
                        data_out: Some(&mut out),
                        ctx_in: Some(&ctx),
                        ..Default::default()
                    })
                    .unwrap_or_else(|e| panic!("test run of the generator: {e}"));
                assert_eq!(r.return_value, XDP_TX, "the generator alone returns XDP_TX");
                let want = frame(Packet::Ack, s, flow, self.lb_mac);
                assert_eq!(
                    &out[..want.len()],
                    &want[..],
                    "the generator's frame of flow {flow} in shape {}",
                    shape::name(s)
                );
            }
        }
    }
}

/// A balancer with a flow table of `flows` and the bench programs `extra` loaded; its
/// BENCH_CHAIN.
fn load(flows: u32, extra: &[&'static str]) -> (Datapath, ProgramArray<MapData>) {
    let backend_of = |v6: bool, n: u8| -> IpAddr {
        if v6 {
            std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10 + n as u16).into()
        } else {
            backend(n).into()
        }
    };
    let mut dp = balancer::load(flows, backend_of);
    for name in extra {
        datapath::program(dp.raw_mut(), name)
            .expect("bench program")
            .load()
            .unwrap_or_else(|e| panic!("the kernel rejected {name}: {e}"));
    }
    let map = dp.raw_mut().take_map(bench_maps::CHAIN).expect("the BENCH_CHAIN map");
    let chain = ProgramArray::try_from(map).expect("BENCH_CHAIN is a program array");
    (dp, chain)
}

// ---------------------------------------------------------------------------------------------
// The sections.

struct Args {
    rounds: usize,
    /// Frames per measured cost run.
    packets: usize,
    /// Milliseconds per measured pps run.
    ms: u64,
    max_flows: u32,
    cost: bool,
    pps: bool,
    /// Established flows' cases.
    established: bool,
    /// New flows' cases (the full table).
    new_flows: bool,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 3,
        packets: 100_000,
        ms: 300,
        max_flows: 4_000_000,
        cost: true,
        pps: true,
        established: true,
        new_flows: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--cost-only" => a.pps = false,
            "--pps-only" => a.cost = false,
            "--cases" => match it.next().as_deref() {
                Some("established") => a.new_flows = false,
                Some("new") => a.established = false,
                _ => usage(),
            },
            "--rounds" | "--packets" | "--ms" | "--max-flows" => {
                let v = it.next().and_then(|v| v.parse::<u64>().ok());
                match (flag.as_str(), v) {
                    ("--rounds", Some(n)) if (1..=20).contains(&n) => a.rounds = n as usize,
                    ("--packets", Some(n)) if (1000..=2_000_000).contains(&n) => a.packets = n as usize,
                    ("--ms", Some(n)) if (20..=5000).contains(&n) => a.ms = n,
                    ("--max-flows", Some(n)) if (10_000..=FRESH_FLOWS as u64).contains(&n) => {
                        a.max_flows = n as u32
                    }
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    a
}

/// The established flows' counts the arguments ask for.
fn flow_counts(a: &Args) -> impl Iterator<Item = (u32, &'static str)> + '_ {
    FLOW_COUNTS.into_iter().filter(|(c, _)| a.established && *c <= a.max_flows)
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_flows [--rounds 1-20] [--packets 1000-2000000] [--ms 20-5000] \
         [--max-flows 10000-4194304] [--cost-only | --pps-only] [--cases established | new]\n\
         --cases: only the established flows' cases, or only the new flows' (a full table)"
    );
    std::process::exit(2);
}

const FLOW_COUNTS: [(u32, &str); 5] = [
    (1, "1 flow"),
    (10_000, "10k flows"),
    (100_000, "100k flows"),
    (1_000_000, "1M flows"),
    (4_000_000, "4M flows"),
];

fn cost_section(b: &mut Bench, a: &Args) -> Vec<Row> {
    let stats = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS (kernel.bpf_stats_enabled)");
    let mac = b.lb_mac;
    let floor_frames: Vec<Vec<u8>> =
        (0..a.packets).map(|k| frame(Packet::Ack, shape::RANDOM, k as u32 % 10_000, mac)).collect();
    let (mut floors, mut encaps) = (Vec::new(), Vec::new());
    let mut floor_sample = |b: &Bench| {
        let (f, e) = (
            b.cost(Table::Large, MAC_SWAP, Expect::Floor, &floor_frames),
            b.cost(Table::Large, ENCAP, Expect::Floor, &floor_frames),
        );
        match (f, e) {
            (Ok(f), Ok(e)) => {
                floors.push(f);
                encaps.push(e);
            }
            (f, e) => eprintln!("bench_flows: floor: VOID: {f:?} {e:?}"),
        }
    };
    let mut established = Vec::new();
    for (count, label) in flow_counts(a) {
        let mut by = ByShape::new("bench_flows", format!("established, {label}"));
        let mut lookup = ByShape::new(
            "bench_flows",
            format!("of which floor + parse + finding the flow's entry, {label}"),
        );
        for s in shape::ALL {
            b.warm(s, count);
            let frames: Vec<Vec<u8>> =
                (0..a.packets).map(|k| frame(Packet::Ack, s, k as u32 % count, mac)).collect();
            for _ in 0..a.rounds {
                floor_sample(b);
                let v = b.cost(Table::Large, BALANCER, Expect::Established, &frames);
                eprintln!("bench_flows: {}, {}: {v:?} ns", by.case(), shape::name(s));
                by.push(s, v);
                lookup.push(s, b.cost(Table::Large, FLOW_LOOKUP, Expect::Floor, &frames));
            }
        }
        let target = match count {
            10_000 => Some(2.6),
            1_000_000 => Some(5.0),
            _ => None,
        };
        established.push((by, lookup, target));
    }
    let (mut syn, mut miss, mut second, mut lost) = (
        ByShape::new("bench_flows", "SYN of a new flow: recorded unconfirmed, table full"),
        ByShape::new("bench_flows", "floor + parse + FLOW_TABLE lookup (a miss), table full"),
        ByShape::new("bench_flows", "new flow's packet after the SYN: confirmed, table full"),
        ByShape::new(
            "bench_flows",
            "packet of a connection the table never saw (another balancer's): recorded, table full",
        ),
    );
    let n = a.packets as u32;
    if a.new_flows {
        b.fill_full_table();
    }
    for s in shape::ALL.into_iter().filter(|_| a.new_flows) {
        for _ in 0..a.rounds {
            if !a.established {
                floor_sample(b);
            }
            Bench::idle_full_table();
            // `count` frames of flows never seen, `per_flow` packets each: its SYN first, if
            // `syn`, then ACKs.
            let fresh = |b: &mut Bench, count: u32, syn: bool, per_flow: u32| -> Vec<Vec<u8>> {
                let first = b.take_fresh(count / per_flow);
                (0..count)
                    .map(|k| {
                        let kind = if syn && k % per_flow == 0 { Packet::Syn } else { Packet::Ack };
                        frame(kind, s, first + k / per_flow, mac)
                    })
                    .collect()
            };
            // Back from the idle wait: the code path and the small maps are cold. Other new
            // flows' SYNs warm them.
            let frames = fresh(b, n / 10, true, 1);
            let _ = b.cost(Table::Full, BALANCER, Expect::New, &frames);
            let frames = fresh(b, n, true, 1);
            syn.push(s, b.cost(Table::Full, BALANCER, Expect::New, &frames));
            let frames = fresh(b, n, true, 1);
            miss.push(s, b.cost(Table::Full, FLOW_LOOKUP, Expect::Floor, &frames));
            // A SYN and its ACK in turn (an ACK after a whole run of SYNs could find its flow
            // evicted by later SYNs: an unconfirmed flow is the first to go in a full set).
            let frames = fresh(b, n, true, 2);
            second.push(s, b.cost_of_seconds(Table::Full, &frames));
            let frames = fresh(b, n, false, 1);
            lost.push(s, b.cost(Table::Full, BALANCER, Expect::Midstream, &frames));
        }
    }
    drop(stats);
    let floor = median(&mut floors);
    let encap = median(&mut encaps);
    let mut rows = vec![
        Row {
            section: "flows cost",
            case: "MAC-swap floor".to_owned(),
            value: floor,
            decimals: 1,
            unit: "ns/packet",
            ratio: floor.map(|_| 1.0),
            target: None,
        },
        Row {
            section: "flows cost",
            case: "encap floor (push IPv4 header)".to_owned(),
            value: encap,
            decimals: 1,
            unit: "ns/packet",
            ratio: encap.zip(floor).map(|(e, f)| e / f),
            target: None,
        },
    ];
    let Some(floor) = floor else {
        eprintln!("bench_flows: no valid floor run");
        return rows;
    };
    for (by, lookup, target) in established {
        rows.extend(by.rows("flows cost", "ns/packet", 1, Some(floor), false, target));
        rows.extend(lookup.rows("flows cost", "ns/packet", 1, Some(floor), false, None));
    }
    if a.new_flows {
        rows.extend(syn.rows("flows cost", "ns/packet", 1, Some(floor), false, Some(3.0)));
        rows.extend(miss.rows("flows cost", "ns/packet", 1, Some(floor), false, None));
        rows.extend(second.rows("flows cost", "ns/packet", 1, Some(floor), false, Some(5.0)));
        rows.extend(lost.rows("flows cost", "ns/packet", 1, Some(floor), false, Some(5.0)));
    }
    rows
}

fn pps_section(b: &mut Bench, a: &Args) -> Vec<Row> {
    let budget = Duration::from_millis(a.ms);
    let mac = b.lb_mac;
    let mut rows = Vec::new();
    for (count, label) in flow_counts(a) {
        let target = match count {
            10_000 => Some(0.85),
            1_000_000 => Some(0.6),
            _ => None,
        };
        let mut by =
            ByShape::new("bench_flows", format!("established, {label}: balancer / encap floor, 1 core"));
        for s in shape::ALL {
            b.warm(s, count);
            let gen = flowgen(Packet::Ack, s, count, mac);
            for _ in 0..a.rounds {
                by.push(
                    s,
                    ratio(b.pps(Table::Large, ENCAP, gen, Expect::Floor, budget), || {
                        b.pps(Table::Large, BALANCER, gen, Expect::Established, budget)
                    }),
                );
            }
        }
        rows.extend(by.rows("flows pps", "x encap", 2, None, true, target));
    }
    // SYNs of flows never seen: more flows than the runs send.
    let mut by = ByShape::new("bench_flows", "SYN of a new flow, table full: balancer / encap floor, 1 core");
    if a.new_flows && !b.full_table_filled {
        b.fill_full_table();
        Bench::idle_full_table();
    }
    for s in shape::ALL.into_iter().filter(|_| a.new_flows) {
        let mut gen = flowgen(Packet::Syn, s, SYN_PPS_FLOWS, mac);
        gen.first = b.take_fresh(SYN_PPS_FLOWS);
        for _ in 0..a.rounds {
            by.push(
                s,
                ratio(b.pps(Table::Large, ENCAP, gen, Expect::Floor, budget), || {
                    b.pps(Table::Full, BALANCER, gen, Expect::New, budget)
                }),
            );
        }
    }
    if a.new_flows {
        rows.extend(by.rows("flows pps", "x encap", 2, None, true, Some(0.7)));
    }
    let mut by = ByShape::new("bench_flows", "established, 10k flows: 2 cores / 1 core");
    for s in shape::ALL.into_iter().filter(|_| a.established) {
        b.warm(s, 10_000);
        for _ in 0..a.rounds {
            by.push(s, scaling(b, flowgen(Packet::Ack, s, 10_000, mac), budget));
        }
    }
    if a.established {
        rows.extend(by.rows("flows pps", "x 1 core", 2, None, true, Some(1.8)));
    }
    rows
}

/// `num()` / `den`, the numerator measured after the denominator.
fn ratio(den: Result<f64, String>, num: impl FnOnce() -> Result<f64, String>) -> Result<f64, String> {
    let den = den?;
    Ok(num()? / den)
}

/// The balancer's rate on two CPUs (each its own half of the flows, as RSS spreads them) over
/// its rate on one.
fn scaling(b: &mut Bench, gen: FlowGen, budget: Duration) -> Result<f64, String> {
    b.chain_to(Table::Large, BALANCER);
    let one = b.pps(Table::Large, BALANCER, gen, Expect::Established, budget)?;
    b.set_flowgen(Table::Large, FlowGen { cpus: 2, ..gen });
    let before = b.counters(Table::Large);
    let template = gen.frame[..gen.len as usize].to_vec();
    let ctx = lb_tests::xdp::xdp_md(template.len(), b.ingress);
    let prog = b.program(Table::Large, FLOWGEN);
    let start = Barrier::new(2);
    let results: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|cpu| {
                let (start, template, ctx, dut) = (&start, &template, &ctx, &b.dut);
                scope.spawn(move || {
                    let _inside = ThreadIn::enter(dut, cpu);
                    start.wait();
                    let t = Instant::now();
                    let (mut sent, mut ns) = (0u64, 0u64);
                    while t.elapsed() < budget {
                        let r = prog
                            .test_run(TestRunOptions {
                                data_in: Some(template),
                                ctx_in: Some(ctx),
                                repeat: CHUNK,
                                ..Default::default()
                            })
                            .unwrap_or_else(|e| panic!("test run of the generator on CPU {cpu}: {e}"));
                        sent += CHUNK as u64;
                        ns += r.duration.as_nanos() as u64 * CHUNK as u64;
                    }
                    (sent, ns)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("a generator thread")).collect()
    });
    let after = b.counters(Table::Large);
    let sent: u64 = results.iter().map(|(s, _)| s).sum();
    Bench::check(Expect::Established, sent, &before, &after)?;
    let two: f64 = results.iter().map(|(s, ns)| *s as f64 * 1e9 / *ns as f64).sum();
    Ok(two / one)
}

fn main() {
    let args = args();
    lb_tests::privilege::require_root();
    let stats_before = lb_bench::stats::bpf_stats_enabled();
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cpus - 1;
    let (dut, far) = (Netns::new("bench-flows"), Netns::new("bench-far"));
    let inside = ThreadIn::enter(&dut, cpu);
    let mut bench = Bench::new(dut, far);
    eprintln!("bench_flows: set-up took {:.1?}; running on CPU {cpu}", started.elapsed());
    bench.check_generator();
    let mut rows = Vec::new();
    if args.cost {
        rows.extend(cost_section(&mut bench, &args));
    }
    if args.pps {
        rows.extend(pps_section(&mut bench, &args));
    }
    drop(bench);
    drop(inside);
    lb_bench::row::finish("bench_flows", &rows, &stats_before, started);
}
