use std::{io, path::PathBuf};

use thiserror::Error;

/// What went wrong setting up a host, with what an operator needs to fix it.
#[derive(Debug, Error)]
pub enum HostError {
    #[error("interface {0:?} does not exist in this network namespace (`ip link` lists them)")]
    NoInterface(String),
    #[error("opening a netlink socket: {0}")]
    NetlinkSocket(#[source] io::Error),
    #[error("{action}: {source}")]
    Netlink {
        /// What was being done, e.g. "looking up the route to 198.18.0.17".
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("reading {key}: {source}")]
    ReadSysctl {
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("setting {key} to {value}: {source} (it needs root, in the network namespace of the interface)")]
    WriteSysctl {
        key: String,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "forwarding is off on interfaces the balancer is attached to, so bpf_fib_lookup refuses to find \
         next hops and every VIP packet passes to the stack (counted pass_fwd_disabled): run {}, or let lbd \
         turn it on (host.forwarding = \"enable\")",
        commands.join(" and ")
    )]
    ForwardingOff { commands: Vec<String> },
    #[error("next hops not resolved within {waited_ms} ms: {}", unresolved.join("; "))]
    Unresolved { waited_ms: u128, unresolved: Vec<String> },
    #[error("{path}: {source}")]
    PinPath {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is not on a bpffs and mounting one there failed: {source}; mount it yourself with \
         `mount -t bpf bpf {path}` (as root, in lbd's mount namespace) or pick a pin_path on a bpffs"
    )]
    MountBpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}: {source}")]
    MountInfo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
