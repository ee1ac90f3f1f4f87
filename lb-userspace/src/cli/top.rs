//! `lbctl top`: the sources sending the most now.
use super::{output::table, segment, Ctx, Failure};
use crate::agent::top::Top;

#[derive(clap::Args)]
pub struct TopArgs {
    /// Only this VIP's sources.
    #[arg(long)]
    vip: Option<String>,
    /// How many sources to show (at least 1).
    #[arg(short = 'n', long, default_value_t = crate::agent::top::DEFAULT_LIMIT as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    limit: u64,
    /// Add sources up by prefixes of this length, 0 to 128 (e.g. 16: which /16 blocks a spoofed
    /// flood from many addresses comes from); longer than the VIP's tracked prefix (its
    /// `[vip.limits]`): the tracked one.
    #[arg(long, value_name = "LEN", value_parser = clap::value_parser!(u8).range(0..=128))]
    prefix: Option<u8>,
}

pub async fn run(ctx: &Ctx, args: TopArgs) -> Result<(), Failure> {
    let mut path = format!("/v1/top?limit={}", args.limit);
    if let Some(v) = &args.vip {
        path += &format!("&vip={}", segment(v));
    }
    if let Some(p) = args.prefix {
        path += &format!("&prefix={p}");
    }
    let body = ctx.get(&path).await?;
    ctx.print(&body, |top: Top| {
        let rows: Vec<Vec<String>> = top
            .sources
            .iter()
            .map(|s| {
                vec![
                    s.source.to_string(),
                    s.vip.clone(),
                    s.packets.to_string(),
                    s.new_flows.to_string(),
                    s.refused.to_string(),
                ]
            })
            .collect();
        table(&["SOURCE", "VIP", "PKTS/S", "NEW FLOWS/S", "REFUSED/S"], &rows);
        println!("{} active source prefixes in the last 1-2 s", top.active);
        if !top.untracked.is_empty() {
            println!(
                "not tracked (no [vip.limits]; an empty table tracks without limiting): {}",
                top.untracked.join(", ")
            );
        }
    })
}
