//! The control API: HTTP/JSON on a Unix socket (mode 0600: root only by default), so that
//! `lbctl` and `curl --unix-socket` both work. Every route maps onto one [`Agent`] operation.
use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use axum::{
    extract::{Path as UrlPath, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{on, MethodFilter, MethodRouter},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{
    agent::{Agent, AgentError},
    config::{BackendSpec, VipSpec},
};

pub type Shared = Arc<Mutex<Agent>>;

/// An HTTP method of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Put => MethodFilter::PUT,
            Method::Delete => MethodFilter::DELETE,
        }
    }
}

/// One route of the API: the router is built from [`ROUTES`], and so is the docs' table
/// ([`markdown_table`]), so neither can list a route the other lacks.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    /// What the request carries, for the docs ("" for nothing).
    pub takes: &'static str,
    /// What the route does, for the docs.
    pub does: &'static str,
    handler: fn(MethodFilter) -> MethodRouter<Shared>,
}

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::Get,
        path: "/v1/status",
        takes: "",
        does: "the agent's state, as `lbctl status` shows it",
        handler: |m| on(m, status),
    },
    Route {
        method: Method::Get,
        path: "/v1/vips",
        takes: "",
        does: "every VIP with its backends",
        handler: |m| on(m, list_vips),
    },
    Route {
        method: Method::Post,
        path: "/v1/vips",
        takes: "a `[[vip]]` table as JSON",
        does: "add a VIP (201)",
        handler: |m| on(m, add_vip),
    },
    Route {
        method: Method::Get,
        path: "/v1/vips/{vip}",
        takes: "",
        does: "one VIP with its backends",
        handler: |m| on(m, show_vip),
    },
    Route {
        method: Method::Delete,
        path: "/v1/vips/{vip}",
        takes: "",
        does: "remove the VIP",
        handler: |m| on(m, remove_vip),
    },
    Route {
        method: Method::Get,
        path: "/v1/vips/{vip}/backends",
        takes: "",
        does: "its backends, with health, `next_hop` and (least-conn) `connections`",
        handler: |m| on(m, list_backends),
    },
    Route {
        method: Method::Post,
        path: "/v1/vips/{vip}/backends",
        takes: "a `[[vip.backend]]` table as JSON: `{\"address\": ..., \"weight\": ...}`",
        does: "add a backend (201)",
        handler: |m| on(m, add_backend),
    },
    Route {
        method: Method::Delete,
        path: "/v1/vips/{vip}/backends/{address}",
        takes: "",
        does: "remove the backend",
        handler: |m| on(m, remove_backend),
    },
    Route {
        method: Method::Post,
        path: "/v1/vips/{vip}/backends/{address}/drain",
        takes: "",
        does: "drain it: no new flows, open ones continue",
        handler: |m| on(m, drain),
    },
    Route {
        method: Method::Post,
        path: "/v1/vips/{vip}/backends/{address}/undrain",
        takes: "",
        does: "undrain it",
        handler: |m| on(m, undrain),
    },
    Route {
        method: Method::Put,
        path: "/v1/vips/{vip}/backends/{address}/weight",
        takes: "`{\"weight\": 50}`",
        does: "set its weight",
        handler: |m| on(m, set_weight),
    },
    Route {
        method: Method::Get,
        path: "/v1/stats",
        takes: "",
        does: "counters per VIP, per backend, global (as `lbctl stats --json`)",
        handler: |m| on(m, stats),
    },
    Route {
        method: Method::Get,
        path: "/v1/flows",
        takes: "query `vip`, `backend`, `state` (`confirmed` or `unconfirmed`), `limit` (each optional)",
        does: "flows per backend over the whole flow table, unconfirmed ones too, and a sample (as `lbctl flows`)",
        handler: |m| on(m, flows),
    },
    Route {
        method: Method::Post,
        path: "/v1/plan",
        takes: "a config file (TOML)",
        does: "what applying it would change (as `lbctl plan -f`)",
        handler: |m| on(m, plan),
    },
    Route {
        method: Method::Post,
        path: "/v1/apply",
        takes: "a config file (TOML)",
        does: "apply it (as `lbctl apply -f`); answers the plan",
        handler: |m| on(m, apply),
    },
    Route {
        method: Method::Get,
        path: "/v1/denies",
        takes: "",
        does: "the deny lists: `[security]`'s, the VIPs', and the operator's with their expiry (as `lbctl deny list`)",
        handler: |m| on(m, list_denies),
    },
    Route {
        method: Method::Post,
        path: "/v1/denies",
        takes: "`{\"prefix\": \"198.18.7.0/24\", \"vip\": ..., \"seconds\": 600}` (`vip`, `seconds` optional)",
        does: "deny a prefix to a VIP or every VIP, until removed or for `seconds` (201)",
        handler: |m| on(m, add_deny),
    },
    Route {
        method: Method::Delete,
        path: "/v1/denies",
        takes: "`{\"prefix\": ..., \"vip\": ...}`",
        does: "remove an operator's deny",
        handler: |m| on(m, remove_deny),
    },
    Route {
        method: Method::Get,
        path: "/v1/top",
        takes: "query `vip`, `limit`, `prefix` (each optional)",
        does: "the sources (or with `prefix`, the blocks of that length) sending the most now (a second: since the start of the previous second), with what the limits refused (as `lbctl top`)",
        handler: |m| on(m, top),
    },
    Route {
        method: Method::Post,
        path: "/v1/capture",
        takes: "`{\"vip\": ..., \"count\": 10, \"timeout_ms\": 10000}`",
        does: "copy the VIP's next packets: answers a pcap file (as `lbctl capture`)",
        handler: |m| on(m, capture),
    },
    Route {
        method: Method::Post,
        path: "/v1/host/drain",
        takes: "",
        does: "withdraw every VIP this host announces (saved: a restart keeps it); forwarding goes on",
        handler: |m| on(m, host_drain),
    },
    Route {
        method: Method::Post,
        path: "/v1/host/undrain",
        takes: "",
        does: "announce the VIPs again, as their health says",
        handler: |m| on(m, host_undrain),
    },
];

