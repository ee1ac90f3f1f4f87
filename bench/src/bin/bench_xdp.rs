//! Benchmarks of the data plane: the balancer's cost per packet for each packet class, and
//! packets per second through veths against two XDP floors and the kernel's own forwarding
//! path, all measured in one run on one core.
//!
//! ```sh
//! cargo run --release -p lb-bench --bin bench_xdp [-- --rounds N --ms M]   # as root
//! ```
//!
//! # Method
//! Traffic comes from `bench_gen` (lb-ebpf/src/bench.rs), an XDP program run with
//! `BPF_PROG_TEST_RUN` in live-frames mode: each run writes the whole frame again from a template
//! (the kernel recycles pages with whatever the programs downstream left in them), gives it the
//! source of flow number `sequence % N` in one of four traffic shapes (`lb_common::bench::shape`:
//! random 5-tuples, one /16 with sequential addresses, a NAT gateway's ports, many clients on one
//! port; checksums patched) and returns XDP_TX, which in live-frames mode sends it out of the
//! test run's ingress interface, a veth `tx-*`. Its peer
//! `rx-*` runs the program under test natively; what that program sends back with XDP_TX lands
//! on `tx-*`, where `bench_sink` counts and drops it (veth delivers XDP_TX frames only to a peer
//! with an XDP program). Everything runs on one pinned CPU: the generator's batches (64 frames)
//! in the system call, then the veths' NAPI polls in the softirq that ends each batch.
//!
//! ```text
//!   gen  idle0 (bench_gen attached, down)   tx-mac  tx-encap  tx-lb  tx-big  tx-syn  tx-miss  tx-kern
//!                                           (bench_sink on each)
//!   dut  rx-mac: bench_mac_swap   rx-encap: bench_encap   rx-lb, rx-big, rx-syn: balancer
//!        rx-miss: bench_flow_lookup (looks up rx-syn's flow table)
//!   kern rx-kern: no XDP, GRO on; IP forwarding + nftables DNAT to the same 3 backends
//! ```
//!
//! - The generator stays attached to the idle `idle0` for the whole run: every live test run
//!   otherwise adds it to the kernel's XDP dispatcher and removes it again, which takes
//!   milliseconds and would cap the generator far below the veths' rate.
//! - Per-packet cost (section `xdp cost`): the kernel's BPF statistics of the program under
//!   test (run_time_ns / run_cnt), enabled with `BPF_ENABLE_STATS` for that section only (off
//!   again when its file descriptor closes, even if this process dies). The kernel reads its
//!   clock twice around each run, and that is in every figure: on a KVM guest (kvm-clock) it is
//!   most of the MAC-swap floor.
//! - Packets per second (section `xdp pps`): frames generated / the kernel's own timing of the
//!   test runs (the batches and the softirq work they trigger; time this thread spends
//!   descheduled is left out), BPF statistics off. The balancer runs in every shape, each
//!   shape's rate is divided by the encapsulation floor's, and the worst shape stands against
//!   the target; the floors and the kernel's path run in one shape (one /16: they look nothing
//!   up by flow, and the kernel's path must not see a client at one of the bench's own
//!   addresses). The per-packet cost rows (1000 flows: a hot set, per packet class) run in that
//!   shape too; `bench_flows` has every per-packet row in every shape.
//! - `rx-lb` has the production table size (`limits.flows` at its default), holding the 10k
//!   flows of each shape (the 1-flow and 1000-flow cases are among them); `rx-big` has 4M
//!   entries, four for each flow of a 1M-flow case, and holds one shape's flows at a time
//!   (emptied and filled again for each); every flow recorded and confirmed in a warm-up (two
//!   packets a flow), so that every measured packet is a flow-table hit;
//!   `rx-syn` has the production table size, kept full, and every packet sent to it is of a flow
//!   never seen before (numbered on from the last one sent): a TCP SYN (a flow-table miss and a Maglev pick, recorded
//!   unconfirmed), or a TCP packet of a connection the table never saw, which also records
//!   its flow.
//! - Each measured run is checked: the sink got every frame (none for the non-VIP class), the
//!   balancer's verdict counters moved by exactly the frames sent (forward_tx and flow_hit or
//!   flow_miss, nothing else; pass_not_vip for the non-VIP class), the program ran once per
//!   frame. A run that fails these checks is void and gives no number; a case left with no
//!   valid run shows `void`, and the bench exits 1.
//! - Noise: the cases take turns, `--rounds` times; each row is the median of its rounds.
//! - The kernel path keeps 1M flows in conntrack: a namespace's limit cannot exceed the host's,
//!   so the host's `net.netfilter.nf_conntrack_max` is raised to 1.1M for the run and restored
//!   at its end (a run killed with SIGKILL leaves it raised). BPF statistics are switched on
//!   through a file descriptor, which the kernel closes even then.
//!
//! Prints `ROW|section|case|value|unit|ratio|target|status` lines (see xtask/src/bench.rs).
use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    sys::{enable_stats, Stats},
    Ebpf,
};
use etherparse::PacketBuilder;
use lb_bench::{
    balancer::{BACKENDS, PORT, VIP4, VIP6},
    by_shape::ByShape,
    programs::{ENCAP, FLOW_LOOKUP, GEN, MAC_SWAP, SINK},
    row::Row,
    thread::ThreadIn,
};
use lb_common::{
    bench::{flow_source, map_names as bench_maps, shape, FlowGen, MAX_FRAME},
    Counter,
};
use lb_tests::{
    netns::{run, Netns},
    topology::{mac_of, parse_mac},
};
use lb_userspace::{
    datapath::{self, Datapath, Mode, BALANCER},
    host::{
        forwarding::{self, Policy},
        Family,
    },
};

/// Frames per generator batch (the kernel's default; the veth rings hold 256).
const BATCH: u32 = 64;
/// Frames per test run call.
const CHUNK: u32 = 1 << 17;
/// Test run calls per measured run, at most.
const MAX_CALLS: usize = 200;
/// A warm-up stops after this long even if it has not sent all its frames.
const WARM_UP_LIMIT: Duration = Duration::from_secs(60);

