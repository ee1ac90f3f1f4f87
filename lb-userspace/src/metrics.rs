//! The Prometheus endpoint: `GET /metrics` on the address `metrics` of the config.
//!
//! Nothing is counted here: every scrape reads the data plane's counters from the maps (summed
//! over CPUs, the numbers `lbctl stats` shows) and encodes them with `prometheus-client`, in the
//! Prometheus text format (0.0.4), or in OpenMetrics for a scraper that asks for it (Prometheus
//! does). Metric names follow Prometheus' conventions: `_total` counters, units in the name,
//! labels for what a sum over makes sense for. The global counters' label values derive from
//! [`lb_common::Counter`], never from a second list.
use std::{fmt, net::SocketAddr, time::UNIX_EPOCH};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use lb_common::{Counter, CounterKind};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::{Registry, Unit},
};

use crate::{
    agent::{Agent, Stats},
    api::Shared,
};

/// One metric family: what the registry is given (the name without unit or `_total`, which
/// the encoder appends), its labels and help.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    /// `bytes` or `seconds`, appended to the name.
    pub unit: Option<&'static str>,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl Family {
    /// The name samples carry: `lb_vip_bytes_total`, `lbd_info`, ...
    pub fn exposed_name(&self) -> String {
        let unit = self.unit.map(|u| format!("_{u}")).unwrap_or_default();
        let suffix = match self.kind {
            MetricType::Counter => "_total",
            MetricType::Info => "_info",
            _ => "",
        };
        format!("{}{unit}{suffix}", self.name)
    }

    pub fn type_name(&self) -> &'static str {
        match self.kind {
            MetricType::Counter => "counter",
            MetricType::Gauge | MetricType::Info => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Unknown => "untyped",
        }
    }

    fn unit(&self) -> Option<Unit> {
        self.unit.map(|u| match u {
            "bytes" => Unit::Bytes,
            "seconds" => Unit::Seconds,
            other => Unit::Other(other.to_owned()),
        })
    }
}

const VIP: &[&str] = &["vip", "service"];
const BACKEND: &[&str] = &["vip", "backend"];

