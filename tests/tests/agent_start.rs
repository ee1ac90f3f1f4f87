//! lbd's start: signals during it, a socket it cannot bind, interfaces left from an earlier
//! config.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{
    bins::{self, Running},
    lbd::{lb_namespace, lbctl, LbdFiles},
};

/// Whether `pid` catches or ignores SIGHUP (`SigCgt`, `SigIgn` in /proc/PID/status).
fn handles_sighup(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().filter(|l| l.starts_with("SigCgt:") || l.starts_with("SigIgn:")).any(|l| {
        let mask = u64::from_str_radix(l.split_whitespace().nth(1).unwrap_or("0"), 16).unwrap_or(0);
        mask & (1 << (libc::SIGHUP - 1)) != 0
    })
}

fn is_lbd(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.ends_with("lbd"))
}

/// A config deploy that signals lbd while it starts (slow: the programs load, the maps are
/// reconciled) must not kill it: SIGHUP's default action is to terminate.
#[test]
fn sighup_during_start_does_not_kill_lbd() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let vip = "[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\n\
               [[vip.backend]]\naddress = \"198.18.0.11\"\n";
    std::fs::write(files.config(), format!("{}{vip}", files.header(&["eth0"], "198.18.0.2", "fd00::2")))
        .unwrap();
    for attempt in 1..=3 {
        let _ = std::fs::remove_file(files.socket());
        let log = files.dir.join(format!("start-{attempt}.log"));
        let mut lbd = Running::spawn(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", ns.name()))
                .arg(bins::path("lbd"))
                .arg("--config")
                .arg(files.config())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        let pid = lbd.child.id();
        // nsenter becomes lbd; from then on lbd's own code runs. Signals start as soon as lbd
        // says it handles SIGHUP, or 100 ms into its run (its start takes longer) if it never does.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_lbd(pid) {
            assert!(Instant::now() < deadline, "nsenter did not become lbd");
            std::thread::sleep(Duration::from_micros(200));
        }
        let running = Instant::now();
        while !handles_sighup(pid) && running.elapsed() < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_micros(200));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = 0;
        while !lbctl(&files.socket(), &["status"]).status.success() {
            if let Some(status) = lbd.child.try_wait().unwrap() {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                panic!(
                    "attempt {attempt}: lbd died ({status}) after {sent} SIGHUPs during its start:\n{said}"
                );
            }
            assert!(Instant::now() < deadline, "attempt {attempt}: lbd's API did not come up");
            // SAFETY: kill with our child's pid (not reaped) and a valid signal.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
            sent += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(sent > 0, "attempt {attempt}: no SIGHUP was sent during the start");
        // The SIGHUPs held during the start are answered once it is done.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("SIGHUP: config applied") {
            assert!(
                Instant::now() < deadline,
                "attempt {attempt}: the SIGHUPs sent during the start were not answered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = lbd.terminate();
        assert!(status.success(), "attempt {attempt}: lbd exited with {status}");
    }
}

