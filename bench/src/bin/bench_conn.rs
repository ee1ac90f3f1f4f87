//! Connection benchmark (benchmark 3 of the benchmark issue): `wrk` from the client namespace to
//! small nginx backends, keep-alive and connection-per-request, by five routes on the standard
//! topology (client, lb, three backends on a bridge):
//!
//! - `direct`: straight to the first backend's own address (no balancer),
//! - `vip1`: through the balancer to that same backend alone (VIP 198.18.100.2): the same server
//!   as `direct`, with the balancer in between,
//! - `vip3`: through the balancer's VIP 198.18.100.1 spread over the three backends,
//! - `haproxy`: HAProxy in TCP mode in the lb namespace on 198.18.100.3 (routed to the lb like
//!   the VIPs), round robin over the three backends' own addresses.
//! - `hop`: the floor of any balancer on this topology: a host `hop` on the bridge whose `eth0`
//!   runs `bench_forward` (every IPv4 frame sent to it on to the first backend's MAC with XDP_TX,
//!   no lookup, no tunnel) for 198.18.101.1, an address on that backend's `lo`. It pays every cost of the extra
//!   hop (the veth turning the skb into an XDP frame and back, a second bridge pass) and none of
//!   the balancer's own, so `vip1` against `hop` is what the balancer itself costs.
//!
//! lbd runs in the lb namespace (ipip mode, decap on the backends; replies go straight back to
//! the client). Each backend runs one single-process nginx (`master_process off`) answering `ok`
//! on port 80. Keep-alive: `wrk -t1 -c32 -d<S>s`, reported as req/s; connection-per-request: the
//! same with `-H 'Connection: close'` (one connection a request), reported as conn/s. Every route
//! and mode runs once a round, in an order that rotates from round to round, for `--rounds`
//! rounds (default 3); medians are reported with their ratio to `direct`. By default
//! (`--pin split`) wrk runs on CPU 0 and every nginx and HAProxy on CPU 1, so the servers have one
//! CPU whatever their number; `--pin none` leaves placement to the scheduler.
//!
//! On a small shared machine every run is CPU-bound, so throughput follows the CPU each request
//! costs and whatever else the machine runs at the time. Each run therefore also reports the CPU
//! time of wrk, the servers and `ksoftirqd` (the kernel's network work runs in their context)
//! per request, a measure other load does not move; and one more run per mode of `vip3` with the
//! kernel's BPF run-time statistics on gives the balancer program's own time a packet.
//!
//! ```sh
//! cargo build --release -p lb-userspace -p lb-bench
//! sudo target/release/bench_conn [--rounds N] [--seconds S] [--pin split|none] \
//!     [--routes direct,hop,vip1,vip3,haproxy] [--modes keep-alive,close] [--bpf-stats yes|no]
//! ```
//!
//! Needs root, `wrk`, `nginx` and `haproxy` (`cargo xtask setup` installs them). Prints human
//! lines and `ROW|<section>|<case>|<value>|<unit>|<ratio>|<target>|<ok|MISS|->` lines for
//! `cargo xtask bench`. Every process it starts is killed and every namespace removed on exit,
//! also on panic and on SIGINT, SIGTERM or SIGHUP; each wrk run is bounded by `-d` and killed if
//! it overruns. Traffic goes only to the namespaces' own addresses (198.18.0.0/15).
use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData},
    programs::links::{FdLink, PinnedLink},
};
use lb_bench::programs::{self, FORWARD};
use lb_common::bench::{map_names as bench_maps, ForwardMacs};
use lb_tests::{
    bins::Running,
    lbd::LbdFiles,
    netns::{veth, Netns},
    topology::{ethtool, mac_of, parse_mac, vip, xdp_prog_id, Family, Topology, TINY},
    unique_name,
};
use lb_userspace::datapath::{self, Datapath, DECAP};

const PORT: u16 = 80;
/// HAProxy's listening address, on the lb's `lo` (the client routes 198.18.100.0/24 to the lb).
const HAPROXY_ADDR: &str = "198.18.100.3";
/// The hop floor's host address on the bridge, and the address it forwards (first backend's `lo`).
const HOP_ADDR: &str = "198.18.0.3";
const HOP_SERVICE: &str = "198.18.101.1";
const CONNECTIONS: u32 = 32;
const VIP_TARGET: f64 = 0.95;
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pin {
    Split,
    None,
}

