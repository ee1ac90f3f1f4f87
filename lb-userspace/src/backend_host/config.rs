//! The backend host's config file: TOML in, a validated [`Config`] out; an error names the
//! file, line and field (the agent's [`Invalid`]).
use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::config::{Invalid, XdpMode};

pub const DEFAULT_CONFIG: &str = "/etc/lbd/backend.toml";
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb-backend";
/// Under /run: the changes it records last as long as they do (until a reboot). In a directory of
/// its own: the one lbd-backend.service makes writable (`RuntimeDirectory=`; the rest of /run is
/// read-only to the service).
pub const DEFAULT_STATE_FILE: &str = "/run/lbd-backend/state.json";

/// A backend host's setup, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Interfaces the tunnels (or, for L2 DSR, the frames) arrive on: decap is attached there,
    /// and their ARP sysctls are set.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Bound to `lo` (as /32 and /128).
    pub vips: Vec<IpAddr>,
    /// Attach the decap program (`ipip` mode); false for L2 DSR backends.
    pub decap: bool,
    /// Outer destinations to strip tunnels for; `None`: the interfaces' own addresses.
    pub decap_addresses: Option<BTreeSet<IpAddr>>,
    /// Outer sources (balancers) to accept tunnels from, as (network, prefix length); empty:
    /// any.
    pub allowed_sources: BTreeSet<(IpAddr, u8)>,
    pub pin_path: PathBuf,
    /// Where the changes it made are recorded, so that a restart after a crash still
    /// restores the values from before the first start.
    pub state_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    interfaces: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    xdp_mode: XdpMode,
    #[serde(default)]
    vips: Vec<Spanned<String>>,
    #[serde(default = "yes")]
    decap: Spanned<bool>,
    decap_addresses: Option<Spanned<Vec<Spanned<String>>>>,
    allowed_sources: Option<Spanned<Vec<Spanned<String>>>>,
    pin_path: Option<Spanned<PathBuf>>,
    state_file: Option<Spanned<PathBuf>>,
}

fn yes() -> Spanned<bool> {
    Spanned::new(0..0, true)
}

/// Reads and validates a backend host's config file.
pub fn load(path: &Path) -> Result<Config, Invalid> {
    let (text, origin) = crate::config::read(path)?;
    parse(&text, &origin)
}

