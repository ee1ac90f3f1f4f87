//! The declarative configuration: TOML (file) or JSON (API) in, a validated [`Config`] or
//! [`Vip`] out. Everything is checked as a whole before anything changes; an error names the
//! file, line and field, and says what to do.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    datapath::Mode,
    health::{CheckSettings, CheckSpec, HealthConfigError},
    maglev,
    security::{self, Prefix, RateLimits, Security},
};

pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";
pub const DEFAULT_API_SOCKET: &str = "/run/lbd/lbd.sock";
pub const DEFAULT_STATE_FILE: &str = "/var/lib/lbd/state.json";
pub const MAX_WEIGHT: u32 = 65_535;
/// Largest ring (and ring stride) the agent accepts: 2^20 slots, 4 MiB a ring.
pub const MAX_RING_SIZE: u32 = 1 << 20;
pub const DEFAULT_WEIGHT: u32 = 100;

/// One invalid value. `line` is known for files, not for API calls.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{}{field}: {message}", location(.origin, .line))]
pub struct Invalid {
    pub origin: Option<String>,
    pub line: Option<usize>,
    /// Where the value sits, e.g. `vip "web" backend 198.18.0.11: weight`.
    pub field: String,
    pub message: String,
}

fn location(origin: &Option<String>, line: &Option<usize>) -> String {
    match (origin, line) {
        (Some(o), Some(l)) => format!("{o}:{l}: "),
        (Some(o), None) => format!("{o}: "),
        _ => String::new(),
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { origin: None, line: None, field: field.into(), message: message.into() }
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }
}

/// How packets reach the backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// IPv4-in-IPv4 / IPv6-in-IPv6; backends decapsulate (the `decap` program or ipip devices).
    #[default]
    Ipip,
    /// MAC rewrite only; backends on the balancer's L2 segment with the VIP on `lo`.
    L2dsr,
}

/// What picks a new flow's backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum HashMode {
    /// Source and destination address and port, protocol.
    #[default]
    #[serde(rename = "5-tuple")]
    #[value(name = "5-tuple")]
    FiveTuple,
    /// The client address only: one client, one backend.
    #[serde(rename = "source")]
    Source,
}

/// What picks a new flow's backend (only a flow's first packet asks: the flow table keeps the
/// rest of the flow on it). See docs/schedulers.md.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// Weighted consistent hash of the 5-tuple: the same answer on every balancer host.
    #[default]
    Maglev,
    /// Weighted consistent hash of the client address: one client, one backend.
    SourceHash,
    /// Weighted round robin over new flows (exact shares per CPU).
    RoundRobin,
    /// Weighted least connections (TCP): the less loaded of two ring picks.
    LeastConn,
}

impl Scheduler {
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Maglev => "maglev",
            Scheduler::SourceHash => "source-hash",
            Scheduler::RoundRobin => "round-robin",
            Scheduler::LeastConn => "least-conn",
        }
    }
}

/// A backend as written in the config or an API call (unvalidated).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub address: String,
    pub weight: Option<i64>,
    #[serde(default)]
    pub drained: bool,
    /// Overrides fields of the VIP's check for this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<CheckSettings>,
}

/// A VIP as written in the config or an API call (unvalidated).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSpec {
    pub name: String,
    pub address: String,
    pub port: i64,
    pub protocol: Protocol,
    #[serde(default)]
    pub mode: ForwardMode,
    /// The older spelling of `scheduler = "source-hash"` (`hash = "source"`).
    #[serde(default)]
    pub hash: HashMode,
    /// Default: `maglev` (or `source-hash` with `hash = "source"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<Scheduler>,
    pub ring_size: Option<i64>,
    /// The health check of the VIP's backends; none if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<CheckSettings>,
    /// What a VIP whose backends are all down does with new flows.
    #[serde(default)]
    pub all_down: AllDown,
    /// What happens to a backend's flows when its health check fails.
    #[serde(default)]
    pub on_down: OnDown,
    /// When this host announces the VIP (with `[announce]`).
    #[serde(default)]
    pub announce: Announce,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendSpec>,
    /// Source prefixes allowed (absent: every source) and denied: see docs/data-plane.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Rate limits (absent: none, and no per-source counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RateLimits>,
}

/// When a balancer host announces a VIP to its routers (only with `[announce]`; see
/// docs/ecmp-bird.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Announce {
    /// While at least one backend takes new flows (not drained, weight > 0, not down): a VIP
    /// whose backends are all out is withdrawn, so the routers send its clients to hosts that
    /// have one.
    #[default]
    Healthy,
    /// Whatever its backends' health (a host drain still withdraws it).
    Always,
    /// Never: the VIP is served only to what reaches this host by other routes.
    Never,
}

impl Announce {
    pub fn name(self) -> &'static str {
        match self {
            Announce::Healthy => "healthy",
            Announce::Always => "always",
            Announce::Never => "never",
        }
    }
}

/// New flows of a VIP whose backends are all down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AllDown {
    /// Fail open: new flows spread over every backend in service (not drained, weight > 0), as
    /// if none were down. A health check that fails everywhere at once is more likely broken
    /// itself, or the network towards the checks, than every backend dead. `keep-last-ring` is
    /// the older spelling.
    #[default]
    #[serde(alias = "keep-last-ring")]
    #[value(alias = "keep-last-ring")]
    FailOpen,
    /// Drop new flows (fail closed).
    Drop,
}

/// A down backend's existing flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OnDown {
    /// They continue: a backend failing its check may still serve its open connections.
    #[default]
    KeepFlows,
    /// They are removed from the flow table: their next packets pick a healthy backend (and
    /// the client sees a reset).
    ResetFlows,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub address: IpAddr,
    pub weight: u32,
    /// No new flows; existing flows continue. Keeps its weight for when it is undrained.
    pub drained: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<CheckSettings>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vip {
    pub name: String,
    pub address: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: Protocol,
    pub mode: ForwardMode,
    /// `Source` exactly when `scheduler` is `SourceHash` (kept for saved states of older lbd).
    pub hash: HashMode,
    #[serde(default)]
    pub scheduler: Scheduler,
    pub ring_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<CheckSettings>,
    #[serde(default)]
    pub all_down: AllDown,
    #[serde(default)]
    pub on_down: OnDown,
    /// Saved by an lbd without announcements: `healthy`.
    #[serde(default)]
    pub announce: Announce,
    pub backends: Vec<Backend>,
    /// Sources allowed (empty: every source) and denied (docs/data-plane.md, "Access lists").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Prefix>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Prefix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RateLimits>,
}

impl Vip {
    /// The check of backend `b`: the VIP's, with the backend's own fields over it; `None` when
    /// neither sets one (no check: the backend counts as up).
    pub fn check_of(&self, b: &Backend) -> Option<Result<CheckSpec, HealthConfigError>> {
        let settings = match (&self.health, &b.health) {
            (None, None) => return None,
            (Some(v), None) => v.clone(),
            (None, Some(o)) => o.clone(),
            (Some(v), Some(o)) => v.overridden_by(o),
        };
        Some(settings.resolve(self.port))
    }

