//! What to check and how often: [`CheckSpec`] and its validation, and [`CheckSettings`], the
//! unvalidated form a config file or an API call gives (where an unknown type can still appear).
use std::{ops::RangeInclusive, time::Duration};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Largest `rise` or `fall`: beyond it a state change takes longer than anyone waits for.
pub const MAX_COUNT: u32 = 100;
/// Largest UDP payload sent or expected: one datagram on any path, no fragments.
pub const MAX_UDP_PAYLOAD: usize = 1200;
pub const DEFAULT_STATUS: RangeInclusive<u16> = 200..=399;

/// How a backend is probed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CheckKind {
    /// Not probed: always up.
    #[default]
    None,
    /// A TCP connect, closed at once without data.
    Tcp,
    /// An HTTP/1.1 `GET path` (with `Host` and `Connection: close`); healthy if the status code
    /// is in `status`.
    Http { path: String, status: RangeInclusive<u16> },
    /// `send` in one datagram; healthy if a reply containing `expect` comes back within the
    /// timeout (an empty `expect` takes any reply).
    Udp { send: Vec<u8>, expect: Vec<u8> },
}

impl CheckKind {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Udp { .. } => "udp",
        }
    }
}

/// One backend's health check, validated by [`CheckSpec::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// The backend's port the probe goes to (unused by `None`).
    pub port: u16,
    pub interval: Duration,
    /// Per probe, the whole exchange included; shorter than `interval` so probes never overlap.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
}

impl Default for CheckSpec {
    fn default() -> Self {
        CheckSpec {
            kind: CheckKind::None,
            port: 0,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum HealthConfigError {
    #[error("unknown check type {0:?}: use none, tcp, http or udp")]
    UnknownKind(String),
    #[error("interval {0} ms is out of range: use 100 ms to 3600000 ms (1 h)")]
    Interval(i64),
    #[error("timeout {0} ms is too short: use at least 1 ms")]
    TimeoutTooShort(i64),
    #[error("timeout {timeout} ms must be shorter than interval {interval} ms: lower the timeout or raise the interval")]
    TimeoutNotShorter { timeout: u128, interval: u128 },
    #[error("{field} {value} is out of range: use 1 to 100 consecutive results")]
    Count { field: &'static str, value: i64 },
    #[error(
        "port {port} cannot be probed by a {kind} check: set port to the backend's service port (1 to 65535)"
    )]
    Port { kind: &'static str, port: i64 },
    #[error("path {0:?} is not a request path: start it with '/' and use only visible ASCII characters, e.g. \"/healthz\"")]
    HttpPath(String),
    #[error("status {0:?} is not a status code or range within 100-599: write e.g. \"200\" or \"200-399\"")]
    HttpStatus(String),
    #[error("{field} is {len} bytes: a health-check datagram holds at most {MAX_UDP_PAYLOAD}")]
    UdpPayload { field: &'static str, len: usize },
    #[error("{field} only applies to type \"{applies}\", not \"{kind}\": remove it or change the type")]
    NotForKind { field: &'static str, applies: &'static str, kind: &'static str },
}

impl HealthConfigError {
    /// The setting at fault, as [`CheckSettings`] names it (for a config error's field).
    pub fn field(&self) -> &'static str {
        match self {
            HealthConfigError::UnknownKind(_) => "type",
            HealthConfigError::Interval(_) => "interval_ms",
            HealthConfigError::TimeoutTooShort(_) | HealthConfigError::TimeoutNotShorter { .. } => {
                "timeout_ms"
            }
            HealthConfigError::Count { field, .. }
            | HealthConfigError::UdpPayload { field, .. }
            | HealthConfigError::NotForKind { field, .. } => field,
            HealthConfigError::Port { .. } => "port",
            HealthConfigError::HttpPath(_) => "path",
            HealthConfigError::HttpStatus(_) => "status",
        }
    }
}

impl CheckSpec {
    pub fn validate(&self) -> Result<(), HealthConfigError> {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            return Err(HealthConfigError::Interval(ms(self.interval)));
        }
        if self.timeout < Duration::from_millis(1) {
            return Err(HealthConfigError::TimeoutTooShort(ms(self.timeout)));
        }
        if self.timeout >= self.interval {
            return Err(HealthConfigError::TimeoutNotShorter {
                timeout: self.timeout.as_millis(),
                interval: self.interval.as_millis(),
            });
        }
        for (field, value) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=MAX_COUNT).contains(&value) {
                return Err(HealthConfigError::Count { field, value: value.into() });
            }
        }
        if self.kind != CheckKind::None && self.port == 0 {
            return Err(HealthConfigError::Port { kind: self.kind.name(), port: 0 });
        }
        match &self.kind {
            CheckKind::Http { path, status } => {
                if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(HealthConfigError::HttpPath(path.clone()));
                }
                if status.start() > status.end() || *status.start() < 100 || *status.end() > 599 {
                    return Err(HealthConfigError::HttpStatus(format!(
                        "{}-{}",
                        status.start(),
                        status.end()
                    )));
                }
            }
            CheckKind::Udp { send, expect } => {
                for (field, len) in [("send", send.len()), ("expect", expect.len())] {
                    if len > MAX_UDP_PAYLOAD {
                        return Err(HealthConfigError::UdpPayload { field, len });
                    }
                }
            }
            CheckKind::None | CheckKind::Tcp => {}
        }
        Ok(())
    }
}

