//! `lbd backend-host`: sets a host up as a backend of the balancer, and undoes it on stop.
//!
//! For `ipip` VIPs: the `decap` XDP program on the interfaces the tunnels arrive on (pinned,
//! so a crash keeps decapsulating), the VIPs on `lo`, and ARP settings so the host neither
//! answers ARP for the VIPs nor announces them. For `l2dsr` VIPs (`decap = false`): the VIPs
//! on `lo` and the ARP settings. See docs/operations.md, "Backend hosts".
pub mod config;
mod record;
mod setup;
pub mod status;

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

pub use setup::{pin_dir, BackendHost, PINNED_LAYOUTS, PIN_LAYOUT};

use crate::{config::Invalid, datapath::DatapathError, host::HostError};

/// How often decap addresses taken from the interfaces are checked against them.
const FOLLOW_ADDRESSES: Duration = Duration::from_secs(5);

/// Sets this host up as a backend: decap (for ipip VIPs), VIPs on lo, ARP settings.
///
/// Runs until SIGTERM or SIGINT, then removes all of it (detaches decap and removes its pins,
/// removes the VIPs it bound, restores the sysctls it changed) and exits 0. A crash leaves
/// decap attached (its link is pinned); a new run takes over where it left off. Needs root.
///
/// Example: lbd backend-host --config /etc/lbd/backend.toml
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The backend host's config file (TOML); see docs/operations.md, "Backend hosts".
    #[arg(short, long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Print what the running backend host has in place (decap counters, interfaces, VIPs,
    /// decap settings, read from its pins) and exit.
    #[arg(long)]
    pub status: bool,
    /// With --status: JSON instead of tables.
    #[arg(long, requires = "status")]
    pub json: bool,
    /// Undo what an earlier run left and exit: one killed or crashed (a stop undoes it itself).
    /// Detaches decap and removes its pins, takes the VIPs it bound off lo, restores the
    /// sysctls it changed (from its state_file record). Stop a running one first.
    #[arg(long, conflicts_with = "status")]
    pub undo: bool,
}

#[derive(Debug, Error)]
pub enum BackendHostError {
    #[error("{0}")]
    Config(#[from] Invalid),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("retiring the pins of an earlier release's map layout under {}: {source}; remove that directory by hand (its links detach with it) and start again", .path.display())]
    OldLayout { path: std::path::PathBuf, source: std::io::Error },
    #[error("the state file {path}: {source}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the state file {path} is corrupt ({source}): it lists what an earlier backend-host changed; fix or remove it")]
    CorruptStateFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no decap maps pinned under {dir}: is `lbd backend-host --config {config}` running? ({source})", config = .config.display(), dir = .dir.display())]
    NotRunning {
        dir: PathBuf,
        config: PathBuf,
        #[source]
        source: Box<DatapathError>,
    },
    #[error("installing the signal handlers: {0}")]
    Signals(#[source] io::Error),
    #[error("stopping left some things in place: {}", .0.join("; "))]
    Teardown(Vec<String>),
}

/// `lbd backend-host`: runs, or prints the status with `--status`.
pub async fn main(args: &Args) -> Result<(), BackendHostError> {
    let config = config::load(&args.config)?;
    if args.undo {
        return setup::undo(config);
    }
    if args.status {
        let status = status::read(&config, &args.config)?;
        match args.json {
            true => println!("{}", serde_json::to_string_pretty(&status).expect("a status serializes")),
            false => print!("{}", status.text()),
        }
        return Ok(());
    }
    run(config, &args.config).await
}

async fn run(config: config::Config, file: &Path) -> Result<(), BackendHostError> {
    // Before anything changes: a stop signal during set-up still finds its way to the cleanup.
    let mut term = signal(SignalKind::terminate()).map_err(BackendHostError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(BackendHostError::Signals)?;
    let mut host = BackendHost::start(config)?;
    info!(config = %file.display(), "backend host set up; SIGTERM or SIGINT undoes it");
    crate::service::ready();
    let mut follow = tokio::time::interval(FOLLOW_ADDRESSES);
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM"); break }
            _ = interrupt.recv() => { info!("SIGINT"); break }
            _ = follow.tick() => {
                if let Err(e) = host.follow_interface_addresses() {
                    error!("following the interfaces' addresses: {e}");
                }
            }
        }
    }
    crate::service::stopping();
    host.stop()?;
    info!("backend host set-up removed");
    Ok(())
}
