//! Scale-out at the edge, whole: a router with BIRD spreads a client's flows by ECMP over
//! balancer hosts, each running lbd (with `[announce]`) and BIRD, which forward to backend
//! hosts running `lbd backend-host`; the backends answer the client through the router.
//!
//! ```text
//!   client (eth0 198.18.0.2) ── router (c0 198.18.0.1 │ f0 198.18.1.1): BIRD, AS 64500, ECMP
//!                                          │ bridge br0 (namespace "fabric"), 198.18.1.0/24
//!        ┌─────────────────────────────────┴─────────────────────────────┐
//!   balancer n (eth0 198.18.1.1n)                           backend m (eth0 198.18.1.2m)
//!     lbd: XDP balancer on eth0, [announce]                   lbd backend-host: decap, VIPs on lo
//!     BIRD: AS 64600, learns table 4242, one BGP session      TCP echo on VIP:80, health on :8080
//! ```
//!
//! The router hashes on the 5-tuple (`fib_multipath_hash_policy = 1`). The balancers send the
//! tunnels back out of eth0 (XDP_TX) to the backends on the same bridge; each balancer's bridge
//! port has the pass-through program that veth needs for that (see
//! `topology::Topology::attach_lb_port_passthrough`). Every balancer gets the same VIPs, backends
//! and hash seed, but lists the backends in another order (so its ids differ): the rings must
//! still agree. BGP uses the timers docs/ecmp-bird.md recommends (hold 3 s, BFD 0.5 s).
//!
//! [`Edge`] owns everything; dropping it stops the processes (lbd killed, BIRD killed, backend
//! hosts stopped) and removes the pins, files and namespaces. [`Conversations`] are the
//! long-lived client connections the tests and the ECMP demo watch.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_userspace::datapath::{self, Datapath, Mode, DECAP};

use crate::{
    backend_host::BackendHost,
    bird::{self, BalancerConfig, Bird, Neighbor, RouterConfig, Timers, VipPrefix},
    echo::{self, EchoServer, Proto},
    lbd::{Lbd, LbdFiles},
    netns::{bridge, run, veth, Netns},
    topology::{ethtool, TINY},
};

/// The VIP the tests send connections to (service `VIP:PORT`/tcp), VIP "web".
pub const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1));
pub const PORT: u16 = 80;
/// Where each backend answers the balancers' health checks (a TCP listener).
pub const HEALTH_PORT: u16 = 8080;
/// The VIP prefix BIRD announces host routes of (on both ends).
pub const VIP_PREFIX: VipPrefix = VipPrefix { addr: IpAddr::V4(Ipv4Addr::new(198, 18, 100, 0)), len: 24 };
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const ROUTER_AS: u32 = 64500;
pub const BALANCER_AS: u32 = 64600;
/// The same on every balancer: with the rings, it makes every host pick the same backend.
pub const HASH_SEED: u32 = 0x5eed_ec3f;
/// Health checks every 200 ms, down after 2 failures, up after 1 success.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);
pub const CHECK_FALL: u32 = 2;
/// Bound on BGP coming up after a BIRD starts (it waits 1 s before connecting).
pub const SESSIONS_UP: Duration = Duration::from_secs(10);
/// Bound on a change of a balancer's VIP table reaching the router's kernel.
pub const PROPAGATION: Duration = Duration::from_secs(2);
/// lbd's metrics endpoint, in each balancer's namespace.
pub const METRICS: &str = "127.0.0.1:9100";

/// Balancer `n`'s (1-based) address on the fabric: 198.18.1.1n.
pub fn balancer_addr(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 1, 10 + n))
}

/// Backend `m`'s (1-based) address: 198.18.1.2m.
pub fn backend_addr(m: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 1, 20 + m))
}

/// A balancer's BGP session to the router.
pub const UPLINK: &str = "uplink";

/// The router's BGP session to balancer `n`.
pub fn session(n: u8) -> String {
    format!("lb{n}")
}

/// What to build.
pub struct Spec {
    pub balancers: u8,
    pub backends: u8,
    /// The `[[vip]]` tables of balancer `n` ([`web_vip`] by default).
    pub vips: Box<dyn Fn(u8) -> String>,
    /// The VIPs the backends serve (on lo, a TCP echo server on port [`PORT`] each).
    pub backend_vips: Vec<IpAddr>,
    /// Lines added to every balancer's `[announce]`, e.g. `drain_seconds = 2`.
    pub announce: String,
    /// `announce.bird_socket` of balancer `n`: its BIRD's socket when `None` is returned.
    pub bird_socket: Box<dyn Fn(u8) -> Option<String>>,
}

