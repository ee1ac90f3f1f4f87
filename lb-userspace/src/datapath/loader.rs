use std::path::{Path, PathBuf};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use lb_common::{limits, map_names};
use thiserror::Error;

use super::xdp_link::{self, LinkState};

/// Names of the XDP programs in the object.
pub const BALANCER: &str = "balancer";
pub const DECAP: &str = "decap";

/// What a load is for: the programs the kernel verifies, the maps pinned (with a pin directory).
#[derive(Clone, Copy)]
struct Role {
    programs: &'static [&'static str],
    pinned: &'static [&'static str],
}

/// A balancer host (and tests): both programs, every map that outlives the agent.
const BALANCER_HOST: Role = Role { programs: &[BALANCER, DECAP], pinned: &map_names::ALL };
/// A backend host: the decap program and its maps.
const BACKEND_HOST: Role = Role { programs: &[DECAP], pinned: &map_names::DECAP };

/// The XDP programs, built by build.rs and embedded so that the binaries are self-contained.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"))
}

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("this binary was built without its XDP programs (AYA_BUILD_SKIP was set); rebuild it without AYA_BUILD_SKIP")]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<EbpfError>),
    #[error("cannot create the pin directory {0}: {1} (is bpffs mounted on /sys/fs/bpf?)")]
    PinDir(PathBuf, #[source] std::io::Error),
    #[error("map {name} pinned with {pinned} entries, but the limits ask for {wanted}: restore the old limits, or remove the pin directory (this drops the flow table)")]
    PinnedSize { name: &'static str, pinned: u32, wanted: u32 },
    #[error("pinned link {path}: {reason}")]
    Link { path: PathBuf, reason: String },
    #[error("the embedded eBPF object does not parse: {0}")]
    Parse(String),
    #[error("opening the capture buffers: {0}")]
    Capture(String),
    #[error("this datapath was loaded without a pin directory")]
    NotPinned,
    #[error("reading the number of possible CPUs from {0}: {1}")]
    Cpus(&'static str, #[source] std::io::Error),
    #[error("limits.flows = {0}: must be a multiple of {ways} from {ways} to {max}", ways = lb_common::FLOW_WAYS, max = limits::MAX_FLOWS)]
    Flows(u32),
    #[error("max_vips = {0} is more VIPs than flow entries can name (they keep a VIP's id in 16 bits): use at most 65536")]
    TooManyVips(u32),
    #[error("the eBPF object has no map named {0:?}")]
    NoMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("adding interface {ifindex} to TX_PORTS: {source}")]
    TxPort {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("the eBPF object has no XDP program named {0:?}")]
    NoProgram(&'static str),
    #[error("the kernel rejected XDP program {name:?}: {source}")]
    Verify {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching {name:?} to interface {interface:?} in {mode} mode failed: {source}")]
    Attach {
        name: &'static str,
        interface: String,
        mode: Mode,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("ring {ring} does not exist: the RINGS map holds {max_rings} rings")]
    NoSuchRing { ring: u32, max_rings: u32 },
    #[error("a ring of {len} slots does not fit the ring stride of {stride} slots")]
    RingTooLarge { len: usize, stride: u32 },
    #[error("backend id {0} is out of range (1..{max})", max = limits::MAX_BACKENDS)]
    BackendId(u32),
}

/// How [`Datapath::attach_pinned`] attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Through a new link, pinned: none was.
    New,
    /// Through the pinned link of an earlier agent, its program replaced in place.
    Adopted,
    /// Through a new link, pinned, in place of the pinned one, which was no use as this says
    /// (dead, on another interface, in the other mode): the interface forwarded nothing for the
    /// moment it took, or since the link died.
    Replaced(LinkState),
    /// The pinned link was in the other mode, and the mode asked for was refused (a driver
    /// without native XDP): attached again in the mode it had (`kept`), so that a mode change
    /// never stops forwarding; `refused` says why.
    KeptMode { kept: Mode, refused: String },
}

/// How an XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In the driver's receive path: the fast one, and the default.
    Native,
    /// In the kernel's generic path, after the socket buffer is built: for drivers without XDP.
    Generic,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
        })
    }
}

/// Map sizes chosen at load time (see `lb_common::limits` for what each costs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// FLOW_TABLE entries: the flows it holds, all CPUs together (a multiple of
    /// `lb_common::FLOW_WAYS`).
    pub flows: u32,
    /// VIP ids are 0..max_vips (VIP_BY_ID, VIP_STATS); VIPS holds two entries a VIP (its
    /// service and its address's entry).
    pub max_vips: u32,
    pub max_rings: u32,
    /// Slots reserved per ring: the largest ring size any VIP may use.
    pub ring_stride: u32,
    pub max_backends: u32,
}

