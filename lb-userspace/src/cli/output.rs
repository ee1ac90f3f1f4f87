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
        let attached: Vec<String> = s
            .xdp
            .iter()
            .map(|x| match (&x.mode, &x.problem) {
                (Some(mode), _) => format!("{} ({})", x.interface, crate::datapath::Mode::from(*mode)),
                (None, problem) => format!("{} (not attached: {})", x.interface, problem.as_deref().unwrap_or("?")),
            })
            .collect();
        println!("interfaces   {}", attached.join(", "));
        println!("pins         {}", s.pin_dir);
        println!("state file   {}", s.state_file);
        if let Some(c) = s.config_file {
            println!("config file  {c}");
        }
        let replaced = match s.links_replaced {
            0 => String::new(),
            n => format!("; re-attached {n} of its pinned links, which were no use: see lbd's log"),
        };
        println!(
            "started      {} ({}{replaced})",
            s.started_unix,
            match (s.adopted, s.links_adopted + s.links_replaced) {
                (true, 0) => "adopted the saved state of an earlier lbd".to_string(),
                (true, _) => "adopted the running data plane and state of an earlier lbd".to_string(),
                (false, 0) => "fresh start".to_string(),
                (false, n) => format!("fresh state; took over {n} pinned link(s)"),
            }
        );
        println!("vips         {}", s.vips);
        println!("backends     {}", s.backends);
        println!("denies       {} global in the config, {} added with lbctl deny", s.global_deny, s.denies);
        match s.flow_table {
            Some(f) => {
                let share = |n: u64| 100.0 * n as f64 / f.entries.max(1) as f64;
                println!(
                    "flow table   {} flows in {} entries ({:.1} % full), {} active ({:.1} %), {} unconfirmed{} (census {} s ago)",
                    f.confirmed + f.unconfirmed,
                    f.entries,
                    share(f.confirmed + f.unconfirmed),
                    f.active,
                    share(f.active),
                    f.unconfirmed,
                    if f.complete { "" } else { " (at least: entries were being written)" },
                    crate::security::now_unix().saturating_sub(f.at_unix)
                )
            }
            None => println!("flow table   not counted yet (lbd counts it every 10 s: if this stays, see its log)"),
        }
        println!(
            "event loop   at most {:.1} ms late (in the last minute: {:.1} ms)",
            1e3 * s.event_loop_lag_max_seconds,
            1e3 * s.event_loop_lag_recent_max_seconds
        );
        rings(&s.rings);
        if let Some(a) = &s.announce {
            announcements(a);
        }
    })
}

/// Lines of a table, indented under a heading.
fn indented(header: &[&str], rows: &[Vec<String>]) {
    for line in format_table(header, rows).lines() {
        println!("  {line}");
    }
}

fn rings(rings: &[crate::agent::fingerprint::RingFingerprint]) {
    if rings.is_empty() {
        return;
    }
    println!(
        "rings        a FINGERPRINT equal on two balancer hosts: they pick the same backend for every flow"
    );
    let rows: Vec<Vec<String>> = rings
        .iter()
        .map(|r| vec![r.vip.clone(), r.service.clone(), r.scheduler.name().into(), r.fingerprint.clone()])
        .collect();
    indented(&["VIP", "SERVICE", "SCHEDULER", "FINGERPRINT"], &rows);
}

fn announcements(a: &crate::announce::Status) {
    let host = match (a.stopping, a.host_drained) {
        (true, _) => "STOPPING: announces nothing",
        (false, true) => "DRAINED: announces nothing (`lbctl host undrain`)",
        (false, false) => "announcing",
    };
    println!(
        "announce     host {host}; table {}, protocol {}, drain {} s on SIGTERM",
        a.table, a.protocol, a.drain_seconds
    );
    if let Some(problem) = &a.route_problem {
        println!("  the VIP table is not as it should be ({} failed writes): {problem}", a.route_errors);
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let rows: Vec<Vec<String>> = a
        .vips
        .iter()
        .map(|v| {
            let bird = match v.exported {
                None => "-",
                Some(true) => "exported",
                Some(false) => "NOT EXPORTED",
            };
            vec![
                v.vip.clone(),
                v.address.to_string(),
                v.announce.name().into(),
                yes_no(v.announced).into(),
                bird.into(),
                v.why.clone(),
            ]
        })
        .collect();
    indented(&["VIP", "ADDRESS", "ANNOUNCE", "ANNOUNCED", "BIRD", "WHY"], &rows);
    if let Some(b) = &a.bird {
        match &b.error {
            Some(e) => println!("BIRD         not read ({} failed reads): {e}", b.errors),
            None if !b.reachable => println!("BIRD         {}: not read yet", b.socket.display()),
            None => {
                println!("BIRD         {}: BGP sessions", b.socket.display());
                let rows: Vec<Vec<String>> = b
                    .sessions
                    .iter()
                    .map(|s| vec![s.name.clone(), yes_no(s.established).into(), s.state.clone()])
                    .collect();
                indented(&["SESSION", "ESTABLISHED", "STATE"], &rows);
            }
        }
    }
}
