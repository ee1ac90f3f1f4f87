//! TCP and UDP echo servers that record the peers they served, and the client side of one
//! exchange with them.
//!
//! A server's socket is opened inside a namespace (sockets belong to the namespace they were
//! created in), then served from an ordinary thread that polls a stop flag, so dropping the
//! server stops it within [`POLL`]. Every wait is bounded.
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// How often a server looks at its stop flag.
pub const POLL: Duration = Duration::from_millis(50);
/// The longest a TCP server spends on one connection (it serves them one at a time).
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Default)]
struct Log {
    peers: Vec<SocketAddr>,
    errors: Vec<String>,
}

/// An echo server on one address, for one protocol. Stops (and joins its thread) on drop.
pub struct EchoServer {
    proto: Proto,
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds `addr` inside `ns` (the address must be local there, e.g. a VIP on `lo`) and starts
    /// serving. TCP: every accepted connection gets back what it sends until it closes. UDP: every
    /// datagram goes back to its sender, from `addr`.
    pub fn start(ns: &Netns, proto: Proto, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Log::default()));
        let (s, l) = (Arc::clone(&stop), Arc::clone(&log));
        let name = format!("echo-{proto:?}-{addr}");
        let spawn = std::thread::Builder::new().name(name);
        let (thread, local) = match proto {
            Proto::Tcp => {
                let listener = ns
                    .run(|| TcpListener::bind(addr))
                    .unwrap_or_else(|e| panic!("binding TCP {addr} in {}: {e}", ns.name()));
                listener.set_nonblocking(true).expect("nonblocking listener");
                let local = listener.local_addr().expect("local address");
                (spawn.spawn(move || serve_tcp(&listener, &s, &l)), local)
            }
            Proto::Udp => {
                let socket = ns
                    .run(|| UdpSocket::bind(addr))
                    .unwrap_or_else(|e| panic!("binding UDP {addr} in {}: {e}", ns.name()));
                socket.set_read_timeout(Some(POLL)).expect("read timeout");
                let local = socket.local_addr().expect("local address");
                (spawn.spawn(move || serve_udp(&socket, &s, &l)), local)
            }
        };
        let thread = Some(thread.expect("spawning an echo server thread"));
        EchoServer { proto, local, stop, log, thread }
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Every peer served so far, in order: one per TCP connection accepted, one per UDP datagram.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).peers.clone()
    }

    /// Errors met while serving (a connection reset, a timeout...), each naming its peer.
    pub fn errors(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).errors.clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_tcp(listener: &TcpListener, stop: &AtomicBool, log: &Mutex<Log>) {
    while !stop.load(Ordering::Relaxed) {
        if !readable(listener, POLL) {
            continue;
        }
        match listener.accept() {
            Ok((conn, peer)) => {
                // Recorded before echoing: once a client has its echo, its peer entry exists.
                log.lock().unwrap_or_else(|e| e.into_inner()).peers.push(peer);
                if let Err(e) = echo_connection(conn) {
                    log.lock().unwrap_or_else(|e| e.into_inner()).errors.push(format!("TCP {peer}: {e}"));
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) => {
                log.lock().unwrap_or_else(|e| e.into_inner()).errors.push(format!("accept: {e}"));
                std::thread::sleep(POLL);
            }
        }
    }
}

fn echo_connection(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    let deadline = Instant::now() + CONNECTION_LIMIT;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connection open too long"));
        }
        conn.set_read_timeout(Some(left))?;
        conn.set_write_timeout(Some(left))?;
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n])?;
    }
}

fn serve_udp(socket: &UdpSocket, stop: &AtomicBool, log: &Mutex<Log>) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                log.lock().unwrap_or_else(|e| e.into_inner()).peers.push(peer);
                if let Err(e) = socket.send_to(&buf[..n], peer) {
                    log.lock().unwrap_or_else(|e| e.into_inner()).errors.push(format!("UDP {peer}: {e}"));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                log.lock().unwrap_or_else(|e| e.into_inner()).errors.push(format!("recv: {e}"));
                std::thread::sleep(POLL);
            }
        }
    }
}

/// Waits at most `timeout` for `fd` to become readable (for a listener: a connection to accept).
fn readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd that outlives the call.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// One TCP exchange from the calling thread's namespace: connect to `server`, send `payload`,
/// read it back, close. Every step is bounded by `timeout`. Returns the connection's local address.
pub fn tcp_exchange(server: SocketAddr, payload: &[u8], timeout: Duration) -> io::Result<SocketAddr> {
    let mut conn = TcpStream::connect_timeout(&server, timeout).map_err(|e| context(e, "connect"))?;
    let local = conn.local_addr()?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.write_all(payload).map_err(|e| context(e, "send"))?;
    let mut echo = vec![0u8; payload.len()];
    conn.read_exact(&mut echo).map_err(|e| context(e, "read the echo"))?;
    check_echo(payload, &echo)?;
    Ok(local)
}

/// One UDP exchange from the calling thread's namespace: from a socket bound to `local` (pass a
/// distinct port for a distinct flow), send `payload` to `server` and wait `timeout` for the same
/// bytes back from `server`. No retransmission. Returns the socket's local address.
pub fn udp_exchange(
    local: SocketAddr,
    server: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> io::Result<SocketAddr> {
    let socket = UdpSocket::bind(local).map_err(|e| context(e, "bind"))?;
    // Connected: only datagrams from `server` are received.
    socket.connect(server)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(payload).map_err(|e| context(e, "send"))?;
    let mut echo = vec![0u8; payload.len() + 1];
    let n = socket.recv(&mut echo).map_err(|e| context(e, "receive the echo"))?;
    check_echo(payload, &echo[..n])?;
    socket.local_addr()
}

fn check_echo(sent: &[u8], got: &[u8]) -> io::Result<()> {
    if sent == got {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "echo differs: sent {:?}, got {:?}",
            String::from_utf8_lossy(sent),
            String::from_utf8_lossy(got)
        ),
    ))
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
