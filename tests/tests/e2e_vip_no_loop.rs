//! A packet to a VIP address that the balancer passes to the kernel (a port or protocol no VIP
//! serves, ICMP other than echo and too-big, a malformed packet, a next hop missing, a rate
//! limit with `over_limit = "pass"`) ends on the balancer host. The VIP address is not local
//! there and forwarding is on, so without lbd's blackhole routes the kernel would forward it
//! out of its default route to the router, which routes the VIP back to the balancer: the packet
//! would loop until its TTL ran out, some 32 times over the uplink, and the client would get a
//! Time Exceeded.
//!
//! ```text
//!   client (eth0 198.18.0.2, fd00::2) ── router (c0 198.18.0.1, fd00::1 │ u0 198.18.1.1, fd00:0:0:1::1)
//!                                         static routes: the VIPs via the balancer
//!   balancer (eth0 198.18.1.2, fd00:0:0:1::2): lbd on eth0, default routes via the router
//! ```
//!
//! Static routes, no `[announce]`: the routes lbd owns do not depend on it.
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use lb_tests::{
    lbd::{Lbd, LbdFiles},
    netns::{veth, Netns},
    topology::{ethtool, TINY},
};
use lb_userspace::datapath::{self, Datapath, Mode, DECAP};

const VIP4: &str = "198.18.100.1";
const VIP6: &str = "fd00:0:0:100::1";
/// The port the VIPs serve; [`UNSERVED`] is one they do not.
const PORT: u16 = 80;
const UNSERVED: u16 = 81;
/// How long the client listens for ICMP after each datagram (a loop takes milliseconds).
const LISTEN: Duration = Duration::from_millis(1500);
/// Frames the balancer's uplink may receive for one datagram: the datagram itself, and one
/// frame of slack for a neighbour probe.
const MAX_RECEIVED: u64 = 2;
const TIME_EXCEEDED_V4: u8 = 11;
const TIME_EXCEEDED_V6: u8 = 3;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REPLY_V6: u8 = 129;

struct Routed {
    /// Declared first: killed before its pins and namespaces go.
    _lbd: Lbd,
    _passthrough: Datapath,
    files: LbdFiles,
    client: Netns,
    router: Netns,
    balancer: Netns,
}

impl Routed {
    fn start() -> Routed {
        let client = Netns::new("client");
        let router = Netns::new("router");
        let balancer = Netns::new("balancer");
        for ns in [&client, &router, &balancer] {
            ns.skip_dad();
        }
        veth((&client, "eth0"), (&router, "c0"));
        veth((&balancer, "eth0"), (&router, "u0"));
        client.addr("eth0", "198.18.0.2/24");
        client.addr("eth0", "fd00::2/64");
        client.ip(&["route", "add", "default", "via", "198.18.0.1"]);
        client.ip(&["-6", "route", "add", "default", "via", "fd00::1"]);
        router.addr("c0", "198.18.0.1/24");
        router.addr("c0", "fd00::1/64");
        router.addr("u0", "198.18.1.1/24");
        router.addr("u0", "fd00:0:0:1::1/64");
        // The test's router, a host lbd never runs on: it forwards as any router does.
        router.sysctl("net.ipv4.ip_forward", "1");
        router.sysctl("net.ipv6.conf.all.forwarding", "1");
        router.ip(&["route", "add", &format!("{VIP4}/32"), "via", "198.18.1.2"]);
        router.ip(&["-6", "route", "add", &format!("{VIP6}/128"), "via", "fd00:0:0:1::2"]);
        balancer.addr("eth0", "198.18.1.2/24");
        balancer.addr("eth0", "fd00:0:0:1::2/64");
        balancer.ip(&["route", "add", "default", "via", "198.18.1.1"]);
        balancer.ip(&["-6", "route", "add", "default", "via", "fd00:0:0:1::1"]);
        // Not lbd's job, nor a veth aid: the field condition under test. lbd turns on only
        // eth0's switches, by which IPv4 forwards; the kernel forwards IPv6 by `all`, which a
        // balancer host that also routes IPv6 has on, and only then does a passed IPv6 packet
        // loop.
        balancer.sysctl("net.ipv6.conf.all.forwarding", "1");
        // The balancer answers echo requests with XDP_TX: the router's end needs NAPI (GRO) and
        // a program for veth to deliver them (see `Topology::attach_lb_port_passthrough`).
        ethtool(&router, &["-K", "u0", "gro", "on"]);
        let mut passthrough =
            datapath::load_with(TINY).unwrap_or_else(|e| panic!("loading the pass-through program: {e}"));
        router
            .run(|| passthrough.attach(DECAP, "u0", Mode::Native))
            .unwrap_or_else(|e| panic!("pass-through on the router's u0: {e}"));

        let files = LbdFiles::new();
        let mut config = files.header(&["eth0"], "198.18.1.2", "fd00:0:0:1::2");
        for (name, address, backend) in [("v4", VIP4, "198.18.1.3"), ("v6", VIP6, "fd00:0:0:1::3")] {
            config += &format!(
                "[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {PORT}\nprotocol = \"tcp\"\n\
                 [[vip.backend]]\naddress = \"{backend}\"\n\n"
            );
        }
        let lbd = Lbd::start(&balancer, &files, &config);
        Routed { _lbd: lbd, _passthrough: passthrough, files, client, router, balancer }
    }