pub fn router(agent: Shared) -> Router {
    ROUTES
        .iter()
        .fold(Router::new(), |router, r| router.route(r.path, (r.handler)(r.method.filter())))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such endpoint: see docs/operations.md, \"Control API\"".into(),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(agent)
}

/// The largest request body lbd reads: a config file of every VIP and backend the limits allow
/// fits (`lbctl apply -f` sends the file whole).
pub const MAX_BODY: usize = 64 << 20;

/// The docs' table of routes (docs/operations.md, "Control API"), made from [`ROUTES`].
pub fn markdown_table() -> String {
    let mut out = String::from("| method and path | takes | does |\n|---|---|---|\n");
    for r in ROUTES {
        out += &format!("| `{} {}` | {} | {} |\n", r.method.as_str(), r.path, r.takes, r.does);
    }
    out
}

/// Why the API socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another process answers on {}: stop it (another lbd?), or give this one another api_socket", .0.display())]
    Taken(std::path::PathBuf),
    #[error("cannot serve the control API on {} (`api_socket` in the config): {source}", .path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

/// The API socket, bound but not listening yet: until lbd serves it, lbctl is refused at once
/// (as by an lbd that is not there) rather than left waiting on an lbd that is still starting.
pub struct ApiSocket(socket2::Socket);

impl ApiSocket {
    /// Starts listening (needs a tokio runtime).
    pub fn listen(self) -> std::io::Result<tokio::net::UnixListener> {
        self.0.listen(1024)?;
        let listener = std::os::unix::net::UnixListener::from(std::os::fd::OwnedFd::from(self.0));
        listener.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(listener)
    }
}

