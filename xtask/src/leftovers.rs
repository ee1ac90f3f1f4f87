//! Tests must leave nothing behind. Their namespaces, links, pins and cgroups all carry TEST_PREFIX
//! (the same prefix as in lb-tests' `unique_name`), which makes them easy to find here.
use std::{fs, path::Path};

use anyhow::bail;

use crate::cmd::{self, output};

const TEST_PREFIX: &str = "lbt-";
const BPFFS: &str = "/sys/fs/bpf";
/// Where tests make memory cgroups of their own (agent_links: BPF maps under a memory limit):
/// cgroup v1's memory controller, or cgroup v2.
const MEMORY_CGROUPS: [&str; 2] = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"];
/// Binaries of this workspace that tests start as separate processes.
const TEST_PROCESSES: &[&str] = &["lbd", "lbctl", "demo"];

struct Found {
    namespaces: Vec<String>,
    links: Vec<String>,
    pins: Vec<String>,
    cgroups: Vec<String>,
    processes: Vec<String>,
}

fn find() -> Found {
    let namespaces = output("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(TEST_PREFIX))
        .map(String::from)
        .collect();
    let links = output("ip", &["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .filter(|n| n.starts_with(TEST_PREFIX))
        .map(String::from)
        .collect();
    Found {
        namespaces,
        links,
        pins: ours_in(BPFFS),
        cgroups: MEMORY_CGROUPS.iter().flat_map(|d| ours_in(d)).collect(),
        processes: our_processes(),
    }
}

/// Test objects' names in directory `dir`.
fn ours_in(dir: &str) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(TEST_PREFIX))
        .collect()
}

/// Processes running one of this workspace's binaries from its target directory, and processes
/// a test started whose command line names the test's temp dir (BIRD's config, Chromium's
/// profile, chromedriver's log: `.../lbt-<pid>-<n>-<role>/...`) when that test has exited.
fn our_processes() -> Vec<String> {
    let target = cmd::workspace_root().join("target");
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(exe) = fs::read_link(entry.path().join("exe")) else { continue };
        let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let ours = exe.starts_with(&target) && TEST_PROCESSES.contains(&name.as_str());
        if ours || test_child_orphaned(&entry.path()) {
            found.push(format!("{name} (pid {})", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// Whether a process's command line names a test object (`.../lbt-<pid>-<n>-<role>/...`) whose
/// test process is gone.
fn test_child_orphaned(proc_dir: &Path) -> bool {
    let cmdline = fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline
        .split(['\0', '/'])
        .find(|part| part.starts_with(TEST_PREFIX))
        .is_some_and(|name| !owner_alive(name))
}

/// The pid a test object's name carries (`lbt-<pid>-<n>-<role>`), if that process still runs:
/// its objects are in use (a concurrent test or bench run), not left over.
fn owner_alive(name: &str) -> bool {
    name.strip_prefix(TEST_PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes what an interrupted earlier run (e.g. killed with SIGKILL) may have left; objects of
/// test processes still running are left alone.
pub fn remove_stale() -> anyhow::Result<()> {
    let mut found = find();
    found.namespaces.retain(|n| !owner_alive(n));
    found.links.retain(|n| !owner_alive(n));
    found.pins.retain(|n| !owner_alive(n));
    for ns in &found.namespaces {
        cmd::run(std::process::Command::new("ip").args(["netns", "delete", ns]))?;
    }
    for link in &found.links {
        cmd::run(std::process::Command::new("ip").args(["link", "delete", link]))?;
    }
    for pin in &found.pins {
        let path = Path::new(BPFFS).join(pin);
        let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
    }
    found.cgroups.retain(|n| !owner_alive(n));
    for cgroup in &found.cgroups {
        // (A cgroup directory goes with rmdir once no process is in it.)
        for root in MEMORY_CGROUPS {
            let _ = fs::remove_dir(Path::new(root).join(cgroup));
        }
    }
    let n = found.namespaces.len() + found.links.len() + found.pins.len() + found.cgroups.len();
    if n > 0 {
        println!("test: removed {n} namespaces, links, pins and cgroups left by an earlier interrupted run");
    }
    Ok(())
}

/// Fails, naming each one, if the tests left namespaces, links, pins, cgroups or processes behind. The
/// test binaries have exited by now, so an object whose owner still runs belongs to another run.
pub fn check() -> anyhow::Result<()> {
    let mut f = find();
    f.namespaces.retain(|n| !owner_alive(n));
    f.links.retain(|n| !owner_alive(n));
    f.pins.retain(|n| !owner_alive(n));
    f.cgroups.retain(|n| !owner_alive(n));
    let mut left = Vec::new();
    for (kind, items) in [
        ("network namespaces", &f.namespaces),
        ("links in the root namespace", &f.links),
        ("bpffs pins", &f.pins),
        ("memory cgroups", &f.cgroups),
        ("processes", &f.processes),
    ] {
        if !items.is_empty() {
            left.push(format!("{kind}: {}", items.join(", ")));
        }
    }
    if !left.is_empty() {
        bail!("the tests left things behind (a cleanup bug): {}", left.join("; "));
    }
    println!("test: no namespaces, links, pins, cgroups or processes left behind");
    Ok(())
}
