//! lbd as a real process inside a test namespace, and lbctl against it.
//!
//! lbd is started with `nsenter --net` (not `ip netns exec`, which mounts a fresh /sys where
//! bpffs is missing). Its pin directory, config, socket and state file all carry the test
//! prefix; dropping the [`Lbd`] kills it and removes them, so the pinned link goes too.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{
    bins::{self, Running},
    netns::Netns,
    unique_name,
};

/// A namespace lbd can attach to, for tests of the agent alone: `eth0` (198.18.0.2/24) and its
/// veth peer `eth1`, both up, nothing behind them.
pub fn lb_namespace() -> Netns {
    let ns = Netns::new("lb");
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]);
    ns.addr("eth0", "198.18.0.2/24");
    ns.ip(&["link", "set", "eth1", "up"]);
    ns
}

/// Files of one lbd instance, kept across restarts of the process.
pub struct LbdFiles {
    pub dir: PathBuf,
    pub pin_path: PathBuf,
}

impl LbdFiles {
    pub fn new() -> Self {
        let name = unique_name("lbd");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        LbdFiles { dir, pin_path: Path::new("/sys/fs/bpf").join(name) }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("lbd.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("lbd.sock")
    }

    /// The agent settings of a test config: this instance's paths, small maps. Append VIPs.
    pub fn header(&self, interfaces: &[&str], source4: &str, source6: &str) -> String {
        format!(
            "pin_path = {:?}\napi_socket = {:?}\nstate_file = {:?}\ninterfaces = {:?}\n\n\
             [source]\nipv4 = {source4:?}\nipv6 = {source6:?}\n\n\
             [limits]\nflows = 131072\nmax_vips = 8\nmax_backends = 64\n\n",
            self.pin_path.display().to_string(),
            self.socket().display().to_string(),
            self.dir.join("state.json").display().to_string(),
            interfaces,
        )
    }
}

impl LbdFiles {
    /// A whole config with `[announce]` (table 4242) and `web` (198.18.100.1:80/tcp, one backend)
    /// announced whatever its health.
    pub fn announcing_web(&self) -> String {
        format!(
            "{}[announce]\n\n[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\
             announce = \"always\"\n\n[[vip.backend]]\naddress = \"198.18.0.11\"\n",
            self.header(&["eth0"], "198.18.0.2", "fd00::2")
        )
    }
}

impl Default for LbdFiles {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for LbdFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_path);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running lbd. Dropping it kills it (SIGKILL); the pins stay until the [`LbdFiles`] go.
pub struct Lbd {
    pub process: Running,
    socket: PathBuf,
}

impl Lbd {
    /// Writes `config` and starts lbd in `ns`; waits until its API answers.
    pub fn start(ns: &Netns, files: &LbdFiles, config: &str) -> Lbd {
        std::fs::write(files.config(), config).expect("write config");
        Self::start_with(ns, files, &[])
    }

    /// Starts lbd on the config already written, with extra arguments.
    pub fn start_with(ns: &Netns, files: &LbdFiles, extra: &[&str]) -> Lbd {
        Self::start_wrapped(ns, files, &[], extra)
    }