/// Binds the API socket (root-only), replacing a stale socket file but never one that another
/// process still answers on.
pub fn bind(socket: &std::path::Path) -> Result<ApiSocket, BindError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |source| BindError::Io { path: socket.to_owned(), source };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(BindError::Taken(socket.to_owned()));
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let bound = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).map_err(io)?;
    bound.bind(&socket2::SockAddr::unix(socket).map_err(io)?).map_err(io)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(ApiSocket(bound))
}

/// Serves on `listener` (see [`bind`]) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::UnixListener,
    agent: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(agent)).with_graceful_shutdown(shutdown).await
}

/// An error answer: `{"error": "..."}` with a status scripts can branch on.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

#[derive(Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let status = match e {
            AgentError::Invalid(_) => StatusCode::BAD_REQUEST,
            AgentError::NotFound(_) => StatusCode::NOT_FOUND,
            AgentError::Conflict(_) => StatusCode::CONFLICT,
            // Refused for this host (forwarding off with host.forwarding = "check"): nothing changed.
            AgentError::Host(crate::host::HostError::ForwardingOff { .. }) => StatusCode::BAD_REQUEST,
            AgentError::Apply(_) | AgentError::Persist { .. } | AgentError::Host(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// A JSON request body, whatever its content type (so a bare `curl -d` works), with parse
/// errors answered in the API's own error format.
pub struct Body<T>(T);

/// A request body as UTF-8 text (a config file), its errors answered as JSON like the others'.
pub struct Text(String);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Text {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        String::from_request(req, state)
            .await
            .map(Text)
            .map_err(|e| ApiError(e.status(), format!("cannot read the request body: {}", e.body_text())))
    }
}

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError(e.status(), format!("cannot read the request body: {}", e.body_text())))?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("the request body is not the JSON this call takes: {e}"),
            )
        })
    }
}

fn address(text: &str) -> Result<IpAddr, ApiError> {
    text.parse()
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{text:?} is not an IPv4 or IPv6 address")))
}

#[derive(Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub interfaces: Vec<String>,
    /// The configured `xdp_mode` (kept for readers of older lbd versions' status).
    pub xdp_mode: crate::config::XdpMode,
    /// What each of `interfaces` has attached, as the kernel reports it (not as configured).
    #[serde(default)]
    pub xdp: Vec<InterfaceXdp>,
    pub pin_dir: String,
    pub state_file: String,
    pub config_file: Option<String>,
    /// The saved state and pinned maps of an earlier agent were taken over.
    pub adopted: bool,
    /// Pinned links of an earlier agent whose program was replaced in place.
    pub links_adopted: usize,
    /// Pinned links of an earlier agent that were no use (dead, in another mode): replaced.
    #[serde(default)]
    pub links_replaced: usize,
    pub started_unix: u64,
    pub vips: usize,
    pub backends: usize,
    /// How late the event loop's 1-second tick ran at most since lbd started, and in the last
    /// minute: what a slow operation on the loop delays health changes and signals by.
    #[serde(default)]
    pub event_loop_lag_max_seconds: f64,
    #[serde(default)]
    pub event_loop_lag_recent_max_seconds: f64,
    /// Each VIP's ring fingerprint: equal on two balancer hosts, the same picks.
    #[serde(default)]
    pub rings: Vec<crate::agent::fingerprint::RingFingerprint>,
    /// What this host announces (with `[announce]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<crate::announce::Status>,
    /// Prefixes of the global deny list (`[security]`), and the operator's denies in force.
    #[serde(default)]
    pub global_deny: usize,
    #[serde(default)]
    pub denies: usize,
    /// The flow table's fill at lbd's last census of it (none yet: `None`).
    #[serde(default)]
    pub flow_table: Option<crate::agent::TableFill>,
}

