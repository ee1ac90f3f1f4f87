//! The only module that touches aya: the embedded object, loading, attaching, maps.
mod loader;
mod maps;

pub use loader::{attach, load, object, program, Datapath, DatapathError, Mode, BALANCER};
