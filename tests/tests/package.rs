//! The Debian package `cargo xtask package` builds: its files and modes, its alerting rules, its
//! install (which must start nothing), its systemd units (`systemd-analyze verify`), its config,
//! and the unit's capability set, which must be exactly what lbd needs to run.
//!
//! The package is built once per run from the debug binaries this test run already has
//! (`--binaries`), gzip-compressed to be quick; the command itself builds release and xz.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_tests::{
    bins::{self, Running},
    lbd::{lb_namespace, lbctl, LbdFiles},
    netns::Netns,
    privilege::require_root,
    unique_name,
};

/// The files the package installs besides the docs, with their modes as `dpkg-deb --contents`
/// shows them.
const FILES: &[(&str, &str)] = &[
    ("etc/lbd/backend.toml", "-rw-r--r--"),
    // Where web_admin_token goes: not for every user's eyes.
    ("etc/lbd/lbd.toml", "-rw-r-----"),
    ("lib/systemd/system/lbd-backend.service", "-rw-r--r--"),
    ("lib/systemd/system/lbd.service", "-rw-r--r--"),
    ("usr/bin/lbctl", "-rwxr-xr-x"),
    ("usr/sbin/lbd", "-rwxr-xr-x"),
    ("usr/share/bash-completion/completions/lbctl", "-rw-r--r--"),
    ("usr/share/doc/lbd/README.md", "-rw-r--r--"),
    ("usr/share/doc/lbd/copyright", "-rw-r--r--"),
    ("usr/share/fish/vendor_completions.d/lbctl.fish", "-rw-r--r--"),
    ("usr/share/lbd/prometheus/lbd-alerts.yml", "-rw-r--r--"),
    ("usr/share/zsh/vendor-completions/_lbctl", "-rw-r--r--"),
];
/// The docs, installed beside the README: every `docs/*.md` of the workspace.
fn doc_files() -> Vec<(String, String)> {
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs");
    let entries = std::fs::read_dir(docs).unwrap_or_else(|e| panic!("cannot list {docs}: {e}"));
    entries
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| (format!("usr/share/doc/lbd/docs/{name}"), "-rw-r--r--".to_owned()))
        .collect()
}

/// Every file the package installs: [`FILES`] and the docs.
fn installed_files() -> Vec<(String, String)> {
    let listed = FILES.iter().map(|(p, m)| ((*p).to_owned(), (*m).to_owned()));
    listed.chain(doc_files()).collect()
}

const CONFFILES: &[&str] = &["/etc/lbd/lbd.toml", "/etc/lbd/backend.toml"];
const UNITS: &[&str] = &["lbd.service", "lbd-backend.service"];

/// The .deb, built by the first test that needs it.
fn package() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|_| panic!("building the package failed in another test"));
    built.get_or_insert_with(build_package).clone()
}

fn build_package() -> PathBuf {
    let bin_dir = bins::path("lbd").parent().expect("lbd is in a directory").to_owned();
    let output = bin_dir.join("test-package");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["run", "--quiet", "--package", "xtask", "--", "package", "--compression", "gzip"])
        .arg("--binaries")
        .arg(&bin_dir)
        .arg("--output")
        .arg(&output)
        .output()
        .expect("run cargo xtask package");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo xtask package failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It prints where the package is, as its last line.
    let deb = stdout
        .lines()
        .find_map(|l| l.strip_prefix("package: "))
        .unwrap_or_else(|| panic!("cargo xtask package printed no `package: PATH` line:\n{stdout}"));
    let deb = PathBuf::from(deb);
    assert!(
        deb.starts_with(&output) && deb.is_file(),
        "{} is not a file under {}",
        deb.display(),
        output.display()
    );
    deb
}

/// A directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(role: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name(role));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }

    /// The package's files, unpacked here (`dpkg -x`).
    fn extracted(deb: &Path) -> Self {
        let root = Scratch::new("pkg-root");
        ok(Command::new("dpkg").arg("-x").arg(deb).arg(&root.0));
        root
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }

    fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command, panics with its output unless it succeeds, returns its stdout.
