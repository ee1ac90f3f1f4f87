//! Every backend of a VIP failing its health check while still serving (a broken check, or the
//! network towards the checks): the VIP fails open over every backend in service, evenly, not
//! over the last backend that happened to fail.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    echo::{tcp_exchange, EchoServer, Proto},
    lbd::LbdFiles,
    topology::{vip, Family, Topology},
};

const PORT: u16 = 80;
const CHECK_PORT: u16 = 8081;
const CONNECTIONS: usize = 300;

#[test]
fn all_backends_down_fail_open_spreads_new_flows_over_every_backend() {
    let topo = Topology::new(3);
    let files = LbdFiles::new();
    let _passthrough = topo.start_lb_port_passthrough();
    let _backend_hosts = topo.start_backend_hosts();
    let mut config = format!(
        "[[vip]]\nname = \"web\"\naddress = \"{}\"\nport = {PORT}\nprotocol = \"tcp\"\nring_size = 4099\n\n\
         [vip.health]\ntype = \"tcp\"\nport = {CHECK_PORT}\ninterval_ms = 200\ntimeout_ms = 100\nrise = 2\nfall = 2\n",
        vip(Family::V4, 1)
    );
    for b in &topo.backends {
        config += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", b.v4);
    }
    let lbd = topo.start_lbd(&files, &config);
    let service = SocketAddr::new(vip(Family::V4, 1), PORT);
    let servers: Vec<EchoServer> =
        topo.backends.iter().map(|b| EchoServer::start(&b.ns, Proto::Tcp, service)).collect();
    let checks: Vec<EchoServer> = topo
        .backends
        .iter()
        .map(|b| EchoServer::start(&b.ns, Proto::Tcp, SocketAddr::new(IpAddr::V4(b.v4), CHECK_PORT)))
        .collect();
    let health = || -> Vec<String> {
        let out = lbd.lbctl_ok(&["--json", "backend", "list", "web"]);
        let list: serde_json::Value = serde_json::from_str(&out).expect("backend list JSON");
        list.as_array().unwrap().iter().map(|b| b["health"].as_str().unwrap().to_owned()).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !checks.iter().all(|c| c.peers().len() >= 2) {
        assert!(Instant::now() < deadline, "the health checks did not reach every backend");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(health(), ["up", "up", "up"]);

    // Only the check port goes: the service port stays open.
    drop(checks);
    let deadline = Instant::now() + Duration::from_secs(10);
    while health() != ["down", "down", "down"] {
        assert!(Instant::now() < deadline, "the backends did not all go down: {:?}", health());
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut served: BTreeMap<usize, usize> = BTreeMap::new();
    topo.client.ns.run(|| {
        for i in 0..CONNECTIONS {
            let local = tcp_exchange(service, b"fail open", Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connection {i} through the VIP: {e}"));
            let by = servers.iter().position(|s| s.peers().contains(&local));
            *served.entry(by.expect("served by one of the backends")).or_default() += 1;
        }
    });
    for b in 0..topo.backends.len() {
        let n = served.get(&b).copied().unwrap_or(0);
        assert!(
            (60..=140).contains(&n),
            "with every backend down, b{} got {n} of {CONNECTIONS} new connections (a fair share is \
             about 100): {served:?}",
            b + 1
        );
    }
}
