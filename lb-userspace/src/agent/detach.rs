//! `lbd detach`: removes what an lbd that no longer runs left on the host. A stop keeps it all
//! (`--on-exit keep`: forwarding goes on for the next lbd to adopt); this takes a host out of
//! service for good, or cleans up before the package goes: the balancer's links (which detaches
//! it) and pins, the saved state, the managed neighbour entries, the VIP addresses' blackhole
//! routes and the VIP routes it announced (under the config's marks and those the saved state
//! recorded). Each removal is logged; what stays is an error that says how to remove it.
use std::{collections::BTreeSet, path::Path};

use tracing::{info, warn};

use super::{pin_lock::PinLock, route_marks::RouteMarks, SavedState};
use crate::{
    announce::table::VipTable,
    config,
    datapath::old_layouts,
    host::{neighbours, vip_routes},
};

pub fn detach(config_file: &Path) -> anyhow::Result<()> {
    let config = config::load(config_file)?;
    let mut stays: Vec<String> = Vec::new();
    let pinned = config.pin_path.exists();
    if !pinned && !config.state_file.exists() {
        // Neither pins nor a saved state: no lbd ran here since the last boot, which took the
        // routes and neighbour entries with it (and no pin directory is made).
        info!("nothing to detach: no pins at {} and no saved state", config.pin_path.display());
        return Ok(());
    }
    // A running lbd holds it: its stop (or --on-exit detach) is the way then.
    let _lock = pinned.then(|| PinLock::acquire(&config.pin_path)).transpose()?;
    if pinned {
        let balancer = |d: &Path| d.join(lb_common::map_names::VIPS).exists();
        match old_layouts::retire_every(&config.pin_path, balancer) {
            Ok(retired) => {
                for r in retired {
                    info!(pins = %r.dir.display(), links = ?r.links, "balancer detached, pins removed");
                }
            }
            Err(e) => stays.push(format!("pins under {}: {e}", config.pin_path.display())),
        }
    }

    let saved = SavedState::read(&config.state_file).unwrap_or_else(|e| {
        warn!("the saved state cannot be read ({e}): routes under its marks are not looked for");
        None
    });
    let mut marks = vec![RouteMarks::of(&config)];
    marks.extend(saved.and_then(|s| s.route_marks).filter(|m| *m != marks[0]));
    for m in &marks {
        match vip_routes::VipRoutes::new(m.protocol).and_then(|mut r| r.clear()) {
            Ok(changes) => changes.iter().for_each(|c| report_route(c, &mut stays)),
            Err(e) => stays.push(format!("blackhole routes of protocol {}: {e}", m.protocol)),
        }
        let Some(table) = m.table else { continue };
        match VipTable::open(table, m.protocol).and_then(|t| t.sync(&BTreeSet::new())) {
            Ok(synced) => {
                synced.removed.iter().for_each(|r| info!(route = %r, table, "VIP route withdrawn"));
                for (route, error) in synced.failed {
                    stays.push(format!("VIP route {route} in table {table}: {error}"));
                }
            }
            Err(e) => stays.push(format!("VIP routes in table {table} (protocol {}): {e}", m.protocol)),
        }
    }

    // Every entry marked lbd's, on any interface (one no longer configured, or gone, too).
    match neighbours::NextHops::new(&[]) {
        Ok(mut hops) => {
            for change in hops.clear() {
                match change {
                    neighbours::Change::Removed(e) => info!(entry = %e, "managed neighbour entry removed"),
                    other => stays.push(other.to_string()),
                }
            }
        }
        Err(e) => stays.push(format!("managed neighbour entries (`ip neigh show proto 76`): {e}")),
    }

    match std::fs::remove_file(&config.state_file) {
        Ok(()) => info!(file = %config.state_file.display(), "saved state removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => stays.push(format!("saved state {}: {e}", config.state_file.display())),
    }
    if pinned {
        // Last, the lock's directory (empty now, unless it holds others' pins, a backend
        // host's: then it stays): an lbd started meanwhile found it locked.
        let _ = std::fs::remove_dir(&config.pin_path);
    }
    if !stays.is_empty() {
        anyhow::bail!("detached, but these stay:\n  {}", stays.join("\n  "));
    }
    info!("detached: nothing of lbd's is left on this host");
    Ok(())
}

fn report_route(change: &vip_routes::Change, stays: &mut Vec<String>) {
    match change {
        vip_routes::Change::Removed(r) => info!(route = %r, "blackhole route of a VIP address removed"),
        other => stays.push(other.to_string()),
    }
}
