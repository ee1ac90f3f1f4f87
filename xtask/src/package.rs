//! `cargo xtask package`: a Debian package (binary .deb) of lbd, lbctl, their systemd units,
//! example configs and Prometheus alerting rules.
//!
//! Built with `dpkg-deb --build` from a tree staged here rather than with cargo-deb: dpkg-deb is
//! on every Debian system, so there is no packaging tool to compile and keep building with our
//! rustc, and every file, mode and maintainer script of the package is spelled out below and in
//! `packaging/`. `dpkg-shlibdeps` (dpkg-dev) computes the libc and libgcc versions the binaries
//! need, as Debian's own packages do.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::cmd::{self, output};

/// The binaries: (name in the cargo target directory, installed path).
const BINARIES: &[(&str, &str)] = &[("lbd", "usr/sbin/lbd"), ("lbctl", "usr/bin/lbctl")];
/// Files from the source tree: (path in the workspace, installed path, mode). Everything
/// installed under etc/ is a conffile: dpkg keeps the admin's changes on upgrades.
const FILES: &[(&str, &str, u32)] = &[
    ("packaging/lbd.service", "lib/systemd/system/lbd.service", 0o644),
    ("packaging/lbd-backend.service", "lib/systemd/system/lbd-backend.service", 0o644),
    // Not readable by every user: it is where `web_admin_token` goes, which drains and weighs
    // backends from the status page (the API socket is root's alone).
    ("packaging/lbd.toml", "etc/lbd/lbd.toml", 0o640),
    ("packaging/backend.toml", "etc/lbd/backend.toml", 0o644),
    ("README.md", "usr/share/doc/lbd/README.md", 0o644),
    ("packaging/copyright", "usr/share/doc/lbd/copyright", 0o644),
    // Not under /usr/share/doc, which minimal images may leave out: a Prometheus config names
    // this path (`rule_files:`).
    ("packaging/prometheus/lbd-alerts.yml", "usr/share/lbd/prometheus/lbd-alerts.yml", 0o644),
];
/// The docs: every `*.md` in this workspace directory is installed into the other, next to the
/// README whose links point there.
const DOCS: (&str, &str) = ("docs", "usr/share/doc/lbd/docs");
/// lbctl's completion scripts: (shell, installed path where that shell looks for them).
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/lbctl"),
    ("zsh", "usr/share/zsh/vendor-completions/_lbctl"),
    ("fish", "usr/share/fish/vendor_completions.d/lbctl.fish"),
];
const MAINTAINER_SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

const PACKAGE: &str = "lbd";
const MAINTAINER: &str = "lb developers <lb@example.invalid>";
const DESCRIPTION: &str = "\
XDP layer-4 load balancer: agent (lbd), CLI (lbctl), backend-host loader
 lbd balances TCP and UDP services (VIPs) over backend hosts in the kernel's
 XDP receive path: Maglev and other schedulers, a flow table that keeps every
 connection on its backend, IPIP/IP6IP6 tunnels or L2 direct server return,
 health checks, a control API (lbctl) and Prometheus metrics.
 .
 Backend hosts run the same binary: `lbd backend-host` (lbd-backend.service)
 attaches the decap program and binds the VIPs to lo.
 .
 The package neither enables nor starts either service. lbd.service runs lbd
 with --on-exit keep: a stop, restart or upgrade keeps forwarding (the XDP
 links and maps stay pinned under /sys/fs/bpf). To stop forwarding for real,
 stop the service and run `lbd detach`; removing the package does both.";

pub struct Options {
    /// Take lbd and lbctl from this directory instead of building them (release).
    pub binaries: Option<PathBuf>,
    /// Where the .deb goes; default `target/debian`.
    pub output: Option<PathBuf>,
    /// dpkg-deb's compressor (`-Z`).
    pub compression: String,
}

/// Builds the package; returns the .deb's path.
pub fn run(options: &Options) -> anyhow::Result<PathBuf> {
    let bin_dir = match &options.binaries {
        Some(dir) => dir.clone(),
        None => {
            cmd::cargo(&["build", "--release", "--package", "lb-userspace", "--bins"])?;
            cmd::target_dir().join("release")
        }
    };
    for (name, _) in BINARIES {
        if !bin_dir.join(name).is_file() {
            bail!(
                "{} has no {name}: build it first (`cargo build -p lb-userspace --bins`)",
                bin_dir.display()
            );
        }
    }
    let version = version_of(&bin_dir.join("lbd"))?;
    let arch = output("dpkg", &["--print-architecture"])
        .context("`dpkg --print-architecture` failed: building a .deb needs dpkg")?
        .trim()
        .to_owned();
    let out_dir = options.output.clone().unwrap_or_else(|| cmd::target_dir().join("debian"));
    // dpkg-shlibdeps wants debian/control in its working directory and the binaries in
    // debian/<package>/, with DEBIAN/ in it.
    let work = out_dir.join(format!("{PACKAGE}-staging"));
    let stage = work.join("debian").join(PACKAGE);
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing the old {}", work.display()))?;
    }
    make_dir(&stage.join("DEBIAN"))?;
    fs::write(work.join("debian/control"), "").context("writing the staging debian/control")?;

    stage_files(&bin_dir, &stage)?;
    let depends = depends(&work, &stage)?;
    write_control_files(&stage, &version, &arch, &depends)?;
    set_dir_modes(&stage)?;

    let deb = out_dir.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .arg("--root-owner-group")
            .arg(format!("-Z{}", options.compression))
            .arg("--build")
            .arg(&stage)
            .arg(&deb),
    )?;
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(deb)
}

