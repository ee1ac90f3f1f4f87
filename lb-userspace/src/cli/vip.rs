use clap::Subcommand;
use hyper::Method;

use super::{output::table, segment, Ctx, Failure};
use crate::config::{BackendSpec, ForwardMode, HashMode, Protocol, Vip, VipSpec};

#[derive(Subcommand)]
pub enum VipCommand {
    /// List VIPs.
    List,
    /// Add a VIP, e.g. `lbctl vip add web --address 198.18.100.1 --port 80 --protocol tcp
    /// --backend 198.18.0.11 --backend 198.18.0.12=200`.
    Add {
        /// A unique name (letters, digits, '-', '_', '.').
        name: String,
        /// The service address clients connect to, IPv4 or IPv6.
        #[arg(long)]
        address: String,
        /// 1-65535, or 0 for every port.
        #[arg(long)]
        port: i64,
        #[arg(long, value_enum)]
        protocol: Protocol,
        /// ipip: tunnel to backends that decapsulate; l2dsr: MAC rewrite, same L2 segment.
        #[arg(long, value_enum, default_value = "ipip")]
        mode: ForwardMode,
        /// What picks a new flow's backend: the 5-tuple, or the client address only.
        #[arg(long, value_enum, default_value = "5-tuple")]
        hash: HashMode,
        /// Maglev ring size: a prime at least 100 × the backends (default 65537, or larger).
        #[arg(long)]
        ring_size: Option<i64>,
        /// A backend ADDRESS or ADDRESS=WEIGHT; repeat for several.
        #[arg(long = "backend", value_name = "ADDRESS[=WEIGHT]")]
        backends: Vec<String>,
    },
    /// Remove a VIP: its packets go to the stack from now on.
    Remove { name: String },
}

pub async fn run(ctx: &Ctx, cmd: VipCommand) -> Result<(), Failure> {
    match cmd {
        VipCommand::List => {
            let body = ctx.get("/v1/vips").await?;
            ctx.print(&body, |vips: Vec<Vip>| {
                let rows = vips
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.clone(),
                            v.service(),
                            format!("{:?}", v.mode).to_lowercase(),
                            if v.hash == HashMode::Source { "source" } else { "5-tuple" }.into(),
                            v.ring_size.to_string(),
                            v.backends.len().to_string(),
                        ]
                    })
                    .collect::<Vec<_>>();
                table(&["NAME", "SERVICE", "MODE", "HASH", "RING", "BACKENDS"], &rows);
            })
        }
        VipCommand::Add { name, address, port, protocol, mode, hash, ring_size, backends } => {
            let backends = backends.iter().map(|b| parse_backend(b)).collect::<Result<Vec<_>, _>>()?;
            let spec =
                VipSpec { name: name.clone(), address, port, protocol, mode, hash, ring_size, backends };
            ctx.send_json(Method::POST, "/v1/vips", &spec).await?;
            ctx.done(&format!("added VIP {name}"))
        }
        VipCommand::Remove { name } => {
            ctx.call(Method::DELETE, &format!("/v1/vips/{}", segment(&name)), None, None).await?;
            ctx.done(&format!("removed VIP {name}"))
        }
    }
}

/// `ADDRESS` or `ADDRESS=WEIGHT`.
fn parse_backend(text: &str) -> Result<BackendSpec, Failure> {
    let (address, weight) = match text.split_once('=') {
        None => (text, None),
        Some((a, w)) => {
            let w = w.parse().map_err(|_| {
                Failure::Refused(format!(
                    "--backend {text}: the weight {w:?} is not a number (use ADDRESS=WEIGHT)"
                ))
            })?;
            (a, Some(w))
        }
    };
    Ok(BackendSpec { address: address.to_owned(), weight, drained: false })
}
