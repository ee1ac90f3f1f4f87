//! The pinned links lbd adopts at start: one the kernel detached (its interface was deleted and
//! re-created) or one attached in another mode than `xdp_mode` is replaced, not adopted, and
//! what is attached (not what is configured) is what lbd reports.
use std::time::{Duration, Instant};

use lb_tests::{
    lbd::{lb_namespace, Lbd, LbdFiles},
    netns::Netns,
};

/// The XDP mode the kernel reports for `interface` (`ip -j link`: 1 native, 2 generic), if a
/// program is attached.
fn attached_mode(ns: &Netns, interface: &str) -> Option<&'static str> {
    let text = ns.ip(&["-j", "-d", "link", "show", "dev", interface]);
    let links: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("`ip -j link` printed no JSON ({e}): {text}"));
    match links[0]["xdp"]["mode"].as_u64() {
        None => None,
        Some(1) => Some("native"),
        Some(2) => Some("generic"),
        Some(other) => {
            panic!("{interface} has XDP attached in mode {other}, neither native nor generic: {text}")
        }
    }
}

fn log(files: &LbdFiles) -> String {
    std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default()
}

/// The first line of the log that holds every one of `words`.
fn log_line(files: &LbdFiles, words: &[&str]) -> Option<String> {
    log(files).lines().find(|l| words.iter().all(|w| l.contains(w))).map(String::from)
}

/// eth0 and its peer eth1 deleted and made again under the same names (a driver reload, a veth
/// re-made): the new eth0 has another ifindex and nothing attached.
fn re_create_veth(ns: &Netns) {
    let before = ns.ifindex("eth0");
    ns.ip(&["link", "del", "eth0"]);
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]);
    ns.addr("eth0", "198.18.0.2/24");
    ns.ip(&["link", "set", "eth1", "up"]);
    assert_ne!(ns.ifindex("eth0"), before, "the re-created eth0 kept its ifindex: the test proves nothing");
}

/// A pinned link outlives its interface as a dead link (the kernel detached it; forwarding
/// stopped). The next lbd unpins it and attaches anew, saying why, instead of refusing to start.
#[test]
fn a_link_whose_interface_was_re_created_is_attached_anew() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let lbd = Lbd::start(&ns, &files, &files.header(&["eth0"], "198.18.0.2", "fd00::2"));
    assert_eq!(attached_mode(&ns, "eth0"), Some("native"), "the balancer is not attached at first");
    lbd.kill(); // SIGKILL: the pins stay
    re_create_veth(&ns);
    assert_eq!(attached_mode(&ns, "eth0"), None, "the re-created eth0 has a program attached already");

    let lbd = Lbd::start_with(&ns, &files, &[]);
    assert_eq!(attached_mode(&ns, "eth0"), Some("native"), "lbd started, but the new eth0 has no balancer");
    let line = log_line(&files, &["WARN", "eth0", "re-attached"])
        .unwrap_or_else(|| panic!("lbd did not warn that it re-attached eth0:\n{}", log(&files)));
    assert!(line.contains("deleted"), "the warning does not say the interface was deleted: {line}");
    let status = lbd.lbctl_ok(&["status"]);
    assert!(
        status.contains("eth0 (native)"),
        "lbctl status does not say eth0 is attached in native mode:\n{status}"
    );
    assert!(
        status.contains("re-attached 1 of its pinned links"),
        "lbctl status does not say a link was replaced:\n{status}"
    );
}

