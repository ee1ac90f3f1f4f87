//! Control-plane and memory benchmark (benchmarks 4 and 5 of the benchmark issue):
//!
//! - `maglev`: Maglev table build time, equal weights, for 10 and 100 backends at 65537 slots and
//!   1000 backends at 131071 slots (median of up to 200 builds or 3 s per case; criterion has the
//!   same cases: `cargo bench -p lb-userspace --bench maglev`). Target: 1000 backends < 10 ms.
//! - `moves`: the ring slots that move when one of N backends is drained and when it is removed
//!   from the configuration, in units of 1/N of the ring, for N = 10, 128 and 1000, computed with
//!   the agent's own ring function (`agent::reconcile::ring`). Target: a drain moves exactly the
//!   drained backend's slots (1/N).
//! - `add`: lbd in a namespace (the standard topology, one backend host) with a VIP of 10
//!   backends; 20 times, `lbctl backend add` of one more backend, timed from just before lbctl
//!   starts until the ring slot that lbd writes last for that change (slots are written in
//!   ascending order, each one store; which slot is last follows from the Maglev tables before
//!   and after, computed here) holds its new value in the pinned RINGS map, polled every
//!   0.1 ms. Every changed slot is then checked against the predicted table with the ids from
//!   lbd's saved state. Target: median and max under 50 ms.
//! - `memory`: kernel memory per flow-table entry, per VIP and per backend at the default map
//!   sizes (`Datapath::load()`), from each map's own accounting (`memlock:` in
//!   `/proc/self/fdinfo/<map fd>`) divided by its entries.
//!
//! ```sh
//! cargo build --release -p lb-userspace     # lbd and lbctl, next to this binary
//! sudo target/release/bench_control [maglev] [moves] [add] [memory]   # default: all
//! ```
//!
//! Prints human lines and, per result, a line
//! `ROW|<section>|<case>|<value>|<unit>|<ratio>|<target>|<ok|MISS|->` for `cargo xtask bench`.
//! `add` and `memory` need root (namespaces, BPF maps); everything they create is removed on
//! exit, also on panic.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd, AsRawFd},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use lb_common::{limits, map_names};
use lb_tests::{
    bins,
    lbd::LbdFiles,
    topology::{vip, Family, Topology},
};
use lb_userspace::{
    agent::{
        reconcile::{self, Ids},
        SavedState,
    },
    config::{Backend, ForwardMode, HashMode, Protocol, Vip},
    datapath,
    maglev::{self, Member},
};

/// Build-time cases: (backends, slots).
const BUILD_CASES: [(usize, u32); 3] = [(10, 65_537), (100, 65_537), (1000, 131_071)];
const BUILD_TARGET_MS: f64 = 10.0;
const BUILD_MAX_RUNS: usize = 200;
const BUILD_MAX_TIME: Duration = Duration::from_secs(3);
/// Slots-moved cases: (backends, slots).
const MOVE_CASES: [(usize, u32); 3] = [(10, 65_537), (128, 65_537), (1000, 131_071)];
/// Backends drained (and removed) one at a time per case, spread over the list.
const MOVE_SAMPLES: usize = 10;
/// Backends of the VIP before the first add, and adds.
const ADD_BASE: usize = 10;
const ADDS: usize = 20;
const ADD_TARGET_MS: f64 = 50.0;
/// Longest wait for one add to show in the map.
const ADD_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_micros(100);
const WEIGHT: u32 = 100;
const VIP_NAME: &str = "web";

fn main() {
    let all = ["maglev", "moves", "add", "memory"];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(bad) = args.iter().find(|a| !all.contains(&a.as_str())) {
        eprintln!(
            "bench_control: unknown part {bad:?}; usage: bench_control [maglev] [moves] [add] [memory]"
        );
        std::process::exit(2);
    }
    let wanted = |part: &str| args.is_empty() || args.iter().any(|a| a == part);
    if wanted("maglev") {
        maglev_build();
    }
    if wanted("moves") {
        slots_moved();
    }
    if wanted("add") {
        lb_tests::bins::stop_on_signals();
        add_to_live();
    }
    if wanted("memory") {
        memory();
    }
}

