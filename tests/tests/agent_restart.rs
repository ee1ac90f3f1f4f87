//! What a restarted lbd keeps: the backends that were down start down (out of the ring from the
//! first moment, back after `rise` good checks) instead of taking new flows for interval × fall.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_tests::lbd::{lb_namespace, map_snapshot, Lbd, LbdFiles};
use lb_userspace::agent::SavedState;

const RING: u32 = 1009;

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_restarted_lbd_starts_the_down_backends_down() {
    let ns = lb_namespace();
    // 198.18.0.12 answers its checks (a local address, a listener); 198.18.0.11 does not exist
    // yet: its checks time out.
    ns.addr("eth1", "198.18.0.12/32");
    let _listener = ns.run(|| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080))).expect("listen");
    let files = LbdFiles::new();
    let vip = format!(
        "[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\nring_size = {RING}\n\n\
         [vip.health]\ntype = \"tcp\"\nport = 8080\ninterval_ms = 500\ntimeout_ms = 200\nrise = 2\nfall = 2\n\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\n\n[[vip.backend]]\naddress = \"198.18.0.12\"\n"
    );
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let lbd = Lbd::start(&ns, &files, &format!("{header}{vip}"));
    let pins = files.pin_path.join(lb_userspace::agent::start::PIN_LAYOUT);
    let state = SavedState::read(&files.dir.join("state.json")).unwrap().expect("a saved state");
    let dead = state.ids.backend("web", "198.18.0.11".parse().unwrap()).expect("an id");
    let in_ring = || map_snapshot(&pins, RING).rings.iter().filter(|&&id| id == dead).count();
    assert!(in_ring() > 0, "198.18.0.11 starts in the ring");
    wait_for("198.18.0.11 out of the ring", Duration::from_secs(5), || in_ring() == 0);
    lbd.kill();

    let lbd = Lbd::start_with(&ns, &files, &[]);
    let held = in_ring();
    assert_eq!(held, 0, "the restarted lbd put the down backend back into the ring ({held} slots)");
    let list = lbd.lbctl_ok(&["backend", "list", "web"]);
    let line = list.lines().find(|l| l.starts_with("198.18.0.11")).expect("198.18.0.11 listed");
    assert!(line.contains(" down "), "198.18.0.11 is not down after the restart:\n{list}");

    // Back after `rise` good checks.
    ns.addr("eth1", "198.18.0.11/32");
    wait_for("198.18.0.11 back in the ring", Duration::from_secs(5), || in_ring() > 0);
}