struct Args {
    rounds: usize,
    seconds: u64,
    pin: Pin,
    routes: Vec<Route>,
    modes: Vec<Mode>,
    bpf_stats: bool,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 3,
        seconds: 5,
        pin: Pin::Split,
        routes: Route::ALL.to_vec(),
        modes: Mode::ALL.to_vec(),
        bpf_stats: true,
    };
    let mut it = std::env::args().skip(1);
    let usage = || -> ! {
        eprintln!(
            "usage: bench_conn [--rounds 1-20] [--seconds 1-60] [--pin split|none] \
             [--routes direct,hop,vip1,vip3,haproxy] [--modes keep-alive,close] [--bpf-stats yes|no]"
        );
        std::process::exit(2);
    };
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match (flag.as_str(), value.parse::<u64>().ok()) {
            ("--rounds", Some(n)) if (1..=20).contains(&n) => a.rounds = n as usize,
            ("--seconds", Some(n)) if (1..=60).contains(&n) => a.seconds = n,
            ("--pin", _) if value == "split" => a.pin = Pin::Split,
            ("--pin", _) if value == "none" => a.pin = Pin::None,
            ("--bpf-stats", _) if value == "yes" || value == "no" => a.bpf_stats = value == "yes",
            ("--routes", _) => {
                a.routes =
                    Route::ALL.into_iter().filter(|r| value.split(',').any(|v| v == r.flag())).collect();
                if a.routes.len() != value.split(',').count() {
                    usage();
                }
            }
            ("--modes", _) => {
                a.modes = Mode::ALL.into_iter().filter(|m| value.split(',').any(|v| v == m.flag())).collect();
                if a.modes.len() != value.split(',').count() {
                    usage();
                }
            }
            _ => usage(),
        }
    }
    a
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    Direct,
    Hop,
    Vip1,
    Vip3,
    Haproxy,
}

impl Route {
    const ALL: [Route; 5] = [Route::Direct, Route::Hop, Route::Vip1, Route::Vip3, Route::Haproxy];

    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct (1 backend)",
            Route::Hop => "bare XDP hop (1 backend)",
            Route::Vip1 => "VIP (1 backend)",
            Route::Vip3 => "VIP (3 backends)",
            Route::Haproxy => "HAProxy TCP (3 backends)",
        }
    }

    fn index(self) -> usize {
        Route::ALL.iter().position(|&r| r == self).expect("a route")
    }

    fn flag(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Hop => "hop",
            Route::Vip1 => "vip1",
            Route::Vip3 => "vip3",
            Route::Haproxy => "haproxy",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    KeepAlive,
    Close,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::KeepAlive, Mode::Close];

    fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Close => "connection per request",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Close => "close",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Mode::KeepAlive => "req/s",
            Mode::Close => "conn/s",
        }
    }
}

