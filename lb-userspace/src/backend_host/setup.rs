//! Setting a backend host up, and undoing it: the decap program (pinned), the VIPs on `lo`, the
//! ARP sysctls. Every change is logged and recorded (see [`Record`]) before it is made.
use std::{
    collections::BTreeSet,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use tracing::{error, info, warn};

use super::{config::Config, record::Record, BackendHostError};
use crate::{
    datapath::{self, Attached, Datapath, LinkState, DECAP},
    host::{
        self,
        netlink::{link, Netlink},
        sysctl::Sysctl,
        Family, HostError,
    },
};

/// Pins live in a versioned directory under `pin_path`, as the balancer's do. Move it on (v4 ->
/// v5) whenever a map of [`PINNED_LAYOUTS`] changes (v4: STATS has room for 64 counters, and a
/// new counter no longer changes it; v3: `decap_ce_not_ect`; v2: the flow table's counters of
/// 2026-12-07; v1 pins held fewer).
pub const PIN_LAYOUT: &str = "v4";

/// The maps a backend host pins, for layout [`PIN_LAYOUT`]: (name, key size, value size), as
/// the object defines them (a test compares).
pub const PINNED_LAYOUTS: &[(&str, u32, u32)] = &[
    (lb_common::map_names::DECAP_ADDRS, 16, 1),
    (lb_common::map_names::DECAP_CONFIG, 4, 4),
    (lb_common::map_names::DECAP_SOURCES, 24, 1),
    (lb_common::map_names::STATS, 4, 8 * lb_common::CounterBlock::SLOTS as u32),
];

/// ARP settings for the interfaces: answer ARP only for addresses of the interface asked on
/// (`arp_ignore` 1: not for the VIPs on lo, which the balancer owns on the segment), and never
/// announce a VIP as the source of ARP requests (`arp_announce` 2). Stricter values are kept.
const ARP: [(&str, u32); 2] = [("arp_ignore", 1), ("arp_announce", 2)];

pub fn pin_dir(config: &Config) -> PathBuf {
    config.pin_path.join(PIN_LAYOUT)
}

/// A backend host set up by this process.
pub struct BackendHost {
    config: Config,
    netlink: Netlink,
    lo: u32,
    record: Record,
    /// The decap program and its maps, when `decap` is on.
    datapath: Option<Datapath>,
    /// What DECAP_ADDRS holds.
    decap_addresses: BTreeSet<IpAddr>,
}

/// A backend host's pin directory: the decap's maps, none of the balancer's.
fn backend_pins(dir: &Path) -> bool {
    use lb_common::map_names::{DECAP_ADDRS, VIPS};
    dir.join(DECAP_ADDRS).exists() && !dir.join(VIPS).exists()
}

/// `--undo`: undoes what an earlier run left (one killed or crashed; a stop undoes it itself)
/// without setting anything up: its decap detached and its pins removed (every layout's), the
/// VIPs it bound taken off `lo`, the sysctls it changed restored to the values it recorded,
/// its record removed.
pub fn undo(config: Config) -> Result<(), BackendHostError> {
    let record = Record::read(&config.state_file)?;
    let retired = datapath::old_layouts::retire_every(&config.pin_path, backend_pins)
        .map_err(|source| BackendHostError::OldLayout { path: config.pin_path.clone(), source })?;
    for r in &retired {
        info!(pins = %r.dir.display(), links = ?r.links, "decap detached and its pins removed");
    }
    // Empty now, unless it holds others' pins (a balancer's): then it stays.
    let _ = std::fs::remove_dir(&config.pin_path);
    let Some(record) = record else {
        info!(state_file = %config.state_file.display(), "no record of VIPs bound or sysctls changed: nothing more to undo");
        return Ok(());
    };
    let lo = link::ifindex("lo").ok_or_else(|| HostError::NoInterface("lo".into()))?;
    let netlink = Netlink::open().map_err(HostError::NetlinkSocket)?;
    let host = BackendHost { config, netlink, lo, record, datapath: None, decap_addresses: BTreeSet::new() };
    host.stop()?;
    info!("undone: the VIPs this backend host bound are off lo, the sysctls it changed restored");
    Ok(())
}

impl BackendHost {
    /// Sets the host up as `config` says. If that fails half way, what was done is undone.
    pub fn start(config: Config) -> Result<BackendHost, BackendHostError> {
        let record = Record::read(&config.state_file)?;
        if record.is_some() {
            warn!(
                state_file = %config.state_file.display(),
                "a previous backend-host did not stop cleanly: taking over what it changed (and the original values it recorded)"
            );
        }
        for name in &config.interfaces {
            link::ifindex(name).ok_or_else(|| HostError::NoInterface(name.clone()))?;
        }
        let lo = link::ifindex("lo").ok_or_else(|| HostError::NoInterface("lo".into()))?;
        let netlink = Netlink::open().map_err(HostError::NetlinkSocket)?;
        let mut host = BackendHost {
            config,
            netlink,
            lo,
            record: record.unwrap_or_default(),
            datapath: None,
            decap_addresses: BTreeSet::new(),
        };
        if let Err(e) = host.set_up() {
            if let Err(undo) = host.stop() {
                warn!("undoing a failed start: {undo}");
            }
            return Err(e);
        }
        Ok(host)
    }

    fn set_up(&mut self) -> Result<(), BackendHostError> {
        self.undo_what_the_config_no_longer_asks_for()?;
        if self.config.decap {
            self.attach_decap()?;
        } else {
            remove_pins(&pin_dir(&self.config));
        }
        // No moment with a VIP on lo while the interfaces still answer ARP for it (a router
        // that learnt the backend's MAC for the VIP would bypass the balancer).
        self.set_arp_sysctls()?;
        self.bind_vips()
    }

    /// Record entries of a previous run that the config no longer wants: undone now.
    fn undo_what_the_config_no_longer_asks_for(&mut self) -> Result<(), BackendHostError> {
        let vips: Vec<IpAddr> =
            self.record.vips.iter().filter(|v| !self.config.vips.contains(v)).copied().collect();
        for vip in vips {
            self.unbind_vip(vip)?;
        }
        let wanted = wanted_sysctls(&self.config);
        let stale: Vec<Sysctl> =
            self.record.sysctls.keys().filter(|s| !wanted.contains(s)).cloned().collect();
        for sysctl in stale {
            self.restore_sysctl(&sysctl)?;
        }
        Ok(())
    }

    fn attach_decap(&mut self) -> Result<(), BackendHostError> {
        // Logs what it mounts, and its warning if the pins would not outlive this process.
        host::bpffs::ensure(&self.config.pin_path)?;
        let dir = pin_dir(&self.config);
        // Held by `self` from here: a start that fails below is undone by `stop`, links and all.
        let dp = self.datapath.insert(datapath::load_decap_pinned(&dir)?);
        // An earlier release's decap goes only now that this one's is loaded: a release that
        // cannot load leaves it decapsulating, as a crash would. A backend host's pins: the
        // decap's maps, none of the balancer's.
        let old = datapath::old_layouts::retire(&self.config.pin_path, PIN_LAYOUT, backend_pins)
            .map_err(|source| BackendHostError::OldLayout { path: self.config.pin_path.clone(), source })?;
        for o in &old {
            warn!(pins = %o.dir.display(), links = ?o.links, "pins of an earlier release's map layout, which this one cannot adopt: links detached, pins removed");
        }
        dp.set_decap_sources(&self.config.allowed_sources)?;
        match self.config.allowed_sources.is_empty() {
            true => info!("accepting tunnels from any outer source"),
            false => {
                info!(sources = %prefixes(&self.config.allowed_sources), "accepting tunnels only from these outer sources")
            }
        }
        let addresses = self.wanted_decap_addresses()?;
        let dp = self.datapath.as_mut().expect("loaded above");
        dp.set_decap_addrs(&addresses)?;
        info!(addresses = %list(&addresses), "stripping tunnels addressed to these");
        self.decap_addresses = addresses;
        let dp = self.datapath.as_mut().expect("loaded above");
        for stale in link_pins(&dir).into_iter().filter(|i| !self.config.interfaces.contains(i)) {
            dp.unpin_link(&stale)?;
            info!(interface = stale, "decap detached from an interface no longer configured");
        }
        let wanted = self.config.xdp_mode.into();
        for interface in &self.config.interfaces {
            let how = dp.attach_pinned_program(DECAP, interface, wanted)?;
            // The mode the kernel reports, not the one asked for.
            let mode = dp.link_state(interface)?;
            let pins = dir.display();
            match how {
                Attached::New => info!(interface, %mode, %pins, "decap attached (link pinned)"),
                Attached::Adopted => {
                    info!(interface, %mode, %pins, "decap attached (its pinned link adopted)")
                }
                Attached::Replaced(LinkState::Attached(before)) => warn!(
                    interface,
                    %mode,
                    "xdp_mode changed from {before} to {wanted}: decap re-attached, paused for the moment it took"
                ),
                Attached::Replaced(why) => {
                    warn!(interface, %mode, "{why}; decap is re-attached through a new pinned link")
                }
                Attached::KeptMode { kept, refused } => error!(
                    interface,
                    %mode,
                    "xdp_mode {wanted} refused ({refused}): decap is attached in {kept} mode again, as it was; \
                     set xdp_mode = \"{kept}\" or use a driver that takes the mode asked for"
                ),
            }
        }
        Ok(())
    }

    /// The configured decap addresses, or else the interfaces' addresses (IPv6 link-local ones
    /// left out: no tunnel is addressed to them).
    fn wanted_decap_addresses(&self) -> Result<BTreeSet<IpAddr>, BackendHostError> {
        if let Some(configured) = &self.config.decap_addresses {
            return Ok(configured.clone());
        }
        let indexes: BTreeSet<u32> = self.config.interfaces.iter().filter_map(|i| link::ifindex(i)).collect();
        let all = self.netlink.addresses().map_err(netlink_error("listing the interfaces' addresses"))?;
        Ok(all
            .into_iter()
            .filter(|a| indexes.contains(&a.ifindex))
            .map(|a| a.address)
            .filter(|a| !matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local()))
            .collect())
    }

    /// With decap addresses taken from the interfaces: follows their addresses as they change.
    pub fn follow_interface_addresses(&mut self) -> Result<(), BackendHostError> {
        if self.config.decap_addresses.is_some() || self.datapath.is_none() {
            return Ok(());
        }
        let addresses = self.wanted_decap_addresses()?;
        if addresses != self.decap_addresses {
            if let Some(dp) = self.datapath.as_mut() {
                dp.set_decap_addrs(&addresses)?;
            }
            info!(addresses = %list(&addresses), "the interfaces' addresses changed: stripping tunnels addressed to these now");
            self.decap_addresses = addresses;
        }
        Ok(())
    }

    fn bind_vips(&mut self) -> Result<(), BackendHostError> {
        let on_lo: BTreeSet<IpAddr> = self
            .netlink
            .interface_addresses(self.lo)
            .map_err(netlink_error("listing the addresses of lo"))?
            .into_iter()
            .map(|a| a.address)
            .collect();
        for &vip in &self.config.vips {
            let ours = self.record.vips.contains(&vip);
            if on_lo.contains(&vip) {
                if !ours {
                    info!(%vip, "VIP already on lo: left as it is, and left there on stop");
                }
                continue;
            }
            self.record.vips.insert(vip);
            self.record.write(&self.config.state_file)?;
            match self.netlink.add_address(self.lo, vip, full_prefix(vip)) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(netlink_error(&format!("binding VIP {vip} to lo"))(e));
                }
                _ => info!("bound VIP {vip}/{} to lo", full_prefix(vip)),
            }
        }
        Ok(())
    }

    fn set_arp_sysctls(&mut self) -> Result<(), BackendHostError> {
        // A port of a bridge or bond takes no part in ARP: its master answers.
        for interface in &self.config.interfaces {
            let master = link::ifindex(interface).and_then(|i| self.netlink.master(i).ok().flatten());
            if let Some(master) = master.and_then(link::ifname) {
                warn!(
                    interface,
                    master,
                    "{interface} is a port of {master}, which answers ARP for the VIPs on lo: the ARP settings \
                     here do not reach it. Set net.ipv4.conf.{master}.arp_ignore=1 and arp_announce=2 (or, \
                     with decap = false, list {master} in interfaces)"
                );
            }
        }
        for (interface, leaf, want) in arp_settings(&self.config) {
            let sysctl = Sysctl::interface(Family::Ipv4, &interface, leaf);
            let current = sysctl.read()?;
            if current.parse::<u32>().is_ok_and(|v| v >= want) {
                continue;
            }
            if !self.record.sysctls.contains_key(&sysctl) {
                self.record.sysctls.insert(sysctl.clone(), current.clone());
                self.record.write(&self.config.state_file)?;
            }
            sysctl.write(&want.to_string())?;
            info!("{sysctl}: {current} -> {want} (no ARP answers or announcements for the VIPs on lo)");
        }
        Ok(())
    }

    fn unbind_vip(&mut self, vip: IpAddr) -> Result<(), BackendHostError> {
        match self.netlink.delete_address(self.lo, vip, full_prefix(vip)) {
            // Gone already (taken away by someone else): as good.
            Err(e) if !matches!(host::netlink::errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENOENT)) => {
                return Err(netlink_error(&format!("removing VIP {vip} from lo"))(e));
            }
            _ => info!("removed VIP {vip} from lo"),
        }
        self.record.vips.remove(&vip);
        self.record.write(&self.config.state_file)
    }

    fn restore_sysctl(&mut self, sysctl: &Sysctl) -> Result<(), BackendHostError> {
        let Some(original) = self.record.sysctls.get(sysctl).cloned() else { return Ok(()) };
        // Set since by someone else (an operator's stricter setting): theirs stays.
        let ours = ARP.iter().find(|(leaf, _)| *leaf == sysctl.leaf()).map(|(_, want)| want.to_string());
        let now = sysctl.read().ok();
        let restored = match now {
            Some(now) if Some(&now) != ours.as_ref() => {
                info!(
                    "{sysctl}: {now}, set since by someone else: left as it is (not restored to {original})"
                );
                Ok(())
            }
            _ => sysctl.write(&original),
        };
        match restored {
            Ok(()) => info!("{sysctl}: restored to {original}"),
            // The interface is gone, and its settings with it.
            Err(HostError::WriteSysctl { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.record.sysctls.remove(sysctl);
        self.record.write(&self.config.state_file)
    }

    /// Undoes everything: removes the VIPs it bound, then restores the sysctls (no moment with
    /// a VIP on lo and ARP answered for it), detaches decap and removes its pins, then the state
    /// file. Goes on past failures and reports them all.
    pub fn stop(mut self) -> Result<(), BackendHostError> {
        let mut failures = Vec::new();
        let vips: Vec<IpAddr> = self.record.vips.iter().copied().collect();
        for vip in vips {
            if let Err(e) = self.unbind_vip(vip) {
                failures.push(e.to_string());
            }
        }
        // A VIP that stays on lo keeps the ARP settings it needs.
        let sysctls: Vec<Sysctl> = if self.record.vips.is_empty() {
            self.record.sysctls.keys().cloned().collect()
        } else {
            Vec::new()
        };
        for sysctl in sysctls {
            if let Err(e) = self.restore_sysctl(&sysctl) {
                failures.push(e.to_string());
            }
        }
        if let Some(dp) = self.datapath.take() {
            let detached = self
                .config
                .interfaces
                .iter()
                .try_for_each(|i| dp.unpin_link(i))
                .and_then(|()| dp.unpin_maps());
            match detached {
                Ok(()) => {
                    info!(pins = %pin_dir(&self.config).display(), "decap detached and its pins removed")
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        if !failures.is_empty() {
            return Err(BackendHostError::Teardown(failures));
        }
        Record::remove(&self.config.state_file)
    }
}

/// (interface, sysctl, value) for every ARP setting this config asks for.
fn arp_settings(config: &Config) -> Vec<(String, &'static str, u32)> {
    config
        .interfaces
        .iter()
        .flat_map(|i| ARP.iter().map(move |&(leaf, want)| (i.clone(), leaf, want)))
        .collect()
}

fn wanted_sysctls(config: &Config) -> BTreeSet<Sysctl> {
    arp_settings(config).iter().map(|(i, leaf, _)| Sysctl::interface(Family::Ipv4, i, leaf)).collect()
}

/// The interfaces with a pinned link in `dir` (`link_<interface>`).
pub fn link_pins(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix("link_")).map(String::from))
        .collect()
}

/// Removes a decap setup's pins left by a run with `decap = true`: its program stops.
fn remove_pins(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let removed = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent); // the configured pin_path, if nothing else is there
    }
    match removed {
        Ok(()) => {
            info!(pins = %dir.display(), "decap = false: removed the decap pins a previous run left (decap detached)")
        }
        Err(e) => {
            warn!(pins = %dir.display(), "decap = false, but removing the decap pins a previous run left failed: {e}")
        }
    }
}

fn full_prefix(address: IpAddr) -> u8 {
    if address.is_ipv4() {
        32
    } else {
        128
    }
}

fn list(addresses: &BTreeSet<IpAddr>) -> String {
    addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
}

pub fn prefixes(prefixes: &BTreeSet<(IpAddr, u8)>) -> String {
    prefixes.iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>().join(", ")
}

fn netlink_error(action: &str) -> impl Fn(io::Error) -> BackendHostError + '_ {
    move |source| HostError::Netlink { action: action.to_owned(), source }.into()
}
