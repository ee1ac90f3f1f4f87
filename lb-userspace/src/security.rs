//! Edge security as configured: address prefixes, the VIPs' allow and deny lists and rate
//! limits, the global deny list (`[security]`), and the operator's runtime denies (`lbctl deny`),
//! validated; and the data plane's form of a VIP's limits ([`vip_policy`]).
use std::{fmt, net::IpAddr, str::FromStr};

use lb_common::{Gcra, VipPolicy, POLICY_ACL, POLICY_PASS_OVER_LIMIT, POLICY_TRACK};
use serde::{Deserialize, Serialize};

/// An address prefix, host bits clear: `198.18.0.0/16`, `fd00::/8`; a bare address is a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn bits(address: IpAddr) -> u8 {
        if address.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// `address` with every bit past `len` clear.
    pub fn masked(address: IpAddr, len: u8) -> IpAddr {
        match address {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::from((u32::from(a) & mask).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::from((u128::from(a) & mask).to_be_bytes())
            }
        }
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        address.is_ipv4() == self.address.is_ipv4() && Self::masked(address, self.len) == self.address
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(text: &str) -> Result<Prefix, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let address: IpAddr = addr.parse().map_err(|_| {
            format!("{text:?} is not an address prefix: write e.g. \"198.18.0.0/16\" or \"fd00::/8\"")
        })?;
        let bits = Self::bits(address);
        let len = match len {
            None => bits,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?,
        };
        let masked = Self::masked(address, len);
        if masked != address {
            return Err(format!("{text:?} has bits set past /{len}: write {masked}/{len}"));
        }
        Ok(Prefix { address, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

impl Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What happens to a new TCP flow over a new-flow limit (`limits.over_limit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverLimit {
    #[default]
    Drop,
    /// Passed to the balancer host's own stack (e.g. a local proxy or SYN cookies there).
    Pass,
}

/// A VIP's rate limits (`[vip.limits]`), each a number a second; absent: no limit. The table
/// alone (no limit set) keeps per-source counts for `lbctl top`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// New flows a second from one source prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_flows_per_source: Option<u32>,
    /// Packets a second from one source prefix (packets the checks see: not those of a
    /// confirmed flow that passed them; see docs/data-plane.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_per_source: Option<u32>,
    /// New flows a second to the whole VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_flows: Option<u32>,
    /// What a source is: its address's first bits (default 32 for IPv4, 64 for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_prefix: Option<u8>,
    #[serde(default)]
    pub over_limit: OverLimit,
}

impl RateLimits {
    /// The source prefix length for a VIP of `address`'s family.
    pub fn source_prefix_for(&self, address: IpAddr) -> u8 {
        self.source_prefix.unwrap_or(if address.is_ipv4() { 32 } else { 64 })
    }

    /// One line for `lbctl vip list`.
    pub fn summary(&self, address: IpAddr) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.new_flows_per_source {
            parts.push(format!("{n} flows/s"));
        }
        if let Some(n) = self.packets_per_source {
            parts.push(format!("{n} pkts/s"));
        }
        let mut text = format!("{} per /{}", parts.join(", "), self.source_prefix_for(address));
        if parts.is_empty() {
            text = format!("tracked per /{}", self.source_prefix_for(address));
        }
        if let Some(n) = self.new_flows {
            text += &format!("; VIP {n} flows/s");
        }
        if self.over_limit == OverLimit::Pass {
            text += "; over: pass";
        }
        text
    }
}

/// The largest rate accepted: above it a limit limits nothing a host can receive.
pub const MAX_RATE: u32 = 1_000_000_000;

/// Checks `limits` for a VIP at `address`; the error names the key.
pub fn check_limits(limits: &RateLimits, address: IpAddr) -> Result<(), (String, String)> {
    for (key, value) in [
        ("new_flows_per_source", limits.new_flows_per_source),
        ("packets_per_source", limits.packets_per_source),
        ("new_flows", limits.new_flows),
    ] {
        if let Some(n) = value {
            if !(1..=MAX_RATE).contains(&n) {
                return Err((
                    format!("limits.{key}"),
                    format!(
                        "{n} is out of range: use 1 to {MAX_RATE} a second, or leave it out for no limit"
                    ),
                ));
            }
        }
    }
    let bits = Prefix::bits(address);
    if let Some(len) = limits.source_prefix {
        if !(1..=bits).contains(&len) {
            return Err((
                "limits.source_prefix".into(),
                format!("{len} is not a prefix length of this VIP's family: use 1 to {bits}"),
            ));
        }
    }
    Ok(())
}

/// Parses a VIP's or the global list; `family`: the VIP's address (its list takes only
/// prefixes of its family). The error names the entry's index.
pub fn parse_list(
    key: &str,
    list: &[String],
    family: Option<IpAddr>,
) -> Result<Vec<Prefix>, (String, String)> {
    let mut out: Vec<Prefix> = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let field = format!("{key}[{i}]");
        let prefix: Prefix = text.parse().map_err(|e| (field.clone(), e))?;
        if let Some(vip) = family.filter(|v| v.is_ipv4() != prefix.address.is_ipv4()) {
            return Err((
                field,
                format!(
                    "{prefix} can never match: the VIP {vip} is {}, so are its clients",
                    family_name(vip)
                ),
            ));
        }
        if out.contains(&prefix) {
            return Err((field, format!("{prefix} is listed twice")));
        }
        out.push(prefix);
    }
    Ok(out)
}

fn family_name(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// `[security]`: the global deny list, for every VIP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    #[serde(default)]
    pub deny: Vec<Prefix>,
}

/// An operator's deny (`lbctl deny add`): kept in the saved state until removed or expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deny {
    pub prefix: Prefix,
    /// The VIP it applies to; none: every VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// When it ends (seconds since the Unix epoch); none: when removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix: Option<u64>,
}

impl Deny {
    pub fn expired(&self, now_unix: u64) -> bool {
        self.expires_unix.is_some_and(|t| t <= now_unix)
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A duration as operators write it: `90s`, `10m`, `2h`, `1d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} is not a duration: write e.g. 90s, 10m, 2h or 1d")),
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a duration: write a whole number above 0 with s, m, h or d"))
}

/// The data plane's policy for a VIP with `limits` over `cpus` CPUs; `acl`: it has entries in
/// the access lists. All zero: nothing to do for it.
pub fn vip_policy(address: IpAddr, limits: Option<&RateLimits>, acl: bool, cpus: u32) -> VipPolicy {
    let mut policy = VipPolicy { flags: if acl { POLICY_ACL } else { 0 }, ..VipPolicy::default() };
    let Some(l) = limits else { return policy };
    let len = l.source_prefix_for(address);
    let mask = match Prefix::masked(
        match address {
            IpAddr::V4(_) => IpAddr::from([255; 4]),
            IpAddr::V6(_) => IpAddr::from([255; 16]),
        },
        len,
    ) {
        IpAddr::V4(a) => {
            let mut m = [0u8; 16];
            m[..4].copy_from_slice(&a.octets());
            m
        }
        IpAddr::V6(a) => a.octets(),
    };
    policy.flags |= POLICY_TRACK;
    if l.over_limit == OverLimit::Pass {
        policy.flags |= POLICY_PASS_OVER_LIMIT;
    }
    policy.source_mask = [
        u64::from_ne_bytes(mask[..8].try_into().expect("8 bytes")),
        u64::from_ne_bytes(mask[8..].try_into().expect("8 bytes")),
    ];
    policy.source_flows = Gcra::share(l.new_flows_per_source.unwrap_or(0), cpus);
    policy.source_packets = Gcra::share(l.packets_per_source.unwrap_or(0), cpus);
    policy.vip_flows = Gcra::share(l.new_flows.unwrap_or(0), cpus);
    policy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_refuse_what_is_not_one() {
        let p = |t: &str| t.parse::<Prefix>();
        assert_eq!(p("198.18.0.0/16").unwrap().to_string(), "198.18.0.0/16");
        assert_eq!(p("198.18.7.9").unwrap().len, 32);
        assert_eq!(p("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert_eq!(p("0.0.0.0/0").unwrap().len, 0);
        assert!(p("198.18.0.1/16").unwrap_err().contains("write 198.18.0.0/16"));
        assert!(p("198.18.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(p("fd00::/129").unwrap_err().contains("0 to 128"));
        assert!(p("198.18.0/16").unwrap_err().contains("not an address prefix"));
        assert!(p("198.18.0.0/16").unwrap().contains("198.18.255.1".parse().unwrap()));
        assert!(!p("198.18.0.0/16").unwrap().contains("198.19.0.1".parse().unwrap()));
    }

    #[test]
    fn lists_take_only_the_vips_family_and_no_repeats() {
        let v4: IpAddr = "198.18.100.1".parse().unwrap();
        let list =
            |l: &[&str]| parse_list("allow", &l.iter().map(|s| s.to_string()).collect::<Vec<_>>(), Some(v4));
        assert_eq!(list(&["198.18.0.0/16"]).unwrap().len(), 1);
        assert!(list(&["198.18.0.0/16", "fd00::/8"]).unwrap_err().1.contains("can never match"));
        assert_eq!(list(&["198.18.0.0/16", "198.18.0.0/16"]).unwrap_err().0, "allow[1]");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("1d"), Ok(86_400));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10 minutes").is_err());
    }

    #[test]
    fn a_policy_masks_sources_and_shares_rates_among_cpus() {
        let v4: IpAddr = "198.18.100.1".parse().unwrap();
        let limits =
            RateLimits { new_flows_per_source: Some(100), source_prefix: Some(24), ..Default::default() };
        let p = vip_policy(v4, Some(&limits), true, 2);
        assert_eq!(p.flags, POLICY_ACL | POLICY_TRACK);
        let mask = [p.source_mask[0].to_ne_bytes(), p.source_mask[1].to_ne_bytes()].concat();
        assert_eq!(mask[..5], [255, 255, 255, 0, 0]);
        assert_eq!(p.source_flows.interval_ns, 20_000_000, "2 CPUs: 50 a second each");
        assert_eq!(p.source_packets.interval_ns, 0, "no packet limit");
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let p = vip_policy(v6, Some(&RateLimits::default()), false, 1);
        let mask = [p.source_mask[0].to_ne_bytes(), p.source_mask[1].to_ne_bytes()].concat();
        assert_eq!((mask[7], mask[8]), (255, 0), "a /64 by default");
        assert_eq!(vip_policy(v6, None, false, 4), VipPolicy::default());
    }
}