fn main() {
    let args = args();
    lb_tests::privilege::require_root();
    lb_tests::bins::stop_on_signals();
    for tool in ["wrk", "nginx", "haproxy", "taskset"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            eprintln!(
                "bench_conn: {tool} is not installed (cargo xtask setup installs wrk, nginx and haproxy)"
            );
            std::process::exit(1);
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = if cpus < 2 { Pin::None } else { args.pin };

    // Dropped in reverse: servers, lbd, decap and pass-through programs, pins, namespaces.
    let topo = Topology::new(3);
    let files = LbdFiles::new();
    let _passthrough = topo.start_lb_port_passthrough();
    let _backend_hosts = topo.start_backend_hosts();
    let backends: Vec<IpAddr> = topo.backends.iter().map(|b| b.addr(Family::V4)).collect();
    // VIP 1 spreads over the three backends; VIP 2 has only the first, the one the direct path
    // reaches: the same servers as the direct path, with the balancer in between.
    let (vip3, vip1) = (vip(Family::V4, 1), vip(Family::V4, 2));
    let vips = format!("{}{}", vip_toml("three", vip3, &backends), vip_toml("one", vip1, &backends[..1]));
    let lbd = topo.start_lbd(&files, &vips);
    let _hop = start_hop_floor(&topo);
    for ns in [&topo.client.ns, &topo.lb.ns] {
        // Connection-per-request at tens of thousands a second: all the ports, and reuse of
        // TIME_WAIT ones for new outgoing connections.
        ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    }
    topo.lb.ns.addr("lo", &format!("{HAPROXY_ADDR}/32"));
    // The bridge stands for a switch: no iptables on bridged frames (br_netfilter, when the
    // module is loaded, defaults to calling them in every namespace; without it these sysctls do
    // not exist and nothing needs turning off). A VIP request crosses the bridge twice.
    for key in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"] {
        let _ = topo.fabric.command("sysctl").args(["-q", "-w", &format!("net.bridge.{key}=0")]).output();
    }

    let dir = std::env::temp_dir().join(unique_name("bench-conn"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _dir = RemoveDir(dir.clone());
    let server_cpu = (pin == Pin::Split).then_some(SERVER_CPU);
    let hop_service: IpAddr = HOP_SERVICE.parse().expect("address");
    let mut servers: Vec<Server> = Vec::new();
    for (i, b) in topo.backends.iter().enumerate() {
        servers.push(start_nginx(
            &b.ns,
            &dir.join(format!("nginx-b{}", i + 1)),
            &if i == 0 {
                vec![vip3, vip1, hop_service, b.addr(Family::V4)]
            } else {
                vec![vip3, b.addr(Family::V4)]
            },
            server_cpu,
        ));
    }
    servers.push(start_haproxy(&topo.lb.ns, &dir, &backends, server_cpu));
    let haproxy: IpAddr = HAPROXY_ADDR.parse().expect("address");
    let target = |route: Route| {
        SocketAddr::new(
            match route {
                Route::Direct => backends[0],
                Route::Hop => hop_service,
                Route::Vip1 => vip1,
                Route::Vip3 => vip3,
                Route::Haproxy => haproxy,
            },
            PORT,
        )
    };
    for route in Route::ALL {
        wait_for_http(&topo.client.ns, target(route), &mut servers);
    }
    let softirqd = softirq_threads();

    let client_cpu = (pin == Pin::Split).then_some(CLIENT_CPU);
    println!(
        "== connections: wrk -t1 -c{CONNECTIONS} -d{}s, {} rounds; {}",
        args.seconds,
        args.rounds,
        match pin {
            Pin::Split => format!("wrk on CPU {CLIENT_CPU}, every nginx and HAProxy on CPU {SERVER_CPU}"),
            Pin::None => format!("no CPU pinning ({cpus} CPUs)"),
        }
    );
    // A short warm-up of every path (neighbour entries, flow table, page cache).
    for &route in &args.routes {
        wrk(&topo.client.ns, &url(target(route)), Mode::KeepAlive, 1, client_cpu);
    }

    // results[mode][path] = one value per round
    let mut results = vec![vec![Vec::new(); Route::ALL.len()]; Mode::ALL.len()];
    // costs[mode][path] = CPU time of wrk, the servers and ksoftirqd (with the kernel work done
    // in their context: the whole network path) per request, µs, one value per round
    let mut costs = results.clone();
    let mut errors = 0u64;
    for round in 0..args.rounds {
        for (m, mode) in Mode::ALL.iter().enumerate().filter(|(_, m)| args.modes.contains(m)) {
            for k in 0..args.routes.len() {
                let path = args.routes[(k + round) % args.routes.len()];
                let p = path.index();
                let cpu0 = cpu_times();
                let servers0 = servers_cpu(&servers) + threads_cpu(&softirqd);
                let r = wrk(&topo.client.ns, &url(target(path)), *mode, args.seconds, client_cpu);
                let cpu = cpu_use(&cpu0, &cpu_times());
                let ours = r.cpu + (servers_cpu(&servers) + threads_cpu(&softirqd) - servers0);
                let per_request = ours / r.requests.max(1) as f64 * 1e6;
                errors += r.errors;
                println!(
                    "round {} {:22} {:24} {:>7.0} {} ({} requests, {} errors; latency {}; \
                     wrk + servers + ksoftirqd {:.2} CPU-s = {per_request:.1} us a request; CPUs busy {cpu})",
                    round + 1,
                    mode.name(),
                    path.name(),
                    r.rate,
                    mode.unit(),
                    r.requests,
                    r.errors,
                    r.latency,
                    ours,
                );
                results[m][p].push(r.rate);
                costs[m][p].push(per_request);
            }
        }
    }
    println!("the balancer's counters after all runs (lbctl stats):");
    println!("{}", lbd.lbctl_ok(&["stats"]).trim_end());

    for (m, mode) in Mode::ALL.iter().enumerate() {
        let cost: Vec<f64> = costs[m].iter_mut().map(|v| median(v)).collect();
        let med: Vec<f64> = results[m].iter_mut().map(|v| median(v)).collect();
        let direct_rate = med[0];
        for (p, path) in Route::ALL.iter().enumerate() {
            if results[m][p].is_empty() {
                continue;
            }
            // NaN without a direct run (--routes without direct): no ratio, no verdict.
            let ratio = med[p] / direct_rate;
            let (target, status) = match path {
                Route::Direct => ("", "-"),
                Route::Hop => ("(the floor: any balancer's extra hop)", "-"),
                _ if ratio.is_nan() => ("", "-"),
                Route::Vip1 | Route::Vip3 => {
                    ("≥ 0.95 × direct", if ratio >= VIP_TARGET { "ok" } else { "MISS" })
                }
                Route::Haproxy => ("≈ 0.6 × direct (reference)", "-"),
            };
            let spread = {
                let v = &results[m][p];
                let (lo, hi) =
                    (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(0.0, f64::max));
                format!("{lo:.0}..{hi:.0}")
            };
            println!(
                "{:22} {:24} median {:>7.0} {} (rounds {spread}), {:.3} × direct; \
                 {:.1} us of CPU a request, {:.2} × direct",
                mode.name(),
                path.name(),
                med[p],
                mode.unit(),
                ratio,
                cost[p],
                cost[p] / cost[0],
            );
            println!(
                "ROW|connections|{}, {}|{:.0}|{}|{}|{target}|{status}",
                mode.name(),
                path.name(),
                med[p],
                mode.unit(),
                if *path == Route::Direct || ratio.is_nan() { String::new() } else { format!("{ratio:.3}") }
            );
            println!(
                "ROW|connections|{}, {}, CPU a request|{:.1}|us|{}||-",
                mode.name(),
                path.name(),
                cost[p],
                if *path == Route::Direct || cost[0].is_nan() {
                    String::new()
                } else {
                    format!("{:.3}", cost[p] / cost[0])
                }
            );
        }
        // The balancer's own share: the same backend behind it and behind the bare hop.
        let (hop, vip1) = (Route::index(Route::Hop), Route::index(Route::Vip1));
        if !results[m][hop].is_empty() && !results[m][vip1].is_empty() {
            let ratio = med[vip1] / med[hop];
            println!(
                "{:22} VIP (1 backend) / bare XDP hop: {ratio:.3} × the rate, {:.2} × the CPU a request",
                mode.name(),
                cost[vip1] / cost[hop]
            );
            println!(
                "ROW|connections|{}, VIP (1 backend) vs the bare XDP hop|{ratio:.3}|× the hop's rate|||-",
                mode.name()
            );
        }
    }
    if errors > 0 {
        println!("wrk reported {errors} socket errors or non-2xx responses in all");
    }

    // The XDP programs' own cost: one more VIP run per mode with the kernel's BPF run-time
    // statistics on (they stay on only while this process holds the fd; they cost every BPF
    // program two clock reads a run, so the measured rounds above ran without them).
    let balancer = balancer_prog_id(&files.pin_path.join(lb_common::PIN_LAYOUT));
    let decaps: Vec<u32> = topo
        .backends
        .iter()
        .map(|b| xdp_prog_id(&b.ns, "eth0").unwrap_or_else(|| panic!("no decap program on {}", b.port)))
        .collect();
    let stats = args.bpf_stats.then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime));
    match stats {
        None => {}
        Some(Err(e)) => {
            println!("BPF run-time statistics unavailable ({e}): no per-packet cost of the programs")
        }
        Some(Ok(stats_fd)) => {
            for &mode in &args.modes {
                let before = (prog_run(&[balancer]), prog_run(&decaps));
                let r = wrk(&topo.client.ns, &url(target(Route::Vip3)), mode, args.seconds, client_cpu);
                let after = (prog_run(&[balancer]), prog_run(&decaps));
                let (lb_ns, lb_runs) = (after.0 .0 - before.0 .0, after.0 .1 - before.0 .1);
                let (de_ns, de_runs) = (after.1 .0 - before.1 .0, after.1 .1 - before.1 .1);
                let per_packet = lb_ns as f64 / lb_runs.max(1) as f64;
                let packets_per_request = lb_runs as f64 / r.requests.max(1) as f64;
                let per_request_us = lb_ns as f64 / r.requests.max(1) as f64 / 1e3;
                println!(
                    "VIP (3 backends) {} with BPF statistics: {:.0} {}; balancer {per_packet:.0} ns a packet, \
                     {packets_per_request:.1} packets a request: {per_request_us:.2} us a request \
                     ({:.1}% of one CPU); decap on the backends {:.0} ns a packet",
                    mode.name(),
                    r.rate,
                    mode.unit(),
                    lb_ns as f64 / 1e9 / args.seconds as f64 * 100.0,
                    de_ns as f64 / de_runs.max(1) as f64,
                );
                let case = match mode {
                    Mode::KeepAlive => "keep-alive",
                    Mode::Close => "connection per request",
                };
                println!("ROW|connections|balancer XDP program a packet, {case}|{per_packet:.0}|ns|||-");
                println!(
                    "ROW|connections|balancer XDP program a {}, {case}|{per_request_us:.2}|us|||-",
                    if mode == Mode::Close { "connection" } else { "request" }
                );
            }
            drop(stats_fd);
        }
    }
    drop(servers);
    drop(lbd);
}

