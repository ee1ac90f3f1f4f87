//! `cargo xtask demo`: the balancer at work, told as a short story on stdout.
//!
//! Builds the standard topology (`lb_tests::topology`: a client, the lb and four backend hosts in
//! network namespaces on one bridge, each set up by `lbd backend-host`: decap, VIPs on lo),
//! starts lbd in the lb's namespace on `examples/demo.toml` (with only its three paths moved to
//! temporary ones; it names three of the backends), a TCP echo server on the VIP in every
//! backend, and then, with lbctl for everything an operator does: 300 connections and their
//! split over the backends, live stats, a drain that new connections avoid while an open one
//! keeps working, an undrain, the fourth backend added at run time, the teardown. Nothing on the
//! lb is set by hand: lbd turns forwarding on and resolves the backends' next hops itself.
//!
//! It doubles as a smoke test: every step is checked, and a failed one ends the demo with exit
//! status 1 and a message naming it. Everything the demo creates goes on every path (drop guards,
//! also after a panic or Ctrl-C), and the end checks that nothing is left.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_tests::{
    echo::{tcp_connect, tcp_echo, tcp_exchange, EchoServer, Proto},
    lbd::{Lbd, LbdFiles},
    topology::{xdp_prog_id, Topology},
    TEST_PREFIX,
};

/// The config lbd runs with, shipped in the repository.
const CONFIG: &str = "examples/demo.toml";
/// The VIP of the config that the demo sends connections to.
const VIP: &str = "web";
/// Backend hosts; the config names the first CONFIGURED, the last one is added at run time.
const BACKENDS: usize = 4;
const CONFIGURED: usize = 3;
/// Per step (connect, send, receive) of one exchange.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections before the drain, and the share each backend must get of them (a third each, by
/// Maglev; these bounds are about five standard deviations away).
const SPREAD: usize = 300;
const MIN_SHARE: f64 = 0.20;
const MAX_SHARE: f64 = 0.47;
/// After the drain: every TICK one exchange on the open connection and NEW_PER_TICK new
/// connections, DRAIN_TICKS times (2 s, 100 connections).
const TICK: Duration = Duration::from_millis(100);
const DRAIN_TICKS: u32 = 20;
const NEW_PER_TICK: usize = 5;
/// Connections before the drain are made one every SPREAD_PACE (1.5 s in all), after the undrain
/// one every UNDRAIN_PACE (1.2 s), and `lbctl stats` starts sampling LIVE_DELAY after they began
/// (it computes rates over a second), so that its rates show them.
const SPREAD_PACE: Duration = Duration::from_millis(5);
const UNDRAIN_PACE: Duration = Duration::from_millis(12);
const LIVE_DELAY: Duration = Duration::from_millis(100);
/// Connections after the undrain, and the least share the undrained backend must get of them.
const UNDRAIN: usize = 100;
const MIN_SHARE_UNDRAINED: f64 = 0.15;
/// Connections after the fourth backend is added, and the least share it must get of them (a
/// quarter, by Maglev).
const ADDED: usize = 100;
const MIN_SHARE_ADDED: f64 = 0.12;
/// Lines of lbd's log shown when a step fails.
const LOG_TAIL: usize = 30;

type Result<T = ()> = std::result::Result<T, String>;

fn main() {
    let t0 = Instant::now();
    // A signal stops the demo at its next check, and everything is torn down.
    lb_tests::bins::stop_on_signals();
    std::panic::set_hook(Box::new(|info| eprintln!("error: {info}")));
    let mut created = Created::default();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&mut created)));
    // Whatever happened, everything `run` created has been dropped by now: check it is gone.
    let leftovers = created.leftovers();
    if leftovers.is_empty() {
        if !created.namespaces.is_empty() {
            let path = |i: usize| created.paths.get(i).map_or(String::new(), |p| p.display().to_string());
            println!(
                "   removed: the {} namespaces (with every link in them), pin directory {}, directory {}",
                created.namespaces.len(),
                path(0),
                path(1),
            );
        }
    } else {
        eprintln!("error: left behind: {}", leftovers.join(", "));
    }
    let failure = match outcome {
        Ok(Ok(())) if leftovers.is_empty() => None,
        Ok(Ok(())) => Some("the teardown left things behind".to_owned()),
        Ok(Err(e)) => Some(e),
        Err(_) => Some("a step panicked (message above)".to_owned()),
    };
    match failure {
        None => println!("\ndemo passed in {:.1} s", t0.elapsed().as_secs_f64()),
        Some(e) => {
            let e = if lb_tests::bins::stop_requested() { format!("interrupted: {e}") } else { e };
            let step = STEP.lock().unwrap_or_else(|e| e.into_inner()).clone();
            eprintln!("\ndemo FAILED in step \"{step}\" after {:.1} s: {e}", t0.elapsed().as_secs_f64());
            std::process::exit(1);
        }
    }
}

