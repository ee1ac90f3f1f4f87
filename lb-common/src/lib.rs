//! Everything both sides of the balancer must agree on, defined once.
//!
//! Map values carry no `bool`, `Option` or enum: plain integers with explicit padding and a size
//! assertion per type, so the kernel and user-space layouts cannot drift apart.
#![no_std]

mod counters;
mod vip;

pub use counters::Counter;
pub use vip::{VipKey, VipValue, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

/// Names of the maps in the eBPF object. User space looks maps up by these names.
pub mod map_names {
    pub const VIPS: &str = "VIPS";
    pub const STATS: &str = "STATS";
}

/// Default map sizes. The agent may override them at load time.
pub mod limits {
    /// Virtual services (address, port, protocol) the VIP map holds.
    pub const MAX_VIPS: u32 = 1024;
}
