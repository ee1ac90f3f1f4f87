//! `cargo xtask demo --ecmp`: scale-out at the edge, told as a short story on stdout.
//!
//! Builds `lb_tests::ecmp`'s edge: a router namespace with BIRD that spreads a client's flows by
//! ECMP over three balancer hosts, each running lbd (which announces the VIP through the VIP
//! table) and BIRD (which announces that table over BGP), in front of three backend hosts
//! running `lbd backend-host`. Then: long-lived connections spread over the three balancers;
//! one balancer is killed outright and its connections carry on through the other two (they
//! pick the same backends); a host drain moves traffic off another one, with no reset.
//!
//! It doubles as a smoke test: every step is checked, and a failed one ends the demo with exit
//! status 1 and a message naming it. Everything the demo creates goes on every path (drop
//! guards, also after a panic or Ctrl-C), and the end checks that nothing is left.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_tests::ecmp::{balancer_addr, Conversations, Edge, Spec, PORT, PROPAGATION, VIP};

/// Long-lived connections, each exchanging a message every PERIOD.
const CONNECTIONS: u16 = 90;
const PERIOD: Duration = Duration::from_millis(100);
/// How long to watch the connections after a change of route (TCP retransmits a lost segment
/// after 200 ms).
const WATCH: Duration = Duration::from_millis(1500);
const BALANCERS: u8 = 3;

type Result<T = ()> = std::result::Result<T, String>;