    /// `address:port/protocol`, the way operators write a service.
    pub fn service(&self) -> String {
        let port = if self.port == 0 { "*".to_string() } else { self.port.to_string() };
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        match self.address {
            IpAddr::V4(a) => format!("{a}:{port}/{proto}"),
            IpAddr::V6(a) => format!("[{a}]:{port}/{proto}"),
        }
    }

    pub fn backend(&self, address: IpAddr) -> Option<&Backend> {
        self.backends.iter().find(|b| b.address == address)
    }

    /// The VIP as an older lbd saved it (`hash = "source"`, no scheduler) made consistent.
    pub fn normalize(&mut self) {
        if self.hash == HashMode::Source && self.scheduler == Scheduler::Maglev {
            self.scheduler = Scheduler::SourceHash;
        }
        if self.scheduler == Scheduler::SourceHash {
            self.hash = HashMode::Source;
        }
    }
}

/// Outer source addresses and the flow hash seed (see docs/configuration.md, "[source]").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default)]
    pub ipv4_entropy_bits: u8,
    #[serde(default)]
    pub ipv6_entropy_bits: u8,
    /// The same on every balancer host behind one ECMP group.
    #[serde(default)]
    pub hash_seed: u32,
}

/// Map sizes chosen when the programs are first loaded (changing them needs a fresh pin path).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_vips: u32,
    pub max_ring_size: u32,
    pub max_backends: u32,
    /// Flows the table (FLOW_TABLE) holds, all CPUs together, confirmed or not; rounded up to a
    /// multiple of `lb_common::FLOW_WAYS`. `None`: the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flows: Option<u32>,
    /// A CPU's share instead (what older configs said): `flows` = this × possible CPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flows_per_cpu: Option<u32>,
    /// No longer used (one table holds unconfirmed and confirmed flows): accepted so that older
    /// configs load, with a warning ([`Limits::unused_key_warnings`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_flows: Option<u32>,
    /// No longer used, as `pending_flows`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_flows_per_cpu: Option<u32>,
    /// No longer used (there is no flow cache), as `pending_flows`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_cache_slots: Option<u32>,
}

/// The most VIPs `limits.max_vips` may ask for (RINGS holds a ring of up to
/// `max_ring_size` slots for each).
pub const MAX_VIPS: u32 = 4096;
// A flow entry keeps its VIP's id in 16 bits (`FlowEntry::vip`).
const _: () = assert!(MAX_VIPS <= 1 << 16);

impl Default for Limits {
    fn default() -> Self {
        let d = crate::datapath::Sizes::default();
        Limits {
            max_vips: d.max_rings,
            max_ring_size: d.ring_stride,
            max_backends: d.max_backends,
            flows: None,
            flows_per_cpu: None,
            pending_flows: None,
            pending_flows_per_cpu: None,
            flow_cache_slots: None,
        }
    }
}

impl Limits {
    /// The flow table's entries on a host with `cpus` possible CPUs: `flows` (or
    /// `flows_per_cpu` × `cpus`), rounded up to whole sets.
    pub fn flows(&self, cpus: u32) -> u32 {
        let wanted = match self.flows_per_cpu {
            Some(per_cpu) => per_cpu.saturating_mul(cpus.max(1)),
            None => self.flows.unwrap_or(lb_common::limits::FLOWS),
        };
        wanted.checked_next_multiple_of(lb_common::FLOW_WAYS).unwrap_or(wanted)
    }

    /// The map sizes on a host with `cpus` possible CPUs.
    pub fn sizes(&self, cpus: u32) -> crate::datapath::Sizes {
        crate::datapath::Sizes {
            flows: self.flows(cpus),
            // A VIP's id is its ring's number.
            max_vips: self.max_vips,
            max_rings: self.max_vips,
            ring_stride: self.max_ring_size,
            max_backends: self.max_backends,
        }
    }

    /// One warning for each key set that no longer does anything (lbd logs them at start).
    pub fn unused_key_warnings(&self) -> Vec<String> {
        const ONE_TABLE: &str =
            "one flow table holds unconfirmed and confirmed flows, sized by limits.flows; remove the key";
        const NO_CACHE: &str =
            "there is no flow cache (a known flow is found in one set of the flow table); remove the key";
        [
            ("pending_flows", self.pending_flows, ONE_TABLE),
            ("pending_flows_per_cpu", self.pending_flows_per_cpu, ONE_TABLE),
            ("flow_cache_slots", self.flow_cache_slots, NO_CACHE),
        ]
        .into_iter()
        .filter(|(_, value, _)| value.is_some())
        .map(|(key, _, why)| format!("limits.{key} is no longer used: {why}"))
        .collect()
    }

    /// These limits without the keys that no longer do anything: what a running agent compares
    /// (taking such a key out of the file changes nothing).
    pub fn in_effect(&self) -> Limits {
        Limits { pending_flows: None, pending_flows_per_cpu: None, flow_cache_slots: None, ..self.clone() }
    }
}

/// What lbd does about the host's own settings the balancer depends on (`[host]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostSettings {
    /// Forwarding off on an attached interface for a family the VIPs use: `enable` turns it on
    /// (logged), `check` refuses the config with the sysctls to set.
    pub forwarding: crate::host::forwarding::Policy,
}

/// `[announce]`: lbd keeps a host route for each VIP this host announces in a kernel table that
/// BIRD learns and announces over BGP (docs/ecmp-bird.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnnounceSettings {
    /// The kernel routing table of the VIP routes (no `ip rule` should point at it).
    pub table: u32,
    /// The route protocol that marks lbd's routes: lbd owns every route of the table marked so.
    pub protocol: u8,
    /// BIRD's control socket, read for status (a restricted session: lbd can change nothing).
    pub bird_socket: Option<PathBuf>,
    /// On SIGTERM or SIGINT: withdraw every VIP, keep forwarding this long, then stop.
    pub drain_seconds: u64,
}

pub const DEFAULT_ANNOUNCE_TABLE: u32 = 4242;
pub const DEFAULT_ANNOUNCE_PROTOCOL: u8 = 242;
/// The longest `announce.drain_seconds` lbd takes.
pub const MAX_DRAIN_SECONDS: u64 = 3600;

impl Default for AnnounceSettings {
    fn default() -> Self {
        AnnounceSettings {
            table: DEFAULT_ANNOUNCE_TABLE,
            protocol: DEFAULT_ANNOUNCE_PROTOCOL,
            bird_socket: None,
            drain_seconds: 30,
        }
    }
}

fn check_announce(a: &AnnounceSettings) -> Result<(), Invalid> {
    // 0: unspecified; 253, 254, 255: the kernel's default, main and local tables.
    if matches!(a.table, 0 | 253..=255) {
        return Err(invalid(
            "announce.table",
            format!("{} is a table the kernel routes with: use a table of its own that no `ip rule` points at (4242 is the default)", a.table),
        ));
    }
    // 0 to 4: unspecified, redirect, kernel, boot, static: lbd would delete routes it did not make.
    if a.protocol < 5 {
        return Err(invalid(
            "announce.protocol",
            format!("{} marks routes of the kernel or of `ip route` (0 to 4): use a number no other program uses (242 is the default)", a.protocol),
        ));
    }
    if a.drain_seconds > MAX_DRAIN_SECONDS {
        return Err(invalid(
            "announce.drain_seconds",
            format!(
                "{} is more than {MAX_DRAIN_SECONDS}: routers move traffic within seconds",
                a.drain_seconds
            ),
        ));
    }
    Ok(())
}

