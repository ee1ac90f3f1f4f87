//! `lbctl deny`: deny a source prefix by hand (an attack in progress), with an expiry.
use clap::Subcommand;
use hyper::Method;

use super::{output::table, Ctx, Failure};
use crate::api::{DenyRequest, DenyView};

#[derive(Subcommand)]
pub enum DenyCommand {
    /// Deny PREFIX to one VIP (--vip) or to every VIP, e.g. `lbctl deny add 198.18.7.0/24 --for 10m`.
    /// Its packets are dropped before their flow is recorded, established flows included. Kept across
    /// restarts and config reloads until removed or expired.
    Add {
        /// An address prefix (198.18.7.0/24, fd00:7::/48) or one address.
        prefix: String,
        /// The VIP it applies to (default: every VIP).
        #[arg(long)]
        vip: Option<String>,
        /// How long it holds: 90s, 10m, 2h, 1d (default: until removed).
        #[arg(long = "for", value_name = "DURATION", value_parser = duration)]
        duration: Option<(String, u64)>,
    },
    /// Remove a deny added with `lbctl deny add` (the config file's lists change with the file).
    Remove {
        prefix: String,
        #[arg(long)]
        vip: Option<String>,
    },
    /// List every deny: the config file's (global and per VIP) and the ones added by hand.
    List,
}

pub async fn run(ctx: &Ctx, cmd: DenyCommand) -> Result<(), Failure> {
    match cmd {
        DenyCommand::Add { prefix, vip, duration } => {
            let seconds = duration.as_ref().map(|(_, seconds)| *seconds);
            let req = DenyRequest { prefix: prefix.clone(), vip: vip.clone(), seconds };
            ctx.send_json(Method::POST, "/v1/denies", &req).await?;
            let to = vip.map(|v| format!("VIP {v}")).unwrap_or_else(|| "every VIP".into());
            let until = duration.map(|(d, _)| format!(" for {d}")).unwrap_or_default();
            ctx.done(&format!("denied {prefix} to {to}{until}"))
        }
        DenyCommand::Remove { prefix, vip } => {
            let req = DenyRequest { prefix: prefix.clone(), vip, seconds: None };
            ctx.send_json(Method::DELETE, "/v1/denies", &req).await?;
            ctx.done(&format!("removed the deny of {prefix}"))
        }
        DenyCommand::List => {
            let body = ctx.get("/v1/denies").await?;
            ctx.print(&body, |denies: Vec<DenyView>| {
                let now = crate::security::now_unix();
                let rows: Vec<Vec<String>> = denies
                    .iter()
                    .map(|d| {
                        vec![
                            d.prefix.to_string(),
                            d.vip.clone().unwrap_or_else(|| "*".into()),
                            d.origin.clone(),
                            match d.expires_unix {
                                Some(t) => format!("in {}s", t.saturating_sub(now)),
                                None => "-".into(),
                            },
                        ]
                    })
                    .collect();
                table(&["PREFIX", "VIP", "FROM", "EXPIRES"], &rows);
            })
        }
    }
}

/// `--for`: as written (for the message) and in seconds; a command-line error otherwise.
fn duration(text: &str) -> Result<(String, u64), String> {
    crate::security::parse_duration(text).map(|seconds| (text.to_owned(), seconds))
}
