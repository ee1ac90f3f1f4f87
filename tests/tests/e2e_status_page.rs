//! The status page, in a real browser: the standard topology (client, lb, three backends with
//! decap) and a real lbd in the lb's namespace serving a TCP VIP `web` (least-conn, health
//! checked) and a UDP VIP `dns`, with its metrics listener on 127.0.0.1:9100 of that namespace
//! and a `web_admin_token`. Headless Chromium (Debian's, through chromedriver) runs in the same
//! namespace and loads `http://127.0.0.1:9100/`.
//!
//! - another site's page (http://localhost:9100 is another origin and site than
//!   http://127.0.0.1:9100) cannot drain: lbd refuses its request, or the browser does not send it;
//! - the page lists the config's VIPs and backends, active and up; a VIP's backends fold and
//!   unfold with a click, and stay as they are across refreshes;
//! - while the client opens connections to `web`, the packets/s chart's latest value moves and
//!   agrees with `lbctl stats` within 20 %; rates carry units (1.24k, 750k);
//! - `lbctl backend drain` shows as drained within 2 s, and a backend whose server dies as down;
//! - a wrong token gets 401 and another site's request 403; unlocked with the token, the page's
//!   Drain button drains a backend and its Set weight weighs another (as `lbctl` sees it);
//! - screenshots at laptop width (light and dark: the page follows the system's scheme) and phone
//!   width (nothing wider than the screen) go to `target/status-page/` (with
//!   `LB_DOCS_SCREENSHOT=1`, the light laptop one to docs/images/status-page.png as well);
//! - the page and everything it loads weigh less than 300 KB;
//! - with the token removed from the config (`lbctl apply -f`), the write routes are 404 and the
//!   page is read-only; `/metrics` answers as before; the log never holds the token; no Chromium
//!   is left running.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{
    browser::Browser,
    echo::{self, EchoServer, Proto},
    lbd::{Lbd, LbdFiles},
    netns::Netns,
    topology::{vip, Family, Topology},
};
use serde_json::Value;

const BACKENDS: usize = 3;
const PORT: u16 = 8080;
const METRICS: &str = "127.0.0.1:9100";
const TOKEN: &str = "e2e-status-page-0123456789abcdef";
const LAPTOP: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (390, 844);
/// The client opens a connection, then sleeps this long.
const TRAFFIC_GAP: Duration = Duration::from_millis(3);
/// Bounds of the background traffic, whatever happens to the main thread.
const TRAFFIC_MAX_TIME: Duration = Duration::from_secs(40);
/// What the issue allows the page to lag behind a change.
const PAGE_LAG: Duration = Duration::from_secs(2);
/// `web`'s health check: a dead server is down after about INTERVAL × FALL.
const HEALTH: &str =
    "[vip.health]\ntype = \"tcp\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n";

fn config(topo: &Topology, files: &LbdFiles, token: bool) -> String {
    let backends: String =
        topo.backends.iter().map(|b| format!("  [[vip.backend]]\n  address = \"{}\"\n", b.v4)).collect();
    let vips = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{}\"\nport = {PORT}\nprotocol = \"tcp\"\nscheduler = \"least-conn\"\n\
         ring_size = 4099\n{HEALTH}\n{backends}\n\
         [[vip]]\nname = \"dns\"\naddress = \"{}\"\nport = 53\nprotocol = \"udp\"\nring_size = 4099\n\n{backends}",
        vip(Family::V4, 1),
        vip(Family::V4, 2)
    );
    let token = if token { format!("web_admin_token = \"{TOKEN}\"\n") } else { String::new() };
    // Top-level keys come before the first table.
    format!("metrics = \"{METRICS}\"\n{token}{}", topo.lbd_config(files, &vips))
}

