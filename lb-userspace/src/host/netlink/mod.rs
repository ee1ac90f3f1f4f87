//! A minimal rtnetlink client, written by hand over a `NETLINK_ROUTE` socket (libc only): one
//! request at a time, each with its own sequence number, answered by an acknowledgement, a
//! reply, or a dump. Only what the host modules need: routes ([`route`]), neighbours
//! ([`neigh`]), addresses ([`addr`]), interfaces ([`link`]).
//!
//! The socket belongs to the network namespace of the thread that opens it.
pub mod addr;
pub mod link;
pub mod neigh;
pub mod route;

use std::{
    cell::Cell,
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

// linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
/// In an error message: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Attribute types carry two flag bits on top (nested, byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// How often an interrupted dump (the table changed under it) is started again.
const DUMP_ATTEMPTS: usize = 4;
const RECV_BUFFER: usize = 64 * 1024;

/// How an object is written: created only if absent, or created or replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Create,
    CreateOrReplace,
}

impl Write {
    fn flags(self) -> u16 {
        match self {
            Write::Create => NLM_F_CREATE | NLM_F_EXCL,
            Write::CreateOrReplace => NLM_F_CREATE | NLM_F_REPLACE,
        }
    }
}

/// An open `NETLINK_ROUTE` socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: Cell<u32>,
}

/// The kernel's error for a request: an errno, and the extended-ack text when it gave one.
#[derive(Debug)]
pub struct KernelError {
    pub errno: i32,
    pub message: Option<String>,
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

impl std::error::Error for KernelError {}

impl KernelError {
    fn into_io(self) -> io::Error {
        let kind = io::Error::from_raw_os_error(self.errno).kind();
        io::Error::new(kind, self)
    }
}

/// The errno behind an error of this client (a kernel answer or a failed system call).
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| e.get_ref()?.downcast_ref::<KernelError>().map(|k| k.errno))
}

/// A reply message: its type and what follows its header.
pub struct Message {
    pub kind: u16,
    pub payload: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is valid (pid 0: the kernel picks one).
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the address is a sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &address as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Errors with the kernel's explanation, without a copy of our request. Best effort:
        // without them errors are bare errnos.
        for option in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            let on: libc::c_int = 1;
            // SAFETY: an int option of the size given.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    option,
                    &on as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        Ok(Netlink { fd, seq: Cell::new(1) })
    }

    /// Sends a request that changes something and waits for its acknowledgement.
    fn change(&self, request: Request) -> io::Result<()> {
        self.transact(request, false).map(drop)
    }

    /// Sends a get request and returns its one reply.
    fn get(&self, request: Request) -> io::Result<Message> {
        self.transact(request, false)?.into_iter().next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "the kernel acknowledged without a reply")
        })
    }

    /// Dumps a table: every message of the dump. A dump the kernel marks inconsistent (the
    /// table changed meanwhile) is done again.
    fn dump(&self, make: impl Fn() -> Request) -> io::Result<Vec<Message>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.transact(make(), true) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted && attempt < DUMP_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    fn transact(&self, request: Request, dump: bool) -> io::Result<Vec<Message>> {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        let bytes = request.finish(seq, if dump { NLM_F_DUMP } else { NLM_F_ACK });
        // SAFETY: a buffer of the length given; a zeroed sockaddr_nl addresses the kernel.
        let sent = unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                0,
                &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut replies = Vec::new();
        let mut interrupted = false;
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            // SAFETY: receives into a buffer of the length given.
            let n = unsafe {
                libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for (header, payload) in messages(&buf[..n as usize]) {
                if header.seq != seq {
                    continue; // an answer to an earlier request we gave up on
                }
                interrupted |= header.flags & NLM_F_DUMP_INTR != 0;
                match header.kind {
                    NLMSG_ERROR => {
                        return match parse_error(header.flags, payload)? {
                            None => Ok(replies),
                            Some(e) => Err(e.into_io()),
                        };
                    }
                    NLMSG_DONE => {
                        if interrupted {
                            return Err(io::Error::new(
                                io::ErrorKind::Interrupted,
                                "the dump was interrupted",
                            ));
                        }
                        return Ok(replies);
                    }
                    kind => replies.push(Message { kind, payload: payload.to_vec() }),
                }
            }
        }
    }
}