impl Sizes {
    /// The smallest maps the kernel takes: for programs that do not use them.
    pub const SMALLEST: Sizes =
        Sizes { flows: lb_common::FLOW_WAYS, max_vips: 1, max_rings: 1, ring_stride: 1, max_backends: 1 };

    /// The flow table's sets: the program's `FLOW_SETS`.
    pub fn flow_sets(&self) -> u32 {
        self.flows / lb_common::FLOW_WAYS
    }
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            flows: limits::FLOWS,
            max_vips: limits::MAX_RINGS,
            max_rings: limits::MAX_RINGS,
            ring_stride: limits::RING_SIZE,
            max_backends: limits::MAX_BACKENDS,
        }
    }
}

/// The loaded programs and their maps.
pub struct Datapath {
    pub(super) ebpf: Ebpf,
    pub sizes: Sizes,
    /// Where maps and links are pinned, if they are.
    pub pin_dir: Option<PathBuf>,
    /// The maps pinned there.
    pinned: &'static [&'static str],
}

/// Loads the embedded object with default map sizes and has the kernel verify every program.
pub fn load() -> Result<Datapath, DatapathError> {
    load_with(Sizes::default())
}

/// Loads with private maps (tests, one-off runs): they go away with the `Datapath`.
pub fn load_with(sizes: Sizes) -> Result<Datapath, DatapathError> {
    load_inner(object(), sizes, None, BALANCER_HOST)
}

/// Loads with every map pinned under `dir` (a bpffs directory, created if missing). Maps
/// already pinned there are reused with their contents: that is how a restarted agent adopts
/// the running state. Their sizes must match `sizes`.
pub fn load_pinned(sizes: Sizes, dir: &Path) -> Result<Datapath, DatapathError> {
    std::fs::create_dir_all(dir).map_err(|e| DatapathError::PinDir(dir.to_owned(), e))?;
    load_inner(object(), sizes, Some(dir), BALANCER_HOST)
}

/// Loads only the decap program, as a backend host does, with private maps (tests).
pub fn load_decap() -> Result<Datapath, DatapathError> {
    load_inner(object(), Sizes::SMALLEST, None, BACKEND_HOST)
}

/// Loads only the decap program, for a backend host, with its maps (`map_names::DECAP`) pinned
/// under `dir` (created if missing) and reused if already there, as [`load_pinned`] does. The
/// balancer's maps exist only at their smallest, unpinned.
pub fn load_decap_pinned(dir: &Path) -> Result<Datapath, DatapathError> {
    std::fs::create_dir_all(dir).map_err(|e| DatapathError::PinDir(dir.to_owned(), e))?;
    load_inner(object(), Sizes::SMALLEST, Some(dir), BACKEND_HOST)
}

impl DatapathError {
    /// Whether the kernel refused for want of memory (ENOMEM anywhere in the error's sources: a
    /// map it could not allocate, within the host's memory or the service's cgroup limit).
    pub fn out_of_memory(&self) -> bool {
        let mut error: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = error {
            if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::ENOMEM)) {
                return true;
            }
            error = e.source();
        }
        false
    }
}

/// A pinned link's name: the prefix, then its interface's.
pub(super) const LINK_PIN_PREFIX: &str = "link_";

/// The possible CPUs: per-CPU maps hold a value for each (and legacy per-CPU limits scale by them).
pub fn possible_cpus() -> Result<u32, DatapathError> {
    aya::util::nr_cpus().map(|n| n as u32).map_err(|(path, e)| DatapathError::Cpus(path, e))
}

