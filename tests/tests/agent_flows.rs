//! `lbctl flows` as the data plane forwards: a flow is listed under the VIP its entry names,
//! and a removed backend's flows, which go on until they end, can still be looked for.
use lb_tests::lbd::{lb_namespace, Lbd, LbdFiles};
use lb_userspace::agent::{flows::Flows, SavedState};

const BACKEND: &str = "198.18.0.11";

fn flows(lbd: &Lbd, args: &[&str]) -> Flows {
    let json = lbd.lbctl_ok(&[&["--json", "flows", "--limit", "0"], args].concat());
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("lbctl --json flows {args:?}: {e}: {json}"))
}

/// Connections of an any-port VIP on port 80 stay with it, in the data plane and in `lbctl
/// flows`, when a VIP for port 80 of the same address is added; once their backend is removed
/// they go on, under no row, and `--backend` still finds them.
#[test]
fn flows_are_listed_under_the_vip_and_backend_their_entries_name() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let any = format!(
        "[[vip]]\nname = \"any\"\naddress = \"198.18.100.1\"\nport = 0\nprotocol = \"tcp\"\n\n\
         [[vip.backend]]\naddress = \"{BACKEND}\"\n\n[[vip.backend]]\naddress = \"198.18.0.12\"\n"
    );
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let lbd = Lbd::start(&ns, &files, &format!("{header}{any}"));
    let state = SavedState::read(&files.dir.join("state.json")).unwrap().expect("a saved state");
    let id = state.ids.backend("any", BACKEND.parse().unwrap()).expect("an id");
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    // Open connections of `any` to 198.18.100.1:80, pinned to BACKEND.
    let written = u64::from(lb_tests::flows::fill_counted_flows(
        &pins,
        state.ids.vips["any"],
        id,
        500,
        [198, 18, 100, 1],
    ));
    assert!(written > 450, "{written} of 500 flows written");

    lbd.lbctl_ok(&[
        "vip",
        "add",
        "web",
        "--address",
        "198.18.100.1",
        "--port",
        "80",
        "--protocol",
        "tcp",
        "--backend",
        "198.18.0.13",
    ]);
    let of_any = flows(&lbd, &["--vip", "any", "--backend", BACKEND]);
    assert_eq!((of_any.total, of_any.other), (written, 0), "any's flows on port 80, after web was added");
    let row =
        of_any.backends.iter().find(|b| b.address.to_string() == BACKEND).expect("a row for the backend");
    assert_eq!(row.flows, written, "the backend's row");
    let of_web = flows(&lbd, &["--vip", "web"]);
    assert_eq!((of_web.total, of_web.other), (0, 0), "web has none of any's flows");

    lbd.lbctl_ok(&["backend", "remove", "any", BACKEND]);
    let removed = flows(&lbd, &["--backend", BACKEND]);
    assert_eq!((removed.total, removed.other), (written, written), "the removed backend's flows, going on");
    assert!(removed.backends.is_empty(), "rows for a removed backend: {:?}", removed.backends);
}
