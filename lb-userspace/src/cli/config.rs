use std::path::Path;

use hyper::Method;

use super::{output::table, Ctx, Failure};
use crate::agent::{plan::GLOBAL_ROW, reconcile::PlanEntry};

/// `apply -f` and `plan -f`: send the file; lbd validates it whole, then applies or previews.
pub async fn run(ctx: &Ctx, file: &Path, endpoint: &str) -> Result<(), Failure> {
    let text =
        std::fs::read(file).map_err(|e| Failure::Refused(format!("cannot read {}: {e}", file.display())))?;
    let origin = file.display().to_string();
    let body = ctx.call(Method::POST, endpoint, Some(("application/toml", text)), Some(&origin)).await?;
    let applied = endpoint.ends_with("apply");
    ctx.print(&body, |plan: Vec<PlanEntry>| {
        let rows: Vec<Vec<String>> = plan
            .iter()
            .map(|p| {
                let scheduler = match p.scheduler_was {
                    Some(was) => format!("{} -> {}", was.name(), p.scheduler.name()),
                    None => p.scheduler.name().to_owned(),
                };
                let policy = match (p.acl_changes, p.limits_change) {
                    (0, false) => "-".to_owned(),
                    (0, true) => "limits".to_owned(),
                    (n, limits) => format!("{n} acl entries{}", if limits { ", limits" } else { "" }),
                };
                if p.vip == GLOBAL_ROW {
                    // The global deny list: no ring, no scheduler.
                    return vec![p.vip.clone(), p.action.clone(), "-".into(), "-".into(), "-".into(), policy];
                }
                vec![
                    p.vip.clone(),
                    p.action.clone(),
                    scheduler,
                    format!("{} / {}", p.slots_moved, p.ring_size),
                    format!("{:.2}%", 100.0 * p.share_moved),
                    policy,
                ]
            })
            .collect();
        table(
            &["VIP", "ACTION", "SCHEDULER", "SLOTS MOVED", "SHARE OF NEW FLOWS MOVED", "POLICY CHANGES"],
            &rows,
        );
        if applied {
            println!("applied {}", file.display());
        }
    })
}
