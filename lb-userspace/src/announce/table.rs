//! The VIP table: the kernel routing table whose routes BIRD learns and announces. lbd owns the
//! routes of that table marked with its protocol, and nothing else in it. Every change is one
//! route, one netlink message (`RTM_NEWROUTE` with `NLM_F_EXCL`, `RTM_DELROUTE`): the table
//! is never flushed, so a restarted lbd that wants what is there changes nothing, and BIRD
//! withdraws nothing; a route of another protocol to a VIP address stays, reported.
use std::collections::BTreeSet;

use crate::host::{
    netlink::{self, route::TableRoute, Netlink},
    HostError,
};

pub struct VipTable {
    netlink: Netlink,
    table: u32,
    protocol: u8,
    /// `lo`: the routes' interface (any would do: no rule points at the table).
    lo: u32,
}

/// What one [`VipTable::sync`] did.
#[derive(Debug, Default)]
pub struct Synced {
    /// The routes the table holds now.
    pub held: BTreeSet<TableRoute>,
    pub added: Vec<TableRoute>,
    pub removed: Vec<TableRoute>,
    /// Routes that could not be added or removed, with the kernel's answer.
    pub failed: Vec<(TableRoute, String)>,
}

impl VipTable {
    /// For `table` and `protocol`, in the calling thread's network namespace.
    pub fn open(table: u32, protocol: u8) -> Result<VipTable, HostError> {
        let netlink = Netlink::open().map_err(HostError::NetlinkSocket)?;
        let lo = netlink::link::ifindex("lo").ok_or_else(|| HostError::NoInterface("lo".into()))?;
        Ok(VipTable { netlink, table, protocol, lo })
    }

    /// Makes the table hold exactly `want`: reads it, adds what is missing and deletes what is
    /// not wanted, route by route. A route that fails is reported in [`Synced::failed`] and the
    /// others go on; reading the table failing changes nothing.
    pub fn sync(&self, want: &BTreeSet<TableRoute>) -> Result<Synced, HostError> {
        let (table, protocol) = (self.table, self.protocol);
        let listed = self.netlink.table_routes(table, protocol).map_err(|source| HostError::Netlink {
            action: format!("listing the routes of table {table} with protocol {protocol}"),
            source,
        })?;
        let mut synced = Synced { held: listed.into_iter().collect(), ..Synced::default() };
        for &route in want.difference(&synced.held.clone()) {
            match self.netlink.add_table_route(table, protocol, route, self.lo) {
                Ok(()) => {
                    synced.held.insert(route);
                    synced.added.push(route);
                }
                Err(e) if netlink::errno(&e) == Some(libc::EEXIST) => synced.failed.push((
                    route,
                    format!(
                        "table {table} holds a route to it of another protocol, not lbd's to replace: remove it, or give [announce] a table of its own"
                    ),
                )),
                Err(e) => synced.failed.push((route, format!("adding it to table {table}: {e}"))),
            }
        }
        for route in synced.held.clone().difference(want) {
            match self.netlink.delete_table_route(table, protocol, *route) {
                // Gone already (someone else deleted it): as good.
                Err(e) if netlink::errno(&e) == Some(libc::ESRCH) => gone(&mut synced, *route),
                Ok(()) => gone(&mut synced, *route),
                Err(e) => synced.failed.push((*route, format!("deleting it from table {table}: {e}"))),
            }
        }
        Ok(synced)
    }
}

fn gone(synced: &mut Synced, route: TableRoute) {
    synced.held.remove(&route);
    synced.removed.push(route);
}
