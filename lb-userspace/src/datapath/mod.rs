//! The only module that touches aya: the embedded object, loading, attaching, maps.
mod loader;
mod maps;

pub use loader::{
    load, load_pinned, load_with, object, program, Datapath, DatapathError, Mode, Sizes, BALANCER, DECAP,
};
pub use maps::{open_connections, FlowTable, FlowWalk};