/// The hop floor (route `hop`): programs first, then the namespace.
struct HopFloor {
    _programs: Datapath,
    _ns: Netns,
}

/// A host `hop` on the bridge, HOP_ADDR on its `eth0`, running `bench_forward` towards the first
/// backend (which has HOP_SERVICE on its `lo`); the client routes HOP_SERVICE through it.
/// Like the lb's, its bridge port has GRO and a pass-through program, so that XDP_TX frames
/// are delivered (see `Topology::attach_lb_port_passthrough`).
fn start_hop_floor(topo: &Topology) -> HopFloor {
    let ns = Netns::new("hop");
    veth((&ns, "eth0"), (&topo.fabric, "hop"));
    topo.fabric.ip(&["link", "set", "hop", "master", "br0"]);
    ethtool(&topo.fabric, &["-K", "hop", "gro", "on"]);
    ns.addr("eth0", &format!("{HOP_ADDR}/24"));
    let b1 = &topo.backends[0];
    b1.ns.addr("lo", &format!("{HOP_SERVICE}/32"));
    topo.client.ns.ip(&["route", "add", &format!("{HOP_SERVICE}/32"), "via", HOP_ADDR, "dev", "eth0"]);

    let mut dp = programs::load(TINY);
    let macs = ForwardMacs { to: parse_mac(&b1.mac), own: parse_mac(&mac_of(&ns, "eth0")) };
    let name = bench_maps::FORWARD;
    let map = dp.raw_mut().map_mut(name).unwrap_or_else(|| panic!("no map {name}"));
    let mut array: Array<&mut MapData, ForwardMacs> = Array::try_from(map).expect(name);
    array.set(0, macs, 0).unwrap_or_else(|e| panic!("setting {name}: {e}"));
    datapath::program(dp.raw_mut(), FORWARD).expect("bench_forward").load().expect("loading bench_forward");
    ns.run(|| dp.attach(FORWARD, "eth0", datapath::Mode::Native))
        .expect("attaching bench_forward on hop eth0");
    topo.fabric
        .run(|| dp.attach(DECAP, "hop", datapath::Mode::Native))
        .expect("attaching a pass-through program on the hop's bridge port");
    HopFloor { _programs: dp, _ns: ns }
}