fn ok(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("could not run {command:?}: {e}"));
    assert!(out.status.success(), "{command:?} failed ({}):\n{}", out.status, text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A control field's value (`dpkg-deb --field`).
fn control_field(deb: &Path, field: &str) -> String {
    ok(Command::new("dpkg-deb").arg("--field").arg(deb).arg(field)).trim().to_owned()
}

#[test]
fn package_holds_every_file_with_its_mode_and_control_fields() {
    let deb = package();
    let contents = ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let mut files = BTreeSet::new();
    for line in contents.lines() {
        // "-rwxr-xr-x root/root 15732784 2026-12-06 20:25 ./usr/sbin/lbd"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [mode, owner, _, _, _, path] = fields[..] else { panic!("unexpected dpkg-deb line {line:?}") };
        assert_eq!(owner, "root/root", "{path} is not owned by root: {line}");
        let path = path.trim_start_matches("./").trim_end_matches('/');
        if mode.starts_with('d') {
            assert_eq!(mode, "drwxr-xr-x", "directory {path}: {line}");
        } else {
            files.insert((path.to_owned(), mode.to_owned()));
        }
    }
    let want: BTreeSet<(String, String)> = installed_files().into_iter().collect();
    assert_eq!(files, want, "the package's files and modes differ from the list (left: the package)");

    let conffiles = ok(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("conffiles"));
    let conffiles: BTreeSet<&str> = conffiles.lines().collect();
    assert_eq!(conffiles, CONFFILES.iter().copied().collect(), "conffiles");

    assert_eq!(control_field(&deb, "Package"), "lbd");
    assert_eq!(control_field(&deb, "Section"), "net");
    let depends = control_field(&deb, "Depends");
    assert!(depends.contains("libc6 (>= 2."), "Depends has no libc version from the build: {depends}");
    assert!(!depends.contains("iproute2"), "Depends names iproute2, which lbd does not run: {depends}");
    let description = control_field(&deb, "Description");
    for needed in ["backend-host", "--on-exit keep", "lbd detach", "pin"] {
        assert!(description.contains(needed), "the description does not mention {needed:?}:\n{description}");
    }
    // A removal leaves no balancer forwarding with nothing to manage it: prerm runs `lbd detach`
    // (tests/tests/agent_start.rs shows what it removes) after the stop, and only on removal.
    let prerm = ok(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("prerm"));
    let stop = prerm.find("systemctl stop lbd.service").expect("prerm stops lbd");
    let detach =
        prerm.find("/usr/sbin/lbd detach --config /etc/lbd/lbd.toml").expect("prerm runs lbd detach");
    assert!(stop < detach, "prerm detaches before lbd stops:\n{prerm}");
    assert!(prerm.contains("\"$1\" = remove"), "prerm detaches on an upgrade too:\n{prerm}");
    let undo = prerm
        .find("backend-host --config /etc/lbd/backend.toml --undo")
        .expect("prerm undoes a backend host");
    assert!(
        prerm.find("lbd-backend.service").is_some_and(|s| s < undo),
        "prerm undoes before the stop:\n{prerm}"
    );
    // The version is the binary's own.
    let lbd_version = ok(Command::new(bins::path("lbd")).arg("--version"));
    let version = control_field(&deb, "Version");
    assert!(
        lbd_version.trim().ends_with(&format!(" {version}")),
        "Version {version} but lbd says {lbd_version}"
    );
}

/// The alerting rules a Prometheus config points at are the ones tests/tests/alert_rules.rs
/// checks.
#[test]
fn package_installs_the_checked_alert_rules() {
    let root = Scratch::extracted(&package());
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/prometheus/lbd-alerts.yml");
    let source = std::fs::read_to_string(source).unwrap_or_else(|e| panic!("read {source}: {e}"));
    assert!(
        root.read("usr/share/lbd/prometheus/lbd-alerts.yml") == source,
        "the package's usr/share/lbd/prometheus/lbd-alerts.yml differs from packaging/prometheus/lbd-alerts.yml"
    );
}

/// Installs into a scratch root with dpkg (its maintainer scripts run, outside a chroot, with
/// DPKG_ROOT set), then purges: nothing may start or be enabled, and the purge leaves nothing.
#[test]
fn package_installs_into_a_root_starts_nothing_and_purges_clean() {
    require_root();
    let deb = package();
    let root = Scratch::new("pkg-dpkg-root");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
        std::fs::create_dir_all(root.path(dir)).expect("dpkg's admin directory");
    }
    std::fs::write(root.path("var/lib/dpkg/status"), "").expect("dpkg status file");
    let enabled_before = enabled_units(Path::new("/"));
    let dpkg = |args: &[&str]| {
        ok(Command::new("dpkg")
            .arg(format!("--root={}", root.0.display()))
            .arg(format!("--log={}", root.path("var/log/dpkg.log").display()))
            // libc6 and procps are not in the scratch root; the scripts honour DPKG_ROOT.
            .args(["--force-depends", "--force-script-chrootless"])
            .args(args))
    };
    dpkg(&["--install", &deb.display().to_string()]);

    for (file, _) in installed_files() {
        assert!(root.path(&file).is_file(), "{file} was not installed");
    }
    let version = ok(Command::new(root.path("usr/sbin/lbd")).arg("--version"));
    assert!(version.starts_with("lb"), "lbd --version from the installed root: {version}");
    let help = ok(Command::new(root.path("usr/bin/lbctl")).arg("--help"));
    assert!(help.contains("status") && help.contains("completions"), "lbctl --help: {help}");
    let registered = ok(Command::new("dpkg-query")
        .arg(format!("--admindir={}", root.path("var/lib/dpkg").display()))
        .args(["--show", "--showformat=${Conffiles}", "lbd"]));
    for conffile in CONFFILES {
        assert!(
            registered.contains(conffile),
            "dpkg did not register {conffile} as a conffile: {registered}"
        );
    }

    // Nothing started: no process runs a binary of the scratch root. Nothing enabled: no unit
    // of ours in a *.wants directory, here or on the host.
    let running = processes_running_from(&root.0);
    assert!(running.is_empty(), "installing started {running:?}");
    for unit in UNITS {
        assert!(!enabled_units(&root.0).iter().any(|u| u == unit), "installing enabled {unit} in the root");
    }
    assert_eq!(enabled_units(Path::new("/")), enabled_before, "installing changed the host's enabled units");

    dpkg(&["--purge", "lbd"]);
    let left: Vec<String> =
        installed_files().into_iter().map(|(f, _)| f).filter(|f| root.path(f).exists()).collect();
    assert!(left.is_empty(), "the purge left {left:?}");
    assert!(!root.path("etc/lbd").exists(), "the purge left /etc/lbd");
}