/// Runs lbd on `files`' config until it exits (at most 10 s): its exit status and stderr.
fn run_until_exit(
    ns: &lb_tests::netns::Netns,
    files: &LbdFiles,
) -> (Option<std::process::ExitStatus>, String) {
    let log = files.dir.join("exit.log");
    let mut lbd = Running::spawn(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(bins::path("lbd"))
            .arg("--config")
            .arg(files.config())
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = lbd.child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

/// A control API that cannot be served (its directory is a file, another process answers on
/// the socket) is a clear error and a non-zero exit, never a log saying it listens.
#[test]
fn an_api_socket_that_cannot_be_bound_stops_lbd_with_an_error() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");

    let blocked = files.dir.join("not-a-dir");
    std::fs::write(&blocked, "a file").unwrap();
    let socket = blocked.join("lbd.sock");
    let config = header.replace(&files.socket().display().to_string(), &socket.display().to_string());
    std::fs::write(files.config(), &config).unwrap();
    let (status, said) = run_until_exit(&ns, &files);
    let status =
        status.unwrap_or_else(|| panic!("lbd runs without its API on {}:\n{said}", socket.display()));
    assert!(!status.success(), "lbd exited with {status} without its API:\n{said}");
    assert!(said.contains(&socket.display().to_string()), "the error does not name the socket:\n{said}");
    assert!(!said.contains("control API listening"), "lbd said it listens:\n{said}");

    // Another process answers on the socket: it is not taken from it.
    let socket = files.dir.join("taken.sock");
    let _other = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let config = header.replace(&files.socket().display().to_string(), &socket.display().to_string());
    std::fs::write(files.config(), &config).unwrap();
    let (status, said) = run_until_exit(&ns, &files);
    let status = status.unwrap_or_else(|| panic!("lbd took the socket of another process:\n{said}"));
    assert!(!status.success() && said.contains("answers on"), "lbd exited with {status}:\n{said}");
    assert!(socket.exists(), "lbd removed the socket another process serves");
}

/// Whether an XDP program is attached to `interface` in `ns`.
fn xdp_attached(ns: &lb_tests::netns::Netns, interface: &str) -> bool {
    ns.ip(&["-d", "link", "show", "dev", interface]).contains("xdp")
}

/// An interface taken out of `interfaces` is detached at the next start: its pinned link would
/// otherwise keep the balancer on it, with maps no lbd updates for it.
#[test]
fn a_restart_without_an_interface_detaches_the_balancer_from_it() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let lbd =
        lb_tests::lbd::Lbd::start(&ns, &files, &files.header(&["eth0", "eth1"], "198.18.0.2", "fd00::2"));
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    assert!(pins.join("link_eth1").exists() && xdp_attached(&ns, "eth1"), "eth1 is not attached at first");
    lbd.process.terminate();

    let lbd = lb_tests::lbd::Lbd::start(&ns, &files, &files.header(&["eth0"], "198.18.0.2", "fd00::2"));
    assert!(!pins.join("link_eth1").exists(), "the link of eth1, no longer configured, is still pinned");
    assert!(!xdp_attached(&ns, "eth1"), "the balancer is still attached to eth1");
    assert!(pins.join("link_eth0").exists() && xdp_attached(&ns, "eth0"), "eth0 lost its balancer");
    let log = std::fs::read_to_string(files.dir.join("lbd.log")).unwrap();
    assert!(log.contains("eth1"), "lbd did not log detaching eth1:\n{log}");
    drop(lbd);
}

/// A listener lbd cannot bind stops it before it changes anything on the host: with
/// `[announce]`, an lbd that started and then exited would leave its VIPs announced (the VIP
/// table outlives it) with their health frozen. The metrics port taken (as node_exporter takes
/// 9100), then the API socket answered by another process: each a non-zero exit naming the
/// address and its config key, no VIP route, no balancer attached, no pinned maps, forwarding
/// and neighbour entries as they were.
#[test]
fn a_listener_that_cannot_be_bound_stops_lbd_before_it_changes_the_host() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let vip = "[announce]\n\n[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\n\
               [[vip.backend]]\naddress = \"198.18.0.11\"\n";
    let untouched = |case: &str, said: &str| {
        // (`ip -6 route show table 4242` fails while the table has never held an IPv6 route.)
        let routes: String = ["-4", "-6"]
            .into_iter()
            .map(|f| ns.command("ip").args([f, "route", "show", "table", "4242"]).output().expect("run ip"))
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .collect();
        assert!(
            routes.trim().is_empty(),
            "{case}: the VIP table holds routes after lbd exited:\n{routes}\n{said}"
        );
        assert!(!xdp_attached(&ns, "eth0"), "{case}: the balancer is attached after lbd exited:\n{said}");
        let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
        assert!(!pins.exists(), "{case}: maps pinned in {} after lbd exited:\n{said}", pins.display());
        let forwarding =
            lb_tests::netns::run(ns.command("sysctl").args(["-n", "net.ipv4.conf.eth0.forwarding"]));
        let forwarding = String::from_utf8_lossy(&forwarding.stdout).trim().to_owned();
        assert_eq!(forwarding, "0", "{case}: lbd turned forwarding on before it exited:\n{said}");
        let neighbours = ns.ip(&["neigh", "show", "proto", "76"]);
        assert!(neighbours.trim().is_empty(), "{case}: lbd left neighbour entries:\n{neighbours}\n{said}");
    };

    // The metrics port is taken.
    let holder = ns.run(|| std::net::TcpListener::bind("127.0.0.1:0")).expect("bind a port in the namespace");
    let address = holder.local_addr().unwrap().to_string();
    std::fs::write(files.config(), format!("metrics = \"{address}\"\n{header}{vip}")).unwrap();
    let (status, said) = run_until_exit(&ns, &files);
    let status = status.unwrap_or_else(|| panic!("lbd runs with its metrics port {address} taken:\n{said}"));
    assert!(!status.success(), "lbd exited with {status} with its metrics port taken:\n{said}");
    assert!(
        said.contains(&address) && said.contains("`metrics`"),
        "the error names neither {address} nor `metrics`:\n{said}"
    );
    untouched("metrics port taken", &said);
    drop(holder);

    // Another process answers on the API socket.
    let socket = files.dir.join("taken.sock");
    let _other = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let config = header.replace(&files.socket().display().to_string(), &socket.display().to_string());
    std::fs::write(files.config(), format!("{config}{vip}")).unwrap();
    let (status, said) = run_until_exit(&ns, &files);
    let status = status.unwrap_or_else(|| panic!("lbd took the socket of another process:\n{said}"));
    assert!(!status.success(), "lbd exited with {status} with its API socket taken:\n{said}");
    assert!(
        said.contains(&socket.display().to_string()) && said.contains("api_socket"),
        "the error names neither the socket nor `api_socket`:\n{said}"
    );
    untouched("API socket taken", &said);
}

