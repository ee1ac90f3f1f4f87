use aya::{
    programs::{xdp::XdpLinkId, ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use lb_common::{limits, map_names};
use thiserror::Error;

/// Names of the XDP programs in the object.
pub const BALANCER: &str = "balancer";
pub const DECAP: &str = "decap";
const PROGRAMS: [&str; 2] = [BALANCER, DECAP];

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
    #[error("reading the number of possible CPUs from {0}: {1}")]
    Cpus(&'static str, #[source] std::io::Error),
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
    pub flows_per_cpu: u32,
    pub max_rings: u32,
    /// Slots reserved per ring: the largest ring size any VIP may use.
    pub ring_stride: u32,
    pub max_backends: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            flows_per_cpu: limits::FLOWS_PER_CPU,
            max_rings: limits::MAX_RINGS,
            ring_stride: limits::RING_SIZE,
            max_backends: limits::MAX_BACKENDS,
        }
    }
}

/// The loaded programs and their maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub sizes: Sizes,
}

/// Loads the embedded object with default map sizes and has the kernel verify every program.
pub fn load() -> Result<Datapath, DatapathError> {
    load_with(Sizes::default())
}

pub fn load_with(sizes: Sizes) -> Result<Datapath, DatapathError> {
    let object = object();
    if object.is_empty() {
        return Err(DatapathError::NoObject);
    }
    let cpus = aya::util::nr_cpus().map_err(|(path, e)| DatapathError::Cpus(path, e))? as u32;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map_names::FLOWS, sizes.flows_per_cpu * cpus)
        .map_max_entries(map_names::RINGS, sizes.max_rings * sizes.ring_stride)
        .map_max_entries(map_names::BACKENDS, sizes.max_backends)
        .map_max_entries(map_names::BACKEND_STATS, sizes.max_backends)
        .load(object)
        .map_err(|e| DatapathError::Load(Box::new(e)))?;
    for name in PROGRAMS {
        let prog: &mut Xdp = program(&mut ebpf, name)?;
        prog.load().map_err(|source| DatapathError::Verify { name, source: Box::new(source) })?;
    }
    Ok(Datapath { ebpf, sizes })
}

impl Datapath {
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

pub fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DatapathError> {
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(DatapathError::NoProgram(name))
}
