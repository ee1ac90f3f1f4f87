//! Agent benchmark: how long lbd's event loop stalls while a least-conn recount walks a flow
//! table of a million flows.
//!
//! lbd runs in a namespace of its own (`lb_namespace`: nothing behind its interface) with one
//! least-conn VIP of one backend and a flow table of 2^21 entries (`limits.flows`: two for
//! each flow). The bench writes 2^20 open connections of that VIP and backend into the pinned
//! `FLOW_TABLE` as the data plane places them (the few whose two sets are full are skipped:
//! the figures name the count written), waits for lbd's next recount
//! (every 10 s) to find them and correct the backend's count, then reads from `lbctl status`
//! how late the event loop's 1-second tick ran at most since lbd started (the fill and the walk
//! included). Target: < 50 ms.
//!
//! ```sh
//! cargo build --release -p lb-userspace     # lbd and lbctl, next to this binary
//! sudo target/release/bench_agent
//! ```
//!
//! Prints human lines and a line `ROW|<section>|<case>|<value>|<unit>|<ratio>|<target>|<ok|MISS|->`
//! for `cargo xtask bench`. Needs root; removes what it creates on exit, also on panic.
use std::time::{Duration, Instant};

use lb_common::PIN_LAYOUT;
use lb_tests::{
    flows::fill_counted_flows,
    lbd::{lb_namespace, Lbd, LbdFiles},
};
use lb_userspace::agent::SavedState;

const FLOWS: u32 = 1 << 20;
/// The flow table's entries (`limits.flows`).
const TABLE: u32 = 2 * FLOWS;
const TARGET_MS: f64 = 50.0;
/// A recount (lbd's census of the table) comes every 10 s; the walk of a million flows takes
/// about 0.1 s, the fill a few seconds.
const RECOUNT_WAIT: Duration = Duration::from_secs(60);

fn main() {
    lb_tests::privilege::require_root();
    lb_tests::bins::stop_on_signals();
    println!("== lbd's event loop during a least-conn recount of {FLOWS} flows");
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files
        .header(&["eth0"], "198.18.0.2", "fd00::2")
        .replace("flows = 131072", &format!("flows = {TABLE}"));
    let vip = "[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\
               scheduler = \"least-conn\"\nring_size = 1009\n\n  [[vip.backend]]\n  address = \"198.18.0.11\"\n";
    let lbd = Lbd::start(&ns, &files, &format!("{header}{vip}"));
    let pins = files.pin_path.join(PIN_LAYOUT);
    let state = SavedState::read(&files.dir.join("state.json")).expect("the saved state").expect("saved");
    let backend = state.ids.backend("web", "198.18.0.11".parse().unwrap()).expect("a backend id");
    let lag = || -> (f64, f64) {
        let status: serde_json::Value =
            serde_json::from_str(&lbd.lbctl_ok(&["--json", "status"])).expect("status JSON");
        let field = |f: &str| status[f].as_f64().unwrap_or_else(|| panic!("no {f} in {status}")) * 1e3;
        (field("event_loop_lag_max_seconds"), field("event_loop_lag_recent_max_seconds"))
    };
    let (before, _) = lag();

    let t = Instant::now();
    let written = fill_counted_flows(&pins, state.ids.vips["web"], backend, FLOWS, [198, 18, 100, 1]);
    assert!(written >= FLOWS / 100 * 99, "only {written} of {FLOWS} flows written into a table of {TABLE}");
    println!(
        "wrote {written} flows into the pinned flow table of {TABLE} entries in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let log = files.dir.join("lbd.log");
    let t = Instant::now();
    let line = loop {
        assert!(!lb_tests::bins::stop_requested(), "interrupted");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // A recount that saw the whole fill (one that ran while it was being written saw less).
        let whole = |l: &&str| {
            let now = l.split("now=").nth(1).and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok());
            l.contains("corrected a backend's count") && now.is_some_and(|n| n >= written / 100 * 99)
        };
        if let Some(line) = text.lines().find(whole) {
            break line.to_owned();
        }
        assert!(t.elapsed() < RECOUNT_WAIT, "no recount corrected the count within {RECOUNT_WAIT:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The tick after the walk: its lag is in the figures.
    std::thread::sleep(Duration::from_millis(1100));
    let (max, recent) = lag();
    let walk_ms = line.split("walk_ms=").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("?");
    println!("recount: {line}");
    println!(
        "event loop lag: at most {max:.1} ms since lbd started (before the fill: {before:.1} ms; \
         last minute: {recent:.1} ms); the walk took {walk_ms} ms"
    );
    println!(
        "ROW|agent|agent stall during a least-conn recount at 1M flows (walk {walk_ms} ms)|{max:.1}|ms||< 50 ms|{}",
        if max < TARGET_MS { "ok" } else { "MISS" }
    );
}
