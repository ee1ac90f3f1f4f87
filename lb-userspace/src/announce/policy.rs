//! Which VIPs this host announces, and why: a pure function of the VIPs, their backends' health
//! and the host's state. Routes are per address: an address is announced while any VIP on it
//! (a service: address, port, protocol) is.
use std::{collections::BTreeSet, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    agent::reconcile::Down,
    config::{Announce, Vip},
};

/// What the host as a whole does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMode {
    /// Announces what its VIPs ask for.
    Serving,
    /// `lbctl host drain`: announces nothing (saved: a restarted lbd stays drained).
    Drained,
    /// lbd got SIGTERM or SIGINT and forwards for `drain_seconds` before it stops.
    Stopping,
    /// The host cannot balance: the balancer is not attached to one of its interfaces (deleted
    /// and made again under lbd: until a restart), or forwarding is off where the VIPs need it
    /// (`host.forwarding = "check"`: until someone turns it on).
    Unable,
}

/// One VIP's announcement as the policy decides it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub vip: String,
    pub address: IpAddr,
    pub wanted: bool,
    /// Why (or why not), for `lbctl status` and the log.
    pub why: String,
}

/// Backends of `vip` that take new flows: in service (not drained, weight > 0) and not down.
fn taking(vip: &Vip, down: &Down) -> usize {
    vip.backends
        .iter()
        .filter(|b| !b.drained && b.weight > 0 && !down.contains(&(vip.name.clone(), b.address)))
        .count()
}

/// Each VIP's decision, in the order of `vips`.
pub fn decide(vips: &[Vip], down: &Down, host: HostMode) -> Vec<Decision> {
    vips.iter()
        .map(|v| {
            let (wanted, why) = match (v.announce, host) {
                (Announce::Never, _) => (false, "announce = \"never\"".to_owned()),
                (_, HostMode::Drained) => {
                    (false, "the host is drained (`lbctl host undrain` announces again)".to_owned())
                }
                (_, HostMode::Stopping) => (false, "lbd is stopping (announce.drain_seconds)".to_owned()),
                (_, HostMode::Unable) => (
                    false,
                    "this host cannot balance (the balancer is not attached to every interface, or forwarding is off): the log says why".to_owned(),
                ),
                (Announce::Always, HostMode::Serving) => (true, "announce = \"always\"".to_owned()),
                (Announce::Healthy, HostMode::Serving) => match taking(v, down) {
                    0 => (
                        false,
                        "no backend takes new flows (each is down, drained or of weight 0)".to_owned(),
                    ),
                    n => (true, format!("{n} of {} backends take new flows", v.backends.len())),
                },
            };
            Decision { vip: v.name.clone(), address: v.address, wanted, why }
        })
        .collect()
}

/// The addresses to announce: those of the VIPs the decisions want.
pub fn addresses(decisions: &[Decision]) -> BTreeSet<IpAddr> {
    decisions.iter().filter(|d| d.wanted).map(|d| d.address).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Config};

    fn config(extra: &str) -> Config {
        let text = format!(
            "interfaces = [\"eth0\"]\n[source]\nipv4 = \"198.18.0.2\"\n\
             [[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n{extra}\n\
             [[vip.backend]]\naddress = \"198.18.0.11\"\n[[vip.backend]]\naddress = \"198.18.0.12\"\n\
             [[vip]]\nname = \"web-tls\"\naddress = \"198.18.100.1\"\nport = 443\nprotocol = \"tcp\"\n\
             announce = \"never\"\n[[vip.backend]]\naddress = \"198.18.0.11\"\n"
        );
        parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn down(addresses: &[&str]) -> Down {
        addresses.iter().map(|a| ("web".to_owned(), a.parse().unwrap())).collect()
    }

    fn wanted(c: &Config, d: &Down, host: HostMode) -> Vec<bool> {
        decide(&c.vips, d, host).iter().map(|d| d.wanted).collect()
    }

    #[test]
    fn a_healthy_vip_is_announced_while_one_backend_takes_new_flows() {
        let c = config("");
        assert_eq!(wanted(&c, &down(&[]), HostMode::Serving), [true, false]);
        assert_eq!(wanted(&c, &down(&["198.18.0.11"]), HostMode::Serving), [true, false]);
        let all = down(&["198.18.0.11", "198.18.0.12"]);
        let d = decide(&c.vips, &all, HostMode::Serving);
        assert!(!d[0].wanted && d[0].why.contains("no backend takes new flows"), "{d:?}");
        // Drained or weight 0 counts as out, like down.
        let mut c = c;
        c.vips[0].backends[0].drained = true;
        c.vips[0].backends[1].weight = 0;
        assert_eq!(wanted(&c, &down(&[]), HostMode::Serving), [false, false]);
    }

    #[test]
    fn always_ignores_health_and_the_host_state_overrides_both() {
        let c = config("announce = \"always\"");
        let all = down(&["198.18.0.11", "198.18.0.12"]);
        assert_eq!(wanted(&c, &all, HostMode::Serving), [true, false]);
        for host in [HostMode::Drained, HostMode::Stopping, HostMode::Unable] {
            assert_eq!(wanted(&c, &down(&[]), host), [false, false], "{host:?}");
        }
    }

    #[test]
    fn an_address_is_announced_while_any_vip_on_it_is() {
        let c = config("");
        let d = decide(&c.vips, &down(&[]), HostMode::Serving);
        assert_eq!(addresses(&d), ["198.18.100.1".parse::<IpAddr>().unwrap()].into());
        let d = decide(&c.vips, &down(&["198.18.0.11", "198.18.0.12"]), HostMode::Serving);
        assert!(addresses(&d).is_empty());
    }
}