/// The balancer on an interface, as the kernel reports it.
#[derive(Serialize, Deserialize)]
pub struct InterfaceXdp {
    pub interface: String,
    /// The mode it is attached in; none: not attached, `problem` says why.
    pub mode: Option<crate::config::XdpMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl InterfaceXdp {
    fn of(a: &Agent, interface: &str) -> InterfaceXdp {
        let (mode, problem) = match a.datapath.link_state(interface) {
            Ok(crate::datapath::LinkState::Attached(mode)) => (Some(mode.into()), None),
            Ok(other) => (None, Some(other.to_string())),
            Err(e) => (None, Some(format!("cannot tell: {e}"))),
        };
        InterfaceXdp { interface: interface.into(), mode, problem }
    }
}

async fn status(State(agent): State<Shared>) -> Json<Status> {
    Json(status_of(&*agent.lock().await))
}

/// The agent's state as `GET /v1/status` answers it (the status page shows it too).
pub fn status_of(a: &Agent) -> Status {
    Status {
        version: env!("CARGO_PKG_VERSION").into(),
        interfaces: a.config.interfaces.clone(),
        xdp_mode: a.config.xdp_mode,
        xdp: a.config.interfaces.iter().map(|i| InterfaceXdp::of(a, i)).collect(),
        pin_dir: a.datapath.pin_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        state_file: a.state_file.display().to_string(),
        config_file: a.config_file.as_ref().map(|p| p.display().to_string()),
        adopted: a.adopted,
        links_adopted: a.links_adopted,
        links_replaced: a.links_replaced,
        started_unix: a.started.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        vips: a.config.vips.len(),
        backends: a.config.vips.iter().map(|v| v.backends.len()).sum(),
        event_loop_lag_max_seconds: a.loop_lag.max().as_secs_f64(),
        event_loop_lag_recent_max_seconds: a.loop_lag.recent_max().as_secs_f64(),
        rings: a.ring_fingerprints(),
        announce: a.announce_status(),
        global_deny: a.config.security.deny.len(),
        denies: a.denies.len(),
        flow_table: a.table_fill,
    }
}

/// A VIP with its ring's fingerprint, as `lbctl vip list` shows it.
#[derive(Serialize, Deserialize)]
pub struct VipView {
    #[serde(flatten)]
    pub vip: crate::config::Vip,
    pub ring_fingerprint: String,
}

async fn list_vips(State(agent): State<Shared>) -> Json<Vec<VipView>> {
    let a = agent.lock().await;
    let prints = a.ring_fingerprints();
    let views = a
        .config
        .vips
        .iter()
        .zip(prints)
        .map(|(v, p)| VipView { vip: v.clone(), ring_fingerprint: p.fingerprint })
        .collect();
    Json(views)
}

async fn host_drain(State(agent): State<Shared>) -> ApiResult<()> {
    agent.lock().await.set_host_drained(true)?;
    Ok(Json(()))
}

async fn host_undrain(State(agent): State<Shared>) -> ApiResult<()> {
    agent.lock().await.set_host_drained(false)?;
    Ok(Json(()))
}

async fn show_vip(
    State(agent): State<Shared>,
    UrlPath(vip): UrlPath<String>,
) -> ApiResult<crate::config::Vip> {
    Ok(Json(agent.lock().await.vip(&vip)?.clone()))
}

async fn add_vip(
    State(agent): State<Shared>,
    Body(spec): Body<VipSpec>,
) -> Result<impl IntoResponse, ApiError> {
    let vip = agent.lock().await.add_vip(&spec)?;
    Ok((StatusCode::CREATED, Json(vip)))
}

async fn remove_vip(State(agent): State<Shared>, UrlPath(vip): UrlPath<String>) -> ApiResult<()> {
    agent.lock().await.remove_vip(&vip)?;
    Ok(Json(()))
}

/// A backend with its health, as `lbctl backend list` shows it.
#[derive(Serialize, Deserialize)]
pub struct BackendView {
    #[serde(flatten)]
    pub backend: crate::config::Backend,
    /// "up", "down", or "-" (no health check).
    pub health: String,
    /// The last check's result: true (passed), false (failed), absent before the first and when
    /// it did not run (this host's error, in `last_error`).
    pub last_ok: Option<bool>,
    pub last_checked_unix: Option<u64>,
    pub last_error: Option<String>,
    /// Health state changes since lbd started.
    pub transitions: u64,
    /// Open TCP connections the data plane counts (least-conn VIPs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Where its packets go next: interface, next hop, MAC, or why none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<crate::host::neighbours::NextHopStatus>,
}

async fn list_backends(
    State(agent): State<Shared>,
    UrlPath(vip): UrlPath<String>,
) -> ApiResult<Vec<BackendView>> {
    Ok(Json(backend_views(&*agent.lock().await, &vip)?))
}

/// `vip`'s backends with their health, connections and next hops, as
/// `GET /v1/vips/{vip}/backends` answers (the status page shows them too).
pub fn backend_views(a: &Agent, vip: &str) -> Result<Vec<BackendView>, AgentError> {
    let v = a.vip(vip)?;
    v.backends
        .iter()
        .map(|b| {
            let (health, status) = a.health_of(vip, b.address);
            let status = status.unwrap_or_default();
            let connections = match a.applied.ids.backend(vip, b.address) {
                Some(id) => a.connections_of(v, id).map_err(|e| AgentError::Apply(e.into()))?,
                None => None,
            };
            Ok(BackendView {
                backend: b.clone(),
                health,
                last_ok: status.last_ok,
                last_checked_unix: status
                    .last_checked
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                last_error: status.last_error,
                transitions: status.transitions,
                connections,
                next_hop: a.host.as_ref().map(|h| h.status(b.address)),
            })
        })
        .collect()
}

async fn add_backend(
    State(agent): State<Shared>,
    UrlPath(vip): UrlPath<String>,
    Body(spec): Body<BackendSpec>,
) -> Result<impl IntoResponse, ApiError> {
    agent.lock().await.add_backend(&vip, &spec)?;
    Ok((StatusCode::CREATED, Json(())))
}

async fn remove_backend(
    State(agent): State<Shared>,
    UrlPath((vip, addr)): UrlPath<(String, String)>,
) -> ApiResult<()> {
    agent.lock().await.remove_backend(&vip, address(&addr)?)?;
    Ok(Json(()))
}

async fn drain(
    State(agent): State<Shared>,
    UrlPath((vip, addr)): UrlPath<(String, String)>,
) -> ApiResult<()> {
    agent.lock().await.set_drained(&vip, address(&addr)?, true)?;
    Ok(Json(()))
}

async fn undrain(
    State(agent): State<Shared>,
    UrlPath((vip, addr)): UrlPath<(String, String)>,
) -> ApiResult<()> {
    agent.lock().await.set_drained(&vip, address(&addr)?, false)?;
    Ok(Json(()))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weight {
    pub weight: i64,
}

async fn set_weight(
    State(agent): State<Shared>,
    UrlPath((vip, addr)): UrlPath<(String, String)>,
    Body(w): Body<Weight>,
) -> ApiResult<()> {
    agent.lock().await.set_weight(&vip, address(&addr)?, w.weight)?;
    Ok(Json(()))
}

async fn stats(State(agent): State<Shared>) -> ApiResult<crate::agent::Stats> {
    Ok(Json(agent.lock().await.stats()?))
}

/// `GET /v1/flows?vip=&backend=&state=&limit=`: per-backend flow counts over the whole flow
/// table, and a sample of `limit` flows (default 20); `state`: `confirmed` or `unconfirmed`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowsQuery {
    pub vip: Option<String>,
    pub backend: Option<String>,
    /// `confirmed` or `unconfirmed` (empty: either).
    pub state: Option<String>,
    pub limit: Option<usize>,
}

async fn flows(
    State(agent): State<Shared>,
    query: Result<axum::extract::Query<FlowsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<crate::agent::flows::Flows> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let vip = q.vip.as_deref().filter(|v| !v.is_empty());
    let backend = q.backend.as_deref().filter(|b| !b.is_empty()).map(address).transpose()?;
    let limit = q.limit.unwrap_or(crate::agent::flows::DEFAULT_SAMPLE);
    let state = q.state.as_deref().filter(|s| !s.is_empty()).map(flow_state).transpose()?;
    let walk = agent.lock().await.flow_query(vip, backend, state, limit)?;
    // A big table takes a while: walk it off the runtime, without holding the agent.
    let flows = tokio::task::spawn_blocking(move || walk.run())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("walking the flow table: {e}")))?
        .map_err(|e| AgentError::Apply(e.into()))?;
    Ok(Json(flows))
}