/// The agent's whole configuration, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub pin_path: PathBuf,
    pub api_socket: PathBuf,
    pub state_file: PathBuf,
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub source: Source,
    pub limits: Limits,
    #[serde(default)]
    pub host: HostSettings,
    /// The global deny list (`[security]`).
    #[serde(default)]
    pub security: Security,
    pub vips: Vec<Vip>,
    /// Where lbd serves Prometheus metrics (`GET /metrics`); `None`: no endpoint.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// The token that lets the status page act (drain, undrain, weights); `None`: read-only.
    /// Never serialized (nor shown by `Debug`).
    #[serde(skip)]
    pub web_admin_token: Option<crate::web::auth::AdminToken>,
    /// VIP announcements; `None`: lbd announces nothing.
    #[serde(default)]
    pub announce: Option<AnnounceSettings>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    #[default]
    Native,
    /// Only for drivers without native XDP: much slower.
    Generic,
}

impl From<Mode> for XdpMode {
    fn from(m: Mode) -> XdpMode {
        match m {
            Mode::Native => XdpMode::Native,
            Mode::Generic => XdpMode::Generic,
        }
    }
}

impl From<XdpMode> for Mode {
    fn from(m: XdpMode) -> Mode {
        match m {
            XdpMode::Native => Mode::Native,
            XdpMode::Generic => Mode::Generic,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    pin_path: Option<PathBuf>,
    api_socket: Option<PathBuf>,
    state_file: Option<PathBuf>,
    interfaces: Vec<String>,
    #[serde(default)]
    xdp_mode: XdpMode,
    #[serde(default)]
    source: Source,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    host: HostSettings,
    #[serde(default)]
    vip: Vec<toml::Spanned<VipSpec>>,
    metrics: Option<toml::Spanned<String>>,
    web_admin_token: Option<toml::Spanned<String>>,
    announce: Option<AnnounceSettings>,
    #[serde(default)]
    security: RawSecurity,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    #[serde(default)]
    deny: Vec<toml::Spanned<String>>,
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, Invalid> {
    let (text, origin) = read(path)?;
    parse(&text, &origin)
}

/// A config file's text and its name for errors; an unreadable file is an [`Invalid`] `file`.
pub fn read(path: &Path) -> Result<(String, String), Invalid> {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, origin)),
        Err(e) => Err(Invalid {
            origin: Some(origin),
            line: None,
            field: "file".into(),
            message: format!("cannot read it: {e}"),
        }),
    }
}

/// Parses and validates config text; `origin` names it in errors (a file name).
pub fn parse(text: &str, origin: &str) -> Result<Config, Invalid> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let at = |line: Option<usize>, e: Invalid| Invalid {
        origin: Some(origin.to_owned()),
        line: e.line.or(line),
        ..e
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(s.start));
        at(line, invalid("syntax", e.message().trim()))
    })?;
    let limits = raw.limits;
    check_limits(&limits).map_err(|e| at(None, e))?;
    if raw.interfaces.is_empty() {
        return Err(at(None, invalid("interfaces", "name at least one interface to attach the balancer to")));
    }
    let metrics = match &raw.metrics {
        None => None,
        Some(m) => Some(metrics_address(m.get_ref()).map_err(|e| at(Some(line_of(m.span().start)), e))?),
    };
    let web_admin_token = match &raw.web_admin_token {
        None => None,
        Some(t) => {
            let at_token = |e| at(Some(line_of(t.span().start)), e);
            let token = crate::web::auth::AdminToken::new(t.get_ref()).map_err(at_token)?;
            if metrics.is_none() {
                return Err(at_token(invalid(
                    "web_admin_token",
                    "is set but `metrics` is not: the status page and its actions are served on the metrics listener; set metrics too, or remove the token",
                )));
            }
            Some(token)
        }
    };
    if let Some(a) = &raw.announce {
        check_announce(a).map_err(|e| at(None, e))?;
    }
    let mut security = Security::default();
    for (i, spanned) in raw.security.deny.iter().enumerate() {
        let prefix: Prefix = spanned.get_ref().parse().map_err(|e: String| {
            at(Some(line_of(spanned.span().start)), invalid(format!("security.deny[{i}]"), e))
        })?;
        if security.deny.contains(&prefix) {
            let e = invalid(format!("security.deny[{i}]"), format!("{prefix} is listed twice"));
            return Err(at(Some(line_of(spanned.span().start)), e));
        }
        security.deny.push(prefix);
    }
    let mut vips = Vec::new();
    for spanned in &raw.vip {
        let line = line_of(spanned.span().start);
        vips.push(validate_vip(spanned.get_ref(), &limits).map_err(|e| at(Some(line), e))?);
    }
    let config = Config {
        pin_path: raw.pin_path.unwrap_or_else(|| DEFAULT_PIN_PATH.into()),
        api_socket: raw.api_socket.unwrap_or_else(|| DEFAULT_API_SOCKET.into()),
        state_file: raw.state_file.unwrap_or_else(|| DEFAULT_STATE_FILE.into()),
        interfaces: raw.interfaces,
        xdp_mode: raw.xdp_mode,
        source: raw.source,
        limits,
        host: raw.host,
        security,
        vips,
        metrics,
        web_admin_token,
        announce: raw.announce,
    };
    check_whole(&config).map_err(|e| {
        let line = e.vip.as_ref().and_then(|name| {
            raw.vip.iter().find(|v| &v.get_ref().name == name).map(|v| line_of(v.span().start))
        });
        at(line, e.invalid)
    })?;
    Ok(config)
}

/// The metrics endpoint's address: an IP address and a port, e.g. `127.0.0.1:9100`.
fn metrics_address(text: &str) -> Result<SocketAddr, Invalid> {
    let address: SocketAddr = text.parse().map_err(|_| {
        invalid(
            "metrics",
            format!("{text:?} is not an address and port: write e.g. \"127.0.0.1:9100\" or \"[::1]:9100\""),
        )
    })?;
    if address.port() == 0 {
        return Err(invalid("metrics", format!("{text:?} has port 0: use a port from 1 to 65535")));
    }
    Ok(address)
}

