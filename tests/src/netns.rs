//! Network namespaces for tests: created with iproute2, deleted on drop (also when a test panics),
//! with names unique per process and test so tests can run in parallel.
//!
//! Deleting a namespace deletes the veth ends inside it, and with them their peers, so dropping
//! the namespaces is the whole cleanup.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
};

use crate::unique_name;

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace whose name ends in `role` (e.g. "client"), with `lo` up.
    pub fn new(role: &str) -> Self {
        crate::privilege::require_root();
        let name = unique_name(role);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ARGS`; panics with ip's error message if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip").arg("-n").arg(&self.name).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that will run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Sets a sysctl inside the namespace (e.g. `net.ipv4.ip_forward`, "1").
    pub fn sysctl(&self, key: &str, value: &str) {
        run(self.command("sysctl").args(["-q", "-w", &format!("{key}={value}")]));
    }

    /// Turns duplicate address detection off for the namespace's interfaces, those made after it
    /// included. A test aid, not a veth one: IPv6 addresses (link-local ones too) usable at once,
    /// rather than neighbour discovery waiting a second or two.
    pub fn skip_dad(&self) {
        for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
            self.sysctl(key, "0");
        }
    }

    /// Adds an address (CIDR) to an interface and brings it up.
    pub fn addr(&self, interface: &str, cidr: &str) {
        // nodad: an IPv6 address is usable at once instead of after duplicate detection.
        let nodad: &[&str] = if cidr.contains(':') { &["nodad"] } else { &[] };
        let mut args = vec!["addr", "add", cidr, "dev", interface];
        args.extend(nodad);
        self.ip(&args);
        self.ip(&["link", "set", interface, "up"]);
    }

    /// Index of an interface inside this namespace.
    pub fn ifindex(&self, interface: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", "dev", interface]);
        out.split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .unwrap_or_else(|| panic!("no index for {interface} in {}: {out}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace, so sockets it opens and interfaces it
    /// names are this namespace's. Other threads are not affected.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter_current_thread();
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Moves the calling thread into this namespace for the rest of its life.
    pub fn enter_current_thread(&self) {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns with a valid namespace fd only changes this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns into {}: {}", self.name, std::io::Error::last_os_error());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip").args(["netns", "delete", &self.name]).output();
        if !matches!(&out, Ok(o) if o.status.success()) && !std::thread::panicking() {
            panic!("could not delete namespace {}: {out:?}", self.name);
        }
    }
}

/// Creates a veth pair with one end in each namespace, both up.
pub fn veth(a: (&Netns, &str), b: (&Netns, &str)) {
    a.0.ip(&["link", "add", a.1, "type", "veth", "peer", "name", b.1, "netns", b.0.name()]);
    a.0.ip(&["link", "set", a.1, "up"]);
    b.0.ip(&["link", "set", b.1, "up"]);
}

/// Creates a bridge in `ns` and enslaves `ports` (interfaces already in `ns`) to it.
pub fn bridge(ns: &Netns, name: &str, ports: &[&str]) {
    ns.ip(&["link", "add", name, "type", "bridge"]);
    for port in ports {
        ns.ip(&["link", "set", port, "master", name]);
    }
    ns.ip(&["link", "set", name, "up"]);
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    out
}
