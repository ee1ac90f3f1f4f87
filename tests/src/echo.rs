//! Servers for the backends that record whom they served: TCP and UDP echo servers, a UDP sink;
//! and the client side of exchanges with them.
//!
//! A server's socket is opened inside a namespace (sockets belong to the namespace they were
//! created in), then served from ordinary threads that poll a stop flag: dropping the server
//! stops it within [`POLL`] and joins every thread it started. Every wait is bounded.
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

/// How often a server, and each of its TCP connections, looks at its stop flag.
pub const POLL: Duration = Duration::from_millis(50);
/// The longest a TCP server keeps one connection open. Each connection has a thread of its own,
/// so a long-lived connection does not hold up the others.
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(30);
/// The longest a TCP server waits to send one echo.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Receive buffer of a [`UdpSink`].
pub const SINK_BUFFER: usize = 8 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A list that a server's threads append to and the test reads.
type Shared<T> = Arc<Mutex<Vec<T>>>;

fn push<T>(list: &Mutex<Vec<T>>, item: T) {
    list.lock().unwrap_or_else(|e| e.into_inner()).push(item);
}

fn snapshot<T: Clone>(list: &Mutex<Vec<T>>) -> Vec<T> {
    list.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A server's thread and its stop flag: on drop, sets the flag and joins the thread.
struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn(name: String, serve: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread =
            std::thread::Builder::new().name(name).spawn(move || serve(s)).expect("spawning a server thread");
        Worker { stop, thread: Some(thread) }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An echo server on one address, for one protocol. Stops (and joins its threads) on drop.
pub struct EchoServer {
    proto: Proto,
    local: SocketAddr,
    peers: Shared<SocketAddr>,
    errors: Shared<String>,
    _worker: Worker,
}

impl EchoServer {
    /// Binds `addr` inside `ns` (the address must be local there, e.g. a VIP on `lo`) and starts
    /// serving. TCP: every accepted connection, on a thread of its own, gets back what it sends
    /// until it closes (at most [`CONNECTION_LIMIT`]). UDP: every datagram goes back to its
    /// sender, from `addr`.
    pub fn start(ns: &Netns, proto: Proto, addr: SocketAddr) -> Self {
        let (peers, errors) = (Shared::default(), Shared::default());
        let (p, e) = (Arc::clone(&peers), Arc::clone(&errors));
        let name = format!("echo-{proto:?}-{addr}");
        let (worker, local) = match proto {
            Proto::Tcp => {
                let listener = ns
                    .run(|| TcpListener::bind(addr))
                    .unwrap_or_else(|e| panic!("binding TCP {addr} in {}: {e}", ns.name()));
                listener.set_nonblocking(true).expect("nonblocking listener");
                let local = listener.local_addr().expect("local address");
                (Worker::spawn(name, move |stop| serve_tcp(&listener, &stop, &p, &e)), local)
            }
            Proto::Udp => {
                let socket = ns
                    .run(|| UdpSocket::bind(addr))
                    .unwrap_or_else(|e| panic!("binding UDP {addr} in {}: {e}", ns.name()));
                socket.set_read_timeout(Some(POLL)).expect("read timeout");
                let local = socket.local_addr().expect("local address");
                (Worker::spawn(name, move |stop| serve_udp(&socket, &stop, &p, &e)), local)
            }
        };
        EchoServer { proto, local, peers, errors, _worker: worker }
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Every peer served so far, in order: one per TCP connection accepted, one per UDP datagram.
    pub fn peers(&self) -> Vec<SocketAddr> {
        snapshot(&self.peers)
    }

    /// Errors met while serving (a connection reset, a timeout...), each naming its peer.
    pub fn errors(&self) -> Vec<String> {
        snapshot(&self.errors)
    }
}

fn serve_tcp(
    listener: &TcpListener,
    stop: &Arc<AtomicBool>,
    peers: &Mutex<Vec<SocketAddr>>,
    errors: &Shared<String>,
) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // A finished connection's thread has exited: its handle can go.
        connections.retain(|c| !c.is_finished());
        if !readable(listener, POLL) {
            continue;
        }
        match listener.accept() {
            Ok((conn, peer)) => {
                // Recorded before echoing: once a client has its echo, its peer entry exists.
                push(peers, peer);
                let (s, e) = (Arc::clone(stop), Arc::clone(errors));
                let spawned = std::thread::Builder::new().name(format!("echo-{peer}")).spawn(move || {
                    if let Err(err) = echo_connection(conn, &s) {
                        push(&e, format!("TCP {peer}: {err}"));
                    }
                });
                match spawned {
                    Ok(thread) => connections.push(thread),
                    Err(e) => push(errors, format!("TCP {peer}: no thread to serve it: {e}")),
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) => {
                push(errors, format!("accept: {e}"));
                std::thread::sleep(POLL);
            }
        }
    }
    for c in connections {
        let _ = c.join();
    }
}

/// Echoes until the peer closes, the server stops or [`CONNECTION_LIMIT`] has passed.
fn echo_connection(mut conn: TcpStream, stop: &AtomicBool) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(POLL))?;
    conn.set_write_timeout(Some(SEND_TIMEOUT))?;
    let deadline = Instant::now() + CONNECTION_LIMIT;
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connection open longer than {CONNECTION_LIMIT:?}"),
            ));
        }
        match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => conn.write_all(&buf[..n])?,
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn serve_udp(
    socket: &UdpSocket,
    stop: &AtomicBool,
    peers: &Mutex<Vec<SocketAddr>>,
    errors: &Mutex<Vec<String>>,
) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                push(peers, peer);
                if let Err(e) = socket.send_to(&buf[..n], peer) {
                    push(errors, format!("UDP {peer}: {e}"));
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                push(errors, format!("recv: {e}"));
                std::thread::sleep(POLL);
            }
        }
    }
}