fn flow_state(text: &str) -> Result<crate::agent::flows::FlowState, ApiError> {
    <crate::agent::flows::FlowState as clap::ValueEnum>::from_str(text, false).map_err(|_| {
        ApiError(StatusCode::BAD_REQUEST, format!("state {text:?}: use confirmed or unconfirmed"))
    })
}

/// The name errors give the posted config (`lbctl apply -f` sends the file name).
fn origin(headers: &HeaderMap) -> String {
    headers.get("x-config-origin").and_then(|v| v.to_str().ok()).unwrap_or("posted config").to_owned()
}

async fn apply(
    State(agent): State<Shared>,
    headers: HeaderMap,
    Text(body): Text,
) -> ApiResult<Vec<crate::agent::reconcile::PlanEntry>> {
    Ok(Json(agent.lock().await.apply_text(&body, &origin(&headers))?))
}

async fn plan(
    State(agent): State<Shared>,
    headers: HeaderMap,
    Text(body): Text,
) -> ApiResult<Vec<crate::agent::reconcile::PlanEntry>> {
    Ok(Json(agent.lock().await.plan_text(&body, &origin(&headers))?))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    pub vip: String,
    /// Packets to capture (each is copied before and after its rewrite).
    #[serde(default = "default_capture_count")]
    pub count: usize,
    #[serde(default = "default_capture_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_capture_count() -> usize {
    10
}

