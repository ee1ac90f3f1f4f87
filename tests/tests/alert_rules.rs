//! The Prometheus alerting rules the Debian package installs
//! (packaging/prometheus/lbd-alerts.yml), checked by the real `promtool` (Debian's
//! `prometheus`): `promtool check rules` (syntax, PromQL, templates) and `promtool test rules`
//! on tests/alerts/lbd-alerts.test.yml (each alert fires on series shaped like lbd's, for the
//! host they come from, and not below its threshold or before its `for`). Every alert also
//! carries what an operator needs: a `for`, a severity, a summary and a description.
//!
//! That the rules name only what lbd exports is a unit test of lb-userspace
//! (`metrics::alert_rules`); that they evaluate against a real lbd, `e2e_observability`.
//! No root needed.
use std::{path::PathBuf, process::Command};

const RULES: &str = "packaging/prometheus/lbd-alerts.yml";
const TESTS: &str = "tests/alerts/lbd-alerts.test.yml";
/// Bounds each promtool run.
const PROMTOOL_TIMEOUT_SECONDS: &str = "60";

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// `promtool ARGS` in the workspace root; panics with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg(PROMTOOL_TIMEOUT_SECONDS)
        .arg("promtool")
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `timeout promtool` ({e})"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // timeout(1) exits 127 when it cannot find the command.
    assert!(
        out.status.code() != Some(127),
        "promtool is not installed: `cargo xtask setup` installs Debian's prometheus, which has it \
         (or `apt-get install prometheus`)"
    );
    assert!(out.status.success(), "promtool {} failed ({}):\n{text}", args.join(" "), out.status);
    text
}

#[test]
fn promtool_checks_the_rules() {
    let out = promtool(&["check", "rules", RULES]);
    let alerts = read(RULES).lines().filter(|l| l.trim_start().starts_with("- alert:")).count();
    assert!(out.contains(&format!("SUCCESS: {alerts} rules found")), "{alerts} alerts in {RULES}:\n{out}");
}

#[test]
fn promtool_unit_tests_pass() {
    let out = promtool(&["test", "rules", TESTS]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Each alert's block: its name and its lines up to the next alert or group.
fn alerts(rules: &str) -> Vec<(String, Vec<&str>)> {
    let mut found: Vec<(String, Vec<&str>)> = Vec::new();
    for line in rules.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            found.push((name.trim().to_owned(), Vec::new()));
        } else if trimmed.starts_with("- name:") {
            found.push((String::new(), Vec::new()));
        } else if let Some((_, lines)) = found.last_mut() {
            lines.push(trimmed);
        }
    }
    found.retain(|(name, _)| !name.is_empty());
    found
}

#[test]
fn every_alert_says_how_long_how_bad_and_what_to_do_and_is_tested() {
    let rules = read(RULES);
    let tests = read(TESTS);
    let alerts = alerts(&rules);
    assert!(alerts.len() >= 15, "only {} alerts found in {RULES}", alerts.len());
    // A test case: from one `- eval_time:` to the next.
    let cases: Vec<&str> = tests.split("- eval_time:").skip(1).collect();
    for (name, lines) in &alerts {
        for (key, what) in [
            ("for: ", "a `for:` (how long before it fires)"),
            ("summary: ", "a summary annotation"),
            ("description: ", "a description annotation (what is wrong, what to do)"),
        ] {
            assert!(lines.iter().any(|l| l.starts_with(key)), "{name} in {RULES} has no {what}");
        }
        assert!(
            lines.iter().any(|l| *l == "severity: warning" || *l == "severity: critical"),
            "{name} in {RULES} needs the label `severity: warning` or `severity: critical`"
        );
        let fires = cases.iter().any(|c| {
            c.lines().any(|l| l.trim() == format!("alertname: {name}")) && c.contains("exp_labels:")
        });
        assert!(fires, "{TESTS} has no case in which {name} fires: add one");
    }
}
