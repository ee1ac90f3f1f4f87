//! One probe of one backend: TCP connect, HTTP GET, UDP request/reply. Everything that does not
//! change between probes (address, request bytes) is prepared once per target.
//!
//! TCP probes end with an RST (as HAProxy's checks do): the probing side keeps no TIME_WAIT, so
//! thousands of probes a second do not use up the ephemeral ports, and the backend frees the
//! connection at once. TCP checks reuse their sockets ([`super::tcp`]); HTTP probes close
//! theirs with `SO_LINGER` 0.
use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    sync::Arc,
    time::Duration,
};

use thiserror::Error;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream, UdpSocket},
};

use super::{
    spec::{CheckKind, CheckSpec},
    tcp::{self, TcpAddr, TcpSockets},
};

/// Enough for any status line; the rest of the response is not read.
const HTTP_READ: usize = 512;
/// The largest UDP datagram: the expected bytes may lie anywhere in the reply.
const UDP_READ: usize = 65535;

/// Why a probe failed; shown as the backend's last error and in the reason of a state change.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("{what} {addr}: no answer within {} ms", .after.as_millis())]
    Timeout { what: &'static str, addr: SocketAddr, after: Duration },
    #[error("HTTP GET http://{addr}{path}: {source}")]
    HttpIo { addr: SocketAddr, path: String, source: io::Error },
    #[error("HTTP GET http://{addr}{path}: {problem}")]
    HttpResponse { addr: SocketAddr, path: String, problem: String },
    #[error("UDP to {addr}: {source}")]
    UdpIo { addr: SocketAddr, source: io::Error },
    #[error("UDP to {addr}: the reply of {len} bytes does not contain the expected bytes")]
    UdpMismatch { addr: SocketAddr, len: usize },
}

impl ProbeError {
    /// Whether the probe failed for a reason of lbd's own host (out of descriptors, of buffers,
    /// of memory or of ephemeral ports), not the backend's: such a probe says nothing about the
    /// backend and counts neither way.
    pub fn is_local(&self) -> bool {
        let source = match self {
            ProbeError::Connect { source, .. }
            | ProbeError::HttpIo { source, .. }
            | ProbeError::UdpIo { source, .. } => source,
            _ => return false,
        };
        matches!(
            source.raw_os_error(),
            Some(
                libc::EMFILE
                    | libc::ENFILE
                    | libc::ENOBUFS
                    | libc::ENOMEM
                    | libc::EADDRNOTAVAIL
                    | libc::EAGAIN
            )
        )
    }
}

enum Exchange {
    Tcp { addr: TcpAddr, sockets: Arc<TcpSockets> },
    Http { path: String, request: Box<[u8]>, status: RangeInclusive<u16> },
    Udp { send: Box<[u8]>, expect: Box<[u8]> },
}

/// A target's probe, ready to run any number of times.
pub struct Probe {
    addr: SocketAddr,
    timeout: Duration,
    exchange: Exchange,
}

impl Probe {
    /// `None` for a check that probes nothing. TCP checks take their sockets from `sockets`,
    /// which must only serve probes run on one runtime.
    pub fn new(ip: IpAddr, spec: &CheckSpec, sockets: &Arc<TcpSockets>) -> Option<Probe> {
        let addr = SocketAddr::new(ip, spec.port);
        let exchange = match &spec.kind {
            CheckKind::None => return None,
            CheckKind::Tcp => Exchange::Tcp { addr: TcpAddr::new(addr), sockets: sockets.clone() },
            CheckKind::Http { path, status } => {
                let host = match (ip, spec.port) {
                    (IpAddr::V4(a), 80) => a.to_string(),
                    (IpAddr::V6(a), 80) => format!("[{a}]"),
                    _ => addr.to_string(),
                };
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lbd-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
                );
                Exchange::Http {
                    path: path.clone(),
                    request: request.into_bytes().into(),
                    status: status.clone(),
                }
            }
            CheckKind::Udp { send, expect } => {
                Exchange::Udp { send: send.as_slice().into(), expect: expect.as_slice().into() }
            }
        };
        Some(Probe { addr, timeout: spec.timeout, exchange })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One probe, bounded by the check's timeout.
    pub async fn run(&self) -> Result<(), ProbeError> {
        match &self.exchange {
            // Keeps its own deadline: it looks at its socket on timer ticks anyway.
            Exchange::Tcp { addr, sockets } => tcp::check(sockets, addr, self.timeout).await,
            Exchange::Http { path, request, status } => {
                self.bounded("HTTP GET to", http(self.addr, path, request, status)).await
            }
            Exchange::Udp { send, expect } => self.bounded("UDP to", udp(self.addr, send, expect)).await,
        }
    }