/// Names of what the demo created, to check at the end that it is gone.
#[derive(Default)]
struct Created {
    namespaces: Vec<String>,
    /// The pin directory, the temporary directory.
    paths: Vec<PathBuf>,
}

impl Created {
    fn leftovers(&self) -> Vec<String> {
        let namespaces = self.namespaces.iter().map(|n| Path::new("/run/netns").join(n));
        namespaces
            .chain(self.paths.iter().cloned())
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect()
    }
}

fn run(created: &mut Created) -> Result {
    let config_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(CONFIG);
    let config = std::fs::read_to_string(&config_file)
        .map_err(|e| format!("cannot read the demo's config {}: {e}", config_file.display()))?;

    println!("lb demo: a client, an XDP load balancer run by lbd, and {BACKENDS} backend hosts, each in a network namespace");
    heading("1. Set-up");
    let t = Instant::now();
    // Declared in this order, dropped in the reverse one: echo servers, lbd, XDP programs, pins
    // and temporary files, namespaces.
    let topo = Topology::new(BACKENDS);
    created.namespaces =
        topo.hosts().map(|h| &h.ns).chain([&topo.fabric]).map(|ns| ns.name().to_owned()).collect();
    let files = LbdFiles::new();
    created.paths = vec![files.pin_path.clone(), files.dir.clone()];
    let passthrough = topo.start_lb_port_passthrough();
    let decap = topo.start_backend_hosts();
    std::fs::write(files.config(), own_paths(&config, &files)?)
        .map_err(|e| format!("writing {}: {e}", files.config().display()))?;
    let lbd = Lbd::start_with(&topo.lb.ns, &files, &["--on-exit", "detach"]);
    interrupted()?;
    let prog = xdp_prog_id(&topo.lb.ns, "eth0")
        .ok_or("lbd is up but no XDP program is attached to the lb's eth0")?;

    let vips = lbctl(&lbd, &["vip", "list"])?;
    let service = service_of(&vips)?;
    let backends = lbctl(&lbd, &["backend", "list", VIP])?;
    check_backends(&topo, &backends)?;
    let servers: Vec<EchoServer> =
        topo.backends.iter().map(|b| EchoServer::start(&b.ns, Proto::Tcp, service)).collect();

    println!(
        "   built in {:.1} s: {} hosts, each a network namespace whose eth0 is a port of one bridge (in a",
        t.elapsed().as_secs_f64(),
        created.namespaces.len() - 1,
    );
    println!("   namespace of its own); all named {TEST_PREFIX}{}-*", std::process::id());
    println!("     client  {:<12} routes 198.18.100.0/24 through the lb", topo.client.v4);
    println!("     lb      {:<12} lbd: the balancer (XDP, native) on eth0, prog id {prog}", topo.lb.v4);
    for b in &topo.backends {
        println!(
            "     {:<6}  {:<12} lbd backend-host: VIP on lo, decap (XDP) on eth0; TCP echo server on {service}",
            b.port, b.v4
        );
    }
    println!("   lbd --config {CONFIG} --on-exit detach (pin_path, api_socket, state_file moved to");
    println!("   {} and {}); nothing set on the lb by hand:", files.pin_path.display(), files.dir.display());
    println!("   lbd turned forwarding on and keeps the backends' next hops resolved (NEXT HOP below)");
    show_output(&["vip", "list"], &vips);
    show_output(&["backend", "list", VIP], &backends);

    let story = Story { topo: &topo, lbd: &lbd, servers: &servers, service };
    story.tell().map_err(|e| match interrupted() {
        Ok(()) => format!("{e}\n{}", story.diagnostics(&files)),
        Err(_) => e,
    })?;

    heading("6. Teardown");
    drop(servers);
    let status = lbd.process.terminate();
    if !status.success() {
        return Err(format!("lbd exited with {status} on SIGTERM\n{}", log_tail(&files)));
    }
    if let Some(id) = xdp_prog_id(&topo.lb.ns, "eth0") {
        return Err(format!(
            "lbd --on-exit detach stopped but program {id} is still attached to the lb's eth0"
        ));
    }
    let pins = std::fs::read_dir(&files.pin_path).map(|d| d.count()).unwrap_or(0);
    if pins != 0 {
        return Err(format!(
            "lbd --on-exit detach stopped but left {pins} pins in {}",
            files.pin_path.display()
        ));
    }
    println!(
        "   lbd stopped on SIGTERM ({status}); --on-exit detach: the balancer is detached, its pins removed"
    );
    drop((decap, passthrough, files, topo));
    Ok(())
}

