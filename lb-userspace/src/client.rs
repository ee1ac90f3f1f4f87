//! A small HTTP/1.1 client for the control API's Unix socket (what lbctl uses).
use std::path::Path;

use http_body_util::{BodyExt as _, Full};
use hyper::{body::Bytes, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach lbd at {socket}: {source} (is lbd running? is --socket right? are you root?)")]
    Connect { socket: String, source: std::io::Error },
    #[error("talking to lbd: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot make the request: {0}")]
    Request(#[from] hyper::http::Error),
}

pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<(&'static str, Vec<u8>)>,
    origin: Option<&str>,
) -> Result<Response, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect { socket: socket.display().to_string(), source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", "lbd");
    if let Some(o) = origin {
        req = req.header("x-config-origin", o);
    }
    let (content_type, bytes) = body.unwrap_or(("application/json", Vec::new()));
    let req = req.header("content-type", content_type).body(Full::new(Bytes::from(bytes)))?;
    let res = sender.send_request(req).await?;
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await?.to_bytes();
    Ok(Response { status, headers, body })
}
