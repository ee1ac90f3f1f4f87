//! `lbctl stats`: totals and rates per VIP and backend, and the global counters. Rates come from
//! two samples of `/v1/stats` an interval apart (the counters are totals since the maps were
//! created); `--watch` keeps sampling and redraws in place.
use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    time::Duration,
};

use serde_json::Value;
use tokio::time::Instant;

use super::{output::format_table, Ctx, Failure};
use crate::agent::Stats;

#[derive(clap::Args)]
pub struct StatsArgs {
    /// Seconds between the two samples rates are computed from, and between refreshes.
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = interval)]
    interval: Duration,
    /// Redraw in place every interval, until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// With --watch: stop after N refreshes.
    #[arg(long, value_name = "N", requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

fn interval(text: &str) -> Result<Duration, String> {
    let secs: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err("use 0.1 to 3600 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub async fn run(ctx: &Ctx, args: StatsArgs) -> Result<(), Failure> {
    if ctx.json && args.watch {
        return Err(Failure::Refused(
            "--json prints one sample of the API's JSON: --watch redraws a table (sample in a loop for JSON)"
                .into(),
        ));
    }
    if ctx.json {
        // Scripts get the API's own JSON: one sample, totals only.
        let body = ctx.get("/v1/stats").await?;
        return ctx.print(&body, |_: Stats| {});
    }
    let terminal = std::io::stdout().is_terminal();
    let mut previous = Sample::take(ctx).await?;
    let mut shown = 0u64;
    loop {
        tokio::time::sleep_until(previous.at + args.interval).await;
        let current = Sample::take(ctx).await?;
        let mut screen = String::new();
        if args.watch {
            // Home and clear: the next screen replaces this one. Piped output gets a blank line.
            if terminal {
                screen += "\x1b[H\x1b[2J";
            } else if shown > 0 {
                screen.push('\n');
            }
            screen += &format!(
                "lbctl stats --watch: rates over {:.1} s, refresh {} (Ctrl-C stops)\n\n",
                args.interval.as_secs_f64(),
                shown + 1
            );
        }
        screen += &render(&previous, &current);
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) ends the watch quietly.
        if out.write_all(screen.as_bytes()).and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
        shown += 1;
        if !args.watch || args.count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        previous = current;
    }
}

/// One answer of `/v1/stats`, when it came.
struct Sample {
    at: Instant,
    stats: Stats,
    /// The same answer untyped: fields lbctl shows as the API gives them (a backend's health).
    raw: Value,
}

impl Sample {
    async fn take(ctx: &Ctx) -> Result<Sample, Failure> {
        let body = ctx.get("/v1/stats").await?;
        let at = Instant::now();
        let bad = |e: serde_json::Error| {
            Failure::Server(format!("lbd answered stats lbctl does not understand: {e}"))
        };
        let raw: Value = serde_json::from_slice(&body).map_err(bad)?;
        let stats = serde_json::from_value(raw.clone()).map_err(bad)?;
        Ok(Sample { at, stats, raw })
    }

    /// `(packets, bytes, new flows)` per VIP and per (VIP, backend).
    fn totals(&self) -> HashMap<(&str, &str), [u64; 3]> {
        let mut t = HashMap::new();
        for v in &self.stats.vips {
            t.insert((v.name.as_str(), ""), [v.packets, v.bytes, v.new_flows]);
            for b in &v.backends {
                t.insert((v.name.as_str(), b.address.as_str()), [b.packets, b.bytes, b.new_flows]);
            }
        }
        t
    }
}

