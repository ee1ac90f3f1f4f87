//! Full-size TCP segments through an `ipip` VIP when the links towards the backends have the
//! same MTU as the client's (1500, the usual case): with the tunnel header such a segment does
//! not fit, so the balancer answers it with ICMP "fragmentation needed" (IPv4) or "packet too
//! big" (IPv6) from the VIP, the client's path-MTU discovery lowers its segment size, and the
//! transfer completes. Real TCP connections, real kernels on both ends; lbd runs the balancer.
use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    echo::{tcp_connect, tcp_echo, EchoServer, Proto},
    lbd::LbdFiles,
    topology::{vip, Family, Topology},
};
use lb_userspace::agent::Stats;

const PORT: u16 = 8080;
/// Far more than one segment: the connection sends full-size segments for most of it.
const TRANSFER: usize = 256 * 1024;

fn counter(stats: &Stats, name: &str) -> u64 {
    stats
        .counters
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

#[test]
fn full_size_segments_through_an_ipip_vip_complete_by_path_mtu_discovery() {
    let topo = Topology::new(1);
    let files = LbdFiles::new();
    let _passthrough = topo.start_lb_port_passthrough();
    let _decap = topo.start_backend_hosts();
    let b = &topo.backends[0];
    let vips = format!(
        "[[vip]]\nname = \"v4\"\naddress = \"{}\"\nport = {PORT}\nprotocol = \"tcp\"\nmode = \"ipip\"\n\
         [[vip.backend]]\naddress = \"{}\"\n\n\
         [[vip]]\nname = \"v6\"\naddress = \"{}\"\nport = {PORT}\nprotocol = \"tcp\"\nmode = \"ipip\"\n\
         [[vip.backend]]\naddress = \"{}\"\n",
        vip(Family::V4, 1),
        b.v4,
        vip(Family::V6, 1),
        b.v6
    );
    let lbd = topo.start_lbd(&files, &vips);
    let payload: Vec<u8> = (0..TRANSFER).map(|i| (i * 7 + i / 1000) as u8).collect();
    for family in [Family::V4, Family::V6] {
        let server = SocketAddr::new(vip(family, 1), PORT);
        let _echo = EchoServer::start(&b.ns, Proto::Tcp, server);
        let before: Stats = serde_json::from_str(&lbd.lbctl_ok(&["--json", "stats"])).unwrap();
        let result = topo.client.ns.run(|| {
            let mut conn = tcp_connect(server, Duration::from_secs(3))?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            conn.set_write_timeout(Some(Duration::from_secs(10)))?;
            tcp_echo(&mut conn, &payload)
        });
        let after: Stats = serde_json::from_str(&lbd.lbctl_ok(&["--json", "stats"])).unwrap();
        let moved = |name| counter(&after, name) - counter(&before, name);
        if let Err(e) = result {
            panic!(
                "{family:?}: {TRANSFER} bytes through the VIP failed: {e}; icmp_too_big {}, drop_too_big {}\n{}",
                moved("icmp_too_big"),
                moved("drop_too_big"),
                std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default()
            );
        }
        assert!(moved("icmp_too_big") > 0, "{family:?}: no segment was too big: the test proves nothing");
        assert_eq!(moved("drop_too_big"), 0, "{family:?}: TCP segments carry DF");
    }
}