struct Header {
    kind: u16,
    flags: u16,
    seq: u32,
}

/// The messages in a datagram: header and payload each; a truncated one ends the list.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (Header, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let header = Header {
            kind: u16::from_ne_bytes(buf[4..6].try_into().unwrap()),
            flags: u16::from_ne_bytes(buf[6..8].try_into().unwrap()),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
        };
        let payload = &buf[NLMSG_HDRLEN..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((header, payload))
    })
}

/// An NLMSG_ERROR payload: `None` for an acknowledgement (error 0), else the error with the
/// kernel's extended-ack message if there is one.
fn parse_error(flags: u16, payload: &[u8]) -> io::Result<Option<KernelError>> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "a netlink error message cut short");
    let code = i32::from_ne_bytes(payload.get(0..4).ok_or_else(short)?.try_into().unwrap());
    if code == 0 {
        return Ok(None);
    }
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // After the error code: the request's header (its payload is left out: NETLINK_CAP_ACK).
        if let Some(tlvs) = payload.get(4 + NLMSG_HDRLEN..) {
            for (kind, data) in attributes(tlvs) {
                if kind == NLMSGERR_ATTR_MSG {
                    let text = data.split(|&b| b == 0).next().unwrap_or_default();
                    message = Some(String::from_utf8_lossy(text).into_owned());
                }
            }
        }
    }
    Ok(Some(KernelError { errno: -code, message }))
}

/// Netlink pads every message and attribute to 4 bytes.
fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// The attributes (type without its flag bits, data) in `buf`; a malformed one ends the list.
pub(crate) fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let data = &buf[4..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((kind, data))
    })
}

/// A request being built: a message type, its fixed family header, then attributes.
struct Request {
    buf: Vec<u8>,
}

impl Request {
    fn new(kind: u16, flags: u16, header: &[u8]) -> Request {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        buf.extend_from_slice(header);
        buf.resize(align(buf.len()), 0);
        Request { buf }
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Request {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    /// The message with its length, sequence number and the extra `flags` set.
    fn finish(mut self, seq: u32, flags: u16) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        let old = u16::from_ne_bytes([self.buf[6], self.buf[7]]);
        self.buf[6..8].copy_from_slice(&(old | flags).to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// The address family number of an address (AF_INET, AF_INET6).
fn family_of(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

/// An address as attribute data.
fn address_bytes(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// An address from attribute data of 4 or 16 bytes.
fn parse_address(data: &[u8]) -> Option<IpAddr> {
    match data.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
        _ => None,
    }
}

fn u32_at(data: &[u8], offset: usize) -> u32 {
    data.get(offset..offset + 4).map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_parsed_back() {
        let r = Request::new(28, 0, &[1, 2, 3])
            .attr(1, &[10, 0, 0, 1])
            .attr(12, &[76])
            .attr(15, &1u32.to_ne_bytes());
        let bytes = r.finish(7, NLM_F_ACK);
        assert_eq!(bytes.len() % 4, 0);
        let (header, payload) = messages(&bytes).next().expect("one message");
        assert_eq!((header.kind, header.seq), (28, 7));
        assert_eq!(header.flags, NLM_F_REQUEST | NLM_F_ACK);
        let attrs: Vec<(u16, Vec<u8>)> = attributes(&payload[4..]).map(|(k, d)| (k, d.to_vec())).collect();
        assert_eq!(attrs, vec![(1, vec![10, 0, 0, 1]), (12, vec![76]), (15, 1u32.to_ne_bytes().to_vec())]);
    }

    #[test]
    fn an_error_message_carries_errno_and_text() {
        let mut payload = (-22i32).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0; NLMSG_HDRLEN]);
        payload.extend_from_slice(&[8, 0, 1, 0, b'b', b'a', b'd', 0]);
        let e = parse_error(NLM_F_ACK_TLVS, &payload).unwrap().expect("an error");
        assert_eq!(e.errno, libc::EINVAL);
        assert_eq!(e.message.as_deref(), Some("bad"));
        let io = e.into_io();
        assert_eq!(errno(&io), Some(libc::EINVAL));
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
        let ack = 0i32.to_ne_bytes();
        assert!(parse_error(0, &ack).unwrap().is_none());
    }
}