impl Spec {
    /// `balancers` hosts with [`web_vip`] over `backends` backends; lbd reads its BIRD.
    pub fn new(balancers: u8, backends: u8) -> Spec {
        Spec {
            balancers,
            backends,
            vips: Box::new(move |n| web_vip(n, backends, "")),
            backend_vips: vec![VIP],
            announce: String::new(),
            bird_socket: Box::new(|_| None),
        }
    }
}

/// VIP "web" ([`VIP`]:[`PORT`]/tcp, Maglev) for balancer `n` over `backends` backends, listed
/// from backend `n` on (so each balancer hands out other ids), with a TCP health check on
/// [`HEALTH_PORT`]; `extra` lines go into the `[[vip]]` table.
pub fn web_vip(n: u8, backends: u8, extra: &str) -> String {
    vip_table("web", VIP, n, backends, extra)
}

/// A `[[vip]]` table like [`web_vip`]'s, named `name` on `address`.
pub fn vip_table(name: &str, address: IpAddr, n: u8, backends: u8, extra: &str) -> String {
    let mut t = format!(
        "[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {PORT}\nprotocol = \"tcp\"\nring_size = 4099\n{extra}\n\
         [vip.health]\ntype = \"tcp\"\nport = {HEALTH_PORT}\ninterval_ms = {}\ntimeout_ms = 100\nrise = 1\nfall = {CHECK_FALL}\n",
        CHECK_INTERVAL.as_millis()
    );
    for i in 0..backends {
        let m = (i + n - 1) % backends + 1;
        t += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend_addr(m));
    }
    t + "\n"
}

/// A balancer host: lbd and BIRD in a namespace.
pub struct Balancer {
    pub n: u8,
    /// Declared first: dropped (killed) before its pins go.
    pub lbd: Option<Lbd>,
    pub bird: Option<Bird>,
    /// Its BIRD's config (rendered whenever BIRD starts or is reconfigured).
    bird_config: BalancerConfig,
    pub files: LbdFiles,
    pub ns: Netns,
}

impl Balancer {
    pub fn lbd(&self) -> &Lbd {
        self.lbd.as_ref().unwrap_or_else(|| panic!("balancer {}'s lbd is not running", self.n))
    }

    pub fn lbctl_ok(&self, args: &[&str]) -> String {
        self.lbd().lbctl_ok(args)
    }

    /// `lbctl status`, parsed.
    pub fn status(&self) -> lb_userspace::api::Status {
        let out = self.lbctl_ok(&["--json", "status"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("balancer {}'s status: {e}\n{out}", self.n))
    }

    /// What lbd says about its announcements.
    pub fn announcements(&self) -> lb_userspace::announce::Status {
        self.status().announce.unwrap_or_else(|| panic!("balancer {} has no [announce]", self.n))
    }

    /// Each VIP's ring fingerprint, by VIP name.
    pub fn fingerprints(&self) -> BTreeMap<String, String> {
        self.status().rings.into_iter().map(|r| (r.vip, r.fingerprint)).collect()
    }

    /// The VIP's new flows so far (its scheduler's picks: one per TCP connection).
    pub fn new_flows(&self, vip: &str) -> u64 {
        let out = self.lbctl_ok(&["--json", "stats"]);
        let stats: serde_json::Value = serde_json::from_str(&out).expect("stats JSON");
        stats["vips"]
            .as_array()
            .expect("vips")
            .iter()
            .find(|v| v["name"] == vip)
            .and_then(|v| v["new_flows"].as_u64())
            .unwrap_or_else(|| panic!("no VIP {vip} in balancer {}'s stats: {out}", self.n))
    }

    /// The flows in lbd's flow table: client address -> backend.
    pub fn flows(&self) -> BTreeMap<SocketAddr, IpAddr> {
        let out = self.lbctl_ok(&["--json", "flows", "--limit", "10000"]);
        let flows: lb_userspace::agent::flows::Flows =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("balancer {}'s flows: {e}", self.n));
        flows.sample.into_iter().filter_map(|f| Some((f.client, f.backend?))).collect()
    }