/// lbd's routes in `ns` marked with `protocol`: the VIP table's (4242, both families) and the
/// main table's blackholes, one line each.
fn routes_marked(ns: &lb_tests::netns::Netns, protocol: u8) -> (String, String) {
    let p = protocol.to_string();
    let table: String = ["-4", "-6"]
        .into_iter()
        .map(|f| {
            ns.command("ip").args([f, "route", "show", "table", "4242", "proto", &p]).output().expect("ip")
        })
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .collect();
    let main = ns.ip(&["route", "show", "proto", &p, "type", "blackhole"]);
    (table.trim().to_owned(), main.trim().to_owned())
}

/// Waits up to 5 s for lbd's routes marked with `protocol` to be `want` (VIP table, main
/// table's blackholes: whether each holds the VIP).
fn wait_marked(
    ns: &lb_tests::netns::Netns,
    protocol: u8,
    want: (bool, bool),
    case: &str,
    log: &std::path::Path,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (table, main) = routes_marked(ns, protocol);
        let held = (table.contains("198.18.100.1"), main.contains("198.18.100.1"));
        if held == want {
            return;
        }
        if Instant::now() > deadline {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            panic!(
                "{case}: routes with protocol {protocol}: VIP table {:?}, blackholes {:?}; want {want:?} \
                 (VIP table held, blackhole held)\n{said}",
                table, main
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A restart under other route marks (`announce.protocol` changed, `[announce]` taken out) after
/// a crash or a SIGKILL restart, which withdraw nothing: the routes the earlier lbd left under
/// the old marks go (else BIRD would go on announcing a VIP no lbd withdraws, and the old
/// blackhole would keep the new one out), and the new marks' are made.
#[test]
fn a_restart_under_other_route_marks_removes_the_routes_left_under_the_old_ones() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let vip = "\n[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\n\
               [[vip.backend]]\naddress = \"198.18.0.11\"\n";
    let log = files.dir.join("lbd.log");
    // Routes of others, in lbd's VIP table and the main table's blackholes: they stay.
    ns.ip(&["route", "add", "198.18.100.9/32", "dev", "lo", "table", "4242", "proto", "250"]);
    ns.ip(&["route", "add", "blackhole", "198.18.100.9/32", "proto", "250"]);

    let lbd = lb_tests::lbd::Lbd::start(&ns, &files, &format!("{header}[announce]\n{vip}"));
    wait_marked(&ns, 242, (true, true), "announced under 242", &log);
    lbd.kill();

    let lbd = lb_tests::lbd::Lbd::start(&ns, &files, &format!("{header}[announce]\nprotocol = 243\n{vip}"));
    wait_marked(&ns, 243, (true, true), "restarted under 243", &log);
    wait_marked(&ns, 242, (false, false), "restarted under 243: the routes left under 242", &log);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("earlier lbd"), "lbd did not log the routes it removed:\n{said}");
    // Removed before the first sync: the old blackhole never stood in the new one's way.
    assert!(!said.contains("lbd did not make"), "a route left under 242 was in the way:\n{said}");
    lbd.kill();

    // Without [announce]: the VIP table's route goes; the blackhole is kept, under 242 again.
    let lbd = lb_tests::lbd::Lbd::start(&ns, &files, &format!("{header}{vip}"));
    wait_marked(&ns, 243, (false, false), "restarted without [announce]: the routes left under 243", &log);
    wait_marked(&ns, 242, (false, true), "restarted without [announce]", &log);
    let (table, main) = routes_marked(&ns, 250);
    assert!(
        table.contains("198.18.100.9") && main.contains("198.18.100.9"),
        "another's routes went: VIP table {table:?}, blackholes {main:?}"
    );
    drop(lbd);
}

/// Makes the pinned map at `path` read-only to system calls for good (`BPF_MAP_FREEZE`): every
/// later write by lbd fails, as a map write can in the field (out of memory, a kernel refusal).
fn freeze_pinned_map(path: &std::path::Path) {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_MAP_FREEZE: libc::c_long = 22;
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags; for BPF_MAP_FREEZE: map_fd.
    let mut attr = [0u64; 2];
    attr[0] = name.as_ptr() as u64;
    // SAFETY: a valid bpf_attr of the size given; the path outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), 16) };
    assert!(fd >= 0, "open the pinned {}: {}", path.display(), std::io::Error::last_os_error());
    let mut attr = [fd as u32, 0, 0, 0];
    // SAFETY: as above.
    let done = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_FREEZE, attr.as_mut_ptr(), 16) };
    assert_eq!(done, 0, "freeze {}: {}", path.display(), std::io::Error::last_os_error());
    // SAFETY: the descriptor the kernel gave.
    unsafe { libc::close(fd as i32) };
}

