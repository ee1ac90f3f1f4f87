//! The TCP check, made cheap: reused sockets, and work done in batches on timer ticks.
//!
//! Most of a probe's cost is the kernel's, and most of that was creating, registering and
//! destroying a socket, not the handshake. A TCP socket can connect again after
//! `connect(AF_UNSPEC)` disconnects it: the kernel resets an open connection (an RST, as a close
//! with `SO_LINGER` 0 would: no TIME_WAIT here, nothing left on the backend) and the next
//! `connect` picks a new ephemeral port. So sockets are kept, and a probe is `connect` (the
//! SYN), `connect` again to see how it went (0: connected, `EALREADY`: not yet, else the
//! connection's error) and `connect(AF_UNSPEC)`: three system calls instead of seven (socket,
//! setsockopt, connect, two epoll_ctl, getsockopt, close).
//!
//! The sockets are not in the runtime's epoll: a probe looks at its socket 1, 2, 4, 8... ms
//! after the SYN, and at its deadline. Tokio's timers have 1 ms slots, so one
//! wake-up of the prober checks every probe due in that millisecond and sends the SYNs of the
//! targets due then, instead of a wake-up per completed handshake. Batched, the prober does not
//! contend for a socket's lock with the CPU still handling its handshake, and sends its packets
//! in bursts (fewer wake-ups of the receiving CPU). A backend on the LAN answers within the
//! first millisecond; a slower answer is seen at most twice as late as it came, and never
//! later than the deadline; a probe that gets no answer checks log2(timeout in ms) + 2 times.
use std::{
    io, mem,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use super::probe::ProbeError;

/// Idle sockets kept per address family: more than the probes in flight at once for 10,000
/// healthy targets a second; beyond it, sockets are closed after use.
const MAX_IDLE: usize = 256;
/// The first look at a connecting socket; the next ones are twice as far apart each time.
const FIRST_LOOK: Duration = Duration::from_millis(1);

/// Idle, disconnected TCP sockets of one prober, IPv4 and IPv6 apart.
#[derive(Default)]
pub struct TcpSockets {
    idle: Mutex<[Vec<OwnedFd>; 2]>,
}

/// A destination prepared once per target, in the kernel's format.
pub struct TcpAddr {
    addr: SocketAddr,
    raw: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl TcpAddr {
    pub fn new(addr: SocketAddr) -> TcpAddr {
        // SAFETY: all-zero is a valid sockaddr_storage (and sockaddr_in/in6) of family AF_UNSPEC.
        let mut raw: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                let sin =
                    unsafe { &mut *(&mut raw as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                let sin6 =
                    unsafe { &mut *(&mut raw as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_scope_id = a.scope_id();
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        TcpAddr { addr, raw, len: len as libc::socklen_t }
    }

    fn connect(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: `raw` holds a sockaddr of `len` bytes.
        let rc = unsafe { libc::connect(fd, (&self.raw as *const libc::sockaddr_storage).cast(), self.len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Connects to `addr` within `timeout` and resets the connection: Ok if the backend accepted it.
///
/// Cancel-safe: dropped mid-connect, the socket is disconnected and kept.
pub async fn check(sockets: &TcpSockets, addr: &TcpAddr, timeout: Duration) -> Result<(), ProbeError> {
    let failed = |source| ProbeError::Connect { addr: addr.addr, source };
    let deadline = Instant::now() + timeout;
    let socket = sockets.take(addr.addr).map_err(failed)?;
    let lease = Lease { sockets, v6: addr.addr.is_ipv6(), socket: Some(socket) };
    let fd = lease.socket.as_ref().expect("leased").as_raw_fd();
    match addr.connect(fd) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(failed(e)),
    }
    let sent = Instant::now();
    let mut after = FIRST_LOOK;
    loop {
        tokio::time::sleep_until((sent + after).min(deadline)).await;
        let Err(e) = addr.connect(fd) else { return Ok(()) };
        match e.raw_os_error() {
            // ECONNRESET, EPIPE: connected, then reset by the backend before this look; it did
            // accept (an RST to the SYN is ECONNREFUSED).
            Some(libc::EISCONN | libc::ECONNRESET | libc::EPIPE) => return Ok(()),
            Some(libc::EALREADY) => {}
            // Refused, unreachable...: the kernel has already closed the connection.
            _ => return Err(failed(e)),
        }
        if Instant::now() >= deadline {
            return Err(ProbeError::Timeout { what: "connect to", addr: addr.addr, after: timeout });
        }
        after *= 2;
    }
}

impl TcpSockets {
    fn take(&self, addr: SocketAddr) -> io::Result<OwnedFd> {
        if let Some(socket) = self.idle()[addr.is_ipv6() as usize].pop() {
            return Ok(socket);
        }
        let domain = if addr.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain system call; the flags save two fcntl calls.
        let fd =
            unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn idle(&self) -> MutexGuard<'_, [Vec<OwnedFd>; 2]> {
        // Nothing panics while holding it.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A socket out of the pool; back into it, disconnected, when dropped.
struct Lease<'a> {
    sockets: &'a TcpSockets,
    v6: bool,
    socket: Option<OwnedFd>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(socket) = self.socket.take() else { return };
        let unspec = libc::sockaddr { sa_family: libc::AF_UNSPEC as libc::sa_family_t, sa_data: [0; 14] };
        // Resets a connection, aborts a connect in progress, does nothing to a closed socket.
        // SAFETY: a valid sockaddr of the size given.
        let rc = unsafe {
            libc::connect(socket.as_raw_fd(), &unspec, mem::size_of::<libc::sockaddr>() as libc::socklen_t)
        };
        if rc != 0 {
            // Not reusable (never seen): close it, with an RST rather than a FIN if connected.
            set_zero_linger(socket.as_raw_fd());
            return;
        }
        let mut idle = self.sockets.idle();
        let idle = &mut idle[self.v6 as usize];
        if idle.len() < MAX_IDLE {
            idle.push(socket);
        }
    }
}

fn set_zero_linger(fd: RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid linger of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{super::test_servers as servers, *};

    const TIMEOUT: Duration = Duration::from_millis(300);

    fn addr(port: u16) -> TcpAddr {
        TcpAddr::new(SocketAddr::new(servers::LOCALHOST, port))
    }

    #[tokio::test]
    async fn one_socket_serves_successive_checks_of_open_and_closed_ports() {
        let sockets = TcpSockets::default();
        let open = servers::Tcp::start().await;
        let closed = servers::closed_port();
        for _ in 0..3 {
            check(&sockets, &addr(open.port), TIMEOUT).await.unwrap();
            let e = check(&sockets, &addr(closed), TIMEOUT).await.unwrap_err();
            assert!(
                matches!(&e, ProbeError::Connect { source, .. } if source.raw_os_error() == Some(libc::ECONNREFUSED)),
                "{e}"
            );
        }
        assert_eq!(sockets.idle()[0].len(), 1, "reused, not one socket per check");
    }

    #[tokio::test]
    async fn a_backend_that_accepts_and_resets_at_once_passes() {
        let listener = std::net::TcpListener::bind((servers::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            set_zero_linger(conn.as_raw_fd());
        });
        let sockets = TcpSockets::default();
        check(&sockets, &addr(port), TIMEOUT).await.unwrap();
        server.join().unwrap();
    }

    #[tokio::test]
    async fn an_unanswered_connect_times_out_and_leaves_a_reusable_socket() {
        let sockets = TcpSockets::default();
        // TEST-NET-1: nothing answers (or there is no route: then it fails at once).
        let silent = TcpAddr::new("192.0.2.1:80".parse().unwrap());
        let started = Instant::now();
        match check(&sockets, &silent, 50 * FIRST_LOOK).await.unwrap_err() {
            ProbeError::Timeout { after, .. } => {
                assert_eq!(after, 50 * FIRST_LOOK);
                assert!(started.elapsed() >= 50 * FIRST_LOOK && started.elapsed() < 200 * FIRST_LOOK);
            }
            ProbeError::Connect { .. } => {}
            e => panic!("{e}"),
        }
        assert_eq!(sockets.idle()[0].len(), 1);
        let open = servers::Tcp::start().await;
        check(&sockets, &addr(open.port), TIMEOUT).await.unwrap();
        assert_eq!(sockets.idle()[0].len(), 1);
    }

    #[tokio::test]
    async fn a_cancelled_check_leaves_a_reusable_socket() {
        let sockets = TcpSockets::default();
        let open = servers::Tcp::start().await;
        // Dropped after the SYN, before the first look.
        let cancelled =
            tokio::time::timeout(Duration::ZERO, check(&sockets, &addr(open.port), TIMEOUT)).await;
        assert!(cancelled.is_err());
        assert_eq!(sockets.idle()[0].len(), 1);
        check(&sockets, &addr(open.port), TIMEOUT).await.unwrap();
        assert_eq!(sockets.idle()[0].len(), 1);
    }

    #[tokio::test]
    async fn ipv6_sockets_are_pooled_apart() {
        let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else { return };
        let v6 = TcpAddr::new(SocketAddr::new("::1".parse().unwrap(), listener.local_addr().unwrap().port()));
        let sockets = TcpSockets::default();
        check(&sockets, &v6, TIMEOUT).await.unwrap();
        check(&sockets, &v6, TIMEOUT).await.unwrap();
        let idle = sockets.idle();
        assert_eq!((idle[0].len(), idle[1].len()), (0, 1));
    }
}
