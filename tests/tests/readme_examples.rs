//! The README's config, lbctl and curl examples, run against a real lbd: if the docs drift from
//! the code, this fails.
use std::process::Command;

use lb_tests::lbd::{lb_namespace, Lbd, LbdFiles};

/// The code blocks of kind `lang` in the README section that starts with `heading`.
fn blocks(readme: &str, heading: &str, lang: &str) -> Vec<String> {
    let start = readme.find(heading).unwrap_or_else(|| panic!("README has no {heading:?} section"));
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let fence = format!("```{lang}\n");
    section
        .split(&fence)
        .skip(1)
        .map(|rest| rest[..rest.find("```").expect("closed code block")].to_owned())
        .collect()
}

#[test]
fn readme_examples_work() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let config = blocks(&readme, "## Configuration", "toml").pop().expect("a config example");
    lb_userspace::config::parse(&config, "README.md").unwrap_or_else(|e| panic!("README config: {e}"));

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

    let lbctl = blocks(&readme, "## lbctl", "sh").pop().expect("lbctl examples");
    let mut ran = 0;
    for line in lbctl.lines().filter(|l| l.starts_with("lbctl ")) {
        let line = ours(line);
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        lbd.lbctl_ok(&args);
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} lbctl examples");

    let curl = blocks(&readme, "## Control API", "sh").pop().expect("curl examples");
    for line in curl.lines().filter(|l| l.starts_with("curl ")) {
        let line = ours(line).replacen("curl ", "curl --fail-with-body --silent --show-error ", 1);
        let out = Command::new("sh").args(["-c", &line]).output().expect("run sh");
        assert!(
            out.status.success(),
            "README example failed: {line}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The examples changed state: the last ones removed what the first ones added.
    let vips = lbd.lbctl_ok(&["vip", "list"]);
    assert!(vips.contains("web") && !vips.contains("api"), "{vips}");
}

#[test]
fn readme_backend_host_config_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let config = blocks(&readme, "## Backend hosts", "toml").pop().expect("a backend host config example");
    let parsed = lb_userspace::backend_host::config::parse(&config, "README.md")
        .unwrap_or_else(|e| panic!("README backend host config: {e}"));
    assert!(parsed.decap && parsed.allowed_sources.is_empty(), "the commented-out keys are the defaults");
}