/// Unit names in the `*.wants` directories of `root`/etc/systemd/system, sorted.
fn enabled_units(root: &Path) -> Vec<String> {
    let mut units = Vec::new();
    let Ok(dirs) = std::fs::read_dir(root.join("etc/systemd/system")) else { return units };
    for dir in dirs.flatten().filter(|d| d.file_name().to_string_lossy().ends_with(".wants")) {
        for unit in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            units.push(unit.file_name().to_string_lossy().into_owned());
        }
    }
    units.sort();
    units
}

fn processes_running_from(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|p| std::fs::read_link(p.path().join("exe")).ok())
        .filter(|exe| exe.starts_with(dir))
        .collect()
}

/// `systemd-analyze verify` against the unpacked package, with the host's systemd targets beside
/// it (a root with only the package lacks sysinit.target).
/// It must print nothing: it reports unknown keys and bad values as warnings, and still exits 0.
#[test]
fn units_pass_systemd_analyze_verify() {
    let root = Scratch::extracted(&package());
    let unit_dir = root.path("lib/systemd/system");
    for entry in std::fs::read_dir("/lib/systemd/system").expect("the host's systemd units").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".target") || name.ends_with(".slice") {
            std::fs::copy(entry.path(), unit_dir.join(&name)).expect("copy a systemd unit");
        }
    }
    for unit in UNITS {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.0.display()))
            .arg(unit)
            .output()
            .expect("run systemd-analyze (package systemd)");
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "systemd-analyze verify {unit} ({}):\n{}",
            out.status,
            text(&out)
        );
    }
}