pub const INFO: Family = Family {
    name: "lbd",
    unit: None,
    kind: MetricType::Info,
    labels: &["version"],
    help: "The running lbd, its version as a label (always 1)",
};
pub const START_TIME: Family = Family {
    name: "lbd_start_time",
    unit: Some("seconds"),
    kind: MetricType::Gauge,
    labels: &[],
    help: "When lbd started, in seconds since the Unix epoch",
};
pub const LOOP_LAG_MAX: Family = Family {
    name: "lbd_event_loop_lag_max",
    unit: Some("seconds"),
    kind: MetricType::Gauge,
    labels: &[],
    help: "How late lbd's event loop ran its 1-second tick at most since lbd started (health changes and signals wait as long)",
};
pub const LOOP_LAG_RECENT: Family = Family {
    name: "lbd_event_loop_lag_recent_max",
    unit: Some("seconds"),
    kind: MetricType::Gauge,
    labels: &[],
    help: "How late lbd's event loop ran its 1-second tick at most in the last minute",
};
pub const VIP_PACKETS: Family = Family {
    name: "lb_vip_packets",
    unit: None,
    kind: MetricType::Counter,
    labels: VIP,
    help: "Packets forwarded to a backend of the VIP",
};
pub const VIP_BYTES: Family = Family {
    name: "lb_vip",
    unit: Some("bytes"),
    kind: MetricType::Counter,
    labels: VIP,
    help: "Bytes forwarded to a backend of the VIP (frames as received, before encapsulation)",
};
pub const VIP_NEW_FLOWS: Family = Family {
    name: "lb_vip_new_flows",
    unit: None,
    kind: MetricType::Counter,
    labels: VIP,
    help: "New flows of the VIP: TCP SYNs, and the first packets of other flows that the flow table recorded (a UDP flow it cannot record is no new flow: flow_not_recorded)",
};
pub const VIP_POLICY_DROPS: Family = Family {
    name: "lb_vip_policy_drops",
    unit: None,
    kind: MetricType::Counter,
    labels: &["vip", "service", "reason"],
    help: "Packets to the VIP its policy dropped before their flow was recorded, by `reason`: `acl` (global deny list or the VIP's lists), `rate_new_flows`, `rate_packets` (per source), `vip_new_flow_cap`",
};
pub const VIP_POLICY_PASSED: Family = Family {
    name: "lb_vip_policy_passed",
    unit: None,
    kind: MetricType::Counter,
    labels: VIP,
    help:
        "New TCP flows to the VIP over a new-flow limit, passed to the stack (`limits.over_limit = \"pass\"`)",
};
pub const BACKEND_PACKETS: Family = Family {
    name: "lb_backend_packets",
    unit: None,
    kind: MetricType::Counter,
    labels: BACKEND,
    help: "Packets forwarded to the backend",
};
pub const BACKEND_BYTES: Family = Family {
    name: "lb_backend",
    unit: Some("bytes"),
    kind: MetricType::Counter,
    labels: BACKEND,
    help: "Bytes forwarded to the backend (frames as received, before encapsulation)",
};
pub const BACKEND_NEW_FLOWS: Family = Family {
    name: "lb_backend_new_flows",
    unit: None,
    kind: MetricType::Counter,
    labels: BACKEND,
    help: "New flows sent to the backend (as for the VIP)",
};
pub const BACKEND_WEIGHT: Family = Family {
    name: "lb_backend_weight",
    unit: None,
    kind: MetricType::Gauge,
    labels: BACKEND,
    help: "The backend's configured weight (0 to 65535; 0: no new flows)",
};
pub const BACKEND_DRAINED: Family = Family {
    name: "lb_backend_drained",
    unit: None,
    kind: MetricType::Gauge,
    labels: BACKEND,
    help: "1 if the backend is drained: no new flows, open ones continue",
};
pub const BACKEND_UP: Family = Family {
    name: "lb_backend_up",
    unit: None,
    kind: MetricType::Gauge,
    labels: BACKEND,
    help: "1 if the backend passes its health check (or has none), 0 if it is down (out of the ring, unless all_down = \"fail-open\" finds every backend down)",
};
pub const BACKEND_CONNECTIONS: Family = Family {
    name: "lb_backend_active_connections",
    unit: None,
    kind: MetricType::Gauge,
    labels: BACKEND,
    help: "Open TCP connections on the backend as the data plane counts them (least-conn VIPs only)",
};
pub const DATAPATH_PACKETS: Family = Family {
    name: "lb_datapath_packets",
    unit: None,
    kind: MetricType::Counter,
    labels: &["verdict", "reason"],
    help: "Packets the balancer handled, by what it did (verdict) and why (reason); each packet counts once",
};
pub const DATAPATH_EVENTS: Family = Family {
    name: "lb_datapath_events",
    unit: None,
    kind: MetricType::Counter,
    labels: &["event"],
    help: "Events on the way of packets (flow-table hits and misses, ...), by event",
};
pub const FLOW_TABLE_ENTRIES: Family = Family {
    name: "lb_flow_table_entries",
    unit: None,
    kind: MetricType::Gauge,
    labels: &[],
    help: "Entries of the flow table: the flows it can hold (limits.flows, rounded up to whole sets)",
};
pub const FLOW_TABLE_FLOWS: Family = Family {
    name: "lb_flow_table_flows",
    unit: None,
    kind: MetricType::Gauge,
    labels: &["state"],
    help: "Flows in the flow table by `state`: `confirmed` (two packets or more), `unconfirmed` (one: a SYN waiting for its ACK, a one-datagram UDP flow, a flood's spoofed packets); as lbd's last walk of the table found them (every 10 s, less often for a table that takes over half a second to walk; lb_flow_table_census_time_seconds says when)",
};
pub const FLOW_TABLE_ACTIVE: Family = Family {
    name: "lb_flow_table_active_flows",
    unit: None,
    kind: MetricType::Gauge,
    labels: &[],
    help: "Confirmed flows with a packet in the last two of the flow table's clock ticks (1.1 to 2.1 s): the entries no new flow may take; past about half of lb_flow_table_entries, more new flows find both their sets held and are not recorded (flow_not_recorded); from lbd's last census",
};
pub const FLOW_TABLE_CENSUS_TIME: Family = Family {
    name: "lb_flow_table_census_time",
    unit: Some("seconds"),
    kind: MetricType::Gauge,
    labels: &[],
    help: "When lbd's last census of the flow table ended, in seconds since the Unix epoch (a census that stays old: see lbd's log)",
};

