//! `cargo xtask demo`: starts lbd in a throw-away network namespace, shows the balancer attached
//! and ordinary traffic still flowing through it, stops lbd and removes everything.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    bins::{self, Running},
    netns::{veth, Netns},
};

fn main() {
    let client = Netns::new("demo-client");
    let lb = Netns::new("demo-lb");
    veth((&client, "eth0"), (&lb, "eth0"));
    client.addr("eth0", "198.18.0.1/24");
    lb.addr("eth0", "198.18.0.2/24");
    println!("created namespaces {} and {} joined by a veth pair", client.name(), lb.name());

    let lbd = Running::spawn(lb.command(bins::path("lbd")).args(["--interface", "eth0"]));
    let attached = wait_for(|| xdp_line(&lb)).expect("lbd did not attach within 10 s");
    println!("lbd attached the balancer to eth0 in {}:\n    {attached}", lb.name());

    let server: SocketAddr = "198.18.0.2:7000".parse().unwrap();
    let listener = lb.run(|| TcpListener::bind(server)).expect("bind");
    let echo = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(&buf).unwrap();
    });
    let mut conn =
        client.run(|| TcpStream::connect_timeout(&server, Duration::from_secs(5))).expect("connect");
    conn.write_all(b"ping").unwrap();
    let mut reply = [0u8; 4];
    conn.read_exact(&mut reply).unwrap();
    echo.join().unwrap();
    println!("a TCP connection from the client to {server} echoed {:?}: traffic for no VIP passes", "ping");

    let status = lbd.terminate();
    let still = xdp_line(&lb);
    println!(
        "SIGTERM: lbd exited ({status}); balancer {}",
        if still.is_some() { "STILL attached" } else { "detached" }
    );
    drop((client, lb));
    println!("namespaces removed");
}

/// The `prog/xdp` line of `ip link show eth0`, if a program is attached.
fn xdp_line(ns: &Netns) -> Option<String> {
    let out = ns.ip(&["-d", "link", "show", "eth0"]);
    out.contains("xdp").then(|| out.lines().find(|l| l.contains("prog/xdp")).unwrap_or("").trim().to_owned())
}

fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
