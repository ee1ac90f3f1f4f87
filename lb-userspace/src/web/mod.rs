//! The status page: `GET /` on the metrics listener (`metrics` in the config), for a person
//! with a browser. Host state, every VIP and backend with health, next hop and traffic, and
//! charts of the last 15 minutes, updated every second from JSON the page polls ([`ROUTES`]).
//!
//! With `web_admin_token` in the config the page also drains, undrains and weighs backends; the
//! requests carry the token ([`auth`]). Without it those routes answer 404, as any unknown path.
pub mod assets;
pub mod auth;
pub mod listener;
pub mod samples;
pub mod status;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, Path as UrlPath, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put, MethodRouter},
    Json, Router,
};
use serde::Deserialize;
use tracing::{info, warn};

pub use self::samples::Samples;
use crate::api::{self, ErrorBody, Method, Shared};

#[derive(Clone)]
struct Web {
    agent: Shared,
    samples: Arc<Samples>,
    refusals: Arc<Mutex<SparseLog>>,
}

/// What anyone on the network can make happen (a refused request, a connection closed at the
/// cap) is logged at most once per this, with how many went unlogged before: a client looping
/// on a wrong token, or churning connections, must not flood the journal (whose rate limit would
/// then drop lbd's own lines, health changes among them).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One kind of such events' log lines, at most one per [`LOG_EVERY`].
#[derive(Default)]
pub(crate) struct SparseLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl SparseLog {
    /// Whether an event at `now` is logged, and if so how many were not, since the last one.
    pub(crate) fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// One route of the page: the router and the docs' table ([`markdown_table`]) are both made
/// from [`ROUTES`].
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    /// Only with `web_admin_token` set, and the token sent (else 404, or 401).
    pub admin: bool,
    pub does: &'static str,
    handler: fn() -> MethodRouter<Web>,
}

pub const ROUTES: &[Route] = &[
    Route { method: Method::Get, path: "/", admin: false, does: "the status page", handler: || get(page) },
    Route {
        method: Method::Get,
        path: "/assets/{file}",
        admin: false,
        does: "its script, styles, uPlot and uPlot's licence (inside lbd: no internet needed)",
        handler: || get(asset),
    },
    Route {
        method: Method::Get,
        path: "/api/status",
        admin: false,
        does: "host, VIPs and backends with health, next hop, connections, rates and share (below)",
        handler: || get(status),
    },
    Route {
        method: Method::Get,
        path: "/api/samples",
        admin: false,
        does: "the last 15 minutes of 1-second rates; `?after=T`: only the samples after time T (below)",
        handler: || get(samples),
    },
    Route {
        method: Method::Get,
        path: "/api/auth",
        admin: true,
        does: "204 if the token is right (the page checks it before it offers actions)",
        handler: || get(check_token),
    },
    Route {
        method: Method::Post,
        path: "/api/vips/{vip}/backends/{address}/drain",
        admin: true,
        does: "drain the backend: no new flows, open ones continue",
        handler: || post(drain),
    },
    Route {
        method: Method::Post,
        path: "/api/vips/{vip}/backends/{address}/undrain",
        admin: true,
        does: "undrain it",
        handler: || post(undrain),
    },
    Route {
        method: Method::Put,
        path: "/api/vips/{vip}/backends/{address}/weight",
        admin: true,
        does: "set its weight: `{\"weight\": 50}`",
        handler: || put(weight),
    },
];

/// The page's routes, for the metrics listener to serve beside `/metrics`.
pub fn router(agent: Shared, samples: Arc<Samples>) -> Router {
    ROUTES
        .iter()
        .fold(Router::new(), |router, r| router.route(r.path, (r.handler)()))
        .with_state(Web { agent, samples, refusals: Default::default() })
        // The page's bodies are a few bytes: a stranger's are cut at 4 KiB (the weight's is
        // read before its token is checked, to tell a bad body from a bad token).
        .layer(axum::extract::DefaultBodyLimit::max(4096))
}

/// What the listener answers for a path it does not serve.
pub fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found: lbd serves its status page on / and Prometheus metrics on /metrics\n")
        .into_response()
}

/// The docs' table of the page's routes (docs/observability.md, "Status page").
pub fn markdown_table() -> String {
    let mut out = String::from("| method and path | needs the token | does |\n|---|---|---|\n");
    for r in ROUTES {
        let admin = if r.admin { "yes (404 without `web_admin_token`)" } else { "no" };
        out += &format!("| `{} {}` | {admin} | {} |\n", r.method.as_str(), r.path, r.does);
    }
    out
}

/// The page's own answers may not be framed by another site (its buttons act) nor sniffed.
fn hardened(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // A page built for lbd's own JSON: a new lbd's page comes with it.
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn page() -> Response {
    hardened(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], assets::INDEX).into_response())
}