/// eth0 renamed (it must be down for that) and another eth0 made: the pinned link still drives
/// the renamed interface. The next lbd takes it from there (not configured) to the new eth0.
#[test]
fn a_link_on_a_renamed_interface_goes_to_the_new_one_of_its_name() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let lbd = Lbd::start(&ns, &files, &files.header(&["eth0"], "198.18.0.2", "fd00::2"));
    lbd.kill();
    ns.ip(&["link", "set", "eth0", "down"]);
    ns.ip(&["link", "set", "eth0", "name", "old0"]);
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "peer0"]);
    ns.addr("eth0", "198.18.1.2/24");
    ns.ip(&["link", "set", "peer0", "up"]);
    assert_eq!(attached_mode(&ns, "old0"), Some("native"), "the balancer did not stay on the renamed eth0");

    let _lbd = Lbd::start_with(&ns, &files, &[]);
    assert_eq!(attached_mode(&ns, "eth0"), Some("native"), "lbd started, but the new eth0 has no balancer");
    assert_eq!(attached_mode(&ns, "old0"), None, "the balancer stayed on the renamed interface");
    let line = log_line(&files, &["WARN", "eth0", "re-attached"])
        .unwrap_or_else(|| panic!("lbd did not warn that it re-attached eth0:\n{}", log(&files)));
    assert!(line.contains("old0"), "the warning does not name the interface the link was on: {line}");
}

/// While lbd runs, an interface deleted under it leaves a dead link: lbd's periodic host check
/// logs it as an error that says what to do, and `lbctl status` shows it not attached.
#[test]
fn a_link_that_dies_while_lbd_runs_is_reported() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let lbd = Lbd::start(&ns, &files, &files.header(&["eth0"], "198.18.0.2", "fd00::2"));
    ns.ip(&["link", "del", "eth0"]);
    // lbd checks every 5 seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let line = loop {
        if let Some(line) = log_line(&files, &["ERROR", "eth0", "restart lbd"]) {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "lbd did not report eth0's dead link within 15 s:\n{}",
            log(&files)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(line.contains("deleted"), "the error does not say the interface was deleted: {line}");
    let status = lbd.lbctl_ok(&["status"]);
    assert!(
        status.contains("eth0 (not attached"),
        "lbctl status does not say eth0 is not attached:\n{status}"
    );
}

/// A link pinned in generic mode, then `xdp_mode = "native"`: the restarted lbd attaches in
/// native mode (the kernel refuses both at once: the generic link goes first) and says so;
/// `lbctl status` reports the mode attached.
#[test]
fn a_changed_xdp_mode_is_applied_at_restart() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let lbd = Lbd::start(&ns, &files, &format!("xdp_mode = \"generic\"\n{header}"));
    assert_eq!(
        attached_mode(&ns, "eth0"),
        Some("generic"),
        "xdp_mode = \"generic\" did not attach in generic mode"
    );
    let status = lbd.lbctl_ok(&["status"]);
    assert!(status.contains("eth0 (generic)"), "lbctl status does not say generic:\n{status}");
    let exit = lbd.process.terminate(); // --on-exit keep: the link stays pinned
    assert!(exit.success(), "lbd exited with {exit} on SIGTERM");

    let lbd = Lbd::start(&ns, &files, &format!("xdp_mode = \"native\"\n{header}"));
    assert_eq!(attached_mode(&ns, "eth0"), Some("native"), "the restarted lbd kept the generic attachment");
    let status = lbd.lbctl_ok(&["status"]);
    assert!(status.contains("eth0 (native)"), "lbctl status does not say native:\n{status}");
    log_line(&files, &["WARN", "eth0", "xdp_mode changed from generic to native", "re-attached"])
        .unwrap_or_else(|| panic!("lbd did not warn that it changed eth0's mode:\n{}", log(&files)));
    let attached = log_line(&files, &["INFO", "eth0", "balancer attached"]);
    assert!(
        attached.as_deref().is_none_or(|l| l.contains("native")),
        "lbd logs a mode other than the one attached: {attached:?}"
    );

    // The same mode again: the link is adopted (its program replaced in place), no warning.
    let exit = lbd.process.terminate();
    assert!(exit.success(), "lbd exited with {exit} on SIGTERM");
    let lbd = Lbd::start_with(&ns, &files, &[]);
    assert_eq!(attached_mode(&ns, "eth0"), Some("native"), "a restart in the same mode changed the mode");
    assert!(
        log_line(&files, &["WARN", "re-attached"]).is_none(),
        "a restart in the same mode re-attached:\n{}",
        log(&files)
    );
    let status = lbd.lbctl_ok(&["status"]);
    assert!(
        status.contains("took over 1 pinned link") || status.contains("adopted the running data plane"),
        "the link was not adopted:\n{status}"
    );
}

