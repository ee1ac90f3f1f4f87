//! `GET /api/status`: what the status page shows besides its charts. The host and the backends
//! are the control API's own views ([`api::status_of`], [`api::backend_views`]), so the page and
//! `lbctl` never disagree; the rates are the last second's sample.
use std::net::IpAddr;

use serde::Serialize;

use super::samples::{Key, Rates, Samples};
use crate::{
    agent::{Agent, AgentError},
    api::{self, BackendView},
    config::{AllDown, ForwardMode, OnDown, Protocol, Scheduler},
    health::CheckSettings,
};

#[derive(Serialize)]
pub struct PageStatus {
    pub host: Host,
    /// Whether the page offers actions (`web_admin_token` is set); they need the token.
    pub admin: bool,
    pub vips: Vec<VipView>,
    /// Packets dropped per second, by reason, over the last second.
    pub drops: Vec<DropRate>,
}

#[derive(Serialize)]
pub struct Host {
    pub hostname: String,
    /// As `GET /v1/status` (`lbctl status`) gives it.
    #[serde(flatten)]
    pub agent: api::Status,
}

#[derive(Serialize)]
pub struct VipView {
    pub name: String,
    /// `198.18.100.1:80/tcp`
    pub service: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: ForwardMode,
    pub scheduler: Scheduler,
    pub ring_size: u32,
    pub all_down: AllDown,
    pub on_down: OnDown,
    /// Its backends' health check (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<CheckSettings>,
    /// Over the last second; absent until lbd has two readings of the counters.
    pub rates: Option<Rates>,
    pub backends: Vec<BackendPageView>,
}

#[derive(Serialize)]
pub struct BackendPageView {
    #[serde(flatten)]
    pub view: BackendView,
    pub rates: Option<Rates>,
    /// Its part of the VIP's packets over the last second (0 to 1); absent without traffic.
    pub share: Option<f64>,
}

#[derive(Serialize)]
pub struct DropRate {
    pub reason: &'static str,
    pub pps: f64,
}

impl PageStatus {
    pub fn read(agent: &Agent, samples: &Samples) -> Result<PageStatus, AgentError> {
        let mut vips = Vec::new();
        for v in &agent.config.vips {
            let mut backends: Vec<BackendPageView> = api::backend_views(agent, &v.name)?
                .into_iter()
                .map(|view| {
                    let key = Key::Backend(v.name.clone(), view.backend.address.to_string());
                    BackendPageView { rates: samples.latest(&key), view, share: None }
                })
                .collect();
            let total: f64 = backends.iter().filter_map(|b| b.rates).map(|r| r.pps).sum();
            if total > 0.0 {
                for b in &mut backends {
                    b.share = b.rates.map(|r| r.pps / total);
                }
            }
            vips.push(VipView {
                name: v.name.clone(),
                service: v.service(),
                address: v.address,
                port: v.port,
                protocol: v.protocol,
                mode: v.mode,
                scheduler: v.scheduler,
                ring_size: v.ring_size,
                all_down: v.all_down,
                on_down: v.on_down,
                health: v.health.clone(),
                rates: samples.latest(&Key::Vip(v.name.clone())),
                backends,
            });
        }
        let drops =
            samples.latest_drops().into_iter().map(|(reason, r)| DropRate { reason, pps: r.pps }).collect();
        Ok(PageStatus {
            host: Host { hostname: hostname(), agent: api::status_of(agent) },
            admin: agent.config.web_admin_token.is_some(),
            vips,
            drops,
        })
    }
}

/// The host's name (the UTS namespace's, which network namespaces do not change).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}
