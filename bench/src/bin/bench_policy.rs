//! The cost of the edge policy (access lists, rate limits) per packet, beside the MAC-swap
//! floor, all measured in one run on one pinned CPU.
//!
//! ```sh
//! cargo run --release -p lb-bench --bin bench_policy [-- --rounds N --runs R]   # as root
//! ```
//!
//! # Method
//! `BPF_PROG_TEST_RUN` on one 54-byte IPv4 TCP frame per case, without live frames (they fail
//! with EPERM on the VMs this runs on), so no veth and no NAPI. The balancer runs in the test
//! kit's FIB namespace (`lb_tests::xdp::Fixture`), its maps written by the agent's own plan and
//! executor (`reconcile::apply`), so an admitted packet really is forwarded (XDP_TX). Two
//! measures, each against a MAC-swap floor (`bench_mac_swap`) measured the same way:
//! - section `xdp policy cost`, the one the targets apply to, measured as `bench_xdp`'s section
//!   `xdp cost` is: the kernel's BPF statistics of the program (run_time_ns / run_cnt, with
//!   `BPF_ENABLE_STATS`), over `--runs` test runs of one packet each. A test run without live
//!   frames does not restore the frame between repeats, and a forwarded frame is rewritten: one
//!   packet per run keeps every run on the original frame. The kernel's two clock reads around
//!   each run are in every figure (most of the floor on a KVM guest), as in `bench_xdp`.
//! - section `xdp policy net`: the test run's own timing of `--runs` repeats in one call (its
//!   clock read around the loop, statistics off), for the cases whose frame no run changes (the
//!   floor, and packets passed or dropped): the programs' cost without the clock reads.
//!
//! Rows: the floor; a non-VIP packet (parsed and passed at the VIP filter: the least any
//! packet to a VIP costs); a denied packet (a SYN from a source in the global deny list, and one
//! denied by a VIP's list of 10,000 prefixes); a rate-limited packet (an ACK of no flow over its
//! source's 1 packet a second; a SYN over its source's 1 new flow a second: each round's source
//! spends its bucket first); an established flow (an ACK of a confirmed flow, found in the flow
//! table: a confirmed flow that passed the checks skips them there), without and with an access
//! list of 10,000 prefixes and rate limits on its VIP, and with each of the two alone. (The
//! "flow cache off" rows of earlier runs are gone with the flow cache: every established packet
//! is now a flow-table hit, as those rows measured.)
//!
//! Every run's verdict is checked, and the counter it moves: a case that fails its check in a
//! round is void there. The cases take turns, `--rounds` times; each row is the median.
//!
//! Prints `ROW|section|case|value|unit|ratio|target|status` lines (see xtask/src/bench.rs).
use std::net::{IpAddr, Ipv4Addr};

use aya::{
    programs::{TestRun as _, TestRunOptions},
    sys::{enable_stats, Stats},
};
use lb_bench::programs::{self, MAC_SWAP};
use lb_common::Counter;
use lb_tests::{
    frames::{addr::VIP4, tcp, tcp_frame},
    xdp::{xdp_md, Fixture},
};
use lb_userspace::{
    agent::{
        policy::Desired,
        reconcile::{self, Applied, Down},
    },
    config::{self, Config},
    datapath::{self, Datapath, Sizes},
    security::Prefix,
};

const COST: &str = "xdp policy cost";
const NET: &str = "xdp policy net";
/// Prefixes in the big access list.
const ACL_PREFIXES: u32 = 10_000;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const BALANCER: &str = datapath::BALANCER;

const SIZES: Sizes = Sizes { flows: 65_536, max_vips: 4, max_rings: 4, ring_stride: 1031, max_backends: 8 };

