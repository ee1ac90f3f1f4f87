//! A change whose state cannot be saved (disk full, a read-only or missing directory) is
//! refused whole: the maps keep the running state, so that the saved state and the maps never
//! disagree (a restart would otherwise silently undo a change that is live).
use lb_tests::lbd::{lb_namespace, map_snapshot, Lbd, LbdFiles};

const VIP: &str = r#"
[[vip]]
name = "web"
address = "198.18.100.1"
port = 80
protocol = "tcp"
ring_size = 1009

  [[vip.backend]]
  address = "198.18.0.11"
"#;

#[test]
fn a_change_whose_state_cannot_be_saved_changes_no_map() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let state_dir = files.dir.join("state");
    let state = state_dir.join("state.json");
    let header = files
        .header(&["eth0"], "198.18.0.2", "fd00::2")
        .replace(&files.dir.join("state.json").display().to_string(), &state.display().to_string());
    let lbd = Lbd::start(&ns, &files, &format!("{header}{VIP}"));
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    let before = map_snapshot(&pins, 2 * 65_537);

    // The state's directory becomes a file: nothing can be written under it.
    std::fs::remove_dir_all(&state_dir).unwrap();
    std::fs::write(&state_dir, "not a directory").unwrap();
    let out = lbd.lbctl(&[
        "vip",
        "add",
        "api",
        "--address",
        "198.18.100.2",
        "--port",
        "443",
        "--protocol",
        "tcp",
        "--backend",
        "198.18.0.21",
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lbctl vip add succeeded without a saved state");
    assert_eq!(map_snapshot(&pins, 2 * 65_537), before, "the maps changed although the change was refused");
    assert!(
        said.contains(&state.display().to_string()) && said.contains("nothing changed"),
        "the error does not say which file and that nothing changed: {said}"
    );
    let list = lbd.lbctl_ok(&["vip", "list"]);
    assert!(!list.contains("api"), "the refused VIP is listed:\n{list}");

    // Once the state can be saved again, the same change goes through.
    std::fs::remove_file(&state_dir).unwrap();
    lbd.lbctl_ok(&[
        "vip",
        "add",
        "api",
        "--address",
        "198.18.100.2",
        "--port",
        "443",
        "--protocol",
        "tcp",
        "--backend",
        "198.18.0.21",
    ]);
    assert_ne!(map_snapshot(&pins, 2 * 65_537), before, "the change did not reach the maps");
    assert!(std::fs::read_to_string(&state).unwrap().contains("\"api\""), "the state file lacks the new VIP");
}