fn default_capture_timeout_ms() -> u64 {
    10_000
}

/// Capture switched on for as long as it lives: dropped before [`CaptureOn::stop`] (the
/// client went away, and the handler with it), it ends the collection and switches capture off.
struct CaptureOn {
    agent: Shared,
    vip: u32,
    cancel: Arc<AtomicBool>,
    on: bool,
}

impl CaptureOn {
    async fn start(agent: &Shared, vip: &str) -> Result<CaptureOn, AgentError> {
        let vip = agent.lock().await.start_capture(vip)?;
        Ok(CaptureOn { agent: agent.clone(), vip, cancel: Arc::default(), on: true })
    }

    async fn stop(mut self) -> Result<(), AgentError> {
        self.cancel.store(true, Ordering::Relaxed);
        // Off only once switched off: a handler dropped while it waits for the agent (its
        // client gone) leaves the switching off to `drop`, not to no one.
        let stopped = self.agent.lock().await.stop_capture();
        self.on = false;
        stopped
    }
}

impl Drop for CaptureOn {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if !self.on {
            return;
        }
        let agent = self.agent.clone();
        // Dropped inside the runtime (with the handler's future): the agent lock is async.
        tokio::spawn(async move {
            tracing::info!("the capture's client went away");
            if let Err(e) = agent.lock().await.stop_capture() {
                tracing::error!("switching capture off: {e}");
            }
        });
    }
}

