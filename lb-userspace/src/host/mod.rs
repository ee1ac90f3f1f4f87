//! What a balancer host and a backend host need from the kernel beyond the XDP programs, owned
//! by our code instead of set by hand:
//!
//! - [`forwarding`]: `bpf_fib_lookup` answers only on interfaces with forwarding on.
//! - [`neighbours`]: it answers only when the next hop has a resolved neighbour entry;
//!   [`neighbours::NextHops`] keeps managed entries for the backends' next hops.
//! - [`vip_routes`]: packets to a VIP address that the balancer passes to the kernel must end on
//!   this host, not be forwarded back to the router that sent them.
//! - [`bpffs`]: pins need a bpffs, and one that outlives the process.
//! - [`netlink`], [`sysctl`]: the kernel interfaces those use.
//!
//! Everything here acts in the network namespace of the calling thread.
pub mod bpffs;
mod error;
pub mod forwarding;
pub mod neighbours;
pub mod netlink;
pub mod sysctl;
pub mod vip_routes;

use std::net::IpAddr;

pub use error::HostError;
use serde::{Deserialize, Serialize};

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(address: IpAddr) -> Family {
        match address {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// The family's name in sysctl keys: `ipv4`, `ipv6`.
    pub fn sysctl_name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}
