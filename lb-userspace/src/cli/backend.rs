use clap::Subcommand;
use hyper::Method;

use super::{output::table, segment, Ctx, Failure};
use crate::{
    api::{BackendView, Weight},
    config::BackendSpec,
};

#[derive(Subcommand)]
pub enum BackendCommand {
    /// List a VIP's backends: weight, drained or not, open connections (CONNECTIONS: least-conn VIPs
    /// count them), health, and the next hop its packets leave by (interface, MAC, or why none).
    List { vip: String },
    /// Add a backend to a VIP.
    Add {
        vip: String,
        address: String,
        /// Relative share of new flows, 0 to 65535.
        #[arg(long, default_value_t = crate::config::DEFAULT_WEIGHT as i64)]
        weight: i64,
    },
    /// Remove a backend: no new flows; flows already pinned to it continue until they end (or go
    /// 15 minutes without a packet), unless a backend added later takes its id: drain it first
    /// and remove it once its connections are gone to be sure.
    Remove { vip: String, address: String },
    /// Stop sending new flows to a backend; its open connections continue. Only its share of
    /// the ring moves.
    Drain { vip: String, address: String },
    /// Give a drained backend its share of new flows back.
    Undrain { vip: String, address: String },
    /// Change a backend's weight (a configuration change: other slots may move a little).
    Weight { vip: String, address: String, weight: i64 },
}

pub async fn run(ctx: &Ctx, cmd: BackendCommand) -> Result<(), Failure> {
    let path = |vip: &str, address: &str, action: &str| {
        format!("/v1/vips/{}/backends/{}{action}", segment(vip), segment(address))
    };
    match cmd {
        BackendCommand::List { vip } => {
            let body = ctx.get(&format!("/v1/vips/{}/backends", segment(&vip))).await?;
            ctx.print(&body, |backends: Vec<BackendView>| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let rows = backends
                    .iter()
                    .map(|v| {
                        let b = &v.backend;
                        let last = match (v.last_ok, &v.last_error) {
                            // A check that did not run (this host's error) says why.
                            (None, Some(e)) => e.clone(),
                            (None, None) => "-".to_string(),
                            (Some(true), _) => "passed".to_string(),
                            (Some(false), Some(e)) => format!("failed: {e}"),
                            (Some(false), None) => "failed".to_string(),
                        };
                        let when = v
                            .last_checked_unix
                            .map(|t| format!("{}s ago", now.saturating_sub(t)))
                            .unwrap_or("-".into());
                        vec![
                            b.address.to_string(),
                            b.weight.to_string(),
                            if b.drained { "drained" } else { "active" }.into(),
                            v.connections.map_or("-".into(), |n| n.to_string()),
                            v.health.clone(),
                            when,
                            last,
                            v.next_hop.as_ref().map_or("-".into(), next_hop),
                        ]
                    })
                    .collect::<Vec<_>>();
                table(
                    &[
                        "ADDRESS",
                        "WEIGHT",
                        "STATE",
                        "CONNECTIONS",
                        "HEALTH",
                        "CHECKED",
                        "LAST CHECK",
                        "NEXT HOP",
                    ],
                    &rows,
                );
            })
        }
        BackendCommand::Add { vip, address, weight } => {
            let spec =
                BackendSpec { address: address.clone(), weight: Some(weight), drained: false, health: None };
            ctx.send_json(Method::POST, &format!("/v1/vips/{}/backends", segment(&vip)), &spec).await?;
            ctx.done(&format!("added backend {address} to {vip}"))
        }
        BackendCommand::Remove { vip, address } => {
            ctx.call(Method::DELETE, &path(&vip, &address, ""), None, None).await?;
            ctx.done(&format!("removed backend {address} from {vip}"))
        }
        BackendCommand::Drain { vip, address } => {
            ctx.call(Method::POST, &path(&vip, &address, "/drain"), None, None).await?;
            ctx.done(&format!("drained backend {address} of {vip}: no new flows, open ones continue"))
        }
        BackendCommand::Undrain { vip, address } => {
            ctx.call(Method::POST, &path(&vip, &address, "/undrain"), None, None).await?;
            ctx.done(&format!("undrained backend {address} of {vip}"))
        }
        BackendCommand::Weight { vip, address, weight } => {
            ctx.send_json(Method::PUT, &path(&vip, &address, "/weight"), &Weight { weight }).await?;
            ctx.done(&format!("set the weight of {address} in {vip} to {weight}"))
        }
    }
}

/// A backend's next hops in a cell: `eth0 02:00:00:00:00:11` (on-link), `eth0 via 198.18.0.1
/// 02:...` (a gateway), one per path, or the problem.
fn next_hop(s: &crate::host::neighbours::NextHopStatus) -> String {
    if s.hops.is_empty() {
        return s.problem.clone().unwrap_or_else(|| "none".into());
    }
    s.hops
        .iter()
        .map(|h| match (&h.problem, &h.mac) {
            (Some(p), _) => p.clone(),
            (None, mac) => {
                let via = if h.via_gateway { format!(" via {}", h.neighbour) } else { String::new() };
                format!("{}{via} {}", h.interface, mac.as_deref().unwrap_or("?"))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
