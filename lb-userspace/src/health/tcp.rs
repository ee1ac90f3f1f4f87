//! The TCP check on reused sockets: most of a probe's cost is the kernel creating, registering
//! and destroying a socket, not the handshake, so sockets are kept and reused.
//!
//! A TCP socket can connect again after `connect(AF_UNSPEC)` disconnects it: the kernel resets
//! an open connection (an RST, as a close with `SO_LINGER` 0 would: no TIME_WAIT here, nothing
//! left on the backend) and the next `connect` picks a new ephemeral port. A probe is thus
//! three system calls: `connect` (the SYN), `connect` again once the socket is writable (0:
//! connected, `EALREADY`: not yet, else the connection's error) and `connect(AF_UNSPEC)`,
//! instead of seven (socket, setsockopt, connect, two epoll_ctl, getsockopt, close). Idle
//! sockets stay registered with the runtime's reactor, so reuse costs no epoll_ctl either.
use std::{
    future::poll_fn,
    io,
    mem,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{Mutex, PoisonError},
    task::Poll,
};

use tokio::io::{unix::AsyncFd, Interest};

/// Idle sockets kept per address family: more than the probes in flight at once for 10,000
/// healthy targets a second; beyond it, sockets are closed after use.
const MAX_IDLE: usize = 256;

type Socket = AsyncFd<OwnedFd>;

/// Idle, disconnected TCP sockets of one prober, IPv4 and IPv6 apart. They are registered with
/// the reactor of the runtime that created them: share a pool only between tasks of one runtime.
#[derive(Default)]
pub struct TcpSockets {
    idle: Mutex<[Vec<Socket>; 2]>,
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
                let sin = unsafe { &mut *(&mut raw as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
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

/// Connects to `addr` and resets the connection: Ok if the backend accepted it.
///
/// Cancel-safe: dropped mid-connect (the check's timeout), the socket is disconnected and kept.
pub async fn check(sockets: &TcpSockets, addr: &TcpAddr) -> io::Result<()> {
    let lease = Lease { sockets, v6: addr.addr.is_ipv6(), socket: Some(sockets.take(addr.addr)?) };
    let socket = lease.socket.as_ref().expect("leased");
    // Readiness the reactor saw while the socket was idle is about its previous connection.
    poll_fn(|cx| {
        if let Poll::Ready(Ok(mut ready)) = socket.poll_write_ready(cx) {
            ready.clear_ready();
        }
        Poll::Ready(())
    })
    .await;
    match addr.connect(socket.as_raw_fd()) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    loop {
        let mut ready = socket.writable().await?;
        match addr.connect(socket.as_raw_fd()) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EISCONN) => return Ok(()),
            // Woken by an event of the previous connection that arrived after the clearing.
            Err(e) if e.raw_os_error() == Some(libc::EALREADY) => ready.clear_ready(),
            Err(e) => return Err(e),
        }
    }
}

impl TcpSockets {
    fn take(&self, addr: SocketAddr) -> io::Result<Socket> {
        if let Some(socket) = self.idle()[addr.is_ipv6() as usize].pop() {
            return Ok(socket);
        }
        let domain = if addr.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain system call; the flags save two fcntl calls.
        let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Writable only: connect completes (or fails: error and hang-up always come) as writable.
        // SAFETY: the OwnedFd keeps the descriptor open, the same one, as long as the AsyncFd.
        unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE) }.map_err(|e| e.into_parts().1)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, [Vec<Socket>; 2]> {
        // Nothing panics while holding it.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A socket out of the pool; back into it, disconnected, when dropped.
struct Lease<'a> {
    sockets: &'a TcpSockets,
    v6: bool,
    socket: Option<Socket>,
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

    fn addr(port: u16) -> TcpAddr {
        TcpAddr::new(SocketAddr::new(servers::LOCALHOST, port))
    }

    #[tokio::test]
    async fn one_socket_serves_successive_checks_of_open_and_closed_ports() {
        let sockets = TcpSockets::default();
        let open = servers::Tcp::start().await;
        let closed = servers::closed_port();
        for _ in 0..3 {
            check(&sockets, &addr(open.port)).await.unwrap();
            let e = check(&sockets, &addr(closed)).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
        }
        assert_eq!(sockets.idle()[0].len(), 1, "reused, not one socket per check");
    }

    #[tokio::test]
    async fn a_check_cancelled_mid_connect_leaves_a_reusable_socket() {
        let sockets = TcpSockets::default();
        // TEST-NET-1: nothing answers, the SYN stays unanswered (or the route is missing).
        let silent = TcpAddr::new("192.0.2.1:80".parse().unwrap());
        let r = tokio::time::timeout(std::time::Duration::from_millis(50), check(&sockets, &silent)).await;
        assert!(r.map_or(true, |r| r.is_err()), "no connection to TEST-NET-1");
        assert_eq!(sockets.idle()[0].len(), 1);
        let open = servers::Tcp::start().await;
        check(&sockets, &addr(open.port)).await.unwrap();
        assert_eq!(sockets.idle()[0].len(), 1);
    }

    #[tokio::test]
    async fn ipv6_sockets_are_pooled_apart() {
        let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else { return };
        let port = listener.local_addr().unwrap().port();
        let sockets = TcpSockets::default();
        check(&sockets, &TcpAddr::new(SocketAddr::new("::1".parse().unwrap(), port))).await.unwrap();
        check(&sockets, &TcpAddr::new(SocketAddr::new("::1".parse().unwrap(), port))).await.unwrap();
        let idle = sockets.idle();
        assert_eq!((idle[0].len(), idle[1].len()), (0, 1));
    }
}
