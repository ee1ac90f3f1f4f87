//! The only module that touches aya: the embedded object, loading, attaching, typed map
//! handles, the capture buffers. The rest of lb-userspace reaches the data plane through it (a
//! unit test checks that no other module names aya).
mod decap;
mod flow_table;
mod loader;
mod maps;
pub mod object;
pub mod old_layouts;
mod perf;
mod policy;
mod xdp_link;

pub use decap::{read_pinned_decap, DecapView, DECAP_COUNTERS};
pub use flow_table::{flow_clock_now, Claim, FlowEntries, MappedFlowTable};
pub use loader::load_object_with;
pub use loader::{
    load, load_decap, load_decap_pinned, load_pinned, load_with, object, possible_cpus, program, Attached,
    Datapath, DatapathError, Mode, Sizes, BALANCER, DECAP,
};
pub use maps::{map_pinned_flow_table, open_connections, CensusWalk, FlowTable, FlowWalk};
pub use perf::CaptureBuffers;
pub use policy::{monotonic_ns, AclEntry, SourceSample, Sources};
pub use xdp_link::LinkState;
