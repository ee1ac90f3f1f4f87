//! The rings follow the health checks whatever changes them: a check removed while its backend
//! is down, a backend saved down whose check became of type none, a down backend's flows reset
//! only while it is still down. A real lbd on `web` (198.18.100.1:80/tcp, two backends):
//! 198.18.0.12 answers its checks (a local address, a listener), 198.18.0.11 does not exist, so
//! its checks time out.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_tests::{
    lbd::{lb_namespace, map_snapshot, Lbd, LbdFiles},
    netns::Netns,
};
use lb_userspace::agent::SavedState;

const RING: u32 = 1009;
const DEAD: &str = "198.18.0.11";

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `web` with its two backends, checked by `check` (a `[vip.health]` table, or nothing).
fn web(check: &str) -> String {
    format!(
        "[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\nring_size = {RING}\n\n\
         {check}[[vip.backend]]\naddress = \"{DEAD}\"\n\n[[vip.backend]]\naddress = \"198.18.0.12\"\n"
    )
}

const TCP_CHECK: &str =
    "[vip.health]\ntype = \"tcp\"\nport = 8080\ninterval_ms = 500\ntimeout_ms = 200\nrise = 2\nfall = 2\n\n";

/// A namespace where 198.18.0.12 answers checks on 8080, and lbd's files.
struct Down {
    ns: Netns,
    files: LbdFiles,
    header: String,
    _listener: std::net::TcpListener,
}

impl Down {
    /// lbd with `web` checked by TCP, once 198.18.0.11 is out of the ring.
    fn start() -> (Down, Lbd) {
        let ns = lb_namespace();
        ns.addr("eth1", "198.18.0.12/32");
        let listener = ns.run(|| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080))).expect("listen");
        let files = LbdFiles::new();
        let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
        let lbd = Lbd::start(&ns, &files, &format!("{header}{}", web(TCP_CHECK)));
        let down = Down { ns, files, header, _listener: listener };
        assert!(down.dead_slots() > 0, "{DEAD} starts in the ring");
        wait_for(&format!("{DEAD} out of the ring"), Duration::from_secs(5), || down.dead_slots() == 0);
        (down, lbd)
    }

    fn dead_slots(&self) -> usize {
        let state = SavedState::read(&self.files.dir.join("state.json")).unwrap().expect("a saved state");
        let id = state.ids.backend("web", DEAD.parse().unwrap()).expect("an id");
        let pins = self.files.pin_path.join(lb_common::PIN_LAYOUT);
        map_snapshot(&pins, RING).rings.iter().filter(|&&b| b == id).count()
    }

    /// 198.18.0.11's line in `lbctl backend list`.
    fn listed(lbd: &Lbd) -> String {
        let list = lbd.lbctl_ok(&["backend", "list", "web"]);
        let line =
            list.lines().find(|l| l.starts_with(DEAD)).unwrap_or_else(|| panic!("{DEAD} listed:\n{list}"));
        line.to_owned()
    }
}

/// The operator's quick fix for a check that is wrong: remove it. Every backend then counts as
/// up (docs/health-checks.md), the one that was down included.
#[test]
fn removing_a_down_backends_check_puts_it_back_in_the_ring() {
    let (down, lbd) = Down::start();
    let path = down.files.dir.join("unchecked.toml");
    std::fs::write(&path, format!("{}{}", down.header, web(""))).unwrap();
    lbd.lbctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    let line = Down::listed(&lbd);
    let slots = down.dead_slots();
    assert!(slots > 0, "{DEAD} is unchecked now, yet out of the ring ({slots} slots): {line}");
    assert!(line.split_whitespace().any(|w| w == "-"), "{DEAD} is shown checked: {line}");
    let state = SavedState::read(&down.files.dir.join("state.json")).unwrap().expect("a saved state");
    assert!(state.down.is_empty(), "saved as down: {:?}", state.down);
}

