//! Observability, as an operator meets it: the standard topology (client, lb, three backends,
//! decap on the backends) with a real lbd in the lb's namespace serving a VIP `web` (TCP) and a
//! VIP `any` (UDP, every port), and its metrics endpoint on 127.0.0.1:9100 of that namespace.
//!
//! While the client opens TCP connections to `web` (one every few milliseconds):
//! - `lbctl stats` shows non-zero packets/s, bits/s and new flows/s for the VIP and every backend;
//! - `lbctl stats --watch --count 2` prints two screens and stops;
//! - a real Prometheus server (Debian's `prometheus`), run in the lb's namespace with a 1 s
//!   scrape interval, answers a positive `rate(lb_vip_packets_total{vip="web"}[5s])`;
//! - lbd's census of the flow table counts active flows (confirmed, a packet in the last two
//!   clock ticks), no more than the confirmed ones, the same in the metrics and `lbctl status`.
//!
//! Then, with the traffic stopped:
//! - the metrics text passes `promtool check metrics`, and its VIP and backend series hold the
//!   numbers `lbctl --json stats` gives; OpenMetrics is served to whoever asks for it; other
//!   paths are 404;
//! - a census 3 s or more after the last packet counts every connection confirmed (finished
//!   connections stay in the table) and none active, in the metrics, `lbctl status` and
//!   Prometheus;
//! - `lbctl flows`: per backend, as many flows as connections that backend served (and as the
//!   data plane counted new flows for it), adding up to every connection made; a VIP filter
//!   that separates the two VIPs, the every-port one included;
//! - after a drain, the drained backend keeps exactly its flows (`--backend` lists only them)
//!   while new connections add to the others;
//! - Prometheus loaded the packaged alerting rules (packaging/prometheus/lbd-alerts.yml): every
//!   rule evaluates without error against lbd's series, and no alert is pending or firing.
use std::{
    collections::BTreeSet,
    io::Write as _,
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{
    bins::Running,
    echo::{self, EchoServer, Proto},
    lbd::{Lbd, LbdFiles},
    netns::Netns,
    topology::{vip, Family, Topology},
    unique_name,
};
use lb_userspace::agent::{
    flows::{FlowState, Flows, MAX_SAMPLE},
    Stats, TableFill,
};

const BACKENDS: usize = 3;
const PORT: u16 = 8080;
/// lbd's metrics endpoint and Prometheus' API, both on the lb namespace's loopback.
const METRICS: &str = "127.0.0.1:9100";
/// How full the flow table is, and how much of it is unconfirmed (docs/observability.md).
const FILL: &str = "sum without (state) (lb_flow_table_flows) / lb_flow_table_entries";
const UNCONFIRMED_FILL: &str =
    r#"lb_flow_table_flows{state="unconfirmed"} / ignoring(state) lb_flow_table_entries"#;
const ACTIVE_SHARE: &str = "lb_flow_table_active_flows / lb_flow_table_entries";
/// A confirmed flow stays active until its last packet is two clock ticks of 2^30 ns (2.15 s)
/// old; the margin covers the coarse clock and the walk.
const ACTIVE_FOR_AT_MOST: Duration = Duration::from_secs(3);
/// lbd walks its flow table every 10 s (lb_userspace::agent::event_loop::FLOW_CENSUS).
const CENSUS_WITHIN: Duration = Duration::from_secs(15);
const PROMETHEUS: &str = "127.0.0.1:9090";
/// The client opens a connection, then sleeps this long.
const TRAFFIC_GAP: Duration = Duration::from_millis(3);
/// Bounds of the background traffic, whatever happens to the main thread.
const TRAFFIC_MAX_TIME: Duration = Duration::from_secs(35);
const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections after the drain.
const AFTER_DRAIN: usize = 60;
/// Source ports x destination ports of the UDP flows to the every-port VIP.
const UDP_PORTS: [u16; 2] = [5000, 6000];
const UDP_SOCKETS: usize = 2;

#[test]
fn stats_metrics_prometheus_and_flows() {
    let t0 = Instant::now();
    // Dropped in reverse: Prometheus, servers, lbd (killed), programs, pins, namespaces.
    let topo = Topology::new(BACKENDS);
    let files = LbdFiles::new();
    let _passthrough = topo.start_lb_port_passthrough();
    let _decap = topo.start_backend_hosts();
    let web = vip(Family::V4, 1);
    let any = vip(Family::V4, 2);
    let addrs: Vec<String> = topo.backends.iter().map(|b| b.v4.to_string()).collect();
    let backends_toml: String =
        addrs.iter().map(|a| format!("  [[vip.backend]]\n  address = \"{a}\"\n")).collect();
    let vips = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{web}\"\nport = {PORT}\nprotocol = \"tcp\"\nring_size = 4099\n\
         {backends_toml}\n\
         [[vip]]\nname = \"any\"\naddress = \"{any}\"\nport = 0\nprotocol = \"udp\"\nring_size = 4099\n\
         {backends_toml}"
    );
    // `metrics` is a top-level key: before the first table.
    let config = format!("metrics = \"{METRICS}\"\n{}", topo.lbd_config(&files, &vips));
    let lbd = Lbd::start(&topo.lb.ns, &files, &config);
    let prometheus = Prometheus::start(&topo.lb.ns, METRICS);
    let server = SocketAddr::new(web, PORT);
    let servers: Vec<EchoServer> =
        topo.backends.iter().map(|b| EchoServer::start(&b.ns, Proto::Tcp, server)).collect();
    let fail = |what: String| -> ! {
        let stats = lbd.lbctl(&["stats", "--interval", "0.1"]);
        panic!(
            "{what}\nlbctl stats:\n{}{}\nlbd log:\n{}\nprometheus log:\n{}",
            String::from_utf8_lossy(&stats.stdout),
            String::from_utf8_lossy(&stats.stderr),
            std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default(),
            prometheus.log()
        );
    };
    eprintln!("set-up (topology, lbd, prometheus, servers) {:.2?}", t0.elapsed());

    // ---- While traffic flows: lbctl stats, --watch, Prometheus ------------------------------
    let stop = AtomicBool::new(false);
    let (traffic, during) = std::thread::scope(|s| {
        let client = s.spawn(|| topo.client.ns.run(|| connections(server, &stop)));
        std::thread::sleep(Duration::from_millis(300));
        let checks = (|| -> Result<String, String> {
            let t = Instant::now();
            let out = lbd.lbctl(&["stats"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() {
                return Err(format!("lbctl stats failed: {text}{}", String::from_utf8_lossy(&out.stderr)));
            }
            let took = t.elapsed();
            check_rates(&text, &web.to_string(), &addrs)?;
            eprintln!("lbctl stats (two samples 1 s apart) took {took:.2?}:\n{text}");

            let t = Instant::now();
            let out = lbd.lbctl(&["stats", "--watch", "--count", "2"]);
            let watch = String::from_utf8_lossy(&out.stdout).into_owned();
            let took = t.elapsed();
            let screens = watch.lines().filter(|l| l.starts_with("VIP ")).count();
            if !out.status.success() || screens != 2 || !watch.contains("refresh 2") {
                return Err(format!(
                    "lbctl stats --watch --count 2 ({}, {took:.2?}) printed {screens} screens:\n{watch}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            for screen in watch.split("lbctl stats --watch").skip(1) {
                check_rates(screen, &web.to_string(), &addrs)?;
            }
            eprintln!("lbctl stats --watch --count 2: two screens in {took:.2?}");

            let t = Instant::now();
            let rate = prometheus.wait_positive(r#"rate(lb_vip_packets_total{vip="web"}[5s])"#)?;
            eprintln!(
                "prometheus: rate(lb_vip_packets_total{{vip=\"web\"}}[5s]) = {rate:.1} packets/s (waited {:.2?})",
                t.elapsed()
            );
            let series = prometheus.wait_positive(r#"count(lb_backend_packets_total{vip="web"})"#)?;
            if series != BACKENDS as f64 {
                return Err(format!("prometheus has {series} backend series of web, want {BACKENDS}"));
            }

            // A census while the connections come and go: some active, no more than confirmed.
            let t = Instant::now();
            let census = loop {
                let census = census(&topo.lb.ns, &lbd)?;
                if let Some(c) = census.filter(|c| c.confirmed > 0) {
                    break c;
                }
                if t.elapsed() > CENSUS_WITHIN {
                    return Err(format!("no census saw the traffic within {CENSUS_WITHIN:?}: {census:?}"));
                }
                std::thread::sleep(Duration::from_millis(500));
            };
            if census.active == 0 || census.active > census.confirmed {
                return Err(format!("a census during the traffic: {census:?}, want 0 < active <= confirmed"));
            }
            eprintln!("census during the traffic (waited {:.2?}): {census:?}", t.elapsed());
            Ok(text)
        })();
        stop.store(true, Ordering::Relaxed);
        let traffic = client.join().expect("the client thread");
        (traffic, checks)
    });
    let stats_text = during.unwrap_or_else(|e| fail(e));
    if !traffic.failures.is_empty() {
        fail(format!("connections failed: {:?}", traffic.failures));
    }
    let locals: BTreeSet<SocketAddr> = traffic.locals.iter().copied().collect();
    let n = locals.len() as u64;
    eprintln!(
        "traffic: {n} connections in {:.2?} ({:.0}/s)",
        traffic.took,
        n as f64 / traffic.took.as_secs_f64()
    );
    assert_eq!(n as usize, traffic.locals.len(), "a client address and port was used twice");
    assert!(stats_text.contains("pass_not_vip"), "the global counters are listed:\n{stats_text}");

    // UDP flows to the every-port VIP: two sockets, two destination ports.
    topo.client.ns.run(|| {
        for _ in 0..UDP_SOCKETS {
            let s = UdpSocket::bind(SocketAddr::new(topo.client.v4.into(), 0)).expect("bind UDP");
            for port in UDP_PORTS {
                s.send_to(b"flow", SocketAddr::new(any, port)).expect("send UDP");
            }
        }
    });
    // Let the last packets (FINs, ACKs, datagrams) cross.
    std::thread::sleep(Duration::from_millis(300));
    let quiet_since = unix_now();

    // ---- Metrics: promtool, values, formats -----------------------------------------------
    let stats: Stats = serde_json::from_str(&lbd.lbctl_ok(&["--json", "stats"])).expect("lbctl --json stats");
    let text = curl(&topo.lb.ns, &format!("http://{METRICS}/metrics"), &[]);
    let t = Instant::now();
    let lint = promtool_check(&text);
    eprintln!(
        "promtool check metrics: passed in {:.2?} ({} lines of metrics)",
        t.elapsed(),
        text.lines().count()
    );
    if let Err(e) = lint {
        fail(format!("promtool check metrics: {e}\n{text}"));
    }
    let w = stats.vips.iter().find(|v| v.name == "web").expect("web in the stats");
    for (name, value) in [
        ("lb_vip_packets_total", w.packets),
        ("lb_vip_bytes_total", w.bytes),
        ("lb_vip_new_flows_total", w.new_flows),
    ] {
        let line = format!("{name}{{vip=\"web\",service=\"{web}:{PORT}/tcp\"}} {value}");
        assert!(text.lines().any(|l| l == line), "no {line:?} in the metrics:\n{text}");
    }
    for b in &w.backends {
        for (name, value) in [
            ("lb_backend_packets_total", b.packets),
            ("lb_backend_bytes_total", b.bytes),
            ("lb_backend_new_flows_total", b.new_flows),
            ("lb_backend_weight", b.weight.into()),
            ("lb_backend_drained", b.drained.into()),
        ] {
            let line = format!("{name}{{vip=\"web\",backend=\"{}\"}} {value}", b.address);
            assert!(text.lines().any(|l| l == line), "no {line:?} in the metrics:\n{text}");
        }
    }
    assert!(w.packets > 0 && w.new_flows == n, "web: {n} connections, stats {w:?}");
    for (counter, labels) in
        [("forward_tx", "verdict=\"forward\",reason=\"tx\""), ("flow_miss", "event=\"flow_miss\"")]
    {
        let value = stats.counters.iter().find(|(c, _)| c == counter).expect("counter").1;
        let name =
            if counter == "flow_miss" { "lb_datapath_events_total" } else { "lb_datapath_packets_total" };
        let line = format!("{name}{{{labels}}} {value}");
        assert!(text.lines().any(|l| l == line), "no {line:?} in the metrics:\n{text}");
    }
    let om = curl(
        &topo.lb.ns,
        &format!("http://{METRICS}/metrics"),
        &["-H", "Accept: application/openmetrics-text"],
    );
    assert!(om.ends_with("# EOF\n") && om.contains("# UNIT lb_vip_bytes bytes"), "OpenMetrics:\n{om}");
    let code =
        curl(&topo.lb.ns, &format!("http://{METRICS}/other"), &["-o", "/dev/null", "-w", "%{http_code}"]);
    assert_eq!(code, "404", "another path");

    // ---- Flows --------------------------------------------------------------------------------
    let flows = |args: &[&str]| -> Flows {
        let mut all = vec!["--json", "flows"];
        all.extend(args);
        serde_json::from_str(&lbd.lbctl_ok(&all)).expect("lbctl --json flows")
    };
    let t = Instant::now();
    let web_flows = flows(&["--vip", "web"]);
    eprintln!("lbctl flows --vip web: {} flows in {:.2?}", web_flows.total, t.elapsed());
    assert!(web_flows.complete);
    assert_eq!(web_flows.total, n, "web's flows: one per connection: {web_flows:?}");
    assert_eq!(web_flows.other, 0);
    assert_eq!(web_flows.unconfirmed, 0, "every connection sent more than its SYN: {web_flows:?}");
    assert_eq!(web_flows.backends.iter().map(|b| b.flows).sum::<u64>(), n, "{web_flows:?}");
    assert_eq!(web_flows.sample.len(), 20, "the default sample");
    for (i, addr) in addrs.iter().enumerate() {
        let row =
            web_flows.backends.iter().find(|b| b.address.to_string() == *addr).expect("a row per backend");
        let served = servers[i].peers().len() as u64;
        let counted = w.backends.iter().find(|b| b.address == *addr).expect("stats").new_flows;
        assert_eq!(
            (row.flows, row.flows),
            (served, counted),
            "{addr}: flows in the table, connections served, new flows counted"
        );
    }
    let any_flows = flows(&["--vip", "any", "--limit", "100"]);
    assert_eq!(any_flows.total, (UDP_SOCKETS * UDP_PORTS.len()) as u64, "{any_flows:?}");
    assert!(any_flows.sample.iter().all(|f| f.vip.as_deref() == Some("any") && f.protocol == "udp"));
    // One datagram each: recorded, never confirmed.
    assert_eq!(any_flows.unconfirmed, any_flows.total, "{any_flows:?}");
    assert!(any_flows.sample.iter().all(|f| f.state == FlowState::Unconfirmed), "{any_flows:?}");
    let all = flows(&["--limit", "0"]);
    assert_eq!(all.total, n + any_flows.total, "every flow");
    assert_eq!(all.table, all.total, "the table holds nothing else");
    assert!(all.sample.is_empty());
    let unconfirmed = flows(&["--state", "unconfirmed", "--limit", "100"]);
    assert_eq!((unconfirmed.total, unconfirmed.unconfirmed), (any_flows.total, any_flows.total));
    assert!(unconfirmed.sample.iter().all(|f| f.protocol == "udp"), "{unconfirmed:?}");
    let confirmed = flows(&["--state", "confirmed", "--limit", "100"]);
    assert_eq!((confirmed.total, confirmed.unconfirmed), (n, 0), "{confirmed:?}");
    assert!(confirmed.sample.iter().all(|f| f.state == FlowState::Confirmed && f.protocol == "tcp"));
    let human = lbd.lbctl_ok(&["flows", "--vip", "web"]);
    assert!(
        human.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["total", &n.to_string(), "0"]),
        "{human}"
    );

    // ---- The flow table's fill: lbd's census (every 10 s) after the traffic stopped ------------
    // The first census that began ACTIVE_FOR_AT_MOST after the last packet: every connection
    // still in the table, confirmed, and none active.
    let t = Instant::now();
    let census = loop {
        let census = census(&topo.lb.ns, &lbd).unwrap_or_else(|e| fail(e));
        if let Some(c) = census.filter(|c| c.at_unix as f64 >= quiet_since + ACTIVE_FOR_AT_MOST.as_secs_f64())
        {
            break c;
        }
        if t.elapsed() > CENSUS_WITHIN {
            fail(format!(
                "no census {ACTIVE_FOR_AT_MOST:?} after the traffic stopped (at {quiet_since:.1}) within \
                 {CENSUS_WITHIN:?}: the last {census:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "flow-table census {ACTIVE_FOR_AT_MOST:?} after the traffic, waited {:.2?}: {census:?}",
        t.elapsed()
    );
    let want = Census { entries: 131_072, confirmed: n, active: 0, unconfirmed: any_flows.total, ..census };
    if census != want {
        fail(format!("the census after the traffic: {census:?}, want {want:?}"));
    }
    let now = unix_now() as u64;
    assert!(
        census.at_unix <= now && now - census.at_unix <= CENSUS_WITHIN.as_secs(),
        "lb_flow_table_census_time_seconds {}, now {now}",
        census.at_unix
    );
    let human = lbd.lbctl_ok(&["status"]);
    let line = human.lines().find(|l| l.starts_with("flow table")).unwrap_or_default();
    let want = format!("flow table   {} flows in 131072 entries", n + any_flows.total);
    let active = format!(", 0 active (0.0 %), {} unconfirmed (census ", any_flows.total);
    assert!(
        line.starts_with(&want) && line.contains(&active),
        "lbctl status: {line:?}, want {want:?}, {active:?}"
    );
    eprintln!("lbctl status: {line}");
    // The fill ratios docs/observability.md gives, as Prometheus computes them (it scrapes every
    // second: a few polls).
    for (query, want) in [
        (FILL, (n + any_flows.total) as f64 / 131_072.0),
        (UNCONFIRMED_FILL, any_flows.total as f64 / 131_072.0),
        (ACTIVE_SHARE, 0.0),
    ] {
        let t = Instant::now();
        let mut got = None;
        while t.elapsed() < Duration::from_secs(5) {
            got = prometheus.query(query);
            if got.is_some_and(|v| (v - want).abs() < 1e-9) {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if !got.is_some_and(|v| (v - want).abs() < 1e-9) {
            fail(format!("prometheus: {query} is {got:?}, want {want}"));
        }
    }

    // ---- Drain: the drained backend keeps its flows; new ones go elsewhere --------------------
    let drained = web_flows.backends.iter().max_by_key(|b| b.flows).expect("backends");
    let (drained_addr, kept) = (drained.address.to_string(), drained.flows);
    lbd.lbctl_ok(&["backend", "drain", "web", &drained_addr]);
    let after = topo.client.ns.run(|| {
        (0..AFTER_DRAIN)
            .map(|i| echo::tcp_exchange(server, format!("after #{i}").as_bytes(), STEP_TIMEOUT))
            .collect::<Result<Vec<_>, _>>()
    });
    let after = after.unwrap_or_else(|e| fail(format!("a connection after the drain failed: {e}")));
    assert_eq!(after.len(), AFTER_DRAIN);
    std::thread::sleep(Duration::from_millis(100));
    // Every one of them in the sample (the traffic ran until a census saw it: thousands).
    let only = flows(&["--vip", "web", "--backend", &drained_addr, "--limit", &MAX_SAMPLE.to_string()]);
    assert_eq!(only.total, kept, "the drained backend's flows: {only:?}");
    assert_eq!(only.backends.len(), 1);
    assert!(only.backends[0].drained && only.backends[0].flows == kept, "{only:?}");
    assert_eq!(only.sample.len() as u64, kept);
    assert!(only.sample.iter().all(|f| f.backend.map(|b| b.to_string()) == Some(drained_addr.clone())));
    let web_after = flows(&["--vip", "web", "--limit", "0"]);
    assert_eq!(web_after.total, n + AFTER_DRAIN as u64, "{web_after:?}");
    let human = lbd.lbctl_ok(&["flows", "--backend", &drained_addr, "--limit", "2"]);
    eprintln!("lbctl flows --backend {drained_addr} --limit 2:\n{human}");
    let row: Vec<&str> =
        human.lines().find(|l| l.starts_with("web ")).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row, ["web", drained_addr.as_str(), "drained", &kept.to_string(), "0"], "{human}");
    eprintln!(
        "drained {drained_addr}: it keeps its {kept} flows; {AFTER_DRAIN} new connections went to the others; \
         web has {} flows",
        web_after.total
    );
    // ---- The packaged alerting rules against lbd's real series --------------------------------
    // Prometheus has evaluated them every second since it started: every group is loaded, every
    // rule evaluates without error, and none is pending or firing on this healthy balancer (the
    // drain above leaves two backends of three in service: no alert). Judged once every rule has
    // been evaluated (within 3 s).
    let t = Instant::now();
    let rules = prometheus.wait_rules_healthy_and_quiet();
    match rules {
        Ok(n) => eprintln!("prometheus: {n} alerting rules loaded, healthy and quiet ({:.2?})", t.elapsed()),
        Err(e) => fail(format!("the packaged alerting rules ({}): {e}", alert_rules().display())),
    }
    let errors: Vec<String> = servers.iter().flat_map(EchoServer::errors).collect();
    assert!(errors.is_empty(), "the echo servers met errors: {errors:?}");
    eprintln!("passed in {:.2?}", t0.elapsed());
}

/// The last census of the flow table as the metrics and `lbctl --json status` both give it
/// (read until both show the same one: a census may end between the two reads); `None` before
/// the first.
fn census(ns: &Netns, lbd: &Lbd) -> Result<Option<Census>, String> {
    let mut seen = Vec::new();
    for _ in 0..3 {
        let text = curl(ns, &format!("http://{METRICS}/metrics"), &[]);
        let value =
            |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok());
        let metrics = (|| {
            Some(Census {
                entries: value("lb_flow_table_entries")?,
                confirmed: value(r#"lb_flow_table_flows{state="confirmed"}"#)?,
                active: value("lb_flow_table_active_flows")?,
                unconfirmed: value(r#"lb_flow_table_flows{state="unconfirmed"}"#)?,
                at_unix: value("lb_flow_table_census_time_seconds")?,
            })
        })();
        let status: serde_json::Value = serde_json::from_str(&lbd.lbctl_ok(&["--json", "status"]))
            .map_err(|e| format!("lbctl --json status: {e}"))?;
        let lbctl = serde_json::from_value::<TableFill>(status["flow_table"].clone()).ok().map(|f| Census {
            entries: f.entries,
            confirmed: f.confirmed,
            active: f.active,
            unconfirmed: f.unconfirmed,
            at_unix: f.at_unix,
        });
        match (metrics, lbctl) {
            (Some(m), Some(l)) if m == l => return Ok(Some(m)),
            (None, None) => return Ok(None),
            (Some(m), Some(l)) if m.at_unix == l.at_unix => {
                return Err(format!("one census, two answers: the metrics {m:?}, lbctl status {l:?}"))
            }
            (m, l) => seen.push(format!("metrics {m:?}, lbctl status {l:?}")),
        }
    }
    let samples: Vec<&str> = seen.iter().map(String::as_str).collect();
    Err(format!("the metrics and lbctl status never showed the same census: {}", samples.join("; ")))
}

/// What the metrics and `lbctl status` both say of a census of the flow table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Census {
    entries: u64,
    confirmed: u64,
    active: u64,
    unconfirmed: u64,
    at_unix: u64,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// The client's connections, and what failed.
struct Traffic {
    locals: Vec<SocketAddr>,
    failures: Vec<String>,
    took: Duration,
}

/// One exchange per connection, one connection every TRAFFIC_GAP, until `stop` (or the bounds).
fn connections(server: SocketAddr, stop: &AtomicBool) -> Traffic {
    let start = Instant::now();
    let mut t = Traffic { locals: Vec::new(), failures: Vec::new(), took: Duration::ZERO };
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < TRAFFIC_MAX_TIME && t.failures.len() < 5 {
        match echo::tcp_exchange(server, format!("stats #{i}").as_bytes(), STEP_TIMEOUT) {
            Ok(local) => t.locals.push(local),
            Err(e) => t.failures.push(format!("connection #{i}: {e}")),
        }
        i += 1;
        std::thread::sleep(TRAFFIC_GAP);
    }
    t.took = start.elapsed();
    t
}

/// The cell in column `column` of the first row of `table` whose text starts (after spaces)
/// with `row`. Columns start where their header does.
fn cell<'a>(table: &'a str, row: &str, column: &str) -> Option<&'a str> {
    let header = table.lines().find(|l| l.starts_with("VIP "))?;
    let start = header.find(column)?;
    let end = header[start..].find(' ').map_or(header.len(), |e| start + e);
    let end = header[end..].find(|c: char| c != ' ').map_or(header.len(), |s| end + s);
    let line = table.lines().find(|l| l.trim_start().starts_with(row))?;
    Some(line.get(start..end.min(line.len()))?.trim())
}

/// "1.23k" -> 1230.
fn si(text: &str) -> Option<f64> {
    let (number, scale) = match text.chars().last()? {
        'k' => (&text[..text.len() - 1], 1e3),
        'M' => (&text[..text.len() - 1], 1e6),
        'G' => (&text[..text.len() - 1], 1e9),
        _ => (text, 1.0),
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// Non-zero packets/s, bits/s and new flows/s for the VIP and every backend in `lbctl stats`.
fn check_rates(table: &str, vip: &str, backends: &[String]) -> Result<(), String> {
    for row in std::iter::once(&"web ".to_string()).chain(backends) {
        for column in ["PKT/S", "BIT/S", "FLOWS/S"] {
            let value = cell(table, row, column);
            if !value.and_then(si).is_some_and(|v| v > 0.0) {
                return Err(format!(
                    "{column} of {row:?} (VIP {vip}) is {value:?}, not a positive rate:\n{table}"
                ));
            }
        }
        if row != "web " && !cell(table, row, "SHARE").is_some_and(|s| s.ends_with('%')) {
            return Err(format!("no share for {row}:\n{table}"));
        }
    }
    Ok(())
}

/// `curl -sS URL` inside `ns`; its output.
fn curl(ns: &Netns, url: &str, extra: &[&str]) -> String {
    let out =
        ns.command("curl").args(["-sS", "--max-time", "5"]).args(extra).arg(url).output().expect("run curl");
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// `promtool check metrics` with `text` on its standard input.
fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("timeout")
        .args(["10", "promtool", "check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot run promtool ({e}): `cargo xtask setup` installs Debian's prometheus")
        })?;
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The alerting rules the Debian package installs.
fn alert_rules() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/prometheus/lbd-alerts.yml"))
}

/// The rule groups of [`alert_rules`], by name.
fn alert_rule_groups() -> BTreeSet<String> {
    let path = alert_rules();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines().filter_map(|l| l.trim_start().strip_prefix("- name:")).map(|n| n.trim().to_owned()).collect()
}

/// What is wrong with the rules Prometheus loaded, from `GET /api/v1/rules`: a group missing,
/// a rule not evaluated or failing, an alert pending or firing. Ok: how many rules.
fn rules_problems(answer: &serde_json::Value) -> Result<usize, String> {
    let groups = answer["data"]["groups"].as_array().ok_or_else(|| format!("no rule groups in {answer}"))?;
    let loaded: BTreeSet<String> =
        groups.iter().filter_map(|g| g["name"].as_str()).map(str::to_owned).collect();
    if loaded != alert_rule_groups() {
        return Err(format!("groups loaded {loaded:?}, the file has {:?}", alert_rule_groups()));
    }
    let mut problems = Vec::new();
    let rules: Vec<&serde_json::Value> =
        groups.iter().flat_map(|g| g["rules"].as_array().into_iter().flatten()).collect();
    for rule in &rules {
        let name = rule["name"].as_str().unwrap_or("?");
        if rule["health"] != "ok" {
            problems.push(format!("{name}: health {} {}", rule["health"], rule["lastError"]));
        }
        if rule["type"] == "alerting" && rule["state"] != "inactive" {
            problems.push(format!("{name}: {} {}", rule["state"], rule["alerts"]));
        }
    }
    if problems.is_empty() {
        Ok(rules.len())
    } else {
        Err(problems.join("\n"))
    }
}

/// A Prometheus server in a namespace, scraping one target every second; killed, and its
/// files removed, on drop.
struct Prometheus<'a> {
    ns: &'a Netns,
    process: Option<Running>,
    dir: PathBuf,
}

impl<'a> Prometheus<'a> {
    fn start(ns: &'a Netns, target: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name("prometheus"));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: lbd\n    static_configs:\n      - targets: [\"{target}\"]\n",
                alert_rules().display()
            ),
        )
        .expect("prometheus config");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let process = Running::spawn(
            ns.command("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address={PROMETHEUS}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log),
        );
        Prometheus { ns, process: Some(process), dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The first value of an instant query, if there is one.
    fn query(&self, query: &str) -> Option<f64> {
        let out = self
            .ns
            .command("curl")
            .args(["-sS", "--max-time", "2", "-G", &format!("http://{PROMETHEUS}/api/v1/query")])
            .arg("--data-urlencode")
            .arg(format!("query={query}"))
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Polls `query` until it is positive; at most 20 s.
    fn wait_positive(&self, query: &str) -> Result<f64, String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query(query);
            if let Some(v) = last.filter(|v| *v > 0.0) {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("prometheus: {query} was {last:?} for 20 s\n{}", self.log()))
    }

    /// [`rules_problems`] of `GET /api/v1/rules` once every rule has been evaluated (health not
    /// "unknown"), or after 3 s (three evaluations).
    fn wait_rules_healthy_and_quiet(&self) -> Result<usize, String> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let evaluated = |answer: &serde_json::Value| {
            let groups = answer["data"]["groups"].as_array().into_iter().flatten();
            let mut rules = groups.flat_map(|g| g["rules"].as_array().into_iter().flatten()).peekable();
            rules.peek().is_some() && rules.all(|r| r["health"] != "unknown")
        };
        loop {
            let out = self
                .ns
                .command("curl")
                .args(["-sS", "--max-time", "2", &format!("http://{PROMETHEUS}/api/v1/rules")])
                .output()
                .map_err(|e| format!("run curl: {e}"))?;
            let answer: Result<serde_json::Value, String> = serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
            if answer.as_ref().is_ok_and(evaluated) || Instant::now() >= deadline {
                return answer.and_then(|a| rules_problems(&a));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        drop(self.process.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
