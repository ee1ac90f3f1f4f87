//! The listener of `/metrics` and the status page, which anyone on the management network may
//! reach (lb-userspace/src/web/listener.rs), against a real lbd: a connection that sends half its
//! headers, or nothing, is closed after the header timeout; connections over the cap are closed
//! as they come while those held still serve; refused admin requests are logged a bounded number
//! of times, naming the client; an action's log line names its client too.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use lb_tests::lbd::{lb_namespace, Lbd, LbdFiles};

const ADDRESS: &str = "127.0.0.1:9100";
const TOKEN: &str = "s3cret-t0ken-for-the-page";
/// lb-userspace/src/web/listener.rs.
const MAX_CONNECTIONS: usize = 512;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

fn connect() -> TcpStream {
    let s = TcpStream::connect(ADDRESS).unwrap_or_else(|e| panic!("connecting to {ADDRESS}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends `request` on `s` and reads the answer until lbd closes the connection.
fn exchange(mut s: TcpStream, request: &str) -> String {
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

fn get(path: &str, token: &str) -> String {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {ADDRESS}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    exchange(connect(), &request)
}

/// Whether lbd closed `s` (end of stream, or a reset) within `limit`, whatever it sent first.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
    false
}

#[test]
fn the_page_listener_bounds_what_strangers_cost() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let config = format!(
        "metrics = \"{ADDRESS}\"\nweb_admin_token = \"{TOKEN}\"\n{}\
         [[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\n",
        files.header(&["eth0"], "198.18.0.2", "fd00::2")
    );
    std::fs::write(files.config(), config).unwrap();
    let lbd = Lbd::start_with(&ns, &files, &[]);
    let log = || std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default();
    ns.run(|| {
        // Half a request's headers, and nothing at all: both go after the header timeout.
        let started = Instant::now();
        let mut slow = connect();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
        let mut idle = connect();
        // Up to the cap, connections are held; the next one is closed at once.
        let held: Vec<TcpStream> = (2..MAX_CONNECTIONS).map(|_| connect()).collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut over = connect();
        assert!(closed_within(&mut over, Duration::from_secs(3)), "a connection over the cap was kept");
        // Those held still serve.
        let request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let answer = exchange(held[0].try_clone().unwrap(), request);
        assert!(answer.starts_with("HTTP/1.1 200"), "a held connection: {:?}", answer.lines().next());
        drop(held);
        std::thread::sleep(Duration::from_millis(300));
        assert!(get("/metrics", "-").starts_with("HTTP/1.1 200"), "after the held ones closed");
        for (what, s) in [("half a request", &mut slow), ("nothing", &mut idle)] {
            assert!(
                closed_within(s, HEADER_TIMEOUT + Duration::from_secs(5)),
                "a connection that sent {what} was kept"
            );
            let after = started.elapsed();
            assert!(
                after >= HEADER_TIMEOUT - Duration::from_secs(1),
                "a connection that sent {what} closed after {after:?}"
            );
        }
        // A client looping on a wrong token: every request refused, few lines in the log.
        for i in 0..300 {
            let answer = get("/api/auth", "wrong-token-wrong-token");
            assert!(answer.starts_with("HTTP/1.1 401"), "refusal {i}: {:?}", answer.lines().next());
        }
        let right = get("/api/auth", TOKEN);
        assert!(right.starts_with("HTTP/1.1 204"), "the right token: {:?}", right.lines().next());
        let drain = format!(
            "POST /api/vips/web/backends/198.18.0.11/drain HTTP/1.1\r\nHost: {ADDRESS}\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let answer = exchange(connect(), &drain);
        assert!(answer.starts_with("HTTP/1.1 200"), "the drain: {answer}");
    });
    let text = log();
    let refused: Vec<&str> = text.lines().filter(|l| l.contains("status page: refused")).collect();
    assert!(
        !refused.is_empty() && refused.len() <= 2,
        "300 refusals in a few seconds logged as:\n{}",
        refused.join("\n")
    );
    assert!(refused[0].contains("client=127.0.0.1:"), "the refusal names no client: {}", refused[0]);
    let taken = text.lines().find(|l| l.contains("status page: action taken")).expect("the drain logged");
    assert!(taken.contains("client=127.0.0.1:"), "the action names no client: {taken}");
    assert!(!text.contains(TOKEN), "the token is in the log");
    lbd.process.terminate();
}