/// With `[announce]`, a start that fails once it has the maps (a map write refused) must leave
/// nothing announced: an earlier lbd's routes (SIGKILL withdraws nothing) would otherwise draw
/// flows to a host whose maps no agent keeps in step with health, and this one's would too.
#[test]
fn a_start_that_fails_at_the_maps_withdraws_every_vip() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let config = files.announcing_web();
    std::fs::write(files.config(), &config).unwrap();
    let table = || ns.ip(&["route", "show", "table", "4242"]);
    let lbd = lb_tests::lbd::Lbd::start_with(&ns, &files, &[]);
    assert!(table().contains("198.18.100.1"), "web is not announced:\n{}", table());
    lbd.kill();
    assert!(table().contains("198.18.100.1"), "SIGKILL withdrew web: the test proves nothing");

    freeze_pinned_map(&files.pin_path.join(lb_common::PIN_LAYOUT).join(lb_common::map_names::CONFIG));
    let (status, said) = run_until_exit(&ns, &files);
    let status = status.unwrap_or_else(|| panic!("lbd runs with a map it cannot write:\n{said}"));
    assert!(!status.success(), "lbd exited with {status} with a map it cannot write:\n{said}");
    assert!(
        !table().contains("198.18.100.1"),
        "web is still announced after the failed start:\n{}\n{said}",
        table()
    );
}

/// A config that holds `web_admin_token` (which drains and weighs backends from the status
/// page) and that every user of the host may read is named in the log at start; at 0640, as
/// the package installs it, it is not.
#[test]
fn a_config_with_the_admin_token_that_anyone_may_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let config = format!(
        "metrics = \"127.0.0.1:9100\"\nweb_admin_token = \"{}\"\n{}",
        "t0ken-Of-the-page",
        files.header(&["eth0"], "198.18.0.2", "fd00::2")
    );
    let warning = "every user of this host may read it";
    for (mode, warned) in [(0o644, true), (0o640, false)] {
        std::fs::write(files.config(), &config).unwrap();
        std::fs::set_permissions(files.config(), std::fs::Permissions::from_mode(mode)).unwrap();
        let lbd = lb_tests::lbd::Lbd::start_with(&ns, &files, &[]);
        let log = std::fs::read_to_string(files.dir.join("lbd.log")).unwrap();
        assert_eq!(log.contains(warning), warned, "config mode {mode:o}, log:\n{log}");
        assert!(!log.contains("t0ken-Of"), "the token is in the log:\n{log}");
        lbd.process.terminate();
    }
}

