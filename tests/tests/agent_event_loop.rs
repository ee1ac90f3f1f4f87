//! Walks of the flow table (the census every 10 s, with its least-conn recount) run beside lbd's
//! event loop, not
//! in it: while one walks a million flows, the loop still moves the data plane's cache
//! generation every second (and would take health events and SIGTERM), and `lbctl status`
//! shows how late the loop ran. Nor does an API client that stalls hold SIGTERM.
use std::time::{Duration, Instant};

use lb_tests::{
    flows::fill_counted_flows,
    lbd::{lb_namespace, map_snapshot, Lbd, LbdFiles},
};
use lb_userspace::agent::SavedState;

const FLOWS: u32 = 1 << 20;
/// The flow table's entries: two for each flow (at half full, next to no flow finds both its
/// sets full).
const TABLE: u32 = 2 * FLOWS;
/// The cache generation moves every second; a stalled loop shows as a longer gap.
const LONGEST_GAP: Duration = Duration::from_millis(1500);

#[test]
fn a_least_conn_recount_of_a_million_flows_does_not_stall_the_event_loop() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files
        .header(&["eth0"], "198.18.0.2", "fd00::2")
        .replace("flows = 131072", &format!("flows = {TABLE}"));
    let vip = "[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\
               scheduler = \"least-conn\"\nring_size = 1009\n\n  [[vip.backend]]\n  address = \"198.18.0.11\"\n";
    let lbd = Lbd::start(&ns, &files, &format!("{header}{vip}"));
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    let state = SavedState::read(&files.dir.join("state.json")).unwrap().expect("a saved state");
    let backend = state.ids.backend("web", "198.18.0.11".parse().unwrap()).expect("a backend id");
    let written = fill_counted_flows(&pins, state.ids.vips["web"], backend, FLOWS, [198, 18, 100, 1]);
    assert!(written >= FLOWS / 100 * 99, "only {written} of {FLOWS} flows written into a table of {TABLE}");

    // The next recount (every 10 s) finds the million connections and corrects the count.
    let log = files.dir.join("lbd.log");
    let corrected =
        || std::fs::read_to_string(&log).unwrap_or_default().contains("corrected a backend's count");
    let generation = || map_snapshot(&pins, 1).cache_generation;
    let (mut last, mut since, mut longest) = (generation(), Instant::now(), Duration::ZERO);
    let started = Instant::now();
    let mut done_at = None;
    while done_at.is_none_or(|t: Instant| t.elapsed() < LONGEST_GAP) {
        assert!(started.elapsed() < Duration::from_secs(40), "no recount corrected the count within 40 s");
        let now = generation();
        if now != last {
            longest = longest.max(since.elapsed());
            (last, since) = (now, Instant::now());
        }
        if done_at.is_none() && corrected() {
            done_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    longest = longest.max(since.elapsed());
    assert!(
        longest < LONGEST_GAP,
        "the event loop stalled: the cache generation did not move for {longest:?} during a recount of {written} flows"
    );
    let status: serde_json::Value = serde_json::from_str(&lbd.lbctl_ok(&["--json", "status"])).unwrap();
    let lag =
        status["event_loop_lag_max_seconds"].as_f64().expect("event_loop_lag_max_seconds in the status");
    assert!(lag < 0.5, "the event loop ran up to {lag} s late: {status}");
}

/// A client that holds an API connection open with half a request (a stalled script, a
/// forgotten `nc -U`) must not hold lbd's stop: SIGTERM ends lbd within a few seconds.
#[test]
fn a_stalled_api_client_does_not_hold_the_stop() {
    use std::io::Write as _;
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let mut lbd = Lbd::start(&ns, &files, &files.header(&["eth0"], "198.18.0.2", "fd00::2"));
    let mut stalled = std::os::unix::net::UnixStream::connect(files.socket()).expect("connect to the API");
    stalled.write_all(b"GET /v1/status HTTP/1.1\r\n").expect("half a request");
    std::thread::sleep(Duration::from_millis(200));
    let pid = lbd.process.child.id() as libc::pid_t;
    // SAFETY: signals the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = lbd.process.child.try_wait().expect("wait for lbd") {
            break status;
        }
        let log = std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "lbd still runs 10 s after SIGTERM, held by a stalled client:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "lbd exited with {status}");
    drop(stalled);
}

/// The other side: lbctl against an lbd that takes the connection and never answers (stuck)
/// reports it within `--wait` (exit 3, lbd unreachable) instead of waiting without end.
#[test]
fn lbctl_gives_up_on_an_lbd_that_does_not_answer() {
    let dir = std::env::temp_dir().join(format!("lbctl-wait-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("stuck.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let held = std::thread::spawn(move || listener.accept().map(|(conn, _)| conn));
    let started = Instant::now();
    let mut lbctl = lb_tests::bins::Running::spawn(
        std::process::Command::new(lb_tests::bins::path("lbctl"))
            .args(["--socket", socket.to_str().unwrap(), "--wait", "1", "status"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    let status = loop {
        if let Some(status) = lbctl.child.try_wait().expect("wait for lbctl") {
            break status;
        }
        // (Dropping `lbctl` kills it.)
        assert!(started.elapsed() < Duration::from_secs(10), "lbctl still waits for a stuck lbd after 10 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(lbctl.child.stderr.as_mut().expect("stderr"), &mut stderr).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status.code(), Some(3), "lbctl against a stuck lbd: {stderr}");
    assert!(stderr.contains("did not answer within 1 s"), "{stderr}");
    drop(held);
}