/// One result line for `cargo xtask bench`.
fn row(section: &str, case: &str, value: String, unit: &str, ratio: Option<f64>, target: &str, status: &str) {
    let ratio = ratio.map(|r| format!("{r:.3}")).unwrap_or_default();
    println!("ROW|{section}|{case}|{value}|{unit}|{ratio}|{target}|{status}");
}

fn ok(met: bool) -> &'static str {
    if met {
        "ok"
    } else {
        "MISS"
    }
}

/// The median, NaN for no values (printed as such in the table).
fn median(v: &mut [f64]) -> f64 {
    lb_bench::stats::median(v).unwrap_or(f64::NAN)
}

/// Backend `i` of a synthetic pool: 198.18.(16 + i / 256).(i % 256).
fn backend_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 16 + (i / 256) as u8, (i % 256) as u8))
}

fn members(n: usize) -> Vec<Member> {
    (0..n).map(|i| Member::new(backend_addr(i), i as u32 + 1, WEIGHT)).collect()
}

// ------------------------------------------------------------------------------------------
// Maglev build time
// ------------------------------------------------------------------------------------------

fn maglev_build() {
    println!("== Maglev table build (release, equal weights; median of up to {BUILD_MAX_RUNS} builds or {BUILD_MAX_TIME:?})");
    for (n, size) in BUILD_CASES {
        let m = members(n);
        // Warm-up (page faults of the first table, caches).
        std::hint::black_box(maglev::build(&m, size));
        let mut times = Vec::new();
        let started = Instant::now();
        while times.len() < BUILD_MAX_RUNS && (times.len() < 5 || started.elapsed() < BUILD_MAX_TIME) {
            let t = Instant::now();
            std::hint::black_box(maglev::build(std::hint::black_box(&m), size));
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let runs = times.len();
        let max = times.iter().copied().fold(0.0, f64::max);
        let med = median(&mut times);
        let min = times[0];
        // The drained variant the agent computes (two tables and a merge).
        let down = m[n / 2].id;
        let t = Instant::now();
        std::hint::black_box(maglev::build_available(&m, &|id| id != down, size));
        let drained = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "maglev build: {n} backends, {size} slots: median {med:.2} ms (min {min:.2}, max {max:.2}, {runs} runs); \
             with one drained (build_available) {drained:.2} ms"
        );
        let case = format!("maglev build, {n} backends, {size} slots");
        if n == 1000 {
            row("control", &case, format!("{med:.2}"), "ms", None, "< 10 ms", ok(med < BUILD_TARGET_MS));
        } else {
            row("control", &case, format!("{med:.2}"), "ms", None, "", "-");
        }
    }
}

// ------------------------------------------------------------------------------------------
// Slots moved on drain and on removal
// ------------------------------------------------------------------------------------------

/// A VIP of `n` backends as the agent holds it, with ids 1..=n as the agent hands them out.
fn pool(n: usize, size: u32) -> (Vip, Ids) {
    let vip = Vip {
        name: VIP_NAME.into(),
        address: vip(Family::V4, 1),
        port: 80,
        protocol: Protocol::Tcp,
        mode: ForwardMode::Ipip,
        hash: HashMode::FiveTuple,
        scheduler: Default::default(),
        ring_size: size,
        health: None,
        all_down: Default::default(),
        on_down: Default::default(),
        announce: Default::default(),
        backends: (0..n)
            .map(|i| Backend { address: backend_addr(i), weight: WEIGHT, drained: false, health: None })
            .collect(),
        allow: Vec::new(),
        deny: Vec::new(),
        limits: None,
    };
    let mut ids = Ids { next_backend: n as u32 + 1, ..Ids::default() };
    ids.vips.insert(VIP_NAME.into(), 0);
    ids.backends.insert(VIP_NAME.into(), (0..n).map(|i| (backend_addr(i), i as u32 + 1)).collect());
    (vip, ids)
}