/// An upgrade to a release with another map layout: the earlier release's pins (`pin_path/vN`)
/// cannot be adopted, and its link holds the interface. The new lbd detaches that link, removes
/// those pins and attaches its own, keeping the saved state (a drain made at run time).
#[test]
fn an_earlier_layouts_pins_are_retired_and_the_saved_state_kept() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let config = format!(
        "{}[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\n  \
         [[vip.backend]]\n  address = \"198.18.0.11\"\n\n  [[vip.backend]]\n  address = \"198.18.0.12\"\n",
        files.header(&["eth0"], "198.18.0.2", "fd00::2")
    );
    let lbd = Lbd::start(&ns, &files, &config);
    lbd.lbctl_ok(&["backend", "drain", "web", "198.18.0.11"]);
    lbd.kill();
    // The same pins as an earlier release would have left them: under an older layout's name.
    let current = files.pin_path.join(lb_common::PIN_LAYOUT);
    let older = files.pin_path.join("v1");
    std::fs::rename(&current, &older).expect("rename the pin directory (bpffs)");
    assert_eq!(attached_mode(&ns, "eth0"), Some("native"), "the earlier link stopped forwarding");

    let lbd = Lbd::start_with(&ns, &files, &[]);
    assert!(!older.exists(), "the earlier layout's pins are still there");
    assert!(current.join("link_eth0").exists(), "lbd attached through no link of its own layout");
    assert_eq!(attached_mode(&ns, "eth0"), Some("native"), "the new lbd's balancer is not attached");
    let line = log_line(&files, &["WARN", "earlier release's map layout"])
        .unwrap_or_else(|| panic!("lbd did not say it retired the earlier pins:\n{}", log(&files)));
    assert!(line.contains("eth0"), "the warning does not name the link it detached: {line}");
    let backends = lbd.lbctl_ok(&["backend", "list", "web"]);
    let drained = backends.lines().find(|l| l.contains("198.18.0.11")).unwrap_or_default();
    assert!(drained.contains("drained"), "the drain made before the upgrade is lost:\n{backends}");
}

/// An upgrade whose release cannot load its programs (here the verifier refuses the balancer
/// without CAP_PERFMON, as a kernel would refuse a program it cannot verify) exits non-zero and
/// leaves the earlier release's balancer attached and its pins in place: forwarding goes on
/// until someone steps in, as after any start that fails.
#[test]
fn an_upgrade_that_cannot_load_leaves_the_earlier_release_forwarding() {
    use std::process::{Command, Stdio};
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let config = format!(
        "{}[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\n  \
         [[vip.backend]]\n  address = \"198.18.0.11\"\n",
        files.header(&["eth0"], "198.18.0.2", "fd00::2")
    );
    let lbd = Lbd::start(&ns, &files, &config);
    lbd.kill();
    let current = files.pin_path.join(lb_common::PIN_LAYOUT);
    let older = files.pin_path.join("v1");
    std::fs::rename(&current, &older).expect("rename the pin directory (bpffs)");
    let earlier_prog = ns.ip(&["-d", "link", "show", "dev", "eth0"]);

    let log = files.dir.join("lbd.log");
    let mut failing = lb_tests::bins::Running::spawn(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            // The packaged unit's capabilities but CAP_PERFMON (root's others include it).
            .args(["setpriv", "--bounding-set=-all,+bpf,+net_admin", "--inh-caps=-all", "--"])
            .arg(lb_tests::bins::path("lbd"))
            .arg("--config")
            .arg(files.config())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = failing.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "lbd without CAP_PERFMON still runs after 20 s:\n{}",
            self::log(&files)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "lbd without CAP_PERFMON started:\n{}", self::log(&files));
    assert_eq!(attached_mode(&ns, "eth0"), Some("native"), "eth0 lost its balancer:\n{}", self::log(&files));
    let prog = |text: &str| text.split_whitespace().skip_while(|w| *w != "prog/xdp").nth(2).map(String::from);
    assert_eq!(
        prog(&ns.ip(&["-d", "link", "show", "dev", "eth0"])),
        prog(&earlier_prog),
        "another program is attached to eth0"
    );
    assert!(older.join("link_eth0").exists(), "the earlier release's link is no longer pinned");
    assert!(older.join("VIPS").exists(), "the earlier release's maps are no longer pinned");
    assert!(!current.join("VIPS").exists(), "the failed start left its own maps pinned beside them");
}

