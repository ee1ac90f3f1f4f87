//! Bad input, table-driven: invalid config files (applied with `lbctl apply -f`, or given to a
//! starting lbd), lbctl calls and raw API calls. Each gets a clear error and a non-zero exit,
//! and the maps are exactly as they were.
use std::process::{Command, Output};

use lb_tests::{
    bins,
    lbd::{lb_namespace, map_snapshot, Lbd, LbdFiles},
    netns::Netns,
};

const VIP: &str = r#"
[[vip]]
name = "web"
address = "198.18.100.1"
port = 80
protocol = "tcp"
ring_size = 4099

  [[vip.backend]]
  address = "198.18.0.11"

  [[vip.backend]]
  address = "198.18.0.12"
  weight = 200

  [[vip.backend]]
  address = "198.18.0.13"
"#;

enum Action {
    /// `lbctl apply -f` with the running config edited by (find, replace).
    Apply(&'static str, &'static str),
    /// A config of its own, applied with `lbctl apply -f`.
    ApplyText(&'static str),
    /// A second lbd started with the running config edited by (find, replace).
    Start(&'static str, &'static str),
    Lbctl(&'static [&'static str]),
    /// curl --unix-socket: method, path, JSON body.
    Api(&'static str, &'static str, &'static str),
}

struct Case {
    name: &'static str,
    action: Action,
    exit: i32,
    /// What the error must say (a clear message names the field or the thing).
    says: &'static str,
}

fn cases() -> Vec<Case> {
    use Action::*;
    vec![
        Case {
            name: "toml syntax",
            action: Apply("port = 80", "port = = 80"),
            exit: 1,
            says: "candidate.toml:19: syntax",
        },
        Case {
            name: "unknown field",
            action: Apply("port = 80", "port = 80\nprot = 1"),
            exit: 1,
            says: "unknown field `prot`",
        },
        Case {
            name: "bad vip address",
            action: Apply("198.18.100.1", "198.18.100.300"),
            exit: 1,
            says: "vip \"web\": address: \"198.18.100.300\" is not an IPv4 or IPv6 address",
        },
        Case {
            name: "bad backend address",
            action: Apply("198.18.0.13", "198.18.0.x"),
            exit: 1,
            says: "\"198.18.0.x\" is not an IPv4 or IPv6 address",
        },
        Case {
            name: "weight out of range",
            action: Apply("weight = 200", "weight = 70000"),
            exit: 1,
            says: "weight: 70000 is out of range",
        },
        Case {
            name: "negative weight",
            action: Apply("weight = 200", "weight = -1"),
            exit: 1,
            says: "weight: -1 is out of range",
        },
        Case {
            name: "port out of range",
            action: Apply("port = 80", "port = 70000"),
            exit: 1,
            says: "port: 70000 is not a port",
        },
        Case {
            name: "unknown protocol",
            action: Apply("\"tcp\"", "\"sctp\""),
            exit: 1,
            says: "unknown variant `sctp`",
        },
        Case {
            name: "unknown mode",
            action: Apply("port = 80", "port = 80\nmode = \"nat\""),
            exit: 1,
            says: "unknown variant `nat`",
        },
        Case {
            name: "ring size not prime",
            action: Apply("ring_size = 4099", "ring_size = 4100"),
            exit: 1,
            says: "ring_size",
        },
        Case {
            name: "ring size too small",
            action: Apply("ring_size = 4099", "ring_size = 101"),
            exit: 1,
            says: "ring_size",
        },
        Case {
            name: "wrong family mix",
            action: Apply("198.18.0.13", "fd00::13"),
            exit: 1,
            says: "its backends must be too",
        },
        Case {
            name: "duplicate backend",
            action: Apply("198.18.0.13", "198.18.0.11"),
            exit: 1,
            says: "198.18.0.11 is listed twice",
        },
        Case {
            name: "bad name",
            action: Apply("name = \"web\"", "name = \"w eb\""),
            exit: 1,
            says: "is not a valid name",
        },
        Case {
            name: "duplicate vip",
            action: ApplyText(DUPLICATE_VIP),
            exit: 1,
            says: "another VIP already serves 198.18.100.1:80/tcp",
        },
        Case {
            name: "duplicate vip name",
            action: ApplyText(DUPLICATE_NAME),
            exit: 1,
            says: "another VIP is already named \"web\"",
        },
        Case {
            name: "ipip without a tunnel source",
            action: Apply("ipv4 = \"198.18.0.2\"", ""),
            exit: 1,
            says: "set source.ipv4",
        },
        Case {
            name: "entropy bits",
            action: Apply("[source]", "[source]\nipv4_entropy_bits = 17"),
            exit: 1,
            says: "more than 16",
        },
        Case {
            name: "interfaces changed live",
            action: Apply("interfaces = [\"eth0\"]", "interfaces = [\"eth1\"]"),
            exit: 1,
            says: "interfaces: differs from the running agent's",
        },
        Case {
            name: "announce added live",
            action: ApplyText("\n[announce]\n"),
            exit: 1,
            says: "announce: differs from the running agent's",
        },
        Case {
            name: "host drain without announce",
            action: Lbctl(&["host", "drain"]),
            exit: 1,
            says: "no [announce] in its config",
        },
        Case {
            name: "missing interface at start",
            action: Start("interfaces = [\"eth0\"]", "interfaces = [\"eth9\"]"),
            exit: 1,
            says: "interface \"eth9\" does not exist",
        },
        Case {
            name: "no interfaces at start",
            action: Start("interfaces = [\"eth0\"]", "interfaces = []"),
            exit: 1,
            says: "name at least one interface",
        },
        Case {
            name: "cli weight out of range",
            action: Lbctl(&["backend", "add", "web", "198.18.0.14", "--weight", "70000"]),
            exit: 1,
            says: "70000 is out of range: use 0 to 65535",
        },
        Case {
            name: "cli unknown backend",
            action: Lbctl(&["backend", "drain", "web", "198.18.0.99"]),
            exit: 1,
            says: "198.18.0.99 is not a backend of \"web\"",
        },
        Case {
            name: "cli unknown vip",
            action: Lbctl(&["backend", "drain", "nope", "198.18.0.11"]),
            exit: 1,
            says: "no VIP is named \"nope\"",
        },
        Case {
            name: "cli bad address",
            action: Lbctl(&["backend", "add", "web", "not-an-ip"]),
            exit: 1,
            says: "\"not-an-ip\" is not an IPv4 or IPv6 address",
        },
        Case {
            name: "cli duplicate vip name",
            action: Lbctl(&[
                "vip",
                "add",
                "web",
                "--address",
                "198.18.100.2",
                "--port",
                "80",
                "--protocol",
                "tcp",
            ]),
            exit: 1,
            says: "a VIP named \"web\" exists already",
        },
        Case {
            name: "cli duplicate service",
            action: Lbctl(&[
                "vip",
                "add",
                "web2",
                "--address",
                "198.18.100.1",
                "--port",
                "80",
                "--protocol",
                "tcp",
            ]),
            exit: 1,
            says: "another VIP already serves",
        },
        Case {
            name: "cli family mix",
            action: Lbctl(&[
                "vip",
                "add",
                "v6",
                "--address",
                "fd00::100",
                "--port",
                "80",
                "--protocol",
                "tcp",
                "--backend",
                "198.18.0.11",
            ]),
            exit: 1,
            says: "the VIP fd00::100 is IPv6",
        },
        Case {
            name: "cli backend weight not a number",
            action: Lbctl(&[
                "vip",
                "add",
                "x",
                "--address",
                "198.18.100.3",
                "--port",
                "80",
                "--protocol",
                "tcp",
                "--backend",
                "198.18.0.11=heavy",
            ]),
            exit: 2,
            says: "is not a number",
        },
        Case {
            name: "cli deny duration",
            action: Lbctl(&["deny", "add", "198.19.66.0/24", "--for", "soon"]),
            exit: 2,
            says: "is not a duration",
        },
        Case { name: "cli usage", action: Lbctl(&["backend", "drain", "web"]), exit: 2, says: "required" },
        Case {
            name: "cli unknown protocol",
            action: Lbctl(&[
                "vip",
                "add",
                "x",
                "--address",
                "198.18.100.3",
                "--port",
                "80",
                "--protocol",
                "sctp",
            ]),
            exit: 2,
            says: "invalid value 'sctp'",
        },
        Case {
            name: "api malformed json",
            action: Api("POST", "/v1/vips", "{\"name\": "),
            exit: 22,
            says: "400",
        },
        Case {
            name: "api weight not a number",
            action: Api("PUT", "/v1/vips/web/backends/198.18.0.11/weight", "{\"weight\": \"x\"}"),
            exit: 22,
            says: "not the JSON this call takes: invalid type: string",
        },
        Case {
            name: "health timeout not below interval",
            action: Apply(
                "ring_size = 4099",
                "ring_size = 4099\n[vip.health]\ninterval_ms = 500\ntimeout_ms = 500",
            ),
            exit: 1,
            says: "vip \"web\": health.timeout_ms: timeout 500 ms must be shorter than interval 500 ms",
        },
        Case {
            name: "health zero fall",
            action: Apply("ring_size = 4099", "ring_size = 4099\n[vip.health]\nfall = 0"),
            exit: 1,
            says: "fall 0 is out of range: use 1 to 100",
        },
        Case {
            name: "health unknown type",
            action: Apply("ring_size = 4099", "ring_size = 4099\n[vip.health]\ntype = \"icmp\""),
            exit: 1,
            says: "unknown check type \"icmp\": use none, tcp, http or udp",
        },
        Case {
            name: "health option of another type",
            action: Apply(
                "ring_size = 4099",
                "ring_size = 4099\n[vip.health]\ntype = \"tcp\"\npath = \"/x\"",
            ),
            exit: 1,
            says: "only applies to type \"http\"",
        },
        Case {
            name: "cli health interval",
            action: Lbctl(&[
                "vip",
                "add",
                "x",
                "--address",
                "198.18.100.3",
                "--port",
                "80",
                "--protocol",
                "tcp",
                "--check",
                "tcp",
                "--check-interval-ms",
                "10",
            ]),
            exit: 1,
            says: "interval 10 ms is out of range",
        },
        Case {
            name: "cli health option without --check",
            action: Lbctl(&["vip", "add", "x", "--address", "198.18.100.3", "--port", "80", "--protocol", "tcp", "--rise", "2"]),
            exit: 2,
            says: "the following required arguments were not provided:\n  --check <TYPE>",
        },
        Case {
            name: "cli capture for longer than lbd takes",
            action: Lbctl(&["capture", "--vip", "web", "-w", "/nonexistent/x.pcap", "--timeout", "120"]),
            exit: 2,
            says: "120 is not in 1..=60",
        },
        Case {
            name: "cli top prefix longer than an address",
            action: Lbctl(&["top", "--prefix", "200"]),
            exit: 2,
            says: "200 is not in 0..=128",
        },
        Case {
            name: "cli flows limit beyond what lbd lists",
            action: Lbctl(&["flows", "--limit", "50000"]),
            exit: 2,
            says: "50000 is not in 0..=10000",
        },
        Case {
            name: "cli json stats with watch",
            action: Lbctl(&["--json", "stats", "--watch", "--count", "2"]),
            exit: 1,
            says: "--json prints one sample",
        },
        Case {
            name: "cli flows unknown state",
            action: Lbctl(&["flows", "--state", "half-open"]),
            exit: 2,
            says: "[possible values: confirmed, unconfirmed]",
        },
        Case {
            name: "api flows unknown state",
            action: Api("GET", "/v1/flows?state=half-open", ""),
            exit: 22,
            // (In the JSON answer: its quotes escaped.)
            says: r#"state \"half-open\": use confirmed or unconfirmed"#,
        },
        Case {
            name: "cli vip name with a query mark (not VIP web)",
            action: Lbctl(&["vip", "remove", "web?x"]),
            exit: 1,
            says: "no VIP is named \"web?x\"",
        },
        Case {
            name: "cli vip name with a space",
            action: Lbctl(&["vip", "remove", "my web"]),
            exit: 1,
            says: "no VIP is named \"my web\"",
        },
        Case {
            name: "cli backend address with a fragment mark (not 198.18.0.11)",
            action: Lbctl(&["backend", "remove", "web", "198.18.0.11#"]),
            exit: 1,
            says: "\"198.18.0.11#\" is not an IPv4 or IPv6 address",
        },
        Case {
            name: "api deny with a misspelt field",
            action: Api(
                "POST",
                "/v1/denies",
                r#"{"prefix":"198.18.7.0/24","vip_name":"web","duration":600}"#,
            ),
            exit: 22,
            says: "unknown field `vip_name`",
        },
        Case {
            name: "api deny for longer than ten years",
            action: Api("POST", "/v1/denies", r#"{"prefix":"198.18.7.0/24","seconds":18446744073709551615}"#),
            exit: 22,
            says: "18446744073709551615 is out of range: use 1 to 315360000",
        },
        Case {
            name: "api weight with a misspelt field",
            action: Api("PUT", "/v1/vips/web/backends/198.18.0.11/weight", r#"{"weight":5,"wieght":6}"#),
            exit: 22,
            says: "unknown field `wieght`",
        },
        Case {
            name: "api backend added with a bad check",
            action: Api("POST", "/v1/vips/web/backends", r#"{"address":"198.18.0.14","health":{"fall":0}}"#),
            exit: 22,
            says: "fall 0 is out of range: use 1 to 100",
        },
        Case {
            name: "api flows with a misspelt parameter",
            action: Api("GET", "/v1/flows?vipp=web", ""),
            exit: 22,
            says: "unknown field `vipp`",
        },
        Case {
            name: "backend at a VIP address",
            action: Apply("198.18.0.13", "198.18.100.1"),
            exit: 1,
            says: "198.18.100.1 is a VIP address: a backend needs an address of its own",
        },
        Case {
            name: "l2dsr backend behind a router",
            action: ApplyText(
                "\n[[vip]]\nname = \"dsr\"\naddress = \"198.18.100.7\"\nport = 80\nprotocol = \"tcp\"\nmode = \"l2dsr\"\n\n  [[vip.backend]]\n  address = \"198.18.3.5\"\n",
            ),
            exit: 1,
            says: "backend 198.18.3.5 is reached via 198.18.0.1 (on eth0), not on a directly connected subnet",
        },
        Case {
            name: "api unknown endpoint",
            action: Api("GET", "/v1/nope", ""),
            exit: 22,
            says: "no such endpoint",
        },
    ]
}

const DUPLICATE_VIP: &str = r#"
[[vip]]
name = "other"
address = "198.18.100.1"
port = 80
protocol = "tcp"
"#;

const DUPLICATE_NAME: &str = r#"
[[vip]]
name = "web"
address = "198.18.100.9"
port = 80
protocol = "udp"
"#;

#[test]
fn every_bad_input_is_refused_clearly_and_changes_nothing() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let good = format!("{header}{VIP}");
    // Backends in 198.18.3.0/24 are behind a router: the network's route, not one lbd owns (the
    // condition an l2dsr VIP must refuse).
    ns.ip(&["route", "add", "198.18.3.0/24", "via", "198.18.0.1", "dev", "eth0"]);
    let lbd = Lbd::start(&ns, &files, &good);
    let before = map_snapshot(&files.pin_path.join(lb_common::PIN_LAYOUT), 4099);
    assert_eq!(before.backends.len(), 3, "the good config is applied: {before:?}");

    let mut failures = Vec::new();
    for case in cases() {
        let out = run(&case.action, &ns, &files, &lbd, &good, &header);
        let code = out.status.code().unwrap_or(-1);
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if code != case.exit || !text.contains(case.says) {
            failures.push(format!("{}: exit {code} (want {}), output: {text}", case.name, case.exit));
        }
        let after = map_snapshot(&files.pin_path.join(lb_common::PIN_LAYOUT), 4099);
        if after != before {
            failures.push(format!("{}: the maps changed", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases().len(),
        failures.join("\n")
    );
    // The good config still applies: the agent is unharmed.
    std::fs::write(files.dir.join("good.toml"), &good).unwrap();
    lbd.lbctl_ok(&["apply", "-f", files.dir.join("good.toml").to_str().unwrap()]);
}

fn run(action: &Action, ns: &Netns, files: &LbdFiles, lbd: &Lbd, good: &str, header: &str) -> Output {
    let apply = |text: String| {
        let path = files.dir.join("candidate.toml");
        std::fs::write(&path, text).unwrap();
        lbd.lbctl(&["apply", "-f", path.to_str().unwrap()])
    };
    match action {
        Action::Apply(find, replace) => {
            assert!(good.contains(find), "case edits {find:?}, which the config lacks");
            apply(good.replacen(find, replace, 1))
        }
        Action::ApplyText(vips) => apply(format!("{good}{vips}")),
        Action::Start(find, replace) => {
            let other = LbdFiles::new();
            let text = good.replacen(find, replace, 1);
            // The second lbd gets its own paths: it must fail on the edit, not on a clash.
            let text = text
                .replace(&files.pin_path.display().to_string(), &other.pin_path.display().to_string())
                .replace(&files.dir.display().to_string(), &other.dir.display().to_string());
            let _ = header;
            std::fs::write(other.config(), text).unwrap();
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", ns.name()))
                .arg(bins::path("lbd"))
                .arg("--config")
                .arg(other.config())
                .env_remove("RUST_BACKTRACE")
                .output()
                .expect("run lbd")
        }
        Action::Lbctl(args) => lbd.lbctl(args),
        Action::Api(method, path, body) => Command::new("curl")
            .args(["--silent", "--show-error", "--fail-with-body", "--unix-socket"])
            .arg(files.socket())
            .args(["-X", method, "-H", "content-type: application/json", "--data-binary", body])
            .arg(format!("http://lbd{path}"))
            .output()
            .expect("run curl"),
    }
}