    async fn bounded(
        &self,
        what: &'static str,
        exchange: impl Future<Output = Result<(), ProbeError>>,
    ) -> Result<(), ProbeError> {
        tokio::time::timeout(self.timeout, exchange).await.unwrap_or(Err(ProbeError::Timeout {
            what,
            addr: self.addr,
            after: self.timeout,
        }))
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    let err = |source| ProbeError::Connect { addr, source };
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(err)?;
    // RST on close: see the module comment. Closing never blocks: the socket is non-blocking.
    socket.set_zero_linger().map_err(err)?;
    socket.connect(addr).await.map_err(err)
}

async fn http(
    addr: SocketAddr,
    path: &str,
    request: &[u8],
    status: &RangeInclusive<u16>,
) -> Result<(), ProbeError> {
    let mut stream = connect(addr).await?;
    let io_err = |source| ProbeError::HttpIo { addr, path: path.into(), source };
    stream.write_all(request).await.map_err(io_err)?;
    let mut buf = vec![0; HTTP_READ];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        match stream.read(&mut buf[len..]).await.map_err(io_err)? {
            0 => break,
            n => len += n,
        }
    }
    let problem = match status_code(&buf[..len]) {
        Some(code) if status.contains(&code) => return Ok(()),
        Some(code) => format!("status {code}, expected {}-{}", status.start(), status.end()),
        None if len == 0 => "the connection closed before a response".into(),
        None => {
            let line = buf[..len].split(|&b| b == b'\n').next().unwrap_or_default();
            format!("not an HTTP response: {:?}", String::from_utf8_lossy(&line[..line.len().min(40)]))
        }
    };
    Err(ProbeError::HttpResponse { addr, path: path.into(), problem })
}