/// Under the packaged unit's `Type=notify`, lbd says READY=1 on `$NOTIFY_SOCKET` once it
/// serves (its API answers then: `systemctl start` returns only then, and a reload after it
/// finds lbd listening), and STOPPING=1 at a stop; a start that fails says nothing.
#[test]
fn lbd_tells_systemd_it_is_ready_once_it_serves() {
    use std::os::unix::net::UnixDatagram;
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let notify = files.dir.join("notify.sock");
    let systemd = UnixDatagram::bind(&notify).unwrap();
    systemd.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let spawn = |config: String| {
        std::fs::write(files.config(), config).unwrap();
        let _ = std::fs::remove_file(files.socket());
        Running::spawn(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", ns.name()))
                .arg(bins::path("lbd"))
                .arg("--config")
                .arg(files.config())
                .env("NOTIFY_SOCKET", &notify)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let mut buf = [0u8; 256];

    // A start that fails (no such interface) exits without READY=1.
    let mut failing = spawn(files.header(&["nosuch0"], "198.18.0.2", "fd00::2"));
    let status = failing.child.wait().unwrap();
    assert!(!status.success(), "lbd started on an interface that does not exist");
    systemd.set_nonblocking(true).unwrap();
    assert!(systemd.recv(&mut buf).is_err(), "a failed start said {:?}", String::from_utf8_lossy(&buf));
    systemd.set_nonblocking(false).unwrap();

    let lbd = spawn(header);
    let n = systemd.recv(&mut buf).expect("no READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(lbctl(&files.socket(), &["status"]).status.success(), "READY=1 before the API answers");
    let status = lbd.terminate();
    assert!(status.success(), "lbd exited with {status}");
    let n = systemd.recv(&mut buf).expect("no STOPPING=1 at the stop");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// `lbd detach` after an lbd that is gone (killed, as a crash or the package's stop with
/// `--on-exit keep` leaves it): the balancer detached, its pins and saved state removed, its
/// managed neighbour entries, blackhole routes and announced VIP routes gone; others' routes
/// stay. While an lbd runs on the same pins it is refused and removes nothing.
#[test]
fn detach_removes_what_an_lbd_that_is_gone_left() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let log = files.dir.join("lbd.log");
    // Another's route in lbd's VIP table: it stays.
    ns.ip(&["route", "add", "198.18.100.9/32", "dev", "lo", "table", "4242", "proto", "250"]);
    let lbd = lb_tests::lbd::Lbd::start(&ns, &files, &files.announcing_web());
    wait_marked(&ns, 242, (true, true), "announced", &log);
    let neighbours = || ns.ip(&["neigh", "show", "proto", "76"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !neighbours().contains("198.18.0.11") {
        assert!(Instant::now() < deadline, "no managed neighbour entry for the backend: {}", neighbours());
        std::thread::sleep(Duration::from_millis(100));
    }
    let detach = || {
        // nsenter, not `ip netns exec`: that remounts /sys, and the pins with it.
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(bins::path("lbd"))
            .args(["detach", "--config"])
            .arg(files.config())
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("run lbd detach")
    };
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    let refused = detach();
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "detach ran beside a running lbd:\n{said}");
    assert!(said.contains(&lbd.process.child.id().to_string()), "the refusal does not name lbd:\n{said}");
    assert!(xdp_attached(&ns, "eth0") && pins.exists(), "the refused detach changed something");
    lbd.kill();
    // The config as it may be by then: an interface in it that is gone (a NIC removed).
    let config = std::fs::read_to_string(files.config()).unwrap();
    let with_gone = config.replace("interfaces = [\"eth0\"]", "interfaces = [\"eth0\", \"gone0\"]");
    assert_ne!(with_gone, config, "the config names no interfaces the test knows");
    std::fs::write(files.config(), with_gone).unwrap();

    let out = detach();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "lbd detach failed:\n{said}");
    assert!(!xdp_attached(&ns, "eth0"), "eth0 still has the balancer:\n{said}");
    assert!(!pins.exists(), "the pins are still there:\n{said}");
    assert!(!files.dir.join("state.json").exists(), "the saved state is still there");
    assert_eq!(routes_marked(&ns, 242), (String::new(), String::new()), "lbd's routes stay:\n{said}");
    assert!(!neighbours().contains("198.18.0.11"), "the managed neighbour entry stays: {}", neighbours());
    assert!(routes_marked(&ns, 250).0.contains("198.18.100.9"), "another's VIP-table route went");
    assert!(!files.pin_path.exists(), "the pin directory stays");

    // Again, with nothing left (as on a host where lbd never ran): nothing to do, and nothing made.
    let out = detach();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success() && said.contains("nothing to detach"), "a second detach:\n{said}");
    assert!(!files.pin_path.exists(), "detach made the pin directory");
}