async fn asset(UrlPath(file): UrlPath<String>) -> Response {
    match assets::asset(&file) {
        Some(a) => hardened(([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()),
        None => not_found(),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

async fn status(State(web): State<Web>) -> Response {
    let agent = web.agent.lock().await;
    match status::PageStatus::read(&agent, &web.samples) {
        Ok(s) => Json(s).into_response(),
        Err(e) => api::ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
struct SamplesQuery {
    /// Seconds since the Unix epoch.
    after: Option<f64>,
}

async fn samples(
    State(web): State<Web>,
    query: Result<Query<SamplesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "after= takes seconds since the Unix epoch, e.g. after=1700000000.5".into(),
        );
    };
    Json(web.samples.since(q.after.unwrap_or(0.0))).into_response()
}

/// The actions the page takes.
#[derive(Clone, Copy, Debug)]
enum Action {
    Drain,
    Undrain,
    Weight(i64),
}

/// Checks the token (404 if none is configured), then takes `action` (`None`: only the check)
/// for `client`. A refused request holds the agent only to read the token; the action checks
/// it again under the lock it is taken under (a reload may have changed it in between).
async fn act(
    web: &Web,
    client: SocketAddr,
    headers: &HeaderMap,
    target: Option<(&str, &str)>,
    action: Option<Action>,
) -> Response {
    let token = web.agent.lock().await.config.web_admin_token.clone();
    let Some(token) = token else { return not_found() };
    if let Err(refusal) = auth::authorize(&token, headers) {
        let admitted = web.refusals.lock().unwrap_or_else(|e| e.into_inner()).admit(Instant::now());
        if let Some(unlogged) = admitted {
            warn!(%client, %refusal, ?action, refused_since_unlogged = unlogged, "status page: refused");
        }
        return match refusal {
            auth::Refusal::Unauthorized => {
                let mut r = error(StatusCode::UNAUTHORIZED, refusal.to_string());
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            auth::Refusal::CrossSite(_) => error(StatusCode::FORBIDDEN, refusal.to_string()),
        };
    }
    let (Some((vip, address)), Some(action)) = (target, action) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let Ok(backend) = address.parse::<IpAddr>() else {
        return error(StatusCode::BAD_REQUEST, format!("{address:?} is not an IPv4 or IPv6 address"));
    };
    let mut agent = web.agent.lock().await;
    if agent.config.web_admin_token.as_ref() != Some(&token) {
        return error(StatusCode::UNAUTHORIZED, "the token changed meanwhile: unlock the page again".into());
    }
    let done = match action {
        Action::Drain => agent.set_drained(vip, backend, true),
        Action::Undrain => agent.set_drained(vip, backend, false),
        Action::Weight(w) => agent.set_weight(vip, backend, w),
    };
    match done {
        Ok(()) => {
            info!(%client, vip, %backend, ?action, "status page: action taken");
            Json(()).into_response()
        }
        Err(e) => api::ApiError::from(e).into_response(),
    }
}

async fn check_token(
    State(web): State<Web>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    act(&web, client, &headers, None, None).await
}

async fn drain(
    State(web): State<Web>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    UrlPath(p): UrlPath<(String, String)>,
) -> Response {
    act(&web, client, &headers, Some((&p.0, &p.1)), Some(Action::Drain)).await
}

async fn undrain(
    State(web): State<Web>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    UrlPath(p): UrlPath<(String, String)>,
) -> Response {
    act(&web, client, &headers, Some((&p.0, &p.1)), Some(Action::Undrain)).await
}

async fn weight(
    State(web): State<Web>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    UrlPath(p): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<api::Weight>(&body) {
        Ok(w) => act(&web, client, &headers, Some((&p.0, &p.1)), Some(Action::Weight(w.weight))).await,
        // The token first: a stranger learns nothing from the body's errors.
        Err(e) => match act(&web, client, &headers, None, None).await {
            r if r.status() == StatusCode::NO_CONTENT => {
                error(StatusCode::BAD_REQUEST, format!("the body should be {{\"weight\": 0 to 65535}}: {e}"))
            }
            refused => refused,
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn docs_list_every_route() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/observability.md");
        let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        let table = super::markdown_table();
        assert!(
            doc.contains(&table),
            "docs/observability.md, \"Status page\", should hold this table:\n{table}"
        );
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_the_count_between() {
        let mut log = super::SparseLog::default();
        let t0 = std::time::Instant::now();
        let at = |s: f64| t0 + std::time::Duration::from_secs_f64(s);
        assert_eq!(log.admit(at(0.0)), Some(0));
        assert_eq!((0..1000).filter_map(|i| log.admit(at(i as f64 / 200.0))).count(), 0, "within 5 s");
        assert_eq!(log.admit(at(9.9)), None);
        assert_eq!(log.admit(at(10.0)), Some(1001), "the next one says how many went unlogged");
        assert_eq!(log.admit(at(25.0)), Some(0));
    }
}