pub const VIP_ANNOUNCED: Family = Family {
    name: "lb_vip_announced",
    unit: None,
    kind: MetricType::Gauge,
    labels: VIP,
    help: "1 if this host announces the VIP's address (its route is in the VIP table BIRD learns), 0 if withdrawn; with [announce] only",
};
pub const VIP_EXPORTED: Family = Family {
    name: "lb_vip_exported",
    unit: None,
    kind: MetricType::Gauge,
    labels: VIP,
    help: "1 if BIRD exports the VIP's route to a BGP session, 0 if not (its filters refuse it, or no session is up); while lbd reads BIRD (announce.bird_socket)",
};
pub const HOST_DRAINED: Family = Family {
    name: "lb_host_drained",
    unit: None,
    kind: MetricType::Gauge,
    labels: &[],
    help: "1 if this host announces no VIP: drained (`lbctl host drain`) or stopping (SIGTERM, announce.drain_seconds); with [announce] only",
};
pub const ANNOUNCE_ERRORS: Family = Family {
    name: "lb_announce_errors",
    unit: None,
    kind: MetricType::Counter,
    labels: &["what"],
    help: "Failures lbd retries: `route`, a write to the VIP table; `bird`, a read of BIRD's control socket",
};
pub const BIRD_UP: Family = Family {
    name: "lb_bird_up",
    unit: None,
    kind: MetricType::Gauge,
    labels: &[],
    help: "1 if lbd's last read of BIRD's control socket succeeded (announce.bird_socket)",
};
pub const BIRD_SESSION_UP: Family = Family {
    name: "lb_bird_session_established",
    unit: None,
    kind: MetricType::Gauge,
    labels: &["session"],
    help: "1 if BIRD's BGP session is Established, as lbd last read it",
};

/// Every family, in the order a scrape gives them.
pub const FAMILIES: [Family; 28] = [
    INFO,
    START_TIME,
    LOOP_LAG_MAX,
    LOOP_LAG_RECENT,
    VIP_PACKETS,
    VIP_BYTES,
    VIP_NEW_FLOWS,
    VIP_POLICY_DROPS,
    VIP_POLICY_PASSED,
    BACKEND_PACKETS,
    BACKEND_BYTES,
    BACKEND_NEW_FLOWS,
    BACKEND_WEIGHT,
    BACKEND_DRAINED,
    BACKEND_UP,
    BACKEND_CONNECTIONS,
    DATAPATH_PACKETS,
    DATAPATH_EVENTS,
    FLOW_TABLE_ENTRIES,
    FLOW_TABLE_FLOWS,
    FLOW_TABLE_ACTIVE,
    FLOW_TABLE_CENSUS_TIME,
    VIP_ANNOUNCED,
    VIP_EXPORTED,
    HOST_DRAINED,
    ANNOUNCE_ERRORS,
    BIRD_UP,
    BIRD_SESSION_UP,
];

/// The labels of a global counter: `("verdict", "reason")` values for a packet verdict
/// (`pass_not_vip` -> `pass`, `not_vip`), or `None` for an event (labelled by its name).
pub fn verdict(counter: Counter) -> Option<(&'static str, &'static str)> {
    let verdict = match counter.kind() {
        CounterKind::Pass => "pass",
        CounterKind::Drop => "drop",
        CounterKind::Forward => "forward",
        CounterKind::Event => return None,
    };
    let name = counter.name();
    let reason = name.strip_prefix(verdict).and_then(|r| r.strip_prefix('_')).unwrap_or(name);
    Some((verdict, reason))
}