    /// lbd's metrics, as Prometheus scrapes them.
    pub fn metrics(&self) -> String {
        let out = run(self
            .ns
            .command("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://{METRICS}/metrics")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of the sample `series` (name and labels, as exposed), if lbd exposes it.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let metrics = self.metrics();
        metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// lbd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.files.dir.join("lbd.log")).unwrap_or_default()
    }

    /// The routes in the VIP table, as `ip route` prints them.
    pub fn vip_table(&self) -> String {
        self.ns.ip(&["-4", "route", "show", "table", &bird::VIP_TABLE.to_string()])
    }

    /// Starts lbd again on its config (after a kill: it adopts what the last one left).
    pub fn start_lbd(&mut self) {
        assert!(self.lbd.is_none(), "balancer {}'s lbd is running", self.n);
        self.lbd = Some(Lbd::start_with(&self.ns, &self.files, &[]));
    }

    /// Stops BIRD as an operator would (SIGTERM: it closes its sessions with a notification).
    pub fn stop_bird(&mut self) {
        let status =
            self.bird.take().unwrap_or_else(|| panic!("balancer {}'s BIRD is not running", self.n)).stop();
        assert!(status.success(), "balancer {}'s BIRD exited with {status} on SIGTERM", self.n);
    }

    /// Starts BIRD again, with its config and control socket as before (lbd's
    /// `announce.bird_socket` names it).
    pub fn start_bird(&mut self) {
        assert!(self.bird.is_none(), "balancer {}'s BIRD is running", self.n);
        let socket = bird_socket(&self.files);
        let config = self.bird_config.render();
        self.bird = Some(Bird::start_with_socket(&self.ns, "bird-balancer", &config, Some(&socket)));
    }

    /// Changes its BIRD's config with `change` and reconfigures the running BIRD (SIGHUP).
    pub fn reconfigure_bird(&mut self, change: impl FnOnce(&mut BalancerConfig)) {
        change(&mut self.bird_config);
        let bird = self.bird.as_ref().unwrap_or_else(|| panic!("balancer {}'s BIRD is not running", self.n));
        bird.reconfigure(&self.bird_config.render());
    }

    /// Waits until lbd's last read of its BIRD shows every BGP session established and every
    /// VIP it announces exported (lbd reads BIRD every `announce::RETRY`); returns how long that
    /// took. Panics after `timeout` with what lbd last saw.
    #[track_caller]
    pub fn wait_bird_read(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let a = self.announcements();
            let bird = a.bird.as_ref();
            let sessions_up =
                bird.is_some_and(|b| !b.sessions.is_empty() && b.sessions.iter().all(|s| s.established));
            if sessions_up && a.vips.iter().all(|v| !v.announced || v.exported == Some(true)) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "balancer {}'s lbd did not see its BIRD up and exporting within {timeout:?}: {a:#?}",
                self.n
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL to lbd, as a crash: the pinned balancer keeps forwarding, the routes stay.
    pub fn kill_lbd(&mut self) {
        self.lbd.take().unwrap_or_else(|| panic!("balancer {}'s lbd is not running", self.n)).kill();
    }

    /// Waits until lbd's log has a line containing all of `words`; panics after `timeout`.
    #[track_caller]
    pub fn wait_log(&self, words: &[&str], timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| words.iter().all(|w| l.contains(w))) {
                return line.to_owned();
            }
            assert!(
                start.elapsed() < timeout,
                "balancer {}'s lbd logged no line with {words:?} within {timeout:?}:\n{log}",
                self.n
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A backend host: `lbd backend-host`, a TCP echo server per VIP, a health listener.
pub struct Backend {
    pub m: u8,
    echo: Vec<EchoServer>,
    health: Option<EchoServer>,
    _host: BackendHost,
    pub ns: Netns,
}

impl Backend {
    /// Stops answering health checks (connections to [`HEALTH_PORT`] are refused).
    pub fn fail_health(&mut self) {
        self.health = None;
    }

    /// Answers health checks again.
    pub fn pass_health(&mut self) {
        self.health = Some(health_listener(&self.ns, self.m));
    }

    /// The clients its echo servers have served (one per connection).
    pub fn served(&self) -> Vec<SocketAddr> {
        self.echo.iter().flat_map(|e| e.peers()).collect()
    }
}

fn health_listener(ns: &Netns, m: u8) -> EchoServer {
    EchoServer::start(ns, Proto::Tcp, SocketAddr::new(backend_addr(m), HEALTH_PORT))
}

/// The whole edge. Fields drop in order: processes, then pins and files, then namespaces.
pub struct Edge {
    pub balancers: Vec<Balancer>,
    pub backends: Vec<Backend>,
    pub router_bird: Bird,
    _passthrough: Datapath,
    pub router: Netns,
    pub client: Netns,
    pub fabric: Netns,
}

impl Edge {
    /// Builds `spec` and starts everything; returns once every BGP session is Established and
    /// every lbd serves its API (the routes follow within [`PROPAGATION`]).
    pub fn start(spec: &Spec) -> Edge {
        let fabric = Netns::new("fabric");
        let router = Netns::new("router");
        let client = Netns::new("client");
        veth((&router, "c0"), (&client, "eth0"));
        router.addr("c0", "198.18.0.1/24");
        client.addr("eth0", &format!("{CLIENT}/24"));
        client.ip(&["route", "add", "default", "via", "198.18.0.1"]);
        // Full checksums in what the client sends (see `topology::Topology::configure_client`:
        // a veth artefact that an XDP_TX'd frame would carry to the backend).
        ethtool(&client, &["-K", "eth0", "tx", "off"]);
        veth((&router, "f0"), (&fabric, "router"));
        router.addr("f0", &format!("{ROUTER}/24"));
        // The router's own configuration (no lbd runs there): it routes, hashing on the 5-tuple.
        router.sysctl("net.ipv4.ip_forward", "1");
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1");
        let mut ports = vec!["router".to_owned()];
        let balancer_ns: Vec<Netns> = (1..=spec.balancers)
            .map(|n| {
                let ns = Netns::new(&format!("balancer{n}"));
                let port = format!("lb{n}");
                veth((&ns, "eth0"), (&fabric, &port));
                ns.addr("eth0", &format!("{}/24", balancer_addr(n)));
                ns.ip(&["route", "add", "default", "via", &ROUTER.to_string()]);
                ports.push(port);
                ns
            })
            .collect();
        let backend_ns: Vec<Netns> = (1..=spec.backends)
            .map(|m| {
                let ns = Netns::new(&format!("backend{m}"));
                let port = format!("be{m}");
                veth((&ns, "eth0"), (&fabric, &port));
                ns.addr("eth0", &format!("{}/24", backend_addr(m)));
                // Replies go to the client through the router, not back through a balancer.
                ns.ip(&["route", "add", "default", "via", &ROUTER.to_string()]);
                ports.push(port);
                ns
            })
            .collect();
        let port_names: Vec<&str> = ports.iter().map(String::as_str).collect();
        bridge(&fabric, "br0", &port_names);
        // The balancers' bridge ports receive their XDP_TX frames: NAPI (GRO) and a program.
        let mut passthrough =
            datapath::load_with(TINY).unwrap_or_else(|e| panic!("loading the pass-through program: {e}"));
        for n in 1..=spec.balancers {
            let port = format!("lb{n}");
            ethtool(&fabric, &["-K", &port, "gro", "on"]);
            fabric
                .run(|| passthrough.attach(DECAP, &port, Mode::Native))
                .unwrap_or_else(|e| panic!("pass-through on {port}: {e}"));
        }

        let router_config = RouterConfig {
            router_id: Ipv4Addr::new(198, 18, 0, 1),
            asn: ROUTER_AS,
            vip_prefixes: vec![VIP_PREFIX],
            balancers: (1..=spec.balancers)
                .map(|n| Neighbor { name: session(n), address: balancer_addr(n), asn: BALANCER_AS })
                .collect(),
            timers: Timers::RECOMMENDED,
        };
        let router_bird = Bird::start(&router, "bird-router", &router_config.render());

        let vips: Vec<String> = spec.backend_vips.iter().map(|v| format!("\"{v}\"")).collect();
        let settings = format!(
            "interfaces = [\"eth0\"]\nvips = [{}]\nallowed_sources = [\"198.18.0.0/15\", \"fd00::/8\"]\n",
            vips.join(", ")
        );
        let backends: Vec<Backend> = std::thread::scope(|s| {
            let started: Vec<_> =
                backend_ns.iter().map(|ns| s.spawn(|| BackendHost::start(ns, &settings))).collect();
            started
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect::<Vec<_>>()
        })
        .into_iter()
        .zip(backend_ns)
        .zip(1..)
        .map(|((host, ns), m)| Backend {
            m,
            echo: spec
                .backend_vips
                .iter()
                .map(|v| EchoServer::start(&ns, Proto::Tcp, SocketAddr::new(*v, PORT)))
                .collect(),
            health: Some(health_listener(&ns, m)),
            _host: host,
            ns,
        })
        .collect();

        let mut balancers: Vec<Balancer> = balancer_ns
            .into_iter()
            .zip(1..)
            .map(|(ns, n)| {
                let config = BalancerConfig {
                    router_id: match balancer_addr(n) {
                        IpAddr::V4(a) => a,
                        IpAddr::V6(_) => unreachable!("IPv4 fabric"),
                    },
                    asn: BALANCER_AS,
                    vip_prefixes: vec![VIP_PREFIX],
                    routers: vec![Neighbor { name: UPLINK.into(), address: ROUTER.into(), asn: ROUTER_AS }],
                    timers: Timers::RECOMMENDED,
                };
                let files = LbdFiles::new();
                let bird = Bird::start_with_socket(
                    &ns,
                    "bird-balancer",
                    &config.render(),
                    Some(&bird_socket(&files)),
                );
                let socket = (spec.bird_socket)(n).unwrap_or_else(|| bird.socket().display().to_string());
                std::fs::write(files.config(), lbd_config(spec, n, &files, &socket))
                    .expect("write lbd's config");
                Balancer { n, lbd: None, bird: Some(bird), bird_config: config, files, ns }
            })
            .collect();
        std::thread::scope(|s| {
            for b in &mut balancers {
                s.spawn(|| b.start_lbd());
            }
        });
        let names: Vec<String> = (1..=spec.balancers).map(session).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        router_bird.wait_established(&names, SESSIONS_UP);
        Edge { balancers, backends, router_bird, _passthrough: passthrough, router, client, fabric }
    }

    /// Balancer `n` (1-based).
    pub fn balancer(&self, n: u8) -> &Balancer {
        &self.balancers[usize::from(n - 1)]
    }

    pub fn balancer_mut(&mut self, n: u8) -> &mut Balancer {
        &mut self.balancers[usize::from(n - 1)]
    }

    pub fn backend_mut(&mut self, m: u8) -> &mut Backend {
        &mut self.backends[usize::from(m - 1)]
    }

    /// The router's next hops for `vip`, sorted.
    pub fn router_hops(&self, vip: IpAddr) -> Vec<IpAddr> {
        bird::next_hops(&self.router, vip)
    }

    /// The next hops of balancers `ns`, sorted.
    pub fn hops(ns: &[u8]) -> Vec<IpAddr> {
        let mut hops: Vec<IpAddr> = ns.iter().map(|&n| balancer_addr(n)).collect();
        hops.sort();
        hops
    }

    /// Waits until the router routes `vip` over exactly balancers `ns`; returns how long it took.
    #[track_caller]
    pub fn wait_router(&self, vip: IpAddr, ns: &[u8], timeout: Duration) -> Duration {
        bird::wait_next_hops(&self.router, vip, &Self::hops(ns), timeout)
    }

    /// Balancer `n` dies: lbd and BIRD killed (SIGKILL), then its link deleted (its pinned
    /// balancer, which would go on forwarding, goes with it).
    pub fn kill_balancer(&mut self, n: u8) {
        let b = self.balancer_mut(n);
        b.kill_lbd();
        b.bird.take().expect("the balancer's BIRD is running").kill();
        self.fabric.ip(&["link", "del", &format!("lb{n}")]);
    }

    /// Which balancer carries each of `clients`, from the balancers' flow tables.
    pub fn carriers(&self) -> BTreeMap<SocketAddr, u8> {
        let mut out = BTreeMap::new();
        for b in self.balancers.iter().filter(|b| b.lbd.is_some()) {
            out.extend(b.flows().into_keys().map(|c| (c, b.n)));
        }
        out
    }

    /// The backend serving each client connection, from the backends' echo servers.
    pub fn servers(&self) -> BTreeMap<SocketAddr, IpAddr> {
        self.backends
            .iter()
            .flat_map(|b| b.served().into_iter().map(move |c| (c, backend_addr(b.m))))
            .collect()
    }
}

/// Where a balancer's BIRD has its control socket, whichever BIRD process it is.
fn bird_socket(files: &LbdFiles) -> std::path::PathBuf {
    files.dir.join("bird.ctl")
}

/// Balancer `n`'s lbd config.
fn lbd_config(spec: &Spec, n: u8, files: &LbdFiles, bird_socket: &str) -> String {
    format!(
        "pin_path = {:?}\napi_socket = {:?}\nstate_file = {:?}\ninterfaces = [\"eth0\"]\nmetrics = \"{METRICS}\"\n\n\
         [source]\nipv4 = \"{}\"\nhash_seed = {HASH_SEED}\n\n\
         [limits]\nflows = 131072\nmax_vips = 8\nmax_backends = 64\n\n\
         [announce]\nbird_socket = {bird_socket:?}\n{}\n\n{}",
        files.pin_path.display().to_string(),
        files.socket().display().to_string(),
        files.dir.join("state.json").display().to_string(),
        balancer_addr(n),
        spec.announce,
        (spec.vips)(n),
    )
}

/// One long-lived connection of [`Conversations`].
struct Conversation {
    local: SocketAddr,
    exchanges: AtomicU64,
    failure: Mutex<Option<String>>,
}

/// Long-lived TCP connections from the client to a service, each on a thread of its own that
/// exchanges a message every `period` until stopped. A connection that fails (a reset, an echo
/// later than [`Conversations::ECHO_TIMEOUT`]) stops and keeps its error.
pub struct Conversations {
    conversations: Vec<Arc<Conversation>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Conversations {
    /// The longest one echo may take: a connection whose balancer died waits for its packets to
    /// be routed to another (retransmissions) and must not count as failed meanwhile.
    pub const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

    /// Opens `count` connections from the client, from ports `first_port` on, to `service`;
    /// returns once each has made its first exchange (or failed). Panics if one cannot connect.
    pub fn start(client: &Netns, service: SocketAddr, count: u16, first_port: u16, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut conversations = Vec::new();
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for i in 0..count {
            let local = SocketAddr::new(CLIENT.into(), first_port + i);
            let c = Arc::new(Conversation { local, exchanges: AtomicU64::new(0), failure: Mutex::new(None) });
            let (conversation, stop, ready) = (c.clone(), stop.clone(), ready_tx.clone());
            let ns = client.name().to_owned();
            threads.push(std::thread::spawn(move || {
                converse(&ns, &conversation, service, period, &stop, &ready)
            }));
            conversations.push(c);
        }
        let deadline = Instant::now() + Self::ECHO_TIMEOUT + Duration::from_secs(2);
        for _ in 0..count {
            let left = deadline.saturating_duration_since(Instant::now());
            ready_rx.recv_timeout(left).expect("every connection opens within its timeouts");
        }
        let c = Conversations { conversations, stop, threads };
        let failed = c.failures();
        assert!(failed.is_empty(), "{} of {count} connections failed at once: {failed:?}", failed.len());
        c
    }

    /// Exchanges so far, per connection.
    pub fn exchanges(&self) -> BTreeMap<SocketAddr, u64> {
        self.conversations.iter().map(|c| (c.local, c.exchanges.load(Ordering::Relaxed))).collect()
    }

    /// The connections that failed, with why.
    pub fn failures(&self) -> BTreeMap<SocketAddr, String> {
        self.conversations
            .iter()
            .filter_map(|c| c.failure.lock().unwrap_or_else(|e| e.into_inner()).clone().map(|f| (c.local, f)))
            .collect()
    }

    /// The connections that made at least one exchange since `before` (a count from
    /// [`Conversations::exchanges`]) and have not failed.
    pub fn progressed_since(&self, before: &BTreeMap<SocketAddr, u64>) -> Vec<SocketAddr> {
        let failed = self.failures();
        self.exchanges()
            .into_iter()
            .filter(|(local, n)| *n > before.get(local).copied().unwrap_or(0) && !failed.contains_key(local))
            .map(|(local, _)| local)
            .collect()
    }

    pub fn locals(&self) -> Vec<SocketAddr> {
        self.conversations.iter().map(|c| c.local).collect()
    }
}

impl Drop for Conversations {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn converse(
    ns: &str,
    c: &Conversation,
    service: SocketAddr,
    period: Duration,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<()>,
) {
    let fail = |e: String| *c.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("the client's namespace");
    // SAFETY: setns with a valid namespace fd changes only this thread's network namespace.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns into {ns}: {}", std::io::Error::last_os_error());
    let mut conn = match echo::tcp_connect_from(c.local, service, Conversations::ECHO_TIMEOUT) {
        Ok(conn) => conn,
        Err(e) => {
            fail(format!("connect: {e}"));
            let _ = ready.send(());
            return;
        }
    };
    let mut next = Instant::now();
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let message = format!("{} #{}", c.local, c.exchanges.load(Ordering::Relaxed));
        if let Err(e) = echo::tcp_echo(&mut conn, message.as_bytes()) {
            fail(e.to_string());
            let _ = ready.send(());
            return;
        }
        c.exchanges.fetch_add(1, Ordering::Relaxed);
        if std::mem::take(&mut first) {
            let _ = ready.send(());
        }
        next += period;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}