/// A check as a config file (`[vip.health]`, `[vip.backend.health]`) or an API call writes it,
/// unvalidated. Every field is optional: [`CheckSettings::resolve`] fills in the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSettings {
    /// `none`, `tcp` (the default), `http` or `udp`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Default: the VIP's port.
    pub port: Option<i64>,
    pub interval_ms: Option<i64>,
    pub timeout_ms: Option<i64>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    /// http: the request path, default `/`.
    pub path: Option<String>,
    /// http: the healthy status codes, `"200"` or `"200-399"` (the default).
    pub status: Option<String>,
    /// udp: the datagram sent (UTF-8 text), default empty.
    pub send: Option<String>,
    /// udp: what the reply must contain, default empty (any reply).
    pub expect: Option<String>,
}

impl CheckSettings {
    /// These settings with every field `over` sets replaced: a backend's check over its VIP's
    /// default. Type-specific fields (path, status, send, expect) are only inherited when `over`
    /// keeps the type.
    pub fn overridden_by(&self, over: &CheckSettings) -> CheckSettings {
        let same_kind = over.kind.is_none() || over.kind == self.kind;
        let specific = |base: &Option<String>, o: &Option<String>| {
            o.clone().or_else(|| if same_kind { base.clone() } else { None })
        };
        CheckSettings {
            kind: over.kind.clone().or_else(|| self.kind.clone()),
            port: over.port.or(self.port),
            interval_ms: over.interval_ms.or(self.interval_ms),
            timeout_ms: over.timeout_ms.or(self.timeout_ms),
            rise: over.rise.or(self.rise),
            fall: over.fall.or(self.fall),
            path: specific(&self.path, &over.path),
            status: specific(&self.status, &over.status),
            send: specific(&self.send, &over.send),
            expect: specific(&self.expect, &over.expect),
        }
    }