/// The steps with lbd running.
struct Story<'a> {
    topo: &'a Topology,
    lbd: &'a Lbd,
    servers: &'a [EchoServer],
    service: SocketAddr,
}

impl Story<'_> {
    fn tell(&self) -> Result {
        let (topo, service) = (self.topo, self.service);
        heading(&format!("2. {SPREAD} connections to {service}"));
        let t = Instant::now();
        let (spread, live) = self.with_live_stats(|| self.connections(SPREAD, SPREAD_PACE, "spread"))?;
        let counts = self.tally(&spread)?;
        println!(
            "   from the client, each: connect, send, read the echo, close; {:.0} a second, {:.1} s in all",
            1.0 / SPREAD_PACE.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        println!("   served per backend (as the echo servers saw them):");
        self.print_split(&counts, None);
        for (i, n) in counts.iter().enumerate().take(CONFIGURED) {
            let share = *n as f64 / SPREAD as f64;
            if !(MIN_SHARE..=MAX_SHARE).contains(&share) {
                return Err(format!(
                    "{} got {:.0}% of the connections, outside {:.0}%..{:.0}%",
                    topo.backends[i].v4,
                    share * 100.0,
                    MIN_SHARE * 100.0,
                    MAX_SHARE * 100.0
                ));
            }
        }
        println!("   the balancer's own counters, sampled while the connections were made:");
        show_stats(&live, true);

        heading("3. Drain the backend of an open connection");
        let mut open = topo
            .client
            .ns
            .run(|| tcp_connect(service, STEP_TIMEOUT))
            .map_err(|e| format!("opening the long-lived connection: {e}"))?;
        tcp_echo(&mut open, b"hello").map_err(|e| format!("the long-lived connection: {e}"))?;
        let local = open.local_addr().map_err(|e| e.to_string())?;
        let d = self
            .servers
            .iter()
            .position(|s| s.peers().contains(&local))
            .ok_or(format!("no backend recorded the long-lived connection {local}"))?;
        let drained = topo.backends[d].v4.to_string();
        println!(
            "   a long-lived connection {local} -> {service} is served by {drained} ({})",
            topo.backends[d].port
        );
        let new_flows_before = new_flows(&self.lbctl(&["--json", "stats"])?, &drained)?;
        self.show(&["backend", "drain", VIP, &drained])?;
        let drained_at = Instant::now();
        let ((during, exchanges), live) =
            self.with_live_stats(|| topo.client.ns.run(|| self.while_drained(&mut open, drained_at)))?;
        let lasted = drained_at.elapsed();
        let counts = self.tally(&during)?;
        println!(
            "   {} new connections in the {:.1} s after the drain, per backend:",
            during.len(),
            lasted.as_secs_f64()
        );
        self.print_split(&counts, Some(d));
        if counts[d] != 0 {
            return Err(format!("{} new connections reached the drained backend {drained}", counts[d]));
        }
        println!(
            "   open connection: {exchanges} exchanges in {:.1} s after the drain, all answered",
            lasted.as_secs_f64()
        );
        println!("   meanwhile: the drained backend carries the open connection's packets, no new flow");
        show_stats(&live, false);
        self.show(&["backend", "list", VIP])?;
        let new_flows_drained = new_flows(&self.lbctl(&["--json", "stats"])?, &drained)?;
        if new_flows_drained != new_flows_before {
            return Err(format!(
                "lbctl stats counts {} new flows for the drained backend {drained}",
                new_flows_drained.saturating_sub(new_flows_before)
            ));
        }
        println!("   lbctl stats agrees: no new flow for {drained} since the drain");

        heading("4. Undrain it");
        self.show(&["backend", "undrain", VIP, &drained])?;
        let (after, live) = self.with_live_stats(|| self.connections(UNDRAIN, UNDRAIN_PACE, "undrained"))?;
        let counts = self.tally(&after)?;
        println!("   {UNDRAIN} new connections, per backend:");
        self.print_split(&counts, None);
        let share = counts[d] as f64 / UNDRAIN as f64;
        if share < MIN_SHARE_UNDRAINED {
            return Err(format!(
                "after the undrain {drained} got {:.0}% of the new connections (expected a third)",
                share * 100.0
            ));
        }
        tcp_echo(&mut open, b"still there?")
            .map_err(|e| format!("the long-lived connection after the undrain: {e}"))?;
        println!("   the open connection still answers; closing it");
        drop(open);
        let mut all: BTreeSet<SocketAddr> = BTreeSet::from([local]);
        all.extend(spread.iter().chain(&during).chain(&after));
        if all.len() != SPREAD + during.len() + UNDRAIN + 1 {
            return Err("a client address and port was used twice".into());
        }
        let errors: Vec<String> = self.servers.iter().flat_map(EchoServer::errors).collect();
        if !errors.is_empty() {
            return Err(format!("the echo servers met errors: {errors:?}"));
        }
        println!("   stats, sampled while those connections were made:");
        show_stats(&live, false);
        self.add_backend()
    }

    /// The fourth backend host joins at run time: lbd resolves its next hop before the ring
    /// names it, so the first connection it gets is forwarded.
    fn add_backend(&self) -> Result {
        let added = &self.topo.backends[CONFIGURED];
        heading("5. A backend added at run time");
        self.show(&["backend", "add", VIP, &added.v4.to_string()])?;
        let list = self.lbctl(&["backend", "list", VIP])?;
        show_output(&["backend", "list", VIP], &list);
        let row = list.lines().find(|l| l.starts_with(&added.v4.to_string())).unwrap_or("");
        if !row.contains(&added.mac) {
            return Err(format!(
                "lbd shows no resolved next hop ({}) for the new backend:\n{list}",
                added.mac
            ));
        }
        let (after, live) = self.with_live_stats(|| self.connections(ADDED, UNDRAIN_PACE, "added"))?;
        let counts = self.tally(&after)?;
        println!("   {ADDED} new connections, per backend:");
        self.print_split(&counts, None);
        let share = counts[CONFIGURED] as f64 / ADDED as f64;
        if share < MIN_SHARE_ADDED {
            return Err(format!(
                "the added backend got {:.0}% of the new connections (expected a quarter)",
                share * 100.0
            ));
        }
        println!("   final stats, sampled while those connections were made:");
        show_stats(&live, true);
        Ok(())
    }

    /// Runs `traffic` while `lbctl stats` takes its samples (from LIVE_DELAY on), so that its
    /// rates are live ones; returns what both gave.
    fn with_live_stats<T: Send>(&self, traffic: impl FnOnce() -> Result<T> + Send) -> Result<(T, String)> {
        std::thread::scope(|s| {
            let stats = s.spawn(|| {
                std::thread::sleep(LIVE_DELAY);
                self.lbctl(&["stats"])
            });
            let result = traffic();
            let stats = stats.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            Ok((result?, stats?))
        })
    }

    /// `n` connections from the client, one after another, one every `pace`; fails at the first
    /// that fails.
    fn connections(&self, n: usize, pace: Duration, tag: &str) -> Result<Vec<SocketAddr>> {
        self.topo.client.ns.run(|| {
            let start = Instant::now();
            let mut locals = Vec::with_capacity(n);
            for i in 0..n {
                interrupted()?;
                let payload = format!("{tag} #{i}");
                let local = tcp_exchange(self.service, payload.as_bytes(), STEP_TIMEOUT)
                    .map_err(|e| format!("{tag} connection #{i} to {}: {e}", self.service))?;
                locals.push(local);
                std::thread::sleep((start + pace * (i as u32 + 1)).saturating_duration_since(Instant::now()));
            }
            Ok(locals)
        })
    }

    /// In the client's namespace, from the drain on: every TICK an exchange on `open` and
    /// NEW_PER_TICK new connections. Returns the new connections' addresses and the exchanges.
    fn while_drained(
        &self,
        open: &mut std::net::TcpStream,
        since: Instant,
    ) -> Result<(Vec<SocketAddr>, u32)> {
        let mut locals = Vec::new();
        for tick in 0..DRAIN_TICKS {
            interrupted()?;
            tcp_echo(open, format!("open #{tick}").as_bytes()).map_err(|e| {
                format!(
                    "the long-lived connection, exchange #{tick}, {:.2} s after the drain: {e}",
                    since.elapsed().as_secs_f64()
                )
            })?;
            for j in 0..NEW_PER_TICK {
                let payload = format!("drained #{tick}.{j}");
                let local = tcp_exchange(self.service, payload.as_bytes(), STEP_TIMEOUT)
                    .map_err(|e| format!("new connection #{tick}.{j} during the drain: {e}"))?;
                locals.push(local);
            }
            std::thread::sleep((since + TICK * (tick + 1)).saturating_duration_since(Instant::now()));
        }
        Ok((locals, DRAIN_TICKS))
    }

    /// How many of the client sockets `locals` each backend served: each exactly once, by one
    /// backend, which saw the client's own address.
    fn tally(&self, locals: &[SocketAddr]) -> Result<Vec<usize>> {
        let peers: Vec<BTreeSet<SocketAddr>> =
            self.servers.iter().map(|s| s.peers().into_iter().collect()).collect();
        let mut counts = vec![0; peers.len()];
        for local in locals {
            if local.ip() != IpAddr::from(self.topo.client.v4) {
                return Err(format!("a connection from {local}, not from the client's address"));
            }
            let at: Vec<usize> = (0..peers.len()).filter(|&i| peers[i].contains(local)).collect();
            match at[..] {
                [i] => counts[i] += 1,
                _ => {
                    return Err(format!("connection {local} was served by backends {at:?}, not exactly one"))
                }
            }
        }
        Ok(counts)
    }

    fn print_split(&self, counts: &[usize], drained: Option<usize>) {
        let total: usize = counts.iter().sum::<usize>().max(1);
        for (i, n) in counts.iter().enumerate() {
            let b = &self.topo.backends[i];
            let share = 100.0 * *n as f64 / total as f64;
            let bar = "#".repeat((share / 2.5).round() as usize);
            let note = if drained == Some(i) { "  (drained)" } else { "" };
            println!("     {:<12} {:<3} {n:>4}  {share:5.1}%  {bar}{note}", b.v4, b.port);
        }
    }

    fn lbctl(&self, args: &[&str]) -> Result<String> {
        lbctl(self.lbd, args)
    }

    /// Runs lbctl and shows the command and its output.
    fn show(&self, args: &[&str]) -> Result {
        let out = self.lbctl(args)?;
        show_output(args, &out);
        Ok(())
    }

    /// What to look at when a step failed: lbctl stats, the servers, lbd's log.
    fn diagnostics(&self, files: &LbdFiles) -> String {
        let stats = self.lbctl(&["stats"]).unwrap_or_else(|e| e);
        let mut out = format!("lbctl stats:\n{stats}\n");
        for (b, s) in self.topo.backends.iter().zip(self.servers) {
            out += &format!("{} served {} connections, errors {:?}\n", b.v4, s.peers().len(), s.errors());
        }
        out + &log_tail(files)
    }
}

