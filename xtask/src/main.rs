//! Project tasks. Only std, clap and anyhow: xtask must build before anything it installs.
mod bench;
mod cmd;
mod leftovers;
mod package;
mod setup;

use clap::{Parser, Subcommand};

/// Tasks for the XDP load balancer. Every task first installs what it needs (idempotent).
#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and Debian packages the project needs, mount bpffs.
    Setup,
    /// Build lbd and lbctl (release), with the XDP programs embedded.
    Build,
    /// Check formatting and run clippy with warnings denied.
    Lint,
    /// Lint, run every test (needs root), then check that nothing was left behind.
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// A client, lbd and 3 backends in throw-away namespaces: connections through the VIP, the
    /// per-backend split, live stats, a drain that keeps an open connection; then tear down.
    Demo {
        /// Scale-out instead: a router with BIRD, 3 balancer hosts (lbd + BIRD) behind ECMP, 3
        /// backends; long-lived connections survive a balancer killed outright and a host drain.
        #[arg(long)]
        ecmp: bool,
    },
    /// Set up, build (release) and run every benchmark (needs root): the XDP programs' cost per
    /// packet and packets per second, then the other benches; one table at the end.
    Bench {
        /// Only these benches (bench_xdp, bench_conn, bench_control, bench_health, bench_agent).
        names: Vec<String>,
    },
    /// Build lbd and lbctl (release) and a Debian package of them with their systemd units,
    /// example configs and shell completions; prints the .deb's path (under target/debian).
    Package {
        /// Package the lbd and lbctl in DIR (e.g. target/debug) instead of building them.
        #[arg(long, value_name = "DIR")]
        binaries: Option<std::path::PathBuf>,
        /// Write the .deb to DIR instead of target/debian.
        #[arg(long, value_name = "DIR")]
        output: Option<std::path::PathBuf>,
        /// dpkg-deb's compressor: xz (smallest), gzip (fastest to build), none.
        #[arg(long, default_value = "xz", value_parser = ["xz", "gzip", "none"])]
        compression: String,
    },
}

fn main() {
    let result = match Args::parse().task {
        Task::Setup => setup::run(setup::needs_root_parts()),
        Task::Build => setup::run(false).and_then(|()| build()),
        Task::Lint => setup::run(false).and_then(|()| lint()),
        Task::Test { cargo_args } => test(&cargo_args),
        Task::Demo { ecmp } => demo(if ecmp { "demo_ecmp" } else { "demo" }),
        Task::Bench { names } => bench::run(&names),
        Task::Package { binaries, output, compression } => {
            package(&package::Options { binaries, output, compression })
        }
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn build() -> anyhow::Result<()> {
    cmd::cargo(&["build", "--release", "--package", "lb-userspace"])
}

fn lint() -> anyhow::Result<()> {
    cmd::cargo(&["fmt", "--all", "--check"])?;
    // lb-ebpf only builds for the BPF target; build.rs compiles it for the others.
    cmd::cargo(&[
        "clippy",
        "--all-targets",
        "--package",
        "lb-common",
        "--package",
        "lb-userspace",
        "--package",
        "lb-tests",
        "--package",
        "lb-bench",
        "--package",
        "xtask",
        "--",
        "-D",
        "warnings",
    ])
}

fn test(cargo_args: &[String]) -> anyhow::Result<()> {
    setup::require_root("`cargo xtask test` creates network namespaces and loads XDP programs")?;
    setup::run(true)?;
    lint()?;
    leftovers::remove_stale()?;
    // Tests run lbd and lbctl as processes; `cargo test` builds a package's binaries only for
    // that package's own integration tests, so build them first.
    cmd::cargo(&["build", "--package", "lb-userspace", "--bins"])?;
    // Every test binary runs even after one fails: one run shows every failure.
    let mut args = vec!["test", "--workspace", "--exclude", "lb-ebpf", "--no-fail-fast"];
    args.extend(cargo_args.iter().map(String::as_str));
    let (tested, tally) = cmd::cargo_test(&args);
    // Check even when tests failed: a failing test must clean up too.
    let clean = leftovers::check();
    // One closing line for the whole suite (cargo's last line is some crate's doc-tests).
    println!("test: {} passed, {} failed", tally.passed, tally.failed);
    tested.and(clean)
}

fn package(options: &package::Options) -> anyhow::Result<()> {
    if options.binaries.is_none() {
        // It builds lbd, which needs the eBPF toolchain.
        setup::run(false)?;
    }
    setup::package_tools()?;
    let deb = package::run(options)?;
    println!("package: {}", deb.display());
    Ok(())
}

/// Runs the demo binary `bin` (of lb-tests).
fn demo(bin: &str) -> anyhow::Result<()> {
    setup::require_root("`cargo xtask demo` creates network namespaces and loads XDP programs")?;
    setup::run(true)?;
    // The demo runs lbd and lbctl from the same target directory as itself.
    cmd::cargo(&["build", "--quiet", "--release", "--package", "lb-userspace"])?;
    cmd::cargo(&["run", "--quiet", "--release", "--package", "lb-tests", "--bin", bin])
}