/// The HEALTH cell: a backend's `health` as the API reports it, "-" while it reports none.
fn health(backend: &Value) -> String {
    match backend.get("health") {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Per second from `before` to `now` over `secs`; `None` if there was no earlier sample or the
/// counter went back (lbd started on fresh maps).
fn per_second(before: Option<u64>, now: u64, secs: f64) -> Option<f64> {
    let before = before?;
    (now >= before && secs > 0.0).then(|| (now - before) as f64 / secs)
}

/// 1234567 -> "1.23M": rates as an operator reads them.
pub fn si(x: f64) -> String {
    const STEPS: [(f64, &str); 4] = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, suffix) in STEPS {
        if x >= scale {
            let v = x / scale;
            return if v >= 100.0 { format!("{v:.0}{suffix}") } else { format!("{v:.2}{suffix}") };
        }
    }
    if x == x.trunc() || x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn cell(rate: Option<f64>) -> String {
    rate.map(si).unwrap_or_else(|| "-".into())
}

/// The tables: VIPs with their backends, then the global counters.
fn render(before: &Sample, now: &Sample) -> String {
    let secs = (now.at - before.at).as_secs_f64();
    let old = before.totals();
    let rates = |key: (&str, &str), t: [u64; 3]| -> [Option<f64>; 3] {
        let b = old.get(&key);
        [
            per_second(b.map(|b| b[0]), t[0], secs),
            per_second(b.map(|b| b[1]), t[1], secs).map(|bytes| bytes * 8.0),
            per_second(b.map(|b| b[2]), t[2], secs),
        ]
    };
    let mut rows = Vec::new();
    for (i, v) in now.stats.vips.iter().enumerate() {
        let t = [v.packets, v.bytes, v.new_flows];
        let [pps, bps, fps] = rates((&v.name, ""), t);
        rows.push(vec![
            v.name.clone(),
            v.service.clone(),
            String::new(),
            String::new(),
            cell(pps),
            cell(bps),
            cell(fps),
            String::new(),
            t[0].to_string(),
            t[1].to_string(),
            t[2].to_string(),
        ]);
        let backend_rates: Vec<[Option<f64>; 3]> = v
            .backends
            .iter()
            .map(|b| rates((&v.name, &b.address), [b.packets, b.bytes, b.new_flows]))
            .collect();
        let vip_pps: f64 = backend_rates.iter().filter_map(|r| r[0]).sum();
        for (j, (b, [pps, bps, fps])) in v.backends.iter().zip(backend_rates).enumerate() {
            let share = match pps {
                Some(p) if vip_pps > 0.0 => format!("{:.1}%", 100.0 * p / vip_pps),
                _ => "-".into(),
            };
            rows.push(vec![
                String::new(),
                format!("  {}", b.address),
                if b.drained { "drained".into() } else { format!("weight {}", b.weight) },
                health(&now.raw["vips"][i]["backends"][j]),
                cell(pps),
                cell(bps),
                cell(fps),
                share,
                b.packets.to_string(),
                b.bytes.to_string(),
                b.new_flows.to_string(),
            ]);
        }
    }
    let mut out = format_table(
        &[
            "VIP",
            "SERVICE / BACKEND",
            "STATE",
            "HEALTH",
            "PKT/S",
            "BIT/S",
            "FLOWS/S",
            "SHARE",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
        ],
        &rows,
    );
    if now.stats.vips.is_empty() {
        out += "(no VIPs)\n";
    }
    out.push('\n');
    let old: HashMap<&str, u64> = before.stats.counters.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let counters: Vec<Vec<String>> = now
        .stats
        .counters
        .iter()
        .map(|(name, v)| {
            vec![name.clone(), cell(per_second(old.get(name.as_str()).copied(), *v, secs)), v.to_string()]
        })
        .collect();
    out += &format_table(&["COUNTER", "PKT/S", "TOTAL"], &counters);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_units() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(0.5), "0.5");
        assert_eq!(si(12.0), "12");
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1234.0), "1.23k");
        assert_eq!(si(123_456.0), "123k");
        assert_eq!(si(9_870_000.0), "9.87M");
        assert_eq!(si(2.5e9), "2.50G");
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(Some(100), 300, 2.0), Some(100.0));
        assert_eq!(per_second(None, 300, 2.0), None);
        assert_eq!(per_second(Some(400), 300, 2.0), None);
    }

    #[test]
    fn health_as_the_api_gives_it() {
        assert_eq!(health(&serde_json::json!({"address": "198.18.0.11"})), "-");
        assert_eq!(health(&serde_json::json!({"health": "up"})), "up");
        assert_eq!(health(&serde_json::json!({"health": null})), "-");
    }
}
