//! The balancer attached in native mode to a real veth leaves ordinary traffic working, and the
//! namespace kit cleans up after itself even when a test panics.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use lb_common::Counter;
use lb_tests::netns::{veth, Netns};
use lb_userspace::datapath::{self, Mode};

const LB4: &str = "198.18.0.2";
const LB6: &str = "fd00::2";

/// client ── veth ── lb (balancer attached natively on lb's end; no VIPs configured).
#[test]
fn tcp_through_attached_balancer_still_works() {
    let client = Netns::new("client");
    let lb = Netns::new("lb");
    veth((&client, "eth0"), (&lb, "eth0"));
    client.addr("eth0", "198.18.0.1/24");
    client.addr("eth0", "fd00::1/64");
    lb.addr("eth0", &format!("{LB4}/24"));
    lb.addr("eth0", &format!("{LB6}/64"));

    let mut dp = datapath::load().expect("load");
    lb.run(|| dp.attach(datapath::BALANCER, "eth0", Mode::Native)).expect("attach in native mode");
    let shown = lb.ip(&["link", "show", "eth0"]);
    assert!(shown.contains("xdp "), "not attached in native (driver) mode: {shown}");

    for server in [format!("{LB4}:7000"), format!("[{LB6}]:7000")] {
        let server: SocketAddr = server.parse().unwrap();
        let listener = lb.run(|| TcpListener::bind(server)).expect("bind");
        let echo = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).expect("read");
            conn.write_all(&buf).expect("write");
        });
        let mut conn = client
            .run(|| TcpStream::connect_timeout(&server, Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("connect to {server} through the balancer: {e}"));
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"hello").unwrap();
        let mut reply = [0u8; 5];
        conn.read_exact(&mut reply).expect("echo reply");
        assert_eq!(&reply, b"hello");
        echo.join().unwrap();
    }
    // The program really saw the traffic: TCP segments as not-for-a-VIP, ARP as not IP.
    let not_vip = dp.counter(Counter::PassNotVip).unwrap();
    assert!(not_vip >= 6, "balancer saw only {not_vip} non-VIP packets");
    assert!(dp.counter(Counter::PassNotIp).unwrap() >= 1, "balancer saw no ARP");
    assert_eq!(dp.counter(Counter::PassMalformed).unwrap(), 0);
}

#[test]
fn namespaces_are_removed_even_when_a_test_panics() {
    let mut name = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let a = Netns::new("a");
        let b = Netns::new("b");
        veth((&a, "eth0"), (&b, "eth0"));
        name = a.name().to_owned();
        panic!("a test failing half way");
    }));
    assert!(result.is_err());
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!name.is_empty() && !list.contains(&name), "{name} is still there: {list}");
}
