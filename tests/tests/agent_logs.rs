//! lbd logs to stderr, and in plain text unless stderr is a terminal: journald and log files
//! get no colour codes.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::{
    bins::{self, Running},
    lbd::{lb_namespace, lbctl, LbdFiles},
};

#[test]
fn lbd_logs_plain_text_to_stderr_when_it_is_not_a_terminal() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    std::fs::write(files.config(), files.header(&["eth0"], "198.18.0.2", "fd00::2")).unwrap();
    let (out, err) = (files.dir.join("stdout"), files.dir.join("stderr"));
    let mut lbd = Running::spawn(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(bins::path("lbd"))
            .arg("--config")
            .arg(files.config())
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap()),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lbctl(&files.socket(), &["status"]).status.success() {
        if let Ok(Some(status)) = lbd.child.try_wait() {
            panic!("lbd exited ({status}): {}", std::fs::read_to_string(&err).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "lbd's API did not come up within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = lbd.terminate();
    assert!(status.success(), "lbd exited with {status} on SIGTERM");
    let log = std::fs::read(&err).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("control API listening"), "no log on stderr:\n{text}");
    assert!(!log.contains(&0x1b), "an ESC byte (colour codes) in the log written to a file:\n{text:?}");
    let stdout = std::fs::read_to_string(&out).unwrap();
    assert!(stdout.is_empty(), "lbd wrote to stdout:\n{stdout}");
}