/// Parses and validates config text; `origin` names it in errors (a file name).
pub fn parse(text: &str, origin: &str) -> Result<Config, Invalid> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let error = |span: Option<std::ops::Range<usize>>, field: &str, message: String| Invalid {
        origin: Some(origin.to_owned()),
        line: span.map(|s| line_of(s.start)),
        field: field.to_owned(),
        message,
    };
    let at = |s: &std::ops::Range<usize>| (!s.is_empty()).then(|| s.clone());
    let raw: Raw =
        toml::from_str(text).map_err(|e| error(e.span(), "syntax", e.message().trim().to_owned()))?;

    let mut interfaces = Vec::new();
    for name in raw.interfaces.get_ref() {
        check_interface_name(name.get_ref()).map_err(|m| error(at(&name.span()), "interfaces", m))?;
        if interfaces.contains(name.get_ref()) {
            return Err(error(
                at(&name.span()),
                "interfaces",
                format!("{:?} is listed twice", name.get_ref()),
            ));
        }
        interfaces.push(name.get_ref().clone());
    }
    if interfaces.is_empty() {
        let m = "name at least one interface: the one the balancer's tunnels (or frames) arrive on";
        return Err(error(at(&raw.interfaces.span()), "interfaces", m.into()));
    }

    let decap = *raw.decap.get_ref();
    let mut vips = Vec::new();
    for v in &raw.vips {
        let address = unicast(v.get_ref(), "a VIP").map_err(|m| error(at(&v.span()), "vips", m))?;
        if vips.contains(&address) {
            return Err(error(at(&v.span()), "vips", format!("{address} is listed twice")));
        }
        vips.push(address);
    }
    if vips.is_empty() && !decap {
        let m = "name the VIP addresses to bind to lo: with decap = false that is all this command does";
        return Err(error(None, "vips", m.into()));
    }

    let decap_only = |field: &str, span: std::ops::Range<usize>| {
        error(at(&span), field, "only used with decap = true: remove it, or set decap = true".into())
    };
    let decap_addresses = match &raw.decap_addresses {
        None => None,
        Some(list) if !decap => return Err(decap_only("decap_addresses", list.span())),
        Some(list) => {
            let mut set = BTreeSet::new();
            for a in list.get_ref() {
                let address = unicast(a.get_ref(), "a decap address")
                    .map_err(|m| error(at(&a.span()), "decap_addresses", m))?;
                if !set.insert(address) {
                    return Err(error(
                        at(&a.span()),
                        "decap_addresses",
                        format!("{address} is listed twice"),
                    ));
                }
            }
            let max = lb_common::limits::MAX_DECAP_ADDRS as usize;
            if set.is_empty() || set.len() > max {
                let m =
                    format!("list 1 to {max} addresses, or leave it out for the interfaces' own addresses");
                return Err(error(at(&list.span()), "decap_addresses", m));
            }
            Some(set)
        }
    };

    let mut allowed_sources = BTreeSet::new();
    if let Some(list) = &raw.allowed_sources {
        if !decap {
            return Err(decap_only("allowed_sources", list.span()));
        }
        for p in list.get_ref() {
            let prefix = p
                .get_ref()
                .parse::<crate::security::Prefix>()
                .map(|p| (p.address, p.len))
                .map_err(|m| error(at(&p.span()), "allowed_sources", m))?;
            if !allowed_sources.insert(prefix) {
                return Err(error(
                    at(&p.span()),
                    "allowed_sources",
                    format!("{:?} is listed twice", p.get_ref()),
                ));
            }
        }
        let max = lb_common::limits::MAX_DECAP_SOURCES as usize;
        if allowed_sources.is_empty() || allowed_sources.len() > max {
            return Err(error(at(&list.span()), "allowed_sources", format!("list 1 to {max} prefixes")));
        }
    } else if decap {
        // An open decapsulator lets anyone reach this host's services (or, forwarding on, its
        // containers) from a spoofed trusted source: XDP strips the tunnel before the firewall
        // sees it. Accepting every source is a choice written down, not a default.
        let m = "list the balancers' tunnel sources (their [source] ipv4 and ipv6; with \
                 ipv4_entropy_bits or ipv6_entropy_bits, the block those bits span), e.g. \
                 [\"198.18.0.0/28\", \"fd00::/112\"]; [\"0.0.0.0/0\", \"::/0\"] accepts tunnels from anyone";
        return Err(error(None, "allowed_sources", m.into()));
    }

    let absolute = |field: &str, value: Option<&Spanned<PathBuf>>, default: &str| match value {
        None => Ok(PathBuf::from(default)),
        Some(p) if p.get_ref().is_absolute() => Ok(p.get_ref().clone()),
        Some(p) => {
            Err(error(at(&p.span()), field, format!("{} is not an absolute path", p.get_ref().display())))
        }
    };
    Ok(Config {
        interfaces,
        xdp_mode: raw.xdp_mode,
        vips,
        decap,
        decap_addresses,
        allowed_sources,
        pin_path: absolute("pin_path", raw.pin_path.as_ref(), DEFAULT_PIN_PATH)?,
        state_file: absolute("state_file", raw.state_file.as_ref(), DEFAULT_STATE_FILE)?,
    })
}

fn check_interface_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() < libc::IF_NAMESIZE
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if fine {
        Ok(())
    } else {
        Err(format!("{name:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"))
    }
}