    /// The validated check; `service_port` (the VIP's port) is the default port.
    pub fn resolve(&self, service_port: u16) -> Result<CheckSpec, HealthConfigError> {
        let defaults = CheckSpec::default();
        let name = self.kind.as_deref().unwrap_or("tcp");
        let not_for = |field: &'static str, applies: &'static str, kind: &'static str| {
            Err(HealthConfigError::NotForKind { field, applies, kind })
        };
        let kind = match name {
            "none" => CheckKind::None,
            "tcp" => CheckKind::Tcp,
            "http" => CheckKind::Http {
                path: self.path.clone().unwrap_or_else(|| "/".into()),
                status: match &self.status {
                    None => DEFAULT_STATUS,
                    Some(text) => parse_status(text)?,
                },
            },
            "udp" => CheckKind::Udp {
                send: self.send.clone().unwrap_or_default().into_bytes(),
                expect: self.expect.clone().unwrap_or_default().into_bytes(),
            },
            other => return Err(HealthConfigError::UnknownKind(other.into())),
        };
        let kind_name = kind.name();
        if !matches!(kind, CheckKind::Http { .. }) {
            if self.path.is_some() {
                return not_for("path", "http", kind_name);
            }
            if self.status.is_some() {
                return not_for("status", "http", kind_name);
            }
        }
        if !matches!(kind, CheckKind::Udp { .. }) {
            if self.send.is_some() {
                return not_for("send", "udp", kind_name);
            }
            if self.expect.is_some() {
                return not_for("expect", "udp", kind_name);
            }
        }
        let port = match self.port {
            None => service_port,
            Some(p) => u16::try_from(p).map_err(|_| HealthConfigError::Port { kind: kind_name, port: p })?,
        };
        let millis = |v: Option<i64>, default: Duration, err: fn(i64) -> HealthConfigError| match v {
            None => Ok(default),
            Some(ms) => u64::try_from(ms).map(Duration::from_millis).map_err(|_| err(ms)),
        };
        let count = |v: Option<i64>, default: u32, field: &'static str| match v {
            None => Ok(default),
            Some(n) => u32::try_from(n).map_err(|_| HealthConfigError::Count { field, value: n }),
        };
        let spec = CheckSpec {
            kind,
            port,
            interval: millis(self.interval_ms, defaults.interval, HealthConfigError::Interval)?,
            timeout: millis(self.timeout_ms, defaults.timeout, HealthConfigError::TimeoutTooShort)?,
            rise: count(self.rise, defaults.rise, "rise")?,
            fall: count(self.fall, defaults.fall, "fall")?,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// `"200"` or `"200-399"`; validated against 100-599 by [`CheckSpec::validate`].
fn parse_status(text: &str) -> Result<RangeInclusive<u16>, HealthConfigError> {
    let bad = || HealthConfigError::HttpStatus(text.into());
    let code = |s: &str| s.trim().parse::<u16>().map_err(|_| bad());
    let range = match text.split_once('-') {
        Some((lo, hi)) => code(lo)?..=code(hi)?,
        None => code(text).map(|c| c..=c)?,
    };
    if range.start() > range.end() || *range.start() < 100 || *range.end() > 599 {
        return Err(bad());
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp() -> CheckSpec {
        CheckSpec { kind: CheckKind::Tcp, port: 80, ..CheckSpec::default() }
    }

    fn error(spec: CheckSpec) -> String {
        spec.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        tcp().validate().unwrap();
        CheckSpec::default().validate().unwrap();
        let s = CheckSettings::default().resolve(80).unwrap();
        assert_eq!(s, tcp());
    }

    #[test]
    fn impossible_specs_are_refused_with_what_to_do() {
        let ms = Duration::from_millis;
        let e = error(CheckSpec { timeout: ms(1000), ..tcp() });
        assert_eq!(
            e,
            "timeout 1000 ms must be shorter than interval 1000 ms: lower the timeout or raise the interval"
        );
        assert!(error(CheckSpec { timeout: ms(2000), ..tcp() }).contains("must be shorter than interval"));
        assert!(error(CheckSpec { timeout: ms(0), ..tcp() }).contains("use at least 1 ms"));
        assert_eq!(
            error(CheckSpec { interval: ms(50), timeout: ms(10), ..tcp() }),
            "interval 50 ms is out of range: use 100 ms to 3600000 ms (1 h)"
        );
        assert!(error(CheckSpec { interval: ms(3_600_001), ..tcp() }).contains("out of range"));
        assert_eq!(
            error(CheckSpec { rise: 0, ..tcp() }),
            "rise 0 is out of range: use 1 to 100 consecutive results"
        );
        assert!(error(CheckSpec { fall: 0, ..tcp() }).starts_with("fall 0 is out of range"));
        assert!(error(CheckSpec { fall: 101, ..tcp() }).starts_with("fall 101 is out of range"));
        assert!(error(CheckSpec { port: 0, ..tcp() }).starts_with("port 0 cannot be probed by a tcp check"));
        let http =
            |path: &str, status| CheckSpec { kind: CheckKind::Http { path: path.into(), status }, ..tcp() };
        http("/healthz", DEFAULT_STATUS).validate().unwrap();
        assert!(error(http("healthz", DEFAULT_STATUS)).starts_with("path \"healthz\" is not a request path"));
        assert!(error(http("/a b", DEFAULT_STATUS)).contains("visible ASCII"));
        assert!(error(http("/x\r\nX: 1", DEFAULT_STATUS)).contains("is not a request path"));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 399..=200;
        assert!(error(http("/", reversed)).starts_with("status \"399-200\""));
        assert!(error(http("/", 200..=600)).contains("within 100-599"));
        let udp = CheckSpec {
            kind: CheckKind::Udp { send: vec![0; MAX_UDP_PAYLOAD + 1], expect: vec![] },
            ..tcp()
        };
        assert_eq!(error(udp), "send is 1201 bytes: a health-check datagram holds at most 1200");
        // A check that probes nothing needs no port.
        CheckSpec { port: 0, ..CheckSpec::default() }.validate().unwrap();
    }

    fn settings(toml_text: &str) -> CheckSettings {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn settings_resolve_with_defaults_and_refuse_bad_input() {
        let s = settings(
            "type = \"http\"\npath = \"/healthz\"\nstatus = \"200-299\"\ninterval_ms = 2000\nrise = 1",
        );
        assert_eq!(
            s.resolve(8080).unwrap(),
            CheckSpec {
                kind: CheckKind::Http { path: "/healthz".into(), status: 200..=299 },
                port: 8080,
                interval: Duration::from_secs(2),
                rise: 1,
                ..CheckSpec::default()
            }
        );
        let s = settings("type = \"udp\"\nport = 53\nsend = \"ping\"\nexpect = \"pong\"");
        let spec = s.resolve(0).unwrap();
        assert_eq!(spec.kind, CheckKind::Udp { send: b"ping".to_vec(), expect: b"pong".to_vec() });
        assert_eq!(spec.port, 53);
        assert_eq!(settings("type = \"none\"").resolve(0).unwrap().kind, CheckKind::None);

        let err = |text: &str, port| settings(text).resolve(port).unwrap_err();
        let e = err("type = \"icmp\"", 80);
        assert_eq!(e.to_string(), "unknown check type \"icmp\": use none, tcp, http or udp");
        assert_eq!(e.field(), "type");
        let e = err("timeout_ms = 1000\ninterval_ms = 1000", 80);
        assert_eq!(e.field(), "timeout_ms");
        assert!(e.to_string().starts_with("timeout 1000 ms must be shorter than interval 1000 ms"));
        assert_eq!(err("rise = 0", 80).field(), "rise");
        assert_eq!(
            err("fall = -1", 80).to_string(),
            "fall -1 is out of range: use 1 to 100 consecutive results"
        );
        assert_eq!(err("interval_ms = -5", 80).field(), "interval_ms");
        assert_eq!(err("type = \"tcp\"", 0).field(), "port");
        assert!(err("port = 70000", 80).to_string().starts_with("port 70000 cannot be probed"));
        assert_eq!(
            err("type = \"tcp\"\npath = \"/\"", 80).to_string(),
            "path only applies to type \"http\", not \"tcp\": remove it or change the type"
        );
        assert_eq!(err("type = \"http\"\nexpect = \"x\"", 80).field(), "expect");
        assert_eq!(err("type = \"http\"\nstatus = \"2xx\"", 80).field(), "status");
        assert_eq!(err("type = \"http\"\nstatus = \"99\"", 80).field(), "status");
        assert!(toml::from_str::<CheckSettings>("kind = \"tcp\"").is_err(), "unknown keys are refused");
    }

    #[test]
    fn backend_settings_override_the_vip_default() {
        let vip = settings("type = \"http\"\npath = \"/healthz\"\nfall = 5");
        let same = vip.overridden_by(&settings("rise = 4"));
        let spec = same.resolve(80).unwrap();
        assert_eq!((spec.rise, spec.fall), (4, 5));
        assert_eq!(spec.kind, CheckKind::Http { path: "/healthz".into(), status: DEFAULT_STATUS });
        // Another type drops the VIP's http-only settings instead of refusing them.
        let other = vip.overridden_by(&settings("type = \"tcp\""));
        assert_eq!(other.resolve(80).unwrap(), CheckSpec { fall: 5, ..tcp() });
    }
}