fn slots_moved() {
    println!("== Ring slots moved by one backend change (agent ring function), in units of 1/N of the ring");
    for (n, size) in MOVE_CASES {
        let (vip, ids) = pool(n, size);
        let full = reconcile::ring(&vip, &ids, &Default::default());
        let per_backend = size as f64 / n as f64;
        let samples: Vec<usize> = (0..MOVE_SAMPLES.min(n)).map(|k| k * n / MOVE_SAMPLES.min(n)).collect();
        let (mut drain_units, mut remove_units) = (Vec::new(), Vec::new());
        let mut drain_exact = true;
        let mut remove_excess_max = 0usize;
        for &k in &samples {
            let id = k as u32 + 1;
            let own = full.iter().filter(|&&s| s == id).count();
            let mut drained = vip.clone();
            drained.backends[k].drained = true;
            let moved = maglev::slots_moved(&full, &reconcile::ring(&drained, &ids, &Default::default()));
            drain_exact &= moved == own;
            drain_units.push(moved as f64 / per_backend);

            let mut removed = vip.clone();
            removed.backends.remove(k);
            let mut removed_ids = ids.clone();
            removed_ids.backends.get_mut(VIP_NAME).expect("pool").remove(&backend_addr(k));
            let moved =
                maglev::slots_moved(&full, &reconcile::ring(&removed, &removed_ids, &Default::default()));
            remove_excess_max = remove_excess_max.max(moved.saturating_sub(own));
            remove_units.push(moved as f64 / per_backend);
        }
        let (drain_max, remove_max) = (
            drain_units.iter().copied().fold(0.0, f64::max),
            remove_units.iter().copied().fold(0.0, f64::max),
        );
        let (drain, remove) = (median(&mut drain_units), median(&mut remove_units));
        println!(
            "N = {n} ({size} slots, {per_backend:.1} a backend), {} backends tried one at a time: \
             drain moves {drain:.4}/N median (max {drain_max:.4}/N), {}; \
             removal moves {remove:.4}/N median (max {remove_max:.4}/N, at most {remove_excess_max} slots beyond its own)",
            samples.len(),
            if drain_exact { "exactly the drained backend's own slots every time" } else { "MORE than its own slots" },
        );
        row(
            "control",
            &format!("slots moved by a drain, N = {n}"),
            format!("{drain:.4}"),
            "1/N",
            None,
            "= 1/N (own slots only)",
            ok(drain_exact),
        );
        row(
            "control",
            &format!("slots moved by a removal, N = {n}"),
            format!("{remove:.4}"),
            "1/N",
            None,
            "",
            "-",
        );
    }
}

// ------------------------------------------------------------------------------------------
// lbctl backend add -> ring live
// ------------------------------------------------------------------------------------------

fn vip_toml(backends: &[IpAddr]) -> String {
    let mut s = format!(
        "[[vip]]\nname = {VIP_NAME:?}\naddress = \"{}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"ipip\"\n",
        vip(Family::V4, 1)
    );
    for b in backends {
        s.push_str(&format!("\n  [[vip.backend]]\n  address = \"{b}\"\n  weight = {WEIGHT}\n"));
    }
    s
}

/// The Maglev table over `addrs` with ids = positions + 1 (the layout is the agent's: it depends
/// on the addresses and weights only).
fn table(addrs: &[IpAddr], size: u32) -> Vec<u32> {
    let m: Vec<Member> =
        addrs.iter().enumerate().map(|(i, &a)| Member::new(a, i as u32 + 1, WEIGHT)).collect();
    maglev::build(&m, size)
}