#[test]
fn status_page_in_a_browser() {
    let t0 = Instant::now();
    // Dropped in reverse: browser, servers, lbd, programs, pins, namespaces.
    let topo = Topology::new(BACKENDS);
    let files = LbdFiles::new();
    let _passthrough = topo.start_lb_port_passthrough();
    let _decap = topo.start_backend_hosts();
    let lbd = Lbd::start(&topo.lb.ns, &files, &config(&topo, &files, true));
    let addrs: Vec<String> = topo.backends.iter().map(|b| b.v4.to_string()).collect();
    // Bound to every address: the VIP (client traffic) and the backend's own (health checks).
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT);
    let mut servers: Vec<Option<EchoServer>> =
        topo.backends.iter().map(|b| Some(EchoServer::start(&b.ns, Proto::Tcp, any))).collect();
    let browser = Browser::start(&topo.lb.ns, LAPTOP.0, LAPTOP.1);
    let browser_dir = browser.dir();
    let fail = |what: String| -> ! {
        panic!(
            "{what}\nlbd log:\n{}\nchromedriver log (end):\n{}",
            std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default(),
            tail(&browser.driver_log(), 40)
        )
    };
    eprintln!("set-up (topology, lbd, servers, chromium) {:.2?}", t0.elapsed());

    // ---- Another site cannot act ------------------------------------------------------------
    cross_site_refused(&browser, &lbd, &files.dir.join("lbd.log"), &addrs[1])
        .unwrap_or_else(|e| fail(format!("another site acted: {e}")));

    // ---- The config's VIPs and backends, active and up --------------------------------------
    browser.goto(&format!("http://{METRICS}/"));
    let t = Instant::now();
    let listed = browser.wait(Duration::from_secs(10), |b| {
        let vips = page_vips(b);
        let names: Vec<&str> = vips.iter().map(|v| v.name.as_str()).collect();
        if names != ["web", "dns"] {
            return Err(format!("VIPs on the page: {names:?}"));
        }
        for v in &vips {
            let shown: Vec<&str> = v.backends.iter().map(|b| b.address.as_str()).collect();
            if shown != addrs {
                return Err(format!("{}: backends {shown:?}, want {addrs:?}", v.name));
            }
            let want_health = if v.name == "web" { "up" } else { "no check" };
            if let Some(b) = v.backends.iter().find(|b| b.state != "active" || b.health != want_health) {
                return Err(format!("{}: {b:?}, want active and {want_health}", v.name));
            }
        }
        Ok(vips)
    });
    let vips = listed.unwrap_or_else(|e| fail(format!("the page does not list the config: {e}")));
    assert_eq!(vips[0].service, format!("{}:{PORT}/tcp", vip(Family::V4, 1)), "{vips:?}");
    eprintln!("the page lists web and dns with their 3 backends, active and up ({:.2?})", t.elapsed());
    fold_and_unfold(&browser, "dns").unwrap_or_else(|e| fail(format!("dns's backends do not fold: {e}")));
    // The mode the kernel reports attached (native: the default).
    let facts = browser.execute("return document.getElementById('facts').textContent", &[]);
    if !facts.as_str().is_some_and(|f| f.contains("XDP native on eth0")) {
        fail(format!("the page does not show the balancer attached in native mode on eth0: {facts}"));
    }

    // ---- While traffic flows: the chart moves and agrees with lbctl stats --------------------
    let stop = AtomicBool::new(false);
    let server = SocketAddr::new(vip(Family::V4, 1), PORT);
    std::thread::scope(|s| {
        let traffic = s.spawn(|| topo.client.ns.run(|| connections(server, &stop)));
        // A panic below stops the traffic too, instead of leaving the scope waiting for it.
        let _stop_on_panic = StopOnDrop(&stop);
        let during = (|| -> Result<(), String> {
            let t = Instant::now();
            let first = browser.wait(Duration::from_secs(5), |b| {
                latest(b, "overview-pps", "vip:web")
                    .filter(|v| *v > 0.0)
                    .ok_or("no traffic on the chart yet".to_string())
            })?;
            let moved = browser.wait(Duration::from_secs(5), |b| {
                latest(b, "overview-pps", "vip:web")
                    .filter(|v| *v != first)
                    .ok_or(format!("the latest value stays at {first}"))
            })?;
            eprintln!("packets/s of web on the chart: {first}, then {moved} ({:.2?})", t.elapsed());
            let mut last = String::new();
            for _ in 0..8 {
                let lbctl = lbctl_pps(&lbd)?;
                let page = latest(&browser, "overview-pps", "vip:web").unwrap_or(0.0);
                let text = browser.text(
                    &browser
                        .find("details.vip[data-vip=web] .vip-rates [data-metric=pps] b")
                        .ok_or("no rate in web's header")?,
                );
                let bits = browser.text(
                    &browser
                        .find("details.vip[data-vip=web] .vip-rates [data-metric=bps] b")
                        .ok_or("no bit rate in web's header")?,
                );
                last = format!("page {page} packets/s (header {text}, {bits} bit/s), lbctl stats {lbctl}");
                if !with_units(&text) || !with_units(&bits) || si(&bits).is_none_or(|b| b < 1000.0) {
                    return Err(format!("rates without units (k, M, G) in web's header: {last}"));
                }
                if (page - lbctl).abs() <= 0.2 * lbctl {
                    eprintln!("rates agree: {last}");
                    return Ok(());
                }
            }
            Err(format!("the page's rate and lbctl stats' differ by more than 20 % eight times: {last}"))
        })();
        // ---- The flow table's fill: lbd's census, as lbctl status has it ----------------------
        let during = during.and_then(|()| check_flow_table_tile(&browser, &lbd));
        // ---- lbctl's drain on the page -------------------------------------------------------
        let during = during.and_then(|()| check_drain_shows(&browser, &lbd, &addrs[0]));
        // ---- A health failure: the backend shows down ----------------------------------------
        let down = during.and_then(|()| {
            let t = Instant::now();
            servers[2] = None;
            let shown = browser.wait(Duration::from_secs(3), |b| {
                let web = page_vips(b).into_iter().find(|v| v.name == "web").ok_or("no web")?;
                let b3 = web.backends.iter().find(|b| b.address == addrs[2]).ok_or("no b3")?;
                (b3.down && b3.health == "down").then_some(()).ok_or(format!("{b3:?}"))
            });
            shown
                .map_err(|e| format!("{} stopped serving, the page does not show it down: {e}", addrs[2]))?;
            let summary = browser.execute(
                "return [document.querySelector('details.vip[data-vip=web]').classList.contains('has-down'), \
                 document.querySelector('details.vip[data-vip=web] summary .badge').textContent]",
                &[],
            );
            if summary != serde_json::json!([true, "1 down"]) {
                return Err(format!("web's header does not say a backend is down: {summary}"));
            }
            eprintln!("{}'s server stopped: down on the page after {:.2?}", addrs[2], t.elapsed());
            Ok(())
        });
        // ---- With the token: refusals, then the page's Drain button --------------------------
        let acted = down.and_then(|()| act_from_the_page(&browser, &lbd, &topo.lb.ns, &addrs[1], &addrs[0]));
        // ---- The JSON behind the page, and screenshots, while traffic still flows -------------
        let json = acted.and_then(|()| check_json(&topo.lb.ns, &addrs));
        let shots = json.and_then(|()| screenshots(&browser));
        stop.store(true, Ordering::Relaxed);
        let traffic = traffic.join().expect("the client thread");
        eprintln!("traffic: {} connections, {} failed (to the stopped server)", traffic.0, traffic.1);
        shots.unwrap_or_else(|e| fail(e));
    });

    // ---- Page weight --------------------------------------------------------------------------
    let weight = browser.execute(
        "const nav = performance.getEntriesByType('navigation')[0]; \
         const files = performance.getEntriesByType('resource').filter(r => !r.name.includes('/api/')); \
         return [nav.decodedBodySize + files.reduce((a, r) => a + r.decodedBodySize, 0), files.map(r => r.name)]",
        &[],
    );
    let (bytes, files_loaded) = (weight[0].as_u64().expect("a size"), &weight[1]);
    eprintln!("the page and its files weigh {bytes} bytes: {files_loaded}");
    assert!(files_loaded.to_string().contains("uPlot.iife.min.js"), "uPlot was not loaded: {files_loaded}");
    assert!(bytes < 300 * 1024, "the page weighs {bytes} bytes, over 300 KB: {files_loaded}");

    // ---- Without the token: read-only, write routes 404 --------------------------------------
    std::fs::write(files.config(), config(&topo, &files, false)).expect("write the config");
    lbd.lbctl_ok(&["apply", "-f", &files.config().display().to_string()]);
    let drain_url = format!("http://{METRICS}/api/vips/web/backends/{}/drain", addrs[0]);
    for (args, what) in [
        (vec!["-X", "POST", "-H", &format!("Authorization: Bearer {TOKEN}")[..], &drain_url[..]], "a drain"),
        (vec![&format!("http://{METRICS}/api/auth")[..]], "the token check"),
    ] {
        let code = curl_code(&topo.lb.ns, &args);
        assert_eq!(code, "404", "{what} without web_admin_token in the config");
    }
    browser
        .wait(PAGE_LAG, |b| {
            let state = b.execute(
                "return [document.getElementById('admin').hidden, document.body.classList.contains('unlocked')]",
                &[],
            );
            (state == serde_json::json!([true, false])).then_some(()).ok_or(format!("admin hidden, unlocked: {state}"))
        })
        .unwrap_or_else(|e| fail(format!("the page still offers actions without the token: {e}")));
    let metrics = curl(&topo.lb.ns, &[&format!("http://{METRICS}/metrics")]);
    assert!(
        metrics.lines().any(|l| l.starts_with("lb_vip_packets_total{vip=\"web\"")),
        "/metrics lost the VIP's series:\n{metrics}"
    );
    let log = std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default();
    assert!(!log.contains(TOKEN), "lbd logged the token:\n{log}");
    eprintln!(
        "without the token: write routes 404, the page read-only; /metrics answers; the log holds no token"
    );

    drop(browser);
    let left = processes_naming(&browser_dir);
    assert!(left.is_empty(), "chromedriver or Chromium processes left running: {left:?}");
    eprintln!("passed in {:.2?}", t0.elapsed());
}

