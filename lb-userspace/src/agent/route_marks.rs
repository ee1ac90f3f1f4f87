//! The marks that make a route lbd's: the route protocol of its blackhole routes (main table)
//! and of its VIP-table routes, and the VIP table (with `[announce]`). lbd owns the routes that
//! carry them and no other, so a restart under other marks (`announce.protocol` or
//! `announce.table` changed, or `[announce]` taken out) would strand the routes the earlier lbd
//! left under its own: announced by BIRD with no lbd to withdraw them, and blackholes for
//! addresses no longer VIPs. The marks are saved with the state; at start, the routes under
//! earlier marks are removed before anything is written under the new ones (which an old route
//! for the same prefix would block). A planned stop withdraws every VIP first, so this matters
//! after a crash or a SIGKILL restart (docs/ecmp-bird.md).
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    announce::table::VipTable,
    config::{Config, DEFAULT_ANNOUNCE_PROTOCOL},
    host::vip_routes::{self, VipRoutes},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMarks {
    pub protocol: u8,
    /// The VIP table; `None` without `[announce]`.
    pub table: Option<u32>,
}

impl RouteMarks {
    /// The marks lbd uses under `config`.
    pub fn of(config: &Config) -> RouteMarks {
        match &config.announce {
            Some(a) => RouteMarks { protocol: a.protocol, table: Some(a.table) },
            None => RouteMarks { protocol: DEFAULT_ANNOUNCE_PROTOCOL, table: None },
        }
    }

    /// Removes the routes an earlier lbd left under marks `old` that the marks `self` no longer
    /// cover, and logs each. Never fails: a route that stays is logged with the command that
    /// removes it (forwarding matters more than a stale route).
    pub fn retire(self, old: RouteMarks) {
        if old.protocol != self.protocol {
            let cleared = VipRoutes::new(old.protocol).and_then(|mut r| r.clear());
            match cleared {
                Ok(changes) => {
                    for change in changes {
                        match change {
                            vip_routes::Change::Removed(route) => info!(
                                %route, old_protocol = old.protocol,
                                "removed a blackhole route an earlier lbd made under its route protocol"
                            ),
                            _ => warn!(%change, old_protocol = old.protocol, "route protocol changed"),
                        }
                    }
                }
                Err(e) => warn!(
                    "the route protocol changed from {} to {}, and the blackhole routes lbd made under {0} stay ({e}): \
                     `ip route flush proto {0} type blackhole` removes them",
                    old.protocol, self.protocol
                ),
            }
        }
        let Some(table) = old.table else { return };
        if Some(table) == self.table && old.protocol == self.protocol {
            return;
        }
        let synced = VipTable::open(table, old.protocol).and_then(|t| t.sync(&Default::default()));
        let flush = format!("`ip route flush table {table} proto {}` (and `ip -6 ...`)", old.protocol);
        match synced {
            Ok(s) => {
                for route in &s.removed {
                    info!(
                        %route, table, protocol = old.protocol,
                        "withdrawn: a VIP route left under the announce settings of an earlier lbd"
                    );
                }
                for (route, error) in &s.failed {
                    warn!(%route, "a VIP route left by an earlier lbd stays ({error}): {flush} removes it");
                }
            }
            Err(e) => warn!(
                "the VIP routes an earlier lbd left in table {table} with protocol {} stay ({e}): {flush} removes them",
                old.protocol
            ),
        }
    }
}