const NOT_VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 1);
/// Clients: 198.18.0.0/15 and fd00:19::/96, plus the traffic shape's offset.
const CLIENT4_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0);
/// The shape of the cases that are not measured in every shape: clients with sequential
/// addresses in 198.19.0.0/16 (none is an address of the bench's hosts, as the kernel's
/// forwarding path needs).
const ONE_SHAPE: u32 = shape::CLIENTS_16;
/// The most frames one measured run sends: a case of new flows draws this many.
const MAX_RUN_FRAMES: u32 = MAX_CALLS as u32 * CHUNK;
/// A MAC address no interface has: frames to it that reach a stack are dropped at once.
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x09, 0x09];
/// rx-big's flow table: four entries for each flow of a 1M-flow case (of one traffic shape at a
/// time), so that no flow finds both its sets full (a miss would void its run).
const BIG_FLOWS: u32 = 1 << 22;
const CONNTRACK_MAX: u64 = 1_100_000;

// ---------------------------------------------------------------------------------------------
// The generator's frames.

/// What the generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Packet {
    /// TCP SYN to the IPv4 VIP.
    Syn4,
    /// TCP ACK (an established connection's packet) to the IPv4 VIP.
    Ack4,
    Udp4,
    Ack6,
    Syn6,
    /// TCP ACK to an address that is no VIP, to a MAC address nobody has.
    NotVip4,
}

impl Packet {
    fn v6(self) -> bool {
        matches!(self, Packet::Ack6 | Packet::Syn6)
    }

    /// The frame of flow `flow` in traffic shape `traffic` (what the generator must produce
    /// for it); with `flow` None, the template: the source's low 32 bits and port zero.
    fn frame(self, traffic: u32, src_mac: [u8; 6], dst_mac: [u8; 6], flow: Option<u32>) -> Vec<u8> {
        let (low, sport) = match flow {
            Some(f) => {
                let (offset, port) = flow_source(traffic, f);
                (self.addr_base().wrapping_add(offset), port)
            }
            None => (0, 0),
        };
        let dst_mac = if self == Packet::NotVip4 { OTHER_MAC } else { dst_mac };
        let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
        let mut out = Vec::new();
        let result = if self.v6() {
            let mut src = CLIENT6.octets();
            src[12..].copy_from_slice(&low.to_be_bytes());
            let tcp = eth.ipv6(src, VIP6.octets(), 64).tcp(sport, PORT, 1, 64240);
            let tcp = if self == Packet::Syn6 { tcp.syn() } else { tcp.ack(1) };
            tcp.write(&mut out, &[0; 10])
        } else {
            let dst = if self == Packet::NotVip4 { NOT_VIP4 } else { VIP4 };
            let ip = eth.ipv4(low.to_be_bytes(), dst.octets(), 64);
            match self {
                Packet::Udp4 => ip.udp(sport, PORT).write(&mut out, &[0; 22]),
                Packet::Syn4 => ip.tcp(sport, PORT, 1, 64240).syn().write(&mut out, &[0; 10]),
                _ => ip.tcp(sport, PORT, 1, 64240).ack(1).write(&mut out, &[0; 10]),
            }
        };
        result.expect("etherparse writes to a Vec");
        assert!(out.len() % 4 == 0 && out.len() <= MAX_FRAME, "{self:?}: a {}-byte frame", out.len());
        out
    }

    /// The source address's low 32 bits before the shape's offset.
    fn addr_base(self) -> u32 {
        if self.v6() {
            0
        } else {
            CLIENT4_BASE
        }
    }

    /// The generator's template: flows `first` to `first + flows - 1` in shape `traffic`.
    fn template(self, traffic: u32, src_mac: [u8; 6], dst_mac: [u8; 6], flows: u32, first: u32) -> FlowGen {
        let frame = self.frame(traffic, src_mac, dst_mac, None);
        let l4 = if self.v6() { 54 } else { 34 };
        let udp = self == Packet::Udp4;
        let mut cfg = FlowGen {
            len: frame.len() as u32,
            flows,
            repeat_shift: 0,
            cpus: 1,
            first,
            shape: traffic,
            addr_off: if self.v6() { 14 + 8 + 12 } else { 14 + 12 },
            port_off: l4,
            ip_csum_off: if self.v6() { 0 } else { 14 + 10 },
            l4_csum_off: l4 + if udp { 6 } else { 16 },
            addr_base: self.addr_base(),
            udp: udp as u32,
            frame: [0; MAX_FRAME],
        };
        cfg.frame[..frame.len()].copy_from_slice(&frame);
        cfg
    }
}

// ---------------------------------------------------------------------------------------------
// The set-up.

/// The interface pairs: the generator sends into `tx-NAME`, the program under test runs on
/// `rx-NAME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    MacSwap,
    Encap,
    /// The balancer with the production table size, for up to 10k flows of each shape.
    Lb,
    /// The balancer with a table for 1M flows.
    Big,
    /// The balancer with the production table size, full.
    Syn,
    /// The MAC-swap floor after a lookup in rx-syn's full flow table (a miss).
    Miss,
    /// IP forwarding and nftables DNAT.
    Kern,
}

/// The targets that run the balancer.
const BALANCERS: [Target; 3] = [Target::Lb, Target::Big, Target::Syn];

const TARGETS: [Target; 7] =
    [Target::MacSwap, Target::Encap, Target::Lb, Target::Big, Target::Syn, Target::Miss, Target::Kern];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::MacSwap => "mac",
            Target::Encap => "encap",
            Target::Lb => "lb",
            Target::Big => "big",
            Target::Syn => "syn",
            Target::Miss => "miss",
            Target::Kern => "kern",
        }
    }
}

struct Port {
    tx_ifindex: u32,
    tx_mac: [u8; 6],
    rx_mac: [u8; 6],
}

/// Restores a sysctl of the host's namespace when dropped.
struct SysctlRestore {
    path: &'static str,
    old: String,
}

impl Drop for SysctlRestore {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(self.path, &self.old) {
            eprintln!("bench_xdp: could not restore {} to {}: {e}", self.path, self.old.trim());
        }
    }
}

