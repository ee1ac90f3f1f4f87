//! The TCP listener of `/metrics` and the status page, which anyone on the management network
//! may reach: connections are capped, a connection that takes longer than [`HEADER_TIMEOUT`]
//! to send a request's headers (or stays idle that long between requests) is closed, and every
//! request carries its client's address (`ConnectInfo`) for the page's audit log.
use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{extract::ConnectInfo, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::ServiceExt as _;
use tracing::warn;

/// Connections held at once; more are closed as they are accepted. A scraper or a browser
/// needs a few; the cap bounds what a flood of idle ones costs lbd.
pub const MAX_CONNECTIONS: usize = 512;
/// How long a client may take to send a request's headers, and how long a kept-alive
/// connection may wait for its next request (hyper starts the clock when it goes idle).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, app: Router) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut closed_at_cap = super::SparseLog::default();
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or memory, for now: the next accept may do.
                warn!("the metrics and status page listener could not accept a connection: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(unlogged) = closed_at_cap.admit(std::time::Instant::now()) {
                warn!(%client, max = MAX_CONNECTIONS, closed = unlogged + 1, "the metrics and status page listener holds max connections: new ones are closed until some end");
            }
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(client));
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.oneshot(request).await.unwrap_or_else(|e| match e {})) }
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            // A client that goes away or times out is no error of lbd's.
            let _ = connection.await;
        });
    }
}
