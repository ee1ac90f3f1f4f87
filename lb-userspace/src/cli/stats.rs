use super::{output::table, Ctx, Failure};
use crate::agent::Stats;

pub async fn run(ctx: &Ctx) -> Result<(), Failure> {
    let body = ctx.get("/v1/stats").await?;
    ctx.print(&body, |s: Stats| {
        let mut rows = Vec::new();
        for v in &s.vips {
            rows.push(vec![
                v.name.clone(),
                v.service.clone(),
                String::new(),
                v.packets.to_string(),
                v.bytes.to_string(),
                v.new_flows.to_string(),
                String::new(),
            ]);
            let total: u64 = v.backends.iter().map(|b| b.new_flows).sum();
            for b in &v.backends {
                let share = if total == 0 { 0.0 } else { 100.0 * b.new_flows as f64 / total as f64 };
                rows.push(vec![
                    String::new(),
                    format!("  {}", b.address),
                    if b.drained { "drained".into() } else { format!("weight {}", b.weight) },
                    b.packets.to_string(),
                    b.bytes.to_string(),
                    b.new_flows.to_string(),
                    format!("{share:.1}%"),
                ]);
            }
        }
        table(&["VIP", "SERVICE / BACKEND", "STATE", "PACKETS", "BYTES", "NEW FLOWS", "SHARE"], &rows);
        println!();
        let counters: Vec<Vec<String>> =
            s.counters.iter().map(|(n, v)| vec![n.clone(), v.to_string()]).collect();
        table(&["COUNTER", "PACKETS"], &counters);
    })
}