/// `web` on VIP4:80/tcp over the fixture's backend 198.18.1.1, with `top` lines before the VIP
/// and `extra` lines in it.
fn config(top: &str, extra: &str) -> Config {
    let text = format!(
        "interfaces = [\"eth0\"]\n[source]\nipv4 = \"198.18.9.0\"\n[limits]\nmax_vips = 4\nmax_ring_size = 1031\n\
         max_backends = 8\n{top}\n[[vip]]\nname = \"web\"\naddress = \"{VIP4}\"\nport = 80\nprotocol = \"tcp\"\n\
         ring_size = 1031\n{extra}\n  [[vip.backend]]\n  address = \"198.18.1.1\"\n"
    );
    config::parse(&text, "bench.toml").unwrap_or_else(|e| panic!("the bench config is refused: {e}"))
}

/// The config with an access list of [`ACL_PREFIXES`] prefixes on `web`: 198.18.0.0/16 allowed,
/// 9,999 single addresses of 198.19.0.0/16 denied (one of them the denied source), and `limits`.
fn big_acl(limits: &str) -> Config {
    let mut c = config("", limits);
    let web = &mut c.vips[0];
    web.allow.push("198.18.0.0/16".parse().expect("a prefix"));
    for i in 0..ACL_PREFIXES - 1 {
        let address = IpAddr::from([198, 19, (i >> 8) as u8, i as u8]);
        web.deny.push(Prefix { address, len: 32 });
    }
    c
}

/// The loaded objects, one per map setup.
#[derive(Clone, Copy)]
enum Setup {
    /// No policy (also has the MAC-swap floor loaded).
    Plain,
    /// The big access list and limits that established flows stay under.
    BigAcl,
    /// A global deny list; 1 packet a second per source.
    PacketLimit,
    /// 1 new flow a second per source.
    FlowLimit,
    /// The big access list alone, the limits alone.
    AclOnly,
    LimitsOnly,
}

const SETUPS: usize = 6;

fn setups() -> [(Setup, Config); SETUPS] {
    let under = "[vip.limits]\nnew_flows_per_source = 1000\npackets_per_source = 1000000000";
    [
        (Setup::Plain, config("", "")),
        (Setup::BigAcl, big_acl(under)),
        (
            Setup::PacketLimit,
            config("[security]\ndeny = [\"198.19.66.0/24\"]", "[vip.limits]\npackets_per_source = 1"),
        ),
        (Setup::FlowLimit, config("", "[vip.limits]\nnew_flows_per_source = 1")),
        (Setup::AclOnly, big_acl("")),
        (Setup::LimitsOnly, config("", under)),
    ]
}

/// The frame of a case: the same every round, or a fresh source each round (a rate-limited case
/// spends the new source's bucket of one first, then stays refused for a second).
#[derive(Clone, Copy)]
enum Frame {
    Fixed(Ipv4Addr, u16, u8),
    /// (third octet, TCP flags): source 198.18.`octet`.`1 + round` (and another 100 up in the
    /// net section).
    FreshSource(u8, u8),
    NotVip,
}