/// A memory cgroup of the test's own: what lbd run in it allocates, BPF maps included, counts
/// against its limit. cgroup v1's memory controller where it is mounted (this machine's), else
/// cgroup v2's. Removed on drop.
struct MemoryCgroup {
    dir: std::path::PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    fn new() -> MemoryCgroup {
        let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
        let v2 = std::path::Path::new("/sys/fs/cgroup");
        let (root, is_v2) = if v1.join("cgroup.procs").exists() {
            (v1, false)
        } else {
            let enabled = std::fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
            assert!(
                enabled.split_whitespace().any(|c| c == "memory"),
                "this test needs a memory cgroup controller (BPF maps are charged to it): none at {} \
                 (cgroup v1), and cgroup v2 at {} does not enable it for child groups",
                v1.display(),
                v2.display()
            );
            (v2, true)
        };
        let dir = root.join(lb_tests::unique_name("lbd-mem"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        MemoryCgroup { dir, v2: is_v2 }
    }

    fn read(&self, v1: &str, v2: &str) -> u64 {
        let file = self.dir.join(if self.v2 { v2 } else { v1 });
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        text.trim().parse().unwrap_or_else(|e| panic!("{}: {text:?}: {e}", file.display()))
    }

    fn usage(&self) -> u64 {
        self.read("memory.usage_in_bytes", "memory.current")
    }

    /// The most it held at once.
    fn peak(&self) -> u64 {
        self.read("memory.max_usage_in_bytes", "memory.peak")
    }

    fn limit(&self, bytes: u64) {
        let file = if self.v2 { "memory.max" } else { "memory.limit_in_bytes" };
        std::fs::write(self.dir.join(file), bytes.to_string()).unwrap();
    }

    /// `start_wrapped`'s wrapper: the command runs in this cgroup.
    fn wrapper(&self) -> Vec<String> {
        let procs = self.dir.join("cgroup.procs");
        vec!["sh".into(), "-c".into(), format!("echo $$ > {} && exec \"$@\"", procs.display()), "sh".into()]
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// An upgrade on a host without the memory for both releases' maps at once (a flow table sized
/// to the host; here a cgroup limit that holds one table and not two): the new release retires
/// the earlier one's maps first, says so, and starts; the saved state carries over.
#[test]
fn an_upgrade_without_memory_for_both_layouts_retires_the_earlier_one_first() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let cgroup = MemoryCgroup::new();
    // A flow table of 64 MiB, most of lbd's maps.
    let header =
        files.header(&["eth0"], "198.18.0.2", "fd00::2").replace("flows = 131072", "flows = 1048576");
    let config = format!(
        "{header}[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\n  \
         [[vip.backend]]\n  address = \"198.18.0.11\"\n\n  [[vip.backend]]\n  address = \"198.18.0.12\"\n"
    );
    std::fs::write(files.config(), &config).unwrap();
    let wrapper = cgroup.wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let lbd = Lbd::start_wrapped(&ns, &files, &wrapper, &[]);
    lbd.lbctl_ok(&["backend", "drain", "web", "198.18.0.11"]);
    lbd.kill();
    // The pinned maps stay charged to the cgroup. A start peaks above its maps (the verifier's
    // own memory): the limit lets one start through, not a second set of maps beside the first.
    let (maps, peak) = (cgroup.usage(), cgroup.peak());
    assert!(maps > 64 << 20, "the cgroup holds {maps} bytes: lbd's maps are not charged to it");
    assert!(
        peak + (16 << 20) < 2 * maps,
        "a start peaks at {peak} bytes, maps take {maps}: no limit tells them apart"
    );
    cgroup.limit((peak + 2 * maps) / 2);
    let current = files.pin_path.join(lb_common::PIN_LAYOUT);
    let older = files.pin_path.join("v1");
    std::fs::rename(&current, &older).expect("rename the pin directory (bpffs)");

    let lbd = Lbd::start_wrapped(&ns, &files, &wrapper, &[]);
    assert!(!older.exists(), "the earlier layout's pins are still there");
    assert_eq!(attached_mode(&ns, "eth0"), Some("native"), "the new lbd's balancer is not attached");
    log_line(&files, &["WARN", "no memory for this release's maps"])
        .unwrap_or_else(|| panic!("lbd did not say why it retired the earlier pins first:\n{}", log(&files)));
    let backends = lbd.lbctl_ok(&["backend", "list", "web"]);
    let drained = backends.lines().find(|l| l.contains("198.18.0.11")).unwrap_or_default();
    assert!(drained.contains("drained"), "the drain made before the upgrade is lost:\n{backends}");
    lbd.kill();
}

/// `xdp_mode = "native"` on an interface whose driver has no native XDP (a bridge stands in for
/// one), after lbd ran there in generic mode: the restarted lbd keeps forwarding in generic mode
/// and says why, instead of leaving the interface with nothing attached.
#[test]
fn a_mode_the_driver_refuses_leaves_the_balancer_in_the_mode_it_had() {
    let ns = lb_namespace();
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    ns.addr("br0", "198.18.7.2/24");
    ns.ip(&["link", "set", "br0", "up"]);
    let files = LbdFiles::new();
    let header = files.header(&["br0"], "198.18.7.2", "fd00::2");
    let lbd = Lbd::start(&ns, &files, &format!("xdp_mode = \"generic\"\n{header}"));
    assert_eq!(attached_mode(&ns, "br0"), Some("generic"), "not attached in generic mode at first");
    let exit = lbd.process.terminate();
    assert!(exit.success(), "lbd exited with {exit} on SIGTERM");

    let lbd = Lbd::start(&ns, &files, &format!("xdp_mode = \"native\"\n{header}"));
    assert_eq!(attached_mode(&ns, "br0"), Some("generic"), "the bridge lost its balancer");
    let line = log_line(&files, &["ERROR", "br0", "xdp_mode native refused"])
        .unwrap_or_else(|| panic!("lbd did not say native mode was refused:\n{}", log(&files)));
    assert!(line.contains("generic mode again"), "the error does not say what is attached: {line}");
    let status = lbd.lbctl_ok(&["status"]);
    assert!(status.contains("br0 (generic)"), "lbctl status does not say generic:\n{status}");
}

/// With `[announce]`, a host whose balancer is no longer attached (its interface deleted and
/// made again under lbd: BIRD's session comes back with the address) must not announce its
/// VIPs: the routers would send it flows that reach no balancer. Even `announce = "always"`.
#[test]
fn a_host_whose_balancer_is_not_attached_announces_nothing() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let config = files.announcing_web();
    let lbd = Lbd::start(&ns, &files, &config);
    let table = || ns.ip(&["route", "show", "table", "4242"]);
    assert!(table().contains("198.18.100.1"), "web is not announced at first:\n{}", table());
    re_create_veth(&ns);
    // lbd checks its links every 5 seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    while table().contains("198.18.100.1") {
        assert!(
            Instant::now() < deadline,
            "web still announced 15 s after the balancer left eth0:\n{}\n{}",
            table(),
            log(&files)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = lbd.lbctl_ok(&["status"]);
    assert!(status.contains("this host cannot balance"), "lbctl status does not say why:\n{status}");
}