/// The values of `key` in a unit file (every line that sets it, in order).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
        .collect()
}

fn unit_value(unit: &str, key: &str) -> String {
    let values = unit_values(unit, key);
    assert_eq!(values.len(), 1, "the unit sets {key} {} times", values.len());
    values[0].clone()
}

#[test]
fn packaged_config_is_valid_safe_and_matches_the_unit() {
    let root = Scratch::extracted(&package());
    let text = root.read("etc/lbd/lbd.toml");
    let config = lb_userspace::config::parse(&text, "/etc/lbd/lbd.toml")
        .unwrap_or_else(|e| panic!("the packaged /etc/lbd/lbd.toml is invalid: {e}"));
    assert!(config.vips.is_empty(), "a fresh install would balance {} VIPs", config.vips.len());
    assert!(config.metrics.is_none(), "a fresh install would open a metrics port");

    // Where the unit lets lbd write is where the config puts its files.
    let unit = root.read("lib/systemd/system/lbd.service");
    let runtime = Path::new("/run").join(unit_value(&unit, "RuntimeDirectory"));
    let state = Path::new("/var/lib").join(unit_value(&unit, "StateDirectory"));
    let bpffs = PathBuf::from(unit_value(&unit, "ReadWritePaths"));
    assert_eq!(
        config.api_socket.parent(),
        Some(runtime.as_path()),
        "api_socket is not in the RuntimeDirectory"
    );
    assert_eq!(config.state_file.parent(), Some(state.as_path()), "state_file is not in the StateDirectory");
    assert!(config.pin_path.starts_with(&bpffs), "pin_path is not on the unit's bpffs {}", bpffs.display());
    assert!(
        unit_value(&unit, "ExecStart").contains("--config /etc/lbd/lbd.toml --on-exit keep"),
        "ExecStart"
    );

    // The commented example (lines "#key ..." and "#[table]", not "# prose") is valid too.
    let example: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.starts_with(' ') => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let example = lb_userspace::config::parse(&example, "the example in /etc/lbd/lbd.toml")
        .unwrap_or_else(|e| panic!("the commented example of /etc/lbd/lbd.toml is invalid: {e}"));
    assert_eq!(example.vips.len(), 1, "the example's VIPs");
    assert!(example.metrics.is_some(), "the example's metrics line");

    let backend = root.read("etc/lbd/backend.toml");
    for line in ["interfaces = [\"eth0\"]", "decap = true", "pin_path = \"/sys/fs/bpf/lb-backend\""] {
        assert!(backend.lines().any(|l| l == line), "backend.toml has no line {line:?}");
    }
    // The backend host writes its record of what it changed before each change: under
    // ProtectSystem=strict only the unit's own directories are writable, and a record lost at a
    // stop would leave a crashed run's changes for good.
    let backend = lb_userspace::backend_host::config::parse(&backend, "/etc/lbd/backend.toml")
        .unwrap_or_else(|e| panic!("the packaged /etc/lbd/backend.toml is invalid: {e}"));
    let unit = root.read("lib/systemd/system/lbd-backend.service");
    assert_eq!(unit_value(&unit, "ProtectSystem"), "strict");
    let runtime = unit_values(&unit, "RuntimeDirectory");
    let runtime = runtime.iter().map(|d| Path::new("/run").join(d)).collect::<Vec<_>>();
    assert!(
        backend.state_file.parent().is_some_and(|dir| runtime.iter().any(|r| r == dir)),
        "lbd-backend.service cannot write state_file {} (RuntimeDirectory={runtime:?})",
        backend.state_file.display()
    );
    assert_eq!(unit_value(&unit, "RuntimeDirectoryPreserve"), "yes", "the record goes at a stop");
    assert!(backend.pin_path.starts_with(unit_value(&unit, "ReadWritePaths")), "backend pin_path");
}

