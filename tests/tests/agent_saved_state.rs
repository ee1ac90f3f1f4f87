//! A restarted lbd whose saved state is gone or corrupt: it must neither keep forwarding VIPs
//! nobody knows about, nor silently start from another state.
use lb_tests::lbd::{lb_namespace, map_snapshot, Lbd, LbdFiles};

const VIP: &str = r#"
[[vip]]
name = "web"
address = "198.18.100.1"
port = 80
protocol = "tcp"
ring_size = 4099

  [[vip.backend]]
  address = "198.18.0.11"
"#;

/// Runs lbd on `files`' config in `ns` until it exits (a start that is refused): whether it
/// started, and what it said.
fn run_lbd(ns: &lb_tests::netns::Netns, files: &LbdFiles) -> (bool, String) {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .arg(lb_tests::bins::path("lbd"))
        .arg("--config")
        .arg(files.config())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn lost_state_removes_vips_nobody_knows_and_corrupt_state_stops_the_start() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let lbd = Lbd::start(&ns, &files, &format!("{header}{VIP}"));
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    assert_eq!(map_snapshot(&pins, 1).vips.len(), 2, "the VIP and its address entry");
    lbd.kill();

    // Corrupt state: lbd refuses to start, naming the file and what to do.
    let state = files.dir.join("state.json");
    std::fs::write(&state, "{ not json").unwrap();
    std::fs::write(files.config(), &header).unwrap();
    let (started, stderr) = run_lbd(&ns, &files);
    assert!(!started, "lbd started on a corrupt state file");
    assert!(stderr.contains("is corrupt") && stderr.contains("move it away"), "{stderr}");
    assert_eq!(map_snapshot(&pins, 1).vips.len(), 2, "a refused start changes nothing");

    // No state at all, and a config without the VIP: the VIP must stop forwarding.
    std::fs::remove_file(&state).unwrap();
    let lbd = Lbd::start_with(&ns, &files, &[]);
    assert!(map_snapshot(&pins, 1).vips.is_empty(), "a VIP no state accounts for is still in the map");
    assert!(lbd.lbctl_ok(&["status"]).contains("took over 1 pinned link"));
}

#[test]
fn a_reboot_keeps_the_runtime_changes_the_saved_state_holds() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let lbd = Lbd::start(&ns, &files, &format!("{header}{VIP}"));
    lbd.lbctl_ok(&["backend", "add", "web", "198.18.0.12"]);
    lbd.lbctl_ok(&["backend", "drain", "web", "198.18.0.11"]);
    lbd.lbctl_ok(&["deny", "add", "198.19.66.0/24", "--for", "1h"]);
    lbd.kill();
    // A reboot: lbd gone, bpffs empty (pins and links with it), the state file on disk.
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    std::fs::remove_dir_all(&pins).expect("remove the pins");

    let lbd = Lbd::start_with(&ns, &files, &[]);
    let status = lbd.lbctl_ok(&["status"]);
    assert!(status.contains("adopted the saved state of an earlier lbd"), "{status}");
    let backends = lbd.lbctl_ok(&["--json", "backend", "list", "web"]);
    let backends: serde_json::Value = serde_json::from_str(&backends).expect("backend list JSON");
    let drained: Vec<(String, bool)> = backends
        .as_array()
        .expect("a list")
        .iter()
        .map(|b| {
            (b["address"].as_str().unwrap_or_default().to_owned(), b["drained"].as_bool().unwrap_or(false))
        })
        .collect();
    assert_eq!(
        drained,
        [("198.18.0.11".to_owned(), true), ("198.18.0.12".to_owned(), false)],
        "the backend added and the drain made at run time: {backends}"
    );
    let denies = lbd.lbctl_ok(&["deny", "list"]);
    assert!(denies.contains("198.19.66.0/24"), "the operator's deny: {denies}");
    assert_eq!(map_snapshot(&pins, 1).vips.len(), 2, "the VIP in the fresh maps");
}

/// Limits change with a new pin path (maps made anew), and lbd starts from the saved state.
/// One the new limits cannot hold (more VIPs than `max_vips`, a ring over `max_ring_size`)
/// stops the start before anything is touched, saying what to do; before, the start failed
/// half-way at the maps with an error that named neither the state nor the limit. Saved ids
/// beyond the new maps' sizes are handed out afresh.
#[test]
fn a_saved_state_that_new_limits_cannot_hold_stops_the_start_and_says_so() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let second = VIP.replace("\"web\"", "\"api\"").replace("198.18.100.1", "198.18.100.2");
    let lbd = Lbd::start(&ns, &files, &format!("{header}{VIP}{second}"));
    // Backend ids move on with every addition: web's last backend ends with id 9.
    for n in 12..=18 {
        lbd.lbctl_ok(&["backend", "add", "web", &format!("198.18.0.{n}")]);
        lbd.lbctl_ok(&["backend", "remove", "web", &format!("198.18.0.{}", n - 1)]);
    }
    lbd.kill();
    // Gone as at a reboot: the maps are made anew under the new pin path.
    std::fs::remove_dir_all(files.pin_path.join(lb_common::PIN_LAYOUT)).unwrap();
    let moved = LbdFiles::new();
    std::fs::copy(files.dir.join("state.json"), moved.dir.join("state.json")).unwrap();
    let header = moved.header(&["eth0"], "198.18.0.2", "fd00::2");
    for (limit, says) in [
        ("max_vips = 1", "2 VIPs configured; limits.max_vips is 1"),
        ("max_vips = 8\nmax_ring_size = 1031", "4099 is larger than limits.max_ring_size (1031)"),
    ] {
        std::fs::write(moved.config(), header.replace("max_vips = 8", limit)).unwrap();
        let (started, stderr) = run_lbd(&ns, &moved);
        assert!(!started, "{limit}: lbd started");
        assert!(
            stderr.contains("does not fit this config")
                && stderr.contains(says)
                && stderr.contains("move the state file away"),
            "{limit}: {stderr}"
        );
        assert!(!moved.pin_path.join(lb_common::PIN_LAYOUT).exists(), "{limit}: a refused start made maps");
    }
    // Limits that hold the VIPs but not the saved ids (web's backend is id 9; ids of 8 maps
    // run to 7): new ids, both VIPs forwarding.
    std::fs::write(moved.config(), header.replace("max_backends = 64", "max_backends = 8")).unwrap();
    let lbd = Lbd::start_with(&ns, &moved, &[]);
    let pins = moved.pin_path.join(lb_common::PIN_LAYOUT);
    assert_eq!(map_snapshot(&pins, 1).vips.len(), 4, "both VIPs and their address entries");
    let backends = lbd.lbctl_ok(&["backend", "list", "web"]);
    assert!(backends.contains("198.18.0.18"), "{backends}");
}
