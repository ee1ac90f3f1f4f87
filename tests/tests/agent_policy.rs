//! The edge policy through a real lbd: lists and limits shown by `lbctl vip list` and
//! `lbctl status` and planned by `lbctl plan -f`; `lbctl deny add --for` reaching the pinned
//! access list and leaving it when it expires (lbd's own expiry, not the test's); refusals by
//! VIP and reason in the metrics, from frames sent into the balancer's interface.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64},
    time::{Duration, Instant},
};

use aya::maps::{lpm_trie::LpmTrie, Map, MapData};
use lb_common::{map_names, AclKey, PolicyReason, ACL_DENY};
use lb_tests::{
    flood::{self, Flood},
    lbd::{lb_namespace, Lbd, LbdFiles},
    netns::Netns,
    topology::{mac_of, parse_mac},
};

const METRICS: &str = "127.0.0.1:9100";
const WEB: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const CAPPED: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);

fn config(files: &LbdFiles, web_deny: &str) -> String {
    format!(
        "metrics = \"{METRICS}\"\n{}[security]\ndeny = [\"198.19.0.0/16\"]\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{WEB}\"\nport = 80\nprotocol = \"tcp\"\nring_size = 4099\n\
         allow = [\"198.18.0.0/16\"]\ndeny = [{web_deny}]\n\
           [vip.limits]\n  new_flows_per_source = 100\n  over_limit = \"pass\"\n\
           [[vip.backend]]\n  address = \"198.18.0.11\"\n\n\
         [[vip]]\nname = \"capped\"\naddress = \"{CAPPED}\"\nport = 80\nprotocol = \"tcp\"\nring_size = 4099\n\
           [vip.limits]\n  new_flows = 1\n\
           [[vip.backend]]\n  address = \"198.18.0.12\"\n",
        files.header(&["eth0"], "198.18.0.2", "fd00::2")
    )
}

/// The pinned access list's entries: (address prefix as text, value).
fn acl_entries(pins: &Path) -> Vec<(String, u32)> {
    let path = pins.join(map_names::ACL);
    let map = MapData::from_pin(&path).unwrap_or_else(|e| panic!("open the pinned {}: {e}", path.display()));
    let trie: LpmTrie<MapData, AclKey, u32> = LpmTrie::try_from(Map::LpmTrie(map)).expect("an LPM trie");
    trie.iter()
        .map(|r| {
            let (key, value) = r.expect("read the ACL");
            let data = key.data();
            let len = key.prefix_len() - AclKey::SCOPE_BITS;
            let address = Ipv4Addr::from(<[u8; 4]>::try_from(&data.addr[..4]).unwrap());
            (format!("{address}/{len}"), value)
        })
        .collect()
}

/// The metrics text, from lbd's endpoint in `ns`.
fn metrics(ns: &Netns) -> String {
    ns.run(|| {
        let mut s = TcpStream::connect(METRICS).unwrap_or_else(|e| panic!("connect to {METRICS}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: lbd\r\n\r\n").expect("send the request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read the metrics");
        text
    })
}

/// `lb_vip_policy_drops_total` of `vip` and `reason`.
fn drops(text: &str, vip: &str, reason: PolicyReason) -> u64 {
    let head = format!("lb_vip_policy_drops_total{{vip=\"{vip}\",");
    let tail = format!(",reason=\"{}\"}} ", reason.name());
    let line = text
        .lines()
        .find(|l| l.starts_with(&head) && l.contains(&tail))
        .unwrap_or_else(|| panic!("no {head}...{tail} in the metrics:\n{text}"));
    line.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("a count: {line}"))
}