/// Answers a pcap file; `x-captured-packets` says how many packets it holds (fewer than asked
/// if the timeout came first) and `x-lost-samples` what the kernel could not deliver.
async fn capture(State(agent): State<Shared>, Body(req): Body<CaptureRequest>) -> Result<Response, ApiError> {
    if !(1..=10_000).contains(&req.count) || !(1..=60_000).contains(&req.timeout_ms) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "count must be 1 to 10000 and timeout_ms 1 to 60000".into(),
        ));
    }
    let buffers = agent.lock().await.capture_buffers()?;
    // One capture at a time. One whose client went away lets go of the buffers within
    // CANCEL_LATENCY: a capture started right after it waits for that, not for a 409.
    let mut buffers = tokio::time::timeout(4 * crate::capture::CANCEL_LATENCY, buffers.lock_owned())
        .await
        .map_err(|_| AgentError::Conflict("a capture is already running: wait for it to finish".into()))?;
    buffers.drain();
    let on = CaptureOn::start(&agent, &req.vip).await?;
    let (vip, cancel) = (on.vip, on.cancel.clone());
    let timeout = std::time::Duration::from_millis(req.timeout_ms);
    let count = req.count;
    // If the client goes away here, axum drops this future and `on` with it. The buffers are
    // let go only once capture is off: a capture waiting for them then finds it off, not a 409.
    let collected = tokio::task::spawn_blocking(move || {
        let collected = buffers.collect(vip, count, timeout, &cancel);
        (collected, buffers)
    })
    .await;
    on.stop().await?;
    let ((packets, lost), buffers) =
        collected.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("capture failed: {e}")))?;
    drop(buffers);
    let captured = packets.iter().filter(|p| !p.after).count();
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/vnd.tcpdump.pcap".to_string()),
            (axum::http::HeaderName::from_static("x-captured-packets"), captured.to_string()),
            (axum::http::HeaderName::from_static("x-lost-samples"), lost.to_string()),
        ],
        crate::capture::pcap(&packets),
    )
        .into_response())
}

/// A deny as `lbctl deny list` shows it.
#[derive(Serialize, Deserialize)]
pub struct DenyView {
    pub prefix: crate::security::Prefix,
    /// The VIP's name; none: every VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// "config" (the file's lists: change the file) or "lbctl" (`lbctl deny`).
    pub origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix: Option<u64>,
}

async fn list_denies(State(agent): State<Shared>) -> Json<Vec<DenyView>> {
    let a = agent.lock().await;
    let config = |prefix, vip: Option<&str>| DenyView {
        prefix,
        vip: vip.map(str::to_owned),
        origin: "config".into(),
        expires_unix: None,
    };
    let mut views: Vec<DenyView> = a.config.security.deny.iter().map(|p| config(*p, None)).collect();
    for v in &a.config.vips {
        views.extend(v.deny.iter().map(|p| config(*p, Some(&v.name))));
    }
    views.extend(a.denies.iter().map(|d| DenyView {
        prefix: d.prefix,
        vip: d.vip.clone(),
        origin: "lbctl".into(),
        expires_unix: d.expires_unix,
    }));
    Json(views)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRequest {
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// How long it holds; none: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
}

fn prefix(text: &str) -> Result<crate::security::Prefix, ApiError> {
    text.parse().map_err(|e: String| ApiError(StatusCode::BAD_REQUEST, e))
}

async fn add_deny(
    State(agent): State<Shared>,
    Body(req): Body<DenyRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if req.seconds == Some(0) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "seconds must be above 0 (leave it out for no expiry)".into(),
        ));
    }
    let deny = agent.lock().await.add_deny(prefix(&req.prefix)?, req.vip.as_deref(), req.seconds)?;
    Ok((StatusCode::CREATED, Json(deny)))
}

async fn remove_deny(State(agent): State<Shared>, Body(req): Body<DenyRequest>) -> ApiResult<()> {
    agent.lock().await.remove_deny(prefix(&req.prefix)?, req.vip.as_deref())?;
    Ok(Json(()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopQuery {
    pub vip: Option<String>,
    pub limit: Option<usize>,
    pub prefix: Option<u8>,
}

async fn top(
    State(agent): State<Shared>,
    query: Result<axum::extract::Query<TopQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<crate::agent::top::Top> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let vip = q.vip.as_deref().filter(|v| !v.is_empty());
    let limit = q.limit.unwrap_or(crate::agent::top::DEFAULT_LIMIT);
    let query = agent.lock().await.top_query(vip, limit, q.prefix)?;
    // Under a flood the per-source table is full: walk it off the runtime, without the agent.
    let top = tokio::task::spawn_blocking(move || query.run())
        .await
        .map_err(|e| {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the per-source state: {e}"))
        })?
        .map_err(|e| AgentError::Apply(e.into()))?;
    Ok(Json(top))
}