struct Case {
    name: &'static str,
    setup: Setup,
    program: &'static str,
    frame: Frame,
    /// The verdict counter every run moves (none for the floor), and the XDP action.
    counter: Option<Counter>,
    action: u32,
    /// Whether the net section measures it too (no run changes its frame).
    net: bool,
    /// The row its ratio is to, and the ratio's target (at most).
    base: usize,
    target: Option<f64>,
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const FLOOR: usize = 0;
const ESTABLISHED: usize = 6;

fn cases() -> Vec<Case> {
    let case = |name, setup, frame, counter, action, net, (base, target)| Case {
        name,
        setup,
        program: BALANCER,
        frame,
        counter: Some(counter),
        action,
        net,
        base,
        target,
    };
    let established = Frame::Fixed(CLIENT, 5555, tcp::ACK);
    let floor = (FLOOR, Some(1.3));
    let no_target = (FLOOR, None);
    vec![
        Case {
            name: "MAC-swap floor",
            setup: Setup::Plain,
            program: MAC_SWAP,
            frame: established,
            counter: None,
            action: XDP_TX,
            net: true,
            base: FLOOR,
            target: None,
        },
        case(
            "non-VIP packet, passed (parse + VIP filter)",
            Setup::Plain,
            Frame::NotVip,
            Counter::PassNotVip,
            XDP_PASS,
            true,
            no_target,
        ),
        case(
            "denied: global deny list (SYN)",
            Setup::PacketLimit,
            Frame::Fixed(Ipv4Addr::new(198, 19, 66, 1), 6000, tcp::SYN),
            Counter::DropAcl,
            XDP_DROP,
            true,
            floor,
        ),
        case(
            "denied: VIP list of 10,000 prefixes (SYN)",
            Setup::BigAcl,
            Frame::Fixed(Ipv4Addr::new(198, 19, 0, 7), 6000, tcp::SYN),
            Counter::DropAcl,
            XDP_DROP,
            true,
            floor,
        ),
        case(
            "rate-limited: over 1 packet/s per source (ACK of no flow)",
            Setup::PacketLimit,
            Frame::FreshSource(7, tcp::ACK),
            Counter::DropRatePackets,
            XDP_DROP,
            true,
            floor,
        ),
        case(
            "rate-limited: over 1 new flow/s per source (SYN)",
            Setup::FlowLimit,
            Frame::FreshSource(8, tcp::SYN),
            Counter::DropRateNewFlows,
            XDP_DROP,
            true,
            floor,
        ),
        case(
            "established flow, no policy",
            Setup::Plain,
            established,
            Counter::ForwardTx,
            XDP_TX,
            false,
            no_target,
        ),
        case(
            "established flow, 10,000-prefix ACL + limits on the VIP",
            Setup::BigAcl,
            established,
            Counter::ForwardTx,
            XDP_TX,
            false,
            (ESTABLISHED, Some(1.10)),
        ),
        case(
            "of which the ACL alone",
            Setup::AclOnly,
            established,
            Counter::ForwardTx,
            XDP_TX,
            false,
            (ESTABLISHED, None),
        ),
        case(
            "of which the limits alone",
            Setup::LimitsOnly,
            established,
            Counter::ForwardTx,
            XDP_TX,
            false,
            (ESTABLISHED, None),
        ),
    ]
}

struct Args {
    rounds: usize,
    runs: u32,
}

fn args() -> Args {
    let mut a = Args { rounds: 5, runs: 100_000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--rounds", Some(n)) if (1..=50).contains(&n) => a.rounds = n as usize,
            ("--runs", Some(n)) if (1000..=10_000_000).contains(&n) => a.runs = n as u32,
            _ => {
                eprintln!("usage: bench_policy [--rounds 1-50] [--runs 1000-10000000]");
                std::process::exit(2);
            }
        }
    }
    a
}

/// One test run of `program` on `frame` arriving on `ingress`, `repeat` times in the kernel:
/// its mean time per run by the test run's clock, and the last run's action.
fn run(dp: &mut Datapath, program: &'static str, frame: &[u8], ingress: u32, repeat: u32) -> (f64, u32) {
    let ctx = xdp_md(frame.len(), ingress);
    let mut out = [0u8; 512];
    let prog = datapath::program(dp.raw_mut(), program).expect("program");
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx[..]),
            repeat,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {program}: {e}"));
    (result.duration.as_nanos() as f64, result.return_value)
}

/// The program's BPF statistics: (run_time_ns, run_cnt).
fn prog_stats(dp: &mut Datapath, program: &'static str) -> (u64, u64) {
    lb_bench::stats::run_stats(datapath::program(dp.raw_mut(), program).expect("program"))
}

fn apply(dp: &mut Datapath, c: &Config) {
    let mut applied = Applied::default();
    let desired = Desired { security: &c.security, denies: &[], cpus: 1 };
    let ids = applied.ids.allocate(&c.vips, &dp.sizes, &Default::default()).expect("ids");
    reconcile::apply(dp, &mut applied, &ids, &c.source, &c.vips, &Down::new(), &desired)
        .unwrap_or_else(|e| panic!("applying the bench config: {e}"));
}

/// What the runs of a case did, for its check.
struct Outcome {
    ns: f64,
    wrong_actions: u64,
    counted: Option<u64>,
    runs: u64,
}