fn failing(lbd: &Lbd, args: &[&str]) -> String {
    let out = lbd.lbctl(args);
    assert!(!out.status.success(), "lbctl {args:?} should be refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn lists_limits_and_denies_are_shown_planned_expired_and_counted_by_reason() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    // Up for the frames sent into it at the end (lbd attaches either way).
    ns.ip(&["link", "set", "eth0", "up"]);
    let lbd = Lbd::start(&ns, &files, &config(&files, "\"198.18.7.0/24\""));
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);

    // ---- Shown ------------------------------------------------------------------------------
    let list = lbd.lbctl_ok(&["vip", "list"]);
    let row =
        |name: &str| list.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {list}"));
    assert!(row("web").contains("allow 1, deny 1"), "web's lists in vip list:\n{list}");
    assert!(row("web").contains("100 flows/s per /32; over: pass"), "web's limits in vip list:\n{list}");
    assert!(row("capped").contains("tracked per /32; VIP 1 flows/s"), "capped's limits in vip list:\n{list}");
    eprintln!("lbctl vip list:\n{list}");
    let status = lbd.lbctl_ok(&["status"]);
    assert!(status.contains("1 global in the config, 0 added with lbctl deny"), "lbctl status:\n{status}");

    // ---- Planned ----------------------------------------------------------------------------
    let next = files.dir.join("next.toml");
    std::fs::write(&next, config(&files, "\"198.18.7.0/24\", \"198.18.6.0/24\"")).unwrap();
    let plan = lbd.lbctl_ok(&["plan", "-f", next.to_str().unwrap()]);
    let web_plan = plan.lines().find(|l| l.starts_with("web")).unwrap_or_else(|| panic!("{plan}"));
    assert!(
        web_plan.contains("change") && web_plan.contains("1 acl entries"),
        "plan of a longer deny list:\n{plan}"
    );
    eprintln!("lbctl plan -f (web's deny list one longer):\n{plan}");
    let global_plan = plan.lines().find(|l| l.starts_with("[security]")).unwrap_or_else(|| panic!("{plan}"));
    assert!(global_plan.contains("keep"), "the global list does not change:\n{plan}");

    // ---- An operator's deny, with its expiry --------------------------------------------------
    let refused = failing(&lbd, &["deny", "add", "198.18.8.1/24", "--vip", "web"]);
    assert!(refused.contains("write 198.18.8.0/24"), "a prefix with host bits: {refused}");
    let refused = failing(&lbd, &["deny", "add", "198.18.8.0/24", "--vip", "nope"]);
    assert!(refused.contains("nope"), "an unknown VIP: {refused}");
    let refused = failing(&lbd, &["deny", "add", "198.18.8.0/24", "--for", "10x"]);
    assert!(refused.contains("10m"), "a bad duration teaches the syntax: {refused}");
    let added = Instant::now();
    lbd.lbctl_ok(&["deny", "add", "198.18.8.0/24", "--vip", "web", "--for", "2s"]);
    let denies = lbd.lbctl_ok(&["deny", "list"]);
    let row = denies.lines().find(|l| l.starts_with("198.18.8.0/24")).unwrap_or_else(|| panic!("{denies}"));
    assert!(
        row.contains("web") && row.contains("lbctl") && row.contains("in "),
        "the deny and its expiry:\n{denies}"
    );
    eprintln!("lbctl deny list:\n{denies}");
    let held = |prefix: &str| acl_entries(&pins).iter().any(|(p, v)| p == prefix && *v == ACL_DENY);
    assert!(held("198.18.8.0/24"), "the deny is in the pinned ACL: {:?}", acl_entries(&pins));
    assert!(lbd.lbctl_ok(&["status"]).contains("1 added with lbctl deny"));
    while held("198.18.8.0/24") {
        assert!(added.elapsed() < Duration::from_secs(5), "a deny for 2s still in the ACL after 5 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = added.elapsed();
    assert!(gone >= Duration::from_secs(1), "the deny went after {gone:?}, before its 2 s");
    let denies = lbd.lbctl_ok(&["deny", "list"]);
    assert!(!denies.contains("198.18.8.0/24"), "the expired deny is still listed:\n{denies}");
    assert!(held("198.18.7.0/24"), "the config's own deny stays: {:?}", acl_entries(&pins));
    eprintln!("a deny for 2s left the pinned ACL after {gone:.1?}");

    // ---- Counted by VIP and reason -----------------------------------------------------------
    // Spoofed SYNs and ACKs into eth0 from its veth peer: from the globally denied 198.19/16 to
    // web; from 198.18/16 to capped, whose SYNs after the first are over its cap of 1 a second.
    let send = |sources: [u8; 2], dst: Ipv4Addr| {
        let f = Flood {
            ifindex: ns.ifindex("eth1"),
            src_mac: parse_mac(&mac_of(&ns, "eth1")),
            dst_mac: parse_mac(&mac_of(&ns, "eth0")),
            sources,
            dst,
            dport: 80,
            max_packets: 2000,
            max_time: Duration::from_secs(2),
        };
        ns.run(|| flood::send(&f, 7, &AtomicBool::new(false), &AtomicU64::new(0))).packets
    };
    let to_web = send([198, 19], WEB);
    let to_capped = send([198, 18], CAPPED);
    std::thread::sleep(Duration::from_millis(200));
    let text = metrics(&ns);
    let (acl, cap) =
        (drops(&text, "web", PolicyReason::Acl), drops(&text, "capped", PolicyReason::VipNewFlowCap));
    eprintln!("sent {to_web} to web, {to_capped} to capped; dropped: acl {acl} (web), vip_new_flow_cap {cap} (capped)");
    assert!(acl <= to_web && acl >= to_web * 9 / 10, "web's acl drops {acl} of {to_web} sent, all denied");
    let syns = to_capped / 2;
    assert!(cap <= syns && cap + 10 >= syns * 9 / 10, "capped's cap drops {cap} of {syns} SYNs");
    for reason in [PolicyReason::RateNewFlows, PolicyReason::RatePackets, PolicyReason::VipNewFlowCap] {
        assert_eq!(drops(&text, "web", reason), 0, "web: {}", reason.name());
    }
    for reason in [PolicyReason::Acl, PolicyReason::RateNewFlows, PolicyReason::RatePackets] {
        assert_eq!(drops(&text, "capped", reason), 0, "capped: {}", reason.name());
    }
}

/// An operator's deny to one VIP goes with that VIP however it is removed (`lbctl vip remove`,
/// or a file without it through `lbctl apply -f` or SIGHUP), and the log says so: a later VIP
/// of the same name starts without it. Denies to every VIP stay.
#[test]
fn a_vips_own_denies_go_with_it_when_a_file_removes_it() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let full = config(&files, "");
    let lbd = Lbd::start(&ns, &files, &full);
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    lbd.lbctl_ok(&["deny", "add", "198.18.8.0/24", "--vip", "web"]);
    lbd.lbctl_ok(&["deny", "add", "198.18.9.0/24"]);
    let held = |prefix: &str| acl_entries(&pins).iter().any(|(p, v)| p == prefix && *v == ACL_DENY);
    assert!(held("198.18.8.0/24") && held("198.18.9.0/24"), "both denies applied: {:?}", acl_entries(&pins));

    let apply = |text: &str| {
        let path = files.dir.join("next.toml");
        std::fs::write(&path, text).unwrap();
        lbd.lbctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    };
    let web = full.find("[[vip]]\nname = \"web\"").expect("web in the config");
    let capped = full.find("[[vip]]\nname = \"capped\"").expect("capped in the config");
    apply(&format!("{}{}", &full[..web], &full[capped..]));
    let denies = lbd.lbctl_ok(&["deny", "list"]);
    assert!(!denies.contains("198.18.8.0/24"), "web's deny outlived web:\n{denies}");
    assert!(denies.contains("198.18.9.0/24"), "the deny to every VIP went too:\n{denies}");
    // Said in the log: it may be an incident's mitigation, and a rename removes the VIP too.
    let log = std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default();
    let said = log.lines().find(|l| l.contains("its `lbctl deny` entry went with it"));
    assert!(
        said.is_some_and(|l| l.contains("198.18.8.0/24") && l.contains("web")),
        "the removed deny is not in the log:\n{log}"
    );

    apply(&full);
    let denies = lbd.lbctl_ok(&["deny", "list"]);
    assert!(!denies.contains("198.18.8.0/24"), "the new web got the old one's deny:\n{denies}");
    assert!(!held("198.18.8.0/24"), "the old web's deny is in the ACL: {:?}", acl_entries(&pins));
    assert!(held("198.18.9.0/24"), "the deny to every VIP left the ACL: {:?}", acl_entries(&pins));
}