/// A VIP as the page shows it.
#[derive(Debug)]
struct PageVip {
    name: String,
    service: String,
    backends: Vec<PageBackend>,
}

#[derive(Debug)]
struct PageBackend {
    address: String,
    /// The state badge: active, drained, weight 0.
    state: String,
    /// The health badge: up, down, no check.
    health: String,
    /// The row is marked down.
    down: bool,
}

fn page_vips(b: &Browser) -> Vec<PageVip> {
    let found = b.execute(
        "return [...document.querySelectorAll('details.vip')].map(d => ({ \
           name: d.dataset.vip, service: d.querySelector('.svc').textContent, \
           backends: [...d.querySelectorAll('tr[data-backend]')].map(tr => ({ \
             address: tr.dataset.backend, \
             state: tr.querySelector('td[data-label=State] .badge').textContent, \
             health: tr.querySelector('td[data-label=Health] .badge').textContent, \
             down: tr.classList.contains('down') })) }))",
        &[],
    );
    let text =
        |v: &Value, key: &str| v[key].as_str().unwrap_or_else(|| panic!("no {key} in {found}")).to_owned();
    found
        .as_array()
        .unwrap_or_else(|| panic!("the page's VIPs: {found}"))
        .iter()
        .map(|v| PageVip {
            name: text(v, "name"),
            service: text(v, "service"),
            backends: v["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| PageBackend {
                    address: text(b, "address"),
                    state: text(b, "state"),
                    health: text(b, "health"),
                    down: b["down"] == true,
                })
                .collect(),
        })
        .collect()
}

