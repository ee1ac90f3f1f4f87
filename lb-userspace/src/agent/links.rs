//! The balancer's links while lbd runs. An interface deleted under lbd (a driver reload, a bond
//! or VLAN made again) leaves its pinned link dead: the kernel detached it and nothing is
//! balanced there. lbd says so, but does not attach anew at run time: the interface made again
//! has another index, which the TX ports, the next hops' interfaces and its forwarding sysctls
//! would all have to follow. A restart does all of that (`start.rs`).
use std::collections::BTreeMap;

use tracing::{error, info};

use super::Agent;
use crate::datapath::LinkState;

/// What each interface's link drove at the last check, where it was not what `xdp_mode` asks.
pub type LinkProblems = BTreeMap<String, LinkState>;

impl Agent {
    /// Checks that the balancer is attached to every interface in the mode configured; logs an
    /// error when it finds one where it is not, and when that ends (lbd calls it every few
    /// seconds). While one is not attached at all, the host announces no VIP
    /// ([`Self::follow_host`], after this).
    pub fn check_links(&mut self) {
        let wanted = LinkState::Attached(self.config.xdp_mode.into());
        for interface in &self.config.interfaces {
            let state = match self.datapath.link_state(interface) {
                Ok(state) => state,
                Err(e) => {
                    error!(interface, "cannot tell whether the balancer is attached: {e}");
                    continue;
                }
            };
            let before = self.link_problems.get(interface).copied().unwrap_or(wanted);
            if state == before {
                continue;
            }
            if state == wanted {
                self.link_problems.remove(interface);
                info!(interface, mode = %state, "the balancer is attached again");
                continue;
            }
            self.link_problems.insert(interface.clone(), state);
            error!(
                interface,
                "the balancer is not attached: {state}; nothing is balanced on this interface. Once it is \
                 back, restart lbd (`systemctl restart lbd`): it attaches anew"
            );
        }
    }

    /// Whether the balancer is missing from an interface (one attached in another mode still
    /// balances).
    pub fn unattached(&self) -> bool {
        self.link_problems.values().any(|s| !matches!(s, LinkState::Attached(_)))
    }
}