/// What one scrape exposes, read from the agent and its maps.
#[derive(Debug)]
pub struct Snapshot {
    pub version: &'static str,
    pub started_unix: f64,
    pub loop_lag_max: f64,
    pub loop_lag_recent_max: f64,
    pub counters: Vec<(Counter, u64)>,
    pub stats: Stats,
    /// After lbd's first census of the flow table.
    pub table_fill: Option<crate::agent::TableFill>,
    /// With `[announce]`.
    pub announce: Option<crate::announce::Status>,
}

impl Snapshot {
    pub fn read(agent: &Agent) -> Result<Snapshot, String> {
        let counters = Counter::ALL
            .iter()
            .map(|&c| agent.datapath.counter(c).map(|v| (c, v)))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        Ok(Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            started_unix: agent.started.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            loop_lag_max: agent.loop_lag.max().as_secs_f64(),
            loop_lag_recent_max: agent.loop_lag.recent_max().as_secs_f64(),
            counters,
            stats: agent.stats().map_err(|e| e.to_string())?,
            table_fill: agent.table_fill,
            announce: agent.announce_status(),
        })
    }
}

/// Encodes one family: its descriptor, then a sample per `(label values, value)`.
fn family<'a, V: Copy>(
    encoder: &mut DescriptorEncoder,
    f: &Family,
    samples: impl IntoIterator<Item = (Vec<&'a str>, V)>,
    mut sample: impl FnMut(V, MetricEncoder) -> fmt::Result,
) -> fmt::Result {
    let unit = f.unit();
    let mut metric = encoder.encode_descriptor(f.name, f.help, unit.as_ref(), f.kind)?;
    for (values, value) in samples {
        debug_assert_eq!(values.len(), f.labels.len(), "{}", f.name);
        let labels: Vec<(&str, &str)> = f.labels.iter().copied().zip(values).collect();
        sample(value, metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(value: u64, m: MetricEncoder) -> fmt::Result {
    ConstCounter::new(value).encode(m)
}

fn gauge(value: u64, m: MetricEncoder) -> fmt::Result {
    ConstGauge::new(value).encode(m)
}

fn vip(v: &crate::agent::VipStats) -> Vec<&str> {
    vec![v.name.as_str(), v.service.as_str()]
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let unit = INFO.unit();
        e.encode_descriptor(INFO.name, INFO.help, unit.as_ref(), INFO.kind)?
            .encode_info(&[(INFO.labels[0], self.version)])?;
        for (f, value) in [
            (START_TIME, self.started_unix),
            (LOOP_LAG_MAX, self.loop_lag_max),
            (LOOP_LAG_RECENT, self.loop_lag_recent_max),
        ] {
            let unit = f.unit();
            ConstGauge::new(value).encode(e.encode_descriptor(f.name, f.help, unit.as_ref(), f.kind)?)?;
        }

        let vips = &self.stats.vips;
        family(&mut e, &VIP_PACKETS, vips.iter().map(|v| (vip(v), v.packets)), counter)?;
        family(&mut e, &VIP_BYTES, vips.iter().map(|v| (vip(v), v.bytes)), counter)?;
        family(&mut e, &VIP_NEW_FLOWS, vips.iter().map(|v| (vip(v), v.new_flows)), counter)?;
        let drops = vips.iter().flat_map(|v| {
            lb_common::PolicyReason::ALL
                .iter()
                .zip(v.policy_drops)
                .map(move |(r, n)| (vec![v.name.as_str(), v.service.as_str(), r.name()], n))
        });
        family(&mut e, &VIP_POLICY_DROPS, drops, counter)?;
        family(&mut e, &VIP_POLICY_PASSED, vips.iter().map(|v| (vip(v), v.policy_passed)), counter)?;

        let backends = || {
            vips.iter()
                .flat_map(|v| v.backends.iter().map(move |b| (vec![v.name.as_str(), b.address.as_str()], b)))
        };
        family(&mut e, &BACKEND_PACKETS, backends().map(|(l, b)| (l, b.packets)), counter)?;
        family(&mut e, &BACKEND_BYTES, backends().map(|(l, b)| (l, b.bytes)), counter)?;
        family(&mut e, &BACKEND_NEW_FLOWS, backends().map(|(l, b)| (l, b.new_flows)), counter)?;
        family(&mut e, &BACKEND_WEIGHT, backends().map(|(l, b)| (l, u64::from(b.weight))), gauge)?;
        family(&mut e, &BACKEND_DRAINED, backends().map(|(l, b)| (l, u64::from(b.drained))), gauge)?;
        family(&mut e, &BACKEND_UP, backends().map(|(l, b)| (l, u64::from(b.health != "down"))), gauge)?;
        let connections = backends().filter_map(|(l, b)| b.connections.map(|n| (l, n)));
        family(&mut e, &BACKEND_CONNECTIONS, connections, gauge)?;

        let verdicts = self
            .counters
            .iter()
            .filter_map(|&(c, v)| verdict(c).map(|(verdict, reason)| (vec![verdict, reason], v)));
        family(&mut e, &DATAPATH_PACKETS, verdicts, counter)?;
        let events =
            self.counters.iter().filter(|(c, _)| verdict(*c).is_none()).map(|&(c, v)| (vec![c.name()], v));
        family(&mut e, &DATAPATH_EVENTS, events, counter)?;
        let fill = self.table_fill;
        family(&mut e, &FLOW_TABLE_ENTRIES, fill.map(|f| (vec![], f.entries)), gauge)?;
        let states = fill
            .into_iter()
            .flat_map(|f| [(vec!["confirmed"], f.confirmed), (vec!["unconfirmed"], f.unconfirmed)]);
        family(&mut e, &FLOW_TABLE_FLOWS, states, gauge)?;
        family(&mut e, &FLOW_TABLE_ACTIVE, fill.map(|f| (vec![], f.active)), gauge)?;
        family(&mut e, &FLOW_TABLE_CENSUS_TIME, fill.map(|f| (vec![], f.at_unix)), gauge)?;
        match &self.announce {
            Some(a) => announcements(&mut e, a),
            None => Ok(()),
        }
    }
}

fn announcements(e: &mut DescriptorEncoder, a: &crate::announce::Status) -> fmt::Result {
    let vips = || a.vips.iter().map(|v| (vec![v.vip.as_str(), v.service.as_str()], v));
    family(e, &VIP_ANNOUNCED, vips().map(|(l, v)| (l, u64::from(v.announced))), gauge)?;
    let exported = vips().filter_map(|(l, v)| v.exported.map(|x| (l, u64::from(x))));
    family(e, &VIP_EXPORTED, exported, gauge)?;
    family(e, &HOST_DRAINED, [(vec![], u64::from(a.host_drained || a.stopping))], gauge)?;
    let bird_errors = a.bird.as_ref().map(|b| (vec!["bird"], b.errors));
    let errors = [(vec!["route"], a.route_errors)].into_iter().chain(bird_errors);
    family(e, &ANNOUNCE_ERRORS, errors, counter)?;
    if let Some(b) = &a.bird {
        family(e, &BIRD_UP, [(vec![], u64::from(b.reachable))], gauge)?;
        let sessions = b.sessions.iter().map(|s| (vec![s.name.as_str()], u64::from(s.established)));
        family(e, &BIRD_SESSION_UP, sessions, gauge)?;
    }
    Ok(())
}

/// The formats a scrape can get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (`promtool check metrics` reads it).
    Text,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics if the scraper accepts it (Prometheus asks for it first), else text.
    pub fn negotiate(headers: &HeaderMap) -> Format {
        let accepts = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok());
        if accepts.flat_map(|v| v.split(',')).any(|v| v.trim().starts_with("application/openmetrics-text")) {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The exposition of `snapshot` in `format`.
pub fn render(snapshot: Snapshot, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    let encoded = match format {
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry),
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
    };
    encoded.expect("writing to a String cannot fail");
    out
}

/// `GET /metrics`, and the status page ([`crate::web`]); every other path is 404.
pub fn router(agent: Shared, samples: std::sync::Arc<crate::web::Samples>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(agent.clone())
        .merge(crate::web::router(agent, samples))
        .fallback(|| async { crate::web::not_found() })
}

async fn scrape(State(agent): State<Shared>, headers: HeaderMap) -> Response {
    let snapshot = Snapshot::read(&*agent.lock().await);
    match snapshot {
        Ok(s) => {
            let format = Format::negotiate(&headers);
            ([(header::CONTENT_TYPE, format.content_type())], render(s, format)).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("reading the counters: {e}\n")).into_response(),
    }
}

/// Listens on `address` (needs a tokio runtime). lbd binds it at start before it changes the
/// host, so that a taken address stops it with nothing attached or announced.
pub fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    // std's bind sets SO_REUSEADDR, as tokio's does: a restarted lbd gets its port back at once.
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Serves the endpoint and the status page until the task is dropped or aborted.
pub async fn serve(listener: tokio::net::TcpListener, agent: Shared) -> std::io::Result<()> {
    let samples = agent.lock().await.samples.clone();
    crate::web::listener::serve(listener, router(agent, samples)).await
}

/// The docs' table of metrics (docs/observability.md), made from [`FAMILIES`] and [`Counter::ALL`].
pub fn markdown_table() -> String {
    let mut out = String::from("| metric | type | labels | what |\n|---|---|---|---|\n");
    for f in FAMILIES {
        let labels: Vec<String> = f.labels.iter().map(|l| format!("`{l}`")).collect();
        let labels = if labels.is_empty() { "-".to_string() } else { labels.join(", ") };
        out += &format!("| `{}` | {} | {labels} | {} |\n", f.exposed_name(), f.type_name(), f.help);
    }
    out +=
        "\n| `verdict`, `reason` of `lb_datapath_packets_total`, or `event` of `lb_datapath_events_total` \
            | what |\n|---|---|\n";
    for &c in Counter::ALL {
        let labels = match verdict(c) {
            Some((verdict, reason)) => format!("`{verdict}`, `{reason}`"),
            None => format!("`{}`", c.name()),
        };
        out += &format!("| {labels} | {} |\n", c.help());
    }
    out
}

#[cfg(test)]
mod alert_rules;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{BackendStats, VipStats};

    fn snapshot() -> Snapshot {
        Snapshot {
            version: "1.2.3",
            started_unix: 1_700_000_000.5,
            loop_lag_max: 0.25,
            loop_lag_recent_max: 0.0015,
            counters: Counter::ALL.iter().map(|&c| (c, 1000 + c.index() as u64)).collect(),
            stats: Stats {
                counters: Vec::new(),
                vips: vec![VipStats {
                    name: "web".into(),
                    service: "198.18.100.1:80/tcp".into(),
                    packets: 10,
                    bytes: 1400,
                    new_flows: 2,
                    policy_drops: [3, 0, 5, 0],
                    policy_passed: 1,
                    backends: vec![
                        BackendStats {
                            address: "198.18.0.11".into(),
                            weight: 100,
                            drained: false,
                            health: "up".into(),
                            packets: 7,
                            bytes: 900,
                            new_flows: 1,
                            connections: Some(4),
                        },
                        BackendStats {
                            address: "198.18.0.12".into(),
                            weight: 50,
                            drained: true,
                            health: "-".into(),
                            packets: 3,
                            bytes: 500,
                            new_flows: 1,
                            connections: None,
                        },
                    ],
                }],
            },
            table_fill: Some(crate::agent::TableFill {
                entries: 131_072,
                confirmed: 2056,
                active: 40,
                unconfirmed: 17,
                complete: true,
                at_unix: 1_700_000_123,
            }),
            announce: Some(announce()),
        }
    }

    fn announce() -> crate::announce::Status {
        use crate::announce::{bird::Session, BirdStatus, Status, VipAnnouncement};
        Status {
            table: 4242,
            protocol: 242,
            drain_seconds: 30,
            host_drained: false,
            stopping: false,
            vips: vec![VipAnnouncement {
                vip: "web".into(),
                service: "198.18.100.1:80/tcp".into(),
                address: "198.18.100.1".parse().unwrap(),
                announce: crate::config::Announce::Healthy,
                wanted: true,
                announced: true,
                exported: Some(false),
                why: "2 of 2 backends take new flows".into(),
            }],
            route_errors: 3,
            route_problem: None,
            bird: Some(BirdStatus {
                socket: "/run/bird/bird.ctl".into(),
                reachable: true,
                error: None,
                sessions: vec![Session {
                    name: "router_ipv4".into(),
                    established: true,
                    state: "up Established".into(),
                }],
                errors: 5,
            }),
        }
    }

    #[test]
    fn text_format() {
        let text = render(snapshot(), Format::Text);
        for line in [
            "# TYPE lb_vip_packets_total counter",
            "lb_vip_packets_total{vip=\"web\",service=\"198.18.100.1:80/tcp\"} 10",
            "lb_vip_bytes_total{vip=\"web\",service=\"198.18.100.1:80/tcp\"} 1400",
            "lb_vip_new_flows_total{vip=\"web\",service=\"198.18.100.1:80/tcp\"} 2",
            "lb_vip_policy_drops_total{vip=\"web\",service=\"198.18.100.1:80/tcp\",reason=\"acl\"} 3",
            "lb_vip_policy_drops_total{vip=\"web\",service=\"198.18.100.1:80/tcp\",reason=\"rate_packets\"} 5",
            "lb_vip_policy_passed_total{vip=\"web\",service=\"198.18.100.1:80/tcp\"} 1",
            "lb_backend_packets_total{vip=\"web\",backend=\"198.18.0.11\"} 7",
            "lb_backend_bytes_total{vip=\"web\",backend=\"198.18.0.12\"} 500",
            "lb_backend_new_flows_total{vip=\"web\",backend=\"198.18.0.12\"} 1",
            "lb_backend_weight{vip=\"web\",backend=\"198.18.0.12\"} 50",
            "lb_backend_drained{vip=\"web\",backend=\"198.18.0.12\"} 1",
            "lb_backend_drained{vip=\"web\",backend=\"198.18.0.11\"} 0",
            "lb_backend_active_connections{vip=\"web\",backend=\"198.18.0.11\"} 4",
            "lb_datapath_packets_total{verdict=\"pass\",reason=\"not_vip\"} 1002",
            "lb_datapath_packets_total{verdict=\"forward\",reason=\"tx\"} 1013",
            "lb_datapath_packets_total{verdict=\"forward\",reason=\"icmp_echo_reply\"} 1015",
            "lb_datapath_events_total{event=\"flow_hit\"} 1017",
            "lb_flow_table_entries 131072",
            "lb_flow_table_flows{state=\"confirmed\"} 2056",
            "lb_flow_table_flows{state=\"unconfirmed\"} 17",
            "lb_flow_table_active_flows 40",
            "lb_flow_table_census_time_seconds 1700000123",
            "lbd_info{version=\"1.2.3\"} 1",
            "# TYPE lbd_start_time_seconds gauge",
            "lbd_start_time_seconds 1700000000.5",
            "lbd_event_loop_lag_max_seconds 0.25",
            "lbd_event_loop_lag_recent_max_seconds 0.0015",
            "lb_vip_announced{vip=\"web\",service=\"198.18.100.1:80/tcp\"} 1",
            "lb_vip_exported{vip=\"web\",service=\"198.18.100.1:80/tcp\"} 0",
            "lb_host_drained 0",
            "lb_announce_errors_total{what=\"route\"} 3",
            "lb_announce_errors_total{what=\"bird\"} 5",
            "lb_bird_up 1",
            "lb_bird_session_established{session=\"router_ipv4\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        // Only backends whose VIP counts connections (least-conn) have the series.
        assert!(
            !text.contains("lb_backend_active_connections{vip=\"web\",backend=\"198.18.0.12\"}"),
            "{text}"
        );
        // Every global counter exactly once.
        for &c in Counter::ALL {
            let n = text.lines().filter(|l| l.ends_with(&format!(" {}", 1000 + c.index()))).count();
            assert_eq!(n, 1, "{} in:\n{text}", c.name());
        }
        // Every family has HELP and TYPE under the name its samples carry.
        for f in FAMILIES {
            let name = f.exposed_name();
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
            assert!(text.contains(&format!("# TYPE {name} {}\n", f.type_name())), "{name}:\n{text}");
        }
    }

    #[test]
    fn the_flow_table_has_no_samples_before_its_first_census() {
        let text = render(Snapshot { table_fill: None, ..snapshot() }, Format::Text);
        assert!(text.contains("# TYPE lb_flow_table_flows gauge"), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("lb_flow_table_")), "no census yet:\n{text}");
    }

    #[test]
    fn announcements_are_exposed_only_with_announce() {
        let text = render(Snapshot { announce: None, ..snapshot() }, Format::Text);
        for f in [VIP_ANNOUNCED, VIP_EXPORTED, HOST_DRAINED, ANNOUNCE_ERRORS, BIRD_UP, BIRD_SESSION_UP] {
            assert!(!text.contains(&f.exposed_name()), "{} without [announce]:\n{text}", f.name);
        }
        let mut a = announce();
        a.stopping = true;
        a.bird = None;
        let text = render(Snapshot { announce: Some(a), ..snapshot() }, Format::Text);
        assert!(text.lines().any(|l| l == "lb_host_drained 1"), "a stopping host announces nothing:\n{text}");
        assert!(!text.contains("lb_bird_up") && !text.contains("what=\"bird\""), "no bird_socket:\n{text}");
    }

    #[test]
    fn openmetrics_format() {
        let text = render(snapshot(), Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE lb_vip_bytes counter\n# UNIT lb_vip_bytes bytes\n"), "{text}");
        assert!(
            text.contains("lb_vip_bytes_total{vip=\"web\",service=\"198.18.100.1:80/tcp\"} 1400\n"),
            "{text}"
        );
        assert!(text.contains("lbd_info{version=\"1.2.3\"} 1\n"), "{text}");
    }

    #[test]
    fn negotiation() {
        let mut h = HeaderMap::new();
        assert_eq!(Format::negotiate(&h), Format::Text);
        h.insert(header::ACCEPT, "text/plain;version=0.0.4;q=0.5,*/*;q=0.1".parse().unwrap());
        assert_eq!(Format::negotiate(&h), Format::Text);
        // What Prometheus 2.42 sends.
        h.insert(
            header::ACCEPT,
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
             text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
                .parse()
                .unwrap(),
        );
        assert_eq!(Format::negotiate(&h), Format::OpenMetrics);
    }

    #[test]
    fn verdicts_derive_from_the_counters() {
        assert_eq!(verdict(Counter::PassNotVip), Some(("pass", "not_vip")));
        assert_eq!(verdict(Counter::DropNoBackend), Some(("drop", "no_backend")));
        assert_eq!(verdict(Counter::ForwardRedirect), Some(("forward", "redirect")));
        assert_eq!(verdict(Counter::IcmpEchoReply), Some(("forward", "icmp_echo_reply")));
        assert_eq!(verdict(Counter::FlowHit), None);
    }

    #[test]
    fn config_key() {
        let base = "interfaces = [\"eth0\"]\n";
        let c = crate::config::parse(base, "t.toml").unwrap();
        assert_eq!(c.metrics, None);
        let c = crate::config::parse(&format!("metrics = \"127.0.0.1:9100\"\n{base}"), "t.toml").unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        let c = crate::config::parse(&format!("metrics = \"[::1]:9100\"\n{base}"), "t.toml").unwrap();
        assert_eq!(c.metrics, Some("[::1]:9100".parse().unwrap()));
        for (bad, says) in [("9100", "is not an address and port"), ("127.0.0.1:0", "port 0")] {
            let e = crate::config::parse(&format!("{base}metrics = \"{bad}\"\n"), "t.toml").unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("t.toml:2: metrics: ") && text.contains(says), "{text}");
        }
    }

    #[test]
    fn docs_list_every_metric() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/observability.md");
        let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        let table = markdown_table();
        assert!(doc.contains(&table), "docs/observability.md, \"Metrics\", should hold this table:\n{table}");
    }
}