/// The latest value a chart shows for a series (its legend, while no cursor is over it).
fn latest(b: &Browser, chart: &str, series: &str) -> Option<f64> {
    let v = b.execute(
        "const e = document.querySelector(`[data-chart=\"${arguments[0]}\"] [data-series=\"${arguments[1]}\"]`); \
         return e ? e.dataset.value : null",
        &[chart.into(), series.into()],
    );
    v.as_str().and_then(|s| s.parse().ok())
}

/// `web`'s packets/s as `lbctl stats` shows it (rates over 1 s).
fn lbctl_pps(lbd: &Lbd) -> Result<f64, String> {
    let table = lbd.lbctl_ok(&["stats"]);
    // The VIP's row: web, service, then (its empty state and health cells left out) PKT/S.
    let row = table.lines().find(|l| l.starts_with("web ")).ok_or(format!("no web row in:\n{table}"))?;
    let cell = row.split_whitespace().nth(2).ok_or(format!("a short row: {row}"))?;
    si(cell).ok_or(format!("{cell:?} is not a rate: {row}"))
}

/// The page's Flow table tile says what `lbctl status` says once lbd's census has seen the
/// traffic's flows: the share of entries active flows hold (its value, red past half), the
/// active flows, the flows, how full, the unconfirmed ones (the census is every 10 s: the tries
/// span two). The traffic flows throughout: that census counts some active.
fn check_flow_table_tile(browser: &Browser, lbd: &Lbd) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..14 {
        let status: serde_json::Value = serde_json::from_str(&lbd.lbctl_ok(&["--json", "status"]))
            .map_err(|e| format!("lbctl --json status: {e}"))?;
        let fill = &status["flow_table"];
        let count = |name: &str| fill[name].as_u64();
        let (Some(entries), Some(confirmed), Some(active), Some(unconfirmed)) =
            (count("entries"), count("confirmed"), count("active"), count("unconfirmed"))
        else {
            return Err(format!("no census in lbctl status: {status}"));
        };
        let flows = confirmed + unconfirmed;
        let pct = |n: u64| format!("{:.1}", 100.0 * n as f64 / entries as f64);
        // The page polls every second.
        std::thread::sleep(Duration::from_millis(1500));
        // One script: the page re-renders its tiles every second (a found element goes stale).
        let read = browser.execute(
            "const t = document.querySelector(\"[data-tile='Flow table']\"); \
             return t ? [t.querySelector('.value').textContent, t.querySelector('.note')?.textContent ?? '', \
             t.classList.contains('bad')] : null",
            &[],
        );
        let (Some(value), Some(note), Some(red)) = (read[0].as_str(), read[1].as_str(), read[2].as_bool())
        else {
            return Err(format!("no Flow table tile: {read}"));
        };
        let text = format!("{value} ({note}){}", if red { ", red" } else { "" });
        // "0.3% active", "391 active (a packet in the last 2 s) · 2.97k flows, 2.3% full, 0
        // unconfirmed" (counts in k, M past 999).
        let parsed = (|| {
            let share = value.strip_suffix("% active")?;
            let (shown_active, rest) = note.split_once(" active (a packet in the last 2 s) · ")?;
            let (rest, shown_unconfirmed) = rest.strip_suffix(" unconfirmed")?.rsplit_once(", ")?;
            let (shown_flows, full) = rest.split_once(" flows, ")?;
            Some((
                share,
                si(shown_active)?,
                si(shown_flows)?,
                full.strip_suffix("% full")?,
                si(shown_unconfirmed)?,
            ))
        })();
        let near = |shown: f64, n: u64| (shown - n as f64).abs() <= 0.01 * shown;
        let agree = parsed.is_some_and(|(share, a, f, full, u)| {
            share == pct(active)
                && near(a, active)
                && near(f, flows)
                && full == pct(flows)
                && near(u, unconfirmed)
        });
        if agree && confirmed > 0 && active > 0 && red == (2 * active > entries) {
            eprintln!("the Flow table tile says {text:?}, as lbctl status");
            return Ok(());
        }
        last = format!(
            "the tile says {text:?}; lbctl status: {}% active, {active} active, {flows} flows, {}% full, \
             {unconfirmed} unconfirmed",
            pct(active),
            pct(flows)
        );
    }
    Err(format!("the Flow table tile and lbctl status disagree (or no census saw active flows): {last}"))
}