fn add_to_live() {
    lb_tests::privilege::require_root();
    println!(
        "== lbctl backend add -> ring live in RINGS ({ADD_BASE} backends, then {ADDS} adds, one at a time)"
    );
    let size = limits::RING_SIZE;
    // Dropped in reverse: lbd, its files (pins), the namespaces.
    let topo = Topology::new(1);
    let files = LbdFiles::new();
    let mut addrs: Vec<IpAddr> = (0..ADD_BASE).map(backend_addr).collect();
    let lbd = topo.start_lbd(&files, &vip_toml(&addrs));
    let socket = files.socket();
    let state = files.dir.join("state.json");
    let rings_pin = files.pin_path.join(lb_common::PIN_LAYOUT).join(map_names::RINGS);
    let rings: Array<MapData, u32> = Array::try_from(Map::Array(
        MapData::from_pin(&rings_pin).unwrap_or_else(|e| panic!("open {}: {e}", rings_pin.display())),
    ))
    .expect("RINGS is an array");
    let saved_ids = || -> BTreeMap<IpAddr, u32> {
        let s = SavedState::read(&state).expect("lbd's saved state").expect("lbd saved its state");
        s.ids.backends.get(VIP_NAME).cloned().unwrap_or_default()
    };
    let offset = {
        let s = SavedState::read(&state).expect("lbd's saved state").expect("lbd saved its state");
        s.ids.vips[VIP_NAME] * size
    };
    let read = |slot: u32| rings.get(&(offset + slot), 0).expect("read RINGS");

    let mut live_ms = Vec::new();
    let mut exit_ms = Vec::new();
    let mut old = table(&addrs, size);
    for k in 0..ADDS {
        let added = IpAddr::V4(Ipv4Addr::new(198, 18, 32, k as u8 + 1));
        let mut next_addrs = addrs.clone();
        next_addrs.push(added);
        let new = table(&next_addrs, size);
        let changed: Vec<u32> = (0..size).filter(|&i| old[i as usize] != new[i as usize]).collect();
        let last = *changed.last().expect("adding a backend changes the ring");
        let before = read(last);
        let added_s = added.to_string();
        let t0 = Instant::now();
        let mut lbctl = Command::new(bins::path("lbctl"))
            .arg("--socket")
            .arg(&socket)
            .args(["backend", "add", VIP_NAME, &added_s])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run lbctl");
        let mut live = None;
        let mut exited = None;
        while t0.elapsed() < ADD_TIMEOUT && (live.is_none() || exited.is_none()) {
            if lb_tests::bins::stop_requested() {
                let _ = lbctl.kill();
                let _ = lbctl.wait();
                panic!("interrupted");
            }
            if live.is_none() && read(last) != before {
                live = Some(t0.elapsed());
            }
            if exited.is_none() {
                if let Some(status) = lbctl.try_wait().expect("wait for lbctl") {
                    exited = Some((t0.elapsed(), status));
                }
            }
            std::thread::sleep(POLL);
        }
        let Some((exit, status)) = exited else {
            let _ = lbctl.kill();
            let _ = lbctl.wait();
            panic!("lbctl backend add {added} did not finish within {ADD_TIMEOUT:?}");
        };
        let out = lbctl.wait_with_output().expect("lbctl output");
        assert!(
            status.success(),
            "lbctl backend add {added}: {status}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let live = live
            .unwrap_or_else(|| panic!("slot {last} did not change within {ADD_TIMEOUT:?} of adding {added}"));
        // Every changed slot holds the predicted backend (by address -> lbd's id).
        let ids = saved_ids();
        let id_of = |position: u32| ids[&next_addrs[position as usize - 1]];
        let wrong = changed.iter().filter(|&&i| read(i) != id_of(new[i as usize])).count();
        assert_eq!(
            wrong,
            0,
            "{wrong} of {} changed slots do not hold the predicted backend after adding {added}",
            changed.len()
        );
        live_ms.push(live.as_secs_f64() * 1e3);
        exit_ms.push(exit.as_secs_f64() * 1e3);
        println!(
            "add #{:2} ({} -> {} backends, {} slots changed): live in the map after {:.2} ms, lbctl exited after {:.2} ms",
            k + 1,
            addrs.len(),
            next_addrs.len(),
            changed.len(),
            live.as_secs_f64() * 1e3,
            exit.as_secs_f64() * 1e3
        );
        addrs = next_addrs;
        old = new;
    }
    drop(rings);
    drop(lbd);
    drop(files);
    drop(topo);
    let max = live_ms.iter().copied().fold(0.0, f64::max);
    let med = median(&mut live_ms);
    let exit_med = median(&mut exit_ms);
    println!(
        "lbctl backend add -> live: median {med:.2} ms, max {max:.2} ms over {ADDS} adds (lbctl itself returns after {exit_med:.2} ms median)"
    );
    row(
        "control",
        "backend add -> ring live, median",
        format!("{med:.2}"),
        "ms",
        None,
        "< 50 ms",
        ok(med < ADD_TARGET_MS),
    );
    row(
        "control",
        "backend add -> ring live, max",
        format!("{max:.2}"),
        "ms",
        None,
        "< 50 ms",
        ok(max < ADD_TARGET_MS),
    );
}

// ------------------------------------------------------------------------------------------
// Kernel memory per flow, per VIP, per backend
// ------------------------------------------------------------------------------------------

struct MapMemory {
    memlock: u64,
    max_entries: u64,
    value_size: u64,
}

fn fdinfo(fd: i32) -> MapMemory {
    let path = format!("/proc/self/fdinfo/{fd}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let field = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().parse().expect("a number")))
            .unwrap_or_else(|| panic!("no {key} in {path}:\n{text}"))
    };
    MapMemory {
        memlock: field("memlock:"),
        max_entries: field("max_entries:"),
        value_size: field("value_size:"),
    }
}

fn memory() {
    lb_tests::privilege::require_root();
    let cpus = datapath::possible_cpus().expect("possible CPUs");
    // lbd's own defaults (`[limits]` unset) on this host.
    let sizes = lb_userspace::config::Limits::default().sizes(cpus);
    let dp =
        datapath::load_with(sizes).unwrap_or_else(|e| panic!("loading the programs at default sizes: {e}"));
    println!(
        "== Kernel memory at default sizes ({} possible CPUs), from each map's memlock accounting",
        cpus
    );
    let mut total = 0;
    let mut by_name = BTreeMap::new();
    for name in map_names::ALL.into_iter().chain(map_names::UNPINNED) {
        let Some(map) = dp.raw().map(name) else { continue };
        let data = match map {
            Map::Array(d)
            | Map::HashMap(d)
            | Map::LruHashMap(d)
            | Map::PerCpuArray(d)
            | Map::PerCpuHashMap(d)
            | Map::DevMapHash(d)
            | Map::PerfEventArray(d) => d,
            _ => continue,
        };
        let m = fdinfo(data.fd().as_fd().as_raw_fd());
        println!(
            "  {name:14} {:>10} entries × {:>4} B value: memlock {:>11} B ({:.1} MiB, {:.1} B an entry)",
            m.max_entries,
            m.value_size,
            m.memlock,
            m.memlock as f64 / (1 << 20) as f64,
            m.memlock as f64 / m.max_entries.max(1) as f64
        );
        total += m.memlock;
        by_name.insert(name, m);
    }
    println!("  total {total} B ({:.1} MiB)", total as f64 / (1 << 20) as f64);
    let per = |name: &str| {
        let m = by_name.get(name).unwrap_or_else(|| panic!("no map {name}"));
        m.memlock as f64 / m.max_entries as f64
    };
    let flow = per(map_names::FLOW_TABLE);
    let rings = &by_name[map_names::RINGS];
    let ring = rings.memlock as f64 / (rings.max_entries as f64 / dp.sizes.ring_stride as f64);
    let vip_entry = per(map_names::VIPS);
    let vip_stats = per(map_names::VIP_STATS);
    // A VIP uses one ring, its (address, port, protocol) entry and an address entry (shared by
    // the VIPs of one address), and one VIP_STATS slot.
    let per_vip = ring + 2.0 * vip_entry + vip_stats;
    let backend = per(map_names::BACKENDS) + per(map_names::BACKEND_STATS);
    let table = &by_name[map_names::FLOW_TABLE];
    let entry_bytes = std::mem::size_of::<lb_common::FlowEntry>() as u64;
    println!(
        "per flow-table entry: {flow:.4} B ({} entries, all CPUs together; all preallocated: {} B \
         an entry and {} B for the map itself)",
        table.max_entries,
        entry_bytes,
        table.memlock.saturating_sub(entry_bytes * table.max_entries)
    );
    println!(
        "per VIP: {per_vip:.0} B = ring of {} slots {ring:.0} B ({:.2} B a slot) + 2 VIPS entries × {vip_entry:.1} B + VIP_STATS {vip_stats:.1} B",
        dp.sizes.ring_stride,
        ring / dp.sizes.ring_stride as f64
    );
    println!("per backend: {backend:.1} B (BACKENDS + BACKEND_STATS entry)");
    // Judged at the precision shown: the map's own few hundred bytes are not a flow's.
    let status = if (flow * 10.0).round() <= 640.0 { "ok" } else { "MISS" };
    row("memory", "kernel memory per flow-table entry", format!("{flow:.1}"), "B", None, "<= 64 B", status);
    row("memory", "kernel memory per VIP (65537-slot ring)", format!("{per_vip:.0}"), "B", None, "", "-");
    row("memory", "kernel memory per backend", format!("{backend:.1}"), "B", None, "", "-");
    row(
        "memory",
        "kernel memory, all maps at default sizes",
        format!("{:.1}", total as f64 / (1 << 20) as f64),
        "MiB",
        None,
        "",
        "-",
    );
}