struct Bench {
    // Dropped first: the programs are detached before the namespaces go.
    /// rx-lb's balancer; also holds the bench programs and their maps.
    lb: Datapath,
    /// rx-big's balancer.
    big: Datapath,
    /// rx-syn's balancer.
    syn: Datapath,
    ports: Vec<Port>,
    _conntrack_max: Option<SysctlRestore>,
    /// The first flow number no new-flow case has sent (rx-syn's table has none at or above it).
    fresh: u32,
    gen: Netns,
    dut: Netns,
    kern: Netns,
}

/// The third byte of the subnet behind `target`'s interface (its own: the FIB must answer with
/// the interface the balancer runs on).
fn subnet(target: Target) -> u8 {
    match target {
        Target::Syn => 2,
        Target::Big => 4,
        _ => 0,
    }
}

/// Backend `n` (1..=3) behind the interface of `target` (rx-lb: 198.18.0.x, rx-big: 198.18.4.x,
/// rx-syn: 198.18.2.x).
fn backend(target: Target, v6: bool, n: u8) -> IpAddr {
    let net = subnet(target);
    if v6 {
        Ipv6Addr::new(0xfd00, net as u16, 0, 0, 0, 0, 0, 0x10 + n as u16).into()
    } else {
        Ipv4Addr::new(198, 18, net, 0x10 + n).into()
    }
}

impl Bench {
    fn new() -> Self {
        let gen = Netns::new("bench-gen");
        let dut = Netns::new("bench-dut");
        let kern = Netns::new("bench-kern");
        // Nothing but the bench's own frames may reach a sink: no IPv6 where none is needed,
        // and no link-local addresses (so no solicitations) where routes need IPv6.
        for ns in [&gen, &kern] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        }
        dut.sysctl("net.ipv6.conf.default.addr_gen_mode", "1");
        gen.ip(&["link", "add", "idle0", "type", "veth", "peer", "name", "idle1"]);
        let mut ports = Vec::new();
        for t in TARGETS {
            let (tx, rx) = (format!("tx-{}", t.name()), format!("rx-{}", t.name()));
            let far = if t == Target::Kern { &kern } else { &dut };
            gen.ip(&["link", "add", &tx, "type", "veth", "peer", "name", &rx, "netns", far.name()]);
            if matches!(t, Target::MacSwap | Target::Encap | Target::Miss) {
                far.sysctl(&format!("net.ipv6.conf.{rx}.disable_ipv6"), "1");
            }
            gen.ip(&["link", "set", &tx, "up"]);
            far.ip(&["link", "set", &rx, "up"]);
            ports.push(Port {
                tx_ifindex: gen.ifindex(&tx),
                tx_mac: parse_mac(&mac_of(&gen, &tx)),
                rx_mac: parse_mac(&mac_of(far, &rx)),
            });
        }
        // bpf_fib_lookup answers only with forwarding on: set as lbd sets it on its host.
        let balancer_ports = BALANCERS.map(|t| format!("rx-{}", t.name()));
        dut.run(|| {
            forwarding::ensure(&balancer_ports, &BTreeSet::from([Family::Ipv4, Family::Ipv6]), Policy::Enable)
        })
        .unwrap_or_else(|e| panic!("enabling forwarding on {balancer_ports:?}: {e}"));
        // Permanent neighbour entries, a bench-only aid: the sinks drop every frame, ARP
        // included, so nothing behind a veth could answer lbd's resolution of the backends.
        let mut batch = String::new();
        for t in BALANCERS {
            let rx = format!("rx-{}", t.name());
            let net = subnet(t);
            batch += &format!("addr add 198.18.{net}.2/24 dev {rx}\n");
            batch += &format!("route add fd00:{net}::/64 dev {rx}\n");
            let mac = mac_string(ports[t as usize].tx_mac);
            for n in 1..=BACKENDS {
                for v6 in [false, true] {
                    let addr = backend(t, v6, n);
                    batch += &format!("neigh replace {addr} lladdr {mac} dev {rx} nud permanent\n");
                }
            }
        }
        ip_batch(&dut, &batch);
        let conntrack_max = configure_kernel_path(&kern, ports[Target::Kern as usize].tx_mac);

        let mut lb = load_balancer(lb_bench::balancer::production_flows(), Target::Lb);
        let mut big = load_balancer(BIG_FLOWS, Target::Big);
        let mut syn = load_balancer(lb_bench::balancer::production_flows(), Target::Syn);
        for name in [GEN, SINK, MAC_SWAP, ENCAP] {
            datapath::program(lb.raw_mut(), name)
                .expect("bench program")
                .load()
                .unwrap_or_else(|e| panic!("the kernel rejected {name}: {e}"));
        }
        datapath::program(syn.raw_mut(), FLOW_LOOKUP)
            .expect("bench program")
            .load()
            .unwrap_or_else(|e| panic!("the kernel rejected {FLOW_LOOKUP}: {e}"));
        dut.run(|| {
            lb.attach(BALANCER, "rx-lb", Mode::Native).expect("attaching the balancer on rx-lb");
            big.attach(BALANCER, "rx-big", Mode::Native).expect("attaching the balancer on rx-big");
            attach(syn.raw_mut(), FLOW_LOOKUP, "rx-miss");
            syn.attach(BALANCER, "rx-syn", Mode::Native).expect("attaching the balancer on rx-syn");
            attach(lb.raw_mut(), MAC_SWAP, "rx-mac");
            attach(lb.raw_mut(), ENCAP, "rx-encap");
        });
        gen.run(|| {
            attach(lb.raw_mut(), GEN, "idle0");
            for t in TARGETS {
                attach(lb.raw_mut(), SINK, &format!("tx-{}", t.name()));
            }
        });
        Bench { lb, big, syn, ports, _conntrack_max: conntrack_max, fresh: 0, gen, dut, kern }
    }

    fn port(&self, target: Target) -> &Port {
        &self.ports[target as usize]
    }
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

fn ip_batch(ns: &Netns, batch: &str) {
    let file = std::env::temp_dir().join(format!("{}.ip-batch", ns.name()));
    std::fs::write(&file, batch).expect("write the ip batch file");
    let out = std::process::Command::new("ip").args(["-n", ns.name(), "-batch"]).arg(&file).output();
    let _ = std::fs::remove_file(&file);
    let out = out.expect("run ip -batch");
    assert!(out.status.success(), "ip -batch failed: {}\n{batch}", String::from_utf8_lossy(&out.stderr));
}

