//! A privileged test run without root fails, saying why: it never skips in silence.
use std::process::Command;

use lb_tests::privilege::MESSAGE_START;

/// Needs root like every test of the kit; the test below runs it without.
#[test]
fn loads_the_balancer() {
    let _runner = lb_tests::xdp::XdpRunner::balancer();
}

#[test]
fn privileged_test_without_root_fails_with_a_clear_message() {
    lb_tests::privilege::require_root();
    // Same user, but an empty capability bounding set: after exec, even root has no capabilities.
    let out = Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "loads_the_balancer", "--test-threads=1"])
        .output()
        .expect("run setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the unprivileged run passed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 failed"), "the test did not run and fail:\n{stdout}");
    // libtest prints a failed test's panic message with its captured output, on stdout.
    let all = format!("{stdout}{stderr}");
    assert!(all.contains(MESSAGE_START) && all.contains("sudo"), "no clear message:\n{all}");
}
