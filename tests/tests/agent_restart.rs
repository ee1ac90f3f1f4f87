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
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    let state = SavedState::read(&files.dir.join("state.json")).unwrap().expect("a saved state");
    let dead = state.ids.backend("web", "198.18.0.11".parse().unwrap()).expect("an id");
    let in_ring = || map_snapshot(&pins, RING).rings.iter().filter(|&&id| id == dead).count();
    assert!(in_ring() > 0, "198.18.0.11 starts in the ring");
    wait_for("198.18.0.11 out of the ring", Duration::from_secs(5), || in_ring() == 0);
    // Saved just after the ring changed.
    let down = ("web".to_string(), "198.18.0.11".parse().unwrap());
    wait_for("198.18.0.11 saved as down", Duration::from_secs(2), || {
        SavedState::read(&files.dir.join("state.json")).unwrap().is_some_and(|s| s.down.contains(&down))
    });
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

/// A second lbd on the same pins (a second unit, a restart racing the old process) must not
/// take the running one's API socket nor write its maps: it exits at once, naming the running
/// one, and touches nothing.
#[test]
fn a_second_lbd_on_the_same_pins_exits_naming_the_first_and_touches_nothing() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let one = "[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\nring_size = 1009\n\n\
               [[vip.backend]]\naddress = \"198.18.0.11\"\n";
    let first = Lbd::start(&ns, &files, &format!("{header}{one}"));
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    let maps = map_snapshot(&pins, RING);
    let state = std::fs::read(files.dir.join("state.json")).unwrap();

    // Another VIP in its file: were it applied, the maps would show it.
    let two = one.replace("198.18.100.1", "198.18.100.2").replace("198.18.0.11", "198.18.0.12");
    let second = files.dir.join("second.toml");
    std::fs::write(&second, format!("{header}{two}")).unwrap();
    let log = files.dir.join("second.log");
    let mut other = lb_tests::bins::Running::spawn(
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(lb_tests::bins::path("lbd"))
            .arg("--config")
            .arg(&second)
            .env_remove("RUST_BACKTRACE")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = other.child.try_wait().unwrap() {
            break status;
        }
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(Instant::now() < deadline, "a second lbd on the same pins is running:\n{said}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "a second lbd on the same pins ran:\n{said}");
    let pid = first.process.child.id();
    assert!(
        said.contains(&format!("pid {pid}")),
        "the error does not name the running lbd (pid {pid}):\n{said}"
    );
    assert_eq!(map_snapshot(&pins, RING), maps, "the second lbd changed the maps");
    assert_eq!(
        std::fs::read(files.dir.join("state.json")).unwrap(),
        state,
        "the second lbd changed the state"
    );
    first.lbctl_ok(&["status"]);
}