/// Id of the program on lbd's pinned link of the lb's `eth0`.
fn balancer_prog_id(pins: &Path) -> u32 {
    let path = pins.join("link_eth0");
    let link = PinnedLink::from_pin(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    FdLink::from(link).info().expect("link info").program_id()
}

/// Run time (ns) and runs of the programs `ids`, summed.
fn prog_run(ids: &[u32]) -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .fold((0, 0), |(t, n), p| (t + p.run_time().as_nanos() as u64, n + p.run_count()))
}

/// A `[[vip]]` table: `name` at `vip`:80/tcp, ipip, over `backends`.
fn vip_toml(name: &str, vip: IpAddr, backends: &[IpAddr]) -> String {
    let mut s = format!(
        "[[vip]]\nname = \"{name}\"\naddress = \"{vip}\"\nport = {PORT}\nprotocol = \"tcp\"\nmode = \"ipip\"\n"
    );
    for b in backends {
        s.push_str(&format!("\n  [[vip.backend]]\n  address = \"{b}\"\n"));
    }
    s.push('\n');
    s
}

fn url(target: SocketAddr) -> String {
    format!("http://{}/", target.ip())
}

/// Removes a directory on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command run in `ns`, on `cpu` if given.
fn in_ns(ns: &Netns, cpu: Option<usize>, program: &str) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = ns.command("taskset");
            c.args(["-c", &cpu.to_string(), program]);
            c
        }
        None => ns.command(program),
    }
}