/// `lbctl apply -f` changed a down backend's check to type none (which has no probe to bring it
/// back: its event says so), and lbd was killed before it took that event. The restarted lbd
/// adopts what was saved: the new check, the backend down. It must not keep it out for good.
#[test]
fn a_backend_saved_down_with_a_check_now_of_type_none_comes_back() {
    let (down, lbd) = Down::start();
    let state_file = down.files.dir.join("state.json");
    let key = ("web".to_string(), DEAD.parse().unwrap());
    wait_for(&format!("{DEAD} saved as down"), Duration::from_secs(2), || {
        SavedState::read(&state_file).unwrap().is_some_and(|s| s.down.contains(&key))
    });
    lbd.kill();
    let mut state = SavedState::read(&state_file).unwrap().expect("a saved state");
    state.vips[0].health.as_mut().expect("a check").kind = Some("none".into());
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let lbd = Lbd::start_with(&down.ns, &down.files, &[]);
    // The host tick (5 s) finds the ring and the check apart.
    wait_for(&format!("{DEAD} back in the ring"), Duration::from_secs(8), || down.dead_slots() > 0);
    let log = std::fs::read_to_string(down.files.dir.join("lbd.log")).unwrap_or_default();
    assert!(log.contains("while its check held it up"), "the resync is logged:\n{log}");
    let line = Down::listed(&lbd);
    assert!(line.split_whitespace().any(|w| w == "up"), "{DEAD} is not shown up: {line}");
}

/// `on_down = "reset-flows"` on a least-conn VIP: when a backend goes down its flows leave the
/// table, and so do the connections it counted open (else least-conn would weigh them against
/// it when it comes back, until a census: 10 s at least, minutes on big tables).
#[test]
fn a_reset_removes_a_down_backends_flows_and_its_open_count() {
    use aya::maps::{Array, Map, MapData};
    const FLOWS: u32 = 1000;
    let ns = lb_namespace();
    for a in ["198.18.0.11/32", "198.18.0.12/32"] {
        ns.addr("eth1", a);
    }
    let _listener = ns.run(|| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080))).expect("listen");
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let check = "[vip.health]\ntype = \"tcp\"\nport = 8080\ninterval_ms = 200\ntimeout_ms = 100\nrise = 1\nfall = 1\n\n";
    let vip = web(check).replace(
        "protocol = \"tcp\"\n",
        "protocol = \"tcp\"\nscheduler = \"least-conn\"\non_down = \"reset-flows\"\n",
    );
    let lbd = Lbd::start(&ns, &files, &format!("{header}{vip}"));
    let state = SavedState::read(&files.dir.join("state.json")).unwrap().expect("a saved state");
    let id = state.ids.backend("web", DEAD.parse().unwrap()).expect("an id");
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    let written =
        lb_tests::flows::fill_counted_flows(&pins, state.ids.vips["web"], id, FLOWS, [198, 18, 100, 1]);
    let counts = MapData::from_pin(pins.join(lb_common::map_names::ACTIVE_CONNS)).expect("pinned counts");
    let mut counts: Array<_, u64> = Array::try_from(Map::Array(counts)).unwrap();
    counts.set(id, u64::from(written), 0).unwrap();
    let flows_of = || {
        let json = lbd.lbctl_ok(&["--json", "flows", "--vip", "web", "--limit", "0"]);
        let f: lb_userspace::agent::flows::Flows = serde_json::from_str(&json).expect("lbctl --json flows");
        f.backends.iter().find(|b| b.address.to_string() == DEAD).map(|b| b.flows).expect("listed")
    };
    assert_eq!(flows_of(), u64::from(written), "the flows written");

    // 198.18.0.11 goes: its checks time out, it is down after one, and its flows are reset.
    ns.ip(&["addr", "del", "198.18.0.11/32", "dev", "eth1"]);
    let log = files.dir.join("lbd.log");
    wait_for("the reset", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("reset the flows of a down backend")
    });
    assert_eq!(flows_of(), 0, "flows of the down backend stay");
    let left = counts.get(&id, 0).unwrap();
    assert_eq!(left, 0, "{DEAD} still counts {left} open connections after its {written} flows went");
}
