//! The test kit every privileged test uses.
//!
//! - [`privilege`]: fail with a clear message when a test lacks root.
//! - [`xdp`]: run the embedded XDP programs on frames with `BPF_PROG_TEST_RUN`.
//! - [`frames`]: build test frames with a packet crate.
//! - [`netns`]: network namespaces, veth pairs and bridges that clean up on drop, even on panic.
//! - [`bird`]: BIRD routers and balancer hosts in namespaces, their BGP sessions and ECMP routes.
//! - [`ecmp`]: the edge: a router with BIRD, balancer hosts with lbd and BIRD, backend hosts.
//! - [`bins`]: find the workspace's binaries (lbd, lbctl) that tests run as processes.
//! - [`topology`]: the standard client / lb / backends topology on a bridge.
//! - [`echo`]: TCP and UDP echo servers that record who connected.
//! - [`flows`]: flow-table entries written into a running lbd's pinned map.
//! - [`flood`]: spoofed SYNs and ACKs from raw AF_PACKET sockets.
//! - [`lbd`]: lbd as a process in a test namespace, lbctl against it.
//! - [`backend_host`]: `lbd backend-host` as a process on a backend host.
//! - [`browser`]: headless Chromium through chromedriver (WebDriver), in a test namespace.
pub mod backend_host;
pub mod bins;
pub mod bird;
pub mod browser;
pub mod echo;
pub mod ecmp;
pub mod flood;
pub mod flows;
pub mod frames;
pub mod lbd;
pub mod netns;
pub mod privilege;
pub mod topology;
pub mod xdp;

/// Prefix of every namespace, link and pin the tests create. `cargo xtask test` looks for it
/// afterwards to prove nothing was left behind (xtask/src/leftovers.rs has the same constant).
pub const TEST_PREFIX: &str = "lbt-";

/// A name no other test, in this process or another, is using: prefix, pid, counter, role.
pub fn unique_name(role: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{TEST_PREFIX}{}-{n}-{role}", std::process::id())
}
