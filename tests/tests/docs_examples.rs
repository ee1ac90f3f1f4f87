//! The docs' examples: the config files, `lbctl` and `curl` lines of README.md and docs/, run
//! against a real lbd (or parsed, for backend hosts): if the docs drift from the code, this fails.
use std::process::Command;

use lb_tests::lbd::{lb_namespace, Lbd, LbdFiles};

/// A file of the workspace, by its path from the root.
fn read(path: &str) -> String {
    let full = concat!(env!("CARGO_MANIFEST_DIR"), "/../").to_owned() + path;
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {full}: {e}"))
}

/// The code blocks of kind `lang` in the section of `file` that starts with the line `heading`
/// (up to the next `## ` heading).
fn blocks(file: &str, heading: &str, lang: &str) -> Vec<String> {
    let text = read(file);
    let start =
        text.find(&format!("{heading}\n")).unwrap_or_else(|| panic!("{file} has no {heading:?} section"));
    let section = &text[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let fence = format!("```{lang}\n");
    section
        .split(&fence)
        .skip(1)
        .map(|rest| rest[..rest.find("```").expect("closed code block")].to_owned())
        .collect()
}

#[test]
fn readme_config_is_valid() {
    let config = blocks("README.md", "## A minimal config", "toml").pop().expect("a config example");
    let parsed =
        lb_userspace::config::parse(&config, "README.md").unwrap_or_else(|e| panic!("README config: {e}"));
    assert_eq!(parsed.vips.len(), 1, "README's minimal config has one VIP");
}

#[test]
fn config_lbctl_and_curl_examples_work() {
    let config = blocks("docs/configuration.md", "## Every key", "toml").pop().expect("a config example");
    let parsed = lb_userspace::config::parse(&config, "docs/configuration.md")
        .unwrap_or_else(|e| panic!("docs/configuration.md's config: {e}"));
    // The same map sizes as an unset [limits], on any host.
    for cpus in [1, 2, 3, 64] {
        assert_eq!(
            parsed.limits.sizes(cpus),
            lb_userspace::config::Limits::default().sizes(cpus),
            "docs/configuration.md's [limits] should show the defaults ({cpus} CPUs)"
        );
    }

    let ns = lb_namespace();
    let files = LbdFiles::new();
    let ours = |text: &str| {
        text.replace("/sys/fs/bpf/lb", &files.pin_path.display().to_string())
            .replace("/run/lbd/lbd.sock", &files.socket().display().to_string())
            .replace("/var/lib/lbd/state.json", &files.dir.join("state.json").display().to_string())
            .replace("/etc/lbd/lbd.toml", &files.config().display().to_string())
    };
    let config = ours(&config);
    let lbd = Lbd::start(&ns, &files, &config);

    let lbctl = blocks("docs/operations.md", "## lbctl", "sh").pop().expect("lbctl examples");
    let mut ran = 0;
    for line in lbctl.lines().filter(|l| l.starts_with("lbctl ")) {
        let line = ours(line);
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        lbd.lbctl_ok(&args);
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} lbctl examples");

    let curl = blocks("docs/operations.md", "## Control API", "sh").pop().expect("curl examples");
    for line in curl.lines().filter(|l| l.starts_with("curl ")) {
        let line = ours(line).replacen("curl ", "curl --fail-with-body --silent --show-error ", 1);
        let out = Command::new("sh").args(["-c", &line]).output().expect("run sh");
        assert!(
            out.status.success(),
            "docs/operations.md's example failed: {line}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The examples changed state: the last ones removed what the first ones added.
    let vips = lbd.lbctl_ok(&["vip", "list"]);
    assert!(vips.contains("web") && !vips.contains("api"), "{vips}");
}

#[test]
fn backend_host_config_is_valid() {
    let config = blocks("docs/operations.md", "## Backend hosts", "toml")
        .pop()
        .expect("a backend host config example");
    let parsed = lb_userspace::backend_host::config::parse(&config, "docs/operations.md")
        .unwrap_or_else(|e| panic!("docs/operations.md's backend host config: {e}"));
    assert!(parsed.decap && parsed.decap_addresses.is_none(), "the commented-out keys are the defaults");
    assert!(!parsed.allowed_sources.is_empty(), "decap needs its sources listed");
}
