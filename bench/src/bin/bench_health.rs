//! Benchmark of the health prober: N TCP targets (default 10,000) on loopback, probed every
//! second; reports probes per second, failures and the prober thread's CPU.
//!
//! ```sh
//! cargo run --release -p lb-bench --bin bench_health [-- --targets N --seconds S]
//! ```
//!
//! Targets are 127.0.x.y (all of 127/8 is loopback), all on one port of one listener bound to
//! 0.0.0.0 (which accepts for every 127.x address) on a thread of its own that accepts and
//! closes. The prober runs on its own thread (`Prober::on_own_thread`), whose CPU time is read
//! from `/proc/self/task/<tid>/stat`. Probes end with an RST (see `lb_userspace::health`), so
//! 10,000 connections a second leave no TIME_WAIT and the ephemeral ports never run out.
//!
//! On loopback the kernel receives each packet on the sending thread, so the backend's side of
//! every handshake and reset would be charged to the prober. As root, the bench therefore runs
//! in a network namespace of its own (nothing leaves it) whose `lo` hands received packets to
//! CPU 1 (RPS), with the prober pinned to CPU 0 and the listener to CPU 1: the prober pays for
//! its own sockets, sends, timers and wake-ups. It then measures again with RPS off, everything
//! on the prober's thread, as an upper bound. Without root it measures only the latter.
//!
//! Exits 1 if fewer than 90% of the expected probes ran.
use std::{
    net::{IpAddr, Ipv4Addr, TcpListener},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_tests::netns::{self, Netns};
use lb_userspace::health::{CheckKind, CheckSpec, Prober, Target};

const INTERVAL: Duration = Duration::from_secs(1);
/// Targets per third octet: 127.0.x.1 to 127.0.x.254.
const PER_OCTET: usize = 254;
const MAX_TARGETS: usize = PER_OCTET * PER_OCTET;
/// Accept queue: room for a burst while the accepting thread is descheduled.
const BACKLOG: i32 = 4096;
const PROBER_CPU: usize = 0;
const RECEIVE_CPU: usize = 1;
const TARGET_CPU_PERCENT: f64 = 25.0;

struct Args {
    targets: usize,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args { targets: 10_000, seconds: 10 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--targets", Some(n)) if (1..=MAX_TARGETS as u64).contains(&n) => a.targets = n as usize,
            ("--seconds", Some(n)) if (1..=600).contains(&n) => a.seconds = n,
            _ => {
                eprintln!("usage: bench_health [--targets 1-{MAX_TARGETS}] [--seconds 1-600]");
                std::process::exit(2);
            }
        }
    }
    a
}

struct Measured {
    rate: f64,
    failures: u64,
    cpu_percent: f64,
}

/// A result line for `cargo xtask bench`'s table (`ROW|section|case|value|unit|ratio|target|status`).
fn row(case: &str, m: &Measured, has_target: bool) {
    let (target, status) = if has_target {
        ("< 25% of a core", if m.cpu_percent < TARGET_CPU_PERCENT { "ok" } else { "MISS" })
    } else {
        ("", "-")
    };
    println!("ROW|health|{case}, 10k backends a second|{:.1}|% of a core||{target}|{status}", m.cpu_percent);
    println!("ROW|health|probes a second, {case}|{:.0}|probes/s|||-", m.rate);
}

