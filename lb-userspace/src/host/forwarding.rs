//! IP forwarding on the interfaces the balancer is attached to.
//!
//! `bpf_fib_lookup` finds no next hop (BPF_FIB_LKUP_RET_FWD_DISABLED: the packet passes to the
//! stack, counted `pass_fwd_disabled`) unless forwarding is on for the interface the packet came
//! in on: `net.ipv4.conf.<if>.forwarding`, `net.ipv6.conf.<if>.forwarding`. Only those
//! per-interface switches are touched, never `all` or `default`.
//!
//! What turning them on also does, which is why [`Policy::Check`] exists:
//! - IPv4: the kernel itself routes packets that arrive on the interface for other hosts
//!   (including what the balancer passes to the stack).
//! - IPv6: the interface acts as a router: it ignores router advertisements unless its
//!   `accept_ra` is 2, so a default route or address learned from them (SLAAC) is not renewed
//!   and lapses; and its neighbour advertisements carry the router flag. (The kernel forwards
//!   IPv6 only with `net.ipv6.conf.all.forwarding` on, which stays as it is.)
use std::{collections::BTreeSet, fmt};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{netlink::link, sysctl::Sysctl, Family, HostError};

/// What to do about forwarding that is off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Turn it on.
    #[default]
    Enable,
    /// Change nothing; an error names every sysctl to set.
    Check,
}

/// A sysctl that was changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub sysctl: Sysctl,
    pub from: String,
    pub to: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.sysctl, self.from, self.to)
    }
}

/// Makes sure forwarding is on for every family in `families` on every interface in
/// `interfaces`. `Enable` turns on what is off and returns what it changed (log a line for
/// each); `Check` returns [`HostError::ForwardingOff`] naming every sysctl to set, or nothing.
pub fn ensure(
    interfaces: &[String],
    families: &BTreeSet<Family>,
    policy: Policy,
) -> Result<Vec<Change>, HostError> {
    let mut off = Vec::new();
    for interface in interfaces {
        if link::ifindex(interface).is_none() {
            return Err(HostError::NoInterface(interface.clone()));
        }
        for &family in families {
            let sysctl = Sysctl::interface(family, interface, "forwarding");
            let value = sysctl.read()?;
            if value != "1" {
                off.push((sysctl, value, family, interface));
            }
        }
    }
    if policy == Policy::Check {
        if off.is_empty() {
            return Ok(Vec::new());
        }
        return Err(HostError::ForwardingOff {
            commands: off.iter().map(|(s, ..)| s.command("1")).collect(),
        });
    }
    let mut changes = Vec::new();
    for (sysctl, from, family, interface) in off {
        sysctl.write("1")?;
        if family == Family::Ipv6 {
            warn_if_accepting_ra(interface);
        }
        changes.push(Change { sysctl, from, to: "1".into() });
    }
    Ok(changes)
}

/// With forwarding on, an interface whose accept_ra is 1 stops taking router advertisements.
fn warn_if_accepting_ra(interface: &str) {
    let accept_ra = Sysctl::interface(Family::Ipv6, interface, "accept_ra");
    if accept_ra.read().is_ok_and(|v| v == "1") {
        warn!(
            interface,
            "IPv6 forwarding is now on for {interface}, which took router advertisements (accept_ra = 1): it \
             ignores them from now on, so a default route or address learned from them will lapse; if this \
             host relies on them, run `{}`",
            accept_ra.command("2")
        );
    }
}
