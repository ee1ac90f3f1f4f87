//! Installs what builds and tests need, only when missing, one line per thing installed.
use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::cmd::{self, output};

/// Versions that work with the preinstalled nightly (bpf-linker 0.10 uses rustc's own LLVM).
const BPF_LINKER_VERSION: &str = "0.10.3";
const NIGHTLY: &str = "nightly";
/// Debian packages the tests and the demo use: `ip` for namespaces and links, `setpriv` to run a
/// test unprivileged and `nsenter` to start lbd in a namespace, `ethtool` to turn on GRO (veth
/// delivers XDP_TX/redirected frames only with NAPI), `curl` for the control API examples,
/// `prometheus` (with `promtool`) to check and scrape lbd's metrics endpoint, `tcpdump` to read
/// `lbctl capture` files, `bird2` (BIRD 2) for the BGP/ECMP tests, which run it only as their own
/// child processes in namespaces, `systemd-analyze` (systemd) to verify the package's units,
/// dpkg-dev to build the package (see PACKAGE_TOOLS), and `chromium` with `chromium-driver`
/// (chromedriver) for the status page's browser test, which runs them headless as its own child
/// processes in a namespace.
///
/// Installing starts no service: while apt-get runs, /usr/sbin/policy-rc.d (exit 101, as Docker
/// images have it) refuses every start an install asks for; setup puts one there for the install
/// where the host has none ([`NoServiceStarts`]). What the packages it installed enabled for the
/// next boot (bird.service, prometheus.service; the benches' nginx.service and haproxy.service)
/// it disables again ([`services_off`]): the tests and benches run these daemons only as their
/// own children in namespaces. Services of packages the host had before are left as they are.
/// lbd's own package enables nothing.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "ethtool",
    "curl",
    "prometheus",
    "tcpdump",
    "bird2",
    "systemd",
    "dpkg-dev",
    "chromium",
    "chromium-driver",
];
/// What `cargo xtask package` runs: dpkg-shlibdeps (Depends) and strip (binutils, a dependency).
const PACKAGE_TOOLS: &[&str] = &["dpkg-dev"];
/// What only the benchmarks use: load (`wrk`), backends (`nginx`) and the paths they compare
/// against (`haproxy`, `nftables`).
const BENCH_PACKAGES: &[&str] = &["wrk", "nginx", "haproxy", "nftables"];
const BPFFS: &str = "/sys/fs/bpf";
/// The services installing a package enables (and would start, but for [`NoServiceStarts`]).
const SERVICES: &[(&str, &str)] = &[
    ("bird2", "bird.service"),
    ("prometheus", "prometheus.service"),
    ("nginx", "nginx.service"),
    ("haproxy", "haproxy.service"),
];
/// Debian's hook that `invoke-rc.d` and `deb-systemd-invoke` ask before they start a service.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
/// The line that tells setup's own hook from a host's.
const HOOK_MARKER: &str = "cargo xtask setup: no service starts while it installs packages";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `cargo xtask setup` does the root-only parts only when it can.
pub fn needs_root_parts() -> bool {
    if !is_root() {
        println!("setup: not root, so Debian packages and the bpffs mount are left unchecked");
    }
    is_root()
}

pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "{what}, which needs root: run it as root, e.g. `sudo -E env \"PATH=$PATH\" cargo xtask {}`",
            std::env::args().nth(1).unwrap_or_default()
        );
    }
    Ok(())
}

/// Idempotent: checks each piece and installs only what is missing.
pub fn run(privileged: bool) -> anyhow::Result<()> {
    rust_components()?;
    bpf_linker()?;
    if privileged {
        debian_packages(TEST_PACKAGES)?;
        bpffs()?;
    }
    Ok(())
}

fn rust_components() -> anyhow::Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"]).context(
        "rustup is needed to build the XDP programs with the nightly toolchain, and was not found",
    )?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        bail!("the nightly Rust toolchain is missing; install it with `rustup toolchain install nightly`");
    }
    let installed =
        output("rustup", &["component", "list", "--toolchain", NIGHTLY, "--installed"]).unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        println!(
            "setup: installing rust-src for the nightly toolchain (eBPF builds compile core from source)"
        );
        cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    let have = |tool: &str| output("cargo", &[tool, "--version"]).is_some();
    if !have("fmt") || !have("clippy") {
        println!("setup: installing rustfmt and clippy (the lint step uses them)");
        cmd::run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    if output("bpf-linker", &["--version"]).is_some_and(|v| v.trim() == wanted) {
        return Ok(());
    }
    println!("setup: installing {wanted} (links the XDP programs; takes a minute or two)");
    cmd::run(Command::new("cargo").args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]))
}