fn check_limits(l: &Limits) -> Result<(), Invalid> {
    if l.max_vips == 0 || l.max_vips > MAX_VIPS {
        return Err(invalid(
            "limits.max_vips",
            format!("{} is out of range: use 1 to {MAX_VIPS} (a flow entry keeps its VIP's id in 16 bits, and each VIP reserves a ring of max_ring_size slots)", l.max_vips),
        ));
    }
    if !maglev::is_prime(l.max_ring_size) || l.max_ring_size > MAX_RING_SIZE {
        return Err(invalid(
            "limits.max_ring_size",
            format!("must be a prime up to {} (65537 and 131071 are)", MAX_RING_SIZE),
        ));
    }
    if l.max_backends < 2 || l.max_backends > 1 << 20 {
        return Err(invalid("limits.max_backends", "must be 2 to 1048576"));
    }
    if l.flows.is_some() && l.flows_per_cpu.is_some() {
        return Err(invalid(
            "limits.flows_per_cpu",
            "set limits.flows (all CPUs together) or limits.flows_per_cpu, not both",
        ));
    }
    let max = lb_common::limits::MAX_FLOWS;
    for (key, value) in [("flows", l.flows), ("flows_per_cpu", l.flows_per_cpu)] {
        if let Some(n) = value.filter(|n| !(1024..=max).contains(n)) {
            return Err(invalid(format!("limits.{key}"), format!("{n} is out of range: use 1024 to {max}")));
        }
    }
    Ok(())
}

/// Validates one VIP on its own (names, addresses, ranges, family mix, ring size).
pub fn validate_vip(spec: &VipSpec, limits: &Limits) -> Result<Vip, Invalid> {
    let name = spec.name.as_str();
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(invalid(
            "vip: name",
            format!("{name:?} is not a valid name: use 1 to 64 letters, digits, '-', '_' or '.'"),
        ));
    }
    let field = |f: &str| format!("vip {name:?}: {f}");
    let address: IpAddr = spec.address.parse().map_err(|_| {
        invalid(field("address"), format!("{:?} is not an IPv4 or IPv6 address", spec.address))
    })?;
    if let Some(problem) = not_a_host(address) {
        return Err(invalid(field("address"), format!("{address} cannot be a VIP: {problem}")));
    }
    let port = u16::try_from(spec.port).map_err(|_| {
        invalid(field("port"), format!("{} is not a port: use 1 to 65535, or 0 for every port", spec.port))
    })?;
    let mut backends: Vec<Backend> = Vec::new();
    for b in &spec.backends {
        let backend = validate_backend(b, address)
            .map_err(|e| Invalid { field: format!("vip {name:?}: {}", e.field), ..e })?;
        if backends.iter().any(|x| x.address == backend.address) {
            return Err(invalid(field("backend"), format!("{} is listed twice", backend.address)));
        }
        backends.push(backend);
    }
    let ring_size = match spec.ring_size {
        None => {
            maglev::min_table_size(backends.len()).max(lb_common::limits::RING_SIZE).min(limits.max_ring_size)
        }
        Some(n) => {
            u32::try_from(n).map_err(|_| invalid(field("ring_size"), format!("{n} is not a ring size")))?
        }
    };
    maglev::check_table_size(ring_size, backends.len())
        .map_err(|e| invalid(field("ring_size"), e.to_string()))?;
    if ring_size > limits.max_ring_size {
        return Err(invalid(
            field("ring_size"),
            format!("{ring_size} is larger than limits.max_ring_size ({})", limits.max_ring_size),
        ));
    }
    let scheduler = match (spec.scheduler, spec.hash) {
        (None | Some(Scheduler::Maglev), HashMode::Source) | (Some(Scheduler::SourceHash), _) => {
            Scheduler::SourceHash
        }
        (None, HashMode::FiveTuple) => Scheduler::Maglev,
        (Some(s), HashMode::FiveTuple) => s,
        (Some(s), HashMode::Source) => {
            return Err(invalid(
                field("hash"),
                format!(
                    "hash = \"source\" is the older spelling of scheduler = \"source-hash\" and does not go with scheduler = \"{}\": remove one of them",
                    s.name()
                ),
            ))
        }
    };
    let list = |key: &str, list: &[String]| {
        security::parse_list(key, list, Some(address)).map_err(|(f, m)| invalid(field(&f), m))
    };
    let (allow, deny) = (list("allow", &spec.allow)?, list("deny", &spec.deny)?);
    if let Some(both) = allow.iter().find(|p| deny.contains(p)) {
        return Err(invalid(
            field("deny"),
            format!("{both} is in both allow and deny: keep it in one (the longer prefix wins between them)"),
        ));
    }
    if let Some(limits) = &spec.limits {
        security::check_limits(limits, address).map_err(|(f, m)| invalid(field(&f), m))?;
    }
    let hash = if scheduler == Scheduler::SourceHash { HashMode::Source } else { HashMode::FiveTuple };
    let vip = Vip {
        name: name.to_owned(),
        address,
        port,
        protocol: spec.protocol,
        mode: spec.mode,
        hash,
        scheduler,
        ring_size,
        health: spec.health.clone(),
        all_down: spec.all_down,
        on_down: spec.on_down,
        announce: spec.announce,
        backends,
        allow,
        deny,
        limits: spec.limits.clone(),
    };
    check_health(&vip)?;
    check_scheduler(&vip)?;
    Ok(vip)
}

