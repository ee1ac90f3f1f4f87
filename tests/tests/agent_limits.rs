//! `limits.max_vips` sizes every map a VIP takes room in (VIPS: two entries a VIP, VIP_BY_ID,
//! VIP_STATS, the rings), so a config within the limit is applied whole, never half-way through
//! a map that fills up.
use lb_tests::lbd::{lb_namespace, map_snapshot, Lbd, LbdFiles};

#[test]
fn as_many_vips_as_max_vips_are_applied_whole() {
    // More VIPs than the VIPS map held before it was sized from the limit (1024 entries: 512
    // VIPs with their address entries).
    const VIPS: u32 = 600;
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let mut config = format!(
        "pin_path = {:?}\napi_socket = {:?}\nstate_file = {:?}\ninterfaces = [\"eth0\"]\n\n\
         [source]\nipv4 = \"198.18.0.2\"\n\n\
         [limits]\nmax_vips = {VIPS}\nmax_ring_size = 1009\nmax_backends = 1024\nflows = 4096\n",
        files.pin_path.display().to_string(),
        files.socket().display().to_string(),
        files.dir.join("state.json").display().to_string(),
    );
    for i in 0..VIPS {
        config += &format!(
            "\n[[vip]]\nname = \"v{i}\"\naddress = \"198.19.{}.{}\"\nport = 80\nprotocol = \"tcp\"\nring_size = 1009\n\
             [[vip.backend]]\naddress = \"198.18.0.17\"\n",
            i / 250,
            1 + i % 250
        );
    }
    let lbd = Lbd::start(&ns, &files, &config);
    let list = lbd.lbctl_ok(&["vip", "list"]);
    assert_eq!(list.lines().count() as u32, VIPS + 1, "vip list:\n{list}");
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    let entries = map_snapshot(&pins, 1).vips.len() as u32;
    assert_eq!(entries, 2 * VIPS, "VIPS entries: a service and an address entry per VIP");
    // One more than the limit is refused as a whole, and changes nothing.
    let path = files.dir.join("more.toml");
    std::fs::write(
        &path,
        format!(
            "{config}\n[[vip]]\nname = \"extra\"\naddress = \"198.19.9.1\"\nport = 80\nprotocol = \"tcp\"\n\
             ring_size = 1009\n[[vip.backend]]\naddress = \"198.18.0.17\"\n"
        ),
    )
    .unwrap();
    let out = lbd.lbctl(&["apply", "-f", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "apply beyond max_vips: {stderr}");
    assert!(stderr.contains("limits.max_vips is 600"), "{stderr}");
    assert_eq!(map_snapshot(&pins, 1).vips.len() as u32, 2 * VIPS, "a refused apply changed VIPS");

    // At the limit, a VIP moved to another address, and one replaced by another VIP elsewhere:
    // the old entries go before the new ones take their room.
    let last = VIPS - 1;
    let moved = config.replace(
        &format!("name = \"v{last}\"\naddress = \"198.19.2.100\""),
        &format!("name = \"v{last}\"\naddress = \"198.19.9.2\""),
    );
    assert_ne!(moved, config, "the test's edit found nothing to move");
    let replaced = moved.replace(
        &format!("name = \"v{}\"\naddress = \"198.19.2.99\"", last - 1),
        "name = \"w\"\naddress = \"198.19.9.3\"",
    );
    assert_ne!(replaced, moved, "the test's edit found nothing to replace");
    for (what, text) in [("a VIP moved", &moved), ("a VIP replaced", &replaced)] {
        std::fs::write(&path, text).unwrap();
        let out = lbd.lbctl(&["apply", "-f", path.to_str().unwrap()]);
        assert!(out.status.success(), "{what} at max_vips: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(map_snapshot(&pins, 1).vips.len() as u32, 2 * VIPS, "{what}: VIPS entries");
    }
}
