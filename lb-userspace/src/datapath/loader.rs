use aya::{
    programs::{xdp::XdpLinkId, ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use thiserror::Error;

/// Name of the balancer's XDP program in the object.
pub const BALANCER: &str = "balancer";

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
    #[error("the eBPF object has no map named {0:?}")]
    NoMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
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

/// The loaded programs and their maps.
pub struct Datapath {
    pub ebpf: Ebpf,
}

/// Loads the embedded object and has the kernel verify the balancer program.
pub fn load() -> Result<Datapath, DatapathError> {
    let object = object();
    if object.is_empty() {
        return Err(DatapathError::NoObject);
    }
    let mut ebpf = EbpfLoader::new().load(object).map_err(|e| DatapathError::Load(Box::new(e)))?;
    let prog: &mut Xdp = program(&mut ebpf, BALANCER)?;
    prog.load().map_err(|source| DatapathError::Verify { name: BALANCER, source: Box::new(source) })?;
    Ok(Datapath { ebpf })
}

/// Attaches the balancer to `interface` (in the calling thread's network namespace).
pub fn attach(dp: &mut Datapath, interface: &str, mode: Mode) -> Result<XdpLinkId, DatapathError> {
    let prog: &mut Xdp = program(&mut dp.ebpf, BALANCER)?;
    let flags = match mode {
        Mode::Native => XdpMode::Driver,
        Mode::Generic => XdpMode::Skb,
    };
    prog.attach(interface, flags).map_err(|source| DatapathError::Attach {
        name: BALANCER,
        interface: interface.to_owned(),
        mode,
        source: Box::new(source),
    })
}

pub fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DatapathError> {
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(DatapathError::NoProgram(name))
}