/// What a VIP's scheduler needs: least-conn counts TCP connections (UDP flows have no end the
/// balancer sees); a round-robin sequence holds at most `RR_SEQ_LEN` backends.
pub fn check_scheduler(vip: &Vip) -> Result<(), Invalid> {
    let field = format!("vip {:?}: scheduler", vip.name);
    match vip.scheduler {
        Scheduler::LeastConn if vip.protocol != Protocol::Tcp => Err(invalid(
            field,
            "least-conn counts TCP connections (a UDP flow has no end the balancer sees): use it on a tcp VIP, or round-robin or maglev here",
        )),
        Scheduler::RoundRobin if vip.backends.len() > lb_common::limits::RR_SEQ_LEN as usize => {
            Err(invalid(
                field,
                format!(
                    "round-robin takes at most {} backends; this VIP has {}: use maglev",
                    lb_common::limits::RR_SEQ_LEN,
                    vip.backends.len()
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Every backend's effective check must be possible.
pub fn check_health(vip: &Vip) -> Result<(), Invalid> {
    let name = &vip.name;
    if let Some(settings) = &vip.health {
        settings
            .resolve(vip.port)
            .map_err(|e| invalid(format!("vip {name:?}: health.{}", e.field()), e.to_string()))?;
    }
    for b in &vip.backends {
        if let Some(Err(e)) = vip.check_of(b) {
            return Err(invalid(
                format!("vip {name:?}: backend {}: health.{}", b.address, e.field()),
                e.to_string(),
            ));
        }
    }
    Ok(())
}

/// Validates one backend of a VIP at `vip_address`.
pub fn validate_backend(spec: &BackendSpec, vip_address: IpAddr) -> Result<Backend, Invalid> {
    let address: IpAddr = spec.address.parse().map_err(|_| {
        invalid("backend: address", format!("{:?} is not an IPv4 or IPv6 address", spec.address))
    })?;
    let field = |f: &str| format!("backend {address}: {f}");
    if address.is_ipv4() != vip_address.is_ipv4() {
        return Err(invalid(
            field("address"),
            format!("the VIP {vip_address} is {}; its backends must be too", family_name(vip_address)),
        ));
    }
    if let Some(problem) = not_a_host(address) {
        return Err(invalid(field("address"), format!("{address} cannot be a backend: {problem}")));
    }
    let weight = spec.weight.unwrap_or(DEFAULT_WEIGHT as i64);
    if !(0..=MAX_WEIGHT as i64).contains(&weight) {
        return Err(invalid(field("weight"), format!("{weight} is out of range: use 0 to {MAX_WEIGHT}")));
    }
    Ok(Backend { address, weight: weight as u32, drained: spec.drained, health: spec.health.clone() })
}

/// Why `a` cannot be a VIP, a backend or a tunnel's source: it names no single host that
/// others on the network reach (None: it does).
pub fn not_a_host(a: IpAddr) -> Option<String> {
    let problem = match a {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            return Some(format!(
                "an IPv4-mapped IPv6 address is an IPv4 host's: write it as {}",
                a.to_canonical()
            ))
        }
        _ if a.is_unspecified() => "the unspecified address names no host",
        _ if a.is_loopback() => "a loopback address is this host's own, not one the network reaches",
        _ if a.is_multicast() => "a multicast address names a group, not a host",
        IpAddr::V4(v4) if v4.is_broadcast() => "the broadcast address names no host",
        _ => return None,
    };
    Some(format!("{problem}; use a unicast address"))
}

fn family_name(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// An error found across VIPs, with the VIP it is about (for a line number).
pub struct WholeError {
    pub vip: Option<String>,
    pub invalid: Invalid,
}

/// Checks what no single VIP shows: unique names and services, room in the maps, and a tunnel
/// source for every family an `ipip` VIP uses.
pub fn check_whole(c: &Config) -> Result<(), WholeError> {
    let mut names = BTreeSet::new();
    let mut services = BTreeSet::new();
    for v in &c.vips {
        let err = |f: &str, m: String| WholeError {
            vip: Some(v.name.clone()),
            invalid: invalid(format!("vip {:?}: {f}", v.name), m),
        };
        if !names.insert(v.name.as_str()) {
            return Err(err("name", format!("another VIP is already named {:?}", v.name)));
        }
        if !services.insert((v.address, v.port, v.protocol)) {
            return Err(err("address", format!("another VIP already serves {}", v.service())));
        }
        // Backends added one by one can outgrow what the scheduler takes, or bring a check of
        // their own.
        if v.ring_size > c.limits.max_ring_size {
            return Err(err(
                "ring_size",
                format!("{} is larger than limits.max_ring_size ({})", v.ring_size, c.limits.max_ring_size),
            ));
        }
        check_scheduler(v).map_err(|invalid| WholeError { vip: Some(v.name.clone()), invalid })?;
        check_health(v).map_err(|invalid| WholeError { vip: Some(v.name.clone()), invalid })?;
        if v.mode == ForwardMode::Ipip {
            let missing = match v.address {
                IpAddr::V4(_) if c.source.ipv4.is_none() => Some("source.ipv4"),
                IpAddr::V6(_) if c.source.ipv6.is_none() => Some("source.ipv6"),
                _ => None,
            };
            if let Some(key) = missing {
                return Err(err(
                    "mode",
                    format!("ipip mode needs a tunnel source address: set {key} to an address of this host"),
                ));
            }
        }
    }
    if c.vips.len() > c.limits.max_vips as usize {
        return Err(WholeError {
            vip: None,
            invalid: invalid(
                "vip",
                format!("{} VIPs configured; limits.max_vips is {}", c.vips.len(), c.limits.max_vips),
            ),
        });
    }
    // A backend at a VIP address: the FIB finds lbd's blackhole route for it, and every packet
    // would pass to the stack and end there.
    let vip_addresses: BTreeSet<IpAddr> = c.vips.iter().map(|v| v.address).collect();
    for v in &c.vips {
        if let Some(b) = v.backends.iter().find(|b| vip_addresses.contains(&b.address)) {
            return Err(WholeError {
                vip: Some(v.name.clone()),
                invalid: invalid(
                    format!("vip {:?}: backend {}: address", v.name, b.address),
                    format!("{} is a VIP address: a backend needs an address of its own", b.address),
                ),
            });
        }
    }
    let backends: usize = c.vips.iter().map(|v| v.backends.len()).sum();
    if backends >= c.limits.max_backends as usize {
        return Err(WholeError {
            vip: None,
            invalid: invalid(
                "backend",
                format!("{backends} backends configured; limits.max_backends is {}", c.limits.max_backends),
            ),
        });
    }
    let sources =
        [("source.ipv4", c.source.ipv4.map(IpAddr::from)), ("source.ipv6", c.source.ipv6.map(IpAddr::from))];
    for (key, address) in sources {
        if let Some(problem) = address.and_then(not_a_host) {
            let address = address.expect("checked");
            return Err(WholeError {
                vip: None,
                invalid: invalid(key, format!("{address} cannot be the tunnels' source: {problem}")),
            });
        }
    }
    for (key, bits) in [
        ("source.ipv4_entropy_bits", c.source.ipv4_entropy_bits),
        ("source.ipv6_entropy_bits", c.source.ipv6_entropy_bits),
    ] {
        if bits > 16 {
            return Err(WholeError { vip: None, invalid: invalid(key, format!("{bits} is more than 16")) });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(extra: &str, backends: usize) -> Result<Config, Invalid> {
        let mut text = format!(
            "interfaces = [\"eth0\"]\n[source]\nipv4 = \"198.18.0.2\"\n[limits]\nmax_ring_size = {MAX}\nmax_backends = 8192\n\n\
             [[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\n{extra}\n",
            MAX = maglev::MAX_TABLE_SIZE
        );
        for i in 0..backends {
            text += &format!("[[vip.backend]]\naddress = \"198.18.{}.{}\"\n", 8 + i / 250, 1 + i % 250);
        }
        parse(&text, "t.toml")
    }

    fn scheduler(extra: &str) -> Result<Scheduler, String> {
        vip(extra, 3).map(|c| c.vips[0].scheduler).map_err(|e| e.to_string())
    }

    #[test]
    fn schedulers_by_name_and_the_older_hash_key() {
        assert_eq!(scheduler("protocol = \"tcp\""), Ok(Scheduler::Maglev));
        for (name, s) in [
            ("maglev", Scheduler::Maglev),
            ("source-hash", Scheduler::SourceHash),
            ("round-robin", Scheduler::RoundRobin),
            ("least-conn", Scheduler::LeastConn),
        ] {
            assert_eq!(scheduler(&format!("protocol = \"tcp\"\nscheduler = \"{name}\"")), Ok(s));
            assert_eq!(s.name(), name);
        }
        // hash = "source" is source-hash, alone or with maglev; the Vip says both ways.
        for extra in ["hash = \"source\"", "hash = \"source\"\nscheduler = \"maglev\""] {
            let c = vip(&format!("protocol = \"tcp\"\n{extra}"), 3).unwrap();
            assert_eq!((c.vips[0].scheduler, c.vips[0].hash), (Scheduler::SourceHash, HashMode::Source));
        }
        let c = vip("protocol = \"tcp\"\nscheduler = \"source-hash\"", 3).unwrap();
        assert_eq!(c.vips[0].hash, HashMode::Source);
        // A VIP saved by an lbd without schedulers.
        let mut old = c.vips[0].clone();
        old.scheduler = Scheduler::Maglev;
        old.normalize();
        assert_eq!(old.scheduler, Scheduler::SourceHash);
    }

    #[test]
    fn all_down_is_fail_open_by_default_and_by_its_older_name() {
        let all_down =
            |extra: &str| vip(&format!("protocol = \"tcp\"\n{extra}"), 3).unwrap().vips[0].all_down;
        assert_eq!(all_down(""), AllDown::FailOpen);
        assert_eq!(all_down("all_down = \"fail-open\""), AllDown::FailOpen);
        assert_eq!(all_down("all_down = \"keep-last-ring\""), AllDown::FailOpen);
        assert_eq!(all_down("all_down = \"drop\""), AllDown::Drop);
        // A state saved by an earlier lbd.
        let saved: AllDown = serde_json::from_str("\"keep-last-ring\"").unwrap();
        assert_eq!(
            (saved, serde_json::to_string(&saved).unwrap().as_str()),
            (AllDown::FailOpen, "\"fail-open\"")
        );
    }

    #[test]
    fn schedulers_refuse_what_they_cannot_do() {
        let e = scheduler("protocol = \"tcp\"\nhash = \"source\"\nscheduler = \"round-robin\"").unwrap_err();
        assert!(e.starts_with("t.toml:8: vip \"web\": hash: ") && e.contains("source-hash"), "{e}");
        let e = scheduler("protocol = \"udp\"\nscheduler = \"least-conn\"").unwrap_err();
        assert!(e.contains("vip \"web\": scheduler: least-conn counts TCP connections"), "{e}");
        assert_eq!(scheduler("protocol = \"udp\"\nscheduler = \"round-robin\""), Ok(Scheduler::RoundRobin));
        let e = scheduler("protocol = \"tcp\"\nscheduler = \"fastest\"").unwrap_err();
        assert!(e.contains("unknown variant `fastest`") && e.contains("round-robin"), "{e}");
        let e = vip("protocol = \"tcp\"\nscheduler = \"round-robin\"", 4097).unwrap_err().to_string();
        assert!(e.contains("round-robin takes at most 4096 backends; this VIP has 4097"), "{e}");
        assert!(vip("protocol = \"tcp\"\nscheduler = \"maglev\"", 4097).is_ok());
    }

    #[test]
    fn announce_has_defaults_and_is_off_without_its_section() {
        let c = vip("protocol = \"tcp\"", 3).unwrap();
        assert_eq!((c.announce, c.vips[0].announce), (None, Announce::Healthy));
        let text = "interfaces = [\"eth0\"]\n[announce]\nbird_socket = \"/run/bird/bird.ctl\"\n";
        let a = parse(text, "t.toml").unwrap().announce.expect("[announce]");
        assert_eq!(
            a,
            AnnounceSettings {
                table: 4242,
                protocol: 242,
                bird_socket: Some("/run/bird/bird.ctl".into()),
                drain_seconds: 30
            }
        );
        let c = vip("protocol = \"tcp\"\nannounce = \"always\"", 3).unwrap();
        assert_eq!(c.vips[0].announce, Announce::Always);
        // A VIP saved by an lbd without announcements.
        let mut saved = serde_json::to_value(&c.vips[0]).unwrap();
        saved.as_object_mut().unwrap().remove("announce");
        assert_eq!(serde_json::from_value::<Vip>(saved).unwrap().announce, Announce::Healthy);
    }

    #[test]
    fn the_flow_table_is_sized_for_all_cpus_together_in_whole_sets() {
        let flows = |limits: &str, cpus| {
            let text = format!("interfaces = [\"eth0\"]\n[limits]\n{limits}\n");
            parse(&text, "t.toml").expect("valid limits").limits.sizes(cpus).flows
        };
        let default = lb_common::limits::FLOWS;
        assert_eq!(flows("", 2), default, "the default, whatever the CPUs");
        assert_eq!(flows("", 64), default);
        assert_eq!(flows("flows = 1000001", 3), 1_000_004, "rounded up to a multiple of the ways");
        assert_eq!(flows("flows_per_cpu = 65537", 8), 524_296, "a CPU's share × CPUs, rounded up");
        assert_eq!(
            flows(&format!("flows = {}", lb_common::limits::MAX_FLOWS), 2),
            lb_common::limits::MAX_FLOWS
        );
    }

    #[test]
    fn keys_no_longer_used_are_accepted_with_a_warning_each() {
        let text = "interfaces = [\"eth0\"]\n[limits]\nflows = 4096\npending_flows = 1024\nflow_cache_slots = 65536\n";
        let limits = parse(text, "t.toml").expect("an older config still loads").limits;
        let warnings = limits.unused_key_warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("limits.pending_flows is no longer used: "), "{warnings:?}");
        assert!(warnings[1].starts_with("limits.flow_cache_slots is no longer used: "), "{warnings:?}");
        assert_eq!(
            limits.sizes(2),
            Limits { flows: Some(4096), ..Limits::default() }.sizes(2),
            "they change nothing"
        );
        assert_eq!(limits.in_effect(), Limits { flows: Some(4096), ..Limits::default() });
        assert!(Limits::default().unused_key_warnings().is_empty());
    }

    /// A valid config; each case edits it (find, replace) into an invalid one.
    const BASE: &str = r#"interfaces = ["eth0"]
pin_path = "/sys/fs/bpf/lb"

[source]
ipv4 = "198.18.0.2"

[limits]
max_vips = 8
max_backends = 64

[[vip]]
name = "web"
address = "198.18.100.1"
port = 80
protocol = "tcp"
ring_size = 4099

  [[vip.backend]]
  address = "198.18.0.11"

  [[vip.backend]]
  address = "198.18.0.12"
  weight = 200

  [[vip.backend]]
  address = "198.18.0.13"
"#;

    const SECOND: &str =
        "\n[[vip]]\nname = \"other\"\naddress = \"198.18.100.2\"\nport = 80\nprotocol = \"udp\"\n";

    #[test]
    fn only_addresses_of_single_hosts_are_vips_backends_or_sources() {
        for ok in ["198.18.0.1", "10.0.0.1", "fd00::1", "2001:db8::1", "::ffff:0:198.18.0.1"] {
            assert_eq!(not_a_host(ok.parse().unwrap()), None, "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.5",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::1",
            "::ffff:198.18.0.1",
        ] {
            assert!(not_a_host(bad.parse().unwrap()).is_some(), "{bad}");
        }
    }

    #[test]
    fn every_invalid_config_is_refused_naming_the_file_line_and_field() {
        assert!(parse(BASE, "c.toml").is_ok(), "the base config is valid");
        // (what, find, replace, what the error must say)
        let cases: &[(&str, &str, &str, &str)] = &[
            ("toml syntax", "port = 80", "port = = 80", "c.toml:14: syntax"),
            ("unknown field", "port = 80", "port = 80\nprot = 1", "unknown field `prot`"),
            ("unknown top-level key", "pin_path", "pinpath", "unknown field `pinpath`"),
            (
                "bad vip address",
                "198.18.100.1",
                "198.18.100.300",
                "c.toml:11: vip \"web\": address: \"198.18.100.300\" is not an IPv4 or IPv6 address",
            ),
            ("multicast vip", "198.18.100.1", "224.0.0.1", "cannot be a VIP: a multicast address names a group"),
            ("loopback vip", "198.18.100.1", "127.0.0.9", "cannot be a VIP: a loopback address is this host's own"),
            ("broadcast vip", "198.18.100.1", "255.255.255.255", "cannot be a VIP: the broadcast address"),
            (
                "IPv4-mapped vip",
                "address = \"198.18.100.1\"",
                "address = \"::ffff:198.18.100.1\"",
                "::ffff:198.18.100.1 cannot be a VIP: an IPv4-mapped IPv6 address is an IPv4 host's: write it as 198.18.100.1",
            ),
            (
                "bad backend address",
                "198.18.0.13",
                "198.18.0.x",
                "\"198.18.0.x\" is not an IPv4 or IPv6 address",
            ),
            ("loopback backend", "198.18.0.13", "127.0.0.1", "cannot be a backend"),
            ("broadcast backend", "198.18.0.13", "255.255.255.255", "cannot be a backend: the broadcast address"),
            (
                "loopback tunnel source",
                "ipv4 = \"198.18.0.2\"",
                "ipv4 = \"127.0.0.1\"",
                "source.ipv4: 127.0.0.1 cannot be the tunnels' source: a loopback address",
            ),
            ("multicast tunnel source", "ipv4 = \"198.18.0.2\"", "ipv4 = \"239.1.1.1\"", "cannot be the tunnels' source"),
            (
                "IPv4-mapped tunnel source",
                "ipv4 = \"198.18.0.2\"",
                "ipv4 = \"198.18.0.2\"\nipv6 = \"::ffff:198.18.0.2\"",
                "source.ipv6: ::ffff:198.18.0.2 cannot be the tunnels' source: an IPv4-mapped",
            ),
            (
                "weight out of range",
                "weight = 200",
                "weight = 70000",
                "backend 198.18.0.12: weight: 70000 is out of range: use 0 to 65535",
            ),
            ("negative weight", "weight = 200", "weight = -1", "weight: -1 is out of range"),
            ("port out of range", "port = 80", "port = 70000", "port: 70000 is not a port"),
            ("unknown protocol", "\"tcp\"", "\"sctp\"", "unknown variant `sctp`"),
            ("unknown mode", "port = 80", "port = 80\nmode = \"nat\"", "unknown variant `nat`"),
            (
                "unknown scheduler",
                "port = 80",
                "port = 80\nscheduler = \"fastest\"",
                "unknown variant `fastest`",
            ),
            ("ring size not prime", "ring_size = 4099", "ring_size = 4100", "vip \"web\": ring_size"),
            ("ring size too small", "ring_size = 4099", "ring_size = 101", "vip \"web\": ring_size"),
            (
                "ring size over the limit",
                "max_backends = 64",
                "max_backends = 64\nmax_ring_size = 2003",
                "larger than limits.max_ring_size",
            ),
            ("wrong family mix", "198.18.0.13", "fd00::13", "its backends must be too"),
            ("duplicate backend", "198.18.0.13", "198.18.0.11", "198.18.0.11 is listed twice"),
            ("bad name", "name = \"web\"", "name = \"w eb\"", "is not a valid name"),
            ("duplicate service", "protocol = \"udp\"", "", ""),
            ("ipip without a tunnel source", "ipv4 = \"198.18.0.2\"", "", "set source.ipv4"),
            ("entropy bits", "[source]", "[source]\nipv4_entropy_bits = 17", "more than 16"),
            ("no interfaces", "interfaces = [\"eth0\"]", "interfaces = []", "name at least one interface"),
            ("no vips", "max_vips = 8", "max_vips = 0", "limits.max_vips: 0 is out of range: use 1 to 4096"),
            (
                "more vips than a flow entry's 16 bits",
                "max_vips = 8",
                "max_vips = 65537",
                "limits.max_vips: 65537 is out of range: use 1 to 4096 (a flow entry keeps its VIP's id in 16 bits",
            ),
            (
                "max ring size not prime",
                "max_backends = 64",
                "max_backends = 64\nmax_ring_size = 65536",
                "limits.max_ring_size",
            ),
            (
                "too few flows",
                "max_backends = 64",
                "max_backends = 64\nflows = 10",
                "limits.flows: 10 is out of range: use 1024 to 134217728",
            ),
            (
                "too few flows per CPU",
                "max_backends = 64",
                "max_backends = 64\nflows_per_cpu = 10",
                "limits.flows_per_cpu: 10 is out of range: use 1024 to 134217728",
            ),
            (
                "flows both ways",
                "max_backends = 64",
                "max_backends = 64\nflows = 1048576\nflows_per_cpu = 65536",
                "limits.flows_per_cpu: set limits.flows (all CPUs together) or limits.flows_per_cpu, not both",
            ),
            (
                "too many flows",
                "max_backends = 64",
                "max_backends = 64\nflows = 134217729",
                "limits.flows: 134217729 is out of range: use 1024 to 134217728",
            ),
            (
                "more backends than the limit",
                "max_backends = 64",
                "max_backends = 3",
                "3 backends configured; limits.max_backends is 3",
            ),
            (
                "least-conn on udp",
                "protocol = \"tcp\"",
                "protocol = \"udp\"\nscheduler = \"least-conn\"",
                "least-conn counts TCP connections",
            ),
            (
                "hash and scheduler",
                "port = 80",
                "port = 80\nhash = \"source\"\nscheduler = \"round-robin\"",
                "older spelling",
            ),
            (
                "metrics not an address",
                "pin_path",
                "metrics = \"localhost\"\npin_path",
                "metrics: \"localhost\" is not an address and port",
            ),
            ("metrics port 0", "pin_path", "metrics = \"127.0.0.1:0\"\npin_path", "has port 0"),
            (
                "web_admin_token without metrics",
                "pin_path",
                "web_admin_token = \"0123456789abcdef0123\"\npin_path",
                "web_admin_token: is set but `metrics` is not",
            ),
            (
                "web_admin_token too short",
                "pin_path",
                "metrics = \"127.0.0.1:9100\"\nweb_admin_token = \"secret\"\npin_path",
                "web_admin_token: has 6 characters, fewer than 16",
            ),
            (
                "unknown forwarding policy",
                "[limits]",
                "[host]\nforwarding = \"maybe\"\n\n[limits]",
                "unknown variant `maybe`",
            ),
            (
                "health timeout not below interval",
                "ring_size = 4099",
                "ring_size = 4099\n[vip.health]\ninterval_ms = 500\ntimeout_ms = 500",
                "vip \"web\": health.timeout_ms: timeout 500 ms must be shorter than interval 500 ms",
            ),
            (
                "health zero fall",
                "ring_size = 4099",
                "ring_size = 4099\n[vip.health]\nfall = 0",
                "fall 0 is out of range: use 1 to 100",
            ),
            (
                "health unknown type",
                "ring_size = 4099",
                "ring_size = 4099\n[vip.health]\ntype = \"icmp\"",
                "unknown check type \"icmp\": use none, tcp, http or udp",
            ),
            (
                "health option of another type",
                "ring_size = 4099",
                "ring_size = 4099\n[vip.health]\ntype = \"tcp\"\npath = \"/x\"",
                "only applies to type \"http\"",
            ),
            ("unknown all_down", "port = 80", "port = 80\nall_down = \"panic\"", "unknown variant `panic`"),
            (
                "announce in the main table",
                "[limits]",
                "[announce]\ntable = 254\n\n[limits]",
                "announce.table: 254 is a table the kernel routes with",
            ),
            (
                "announce as the kernel's routes",
                "[limits]",
                "[announce]\nprotocol = 2\n\n[limits]",
                "announce.protocol: 2 marks routes of the kernel",
            ),
            (
                "announce drain too long",
                "[limits]",
                "[announce]\ndrain_seconds = 86400\n\n[limits]",
                "announce.drain_seconds: 86400 is more than 3600",
            ),
            ("unknown announce key", "[limits]", "[announce]\npeer = 1\n\n[limits]", "unknown field `peer`"),
            (
                "unknown vip announce",
                "port = 80",
                "port = 80\nannounce = \"sometimes\"",
                "unknown variant `sometimes`",
            ),
            (
                "allow prefix too long",
                "ring_size = 4099",
                "ring_size = 4099\nallow = [\"198.18.0.0/33\"]",
                "c.toml:11: vip \"web\": allow[0]: \"198.18.0.0/33\": the prefix length must be 0 to 32",
            ),
            (
                "allow of the other family",
                "ring_size = 4099",
                "ring_size = 4099\nallow = [\"fd00::/8\"]",
                "can never match",
            ),
            (
                "a prefix in allow and deny",
                "ring_size = 4099",
                "ring_size = 4099\nallow = [\"198.18.0.0/16\"]\ndeny = [\"198.18.0.0/16\"]",
                "vip \"web\": deny: 198.18.0.0/16 is in both allow and deny",
            ),
            (
                "host bits in a deny prefix",
                "ring_size = 4099",
                "ring_size = 4099\ndeny = [\"198.18.7.1/24\"]",
                "deny[0]: \"198.18.7.1/24\" has bits set past /24: write 198.18.7.0/24",
            ),
            (
                "a limit of zero",
                "ring_size = 4099",
                "ring_size = 4099\n[vip.limits]\nnew_flows_per_source = 0",
                "vip \"web\": limits.new_flows_per_source: 0 is out of range",
            ),
            (
                "source prefix too long",
                "ring_size = 4099",
                "ring_size = 4099\n[vip.limits]\nsource_prefix = 33",
                "limits.source_prefix: 33 is not a prefix length",
            ),
            (
                "unknown limit",
                "ring_size = 4099",
                "ring_size = 4099\n[vip.limits]\nnew_flow = 5",
                "unknown field `new_flow`",
            ),
            (
                "unknown over_limit",
                "ring_size = 4099",
                "ring_size = 4099\n[vip.limits]\nover_limit = \"reject\"",
                "unknown variant `reject`",
            ),
            (
                "bad global deny prefix",
                "[source]",
                "[security]\ndeny = [\"198.19.66.0/24\",\n  \"nope\"]\n\n[source]",
                "c.toml:6: security.deny[1]: \"nope\" is not an address prefix",
            ),
        ];
        let mut failures = Vec::new();
        for (what, find, replace, says) in cases {
            let text = if *what == "duplicate service" {
                // A second VIP on the first one's service.
                format!("{BASE}{}", SECOND.replace("198.18.100.2", "198.18.100.1").replace("udp", "tcp"))
            } else {
                assert!(BASE.contains(find), "{what}: the base config has no {find:?}");
                BASE.replacen(find, replace, 1)
            };
            let says = if *what == "duplicate service" {
                "another VIP already serves 198.18.100.1:80/tcp"
            } else {
                says
            };
            match parse(&text, "c.toml") {
                Ok(_) => failures.push(format!("{what}: accepted")),
                Err(e) if !e.to_string().contains(says) || !e.to_string().starts_with("c.toml") => {
                    failures.push(format!("{what}: {e:?} does not say {says:?}"))
                }
                Err(_) => {}
            }
        }
        assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
        // Two VIPs may share a name in no config.
        let e = parse(&format!("{BASE}{}", SECOND.replace("other", "web")), "c.toml").unwrap_err();
        assert!(e.to_string().contains("another VIP is already named \"web\""), "{e}");
    }

    #[test]
    fn api_specs_are_validated_like_the_file() {
        let limits = Limits::default();
        let spec = |json: &str| serde_json::from_str::<VipSpec>(json).map_err(|e| e.to_string());
        let ok = spec(r#"{"name": "api", "address": "198.18.100.2", "port": 443, "protocol": "tcp", "backend": [{"address": "198.18.0.21"}]}"#).unwrap();
        assert!(validate_vip(&ok, &limits).is_ok());
        for (json, says) in [
            (
                r#"{"name": "api", "address": "fd00::100", "port": 80, "protocol": "tcp", "backend": [{"address": "198.18.0.11"}]}"#,
                "the VIP fd00::100 is IPv6",
            ),
            (
                r#"{"name": "a b", "address": "198.18.100.2", "port": 80, "protocol": "tcp"}"#,
                "is not a valid name",
            ),
            (
                r#"{"name": "api", "address": "198.18.100.2", "port": -1, "protocol": "tcp"}"#,
                "-1 is not a port",
            ),
            (
                r#"{"name": "api", "address": "198.18.100.2", "port": 80, "protocol": "tcp", "ring_size": 4100}"#,
                "ring_size",
            ),
        ] {
            let e = validate_vip(&spec(json).unwrap(), &limits).unwrap_err().to_string();
            assert!(e.contains(says), "{json}: {e}");
        }
        assert!(spec(
            r#"{"name": "api", "address": "198.18.100.2", "port": 80, "protocol": "tcp", "colour": 1}"#
        )
        .unwrap_err()
        .contains("unknown field `colour`"));
        let backend = |json: &str| serde_json::from_str::<BackendSpec>(json).unwrap();
        let vip: IpAddr = "198.18.100.1".parse().unwrap();
        for (json, says) in [
            (r#"{"address": "not-an-ip"}"#, "\"not-an-ip\" is not an IPv4 or IPv6 address"),
            (r#"{"address": "198.18.0.14", "weight": 70000}"#, "70000 is out of range: use 0 to 65535"),
            (r#"{"address": "0.0.0.0"}"#, "cannot be a backend"),
        ] {
            let e = validate_backend(&backend(json), vip).unwrap_err().to_string();
            assert!(e.contains(says), "{json}: {e}");
        }
    }
}