fn unicast(text: &str, what: &str) -> Result<IpAddr, String> {
    let address: IpAddr = text.parse().map_err(|_| format!("{text:?} is not an IPv4 or IPv6 address"))?;
    if let Some(problem) = crate::config::not_a_host(address) {
        return Err(format!("{address} cannot be {what}: {problem}"));
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
interfaces = ["eth0"]
xdp_mode = "generic"
vips = ["198.18.100.1", "fd00:0:0:100::1"]
decap = true
decap_addresses = ["198.18.0.17"]
allowed_sources = ["198.18.0.0/24", "fd00::/64", "198.18.1.1"]
pin_path = "/sys/fs/bpf/lb-backend"
state_file = "/run/x.json"
"#;

    fn err(text: &str) -> String {
        parse(text, "b.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_full_config_parses() {
        let c = parse(FULL, "b.toml").unwrap();
        assert_eq!(c.interfaces, ["eth0"]);
        assert_eq!(c.xdp_mode, XdpMode::Generic);
        assert_eq!(c.vips.len(), 2);
        assert_eq!(c.decap_addresses, Some(BTreeSet::from(["198.18.0.17".parse().unwrap()])));
        let sources: Vec<String> = c.allowed_sources.iter().map(|(a, l)| format!("{a}/{l}")).collect();
        assert_eq!(sources, ["198.18.0.0/24", "198.18.1.1/32", "fd00::/64"]);
        assert_eq!(c.state_file, PathBuf::from("/run/x.json"));
    }

    #[test]
    fn defaults_decapsulate_for_the_interfaces_addresses_from_the_sources_listed() {
        let c = parse(
            "interfaces = [\"eth0\"]\nvips = [\"198.18.100.1\"]\nallowed_sources = [\"0.0.0.0/0\"]\n",
            "b.toml",
        )
        .unwrap();
        assert!(c.decap);
        assert_eq!(c.decap_addresses, None);
        assert_eq!(c.allowed_sources, BTreeSet::from([("0.0.0.0".parse().unwrap(), 0)]));
        assert_eq!(c.pin_path, PathBuf::from(DEFAULT_PIN_PATH));
        assert_eq!(c.xdp_mode, XdpMode::Native);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        assert_eq!(
            err("interfaces = [\"eth0\"]\nvips = [\n  \"198.18.100.1\",\n  \"198.18.100.300\",\n]\n"),
            "b.toml:4: vips: \"198.18.100.300\" is not an IPv4 or IPv6 address"
        );
        assert_eq!(
            err("interfaces = [\"eth0\"]\nallowed_sources = [\"198.18.0.5/24\"]\n"),
            "b.toml:2: allowed_sources: \"198.18.0.5/24\" has bits set past /24: write 198.18.0.0/24"
        );
        assert_eq!(
            err("interfaces = [\"eth0\"]\nallowed_sources = [\"fd00::/129\"]\n"),
            "b.toml:2: allowed_sources: \"fd00::/129\": the prefix length must be 0 to 128"
        );
        assert_eq!(
            err("interfaces = [\"eth0\"]\nvips = [\"198.18.100.1\"]\ndecap = false\ndecap_addresses = [\"198.18.0.17\"]\n"),
            "b.toml:4: decap_addresses: only used with decap = true: remove it, or set decap = true"
        );
        assert!(err("interfaces = []\n").starts_with("b.toml:1: interfaces: name at least one interface"));
        assert!(err("interfaces = [\"eth0\"]\ndecap = false\n")
            .starts_with("b.toml: vips: name the VIP addresses"));
        assert!(
            err("interfaces = [\"eth0\"]\nvip = []\n").starts_with("b.toml:2: syntax: unknown field `vip`")
        );
        assert_eq!(
            err("interfaces = [\"eth0\", \"eth0\"]\n"),
            "b.toml:1: interfaces: \"eth0\" is listed twice"
        );
        assert_eq!(
            err("interfaces = [\"eth0\"]\nvips = [\"127.0.0.1\"]\n"),
            "b.toml:2: vips: 127.0.0.1 cannot be a VIP: a loopback address is this host's own, not one the network reaches; use a unicast address"
        );
        assert_eq!(
            err("interfaces = [\"eth0\"]\nallowed_sources = [\"::/0\"]\npin_path = \"pins\"\n"),
            "b.toml:3: pin_path: pins is not an absolute path"
        );
        let open = err("interfaces = [\"eth0\"]\nvips = [\"198.18.100.1\"]\n");
        assert!(
            open.starts_with("b.toml: allowed_sources: list the balancers' tunnel sources"),
            "decap open to anyone by default"
        );
        assert!(!open.contains("  "), "a run of spaces in the message: {open}");
        assert_eq!(
            err("interfaces = [\"eth0\"]\nallowed_sources = []\n"),
            "b.toml:2: allowed_sources: list 1 to 256 prefixes"
        );
    }
}