fn main() {
    let args = args();
    raise_fd_limit(65_536);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    let own_ns = (root && cpus > RECEIVE_CPU).then(|| {
        let ns = Netns::new("bench-health");
        // Threads started from now on (listener, prober) inherit the namespace.
        ns.enter_current_thread();
        ns
    });

    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("binding the listener");
    let port = listener.local_addr().expect("listener address").port();
    // SAFETY: a valid listening socket; listening again only raises its backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) }, 0, "listen");
    let stop = Arc::new(AtomicBool::new(false));
    // Bounded even if never stopped: the whole run takes 2 × seconds + 4 s.
    let limit = Duration::from_secs(2 * args.seconds + 60);
    let acceptor = spawn_pinned(own_ns.as_ref().map(|_| RECEIVE_CPU), {
        let stop = stop.clone();
        move || accept_loop(listener, &stop, limit)
    });

    let targets: Vec<Target> = (0..args.targets)
        .map(|i| {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, (1 + i / PER_OCTET) as u8, (1 + i % PER_OCTET) as u8));
            Target {
                key: ("bench".into(), ip),
                addr: ip,
                spec: CheckSpec { kind: CheckKind::Tcp, port, interval: INTERVAL, ..CheckSpec::default() },
            }
        })
        .collect();
    // The prober's thread inherits the CPU set of the thread that starts it.
    if own_ns.is_some() {
        set_affinity(Some(PROBER_CPU));
    }
    let (mut prober, mut events) = Prober::on_own_thread().expect("starting the prober thread");
    set_affinity(None);
    prober.set_targets(targets).expect("valid checks");

    let expected = args.targets as f64 / INTERVAL.as_secs_f64();
    let line = |m: &Measured| {
        let per_probe = m.cpu_percent * 1e4 / m.rate.max(1.0);
        format!(
            "{:.0} probes/s, {} failures, CPU {:.1}% of one core ({per_probe:.1} µs a probe)",
            m.rate, m.failures, m.cpu_percent
        )
    };
    // Every target's first probe fires within one interval (its jitter): measure after that.
    std::thread::sleep(INTERVAL + Duration::from_secs(1));
    let mut all = Vec::new();
    if let Some(ns) = &own_ns {
        set_rps(ns, 1 << RECEIVE_CPU);
        std::thread::sleep(Duration::from_secs(1));
        let own = measure(&prober, args.seconds);
        println!(
            "health prober: {} targets, {} s interval: {}{}",
            args.targets,
            INTERVAL.as_secs(),
            line(&own),
            if own.cpu_percent < TARGET_CPU_PERCENT { " (target < 25%)" } else { " (target < 25%: ABOVE)" }
        );
        println!("  the prober's own work: loopback receive (both ends' TCP) on CPU {RECEIVE_CPU} by RPS, prober on CPU {PROBER_CPU}");
        row("prober CPU, own work", &own, true);
        set_rps(ns, 0);
        std::thread::sleep(Duration::from_secs(1));
        all.push(own);
    }
    let inline = measure(&prober, args.seconds);
    if own_ns.is_some() {
        println!(
            "  with the backends' side of every handshake on the prober's thread too (RPS off): {}",
            line(&inline)
        );
    } else {
        println!(
            "health prober: {} targets, {} s interval: {} (target < 25%), the backends' side of every handshake included",
            args.targets,
            INTERVAL.as_secs(),
            line(&inline)
        );
        println!("  (as root, the bench also measures the prober's own work without it)");
    }
    row("prober CPU, backends' side of each handshake included", &inline, own_ns.is_none());
    all.push(inline);

    let mut transitions = 0;
    while events.try_recv().is_ok() {
        transitions += 1;
    }
    println!("  {transitions} state changes");
    drop(prober);
    stop.store(true, Ordering::Relaxed);
    let _ = acceptor.join();
    drop(own_ns);
    if let Some(slow) = all.iter().find(|m| m.rate < 0.9 * expected) {
        eprintln!("bench_health: {:.0} probes/s is below 90% of the expected {expected:.0}/s", slow.rate);
        std::process::exit(1);
    }
}

/// Probes per second, failures and the prober thread's CPU over `seconds`.
fn measure(prober: &Prober, seconds: u64) -> Measured {
    let (checks0, failures0) = totals(prober);
    let cpu0 = prober.cpu_time().expect("the prober thread's CPU time");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let (checks1, failures1) = totals(prober);
    let cpu1 = prober.cpu_time().expect("the prober thread's CPU time");
    let wall = t0.elapsed().as_secs_f64();
    Measured {
        rate: (checks1 - checks0) as f64 / wall,
        failures: failures1 - failures0,
        cpu_percent: (cpu1 - cpu0).as_secs_f64() / wall * 100.0,
    }
}

/// Probes and failures so far, over all targets.
fn totals(prober: &Prober) -> (u64, u64) {
    prober.status().iter().fold((0, 0), |(c, f), (_, s)| (c + s.checks, f + s.failures))
}

/// Accepts and closes connections until `stop` or `limit`.
fn accept_loop(listener: TcpListener, stop: &AtomicBool, limit: Duration) {
    // accept() returns every 100 ms at the latest, to see `stop`.
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: a valid socket and a timeval of the size given.
    let set = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVTIMEO");
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        // Errors: the 100 ms timeout, or a connection reset before it was accepted.
        if let Ok((conn, _)) = listener.accept() {
            drop(conn);
        }
    }
}

fn spawn_pinned(cpu: Option<usize>, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::spawn(move || {
        set_affinity(cpu);
        f()
    })
}

/// Pins the calling thread to `cpu`, or lets it run anywhere.
fn set_affinity(cpu: Option<usize>) {
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for c in 0..cpus {
            if cpu.is_none_or(|only| only == c) {
                libc::CPU_SET(c, &mut set);
            }
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Which CPUs receive the namespace's loopback packets (a bit mask; 0: the sending CPU).
fn set_rps(ns: &Netns, mask: u32) {
    // `ip netns exec` mounts the namespace's own /sys.
    let write = format!("echo {mask:x} > /sys/class/net/lo/queues/rx-0/rps_cpus");
    netns::run(ns.command("sh").args(["-c", &write]));
}

fn raise_fd_limit(wanted: libc::rlim_t) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit to fill, then valid rlimits to set.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let raised = libc::rlimit { rlim_cur: wanted, rlim_max: wanted.max(limit.rlim_max) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            // Without CAP_SYS_RESOURCE: up to the hard limit.
            let capped = libc::rlimit { rlim_cur: wanted.min(limit.rlim_max), rlim_max: limit.rlim_max };
            libc::setrlimit(libc::RLIMIT_NOFILE, &capped);
        }
    }
}