    /// [`Lbd::start_with`] under a `wrapper` command that runs the rest of its command line
    /// (e.g. `["prlimit", "--nofile=64:65536"]`).
    pub fn start_wrapped(ns: &Netns, files: &LbdFiles, wrapper: &[&str], extra: &[&str]) -> Lbd {
        let _ = std::fs::remove_file(files.socket());
        let log = std::fs::File::create(files.dir.join("lbd.log")).expect("log file");
        let (program, wrapper_args) = match wrapper {
            [program, args @ ..] => (*program, args),
            [] => ("nsenter", &[][..]),
        };
        let mut command = Command::new(program);
        if !wrapper.is_empty() {
            command.args(wrapper_args).arg("nsenter");
        }
        let process = Running::spawn(
            command
                .arg(format!("--net=/run/netns/{}", ns.name()))
                .arg(bins::path("lbd"))
                .arg("--config")
                .arg(files.config())
                .args(extra)
                .env("RUST_LOG", "info")
                .env_remove("RUST_BACKTRACE")
                .stdout(log.try_clone().expect("log"))
                .stderr(log),
        );
        let mut lbd = Lbd { process, socket: files.socket() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = lbd.process.child.try_wait() {
                let log = std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default();
                panic!("lbd exited ({status}) before its API came up:\n{log}");
            }
            if lbd.socket.exists() && lbd.lbctl(&["status"]).status.success() {
                return lbd;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        lbd.process.child.kill().ok();
        panic!("lbd's API did not come up within 20 s");
    }

    /// Runs `lbctl --socket <ours> ARGS`.
    pub fn lbctl(&self, args: &[&str]) -> Output {
        lbctl(&self.socket, args)
    }

    /// Runs lbctl and panics with its output unless it succeeds; returns stdout.
    pub fn lbctl_ok(&self, args: &[&str]) -> String {
        let out = self.lbctl(args);
        assert!(
            out.status.success(),
            "lbctl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILL, as a crash would: the pinned link and maps stay and keep forwarding.
    pub fn kill(mut self) {
        self.process.child.kill().expect("kill lbd");
        self.process.child.wait().expect("reap lbd");
    }
}

pub fn lbctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(bins::path("lbctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .expect("run lbctl")
}

/// What the data plane's configuration maps hold, read from the pins: to prove that a refused
/// change changed nothing. Two snapshots are equal whatever their cache generations (a clock
/// lbd moves every second).
#[derive(Debug)]
pub struct MapSnapshot {
    pub vips: Vec<(lb_common::VipKey, lb_common::VipValue)>,
    pub backends: Vec<(u32, lb_common::BackendValue)>,
    /// CONFIG, with its cache generation set to 0.
    pub config: lb_common::ConfigValue,
    /// CONFIG's cache generation.
    pub cache_generation: u32,
    /// The first `ring_slots` slots of RINGS (ring 0 and on).
    pub rings: Vec<u32>,
}

impl PartialEq for MapSnapshot {
    fn eq(&self, other: &Self) -> bool {
        (&self.vips, &self.backends, &self.config, &self.rings)
            == (&other.vips, &other.backends, &other.config, &other.rings)
    }
}

pub fn map_snapshot(pin_dir: &Path, ring_slots: u32) -> MapSnapshot {
    use aya::maps::{Array, HashMap, MapData};
    use lb_common::{map_names, BackendValue, ConfigValue, VipKey, VipValue};
    let open = |name: &str| {
        MapData::from_pin(pin_dir.join(name)).unwrap_or_else(|e| panic!("open pinned {name}: {e}"))
    };
    let vips: HashMap<MapData, VipKey, VipValue> =
        HashMap::try_from(aya::maps::Map::HashMap(open(map_names::VIPS))).unwrap();
    let mut vips: Vec<_> = vips.iter().map(|r| r.expect("read VIPS")).collect();
    vips.sort_by_key(|(k, _)| *k);
    let backends: Array<MapData, BackendValue> =
        Array::try_from(aya::maps::Map::Array(open(map_names::BACKENDS))).unwrap();
    let backends = (0..backends.len())
        .map(|i| (i, backends.get(&i, 0).expect("read BACKENDS")))
        .filter(|(_, b)| b.family != 0)
        .collect();
    let config: Array<MapData, ConfigValue> =
        Array::try_from(aya::maps::Map::Array(open(map_names::CONFIG))).unwrap();
    let config = config.get(&0, 0).expect("read CONFIG");
    let rings: Array<MapData, u32> = Array::try_from(aya::maps::Map::Array(open(map_names::RINGS))).unwrap();
    MapSnapshot {
        vips,
        backends,
        config: lb_common::ConfigValue { cache_generation: 0, ..config },
        cache_generation: config.cache_generation,
        rings: (0..ring_slots).map(|i| rings.get(&i, 0).expect("read RINGS")).collect(),
    }
}
