//! The only module that touches aya: the embedded object, loading, attaching, maps.
mod decap;
mod loader;
mod maps;

pub use decap::{read_pinned_decap, DecapView, DECAP_COUNTERS};
pub use loader::load_object_with;
pub use loader::{
    load, load_decap_pinned, load_pinned, load_with, object, program, Datapath, DatapathError, Mode, Sizes,
    BALANCER, DECAP,
};
pub use maps::{open_connections, FlowTable, FlowWalk};
