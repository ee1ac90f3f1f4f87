//! The agent's side of VIP announcements (`crate::announce`): the table follows every change
//! of the VIPs and of their health; the host drain; the withdrawal when lbd stops.
use std::time::{Duration, Instant};

use tracing::info;

use super::{Agent, AgentError};
use crate::announce::{bird, Status};

impl Agent {
    /// Brings the VIP table in line with what this host should announce now (nothing without
    /// `[announce]`). Never fails: see [`crate::announce::Announcer::sync`].
    pub fn announce(&mut self) {
        if let Some(a) = &mut self.announcer {
            a.sync(&self.config.vips, &self.down);
        }
    }

    /// `lbctl host drain` / `undrain`: withdraws every VIP (or announces them again, as their
    /// health says), saved so that a restarted lbd keeps it. Forwarding goes on either way.
    pub fn set_host_drained(&mut self, drained: bool) -> Result<(), AgentError> {
        let Some(a) = &mut self.announcer else {
            return Err(AgentError::Conflict(
                "this lbd announces nothing (no [announce] in its config), so there is nothing to drain: add [announce] (docs/ecmp-bird.md) and restart lbd".into(),
            ));
        };
        let was = a.drained();
        a.set_drained(drained);
        if let Err(e) = self.save(&self.applied.ids) {
            if let Some(a) = &mut self.announcer {
                a.set_drained(was);
            }
            return Err(e);
        }
        info!(drained, "host {}", if drained { "drained: withdrawing every VIP" } else { "undrained" });
        self.announce();
        Ok(())
    }

    /// Announces nothing while this host cannot balance: the balancer missing from an interface,
    /// or forwarding off where the VIPs need it. The routers would send it flows that reach no
    /// balancer, or that the balancer hands to the kernel's blackhole route.
    pub fn follow_host(&mut self) {
        let unable =
            self.unattached() || self.host.as_ref().is_some_and(|h| h.forwarding_problem().is_some());
        if let Some(a) = &mut self.announcer {
            a.set_unable(unable);
        }
        self.announce();
    }

    /// A start that failed: withdraws every VIP now (lbd exits).
    pub fn withdraw_all(&mut self) {
        if let Some(a) = &mut self.announcer {
            a.set_stopping();
        }
        self.announce();
    }

    /// SIGTERM or SIGINT: withdraws every VIP and returns how long to keep forwarding before
    /// stopping (`announce.drain_seconds`); `None` without `[announce]`.
    pub fn stop_announcing(&mut self) -> Option<Duration> {
        let a = self.announcer.as_mut()?;
        a.set_stopping();
        let drain = Duration::from_secs(a.settings().drain_seconds);
        self.announce();
        Some(drain)
    }

    /// Where BIRD's control socket is, if lbd reads it.
    pub fn bird_socket(&self) -> Option<std::path::PathBuf> {
        self.announcer.as_ref().and_then(|a| a.bird_socket())
    }

    /// What a read of BIRD (started at `started`) found.
    pub fn bird_read(&mut self, result: Result<bird::BirdState, bird::ControlError>, started: Instant) {
        if let Some(a) = &mut self.announcer {
            a.bird_read(result, started);
        }
    }

    pub fn announce_status(&self) -> Option<Status> {
        self.announcer.as_ref().map(|a| a.status(&self.config.vips))
    }
}