fn attach(ebpf: &mut Ebpf, name: &'static str, interface: &str) {
    let prog: &mut Xdp = datapath::program(ebpf, name).expect("bench program");
    prog.attach(interface, XdpMode::Driver)
        .unwrap_or_else(|e| panic!("attaching {name} on {interface}: {e}"));
}

/// The kernel's own path in `kern`: rx-kern forwards to the backends (on rx-kern itself, their
/// MAC the sink's) after an nftables DNAT rule picked one by a hash of the client's address and
/// port, as the balancer does. Conntrack must hold 1M flows: its limit in a namespace cannot
/// exceed the host's, which is raised for the run (restored when the result is dropped).
fn configure_kernel_path(kern: &Netns, sink_mac: [u8; 6]) -> Option<SysctlRestore> {
    let mut batch = String::from("addr add 198.18.0.2/24 dev rx-kern\n");
    for n in 1..=BACKENDS {
        batch += &format!(
            "neigh replace {} lladdr {} dev rx-kern nud permanent\n",
            backend(Target::Kern, false, n),
            mac_string(sink_mac)
        );
    }
    ip_batch(kern, &batch);
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.rx-kern.rp_filter", "0"),
        // Backends and clients share rx-kern: no ICMP redirects.
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.rx-kern.send_redirects", "0"),
    ] {
        kern.sysctl(key, value);
    }
    // Redirected frames reach a veth without XDP only with NAPI, which GRO turns on.
    run(kern.command("ethtool").args(["-K", "rx-kern", "gro", "on"]));
    let backends: Vec<String> =
        (1..=BACKENDS).map(|n| format!("{} : {}", n - 1, backend(Target::Kern, false, n))).collect();
    let rules = format!(
        "table ip lbbench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         ip daddr {VIP4} tcp dport {PORT} dnat to jhash ip saddr . tcp sport mod {BACKENDS} map {{ {} }}\n  }}\n}}\n",
        backends.join(", ")
    );
    let file = std::env::temp_dir().join(format!("{}.nft", kern.name()));
    std::fs::write(&file, rules).expect("write the nftables rules");
    let out = kern.command("nft").arg("-f").arg(&file).output();
    let _ = std::fs::remove_file(&file);
    match out {
        Ok(o) if o.status.success() => {}
        other => panic!("loading the nftables rules failed (is nftables installed?): {other:?}"),
    }
    // The conntrack sysctls exist once the rules have loaded the module.
    // Loose pickup (the default) lets a mid-connection packet create its entry; be_liberal keeps
    // the repeated sequence numbers from being judged out of window; the checksums were checked
    // by the "NIC" (a real one verifies them in hardware).
    kern.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", "1");
    kern.sysctl("net.netfilter.nf_conntrack_checksum", "0");
    const HOST_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
    let old = std::fs::read_to_string(HOST_MAX).ok()?;
    let restore = if old.trim().parse::<u64>().is_ok_and(|v| v < CONNTRACK_MAX) {
        std::fs::write(HOST_MAX, CONNTRACK_MAX.to_string()).ok()?;
        Some(SysctlRestore { path: HOST_MAX, old })
    } else {
        None
    };
    kern.sysctl("net.netfilter.nf_conntrack_max", &CONNTRACK_MAX.to_string());
    restore
}

/// The balancer with a flow table of `flows`, its backends behind `target`'s interface.
fn load_balancer(flows: u32, target: Target) -> Datapath {
    lb_bench::balancer::load(flows, |v6, n| backend(target, v6, n))
}

// ---------------------------------------------------------------------------------------------
// Running the generator.

/// Counter values around a measured run.
#[derive(Clone, Default)]
struct Snapshot {
    gen: u64,
    sink: u64,
    /// STATS of the balancer under test, in `Counter::ALL` order.
    stats: Vec<u64>,
    /// run_time_ns and run_cnt of the program under test.
    prog: (u64, u64),
}

struct Sample {
    packets: u64,
    /// The kernel's time for the test runs.
    kernel_ns: u64,
    wall: Duration,
    /// Program under test: ns per run, if BPF statistics were on.
    prog_ns: Option<f64>,
}

/// What a measured run must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Every frame back at the sink.
    Returned,
    /// Every frame forwarded by the balancer, each a flow-table hit (or, `new_flows`, a miss).
    Forwarded { new_flows: bool },
    /// Every frame passed by the balancer as not for a VIP; none at the sink.
    NotVip,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    target: Target,
    packet: Packet,
    /// The traffic shape (`lb_common::bench::shape`).
    traffic: u32,
    /// 0: every packet a new flow.
    flows: u32,
    expect: Expect,
}

impl Bench {
    fn balancer(&self, target: Target) -> Option<&Datapath> {
        match target {
            Target::Lb => Some(&self.lb),
            Target::Big => Some(&self.big),
            Target::Syn => Some(&self.syn),
            _ => None,
        }
    }

    fn program_under_test(&self, target: Target) -> Option<(&Ebpf, &'static str)> {
        match target {
            Target::MacSwap => Some((self.lb.raw(), MAC_SWAP)),
            Target::Encap => Some((self.lb.raw(), ENCAP)),
            Target::Lb => Some((self.lb.raw(), BALANCER)),
            Target::Big => Some((self.big.raw(), BALANCER)),
            Target::Syn => Some((self.syn.raw(), BALANCER)),
            Target::Miss => Some((self.syn.raw(), FLOW_LOOKUP)),
            Target::Kern => None,
        }
    }

