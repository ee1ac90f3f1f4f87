//! Plain-text tables for humans.
use super::{Ctx, Failure};
use crate::api::Status;

/// Prints rows as left-aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", format_table(header, rows));
}

/// [`table`] as a string (to print a whole screen at once).
pub fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out += parts.join("  ").trim_end();
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

pub fn status(ctx: &Ctx, body: hyper::body::Bytes) -> Result<(), Failure> {
    ctx.print(&body, |s: Status| {
        println!("lbd {}", s.version);
        println!("interfaces   {} ({:?} mode)", s.interfaces.join(", "), s.xdp_mode);
        println!("pins         {}", s.pin_dir);
        println!("state file   {}", s.state_file);
        if let Some(c) = s.config_file {
            println!("config file  {c}");
        }
        println!(
            "started      {} ({})",
            s.started_unix,
            match (s.adopted, s.links_adopted) {
                (true, _) => "adopted the running data plane and state of an earlier lbd".to_string(),
                (false, 0) => "fresh start".to_string(),
                (false, n) => format!("fresh state; took over {n} pinned link(s)"),
            }
        );
        println!("vips         {}", s.vips);
        println!("backends     {}", s.backends);
        println!("denies       {} global in the config, {} added with lbctl deny", s.global_deny, s.denies);
        println!(
            "event loop   at most {:.1} ms late (in the last minute: {:.1} ms)",
            1e3 * s.event_loop_lag_max_seconds,
            1e3 * s.event_loop_lag_recent_max_seconds
        );
    })
}