/// The step under way, for the failure message.
static STEP: Mutex<String> = Mutex::new(String::new());

fn heading(title: &str) {
    *STEP.lock().unwrap_or_else(|e| e.into_inner()) = title.to_owned();
    println!("\n{title}");
}

fn show_output(args: &[&str], out: &str) {
    println!("   $ lbctl {}", args.join(" "));
    for line in out.lines() {
        println!("{}", format!("     {line}").trim_end());
    }
}

/// Shows `lbctl stats` output: the VIP table, and with `counters` the global counters that are
/// not 0.
fn show_stats(out: &str, counters: bool) {
    let (vips, rest) = out.split_once("\nCOUNTER").unwrap_or((out, ""));
    let mut shown = vips.trim_end().to_owned();
    if counters && !rest.is_empty() {
        shown += "\n\nCOUNTER";
        let mut zero = 0;
        for (i, line) in rest.lines().enumerate() {
            if i > 0 && line.split_whitespace().last() == Some("0") {
                zero += 1;
            } else {
                shown += &format!("{line}\n");
            }
        }
        shown += &format!("({zero} more counters at 0)");
    }
    show_output(&["stats"], &shown);
}

/// Runs lbctl against the demo's lbd; an error carries its output.
fn lbctl(lbd: &Lbd, args: &[&str]) -> Result<String> {
    let out = lbd.lbctl(args);
    if !out.status.success() {
        return Err(format!(
            "lbctl {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn interrupted() -> Result {
    if lb_tests::bins::stop_requested() {
        return Err("stopped by a signal".into());
    }
    Ok(())
}

/// The config file with `pin_path`, `api_socket` and `state_file` pointed at `files`' own
/// places; everything else as it is.
fn own_paths(config: &str, files: &LbdFiles) -> Result<String> {
    let ours = [
        ("pin_path", files.pin_path.clone()),
        ("api_socket", files.socket()),
        ("state_file", files.dir.join("state.json")),
    ];
    let mut replaced = [false; 3];
    let mut out = String::new();
    for line in config.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        match ours.iter().position(|(k, _)| *k == key && line.contains('=')) {
            Some(i) => {
                out += &format!("{key} = {:?}\n", ours[i].1.display().to_string());
                replaced[i] = true;
            }
            None => out += &format!("{line}\n"),
        }
    }
    match replaced.iter().position(|r| !r) {
        Some(i) => Err(format!("{CONFIG} has no `{}` line for the demo to point at its own", ours[i].0)),
        None => Ok(out),
    }
}

/// The address and port of VIP [`VIP`] in `lbctl vip list`; it must be a TCP one.
fn service_of(vips: &str) -> Result<SocketAddr> {
    let row = vips
        .lines()
        .find(|l| l.split_whitespace().next() == Some(VIP))
        .ok_or(format!("{CONFIG} has no VIP named {VIP:?}:\n{vips}"))?;
    let service = row.split_whitespace().nth(1).unwrap_or_default();
    match service.rsplit_once('/') {
        Some((addr, "tcp")) => addr.parse().map_err(|e| format!("VIP {VIP}'s service {service}: {e}")),
        _ => Err(format!("VIP {VIP} of {CONFIG} must be a TCP service, not {service}")),
    }
}

/// The VIP's backends must be exactly the topology's backend hosts.
fn check_backends(topo: &Topology, list: &str) -> Result {
    let listed: BTreeSet<&str> = list.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    let hosts: Vec<String> = topo.backends[..CONFIGURED].iter().map(|b| b.v4.to_string()).collect();
    let ours: BTreeSet<&str> = hosts.iter().map(String::as_str).collect();
    if listed != ours {
        return Err(format!(
            "the backends of VIP {VIP} in {CONFIG} are {listed:?}; the demo's backend hosts are {ours:?}"
        ));
    }
    Ok(())
}

/// `new_flows` of backend `address` in `lbctl --json stats`: the first after the address (the
/// keys of every object are sorted, so a backend's object starts with its address).
fn new_flows(json: &str, address: &str) -> Result<u64> {
    let flat: String = json.split_whitespace().collect();
    let at = flat
        .find(&format!("\"address\":\"{address}\""))
        .ok_or(format!("no backend {address} in lbctl --json stats:\n{json}"))?;
    let key = "\"new_flows\":";
    let from =
        flat[at..].find(key).ok_or(format!("no new_flows for {address} in:\n{json}"))? + at + key.len();
    let digits: String = flat[from..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().map_err(|e| format!("new_flows of {address} in lbctl --json stats: {e}"))
}

/// The last lines of lbd's log, without colours.
fn log_tail(files: &LbdFiles) -> String {
    let mut log = std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default();
    // SGR sequences: ESC [ digits and semicolons m.
    while let Some(at) = log.find("\x1b[") {
        let end =
            log[at + 2..].find(|c: char| !c.is_ascii_digit() && c != ';').map_or(log.len(), |e| at + 2 + e);
        log.replace_range(at..(end + 1).min(log.len()), "");
    }
    let lines: Vec<&str> = log.lines().collect();
    format!("lbd log (last {LOG_TAIL} lines):\n{}", lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n"))
}
