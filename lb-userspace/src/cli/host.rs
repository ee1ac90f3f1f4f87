//! `lbctl host`: this balancer host as its routers see it.
use clap::Subcommand;
use hyper::Method;

use super::{Ctx, Failure};

#[derive(Subcommand)]
pub enum HostCommand {
    /// Withdraw every VIP this host announces: the routers send new connections to the other
    /// hosts, and this one keeps forwarding what still reaches it. Saved: a restarted lbd stays
    /// drained until `lbctl host undrain`.
    Drain,
    /// Announce the VIPs again (each while its health allows).
    Undrain,
}

pub async fn run(ctx: &Ctx, cmd: HostCommand) -> Result<(), Failure> {
    let (path, done) = match cmd {
        HostCommand::Drain => {
            ("/v1/host/drain", "host drained: every VIP withdrawn (`lbctl status` shows them)")
        }
        HostCommand::Undrain => ("/v1/host/undrain", "host undrained: VIPs announced as their health allows"),
    };
    ctx.call(Method::POST, path, None, None).await?;
    ctx.done(done)
}