/// The code of a status line `HTTP/1.x NNN ...`.
fn status_code(response: &[u8]) -> Option<u16> {
    let rest = response.strip_prefix(b"HTTP/1.")?;
    let (digits, after) = rest.get(2..5).zip(rest.get(5))?;
    let version_ok = rest[0].is_ascii_digit() && rest[1] == b' ';
    if !version_ok || !digits.iter().all(u8::is_ascii_digit) || !matches!(after, b' ' | b'\r' | b'\n') {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

async fn udp(addr: SocketAddr, send: &[u8], expect: &[u8]) -> Result<(), ProbeError> {
    let err = |source| ProbeError::UdpIo { addr, source };
    let local: IpAddr =
        if addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    // A socket per probe: a late reply to an earlier probe cannot count for this one.
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await.map_err(err)?;
    // Connected: replies from other sources are dropped, an ICMP unreachable fails at once.
    socket.connect(addr).await.map_err(err)?;
    socket.send(send).await.map_err(err)?;
    let mut buf = vec![0; UDP_READ];
    let len = socket.recv(&mut buf).await.map_err(err)?;
    let reply = &buf[..len];
    if expect.is_empty() || reply.windows(expect.len()).any(|w| w == expect) {
        Ok(())
    } else {
        Err(ProbeError::UdpMismatch { addr, len })
    }
}

#[cfg(test)]
mod tests {
    use super::{super::test_servers as servers, *};

    fn spec(kind: CheckKind, port: u16) -> CheckSpec {
        CheckSpec { kind, port, timeout: Duration::from_millis(300), ..CheckSpec::default() }
    }

    async fn probe(kind: CheckKind, port: u16) -> Result<(), ProbeError> {
        Probe::new(servers::LOCALHOST, &spec(kind, port), &Arc::default()).unwrap().run().await
    }

    fn http(path: &str, status: RangeInclusive<u16>) -> CheckKind {
        CheckKind::Http { path: path.into(), status }
    }

    #[test]
    fn none_makes_no_probe() {
        assert!(Probe::new(servers::LOCALHOST, &CheckSpec::default(), &Arc::default()).is_none());
    }

    #[tokio::test]
    async fn tcp_connects_to_a_listener() {
        let server = servers::Tcp::start().await;
        probe(CheckKind::Tcp, server.port).await.unwrap();
        probe(CheckKind::Tcp, server.port).await.unwrap();
    }

    #[tokio::test]
    async fn tcp_fails_on_a_closed_port() {
        let port = servers::closed_port();
        let e = probe(CheckKind::Tcp, port).await.unwrap_err();
        assert!(matches!(e, ProbeError::Connect { .. }), "{e}");
        assert!(e.to_string().starts_with(&format!("connect to 127.0.0.1:{port}: ")), "{e}");
        assert!(e.to_string().contains("refused"), "{e}");
    }

    #[tokio::test]
    async fn http_checks_the_status_range() {
        let ok = servers::Http::start(200).await;
        probe(http("/healthz", 200..=399), ok.port).await.unwrap();
        let request = ok.requests.lock().unwrap()[0].clone();
        let expected_start = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n", ok.port);
        assert!(request.starts_with(&expected_start), "{request:?}");
        assert!(request.contains("\r\nConnection: close\r\n"), "{request:?}");
        assert!(request.ends_with("\r\n\r\n"), "{request:?}");

        let e = probe(http("/", 300..=399), ok.port).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("HTTP GET http://127.0.0.1:{}/: status 200, expected 300-399", ok.port)
        );

        let failing = servers::Http::start(500).await;
        let e = probe(http("/healthz", 200..=399), failing.port).await.unwrap_err();
        assert!(e.to_string().ends_with("/healthz: status 500, expected 200-399"), "{e}");
        probe(http("/", 500..=599), failing.port).await.unwrap();
    }

    #[tokio::test]
    async fn http_fails_on_a_closed_port_and_on_a_non_http_server() {
        let e = probe(http("/", 200..=399), servers::closed_port()).await.unwrap_err();
        assert!(matches!(e, ProbeError::Connect { .. }), "{e}");
        // A TCP server that accepts and closes: no response at all.
        let tcp = servers::Tcp::start().await;
        let e = probe(http("/", 200..=399), tcp.port).await.unwrap_err();
        assert!(matches!(e, ProbeError::HttpResponse { .. } | ProbeError::HttpIo { .. }), "{e}");
    }

    #[test]
    fn errors_of_lbd_own_host_are_local() {
        let addr: SocketAddr = "198.18.0.11:80".parse().unwrap();
        let os = io::Error::from_raw_os_error;
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM, libc::EADDRNOTAVAIL] {
            assert!(ProbeError::Connect { addr, source: os(errno) }.is_local(), "{errno}");
            assert!(ProbeError::UdpIo { addr, source: os(errno) }.is_local(), "{errno}");
        }
        for errno in [libc::ECONNREFUSED, libc::EHOSTUNREACH, libc::ENETUNREACH, libc::ECONNRESET] {
            assert!(!ProbeError::Connect { addr, source: os(errno) }.is_local(), "{errno}");
        }
        let timeout = ProbeError::Timeout { what: "connect to", addr, after: Duration::from_millis(1) };
        assert!(!timeout.is_local());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.1 20"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 x"), None);
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    #[tokio::test]
    async fn udp_needs_a_reply_with_the_expected_bytes() {
        let echo = servers::Udp::start(servers::UdpMode::Echo).await;
        let udp = |send: &[u8], expect: &[u8]| CheckKind::Udp { send: send.into(), expect: expect.into() };
        probe(udp(b"ping", b""), echo.port).await.unwrap();
        probe(udp(b"hello ping", b"ping"), echo.port).await.unwrap();
        let e = probe(udp(b"ping", b"pong"), echo.port).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "UDP to 127.0.0.1:{}: the reply of 4 bytes does not contain the expected bytes",
                echo.port
            )
        );
    }

    #[tokio::test]
    async fn udp_finds_the_expected_bytes_anywhere_in_a_large_reply() {
        let large = servers::Udp::start(servers::UdpMode::Large).await;
        let kind = CheckKind::Udp { send: b"ping".to_vec(), expect: b"ping".to_vec() };
        probe(kind, large.port).await.unwrap();
    }

    #[tokio::test]
    async fn udp_times_out_on_a_silent_socket_and_fails_on_a_closed_port() {
        let silent = servers::Udp::start(servers::UdpMode::Silent).await;
        let kind = CheckKind::Udp { send: b"ping".to_vec(), expect: vec![] };
        let started = std::time::Instant::now();
        let e = probe(kind.clone(), silent.port).await.unwrap_err();
        assert!(matches!(e, ProbeError::Timeout { .. }), "{e}");
        assert_eq!(e.to_string(), format!("UDP to 127.0.0.1:{}: no answer within 300 ms", silent.port));
        assert!(started.elapsed() >= Duration::from_millis(300));
        // Loopback answers a closed port with ICMP port unreachable: refused at once.
        let e = probe(kind, servers::closed_udp_port()).await.unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
    }
}