    /// Frames the balancer's uplink has received.
    fn received(&self) -> u64 {
        let out = lb_tests::netns::run(
            self.balancer.command("cat").arg("/sys/class/net/eth0/statistics/rx_packets"),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().unwrap_or_else(|e| panic!("rx_packets of the balancer's eth0 {text:?}: {e}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.files.dir.join("lbd.log")).unwrap_or_default()
    }
}

/// A raw ICMP (or ICMPv6) socket: sees every ICMP message to its namespace.
struct Icmp {
    fd: OwnedFd,
    v4: bool,
}

impl Icmp {
    /// Opens one in the calling thread's namespace.
    fn open(v4: bool) -> Icmp {
        let (domain, protocol) =
            if v4 { (libc::AF_INET, libc::IPPROTO_ICMP) } else { (libc::AF_INET6, libc::IPPROTO_ICMPV6) };
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        assert!(fd >= 0, "a raw ICMP socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        // SAFETY: a timeval option of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        Icmp { fd, v4 }
    }

    /// Sends an echo request to `to` (the kernel fills in the ICMPv6 checksum).
    fn echo_request(&self, to: IpAddr, id: u16, seq: u16) {
        let mut message = vec![if self.v4 { 8 } else { 128 }, 0, 0, 0];
        message.extend_from_slice(&id.to_be_bytes());
        message.extend_from_slice(&seq.to_be_bytes());
        message.extend_from_slice(b"lbd echo");
        if self.v4 {
            let sum = lb_tests::frames::internet_checksum(&message);
            message[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        let (address, len) = socket_address(SocketAddr::new(to, 0));
        // SAFETY: a buffer and a socket address of the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                message.as_ptr() as *const libc::c_void,
                message.len(),
                0,
                &address as *const libc::sockaddr_storage as *const libc::sockaddr,
                len,
            )
        };
        assert!(sent >= 0, "sending an echo request to {to}: {}", std::io::Error::last_os_error());
    }

    /// The (type, code) of every ICMP message received within `window`.
    fn received_within(&self, window: Duration) -> Vec<(u8, u8)> {
        let deadline = Instant::now() + window;
        let mut messages = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            // SAFETY: receives into a buffer of the length given.
            let n = unsafe {
                libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0)
            };
            if n <= 0 {
                continue; // the 100 ms timeout
            }
            // An IPv4 raw socket gets the IP header too; an ICMPv6 one only the message.
            let start = if self.v4 { usize::from(buf[0] & 0x0f) * 4 } else { 0 };
            if let Some(header) = buf[..n as usize].get(start..start + 2) {
                messages.push((header[0], header[1]));
            }
        }
        messages
    }
}

fn socket_address(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: a zeroed sockaddr_storage is valid, and large enough for either family.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match address {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[test]
fn a_datagram_to_a_port_no_vip_serves_ends_on_the_balancer_instead_of_looping() {
    let net = Routed::start();
    let mut failures = Vec::new();
    for (vip, v4) in [(VIP4, true), (VIP6, false)] {
        let vip: IpAddr = vip.parse().unwrap();
        let (time_exceeded, echo_reply) =
            if v4 { (TIME_EXCEEDED_V4, ECHO_REPLY_V4) } else { (TIME_EXCEEDED_V6, ECHO_REPLY_V6) };
        let (before, after, messages, echo) = net.client.run(|| {
            let icmp = Icmp::open(v4);
            // lbd answers echo requests to the VIP itself, before the kernel's routes: still
            // through the router. This also resolves the neighbours on the way, so that the
            // count below sees no address resolution.
            icmp.echo_request(vip, 0x4c42, 1);
            let echo = icmp.received_within(Duration::from_millis(500));
            let before = net.received();
            let local = if v4 { "0.0.0.0:0" } else { "[::]:0" };
            let socket = UdpSocket::bind(local).expect("a UDP socket on the client");
            socket.send_to(b"to a port no VIP serves", SocketAddr::new(vip, UNSERVED)).expect("send");
            let messages = icmp.received_within(LISTEN);
            (before, net.received(), messages, echo)
        });
        let received = after - before;
        eprintln!(
            "{vip}: one datagram to port {UNSERVED}: {received} frame(s) received, ICMP seen {messages:?}"
        );
        if !echo.contains(&(echo_reply, 0)) {
            failures.push(format!("{vip}: no echo reply through the router (ICMP seen: {echo:?})"));
        }
        if messages.iter().any(|(kind, _)| *kind == time_exceeded) {
            failures.push(format!(
                "{vip}: the client got a Time Exceeded: the datagram looped between the balancer and \
                 the router (ICMP seen: {messages:?})"
            ));
        }
        if !(1..=MAX_RECEIVED).contains(&received) {
            failures.push(format!(
                "{vip}: the balancer's uplink received {received} frames for one datagram to port \
                 {UNSERVED} (1 expected: more means it looped through the router {})",
                net.router.name()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nthe balancer's routes:\n{}{}\nlbd's log:\n{}",
        failures.join("\n"),
        net.balancer.ip(&["-4", "route", "show"]),
        net.balancer.ip(&["-6", "route", "show"]),
        net.log()
    );
}