impl Outcome {
    fn void_because(&self, case: &Case) -> Option<String> {
        let counted_wrong = self.counted.is_some_and(|c| c != self.runs);
        (self.wrong_actions > 0 || counted_wrong).then(|| {
            format!(
                "{} of {} runs ended in another action than {}; {:?} counted {:?}",
                self.wrong_actions, self.runs, case.action, case.counter, self.counted
            )
        })
    }
}

struct Bench {
    dps: Vec<Datapath>,
    ingress: u32,
}

impl Bench {
    fn frame(&mut self, case: &Case, round: usize, net: bool) -> Vec<u8> {
        let vip = IpAddr::V4(VIP4);
        match case.frame {
            Frame::Fixed(src, sport, flags) => tcp_frame(src.into(), sport, vip, 80, flags),
            Frame::NotVip => {
                tcp_frame(CLIENT.into(), 5555, Ipv4Addr::new(198, 18, 50, 1).into(), 80, tcp::ACK)
            }
            Frame::FreshSource(octet, flags) => {
                let host = 1 + round as u8 + if net { 100 } else { 0 };
                let frame = tcp_frame(Ipv4Addr::new(198, 18, octet, host).into(), 7000, vip, 80, flags);
                let (_, action) = run(&mut self.dps[case.setup as usize], BALANCER, &frame, self.ingress, 1);
                assert_eq!(action, XDP_TX, "{}: the new source's first packet is admitted", case.name);
                frame
            }
        }
    }

    fn counter(&self, case: &Case) -> Option<u64> {
        case.counter.map(|c| self.dps[case.setup as usize].counter(c).expect("a counter"))
    }

    /// `runs` test runs of one packet each, timed by the BPF statistics (on).
    fn cost(&mut self, case: &Case, round: usize, runs: u32) -> Outcome {
        let frame = self.frame(case, round, false);
        let before = self.counter(case);
        let dp = &mut self.dps[case.setup as usize];
        let (t0, n0) = prog_stats(dp, case.program);
        let wrong_actions =
            (0..runs).filter(|_| run(dp, case.program, &frame, self.ingress, 1).1 != case.action).count();
        let (t1, n1) = prog_stats(dp, case.program);
        assert_eq!(n1 - n0, u64::from(runs), "{}: the program ran once per test run", case.name);
        let counted = self.counter(case).zip(before).map(|(a, b)| a - b);
        Outcome {
            ns: (t1 - t0) as f64 / (n1 - n0) as f64,
            wrong_actions: wrong_actions as u64,
            counted,
            runs: runs.into(),
        }
    }

    /// One test run of `runs` repeats, timed by the test run (statistics off).
    fn net(&mut self, case: &Case, round: usize, runs: u32) -> Outcome {
        let frame = self.frame(case, round, true);
        let before = self.counter(case);
        let (ns, action) = run(&mut self.dps[case.setup as usize], case.program, &frame, self.ingress, runs);
        let counted = self.counter(case).zip(before).map(|(a, b)| a - b);
        Outcome { ns, wrong_actions: u64::from(action != case.action), counted, runs: runs.into() }
    }
}