/// The benchmarks' extra packages (after [`run`]).
pub fn bench_packages() -> anyhow::Result<()> {
    debian_packages(BENCH_PACKAGES)
}

/// The packaging tools; installed as root, else only checked (building a .deb needs no root).
pub fn package_tools() -> anyhow::Result<()> {
    if is_root() {
        return debian_packages(PACKAGE_TOOLS);
    }
    let missing = missing_packages(PACKAGE_TOOLS);
    if !missing.is_empty() {
        bail!(
            "building the package needs {0}: install it with `sudo apt-get install {0}`",
            missing.join(" ")
        );
    }
    Ok(())
}

fn missing_packages<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages
        .iter()
        .copied()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${Status}", p]).is_none_or(|s| !s.contains("ok installed"))
        })
        .collect()
}

fn debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
    let no_starts = NoServiceStarts::put(Path::new(POLICY_RC_D))?;
    let installed = cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    drop(no_starts);
    installed?;
    services_off(&missing)
}

/// A policy-rc.d that refuses every service start, there while it lives, where the host had
/// none (a host's own is left as it is, and in place).
struct NoServiceStarts<'a> {
    put_here: Option<&'a Path>,
}

impl<'a> NoServiceStarts<'a> {
    fn put(path: &'a Path) -> anyhow::Result<Self> {
        // One an interrupted setup left (Ctrl-C during apt-get: no unwinding) is ours to remove.
        let ours = std::fs::read_to_string(path).is_ok_and(|text| text.contains(HOOK_MARKER));
        if path.exists() && !ours {
            return Ok(NoServiceStarts { put_here: None });
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(path, format!("#!/bin/sh\n# {HOOK_MARKER}\nexit 101\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
        Ok(NoServiceStarts { put_here: Some(path) })
    }
}

impl Drop for NoServiceStarts<'_> {
    fn drop(&mut self) {
        if let Some(path) = self.put_here {
            if let Err(e) = std::fs::remove_file(path) {
                eprintln!(
                    "setup: could not remove {} ({e}): remove it, or no service starts on install",
                    path.display()
                );
            }
        }
    }
}

/// Disables the services that installing `installed` enabled (bird2 also adds /etc/rc[2-5].d
/// links, which `systemctl disable` removes too).
fn services_off(installed: &[&str]) -> anyhow::Result<()> {
    for (package, service) in SERVICES.iter().filter(|(p, _)| installed.contains(p)) {
        if output("systemctl", &["is-enabled", service]).is_none_or(|s| s.trim() != "enabled") {
            continue;
        }
        println!("setup: disabling {service} (installing {package} enabled it; tests run it only in their namespaces)");
        cmd::run(Command::new("systemctl").args(["disable", "--quiet", service]))?;
    }
    Ok(())
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(BPFFS) && l.contains(" bpf ")) {
        return Ok(());
    }
    println!("setup: mounting bpffs on {BPFFS} (pinned maps and links live there)");
    if !Path::new(BPFFS).exists() {
        std::fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

    use super::NoServiceStarts;

    #[test]
    fn the_install_hook_refuses_starts_and_goes_after_leaving_a_hosts_own() {
        let dir = std::env::temp_dir().join(format!("xtask-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy-rc.d");
        {
            let _hook = NoServiceStarts::put(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755, "the hook must be executable");
            let status = Command::new("sh").arg(&path).args(["bird", "start"]).status().unwrap();
            assert_eq!(status.code(), Some(101), "101 is 'action forbidden' to invoke-rc.d");
        }
        assert!(!Path::new(&path).exists(), "the hook stayed after the install");
        // One an interrupted setup left is setup's to remove.
        std::fs::write(&path, format!("#!/bin/sh\n# {}\nexit 101\n", super::HOOK_MARKER)).unwrap();
        drop(NoServiceStarts::put(&path).unwrap());
        assert!(!Path::new(&path).exists(), "an interrupted setup's hook stayed");
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        drop(NoServiceStarts::put(&path).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "#!/bin/sh\nexit 0\n",
            "the host's own hook changed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
