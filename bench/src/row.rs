//! The `ROW|section|case|value|unit|ratio|target|status` lines `cargo xtask bench` collects.

/// One output row.
pub struct Row {
    pub section: &'static str,
    pub case: String,
    pub value: Option<f64>,
    pub decimals: usize,
    pub unit: &'static str,
    pub ratio: Option<f64>,
    /// (text, met)
    pub target: Option<(String, bool)>,
}

impl Row {
    pub fn print(&self) {
        let value = self.value.map_or("void".to_owned(), |v| format!("{v:.*}", self.decimals));
        let ratio = self.ratio.map_or(String::new(), |r| format!("{r:.2}"));
        let (target, status) = match (&self.target, self.value) {
            (Some((t, _)), None) => (t.clone(), "MISS"),
            (Some((t, met)), Some(_)) => (t.clone(), if *met { "ok" } else { "MISS" }),
            (None, _) => (String::new(), "-"),
        };
        println!("ROW|{}|{}|{value}|{}|{ratio}|{target}|{status}", self.section, self.case, self.unit);
    }
}

/// The end of a bench that turned BPF statistics on: prints `rows`, then exits 1 if
/// `kernel.bpf_stats_enabled` is not back to `stats_before` or a case had no valid run.
pub fn finish(bench: &str, rows: &[Row], stats_before: &str, started: std::time::Instant) {
    for row in rows {
        row.print();
    }
    let stats_after = crate::stats::bpf_stats_enabled();
    eprintln!(
        "{bench}: {:.1?} in all; kernel.bpf_stats_enabled was {stats_before}, is {stats_after}",
        started.elapsed()
    );
    if stats_after != stats_before {
        eprintln!("{bench}: kernel.bpf_stats_enabled was not restored");
        std::process::exit(1);
    }
    if rows.iter().any(|r| r.value.is_none()) {
        eprintln!("{bench}: some cases had no valid run (see VOID above)");
        std::process::exit(1);
    }
}