/// The unit's ExecReload (the packaged lbctl, the test's config file and API socket in place of
/// the packaged ones) succeeds for the running config and fails, saying why, for a config lbd
/// refuses: `systemctl reload lbd` reports what the journal alone would otherwise say.
fn reload_as_the_unit_does(root: &Scratch, unit: &str, files: &LbdFiles, config: &str) {
    let reload = unit_value(unit, "ExecReload");
    let mut words = reload.split_whitespace();
    let program = words.next().expect("ExecReload names a program");
    assert!(program.starts_with('/'), "ExecReload={reload}: systemd wants an absolute path");
    let args: Vec<String> = words
        .map(|w| if w == "/etc/lbd/lbd.toml" { files.config().display().to_string() } else { w.to_owned() })
        .collect();
    assert!(
        args.contains(&files.config().display().to_string()),
        "ExecReload={reload}: it does not read /etc/lbd/lbd.toml"
    );
    let run = || {
        Command::new(root.path(program.trim_start_matches('/')))
            .args(&args)
            .env("LBCTL_SOCKET", files.socket())
            .output()
            .expect("run the unit's ExecReload")
    };
    let out = run();
    assert!(out.status.success(), "ExecReload={reload} failed on the running config:\n{}", text(&out));
    // A key that takes effect only at a restart: refused, the reload fails and says why.
    std::fs::write(files.config(), config.replace("metrics = ", "metrics = \"127.0.0.1:9299\"\n# was: "))
        .unwrap();
    let out = run();
    std::fs::write(files.config(), config).expect("restore the config");
    assert!(!out.status.success(), "ExecReload={reload} succeeded on a refused config:\n{}", text(&out));
    assert!(text(&out).contains("metrics"), "the failed reload does not say why:\n{}", text(&out));
}

/// setpriv's capability names, in the kernel's order: a name's index is its bit.
fn capability_bits() -> Vec<String> {
    ok(Command::new("setpriv").arg("--list-caps")).lines().map(str::to_owned).collect()
}

/// The unit's capabilities as setpriv names ("bpf", "net_admin").
fn unit_capabilities(unit: &str, key: &str) -> Vec<String> {
    let mut caps = Vec::new();
    for value in unit_values(unit, key) {
        assert!(!value.starts_with('~'), "{key}={value}: an inverted list is not what this test emulates");
        for cap in value.split_whitespace() {
            let name = cap.strip_prefix("CAP_").unwrap_or_else(|| panic!("{key}: {cap} is not a CAP_ name"));
            caps.push(name.to_lowercase());
        }
    }
    caps
}

/// lbd as the unit runs it: root, only the `bounding` capabilities (and `ambient` ones), no new
/// privileges; in the namespace.
fn spawn_lbd(ns: &Netns, files: &LbdFiles, lbd: &Path, bounding: &[String], ambient: &[String]) -> Running {
    let log = std::fs::File::create(files.dir.join("lbd.log")).expect("log file");
    let list = |caps: &[String]| caps.iter().map(|c| format!(",+{c}")).collect::<String>();
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .args(["setpriv", "--no-new-privs", "--clear-groups"])
        .arg(format!("--bounding-set=-all{}", list(bounding)))
        .arg(format!("--inh-caps=-all{}", list(ambient)));
    if !ambient.is_empty() {
        command.arg(format!("--ambient-caps=-all{}", list(ambient)));
    }
    command
        .arg("--")
        .arg(lbd)
        .arg("--config")
        .arg(files.config())
        .args(["--on-exit", "keep"])
        .env("RUST_LOG", "info")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    Running::spawn(&mut command)
}

/// Waits until lbd answers `lbctl status` (Ok) or exits (Err with its log).
fn wait_for_api(lbd: &mut Running, files: &LbdFiles) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = lbd.child.try_wait() {
            let log = std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default();
            return Err(format!("lbd exited ({status}):\n{log}"));
        }
        if files.socket().exists() {
            let out = lbctl(&files.socket(), &["status"]);
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("lbd neither answered nor exited within 20 s");
}

fn effective_capabilities(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read lbd's status");
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff line");
    u64::from_str_radix(hex.trim(), 16).expect("CapEff is hex")
}