fn main() {
    let t0 = Instant::now();
    lb_tests::bins::stop_on_signals();
    std::panic::set_hook(Box::new(|info| eprintln!("error: {info}")));
    let mut namespaces = Vec::new();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&mut namespaces)));
    let left: Vec<String> =
        namespaces.iter().filter(|n| Path::new("/run/netns").join(n).exists()).cloned().collect();
    let birds = our_birds();
    if left.is_empty() && birds.is_empty() && !namespaces.is_empty() {
        println!(
            "   removed: the {} namespaces (with every link in them), the BIRDs, lbds, pins and files",
            namespaces.len()
        );
    }
    let failure = match outcome {
        Ok(Ok(())) if left.is_empty() && birds.is_empty() => None,
        Ok(Ok(())) => Some(format!("the teardown left namespaces {left:?} and BIRD processes {birds:?}")),
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

fn run(namespaces: &mut Vec<String>) -> Result {
    println!("lb ECMP demo: a router with BIRD, {BALANCERS} balancer hosts (lbd + BIRD), 3 backend hosts, a client");
    heading("1. Set-up");
    let t = Instant::now();
    let mut edge = Edge::start(&Spec::new(BALANCERS, 3));
    *namespaces = [&edge.router, &edge.client, &edge.fabric]
        .into_iter()
        .chain(edge.balancers.iter().map(|b| &b.ns))
        .chain(edge.backends.iter().map(|b| &b.ns))
        .map(|ns| ns.name().to_owned())
        .collect();
    interrupted()?;
    let took = edge.wait_router(VIP, &[1, 2, 3], PROPAGATION);
    println!(
        "   built in {:.1} s; every namespace is named {}{}-*",
        t.elapsed().as_secs_f64(),
        lb_tests::TEST_PREFIX,
        std::process::id()
    );
    println!("     client    198.18.0.2    default route via the router");
    println!("     router    198.18.0.1, 198.18.1.1   BIRD (AS 64500): one BGP session per balancer, BFD; ECMP on the 5-tuple");
    for b in &edge.balancers {
        println!(
            "     balancer{} {:<13} lbd: XDP balancer on eth0, [announce]; BIRD (AS 64600) learns table 4242",
            b.n,
            balancer_addr(b.n)
        );
    }
    println!(
        "     backend1..3 198.18.1.21-23  lbd backend-host (decap, VIP on lo), TCP echo on {VIP}:{PORT}"
    );
    println!("   each lbd lists the backends in another order (other ids); {took:?} after BGP came up, the router had:");
    show(
        "router",
        &["ip", "route", "show", &format!("{VIP}/32")],
        &edge.router.ip(&["-4", "route", "show", &format!("{VIP}/32")]),
    );
    // lbd reads its BIRD every few seconds: show a status that has seen BGP up.
    edge.balancer(1).wait_bird_read(lb_userspace::announce::RETRY * 3);
    let status = edge.balancer(1).lbctl_ok(&["status"]);
    show("balancer1", &["lbctl", "status"], &status);
    let prints: Vec<String> = edge.balancers.iter().map(|b| b.fingerprints()["web"].clone()).collect();
    println!("   ring fingerprints of VIP web on the three balancers: {}", prints.join(", "));
    if prints.iter().any(|p| *p != prints[0]) {
        return Err(format!("the balancers' rings differ: {prints:?}"));
    }

    heading(&format!("2. {CONNECTIONS} long-lived connections, a message on each every {PERIOD:?}"));
    let service = SocketAddr::new(VIP, PORT);
    let conversations = Conversations::start(&edge.client, service, CONNECTIONS, 30_000, PERIOD);
    std::thread::sleep(Duration::from_millis(400));
    let carriers = edge.carriers();
    print_split("per balancer (from their flow tables)", &carriers);
    for n in 1..=BALANCERS {
        if carriers.values().filter(|&&c| c == n).count() * 100 < usize::from(CONNECTIONS) * 15 {
            return Err(format!("balancer {n} carries under 15 % of the connections"));
        }
    }
    interrupted()?;

    heading("3. Balancer 2 dies: lbd and BIRD killed (SIGKILL), its link deleted");
    let theirs: Vec<SocketAddr> = carriers.iter().filter(|(_, &n)| n == 2).map(|(c, _)| *c).collect();
    edge.kill_balancer(2);
    let took = edge.wait_router(VIP, &[1, 3], Duration::from_secs(2));
    println!("   the router dropped balancer 2's next hop {took:?} later (its BGP session closed)");
    let watched = watch(&conversations)?;
    let moved = theirs.iter().filter(|c| watched.contains(c)).count();
    println!(
        "   in the next {WATCH:?}: {} of {CONNECTIONS} connections exchanged messages, {moved} of balancer 2's {} among them",
        watched.len(),
        theirs.len()
    );
    print_split("now per balancer (their flow tables)", &edge.carriers());
    println!("   balancers 1 and 3 never saw those connections' first packets: each packet without a flow");
    println!("   went through the VIP's Maglev ring, which names the same backend on every balancer");
    if watched.len() < usize::from(CONNECTIONS) {
        return Err(format!("connections stopped: {:?}", conversations.failures()));
    }
    interrupted()?;

    heading("4. Drain balancer 3, undrain it");
    let out = edge.balancer(3).lbctl_ok(&["host", "drain"]);
    show("balancer3", &["lbctl", "host", "drain"], &out);
    let took = edge.wait_router(VIP, &[1], Duration::from_secs(2));
    println!("   the router routes {VIP} over balancer 1 only, {took:?} later; balancer 3 forwards what still reaches it");
    let watched = watch(&conversations)?;
    println!(
        "   in the next {WATCH:?}: {} of {CONNECTIONS} connections exchanged messages, none reset",
        watched.len()
    );
    if watched.len() < usize::from(CONNECTIONS) {
        return Err(format!("connections stopped: {:?}", conversations.failures()));
    }
    let out = edge.balancer(3).lbctl_ok(&["host", "undrain"]);
    show("balancer3", &["lbctl", "host", "undrain"], &out);
    let took = edge.wait_router(VIP, &[1, 3], PROPAGATION);
    println!("   back on the router {took:?} later");

    heading("5. Teardown");
    drop(conversations);
    drop(edge);
    Ok(())
}

/// The connections that exchanged a message within [`WATCH`] from now; an error if one failed.
fn watch(conversations: &Conversations) -> Result<Vec<SocketAddr>> {
    let before = conversations.exchanges();
    std::thread::sleep(WATCH);
    let failures = conversations.failures();
    if !failures.is_empty() {
        return Err(format!("{} connections failed: {failures:?}", failures.len()));
    }
    Ok(conversations.progressed_since(&before))
}

fn print_split(what: &str, carriers: &BTreeMap<SocketAddr, u8>) {
    println!("   {what}:");
    let total = carriers.len().max(1);
    for n in 1..=BALANCERS {
        let count = carriers.values().filter(|&&c| c == n).count();
        let share = 100.0 * count as f64 / total as f64;
        println!(
            "     balancer{n}  {count:>4}  {share:5.1}%  {}",
            "#".repeat((share / 2.5).round() as usize)
        );
    }
}

/// The step under way, for the failure message.
static STEP: Mutex<String> = Mutex::new(String::new());

fn heading(title: &str) {
    *STEP.lock().unwrap_or_else(|e| e.into_inner()) = title.to_owned();
    println!("\n{title}");
}

fn show(host: &str, command: &[&str], out: &str) {
    println!("   {host}$ {}", command.join(" "));
    for line in out.lines() {
        println!("{}", format!("     {line}").trim_end());
    }
}

fn interrupted() -> Result {
    if lb_tests::bins::stop_requested() {
        return Err("stopped by a signal".into());
    }
    Ok(())
}

/// BIRD processes this demo started that are still running.
fn our_birds() -> Vec<String> {
    let ours = format!("{}{}-", lb_tests::TEST_PREFIX, std::process::id());
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| {
            let pid = e.ok()?.file_name().to_string_lossy().into_owned();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.starts_with("bird ") && cmdline.contains(&ours)).then(|| format!("{pid}: {cmdline}"))
        })
        .collect()
}
