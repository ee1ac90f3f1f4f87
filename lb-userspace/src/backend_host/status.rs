//! `lbd backend-host --status`: what a running (or crashed) backend host has in place, read
//! from its pins and the kernel, not from the process.
use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr, path::PathBuf};

use serde::Serialize;

use super::{
    config::Config,
    setup::{link_pins, pin_dir},
    BackendHostError,
};
use crate::{
    datapath::{self, DecapView},
    host::{
        netlink::{link, Netlink},
        HostError,
    },
};

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub decap: bool,
    /// Where the decap maps and links are pinned (with decap on).
    pub pin_dir: Option<PathBuf>,
    pub interfaces: Vec<InterfaceStatus>,
    pub vips: Vec<VipStatus>,
    /// Outer destinations the decap program strips tunnels for.
    pub decap_addresses: Vec<IpAddr>,
    /// Outer sources it accepts tunnels from (`ADDRESS/LENGTH`); `None`: any.
    pub allowed_sources: Option<Vec<String>>,
    /// `decapsulated`, `decap_refused`, `decap_fragment`, `decap_ce_not_ect`.
    pub counters: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InterfaceStatus {
    pub name: String,
    /// A pinned decap link for it is in place.
    pub decap_attached: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct VipStatus {
    pub address: IpAddr,
    pub on_lo: bool,
}

/// Reads the status of the backend host `config` describes (in the calling thread's network
/// namespace).
pub fn read(config: &Config, config_file: &std::path::Path) -> Result<Status, BackendHostError> {
    let dir = pin_dir(config);
    let view = if config.decap {
        Some(datapath::read_pinned_decap(&dir).map_err(|source| BackendHostError::NotRunning {
            dir: dir.clone(),
            config: config_file.to_owned(),
            source: Box::new(source),
        })?)
    } else {
        None
    };
    let linked = link_pins(&dir);
    let netlink = Netlink::open().map_err(HostError::NetlinkSocket)?;
    let lo = link::ifindex("lo").ok_or_else(|| HostError::NoInterface("lo".into()))?;
    let on_lo: Vec<IpAddr> = netlink
        .interface_addresses(lo)
        .map_err(|source| HostError::Netlink { action: "listing the addresses of lo".into(), source })?
        .into_iter()
        .map(|a| a.address)
        .collect();
    let DecapView { counters, addresses, sources } =
        view.unwrap_or(DecapView { counters: Vec::new(), addresses: Vec::new(), sources: None });
    Ok(Status {
        decap: config.decap,
        pin_dir: config.decap.then_some(dir),
        interfaces: config
            .interfaces
            .iter()
            .map(|name| InterfaceStatus { name: name.clone(), decap_attached: linked.contains(name) })
            .collect(),
        vips: config
            .vips
            .iter()
            .map(|&address| VipStatus { address, on_lo: on_lo.contains(&address) })
            .collect(),
        decap_addresses: addresses,
        allowed_sources: sources.map(|s| s.iter().map(|(a, l)| format!("{a}/{l}")).collect()),
        counters: counters.into_iter().map(|(c, n)| (c.name(), n)).collect(),
    })
}

impl Status {
    /// For people: the interfaces, VIPs, decap settings and counters.
    pub fn text(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let mut out = String::new();
        match &self.pin_dir {
            Some(dir) => writeln!(out, "decap: on, pinned under {}", dir.display()),
            None => writeln!(out, "decap: off (L2 DSR: VIPs on lo and ARP settings only)"),
        }
        .unwrap();
        let width = self.interfaces.iter().map(|i| i.name.len()).max().unwrap_or(0).max("INTERFACE".len());
        writeln!(out, "\n{:<width$}  DECAP ATTACHED", "INTERFACE").unwrap();
        for i in &self.interfaces {
            let attached = if self.decap { yes_no(i.decap_attached) } else { "-" };
            writeln!(out, "{:<width$}  {attached}", i.name).unwrap();
        }
        let width = self.vips.iter().map(|v| v.address.to_string().len()).max().unwrap_or(0).max("VIP".len());
        writeln!(out, "\n{:<width$}  ON LO", "VIP").unwrap();
        for v in &self.vips {
            writeln!(out, "{:<width$}  {}", v.address.to_string(), yes_no(v.on_lo)).unwrap();
        }
        if self.decap {
            let addresses: Vec<String> = self.decap_addresses.iter().map(|a| a.to_string()).collect();
            writeln!(out, "\ndecap addresses: {}", addresses.join(", ")).unwrap();
            let sources = self.allowed_sources.as_ref().map_or("any".to_owned(), |s| s.join(", "));
            writeln!(out, "allowed sources: {sources}").unwrap();
            writeln!(out, "\n{:<16}  TOTAL", "COUNTER").unwrap();
            for (name, n) in &self.counters {
                writeln!(out, "{name:<16}  {n}").unwrap();
            }
        }
        out
    }
}