fn load_inner(
    object: &[u8],
    sizes: Sizes,
    pin_dir: Option<&Path>,
    role: Role,
) -> Result<Datapath, DatapathError> {
    if object.is_empty() {
        return Err(DatapathError::NoObject);
    }
    let ways = lb_common::FLOW_WAYS;
    if sizes.flows == 0 || !sizes.flows.is_multiple_of(ways) || sizes.flows > limits::MAX_FLOWS {
        return Err(DatapathError::Flows(sizes.flows));
    }
    // A flow entry keeps its VIP's id in 16 bits.
    if sizes.max_vips > 1 << 16 {
        return Err(DatapathError::TooManyVips(sizes.max_vips));
    }
    let expected = [
        (map_names::FLOW_TABLE, sizes.flows),
        (map_names::VIPS, sizes.max_vips * 2),
        (map_names::VIP_BY_ID, sizes.max_vips),
        (map_names::VIP_STATS, sizes.max_vips),
        (map_names::RINGS, sizes.max_rings * sizes.ring_stride),
        (map_names::BACKENDS, sizes.max_backends),
        (map_names::BACKEND_STATS, sizes.max_backends),
        (map_names::NEXT_HOPS, sizes.max_backends),
        (map_names::RR_SEQS, sizes.max_rings * limits::RR_SEQ_LEN),
        (map_names::RR_CURSORS, sizes.max_rings),
        (map_names::ACTIVE_CONNS, sizes.max_backends),
        (map_names::VIP_POLICY, sizes.max_vips),
        (map_names::POLICY_STATS, sizes.max_vips),
        (map_names::VIP_FLOW_BUCKETS, sizes.max_vips),
    ];
    let sets = sizes.flow_sets();
    let mut loader = EbpfLoader::new();
    loader.override_global("FLOW_SETS", &sets, true);
    for (name, entries) in expected {
        loader.map_max_entries(name, entries);
    }
    if let Some(dir) = pin_dir {
        for name in role.pinned {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let mut ebpf = loader.load(object).map_err(|e| DatapathError::Load(Box::new(e)))?;
    // A pinned map is reused whatever its size: refuse one made with other limits.
    for (name, entries) in expected {
        let map = ebpf.map(name).ok_or(DatapathError::NoMap(name))?;
        let info = match map {
            aya::maps::Map::LruHashMap(m) | aya::maps::Map::HashMap(m) => m.info(),
            aya::maps::Map::Array(m) | aya::maps::Map::PerCpuArray(m) => m.info(),
            _ => continue,
        }
        .map_err(|source| DatapathError::Map { name, source })?;
        if info.max_entries() != entries {
            return Err(DatapathError::PinnedSize { name, pinned: info.max_entries(), wanted: entries });
        }
    }
    for &name in role.programs {
        let prog: &mut Xdp = program(&mut ebpf, name)?;
        prog.load().map_err(|source| DatapathError::Verify { name, source: Box::new(source) })?;
    }
    Ok(Datapath { ebpf, sizes, pin_dir: pin_dir.map(Path::to_owned), pinned: role.pinned })
}

impl Datapath {
    /// The loaded object itself, for the test kit and the benchmarks, which drive what the
    /// product never does (test runs, traffic generators, floor programs). Product code uses the
    /// typed handles of this module.
    pub fn raw(&self) -> &Ebpf {
        &self.ebpf
    }

    /// [`Self::raw`], to change it.
    pub fn raw_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Attaches the balancer to `interface` through a link pinned under the pin directory, so
    /// that it keeps forwarding when the agent exits. A link already pinned for the interface (an
    /// earlier agent's) that drives it in `mode` is adopted: its program is replaced atomically,
    /// no packet is missed. One that does not (dead, on another interface, in the other mode) is
    /// detached and unpinned, and a new one attached: what [`Attached::Replaced`] says.
    pub fn attach_pinned(&mut self, interface: &str, mode: Mode) -> Result<Attached, DatapathError> {
        self.attach_pinned_program(BALANCER, interface, mode)
    }

    /// [`Self::attach_pinned`] for program `name` (a backend host's `decap`).
    pub fn attach_pinned_program(
        &mut self,
        name: &'static str,
        interface: &str,
        mode: Mode,
    ) -> Result<Attached, DatapathError> {
        let path = self.link_pin(interface)?;
        let link_error = |reason: String| DatapathError::Link { path: path.clone(), reason };
        let found = xdp_link::state(&path, interface).map_err(|e| link_error(e.to_string()))?;
        match found {
            LinkState::Unpinned => {}
            LinkState::Attached(attached) if attached == mode => {
                let prog: &mut Xdp = program(&mut self.ebpf, name)?;
                let fd_link =
                    FdLink::from(PinnedLink::from_pin(&path).map_err(|e| link_error(e.to_string()))?);
                let link = XdpLink::try_from(fd_link).map_err(|e| link_error(e.to_string()))?;
                let id = prog.attach_to_link(link).map_err(|e| link_error(e.to_string()))?;
                // The pin holds the link, as it holds a new one: kept, this fd would keep the
                // program attached after the pin is removed (`unpin_link`), until lbd exits.
                drop(prog.take_link(id).map_err(|e| link_error(e.to_string()))?);
                return Ok(Attached::Adopted);
            }
            _ => xdp_link::remove(&path)
                .map_err(|e| link_error(format!("removing it ({found}) failed: {e}")))?,
        }
        match (self.attach_and_pin(name, interface, mode, &path), found) {
            (Ok(()), LinkState::Unpinned) => Ok(Attached::New),
            (Ok(()), replaced) => Ok(Attached::Replaced(replaced)),
            (Err(refused), LinkState::Attached(kept)) => {
                self.attach_and_pin(name, interface, kept, &path)?;
                Ok(Attached::KeptMode { kept, refused: refused.to_string() })
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Attaches program `name` to `interface` in `mode` through a new link, pinned at `path`.
    fn attach_and_pin(
        &mut self,
        name: &'static str,
        interface: &str,
        mode: Mode,
        path: &Path,
    ) -> Result<(), DatapathError> {
        let link_error = |reason: String| DatapathError::Link { path: path.to_owned(), reason };
        let id = self.attach(name, interface, mode)?;
        let prog: &mut Xdp = program(&mut self.ebpf, name)?;
        let link = prog.take_link(id).map_err(|e| link_error(e.to_string()))?;
        let fd_link = FdLink::try_from(link).map_err(|e| link_error(e.to_string()))?;
        fd_link.pin(path).map(drop).map_err(|e| link_error(e.to_string()))
    }

    /// What the link pinned for `interface` drives now (a link can die under lbd: its interface
    /// deleted).
    pub fn link_state(&self, interface: &str) -> Result<LinkState, DatapathError> {
        let path = self.link_pin(interface)?;
        xdp_link::state(&path, interface).map_err(|e| DatapathError::Link { path, reason: e.to_string() })
    }

    /// Removes the pinned link of `interface`: its program stops on it once this process exits.
    pub fn unpin_link(&self, interface: &str) -> Result<(), DatapathError> {
        let path = self.link_pin(interface)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(DatapathError::Link { path, reason: e.to_string() })
            }
            _ => Ok(()),
        }
    }

    /// Removes every pinned map (after [`Self::unpin_link`] for each interface).
    pub fn unpin_maps(&self) -> Result<(), DatapathError> {
        let Some(dir) = &self.pin_dir else { return Ok(()) };
        for name in self.pinned {
            let path = dir.join(name);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(DatapathError::Link { path, reason: e.to_string() });
                }
            }
        }
        // The versioned directory, then its parent (the configured pin_path) if nothing else is there.
        let _ = std::fs::remove_dir(dir);
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }

    fn link_pin(&self, interface: &str) -> Result<PathBuf, DatapathError> {
        let dir = self.pin_dir.as_ref().ok_or(DatapathError::NotPinned)?;
        Ok(dir.join(format!("{LINK_PIN_PREFIX}{interface}")))
    }

    /// The interfaces that have a link pinned under the pin directory (this agent's or an
    /// earlier one's).
    pub fn pinned_links(&self) -> Result<Vec<String>, DatapathError> {
        let dir = self.pin_dir.as_ref().ok_or(DatapathError::NotPinned)?;
        let entries = std::fs::read_dir(dir).map_err(|e| DatapathError::PinDir(dir.clone(), e))?;
        Ok(entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix(LINK_PIN_PREFIX).map(String::from))
            .collect())
    }

    /// Attaches program `name` to `interface` (in the calling thread's network namespace).
    pub fn attach(
        &mut self,
        name: &'static str,
        interface: &str,
        mode: Mode,
    ) -> Result<XdpLinkId, DatapathError> {
        let prog: &mut Xdp = program(&mut self.ebpf, name)?;
        let flags = match mode {
            Mode::Native => XdpMode::Driver,
            Mode::Generic => XdpMode::Skb,
        };
        prog.attach(interface, flags).map_err(|source| DatapathError::Attach {
            name,
            interface: interface.to_owned(),
            mode,
            source: Box::new(source),
        })
    }
}

impl Datapath {
    /// Instructions the kernel's verifier walked to accept program `name` (it refuses a program
    /// past 1,000,000), if the kernel reports it.
    pub fn verified_instructions(&mut self, name: &'static str) -> Result<Option<u32>, DatapathError> {
        let info = program(&mut self.ebpf, name)?
            .info()
            .map_err(|e| DatapathError::Verify { name, source: Box::new(e) })?;
        Ok(info.verified_instruction_count())
    }
}

pub fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DatapathError> {
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(DatapathError::NoProgram(name))
}

/// Loads `object`, another build of lb-ebpf (the benches' has their programs too), as
/// [`load_with`] loads the embedded one: private maps of `sizes`, balancer and decap verified.
pub fn load_object_with(object: &[u8], sizes: Sizes) -> Result<Datapath, DatapathError> {
    load_inner(object, sizes, None, BALANCER_HOST)
}
