//! BIRD 2, the routing daemon, as child processes in test namespaces: the configs of a router and
//! of a balancer host, the control socket, and the kernel routes they make.
//!
//! The design under test (docs/ecmp-bird.md): lbd puts each VIP it wants announced as a host route
//! in kernel table [`VIP_TABLE`] with protocol [`VIP_ROUTE_PROTO`]; the balancer host's BIRD
//! learns that table and announces the routes over BGP; the router merges the equal routes of all
//! balancer hosts into one multipath (ECMP) route.
//!
//! Each [`Bird`] is `bird -f` (foreground, so the kit owns the process) started in a namespace
//! with `nsenter --net`, its config, control socket, pid file and log in a temp dir named with
//! [`unique_name`]. Dropping it kills and reaps it and removes the dir. No BIRD service of the
//! host is used or started.
use std::{
    fmt::Write as _,
    io,
    net::{IpAddr, Ipv4Addr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use lb_userspace::announce::bird::Control;
pub use lb_userspace::announce::bird::{ControlError, Protocol, ReplyLine};

use crate::{netns::Netns, unique_name};

/// The kernel routing table lbd keeps the routes of announced VIPs in (`announce.table`'s
/// default). No `ip rule` points at it: it steers nothing on the balancer host, it only tells
/// BIRD what to announce.
pub const VIP_TABLE: u32 = lb_userspace::config::DEFAULT_ANNOUNCE_TABLE;
/// Protocol number of lbd's routes (`proto 242`): BIRD learns only these, so a route someone
/// else puts in [`VIP_TABLE`] is never announced. Unassigned in iproute2's `rt_protos`.
pub const VIP_ROUTE_PROTO: u8 = lb_userspace::config::DEFAULT_ANNOUNCE_PROTOCOL;
/// How long [`Bird::start`] waits for the control socket, and [`Bird::stop`] for the exit.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Failure detection on a BGP session; both ends use the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// BGP hold time: a peer silent this long is dropped (3 s is the least BGP allows).
    pub hold_s: u32,
    /// BGP keepalive interval: a third of the hold time, so one lost keepalive drops nothing.
    pub keepalive_s: u32,
    /// BFD on the session, if any: a peer is dropped after `interval × multiplier` of silence.
    pub bfd: Option<Bfd>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bfd {
    pub interval_ms: u32,
    pub multiplier: u32,
}

impl Timers {
    /// What docs/ecmp-bird.md recommends: hold 3 s, keepalive 1 s, BFD every 100 ms × 5 (0.5 s).
    pub const RECOMMENDED: Timers =
        Timers { hold_s: 3, keepalive_s: 1, bfd: Some(Bfd { interval_ms: 100, multiplier: 5 }) };
    /// The same without BFD: only the hold timer notices a dead peer.
    pub const HOLD_TIMER_ONLY: Timers = Timers { bfd: None, ..Timers::RECOMMENDED };

    /// The longest a dead peer goes unnoticed.
    pub fn detection(&self) -> Duration {
        match self.bfd {
            Some(b) => Duration::from_millis(u64::from(b.interval_ms * b.multiplier)),
            None => Duration::from_secs(self.hold_s.into()),
        }
    }
}

/// One BGP session as one end configures it: a BIRD protocol named `name` to `address` in `asn`.
/// A session carries the routes of its address's family only.
#[derive(Clone, Debug)]
pub struct Neighbor {
    pub name: String,
    pub address: IpAddr,
    pub asn: u32,
}

/// A prefix VIPs come from, e.g. 198.18.100.0/24: only its host routes (/32, /128) are announced.
#[derive(Clone, Copy, Debug)]
pub struct VipPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

/// A balancer host: learns lbd's VIP routes from [`VIP_TABLE`] and announces them to its routers.
#[derive(Clone, Debug)]
pub struct BalancerConfig {
    pub router_id: Ipv4Addr,
    pub asn: u32,
    pub vip_prefixes: Vec<VipPrefix>,
    /// BGP sessions to routers, one per router and address family.
    pub routers: Vec<Neighbor>,
    pub timers: Timers,
}

/// A router: takes VIP host routes from the balancer hosts and installs one multipath route per
/// VIP in its kernel (main table), with a next hop per balancer host that announces it.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub router_id: Ipv4Addr,
    pub asn: u32,
    pub vip_prefixes: Vec<VipPrefix>,
    /// BGP sessions to balancer hosts, one per host and address family.
    pub balancers: Vec<Neighbor>,
    pub timers: Timers,
}

/// What differs between the two address families in a config.
#[derive(Clone, Copy)]
struct Family {
    channel: &'static str,
    host_len: u8,
    ip_flag: &'static str,
}

const V4: Family = Family { channel: "ipv4", host_len: 32, ip_flag: "-4" };
const V6: Family = Family { channel: "ipv6", host_len: 128, ip_flag: "-6" };
const FAMILIES: [Family; 2] = [V4, V6];

fn family_of(addr: IpAddr) -> Family {
    if addr.is_ipv6() {
        V6
    } else {
        V4
    }
}

/// The VIP prefixes of a family as a BIRD prefix set of host routes, or None if it has none.
fn vip_set(prefixes: &[VipPrefix], family: Family) -> Option<String> {
    let members: Vec<String> = prefixes
        .iter()
        .filter(|p| family_of(p.addr).channel == family.channel)
        .map(|p| format!("{}/{}{{{h},{h}}}", p.addr, p.len, h = family.host_len))
        .collect();
    (!members.is_empty()).then(|| format!("[ {} ]", members.join(", ")))
}

/// Lines both roles start with: logging, identity, the VIP prefix sets, interfaces and BFD.
fn common_head(role: &str, router_id: Ipv4Addr, prefixes: &[VipPrefix], timers: &Timers) -> String {
    let mut c = format!("# {role}, written by lb-tests (docs/ecmp-bird.md explains each option).\n");
    c += "log stderr all;\n";
    let _ = writeln!(c, "router id {router_id};");
    for f in FAMILIES {
        if let Some(set) = vip_set(prefixes, f) {
            let _ = writeln!(c, "define VIPS_{} = {set};", f.channel);
        }
    }
    // Interfaces and their addresses: BGP needs them for next hops, BFD for its sessions.
    c += "protocol device { scan time 10; }\n";
    if let Some(b) = timers.bfd {
        // BFD sessions are made only for BGP sessions that ask (`bfd on`); this sets their timers.
        let _ = writeln!(
            c,
            "protocol bfd {{ interface \"*\" {{ min rx interval {i} ms; min tx interval {i} ms; \
             multiplier {m}; }}; }}",
            i = b.interval_ms,
            m = b.multiplier
        );
    }
    c
}

/// A BGP protocol with the session options both ends share, around a channel block.
fn bgp_session(local_as: u32, n: &Neighbor, timers: &Timers, channel: &str) -> String {
    let bfd = if timers.bfd.is_some() { "  bfd on;\n" } else { "" };
    format!(
        "protocol bgp {name} {{\n  local as {local_as};\n  neighbor {addr} as {asn};\n  \
         hold time {hold}; keepalive time {ka};\n  \
         connect delay time 1; connect retry time 1; error wait time 1, 5;\n  \
         graceful restart off;\n{bfd}  {channel}\n}}\n",
        name = n.name,
        addr = n.address,
        asn = n.asn,
        hold = timers.hold_s,
        ka = timers.keepalive_s,
    )
}

/// Panics unless every session's family has VIP prefixes: a session would carry nothing.
fn check_sessions(neighbors: &[Neighbor], prefixes: &[VipPrefix]) {
    for n in neighbors {
        assert!(
            vip_set(prefixes, family_of(n.address)).is_some(),
            "session {} to {} carries {} routes, but no VIP prefix of that family is configured",
            n.name,
            n.address,
            family_of(n.address).channel
        );
    }
}

impl BalancerConfig {
    pub fn render(&self) -> String {
        check_sessions(&self.routers, &self.vip_prefixes);
        let mut c = common_head("Balancer host", self.router_id, &self.vip_prefixes, &self.timers);
        for f in FAMILIES {
            if vip_set(&self.vip_prefixes, f).is_none() {
                continue;
            }
            let ch = f.channel;
            let _ = writeln!(
                c,
                "{ch} table vips_{ch};\n\
                 protocol kernel lbd_{ch} {{\n  kernel table {VIP_TABLE};\n  learn;\n  scan time 10;\n  \
                 {ch} {{ table vips_{ch}; import where krt_source = {VIP_ROUTE_PROTO} && net ~ VIPS_{ch}; \
                 export none; }};\n}}"
            );
        }
        for r in &self.routers {
            let ch = family_of(r.address).channel;
            let channel = format!(
                "{ch} {{ table vips_{ch}; import none; export where net ~ VIPS_{ch}; next hop self; }};"
            );
            c += &bgp_session(self.asn, r, &self.timers, &channel);
        }
        c
    }
}

impl RouterConfig {
    pub fn render(&self) -> String {
        check_sessions(&self.balancers, &self.vip_prefixes);
        let mut c = common_head("Router", self.router_id, &self.vip_prefixes, &self.timers);
        for f in FAMILIES {
            if vip_set(&self.vip_prefixes, f).is_none() {
                continue;
            }
            let ch = f.channel;
            let _ = writeln!(
                c,
                "protocol kernel kernel_{ch} {{\n  merge paths on;\n  \
                 {ch} {{ import none; export where source = RTS_BGP; }};\n}}"
            );
        }
        for b in &self.balancers {
            let ch = family_of(b.address).channel;
            let channel = format!("{ch} {{ import where net ~ VIPS_{ch}; export none; }};");
            c += &bgp_session(self.asn, b, &self.timers, &channel);
        }
        c
    }
}

/// A BIRD process in a namespace. Dropping it kills (SIGKILL) and reaps it, then removes its files.
pub struct Bird {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    namespace: String,
}

impl Bird {
    /// Checks `config` (`bird -p`), starts BIRD with it in `ns` and waits until its control socket
    /// answers. `role` names its temp dir, e.g. "bird-router".
    pub fn start(ns: &Netns, role: &str, config: &str) -> Bird {
        Self::start_with_socket(ns, role, config, None)
    }

    /// [`Bird::start`] with the control socket at `socket` (`None`: in its temp dir), e.g. where
    /// an lbd's `announce.bird_socket` expects it across restarts of BIRD.
    pub fn start_with_socket(ns: &Netns, role: &str, config: &str, socket: Option<&Path>) -> Bird {
        let start_dir = StartDir(std::env::temp_dir().join(unique_name(role)));
        let dir = start_dir.0.clone();
        let socket = socket.map_or_else(|| dir.join("bird.ctl"), Path::to_owned);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let parsed = Command::new("bird").arg("-p").arg("-c").arg(&conf).output().unwrap_or_else(|e| {
            panic!("could not run bird ({e}): install BIRD 2 with `cargo xtask setup` (Debian package bird2)")
        });
        assert!(
            parsed.status.success(),
            "BIRD refuses the config {}: {}\n{config}",
            conf.display(),
            String::from_utf8_lossy(&parsed.stderr)
        );
        let log = std::fs::File::create(dir.join("bird.log")).expect("BIRD log file");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", ns.name()))
            .args(["bird", "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("BIRD log file"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches only the child. nsenter execs bird in the
        // same process, which keeps the setting: BIRD dies with the test thread that started it,
        // even if the test process is killed before any Drop runs.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("could not start BIRD in {}: {e}", ns.name()));
        let mut bird = Bird { child, dir: start_dir.keep(), socket, namespace: ns.name().to_owned() };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = bird.child.try_wait() {
                panic!(
                    "BIRD in {} exited ({status}) before its control socket came up:\n{}",
                    ns.name(),
                    bird.log()
                );
            }
            if bird.command("show status").is_ok() {
                return bird;
            }
            assert!(
                Instant::now() < deadline,
                "BIRD's control socket in {} did not come up within {START_TIMEOUT:?}:\n{}",
                ns.name(),
                bird.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    /// What BIRD has logged so far (its stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }

    /// Sends one command to the control socket (what `birdc -s SOCKET CMD` does) and returns the
    /// reply. A reply BIRD marks as an error (codes 8xxx, 9xxx) is an `Err`.
    pub fn command(&self, command: &str) -> Result<Vec<ReplyLine>, ControlError> {
        control_command(&self.socket(), command)
    }

    /// Every protocol and its state (`show protocols`).
    pub fn protocols(&self) -> Result<Vec<Protocol>, ControlError> {
        Control::connect(&self.socket())?.protocols()
    }

    /// Waits until each of the protocols `names` (BGP sessions) is Established; returns how long it
    /// took. Panics after `timeout`, with every protocol's state and BIRD's log.
    #[track_caller]
    pub fn wait_established(&self, names: &[&str], timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let protocols = self.protocols();
            let up = protocols
                .as_ref()
                .is_ok_and(|ps| names.iter().all(|n| ps.iter().any(|p| p.name == *n && p.is_established())));
            if up {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "BGP sessions {names:?} in {} not Established within {timeout:?}: {protocols:#?}\n{}",
                self.namespace,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops BIRD as an operator or init system would (SIGTERM: it closes its BGP sessions with a
    /// notification); waits for the exit, at most [`START_TIMEOUT`].
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for BIRD") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "BIRD in {} ignored SIGTERM for {START_TIMEOUT:?}",
                self.namespace
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Gives BIRD a new config, as an operator would: checked (`bird -p`), put in place of the
    /// old one by a rename, then SIGHUP (BIRD reconfigures: only what changed restarts or
    /// reloads). Panics if BIRD refuses the config.
    pub fn reconfigure(&self, config: &str) {
        let (next, conf) = (self.dir.join("bird.conf.next"), self.dir.join("bird.conf"));
        std::fs::write(&next, config).unwrap_or_else(|e| panic!("writing {}: {e}", next.display()));
        let parsed = Command::new("bird").arg("-p").arg("-c").arg(&next).output().expect("bird -p");
        assert!(
            parsed.status.success(),
            "BIRD refuses the new config: {}\n{config}",
            String::from_utf8_lossy(&parsed.stderr)
        );
        std::fs::rename(&next, &conf).unwrap_or_else(|e| panic!("renaming to {}: {e}", conf.display()));
        self.signal(libc::SIGHUP);
    }

    /// SIGKILL, as a crash would: the kernel closes its TCP sessions, but nothing else is said.
    pub fn kill(self) {
        drop(self);
    }

    /// SIGSTOP: BIRD stays, its sockets stay open, it answers nothing. This is a host that died
    /// or hangs, as its peers see it: only the hold timer or BFD can tell.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Bird::freeze`].
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill with the pid of our own child, not yet reaped, and a valid signal.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "signal {signal} to BIRD: {}", io::Error::last_os_error());
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        // SIGKILL works on a frozen process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A BIRD's temp dir while it starts: removed if the start fails (a config BIRD refuses), until
/// [`Bird`] owns it.
struct StartDir(PathBuf);

impl StartDir {
    /// BIRD runs: its [`Bird`] removes the dir from now on.
    fn keep(self) -> PathBuf {
        std::mem::take(&mut std::mem::ManuallyDrop::new(self).0)
    }
}

impl Drop for StartDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One command in a restricted session (lbd's own client: `lb_userspace::announce::bird`).
fn control_command(socket: &Path, command: &str) -> Result<Vec<ReplyLine>, ControlError> {
    Control::connect(socket)?.command(command)
}

/// The host route of `vip` (/32 or /128), as BIRD and `ip` write it.
pub fn host_prefix(vip: IpAddr) -> String {
    format!("{vip}/{}", family_of(vip).host_len)
}

/// What lbd will do to announce `vip`: its host route in [`VIP_TABLE`], protocol
/// [`VIP_ROUTE_PROTO`], on `lo` (any device would do: the table steers nothing).
pub fn add_vip_route(ns: &Netns, vip: IpAddr) {
    vip_route(ns, "add", vip);
}

/// What lbd will do to withdraw `vip`.
pub fn remove_vip_route(ns: &Netns, vip: IpAddr) {
    vip_route(ns, "del", vip);
}

/// Replaces `vip`'s route with an identical one, as a restarted lbd re-asserting its routes would.
pub fn replace_vip_route(ns: &Netns, vip: IpAddr) {
    vip_route(ns, "replace", vip);
}

fn vip_route(ns: &Netns, verb: &str, vip: IpAddr) {
    let (prefix, proto, table) = (host_prefix(vip), VIP_ROUTE_PROTO.to_string(), VIP_TABLE.to_string());
    ns.ip(&[family_of(vip).ip_flag, "route", verb, &prefix, "dev", "lo", "proto", &proto, "table", &table]);
}

/// Gateways of the route to exactly `vip`'s host prefix in `ns`'s main table, sorted: one per
/// next hop of a multipath route, one for a plain route, none without a route.
pub fn next_hops(ns: &Netns, vip: IpAddr) -> Vec<IpAddr> {
    let out = ns.ip(&[family_of(vip).ip_flag, "route", "show", &host_prefix(vip)]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let mut hops: Vec<IpAddr> =
        words.windows(2).filter(|w| w[0] == "via").filter_map(|w| w[1].parse().ok()).collect();
    hops.sort();
    hops
}

/// Polls [`next_hops`] every 10 ms until it equals `want` (in any order); returns how long that
/// took. Panics after `timeout`, showing what the route was.
#[track_caller]
pub fn wait_next_hops(ns: &Netns, vip: IpAddr, want: &[IpAddr], timeout: Duration) -> Duration {
    let mut want = want.to_vec();
    want.sort();
    let start = Instant::now();
    loop {
        let hops = next_hops(ns, vip);
        if hops == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "the route to {vip} in {} did not get next hops {want:?} within {timeout:?}; it has {hops:?}",
            ns.name()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Balancer 1 of tests/tests/bird_ecmp.rs.
    fn example_balancer() -> BalancerConfig {
        BalancerConfig {
            router_id: Ipv4Addr::new(198, 18, 1, 2),
            asn: 64600,
            vip_prefixes: example_prefixes(),
            routers: vec![
                Neighbor { name: "router_ipv4".into(), address: "198.18.1.1".parse().unwrap(), asn: 64500 },
                Neighbor {
                    name: "router_ipv6".into(),
                    address: "fd00:0:0:1::1".parse().unwrap(),
                    asn: 64500,
                },
            ],
            timers: Timers::RECOMMENDED,
        }
    }

    /// The router of tests/tests/bird_ecmp.rs, with two balancer hosts instead of three.
    fn example_router() -> RouterConfig {
        let session = |name: &str, address: &str| Neighbor {
            name: name.into(),
            address: address.parse().unwrap(),
            asn: 64600,
        };
        RouterConfig {
            router_id: Ipv4Addr::new(198, 18, 0, 1),
            asn: 64500,
            vip_prefixes: example_prefixes(),
            balancers: vec![
                session("b1_ipv4", "198.18.1.2"),
                session("b1_ipv6", "fd00:0:0:1::2"),
                session("b2_ipv4", "198.18.2.2"),
                session("b2_ipv6", "fd00:0:0:2::2"),
            ],
            timers: Timers::RECOMMENDED,
        }
    }

    fn example_prefixes() -> Vec<VipPrefix> {
        vec![
            VipPrefix { addr: "198.18.100.0".parse().unwrap(), len: 24 },
            VipPrefix { addr: "fd00:0:0:100::".parse().unwrap(), len: 64 },
        ]
    }

    /// The design note shows the configs verbatim; this keeps them the ones the tests prove.
    #[test]
    fn the_design_note_shows_the_configs_the_kit_writes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ecmp-bird.md");
        let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let shown: Vec<&str> =
            doc.split("```bird\n").skip(1).filter_map(|block| block.split("```").next()).collect();
        let (balancer, router) = (example_balancer().render(), example_router().render());
        assert!(
            shown == [balancer.as_str(), router.as_str()],
            "docs/ecmp-bird.md must show, in ```bird blocks, the configs the kit writes, now:\n\
             ```bird\n{balancer}```\n\n```bird\n{router}```"
        );
    }

    #[test]
    fn a_family_without_vip_prefixes_gets_no_prefix_set() {
        let v4 = VipPrefix { addr: "198.18.100.0".parse().unwrap(), len: 24 };
        assert_eq!(vip_set(&[v4], V4).as_deref(), Some("[ 198.18.100.0/24{32,32} ]"));
        assert_eq!(vip_set(&[v4], V6), None);
    }
}
