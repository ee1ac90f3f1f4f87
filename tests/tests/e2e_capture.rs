//! `lbctl capture`: a VIP's packets, as received and as sent to the backend, in a pcap file that
//! the real tcpdump reads.
use std::{net::SocketAddr, process::Command, time::Duration};

use lb_tests::{
    echo::{tcp_exchange, EchoServer, Proto},
    lbd::LbdFiles,
    topology::{vip, Family, Topology},
};

const PORT: u16 = 80;
const PACKETS: usize = 6;

const VIP: &str = r#"
[[vip]]
name = "web"
address = "198.18.100.1"
port = 80
protocol = "tcp"
ring_size = 4099
"#;

#[test]
fn capture_writes_packets_before_and_after_the_rewrite() {
    let topo = Topology::new(2);
    let files = LbdFiles::new();
    let _passthrough = topo.start_lb_port_passthrough();
    let _decap = topo.start_backend_hosts();
    let backends: String =
        topo.backends.iter().map(|b| format!("\n  [[vip.backend]]\n  address = \"{}\"\n", b.v4)).collect();
    let lbd = topo.start_lbd(&files, &format!("{VIP}{backends}"));
    let server = SocketAddr::new(vip(Family::V4, 1), PORT);
    let _servers: Vec<EchoServer> =
        topo.backends.iter().map(|b| EchoServer::start(&b.ns, Proto::Tcp, server)).collect();

    // Traffic in the background while lbctl waits for packets.
    let pcap = files.dir.join("web.pcap");
    let client = &topo.client.ns;
    let started = std::time::SystemTime::now();
    let out = std::thread::scope(|s| {
        let traffic = s.spawn(|| {
            client.run(|| {
                for _ in 0..40 {
                    tcp_exchange(server, b"capture me", Duration::from_secs(2))
                        .expect("exchange through the VIP");
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        });
        let out =
            lbd.lbctl(&["capture", "--vip", "web", "-c", &PACKETS.to_string(), "-w", pcap.to_str().unwrap()]);
        traffic.join().unwrap();
        out
    });
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lbctl capture failed: {said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(&format!("captured {PACKETS} of {PACKETS} packets")), "{said}");

    let ended = std::time::SystemTime::now();
    let read =
        Command::new("tcpdump").args(["-n", "-S", "-tt", "-r"]).arg(&pcap).output().expect("run tcpdump");
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(read.status.success(), "tcpdump -r failed: {}", String::from_utf8_lossy(&read.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * PACKETS, "one line per copy:\n{text}");
    // The balancer's own times, as times of day within the capture, in order; a packet's copy
    // as sent within a millisecond of its copy as received.
    let epoch = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let times: Vec<f64> = lines
        .iter()
        .map(|l| l.split_whitespace().next().and_then(|t| t.parse().ok()).expect("a time"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "copies out of order:\n{text}");
    assert!(
        times.iter().all(|&t| t >= epoch(started) - 0.001 && t <= epoch(ended) + 0.001),
        "times outside the capture ({:.6} to {:.6}):\n{text}",
        epoch(started),
        epoch(ended)
    );
    assert!(times.chunks(2).all(|p| p[1] - p[0] < 0.001), "a packet's copies far apart:\n{text}");
    let client_ip = topo.client.v4.to_string();
    let inner = format!("IP {client_ip}.");
    for pair in lines.chunks(2) {
        // As received: client -> VIP. As sent: the same packet in the balancer's tunnel
        // (outer source: the lb's address) to one of the backends.
        let received = &pair[0][pair[0].find(" IP ").expect("an IP packet")..];
        assert!(
            received.starts_with(&format!(" {inner}")) && received.contains("> 198.18.100.1.80:"),
            "{text}"
        );
        let to_backend = topo
            .backends
            .iter()
            .any(|b| pair[1].contains(&format!(" IP {} > {}: {}", topo.lb.v4, b.v4, &received[1..])));
        assert!(to_backend, "the second copy is not the first in a tunnel to a backend:\n{text}");
    }
    // Capture is off again: another capture can start and a stopped one costs nothing.
    let again =
        lbd.lbctl(&["capture", "--vip", "web", "-c", "1", "-w", pcap.to_str().unwrap(), "--timeout", "1"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("captured 0 of 1"), "capture did not stop");
    // For scripts: the figures, so that one cut short by its timeout shows.
    let json = lbd.lbctl_ok(&[
        "--json",
        "capture",
        "--vip",
        "web",
        "-c",
        "1",
        "-w",
        pcap.to_str().unwrap(),
        "--timeout",
        "1",
    ]);
    let figures: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!((figures["asked"].as_u64(), figures["captured"].as_u64()), (Some(1), Some(0)), "{json}");
}

/// lbd in `ns` with VIP `web` and one backend.
fn start_with_web(ns: &lb_tests::netns::Netns, files: &LbdFiles) -> lb_tests::lbd::Lbd {
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    lb_tests::lbd::Lbd::start(
        ns,
        files,
        &format!("{header}{VIP}\n  [[vip.backend]]\n  address = \"198.18.0.11\"\n"),
    )
}

/// Sends `POST /v1/capture` for `web` on a connection of its own, closed after the answer.
fn ask_for_capture(files: &LbdFiles, count: usize, timeout_ms: u64) -> std::os::unix::net::UnixStream {
    use std::io::Write as _;
    let mut client = std::os::unix::net::UnixStream::connect(files.socket()).expect("connect to the API");
    let body = format!(r#"{{"vip": "web", "count": {count}, "timeout_ms": {timeout_ms}}}"#);
    write!(
        client,
        "POST /v1/capture HTTP/1.1\r\nHost: lbd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    client
}

/// A capture whose client goes away (Ctrl-C on `lbctl capture`) must switch capture off at once:
/// left on, every packet of the VIP is copied twice and every later capture is refused.
#[test]
fn a_capture_whose_client_disconnects_is_switched_off() {
    let ns = lb_tests::lbd::lb_namespace();
    let files = LbdFiles::new();
    let lbd = start_with_web(&ns, &files);
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    let capture_vip = || lb_tests::lbd::map_snapshot(&pins, 1).config.capture_vip;

    let client = ask_for_capture(&files, 10, 60_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while capture_vip() == 0 {
        assert!(std::time::Instant::now() < deadline, "the capture did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The client goes away mid-capture.
    client.shutdown(std::net::Shutdown::Both).unwrap();
    drop(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while capture_vip() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "capture is still on 3 s after its client went away (CONFIG.capture_vip = {})",
            capture_vip()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pcap = files.dir.join("again.pcap");
    let again =
        lbd.lbctl(&["capture", "--vip", "web", "-c", "1", "-w", pcap.to_str().unwrap(), "--timeout", "1"]);
    let said =
        format!("{}{}", String::from_utf8_lossy(&again.stdout), String::from_utf8_lossy(&again.stderr));
    assert!(
        again.status.success() && said.contains("captured 0 of 1"),
        "a second capture was refused: {said}"
    );
    assert_eq!(capture_vip(), 0, "capture is on after the second one finished");
}

/// A capture asked for while another ends: it waits for the buffers a moment (one capture at a
/// time), gets them as the other finishes, and runs; it was refused (409) because the other had
/// let go of the buffers before it switched capture off.
#[test]
fn a_capture_asked_for_as_another_ends_runs() {
    use std::io::Read as _;
    let ns = lb_tests::lbd::lb_namespace();
    let files = LbdFiles::new();
    let _lbd = start_with_web(&ns, &files);
    // A capture of `timeout_ms` (no traffic: it runs that long): the answer's status line.
    let capture = |timeout_ms: u64| {
        let mut client = ask_for_capture(&files, 1, timeout_ms);
        // (The body is a pcap file: bytes, not text.)
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
    };
    for round in 0..4 {
        let (first, second) = std::thread::scope(|s| {
            let first = s.spawn(|| capture(500));
            // Asked 100 ms before the first ends: within the 200 ms it may wait for the buffers.
            std::thread::sleep(Duration::from_millis(400));
            let second = s.spawn(|| capture(200));
            (first.join().unwrap(), second.join().unwrap())
        });
        assert!(first.contains("200"), "round {round}: the first capture: {first}");
        assert!(second.contains("200"), "round {round}: the capture asked for as the first ended: {second}");
    }
}