/// "1.23k" -> 1230.
fn si(text: &str) -> Option<f64> {
    let (number, scale) = split_unit(text);
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// "1.23k" -> ("1.23", 1000).
fn split_unit(text: &str) -> (&str, f64) {
    let scale = match text.chars().last() {
        Some('k') => 1e3,
        Some('M') => 1e6,
        Some('G') => 1e9,
        Some('T') => 1e12,
        _ => return (text, 1.0),
    };
    (&text[..text.len() - 1], scale)
}

/// A rate as a person reads it: at most three digits before the point, a k, M, G or T for more
/// ("1.24k", "750k", "12"; not "1240").
fn with_units(text: &str) -> bool {
    let (number, _) = split_unit(text);
    number.parse::<f64>().is_ok_and(|n| n < 1000.0)
}

/// From a document of another site, `http://localhost:9100/metrics` (another origin and site
/// than the page's `http://127.0.0.1:9100`; served without the page's Content-Security-Policy,
/// which would stop the requests before they leave), the browser tries to drain `address`: a
/// plain POST, which the browser sends and lbd refuses (it logs why), and one with the token,
/// which needs a CORS preflight that lbd never grants, so the browser does not send it. Neither
/// answer is readable there, and the backend stays active.
fn cross_site_refused(browser: &Browser, lbd: &Lbd, log: &Path, address: &str) -> Result<(), String> {
    let other_site = METRICS.replace("127.0.0.1", "localhost");
    browser.goto(&format!("http://{other_site}/metrics"));
    let url = format!("http://{METRICS}/api/vips/web/backends/{address}/drain");
    // A returned promise is awaited by WebDriver.
    let tried = browser.execute(
        "const attempt = (init) => fetch(arguments[0], init) \
           .then(r => `answered ${r.status}`, e => `failed: ${e.message}`); \
         return Promise.all([attempt({ method: 'POST' }), \
           attempt({ method: 'POST', headers: { Authorization: `Bearer ${arguments[1]}` } })])",
        &[url.into(), TOKEN.into()],
    );
    let failed = tried
        .as_array()
        .is_some_and(|a| a.iter().all(|r| r.as_str().is_some_and(|r| r.starts_with("failed"))));
    if !failed {
        return Err(format!("another site's page read lbd's answers to its drains: {tried}"));
    }
    let refusal = format!("a request from another site (Origin http://{other_site})");
    let deadline = Instant::now() + PAGE_LAG;
    while !std::fs::read_to_string(log).unwrap_or_default().contains(&refusal) {
        if Instant::now() > deadline {
            return Err(format!("lbd's log does not say it refused {refusal:?} (the browser said {tried})"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let list = lbd.lbctl_ok(&["--json", "backend", "list", "web"]);
    let list: Value = serde_json::from_str(&list).expect("JSON");
    if list.as_array().into_iter().flatten().any(|b| b["drained"] == true) {
        return Err(format!("a backend is drained after another site's attempts: {list}"));
    }
    eprintln!("another site's drains: the browser says {tried}; lbd logged {refusal:?}; nothing drained");
    Ok(())
}

/// A click on `vip`'s header folds its backends, which stay folded across the page's
/// refreshes (and the browser remembers); a second click unfolds them.
fn fold_and_unfold(browser: &Browser, vip: &str) -> Result<(), String> {
    let summary = browser.find(&format!("details.vip[data-vip={vip}] > summary")).ok_or("no header")?;
    let state = || {
        browser.execute(
            "const d = document.querySelector(`details.vip[data-vip=\"${arguments[0]}\"]`); \
             return [d.open, d.querySelector('table.backends').checkVisibility(), \
               localStorage.getItem(`lbd.open.${arguments[0]}`)]",
            &[vip.into()],
        )
    };
    // The browser remembers on the `toggle` event, which comes after the click.
    let becomes = |want: Value, after: &str| {
        browser.wait(Duration::from_secs(1), |_| {
            let now = state();
            (now == want).then_some(()).ok_or(format!("{after}: [open, backends shown, remembered] = {now}"))
        })
    };
    let live = || browser.text(&browser.find("#live").expect("the live label"));
    browser.click(&summary);
    becomes(serde_json::json!([false, false, "0"]), "after a click")?;
    // The next refresh leaves it folded.
    let before = live();
    browser
        .wait(Duration::from_secs(3), |_| (live() != before).then_some(()).ok_or("no refresh".to_string()))?;
    becomes(serde_json::json!([false, false, "0"]), "after a refresh")?;
    browser.click(&summary);
    becomes(serde_json::json!([true, true, "1"]), "after a second click")?;
    eprintln!("{vip}'s backends fold with a click, stay folded across a refresh, unfold with another");
    Ok(())
}

/// `lbctl backend drain` shows on the page within [`PAGE_LAG`]; undrained again after.
fn check_drain_shows(browser: &Browser, lbd: &Lbd, address: &str) -> Result<(), String> {
    let state = |b: &Browser| {
        let web = page_vips(b).into_iter().find(|v| v.name == "web").ok_or("no web on the page")?;
        web.backends
            .into_iter()
            .find(|x| x.address == address)
            .map(|x| x.state)
            .ok_or("no such row".to_string())
    };
    lbd.lbctl_ok(&["backend", "drain", "web", address]);
    let t = Instant::now();
    browser
        .wait(PAGE_LAG, |b| state(b).and_then(|s| (s == "drained").then_some(()).ok_or(format!("state {s}"))))
        .map_err(|e| format!("`lbctl backend drain web {address}` does not show on the page: {e}"))?;
    eprintln!("lbctl backend drain web {address}: drained on the page after {:.2?}", t.elapsed());
    lbd.lbctl_ok(&["backend", "undrain", "web", address]);
    browser
        .wait(PAGE_LAG, |b| state(b).and_then(|s| (s == "active").then_some(()).ok_or(format!("state {s}"))))
        .map_err(|e| format!("the undrain of {address} does not show on the page: {e}"))
}

/// Refusals without the right token, then the page unlocked, its Drain button clicked for
/// `address` and a weight of 50 set for `weighed`.
fn act_from_the_page(
    browser: &Browser,
    lbd: &Lbd,
    ns: &Netns,
    address: &str,
    weighed: &str,
) -> Result<(), String> {
    let url = format!("http://{METRICS}/api/vips/web/backends/{address}/drain");
    for (token, site, want, what) in [
        ("Authorization: Bearer wrong-token-0123456789abcdef", "", "401", "a wrong token"),
        ("X-No-Token: 1", "", "401", "no token"),
        (&format!("Authorization: Bearer {TOKEN}")[..], "Origin: http://evil.example", "403", "another site"),
        (
            &format!("Authorization: Bearer {TOKEN}")[..],
            "Sec-Fetch-Site: cross-site",
            "403",
            "a browser's cross-site mark",
        ),
    ] {
        let mut args = vec!["-X", "POST", "-H", token];
        if !site.is_empty() {
            args.extend(["-H", site]);
        }
        args.push(&url);
        let code = curl_code(ns, &args);
        if code != want {
            return Err(format!("a drain with {what} answered {code}, want {want}"));
        }
    }
    let backend = |lbd: &Lbd, address: &str| -> Value {
        let list: Value =
            serde_json::from_str(&lbd.lbctl_ok(&["--json", "backend", "list", "web"])).expect("JSON");
        list.as_array().into_iter().flatten().find(|b| b["address"] == address).cloned().unwrap_or_default()
    };
    let drained = |lbd: &Lbd| backend(lbd, address)["drained"] == true;
    if drained(lbd) {
        return Err(format!("{address} is drained before the page drains it"));
    }
    browser.click(&browser.find("#lock").ok_or("no unlock button: the page offers no actions")?);
    browser.type_text(&browser.find("#token").ok_or("no token field")?, TOKEN);
    browser.click(&browser.find("#unlock").ok_or("no Unlock button")?);
    browser.wait(PAGE_LAG, |b| {
        let unlocked = b.execute("return document.body.classList.contains('unlocked')", &[]);
        (unlocked == true).then_some(()).ok_or("the page did not unlock with the token".to_string())
    })?;
    let button =
        format!("details.vip[data-vip=web] tr[data-backend=\"{address}\"] button[data-action=drain]");
    browser.click(&browser.find(&button).ok_or(format!("no Drain button for {address}"))?);
    let t = Instant::now();
    while !drained(lbd) {
        if t.elapsed() > PAGE_LAG {
            return Err(format!(
                "clicking Drain on the page did not drain {address} (lbctl backend list web)"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("the page's Drain button drained {address} (lbctl agrees after {:.2?})", t.elapsed());
    let said = browser.text(&browser.find("#toast").ok_or("no toast")?);
    if said != format!("web: drained {address}") {
        return Err(format!("the page says {said:?} after the drain"));
    }
    let row = format!("details.vip[data-vip=web] tr[data-backend=\"{weighed}\"]");
    let input =
        browser.find(&format!("{row} input[type=number]")).ok_or(format!("no weight field for {weighed}"))?;
    browser.clear(&input);
    browser.type_text(&input, "50");
    browser.click(&browser.find(&format!("{row} button[data-action=weight]")).ok_or("no Set weight button")?);
    let t = Instant::now();
    while backend(lbd, weighed)["weight"] != 50 {
        if t.elapsed() > PAGE_LAG {
            return Err(format!(
                "setting weight 50 on the page did not reach lbd: {}",
                backend(lbd, weighed)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("the page's Set weight gave {weighed} weight 50 (lbctl agrees after {:.2?})", t.elapsed());
    // Gone before the screenshots.
    browser.wait(Duration::from_secs(5), |b| {
        let shown = b.execute("return document.getElementById('toast').classList.contains('show')", &[]);
        (shown == false).then_some(()).ok_or("the toast stays".to_string())
    })?;
    Ok(())
}

/// `/api/status` and `/api/samples` as the docs describe them, with the state the test made
/// (b1 active, b2 drained from the page, b3 down); saved to `target/status-page/` for a look.
fn check_json(ns: &Netns, addrs: &[String]) -> Result<(), String> {
    let dir = target_dir().join("status-page");
    std::fs::create_dir_all(&dir).expect("JSON dir");
    let get = |path: &str| -> Result<Value, String> {
        let text = curl(ns, &[&format!("http://{METRICS}{path}")]);
        if let Some(name) = path.strip_prefix("/api/").filter(|p| !p.contains('?')) {
            std::fs::write(dir.join(format!("{name}.json")), &text).expect("write the JSON");
        }
        serde_json::from_str(&text).map_err(|e| format!("{path}: {e}: {text:.300}"))
    };
    let status = get("/api/status")?;
    let web = &status["vips"][0];
    let backends = web["backends"].as_array().ok_or(format!("no backends in {web}"))?;
    let states: Vec<(&str, bool, &str)> = backends
        .iter()
        .map(|b| {
            (b["address"].as_str().unwrap_or(""), b["drained"] == true, b["health"].as_str().unwrap_or(""))
        })
        .collect();
    let want = [
        (addrs[0].as_str(), false, "up"),
        (addrs[1].as_str(), true, "up"),
        (addrs[2].as_str(), false, "down"),
    ];
    let shares: f64 = backends.iter().filter_map(|b| b["share"].as_f64()).sum();
    if status["admin"] != true
        || web["name"] != "web"
        || web["scheduler"] != "least-conn"
        || states != want
        || (shares - 1.0).abs() > 0.01
        || !web["rates"]["pps"].as_f64().is_some_and(|p| p > 0.0)
        || backends[0]["next_hop"]["hops"][0]["interface"] != "eth0"
        || status["host"]["interfaces"] != serde_json::json!(["eth0"])
        || status["host"]["xdp"] != serde_json::json!([{"interface": "eth0", "mode": "native"}])
    {
        return Err(format!(
            "/api/status does not say what the test did ({states:?}, shares {shares}): {status}"
        ));
    }
    let samples = get("/api/samples")?;
    let n = samples["t"].as_array().map_or(0, Vec::len);
    let web = &samples["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "web")
        .cloned()
        .unwrap_or_default();
    let aligned = ["pps", "bps", "fps"].iter().all(|m| web[*m].as_array().map(Vec::len) == Some(n))
        && web["backends"]
            .as_array()
            .is_some_and(|b| b.len() == 3 && b.iter().all(|b| b["pps"].as_array().map(Vec::len) == Some(n)))
        && samples["drops"]
            .as_array()
            .is_some_and(|d| d.iter().all(|d| d["pps"].as_array().map(Vec::len) == Some(n)));
    if n < 5 || samples["window"] != 900 || !aligned {
        return Err(format!("/api/samples: {n} samples, or columns not aligned with t: {samples:.600}"));
    }
    let last = samples["t"][n - 1].as_f64().unwrap_or(0.0);
    let newer = get(&format!("/api/samples?after={last}"))?;
    if newer["t"].as_array().is_none_or(|t| t.iter().any(|t| t.as_f64() <= Some(last))) {
        return Err(format!("/api/samples?after={last} holds older samples: {newer}"));
    }
    eprintln!("/api/status and /api/samples ({n} samples) say what the page shows: {}", dir.display());
    Ok(())
}

/// Laptop (light and dark) and phone screenshots of the whole page into
/// `target/status-page/`; the light laptop one into docs/images/ too with
/// `LB_DOCS_SCREENSHOT=1`. The dark one proves the page follows the system's scheme.
fn screenshots(browser: &Browser) -> Result<(), String> {
    let dir = target_dir().join("status-page");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let background = || browser.execute("return getComputedStyle(document.body).backgroundColor", &[]);
    let light = background();
    for (name, (width, height), dark) in
        [("laptop", LAPTOP, false), ("laptop-dark", LAPTOP, true), ("phone", PHONE, false)]
    {
        browser.prefer_dark(dark);
        if dark && background() == light {
            return Err(format!(
                "the page keeps its light background ({light}) when the system prefers dark"
            ));
        }
        browser.set_window_size(width, height);
        // Laid out at the new width, then a window whose viewport is as tall as the page (the
        // window is taller than its viewport), scrolled to the top (clicks scrolled it).
        std::thread::sleep(Duration::from_millis(300));
        let sizes = browser.execute(
            "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]",
            &[],
        );
        let (page, frame) = (sizes[0].as_u64().unwrap_or(0), sizes[1].as_u64().unwrap_or(0));
        browser.set_window_size(width, (page + frame).clamp(u64::from(height), 4000) as u32);
        browser.execute("window.scrollTo(0, 0)", &[]);
        std::thread::sleep(Duration::from_millis(1200));
        let overflow = browser.execute(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]",
            &[],
        );
        if overflow[0].as_u64() > overflow[1].as_u64() {
            return Err(format!(
                "at {width} px the page is wider than the window: [scroll, client] = {overflow}"
            ));
        }
        let png = browser.screenshot();
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).expect("write the screenshot");
        eprintln!("screenshot ({name}, {width} px wide): {}", path.display());
        if name == "laptop" && std::env::var_os("LB_DOCS_SCREENSHOT").is_some() {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/images");
            std::fs::create_dir_all(&docs).expect("docs/images");
            let docs = docs.join("status-page.png");
            std::fs::write(&docs, &png).expect("write the docs' screenshot");
            eprintln!("and {}", docs.display());
        }
    }
    browser.set_window_size(LAPTOP.0, LAPTOP.1);
    Ok(())
}

/// The target directory this test was built in (its binary is in target/<profile>/deps).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("target/<profile>/deps/<test>").to_owned()
}

/// One exchange per connection, one connection every TRAFFIC_GAP, until `stop` (or the bound):
/// (connections, failures).
fn connections(server: SocketAddr, stop: &AtomicBool) -> (usize, usize) {
    let start = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    while !stop.load(Ordering::Relaxed) && start.elapsed() < TRAFFIC_MAX_TIME {
        match echo::tcp_exchange(server, b"status page", Duration::from_secs(1)) {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
        std::thread::sleep(TRAFFIC_GAP);
    }
    (ok, failed)
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// `curl -sS ARGS` inside `ns`; its output.
fn curl(ns: &Netns, args: &[&str]) -> String {
    let out = ns.command("curl").args(["-sS", "--max-time", "5"]).args(args).output().expect("run curl");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The HTTP status code curl gets for `args`.
fn curl_code(ns: &Netns, args: &[&str]) -> String {
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend(args);
    curl(ns, &all)
}

/// Processes whose command line names `marker`.
fn processes_naming(marker: &Path) -> Vec<String> {
    let marker = marker.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&marker) {
            found.push(format!("{}: {cmdline:.120}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
