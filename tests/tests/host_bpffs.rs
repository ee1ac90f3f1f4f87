//! `host::bpffs::ensure`: a pin path off bpffs gets one mounted, and pins that would die with a
//! private mount namespace come with a warning (and pins on the host's bpffs do not).
//!
//! The private-namespace cases run this test binary again as a child in another mount namespace
//! (`unshare --mount`, `ip netns exec`): a process with threads cannot leave its own. The child
//! is the same test, told by an environment variable what to check; it prints its findings.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use lb_tests::{netns::Netns, privilege::require_root, unique_name};
use lb_userspace::host::bpffs::{self, Bpffs};

/// Set in the child: what it should check (the case), and the path to check it on.
const CHILD: &str = "LBT_BPFFS_CHILD";

/// Unmounts (lazily) and removes what a test mounted and made, in reverse, also on panic.
struct Cleanup {
    mounts: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// What `stat -f` says the filesystem of `path` is ("bpf_fs", "tmpfs", ...).
fn fs_type(path: &Path) -> String {
    let out = Command::new("stat").args(["-f", "-c", "%T"]).arg(path).output().expect("run stat");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn report(case: &str, r: &Bpffs) {
    let mounted = r.mounted.as_ref().map_or("-".into(), |p| p.display().to_string());
    println!("RESULT {case} mounted={mounted} warning={}", r.warning.as_deref().unwrap_or("-"));
}

/// Runs this test again (`test`) under `wrapper` with `CHILD` = `value`; its RESULT lines.
fn child(test: &str, wrapper: &[&str], value: &str) -> Vec<String> {
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, value)
        .output()
        .unwrap_or_else(|e| panic!("starting {wrapper:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child under {wrapper:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness prints "test NAME ... " before the test's own output, on the same line.
    stdout.lines().filter_map(|l| l.find("RESULT ").map(|i| l[i..].to_owned())).collect()
}

#[test]
fn a_pin_path_on_tmpfs_gets_a_bpffs_mounted() {
    require_root();
    let dir = std::env::temp_dir().join(unique_name("tmpfs"));
    std::fs::create_dir(&dir).expect("create the tmpfs directory");
    let mut cleanup = Cleanup { mounts: Vec::new(), dirs: vec![dir.clone()] };
    lb_tests::netns::run(Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&dir));
    cleanup.mounts.push(dir.clone());
    let pin_path = dir.join("pins");
    cleanup.dirs.push(pin_path.clone());

    let r = bpffs::ensure(&pin_path).unwrap_or_else(|e| panic!("ensure on tmpfs: {e}"));
    if r.mounted.is_some() {
        cleanup.mounts.push(pin_path.clone());
    }
    assert_eq!(r.mounted.as_deref(), Some(pin_path.as_path()), "a bpffs at the pin path itself");
    assert_eq!(fs_type(&pin_path), "bpf_fs");
    let mode = Command::new("stat").args(["-c", "%a"]).arg(&pin_path).output().expect("stat");
    assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), "1700", "mode 0700 (bpffs adds the sticky bit)");
    assert_eq!(r.warning, None, "mounted in the host's own mount namespace: the pins outlive us");

    let again = bpffs::ensure(&pin_path.join("v3")).expect("ensure below it");
    assert_eq!(again, Bpffs::default(), "already on a bpffs: nothing to mount, nothing to warn about");
}

#[test]
fn the_hosts_bpffs_gives_no_warning() {
    require_root();
    let pin_path = Path::new(bpffs::DEFAULT_MOUNT).join(unique_name("pins"));
    let r = bpffs::ensure(&pin_path).unwrap_or_else(|e| panic!("ensure on /sys/fs/bpf: {e}"));
    assert_eq!(r, Bpffs::default());
    assert!(!pin_path.exists(), "ensure made the pin path itself");
}

/// In a private mount namespace (`unshare --mount`): a bpffs mounted there only warns; the
/// host's /sys/fs/bpf, which the namespace got a copy of (the same bpffs), does not.
#[test]
fn pins_on_a_bpffs_of_a_private_mount_namespace_come_with_a_warning() {
    const TEST: &str = "pins_on_a_bpffs_of_a_private_mount_namespace_come_with_a_warning";
    if let Ok(dir) = std::env::var(CHILD) {
        let private = bpffs::ensure(&Path::new(&dir).join("pins")).expect("ensure in the child");
        report("private", &private);
        let host = bpffs::ensure(&Path::new(bpffs::DEFAULT_MOUNT).join(unique_name("pins"))).expect("ensure");
        report("host", &host);
        return;
    }
    require_root();
    let dir = std::env::temp_dir().join(unique_name("private"));
    std::fs::create_dir(&dir).expect("create the directory");
    let _cleanup = Cleanup { mounts: Vec::new(), dirs: vec![dir.clone(), dir.join("pins")] };
    let lines = child(TEST, &["unshare", "--mount", "--propagation", "private"], &dir.display().to_string());
    let pins = dir.join("pins");
    let [private, host] = &lines[..] else { panic!("two results expected: {lines:?}") };
    let prefix = format!("RESULT private mounted={} warning=", pins.display());
    let warning = private
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("no bpffs mounted at {}: {private}", pins.display()));
    for words in ["exists only in this process's mount namespace", "kill -9", "nsenter --net=/run/netns/NAME"]
    {
        assert!(warning.contains(words), "the warning should say {words:?}: {warning}");
    }
    assert_eq!(host, "RESULT host mounted=- warning=-", "the host's bpffs, seen from a private namespace");
    assert_ne!(fs_type(&pins), "bpf_fs", "the child's mount leaked into the host's namespace");
}

/// Under `ip netns exec` (a private /sys without bpffs) a pin path under /sys/fs/bpf gets a
/// bpffs that lives only as long as the command: the trap the warning is for.
#[test]
fn ip_netns_exec_gets_a_private_bpffs_and_a_warning() {
    const TEST: &str = "ip_netns_exec_gets_a_private_bpffs_and_a_warning";
    if let Ok(pin_path) = std::env::var(CHILD) {
        report("netns-exec", &bpffs::ensure(Path::new(&pin_path)).expect("ensure in the child"));
        return;
    }
    let ns = Netns::new("bpffs");
    let pin_path = Path::new(bpffs::DEFAULT_MOUNT).join(unique_name("pins"));
    let lines = child(TEST, &["ip", "netns", "exec", ns.name()], &pin_path.display().to_string());
    let [line] = &lines[..] else { panic!("one result expected: {lines:?}") };
    assert!(line.starts_with("RESULT netns-exec mounted=/sys/fs/bpf warning=the pins under"), "{line}");
    assert!(!pin_path.exists(), "the child's bpffs is not the host's");
}