/// The version `lbd --version` reports ("lb-userspace 0.1.0"): the package has the binary's.
fn version_of(lbd: &Path) -> anyhow::Result<String> {
    let out =
        Command::new(lbd).arg("--version").output().with_context(|| format!("running {}", lbd.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        [_, version] if out.status.success() && version.starts_with(|c: char| c.is_ascii_digit()) => {
            Ok(version.to_owned())
        }
        _ => bail!("`{} --version` printed {text:?}, not \"NAME VERSION\"", lbd.display()),
    }
}

fn stage_files(bin_dir: &Path, stage: &Path) -> anyhow::Result<()> {
    for (name, installed) in BINARIES {
        let to = stage.join(installed);
        copy(&bin_dir.join(name), &to, 0o755)?;
        // Debug info and symbols are most of a binary's size and nothing a user runs.
        cmd::run(Command::new("strip").arg("--strip-unneeded").arg(&to))?;
    }
    let root = cmd::workspace_root();
    for (source, installed, mode) in FILES {
        copy(&root.join(source), &stage.join(installed), *mode)?;
    }
    let (docs, docs_installed) = DOCS;
    let entries = fs::read_dir(root.join(docs)).with_context(|| format!("listing {docs}/"))?;
    for entry in entries {
        let name = entry.with_context(|| format!("listing {docs}/"))?.file_name();
        if Path::new(&name).extension().is_some_and(|e| e == "md") {
            copy(&root.join(docs).join(&name), &stage.join(docs_installed).join(&name), 0o644)?;
        }
    }
    let lbctl = stage.join("usr/bin/lbctl");
    for (shell, installed) in COMPLETIONS {
        let out = Command::new(&lbctl)
            .args(["completions", shell])
            .output()
            .context("running lbctl completions")?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!("`lbctl completions {shell}` failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        write(&stage.join(installed), &out.stdout, 0o644)?;
    }
    for script in MAINTAINER_SCRIPTS {
        copy(&root.join("packaging").join(script), &stage.join("DEBIAN").join(script), 0o755)?;
    }
    Ok(())
}

/// The Depends field: the shared libraries' packages with the versions the binaries need.
fn depends(work: &Path, stage: &Path) -> anyhow::Result<String> {
    let mut command = Command::new("dpkg-shlibdeps");
    command.arg("-O").current_dir(work);
    for (_, installed) in BINARIES {
        command.arg(stage.join(installed));
    }
    let out = command.output().context("running dpkg-shlibdeps (package dpkg-dev)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let found = text.lines().find_map(|l| l.strip_prefix("shlibs:Depends="));
    match found {
        Some(libs) if out.status.success() => Ok(libs.to_owned()),
        _ => bail!("dpkg-shlibdeps found no dependencies: {text}{}", String::from_utf8_lossy(&out.stderr)),
    }
}

fn write_control_files(stage: &Path, version: &str, arch: &str, depends: &str) -> anyhow::Result<()> {
    let files = staged_files(stage)?;
    let kib: u64 = files.iter().map(|(_, size)| size.div_ceil(1024)).sum();
    let control = format!(
        "Package: {PACKAGE}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {kib}\nDepends: {depends}\nSection: net\nPriority: optional\n\
         Description: {DESCRIPTION}\n"
    );
    let debian = stage.join("DEBIAN");
    write(&debian.join("control"), control.as_bytes(), 0o644)?;
    let conffiles: String = FILES
        .iter()
        .filter(|(_, installed, _)| installed.starts_with("etc/"))
        .map(|(_, installed, _)| format!("/{installed}\n"))
        .collect();
    write(&debian.join("conffiles"), conffiles.as_bytes(), 0o644)?;
    // md5sums lets `dpkg --verify` (debsums) check the installed files.
    let mut md5sum = Command::new("md5sum");
    md5sum.current_dir(stage).args(files.iter().map(|(path, _)| path));
    let sums = md5sum.output().context("running md5sum")?;
    if !sums.status.success() {
        bail!("md5sum failed: {}", String::from_utf8_lossy(&sums.stderr));
    }
    write(&debian.join("md5sums"), &sums.stdout, 0o644)
}

/// Every file staged outside DEBIAN/: (path relative to the stage, size in bytes), sorted.
fn staged_files(stage: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    fn walk(dir: &Path, stage: &Path, found: &mut Vec<(String, u64)>) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                if path != stage.join("DEBIAN") {
                    walk(&path, stage, found)?;
                }
            } else {
                let relative = path.strip_prefix(stage).expect("under the stage");
                found.push((relative.display().to_string(), fs::metadata(&path)?.len()));
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(stage, stage, &mut found).with_context(|| format!("listing {}", stage.display()))?;
    found.sort();
    Ok(found)
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

/// Writes a file with an exact mode, not the umask's.
fn write(to: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    make_dir(to.parent().expect("a file in a directory"))?;
    fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

fn make_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Every directory of the stage 0755, whatever the umask (dpkg-deb refuses a DEBIAN/ that is
/// writable by others).
fn set_dir_modes(dir: &Path) -> anyhow::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.display()))?;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            set_dir_modes(&path)?;
        }
    }
    Ok(())
}