/// A server process and its log (stdout and stderr).
struct Server {
    name: String,
    log: PathBuf,
    process: Running,
}

/// One nginx process (no master) in `ns`, serving `ok` on port 80 of `addrs`, files in `dir`.
fn start_nginx(ns: &Netns, dir: &Path, addrs: &[IpAddr], cpu: Option<usize>) -> Server {
    std::fs::create_dir_all(dir.join("logs")).expect("nginx dir");
    let d = dir.display();
    let listen: String = addrs.iter().map(|a| format!("    listen {a}:{PORT} backlog=4096;\n")).collect();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
         events {{\n  worker_connections 8192;\n  multi_accept on;\n}}\n\
         http {{\n  access_log off;\n  default_type text/plain;\n  keepalive_requests 10000000;\n  keepalive_timeout 60s;\n\
         \x20 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
         \x20 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         \x20 server {{\n{listen}    location / {{\n      return 200 \"ok\\n\";\n    }}\n  }}\n}}\n"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let log_path = dir.join("stderr.log");
    let log = std::fs::File::create(&log_path).expect("nginx log");
    let process = Running::spawn(
        in_ns(ns, cpu, "nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log),
    );
    Server { name: format!("nginx in {}", ns.name()), log: log_path, process }
}

/// HAProxy (one process, one thread) in TCP mode in `ns` on HAPROXY_ADDR:80, round robin.
fn start_haproxy(ns: &Netns, dir: &Path, backends: &[IpAddr], cpu: Option<usize>) -> Server {
    let servers: String =
        backends.iter().enumerate().map(|(i, b)| format!("  server b{} {b}:{PORT}\n", i + 1)).collect();
    let conf = format!(
        "global\n  maxconn 8192\n  nbthread 1\n\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\n\
         frontend fe\n  bind {HAPROXY_ADDR}:{PORT}\n  default_backend be\n\n\
         backend be\n  balance roundrobin\n{servers}"
    );
    let conf_path = dir.join("haproxy.cfg");
    std::fs::write(&conf_path, conf).expect("haproxy.cfg");
    let log_path = dir.join("haproxy.log");
    let log = std::fs::File::create(&log_path).expect("haproxy log");
    let process = Running::spawn(
        in_ns(ns, cpu, "haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log),
    );
    Server { name: format!("haproxy in {}", ns.name()), log: log_path, process }
}

/// Waits (at most 10 s) until an HTTP request to `target` from `ns` is answered; panics with the
/// servers' exit status if one died.
fn wait_for_http(ns: &Netns, target: SocketAddr, servers: &mut [Server]) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        if lb_tests::bins::stop_requested() {
            panic!("interrupted");
        }
        for s in servers.iter_mut() {
            if let Ok(Some(status)) = s.process.child.try_wait() {
                let log = std::fs::read_to_string(&s.log).unwrap_or_default();
                panic!("{} exited ({status}) before answering:\n{log}", s.name);
            }
        }
        let answer = ns.run(|| -> std::io::Result<String> {
            let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
            c.set_read_timeout(Some(Duration::from_secs(1)))?;
            c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut s = String::new();
            c.read_to_string(&mut s)?;
            Ok(s)
        });
        match answer {
            Ok(s) if s.starts_with("HTTP/1.1 200") => return,
            Ok(s) => last = format!("answer {s:?}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{target} does not answer HTTP within 10 s: {last}");
}

struct WrkResult {
    rate: f64,
    requests: u64,
    errors: u64,
    /// "p50 … p99 … max …" as wrk prints them.
    latency: String,
    /// wrk's CPU time (user + system, with the kernel work done in its context), seconds.
    cpu: f64,
}

/// One wrk run from `ns`; killed if it runs 15 s past its duration.
fn wrk(ns: &Netns, url: &str, mode: Mode, seconds: u64, cpu: Option<usize>) -> WrkResult {
    let mut cmd = in_ns(ns, cpu, "wrk");
    cmd.args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{seconds}s"), "--timeout", "2s", "--latency"]);
    if mode == Mode::Close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(url).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Running::spawn(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(seconds + 15);
    let pid = child.child.id() as libc::pid_t;
    // Reaped here with wait4 for its resource use (Running's drop then finds nothing to do).
    let cpu = loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: our own child's pid, valid pointers.
        match unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) } {
            n if n == pid => {
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                break secs(usage.ru_utime) + secs(usage.ru_stime);
            }
            0 if lb_tests::bins::stop_requested() => panic!("interrupted"),
            0 if Instant::now() > deadline => panic!("wrk {url} ran past {seconds} + 15 s"),
            0 => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("waiting for wrk: {}", std::io::Error::last_os_error()),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    if let Some(mut s) = child.child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let rate = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("wrk {url}: no Requests/sec in its output:\n{out}{err}"));
    let requests = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    // "Socket errors: connect 0, read 0, write 0, timeout 0" and "Non-2xx or 3xx responses: N".
    let mut errors = 0;
    for l in out.lines().map(str::trim) {
        if let Some(rest) = l.strip_prefix("Socket errors:") {
            errors +=
                rest.split(',').filter_map(|f| f.split_whitespace().nth(1)?.parse::<u64>().ok()).sum::<u64>();
        }
        if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    let percentile = |p: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| "?".into())
    };
    // "    Latency   1.23ms  456.00us  12.34ms   90.00%": avg, stdev, max, within one stdev.
    let max = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Latency ").and_then(|v| v.split_whitespace().nth(2)))
        .unwrap_or("?");
    let latency = format!("p50 {} p99 {} max {max}", percentile("50%"), percentile("99%"));
    WrkResult { rate, requests, errors, latency, cpu }
}

/// The kernel's softirq threads (`ksoftirqd/N`): network work deferred to them is part of what
/// a run costs (they also run other softirq work of the machine, little beside ours).
fn softirq_threads() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

fn threads_cpu(pids: &[u32]) -> f64 {
    pids.iter().map(|&pid| process_cpu(pid)).sum()
}

/// CPU time (user + system) of every server process so far, seconds.
fn servers_cpu(servers: &[Server]) -> f64 {
    servers.iter().map(|s| process_cpu(s.process.child.id())).sum()
}

/// CPU time of a running process from /proc/<pid>/stat (utime and stime, in clock ticks).
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses; utime and stime
    // are fields 14 and 15 of the line, 12 and 13 after it.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let field = |i: usize| after.split_whitespace().nth(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (field(11) + field(12)) as f64 / hz
}

/// Per CPU: (busy, total) jiffies from /proc/stat.
fn cpu_times() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
            let total: u64 = f.iter().take(8).sum();
            let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// "CPU0 97%, CPU1 64%" between two snapshots.
fn cpu_use(before: &[(u64, u64)], after: &[(u64, u64)]) -> String {
    before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(i, (b, a))| {
            let total = a.1.saturating_sub(b.1).max(1);
            format!("CPU{i} {:.0}%", a.0.saturating_sub(b.0) as f64 * 100.0 / total as f64)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The median, NaN for no values (printed as such in the table).
fn median(v: &mut [f64]) -> f64 {
    lb_bench::stats::median(v).unwrap_or(f64::NAN)
}