fn xdp_attached(ns: &Netns) -> bool {
    ns.ip(&["link", "show", "dev", "eth0"]).contains("prog/xdp")
}

/// The unit's capability set is enough for lbd (it attaches, serves its API, metrics, a health
/// check, and adopts its pins after a restart), and every capability in it is needed. Also shows
/// what docs/operations.md says about stopping: a stop keeps forwarding, removing the pins ends it.
#[test]
fn lbd_runs_with_exactly_the_units_capabilities() {
    require_root();
    let root = Scratch::extracted(&package());
    let unit = root.read("lib/systemd/system/lbd.service");
    assert!(unit_values(&unit, "User").is_empty(), "the unit sets User=: this test emulates a root service");
    assert_eq!(unit_value(&unit, "NoNewPrivileges"), "yes", "NoNewPrivileges");
    let bounding = unit_capabilities(&unit, "CapabilityBoundingSet");
    let ambient = unit_capabilities(&unit, "AmbientCapabilities");
    assert!(
        !bounding.is_empty(),
        "the unit has no CapabilityBoundingSet: lbd would run with every capability"
    );
    let bits = capability_bits();
    let mask = bounding.iter().fold(0u64, |m, cap| {
        let bit = bits.iter().position(|b| b == cap).unwrap_or_else(|| panic!("setpriv knows no {cap}"));
        m | 1 << bit
    });
    let lbd = root.path("usr/sbin/lbd");

    let ns = lb_namespace();
    let files = LbdFiles::new();
    let config = format!(
        "metrics = \"127.0.0.1:9100\"\n{}[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\n\
         protocol = \"tcp\"\n\n  [vip.health]\n  type = \"tcp\"\n\n  [[vip.backend]]\n  address = \"198.18.0.11\"\n",
        files.header(&["eth0"], "198.18.0.2", "fd00::2")
    );
    std::fs::write(files.config(), &config).expect("write config");

    let mut first = spawn_lbd(&ns, &files, &lbd, &bounding, &ambient);
    let status = wait_for_api(&mut first, &files)
        .unwrap_or_else(|log| panic!("lbd with the unit's capabilities {bounding:?} did not start: {log}"));
    assert!(status.contains("eth0") && status.contains("fresh start"), "lbctl status: {status}");
    assert_eq!(
        effective_capabilities(first.child.id()),
        mask,
        "lbd's effective capabilities are not the unit's"
    );
    assert!(xdp_attached(&ns), "lbd answered but no XDP program is on eth0");
    reload_as_the_unit_does(&root, &unit, &files, &config);
    assert!(first.terminate().success(), "lbd did not stop cleanly on SIGTERM");
    assert!(xdp_attached(&ns), "a stop with --on-exit keep detached the balancer");

    let mut second = spawn_lbd(&ns, &files, &lbd, &bounding, &ambient);
    let status = wait_for_api(&mut second, &files)
        .unwrap_or_else(|log| panic!("a restarted lbd with the unit's capabilities failed: {log}"));
    assert!(status.contains("adopted"), "the restarted lbd did not adopt the pins: {status}");
    assert!(second.terminate().success(), "lbd did not stop cleanly on SIGTERM");

    // Removing the pins (as docs/operations.md says) stops forwarding for real.
    std::fs::remove_dir_all(&files.pin_path).expect("remove the pins");
    let deadline = Instant::now() + Duration::from_secs(5);
    while xdp_attached(&ns) {
        assert!(Instant::now() < deadline, "the balancer stayed attached after its pins were removed");
        std::thread::sleep(Duration::from_millis(50));
    }

    for missing in &bounding {
        let fewer: Vec<String> = bounding.iter().filter(|c| *c != missing).cloned().collect();
        let mut attempt = spawn_lbd(&ns, &files, &lbd, &fewer, &ambient);
        if let Ok(status) = wait_for_api(&mut attempt, &files) {
            panic!("lbd started with {fewer:?}, without {missing}: the unit grants more than lbd needs\n{status}");
        }
        let _ = std::fs::remove_dir_all(&files.pin_path);
    }
}