/// A UDP server that answers nothing and records every datagram it receives, with its sender.
/// Its receive buffer is [`SINK_BUFFER`] (forced, as root may), so that a test thread starved of
/// CPU for a while cannot lose datagrams in the socket: a test counts the network's losses, not
/// its own. Stops (and joins its thread) on drop.
pub struct UdpSink {
    local: SocketAddr,
    received: Shared<(SocketAddr, Vec<u8>)>,
    errors: Shared<String>,
    _worker: Worker,
}

impl UdpSink {
    /// Binds `addr` inside `ns` and starts receiving.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let socket = ns
            .run(|| UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("binding UDP {addr} in {}: {e}", ns.name()));
        let size = SINK_BUFFER as libc::c_int;
        // SAFETY: setsockopt on a socket we own, with a c_int option value that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", io::Error::last_os_error());
        socket.set_read_timeout(Some(POLL)).expect("read timeout");
        let local = socket.local_addr().expect("local address");
        let (received, errors) = (Shared::default(), Shared::default());
        let (r, e) = (Arc::clone(&received), Arc::clone(&errors));
        let worker = Worker::spawn(format!("udp-sink-{addr}"), move |stop| {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                match socket.recv_from(&mut buf) {
                    Ok((n, peer)) => push(&r, (peer, buf[..n].to_vec())),
                    Err(err) if is_timeout(&err) => {}
                    Err(err) => {
                        push(&e, format!("recv: {err}"));
                        std::thread::sleep(POLL);
                    }
                }
            }
        });
        UdpSink { local, received, errors, _worker: worker }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Every datagram received so far, in order: (sender, payload).
    pub fn received(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        snapshot(&self.received)
    }

    /// How many datagrams it has received so far.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Errors met while receiving.
    pub fn errors(&self) -> Vec<String> {
        snapshot(&self.errors)
    }
}

/// What a socket read with a timeout returns when nothing came (or a signal interrupted it).
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

/// Waits at most `timeout` for `fd` to become readable (for a listener: a connection to accept).
fn readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd that outlives the call.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// Connects to `server` from the calling thread's namespace, within `timeout`; every later send
/// and receive on the connection is bounded by `timeout` too. Keep it for several
/// [`tcp_echo`]s: a long-lived connection.
pub fn tcp_connect(server: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&server, timeout).map_err(|e| context(e, "connect"))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// [`tcp_connect`] from `local` (an address of the calling thread's namespace, and a port, 0 for
/// any): the client address of the connection is the caller's choice. The connect is bounded by
/// `timeout` as well.
pub fn tcp_connect_from(local: SocketAddr, server: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let domain = if server.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(context(io::Error::last_os_error(), "socket"));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    let (addr, len) = sockaddr(local);
    // SAFETY: a valid socket and a sockaddr of `len` bytes that outlives the call.
    if unsafe { libc::bind(raw, (&raw const addr).cast(), len) } != 0 {
        return Err(context(io::Error::last_os_error(), &format!("bind {local}")));
    }
    // A blocking connect gives up after the send timeout (EINPROGRESS).
    let tv =
        libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: timeout.subsec_micros() as _ };
    // SAFETY: a valid socket and a timeval that outlives the call.
    unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let (addr, len) = sockaddr(server);
    // SAFETY: as for bind.
    if unsafe { libc::connect(raw, (&raw const addr).cast(), len) } != 0 {
        return Err(context(io::Error::last_os_error(), &format!("connect from {local}")));
    }
    let conn = TcpStream::from(fd);
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// [`tcp_exchange`] from `local` (see [`tcp_connect_from`]).
pub fn tcp_exchange_from(
    local: SocketAddr,
    server: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> io::Result<SocketAddr> {
    let mut conn = tcp_connect_from(local, server, timeout)?;
    let local = conn.local_addr()?;
    tcp_echo(&mut conn, payload)?;
    Ok(local)
}

/// `addr` as the kernel takes it.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Sends `payload` on `conn` and reads the same bytes back.
pub fn tcp_echo(conn: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    conn.write_all(payload).map_err(|e| context(e, "send"))?;
    let mut echo = vec![0u8; payload.len()];
    conn.read_exact(&mut echo).map_err(|e| context(e, "read the echo"))?;
    check_echo(payload, &echo)
}

/// One TCP exchange from the calling thread's namespace: connect to `server`, send `payload`,
/// read it back, close. Every step is bounded by `timeout`. Returns the connection's local address.
pub fn tcp_exchange(server: SocketAddr, payload: &[u8], timeout: Duration) -> io::Result<SocketAddr> {
    let mut conn = tcp_connect(server, timeout)?;
    let local = conn.local_addr()?;
    tcp_echo(&mut conn, payload)?;
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
