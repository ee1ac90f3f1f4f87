//! A flood of spoofed TCP SYNs and ACKs from raw AF_PACKET sockets (`sendmmsg`, bypassing the
//! qdisc), for end-to-end flood tests: frames built here, from random sources of a given /16,
//! random source ports, to one VIP and port. (The benches' XDP live-frames generator,
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, fails with EPERM on the VMs the tests
//! run on.) Bounded in packets and time.
use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use rand::{rngs::SmallRng, Rng, SeedableRng};

/// Frames one `sendmmsg` sends.
const BATCH: usize = 64;
const FRAME_LEN: usize = 14 + 20 + 20;

/// What a flood sends.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    /// The interface (in the calling thread's namespace) the frames leave by.
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Sources: the 65,536 addresses of this /16 (its first two bytes), at random.
    pub sources: [u8; 2],
    pub dst: Ipv4Addr,
    pub dport: u16,
    /// Bounds: whichever comes first.
    pub max_packets: u64,
    pub max_time: Duration,
}

/// What a flood sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub packets: u64,
    pub elapsed: Duration,
}

impl Sent {
    pub fn rate(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends `flood` from the calling thread until a bound or `stop`, counting into `count` as it
/// goes; half the frames are SYNs, half ACKs (of no connection). Panics if the socket cannot be
/// set up.
pub fn send(flood: &Flood, seed: u64, stop: &AtomicBool, count: &AtomicU64) -> Sent {
    let fd = packet_socket(flood.ifindex);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut frames = vec![[0u8; FRAME_LEN]; BATCH];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < flood.max_packets && start.elapsed() < flood.max_time && !stop.load(Ordering::Relaxed) {
        for (i, f) in frames.iter_mut().enumerate() {
            let host: u16 = rng.gen();
            let src = Ipv4Addr::new(flood.sources[0], flood.sources[1], (host >> 8) as u8, host as u8);
            let syn = i % 2 == 0;
            write_frame(f, flood, src, rng.gen_range(1024..=65535), syn, rng.gen());
        }
        let n = send_batch(&fd, &frames);
        sent += n as u64;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    Sent { packets: sent, elapsed: start.elapsed() }
}

/// An AF_PACKET socket bound to `ifindex`, sending straight to the driver (PACKET_QDISC_BYPASS).
fn packet_socket(ifindex: u32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket(2); the descriptor is owned at once. Protocol 0: it receives nothing.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(raw >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set are the ones bind reads.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: a valid socket and a sockaddr_ll of its own size.
    let rc =
        unsafe { libc::bind(raw, (&raw const addr).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32) };
    assert_eq!(
        rc,
        0,
        "binding the AF_PACKET socket to ifindex {ifindex}: {}",
        std::io::Error::last_os_error()
    );
    let one: libc::c_int = 1;
    // SAFETY: an int option of its own size.
    let rc = unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(rc, 0, "PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
    fd
}

/// Sends every frame with one `sendmmsg`; returns how many went (a full queue sends fewer).
fn send_batch(fd: &std::os::fd::OwnedFd, frames: &[[u8; FRAME_LEN]]) -> usize {
    use std::os::fd::AsRawFd as _;
    let mut iovs: Vec<libc::iovec> =
        frames.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut _, iov_len: f.len() }).collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: a zeroed msghdr is valid; it points at one iovec that outlives the call.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            libc::mmsghdr { msg_hdr: hdr, msg_len: 0 }
        })
        .collect();
    // SAFETY: `msgs` holds `msgs.len()` valid headers whose buffers outlive the call.
    let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        // A full device queue: try again with the next batch.
        assert!(
            matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)),
            "sendmmsg on the flood's AF_PACKET socket: {e}"
        );
        return 0;
    }
    n as usize
}

/// Ethernet, IPv4 (checksummed), TCP (checksummed, no payload): a SYN, or an ACK of nothing.
fn write_frame(f: &mut [u8; FRAME_LEN], flood: &Flood, src: Ipv4Addr, sport: u16, syn: bool, seq: u32) {
    f[0..6].copy_from_slice(&flood.dst_mac);
    f[6..12].copy_from_slice(&flood.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&flood.dst.octets());
    let sum = checksum(ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp.fill(0);
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&flood.dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    if !syn {
        tcp[8..12].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
    }
    tcp[12] = 5 << 4;
    tcp[13] = if syn { 0x02 } else { 0x10 };
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    // Pseudo-header: source, destination, protocol, TCP length.
    let mut pseudo = 0u32;
    for w in src.octets().chunks(2).chain(flood.dst.octets().chunks(2)) {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    pseudo += 6 + 20;
    let sum = checksum(tcp, pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
}

/// The Internet checksum of `data` (even length), starting from `sum`.
fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for w in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_valid_checksums() {
        let flood = Flood {
            ifindex: 1,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            sources: [198, 19],
            dst: Ipv4Addr::new(198, 18, 100, 1),
            dport: 80,
            max_packets: 0,
            max_time: Duration::ZERO,
        };
        let mut f = [0u8; FRAME_LEN];
        write_frame(&mut f, &flood, Ipv4Addr::new(198, 19, 3, 4), 4000, true, 7);
        let p = etherparse::SlicedPacket::from_ethernet(&f).expect("parses");
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else { panic!("not IPv4") };
        assert_eq!(checksum(&f[14..34], 0), 0, "IPv4 header checksum");
        let Some(etherparse::TransportSlice::Tcp(tcp)) = p.transport else { panic!("not TCP") };
        assert!(tcp.syn() && !tcp.ack());
        let want = tcp.to_header().calc_checksum_ipv4(&ip.header().to_header(), &[]).unwrap();
        assert_eq!(tcp.checksum(), want, "TCP checksum");
    }
}
