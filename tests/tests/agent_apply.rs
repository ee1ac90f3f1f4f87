//! `lbctl apply -f` with VIPs renamed or swapping addresses: the maps must end up holding exactly
//! the new config's VIP entries (a removal for the old name must not take the entry the new
//! name just wrote). A file bigger than a web server's usual body limit applies too.
use std::collections::BTreeSet;

use lb_common::{VipKey, PROTO_ICMP, PROTO_TCP};
use lb_tests::lbd::{lb_namespace, map_snapshot, Lbd, LbdFiles};

fn vips(names_and_last_octets: &[(&str, u8)]) -> String {
    names_and_last_octets
        .iter()
        .map(|(name, n)| {
            format!(
                "\n[[vip]]\nname = \"{name}\"\naddress = \"198.18.100.{n}\"\nport = 80\nprotocol = \"tcp\"\n\
                 ring_size = 4099\n\n  [[vip.backend]]\n  address = \"198.18.0.1{n}\"\n"
            )
        })
        .collect()
}

/// The VIP entries a config of VIPs on 198.18.100.`n`:80/tcp must leave: each port entry and
/// each address entry.
fn keys(last_octets: &[u8]) -> BTreeSet<VipKey> {
    last_octets
        .iter()
        .flat_map(|&n| {
            [VipKey::v4([198, 18, 100, n], 80, PROTO_TCP), VipKey::v4([198, 18, 100, n], 0, PROTO_ICMP)]
        })
        .collect()
}

#[test]
fn renamed_and_swapped_vips_keep_their_entries() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let lbd = Lbd::start(&ns, &files, &format!("{header}{}", vips(&[("a", 1), ("b", 2)])));
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    let held = || map_snapshot(&pins, 1).vips.into_iter().map(|(k, _)| k).collect::<BTreeSet<_>>();
    assert_eq!(held(), keys(&[1, 2]), "the first config");

    let apply = |text: String| {
        let path = files.dir.join("next.toml");
        std::fs::write(&path, format!("{header}{text}")).unwrap();
        lbd.lbctl_ok(&["apply", "-f", path.to_str().unwrap()])
    };
    apply(vips(&[("a2", 1), ("b", 2)]));
    assert_eq!(held(), keys(&[1, 2]), "after renaming a to a2");
    let list = lbd.lbctl_ok(&["vip", "list"]);
    let names: Vec<&str> = list.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, ["a2", "b"], "vip list after the rename:\n{list}");

    apply(vips(&[("a2", 2), ("b", 1)]));
    assert_eq!(held(), keys(&[1, 2]), "after a2 and b swapped addresses");

    apply(vips(&[("b", 1)]));
    assert_eq!(held(), keys(&[1]), "after removing a2");
}

/// A config file of many VIPs and backends is megabytes (here: 3 MiB of comments): `lbctl apply
/// -f` sends it whole, and lbd reads bodies up to 64 MiB (axum's default stops at 2 MiB).
#[test]
fn a_config_file_of_megabytes_applies() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let lbd = Lbd::start(&ns, &files, &format!("{header}{}", vips(&[("a", 1)])));
    let comments = "# a line of comment, as a generated file may hold many\n".repeat(3 << 20 >> 5);
    let path = files.dir.join("big.toml");
    std::fs::write(&path, format!("{header}{comments}{}", vips(&[("a", 1), ("b", 2)]))).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 3 << 20);
    let out = lbd.lbctl(&["apply", "-f", path.to_str().unwrap()]);
    assert!(out.status.success(), "a 3-MiB file: {}", String::from_utf8_lossy(&out.stderr));
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    let held: BTreeSet<_> = map_snapshot(&pins, 1).vips.into_iter().map(|(k, _)| k).collect();
    assert_eq!(held, keys(&[1, 2]), "the big file's VIPs");
}

/// A VIP that takes the id of one removed in the same change starts with its own counters at
/// zero, not the removed VIP's totals (they would show as its traffic, or as a spike in the
/// rates Prometheus computes across the series).
#[test]
fn a_new_vip_on_a_removed_vips_id_starts_its_counters_at_zero() {
    use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
    use lb_common::{map_names, PolicyCounts, TrafficStats};
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let lbd = Lbd::start(&ns, &files, &format!("{header}{}", vips(&[("old", 1)])));
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    // The old VIP's traffic, as the data plane counts it (one CPU's share is enough).
    let cpus = aya::util::nr_cpus().expect("CPUs");
    let open = |name: &str| MapData::from_pin(pins.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut traffic: PerCpuArray<MapData, TrafficStats> =
        PerCpuArray::try_from(Map::PerCpuArray(open(map_names::VIP_STATS))).unwrap();
    let seen = TrafficStats { packets: 1000, bytes: 64000, new_flows: 10 };
    traffic.set(0, PerCpuValues::try_from(vec![seen; cpus]).unwrap(), 0).unwrap();
    let mut policy: PerCpuArray<MapData, PolicyCounts> =
        PerCpuArray::try_from(Map::PerCpuArray(open(map_names::POLICY_STATS))).unwrap();
    let refused = PolicyCounts { dropped: [5; 4], passed: 5 };
    policy.set(0, PerCpuValues::try_from(vec![refused; cpus]).unwrap(), 0).unwrap();
    let stats = |name: &str| {
        let s: lb_userspace::agent::Stats =
            serde_json::from_str(&lbd.lbctl_ok(&["--json", "stats"])).expect("lbctl --json stats");
        let v = s.vips.into_iter().find(|v| v.name == name).unwrap_or_else(|| panic!("{name} in the stats"));
        (v.packets, v.policy_drops)
    };
    assert_eq!(stats("old").0, 1000 * cpus as u64, "the seeded counters are old's");

    let path = files.dir.join("next.toml");
    std::fs::write(&path, format!("{header}{}", vips(&[("new", 2)]))).unwrap();
    lbd.lbctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    let state = lb_userspace::agent::SavedState::read(&files.dir.join("state.json")).unwrap().unwrap();
    assert_eq!(state.ids.vips["new"], 0, "new took old's id (else the test shows nothing)");
    assert_eq!(stats("new"), (0, [0; 4]), "new starts with old's counters");
}