/// A row: (name, median, ratio, (target text, met)).
type Row = (&'static str, Option<f64>, Option<f64>, Option<(String, bool)>);

fn rows(cases: &[Case], values: Vec<Vec<f64>>, with_targets: bool) -> Vec<Row> {
    let medians: Vec<Option<f64>> = values.into_iter().map(|mut v| lb_bench::stats::median(&mut v)).collect();
    cases
        .iter()
        .zip(&medians)
        .map(|(case, &value)| {
            let ratio = value.zip(medians[case.base]).map(|(v, b)| v / b);
            let target = case.target.filter(|_| with_targets).map(|t| {
                let of = if case.base == FLOOR { "floor" } else { cases[case.base].name };
                (format!("<= {t:.2}x {of}"), ratio.is_some_and(|r| r <= t))
            });
            (case.name, value, ratio, target)
        })
        .collect()
}

fn print(section: &str, rows: &[Row]) -> bool {
    let mut void = false;
    for (name, value, ratio, target) in rows {
        let v = value.map_or("void".to_owned(), |v| format!("{v:.1}"));
        let r = ratio.map_or(String::new(), |r| format!("{r:.2}"));
        let (t, status) = match (target, value) {
            (Some((t, _)), None) => (t.as_str(), "MISS"),
            (Some((t, met)), Some(_)) => (t.as_str(), if *met { "ok" } else { "MISS" }),
            (None, _) => ("", "-"),
        };
        void |= value.is_none();
        println!("ROW|{section}|{name}|{v}|ns/packet|{r}|{t}|{status}");
    }
    void
}

fn main() {
    let args = args();
    lb_tests::privilege::require_root();
    let fixture = Fixture::new();
    let (cost_rows, net_rows) = fixture.ns.run(|| {
        let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
        lb_tests::xdp::pin_to_cpu(cpu);
        let setups = setups();
        assert!(
            setups.iter().enumerate().all(|(i, (setup, ..))| *setup as usize == i),
            "setups() lists the setups in the order of `Setup`, which indexes them"
        );
        let mut dps: Vec<Datapath> = setups
            .iter()
            .map(|(_, c)| {
                let mut dp = programs::load(SIZES);
                apply(&mut dp, c);
                dp
            })
            .collect();
        let mac_swap = datapath::program(dps[Setup::Plain as usize].raw_mut(), MAC_SWAP).expect("the floor");
        mac_swap.load().expect("loading bench_mac_swap");
        let mut bench = Bench { dps, ingress: fixture.eth0 };
        // The established flow (SYN, then three ACKs: the SYN records it, the first ACK
        // confirms it, the others pass as a confirmed flow) on every object that forwards it.
        let vip = IpAddr::V4(VIP4);
        for setup in [Setup::Plain, Setup::BigAcl, Setup::AclOnly, Setup::LimitsOnly] {
            for flags in [tcp::SYN, tcp::ACK, tcp::ACK, tcp::ACK] {
                let f = tcp_frame(CLIENT.into(), 5555, vip, 80, flags);
                let (_, action) = run(&mut bench.dps[setup as usize], BALANCER, &f, bench.ingress, 1);
                assert_eq!(action, XDP_TX, "warming the established flow: XDP_TX expected");
            }
        }
        let cases = cases();
        let mut cost = vec![Vec::new(); cases.len()];
        let mut net = vec![Vec::new(); cases.len()];
        for round in 0..args.rounds {
            let stats = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS (kernel.bpf_stats_enabled)");
            for (i, case) in cases.iter().enumerate() {
                let o = bench.cost(case, round, args.runs);
                report(COST, round, case, &o, &mut cost[i]);
            }
            drop(stats);
            for (i, case) in cases.iter().enumerate().filter(|(_, c)| c.net) {
                let o = bench.net(case, round, args.runs);
                report(NET, round, case, &o, &mut net[i]);
            }
        }
        let net_cases: Vec<usize> = (0..cases.len()).filter(|&i| cases[i].net).collect();
        let net_rows: Vec<Row> = rows(&cases, net, false)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| net_cases.contains(i))
            .map(|(_, r)| r)
            .collect();
        (rows(&cases, cost, true), net_rows)
    });
    // Its namespace goes before any exit (which runs no destructors).
    drop(fixture);
    let void = print(COST, &cost_rows) | print(NET, &net_rows);
    if void {
        eprintln!("bench_policy: some cases had no valid run (see VOID above)");
        std::process::exit(1);
    }
}

fn report(section: &str, round: usize, case: &Case, o: &Outcome, values: &mut Vec<f64>) {
    match o.void_because(case) {
        Some(why) => eprintln!("bench_policy: {section}: round {round} {}: VOID: {why}", case.name),
        None => {
            eprintln!("bench_policy: {section}: round {round} {}: {:.1} ns/packet", case.name, o.ns);
            values.push(o.ns);
        }
    }
}