    fn per_cpu_sum(&self, name: &str) -> u64 {
        let map = self.lb.raw().map(name).unwrap_or_else(|| panic!("no map {name}"));
        let values: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).expect(name);
        values.get(&0, 0).unwrap_or_else(|e| panic!("reading {name}: {e}")).iter().sum()
    }

    fn snapshot(&self, target: Target) -> Snapshot {
        let stats = self
            .balancer(target)
            .map(|dp| Counter::ALL.iter().map(|c| dp.counter(*c).expect("reading STATS")).collect())
            .unwrap_or_default();
        let prog =
            self.program_under_test(target).map(|(ebpf, name)| prog_stats(ebpf, name)).unwrap_or_default();
        let (gen, sink) = (self.per_cpu_sum(bench_maps::GEN_SEQ), self.per_cpu_sum(bench_maps::SINK));
        Snapshot { gen, sink, stats, prog }
    }

    /// Writes `case`'s template and starts the generator's sequence at 0: a case of new flows
    /// draws its flows from those never sent (advanced by [`Bench::sent`]).
    fn set_template(&mut self, case: &Case) -> FlowGen {
        let port = self.port(case.target);
        let (flows, first) = if case.flows == 0 { (MAX_RUN_FRAMES, self.fresh) } else { (case.flows, 0) };
        let cfg = case.packet.template(case.traffic, port.tx_mac, port.rx_mac, flows, first);
        self.write_template(cfg);
        self.set_sequence(0);
        cfg
    }

    /// After `packets` frames of `case`: a new-flow case's flows are used up.
    fn sent(&mut self, case: &Case, packets: u64) {
        if case.flows == 0 {
            self.fresh = self.fresh.checked_add(packets as u32).expect("flow numbers left");
        }
    }

    /// Empties rx-big's flow table, then records and confirms 1M flows of `traffic` in it.
    fn warm_big(&mut self, traffic: u32) {
        let t = Instant::now();
        let table = self.big.flow_entries().expect("mapping rx-big's flow table");
        for i in 0..table.len() {
            if let Some(seen) = table.read(i) {
                table.clear(i, &seen);
            }
        }
        let case = Case {
            target: Target::Big,
            packet: Packet::Ack4,
            traffic,
            flows: 1_000_000,
            expect: Expect::Forwarded { new_flows: false },
        };
        let (sent, _) = self.send(&case, 2_000_000);
        let confirmed = (0..table.len()).filter(|&i| table.read(i).is_some_and(|e| e.confirmed())).count();
        eprintln!(
            "bench_xdp: rx-big emptied and warmed with 1M flows, {}: {sent} frames, {confirmed} flows confirmed, {:.1?}",
            shape::name(traffic),
            t.elapsed()
        );
        if confirmed != 1_000_000 {
            eprintln!(
                "bench_xdp: rx-big holds {confirmed} of the 1M flows of {} (the rest found both their sets full): its 1M-flow runs will be void",
                shape::name(traffic)
            );
        }
    }

    fn write_template(&mut self, cfg: FlowGen) {
        let name = bench_maps::FLOWGEN;
        let map = self.lb.raw_mut().map_mut(name).unwrap_or_else(|| panic!("no map {name}"));
        let mut array: Array<&mut MapData, FlowGen> = Array::try_from(map).expect(name);
        array.set(0, cfg, 0).expect("writing the generator's template");
    }

    fn set_sequence(&mut self, seq: u64) {
        let name = bench_maps::GEN_SEQ;
        let map = self.lb.raw_mut().map_mut(name).unwrap_or_else(|| panic!("no map {name}"));
        let mut seqs: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(map).expect(name);
        let cpus = aya::util::nr_cpus().expect("number of CPUs");
        let values = PerCpuValues::try_from(vec![seq; cpus]).expect("per-CPU values");
        seqs.set(0, values, 0).expect("setting BENCH_GEN_SEQ");
    }

    /// Whether this kernel runs the generator in live-frames mode: one frame to the MAC-swap
    /// floor. Some refuse it (EPERM on some VMs).
    fn live_frames_work(&mut self) -> Result<(), String> {
        let case = Case {
            target: Target::MacSwap,
            packet: Packet::Ack4,
            traffic: ONE_SHAPE,
            flows: 1,
            expect: Expect::Returned,
        };
        let cfg = self.set_template(&case);
        let frame = &cfg.frame[..cfg.len as usize];
        let ctx = lb_tests::xdp::xdp_md(frame.len(), self.port(Target::MacSwap).tx_ifindex);
        let prog: &mut Xdp = datapath::program(self.lb.raw_mut(), GEN).expect("generator");
        let options = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: 1,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..Default::default()
        };
        match prog.test_run(options) {
            Ok(_) => Ok(()),
            Err(e) => Err(std::error::Error::source(&e).map_or(e.to_string(), |c| c.to_string())),
        }
    }

    /// Sends `packets` frames of `case` (rounded up to whole test runs) without checking them.
    fn send(&mut self, case: &Case, packets: u64) -> (u64, u64) {
        let cfg = self.set_template(case);
        let ingress = self.port(case.target).tx_ifindex;
        let (mut sent, mut kernel_ns) = (0, 0);
        let start = Instant::now();
        while sent < packets && start.elapsed() < WARM_UP_LIMIT {
            let n = (packets - sent).min(CHUNK as u64) as u32;
            kernel_ns += self.test_run(&cfg, ingress, n);
            sent += n as u64;
        }
        self.sent(case, sent);
        (sent, kernel_ns)
    }

    /// One live-frames test run of `repeat` frames into `ingress`; the kernel's time for it.
    fn test_run(&mut self, cfg: &FlowGen, ingress: u32, repeat: u32) -> u64 {
        let frame = &cfg.frame[..cfg.len as usize];
        let ctx = lb_tests::xdp::xdp_md(frame.len(), ingress);
        let prog: &mut Xdp = datapath::program(self.lb.raw_mut(), GEN).expect("generator");
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .unwrap_or_else(|e| {
                // aya's message names the call; the kernel's reason (errno) is its source.
                let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
                panic!("live-frames test run into ifindex {ingress}: {e}{cause}")
            });
        result.duration.as_nanos() as u64 * repeat as u64
    }

    /// Sends frames of `case` for about `budget`, then checks every counter it should have moved.
    fn measure(&mut self, case: &Case, budget: Duration) -> Result<Sample, String> {
        let cfg = self.set_template(case);
        let ingress = self.port(case.target).tx_ifindex;
        let before = self.snapshot(case.target);
        let start = Instant::now();
        let (mut packets, mut kernel_ns) = (0u64, 0u64);
        for _ in 0..MAX_CALLS {
            kernel_ns += self.test_run(&cfg, ingress, CHUNK);
            packets += CHUNK as u64;
            if start.elapsed() >= budget {
                break;
            }
        }
        let wall = start.elapsed();
        self.sent(case, packets);
        let after = self.snapshot(case.target);
        let (ns, runs) = (after.prog.0 - before.prog.0, after.prog.1 - before.prog.1);
        let prog_ns = (runs > 0).then(|| ns as f64 / runs as f64);
        // (A void run still shows what the program cost: a clue when profiling.)
        self.check(case, packets, &before, &after)
            .map_err(|e| format!("{e} [program {prog_ns:?} ns/run]"))?;
        Ok(Sample { packets, kernel_ns, wall, prog_ns })
    }

    fn check(&self, case: &Case, packets: u64, before: &Snapshot, after: &Snapshot) -> Result<(), String> {
        let generated = after.gen - before.gen;
        let sunk = after.sink - before.sink;
        let mut problems = Vec::new();
        if generated != packets {
            problems.push(format!("the generator ran {generated} times for {packets} frames"));
        }
        let runs = after.prog.1 - before.prog.1;
        if runs != 0 && runs != packets {
            problems.push(format!("the program under test ran {runs} times for {packets} frames"));
        }
        let want_sunk = if case.expect == Expect::NotVip { 0 } else { packets };
        if sunk != want_sunk {
            problems.push(format!("the sink counted {sunk} frames, {want_sunk} expected"));
        }
        if !before.stats.is_empty() {
            for (i, c) in Counter::ALL.iter().enumerate() {
                let moved = after.stats[i] - before.stats[i];
                let want = match (case.expect, c) {
                    (Expect::NotVip, Counter::PassNotVip) => packets,
                    (Expect::Forwarded { .. }, Counter::ForwardTx) => packets,
                    (Expect::Forwarded { new_flows: true }, Counter::FlowMiss) => packets,
                    // Recorded (in an empty entry, an unconfirmed flow's or an idle one's), or
                    // not where every way holds a recent connection.
                    (
                        Expect::Forwarded { new_flows: true },
                        Counter::FlowPending
                        | Counter::FlowEvicted
                        | Counter::FlowNotRecorded
                        | Counter::FlowMidstream,
                    ) => moved.min(packets),
                    (Expect::Forwarded { new_flows: false }, Counter::FlowHit) => packets,
                    _ => 0,
                };
                if moved != want {
                    problems.push(format!("{} moved by {moved}, {want} expected", c.name()));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Runs the generator once, not live, for each packet kind and traffic shape and compares
    /// its frame with the one etherparse builds for the same flow (addresses, ports, checksums).
    fn check_generator(&mut self, cpu: usize) {
        let (src_mac, dst_mac) = ([0x02, 0, 0, 0, 0, 0xaa], [0x02, 0, 0, 0, 0, 0xbb]);
        let (flows, first, seq) = (1_000_003u32, 77u32, 123_456_789u64);
        for packet in [Packet::Ack4, Packet::Udp4, Packet::Ack6, Packet::Syn4] {
            for traffic in shape::ALL {
                let cfg = packet.template(traffic, src_mac, dst_mac, flows, first);
                self.write_template(cfg);
                self.set_sequence(seq);
                // Start from garbage: the generator must write every byte.
                let input = vec![0xa5u8; cfg.len as usize];
                let mut out = vec![0u8; cfg.len as usize + 256];
                let prog: &mut Xdp = datapath::program(self.lb.raw_mut(), GEN).expect("generator");
                let result = prog
                    .test_run(TestRunOptions {
                        data_in: Some(&input),
                        data_out: Some(&mut out),
                        ..Default::default()
                    })
                    .expect("test run of the generator");
                out.truncate(result.data_size_out as usize);
                let name = shape::name(traffic);
                assert_eq!(
                    result.return_value, 3,
                    "the generator returned {} for {packet:?}, {name}",
                    result.return_value
                );
                let want = packet.frame(traffic, src_mac, dst_mac, Some((seq % flows as u64) as u32 + first));
                assert_eq!(
                    out, want,
                    "the generator's {packet:?} frame, {name} (CPU {cpu}), differs from etherparse's"
                );
            }
        }
    }

    /// Waits (at most 5 s) until no frame has reached a sink for 1 s: the set-up's last stray
    /// frames (multicast reports when forwarding was turned on) must not count in a run.
    fn wait_quiet(&self) {
        let start = Instant::now();
        let mut last = self.per_cpu_sum(bench_maps::SINK);
        let mut quiet_since = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.per_cpu_sum(bench_maps::SINK);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= Duration::from_secs(1) {
                return;
            }
        }
        eprintln!("bench_xdp: the sinks still see stray frames after 5 s; runs may be void");
    }
}

fn prog_stats(ebpf: &Ebpf, name: &str) -> (u64, u64) {
    let prog: &Xdp = ebpf.program(name).and_then(|p| p.try_into().ok()).expect("XDP program");
    lb_bench::stats::run_stats(prog)
}

// ---------------------------------------------------------------------------------------------
// The two sections.

struct Args {
    rounds: usize,
    /// Milliseconds per measured run.
    ms: u64,
    cost: bool,
    pps: bool,
    /// Only the cases whose name contains this (for profiling one case).
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args { rounds: 5, ms: 300, cost: true, pps: true, only: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--cost-only" => a.pps = false,
            "--pps-only" => a.cost = false,
            "--only" => a.only = Some(it.next().unwrap_or_else(|| usage())),
            "--rounds" | "--ms" => {
                let v = it.next().and_then(|v| v.parse::<u64>().ok());
                match (flag.as_str(), v) {
                    ("--rounds", Some(n)) if (1..=50).contains(&n) => a.rounds = n as usize,
                    ("--ms", Some(n)) if (20..=5000).contains(&n) => a.ms = n,
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    a
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_xdp [--rounds 1-50] [--ms 20-5000] [--cost-only | --pps-only] [--only CASE-TEXT]"
    );
    std::process::exit(2);
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    lb_bench::stats::median(&mut v)
}

/// Runs every case `rounds` times, taking turns; returns each case's valid values (`value` of
/// each sample). Void runs are reported and dropped.
fn rounds(
    bench: &mut Bench,
    cases: &[(&str, Case)],
    args: &Args,
    value: impl Fn(&Sample) -> Option<f64>,
) -> Vec<Vec<f64>> {
    let mut out = vec![Vec::new(); cases.len()];
    for round in 0..args.rounds {
        for (i, (name, case)) in cases.iter().enumerate() {
            if args.only.as_ref().is_some_and(|only| !name.contains(only.as_str())) {
                continue;
            }
            match bench.measure(case, Duration::from_millis(args.ms)) {
                Ok(s) => {
                    let v = value(&s);
                    eprintln!(
                        "bench_xdp: round {round} {name}: {} frames, {:.0} ns/frame by the kernel's clock, \
                         {:.0} ns/frame by the wall clock{}",
                        s.packets,
                        s.kernel_ns as f64 / s.packets as f64,
                        s.wall.as_nanos() as f64 / s.packets as f64,
                        s.prog_ns.map_or(String::new(), |ns| format!(", program {ns:.1} ns/run"))
                    );
                    out[i].extend(v);
                }
                Err(e) => eprintln!("bench_xdp: round {round} {name}: VOID: {e}"),
            }
        }
    }
    out
}

fn cost_section(bench: &mut Bench, args: &Args) -> Vec<Row> {
    let case = |target, packet, flows, expect| Case { target, packet, traffic: ONE_SHAPE, flows, expect };
    let established = Expect::Forwarded { new_flows: false };
    let new = Expect::Forwarded { new_flows: true };
    // (name, case, target ratio to the MAC-swap floor)
    let cases: Vec<(&str, Case, Option<f64>)> = vec![
        ("MAC-swap floor", case(Target::MacSwap, Packet::Ack4, 1000, Expect::Returned), None),
        ("encap floor (push IPv4 header)", case(Target::Encap, Packet::Ack4, 1000, Expect::Returned), None),
        ("IPv4 TCP SYN, new flow (table full)", case(Target::Syn, Packet::Syn4, 0, new), Some(2.6)),
        (
            "of which the flow-table miss: floor + parse + FLOW_TABLE lookup (table full)",
            case(Target::Miss, Packet::Syn4, 0, Expect::Returned),
            None,
        ),
        (
            "IPv4 TCP, packet of a connection the table never saw: recorded (table full)",
            case(Target::Syn, Packet::Ack4, 0, new),
            None,
        ),
        ("IPv4 TCP, established flow", case(Target::Lb, Packet::Ack4, 1000, established), Some(2.4)),
        ("IPv4 UDP, established flow", case(Target::Lb, Packet::Udp4, 1000, established), None),
        ("IPv6 TCP, established flow", case(Target::Lb, Packet::Ack6, 1000, established), Some(2.6)),
        ("IPv6 TCP SYN, new flow (table full)", case(Target::Syn, Packet::Syn6, 0, new), None),
        ("non-VIP (passed)", case(Target::Lb, Packet::NotVip4, 1000, Expect::NotVip), Some(1.6)),
    ];
    let named: Vec<(&str, Case)> = cases.iter().map(|(n, c, _)| (*n, *c)).collect();
    let stats = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS (kernel.bpf_stats_enabled)");
    let values = rounds(bench, &named, args, |s| s.prog_ns);
    drop(stats);
    let floor = median(values[0].clone());
    cases
        .iter()
        .zip(values)
        .map(|((name, _, target), v)| {
            let value = median(v);
            let ratio = value.zip(floor).map(|(v, f)| v / f);
            Row {
                section: "xdp cost",
                case: (*name).to_owned(),
                value,
                decimals: 1,
                unit: "ns/packet",
                ratio,
                target: target.map(|t| (format!("<= {t}x floor"), ratio.is_some_and(|r| r <= t))),
            }
        })
        .collect()
}

/// Packets per second: the floors and the kernel's path in one shape, the balancer in every
/// shape, then the balancer's worst shape against each target. The 1M-flow cases run one shape
/// at a time on rx-big (its table holds one shape's flows), each beside an encapsulation floor
/// of its own rounds.
fn pps_section(bench: &mut Bench, args: &Args) -> Vec<Row> {
    let case = |target, packet, traffic, flows, expect| Case { target, packet, traffic, flows, expect };
    let established = Expect::Forwarded { new_flows: false };
    // (flows, label, target of the balancer / the encapsulation floor)
    let flow_counts: [(u32, &str, Option<f64>); 3] =
        [(1, "1 flow", None), (10_000, "10k flows", Some(0.85)), (1_000_000, "1M flows", Some(0.6))];
    let balancer_name = |label: &str, s: u32| format!("balancer, established, {label}, {}", shape::name(s));
    let syn_name = |s: u32| format!("balancer, new flow per packet (SYN), {}", shape::name(s));
    let encap_name = |label: &str, s: u32| match label {
        "1M flows" => format!("encap floor, 1M flows, beside {}", shape::name(s)),
        _ => format!("encap floor, {label}"),
    };
    let mut cases: Vec<(String, Case)> = Vec::new();
    for (flows, label, _) in flow_counts {
        let one = |target| case(target, Packet::Ack4, ONE_SHAPE, flows, Expect::Returned);
        cases.push((format!("MAC-swap floor, {label}"), one(Target::MacSwap)));
        if flows < 1_000_000 {
            cases.push((encap_name(label, ONE_SHAPE), one(Target::Encap)));
            for s in shape::ALL {
                cases.push((balancer_name(label, s), case(Target::Lb, Packet::Ack4, s, flows, established)));
            }
        }
        cases.push((
            format!("nftables DNAT + forwarding, {label}, {}", shape::name(ONE_SHAPE)),
            one(Target::Kern),
        ));
    }
    for s in shape::ALL {
        cases.push((
            syn_name(s),
            case(Target::Syn, Packet::Syn4, s, 0, Expect::Forwarded { new_flows: true }),
        ));
    }
    let per_second = |s: &Sample| Some(s.packets as f64 * 1e9 / s.kernel_ns as f64);
    let mut pps: HashMap<String, Option<f64>> = HashMap::new();
    let mut measure = |bench: &mut Bench, cases: &[(String, Case)]| {
        let named: Vec<(&str, Case)> = cases.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let values = rounds(bench, &named, args, per_second);
        pps.extend(cases.iter().map(|(n, _)| n.clone()).zip(values.into_iter().map(median)));
    };
    measure(bench, &cases);
    for s in shape::ALL {
        bench.warm_big(s);
        let block = [
            (
                encap_name("1M flows", s),
                case(Target::Encap, Packet::Ack4, ONE_SHAPE, 1_000_000, Expect::Returned),
            ),
            (balancer_name("1M flows", s), case(Target::Big, Packet::Ack4, s, 1_000_000, established)),
        ];
        measure(bench, &block);
        cases.extend(block);
    }
    let at = |name: &str| pps.get(name).copied().flatten();
    let mut rows = Vec::new();
    for (name, case) in &cases {
        // Beside the MAC-swap floor of the same flow count (new flows: the 1M-flow one).
        let flows = if case.flows == 0 { 1_000_000 } else { case.flows };
        let label = flow_counts.iter().find(|(f, _, _)| *f == flows).map_or("", |(_, l, _)| *l);
        let floor = at(&format!("MAC-swap floor, {label}"));
        rows.push(Row {
            section: "xdp pps",
            case: name.clone(),
            value: at(name).map(|v| v / 1e6),
            decimals: 2,
            unit: "Mpps",
            ratio: at(name).zip(floor).map(|(v, f)| v / f),
            target: None,
        });
    }
    let over = |num: Option<f64>, den: Option<f64>| {
        num.zip(den).map(|(n, d)| n / d).ok_or("no valid run".to_owned())
    };
    for (_, label, target) in flow_counts {
        let mut by = ByShape::new("bench_xdp", format!("balancer established / encap floor, {label}"));
        for s in shape::ALL {
            by.push(s, over(at(&balancer_name(label, s)), at(&encap_name(label, s))));
        }
        rows.extend(by.rows("xdp pps", "x encap", 2, None, true, target));
    }
    let mut by = ByShape::new("bench_xdp", "balancer new flows (SYN) / encap floor, table full");
    for s in shape::ALL {
        by.push(s, over(at(&syn_name(s)), at(&encap_name("10k flows", s))));
    }
    rows.extend(by.rows("xdp pps", "x encap", 2, None, true, Some(0.7)));
    let kernel = at(&format!("nftables DNAT + forwarding, 10k flows, {}", shape::name(ONE_SHAPE)));
    let all_shapes: Option<Vec<f64>> =
        shape::ALL.iter().map(|&s| at(&balancer_name("10k flows", s))).collect();
    let worst = all_shapes.and_then(|v| v.into_iter().reduce(f64::min));
    let value = worst.zip(kernel).map(|(b, k)| b / k);
    rows.push(Row {
        section: "xdp pps",
        case: "balancer (worst shape) / nftables DNAT, 10k flows".to_owned(),
        value,
        decimals: 2,
        unit: "x nftables",
        ratio: None,
        target: Some((">= 7".to_owned(), value.is_some_and(|v| v >= 7.0))),
    });
    rows.push(Row {
        section: "xdp pps",
        case: "MAC-swap floor / nftables DNAT, 10k flows".to_owned(),
        value: at("MAC-swap floor, 10k flows").zip(kernel).map(|(f, k)| f / k),
        decimals: 2,
        unit: "x nftables",
        ratio: None,
        target: None,
    });
    rows
}

fn warm_up(bench: &mut Bench) {
    let t = Instant::now();
    let case = |target, packet, traffic, flows, expect| Case { target, packet, traffic, flows, expect };
    let established = Expect::Forwarded { new_flows: false };
    // Every flow the established cases on rx-lb use (the smaller flow counts are subsets of the
    // 10k), two packets each (the first records a flow, the second confirms it), and the 1M
    // flows of the kernel's path into its conntrack; then rx-syn's table filled with new flows.
    // (rx-big is warmed one shape at a time: [`Bench::warm_big`].)
    let mut warm: Vec<(Case, u64)> = shape::ALL
        .iter()
        .map(|&s| (case(Target::Lb, Packet::Ack4, s, 10_000, established), 20_000))
        .collect();
    warm.extend([
        (case(Target::Lb, Packet::Udp4, ONE_SHAPE, 1000, established), 2000),
        (case(Target::Lb, Packet::Ack6, ONE_SHAPE, 1000, established), 2000),
        (case(Target::Kern, Packet::Ack4, ONE_SHAPE, 1_000_000, Expect::Returned), 1_000_000),
        (
            case(Target::Syn, Packet::Ack4, shape::RANDOM, 0, Expect::Forwarded { new_flows: true }),
            lb_bench::balancer::production_flows() as u64 + 50_000,
        ),
    ]);
    for (case, packets) in warm {
        let (sent, ns) = bench.send(&case, packets);
        eprintln!(
            "bench_xdp: warm-up {:?} {:?} {} {} flows: {sent} frames, {:.0} ns/frame",
            case.target,
            case.packet,
            shape::name(case.traffic),
            case.flows,
            ns as f64 / sent as f64
        );
    }
    eprintln!("bench_xdp: warm-up took {:.1?}", t.elapsed());
}

fn main() {
    let args = args();
    lb_tests::privilege::require_root();
    let stats_before = lb_bench::stats::bpf_stats_enabled();
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cpus - 1;
    let mut bench = Bench::new();
    eprintln!(
        "bench_xdp: set-up of {}, {}, {} took {:.1?}; generating on CPU {cpu}",
        bench.gen.name(),
        bench.dut.name(),
        bench.kern.name(),
        started.elapsed()
    );
    let mut rows = Vec::new();
    {
        let _inside = ThreadIn::enter(&bench.gen, cpu);
        bench.check_generator(cpu);
        if let Err(e) = bench.live_frames_work() {
            eprintln!(
                "bench_xdp: this kernel refuses live-frames test runs ({e}): no rows from bench_xdp; \
                 bench_flows measures the per-packet costs and rates without live frames"
            );
            return;
        }
        bench.wait_quiet();
        warm_up(&mut bench);
        if args.cost {
            rows.extend(cost_section(&mut bench, &args));
        }
        if args.pps {
            rows.extend(pps_section(&mut bench, &args));
        }
    }
    drop(bench);
    if args.only.is_some() {
        // Profiling one case: the others were not run.
        rows.retain(|r| r.value.is_some());
    }
    lb_bench::row::finish("bench_xdp", &rows, &stats_before, started);
}
