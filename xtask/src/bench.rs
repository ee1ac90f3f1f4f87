//! `cargo xtask bench`: builds the bench binaries of lb-bench (`bench/`, release), runs each one
//! that exists, and prints one table of their results.
//!
//! Every bench binary prints its results as lines
//! `ROW|<section>|<case>|<value>|<unit>|<ratio>|<target>|<ok|MISS|->` among its other output.
//! The task fails only if a bench failed to run (exit status, time limit) or left namespaces
//! behind, never for a missed target: those show as MISS in the table.
use std::{
    io::BufRead as _,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{cmd, setup};

/// Prefix of the namespaces tests and benches create (lb-tests' `TEST_PREFIX`).
const TEST_PREFIX: &str = "lbt-";

/// The package of the bench binaries, and where their sources are.
const PACKAGE: &str = "lb-bench";
const BIN_DIR: &str = "bench/src/bin";

/// The bench binaries (`bench/src/bin/NAME.rs`) in the order they run, each with its time limit.
const BENCHES: &[(&str, u64)] = &[
    ("bench_flows", 420),
    ("bench_xdp", 300),
    ("bench_policy", 120),
    ("bench_conn", 300),
    ("bench_control", 120),
    ("bench_health", 90),
    ("bench_agent", 120),
];

/// One result row.
struct Row {
    bench: String,
    fields: [String; 7],
}

pub fn run(only: &[String]) -> anyhow::Result<()> {
    setup::require_root("`cargo xtask bench` creates network namespaces and loads XDP programs")?;
    setup::run(true)?;
    setup::bench_packages()?;
    let root = cmd::workspace_root();
    for name in only {
        if !BENCHES.iter().any(|(b, _)| b == name) {
            let known: Vec<&str> = BENCHES.iter().map(|(b, _)| *b).collect();
            bail!("no bench named {name:?}; the benches are {}", known.join(", "));
        }
    }
    let benches: Vec<(&str, u64)> = BENCHES
        .iter()
        .copied()
        .filter(|(name, _)| root.join(BIN_DIR).join(format!("{name}.rs")).exists())
        .filter(|(name, _)| only.is_empty() || only.iter().any(|o| o == name))
        .collect();
    if benches.is_empty() {
        bail!("none of the bench binaries exists in {BIN_DIR}");
    }

    let bin_dir = cmd::target_dir().join("release");
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    let started = Instant::now();
    // bench_conn and bench_control run lbd and lbctl from the same target directory: a stale
    // build there would be measured instead of this tree.
    cmd::cargo(&["build", "--release", "--package", "lb-userspace", "--bins"])
        .context("building lbd and lbctl (release) for the benches")?;
    for (name, limit) in &benches {
        // One at a time: a bench that does not build does not stop the others.
        if let Err(e) = cmd::cargo(&["build", "--release", "--package", PACKAGE, "--bin", name]) {
            println!("bench: {name} FAILED to build: {e:#}");
            failed.push(format!("{name}: did not build"));
            continue;
        }
        println!("bench: {name} (at most {limit} s)");
        let t = Instant::now();
        let (found, result) = run_one(&bin_dir.join(name), Duration::from_secs(*limit));
        let n = found.len();
        rows.extend(found.into_iter().map(|fields| Row { bench: (*name).to_owned(), fields }));
        match result {
            Ok(()) => println!("bench: {name} done in {:.0?}, {n} rows", t.elapsed()),
            Err(e) => {
                println!("bench: {name} FAILED after {:.0?}: {e:#}", t.elapsed());
                failed.push(format!("{name}: {e:#}"));
            }
        }
    }
    println!();
    print_table(&rows, started.elapsed());
    if !failed.is_empty() {
        bail!("{} of {} benches failed:\n  {}", failed.len(), benches.len(), failed.join("\n  "));
    }
    Ok(())
}

/// Namespaces whose names start with `prefix`.
fn namespaces(prefix: &str) -> Vec<String> {
    cmd::output("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect()
}

/// Runs one bench binary, passing its output through; returns its ROW lines' fields (even if
/// it failed later) and whether it ran to a successful end.
fn run_one(binary: &Path, limit: Duration) -> (Vec<[String; 7]>, anyhow::Result<()>) {
    let mut rows = Vec::new();
    let result = run_collecting(binary, limit, &mut rows);
    (rows, result)
}

fn run_collecting(binary: &Path, limit: Duration, rows: &mut Vec<[String; 7]>) -> anyhow::Result<()> {
    let mut child = Command::new(binary)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {}", binary.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Test namespaces are named lbt-<pid>-...: this bench's own.
    let prefix = format!("{TEST_PREFIX}{}-", child.id());
    let result = collect(&mut child, rx, limit, rows);
    let left = namespaces(&prefix);
    for ns in &left {
        let _ = cmd::run(Command::new("ip").args(["netns", "delete", ns]));
    }
    result?;
    if !left.is_empty() {
        bail!("left {} network namespaces behind (removed now): {}", left.len(), left.join(", "));
    }
    Ok(())
}

/// Passes the bench's output through and collects its ROW lines until it ends; kills it (our own
/// child, by its id) at `limit`.
fn collect(
    child: &mut std::process::Child,
    rx: mpsc::Receiver<String>,
    limit: Duration,
    rows: &mut Vec<[String; 7]>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => match parse_row(&line) {
                Some(fields) => rows.push(fields),
                None => println!("  {line}"),
            },
            // The bench closed its output: it has ended or is about to.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("still running after {limit:?}: killed");
            }
        }
    }
    let status = child.wait().context("waiting for the bench")?;
    if !status.success() {
        bail!("exited with {status}");
    }
    Ok(())
}

fn parse_row(line: &str) -> Option<[String; 7]> {
    let rest = line.strip_prefix("ROW|")?;
    let parts: Vec<&str> = rest.split('|').collect();
    let fields: [&str; 7] = parts.try_into().ok()?;
    Some(fields.map(|f| f.trim().to_owned()))
}

fn print_table(rows: &[Row], took: Duration) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = cmd::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    println!("Benchmarks, {}, {:.0?} of benches", date.trim(), took);
    println!("kernel {}, CPU {}", kernel.trim(), cpu_model());
    if rows.is_empty() {
        println!("(no result rows)");
        return;
    }
    let titles = ["section", "case", "value", "unit", "ratio", "target", "status"];
    let mut width = titles.map(str::len);
    for row in rows {
        for (w, f) in width.iter_mut().zip(&row.fields) {
            *w = (*w).max(f.chars().count());
        }
    }
    let line = |fields: [&str; 7]| {
        let mut out = String::new();
        for (i, (f, w)) in fields.iter().zip(width).enumerate() {
            let pad = w - f.chars().count();
            // Numbers right-aligned, text left-aligned.
            if matches!(i, 2 | 4) {
                out += &" ".repeat(pad);
                out += f;
            } else {
                out += f;
                out += &" ".repeat(pad);
            }
            out += "  ";
        }
        println!("{}", out.trim_end());
    };
    line(titles);
    line(width.map(|w| "-".repeat(w)).each_ref().map(String::as_str));
    let mut section = "";
    let mut bench = "";
    for row in rows {
        if !section.is_empty() && (row.fields[0] != section || row.bench != bench) {
            println!();
        }
        section = &row.fields[0];
        bench = &row.bench;
        line(row.fields.each_ref().map(String::as_str));
    }
    let count = |s: &str| rows.iter().filter(|r| r.fields[6] == s).count();
    println!();
    println!("{} rows: {} targets met, {} missed", rows.len(), count("ok"), count("MISS"));
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim()))
        .unwrap_or("unknown");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model} x {cpus}")
}
