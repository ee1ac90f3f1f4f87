//! What a pinned XDP link drives, asked of the kernel: whether it is still attached, to which
//! interface, in which mode. aya 0.14's `LinkInfo` gives neither an XDP link's interface nor a
//! way to detach it, so the two `bpf` commands are called here (`BPF_OBJ_GET_INFO_BY_FD`,
//! `BPF_LINK_DETACH`), with the kernel's own structures from aya-obj; the mode comes from the
//! interface (`RTM_GETLINK`: the program id attached in each mode).
//!
//! An interface deleted under its link (a driver reload, a bond, VLAN or veth made again)
//! leaves the link pinned but dead: the kernel detached it (its interface reads 0) and refuses
//! to update it (`ENOLINK`). The interface made again under the same name has another index
//! and nothing attached.
use std::{
    ffi::CString,
    fmt, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya_obj::generated::{bpf_cmd, bpf_link_info, bpf_link_type};

use super::loader::Mode;
use crate::host::netlink::{link, Netlink};

/// What the pinned link of an interface drives. Shown as the mode when attached, else as why
/// not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// The interface, in this mode.
    Attached(Mode),
    /// Nothing: no link is pinned for the interface.
    Unpinned,
    /// Nothing: the kernel detached it when its interface was deleted.
    Dead,
    /// Another interface, of this index: the one of this name was renamed (or moved to another
    /// namespace) and another one made under the name.
    Elsewhere { ifindex: u32 },
    /// The interface, but it lists the link's program in neither mode (offloaded to the NIC?).
    Unlisted,
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkState::Attached(mode) => write!(f, "{mode}"),
            LinkState::Unpinned => f.write_str("no link is pinned for it"),
            LinkState::Dead => {
                f.write_str("its pinned link is dead: the kernel detached it when the interface was deleted")
            }
            LinkState::Elsewhere { ifindex } => write!(
                f,
                "its pinned link drives interface #{ifindex} ({}), not this one: the interface was renamed \
                 or moved, and another one made under its name",
                link::ifname(*ifindex).unwrap_or_else(|| "not in this namespace".into())
            ),
            LinkState::Unlisted => f.write_str(
                "the interface lists its pinned link's program in neither native nor generic mode",
            ),
        }
    }
}

/// What the link pinned at `path` drives, for interface `interface` (in the calling thread's
/// network namespace).
pub fn state(path: &Path, interface: &str) -> io::Result<LinkState> {
    let link = match PinnedXdpLink::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LinkState::Unpinned),
        other => other?,
    };
    let (prog_id, link_ifindex) = link.info()?;
    if link_ifindex == 0 {
        return Ok(LinkState::Dead);
    }
    if link::ifindex(interface) != Some(link_ifindex) {
        return Ok(LinkState::Elsewhere { ifindex: link_ifindex });
    }
    let programs = Netlink::open()?.xdp_programs(link_ifindex)?;
    Ok(if programs.driver == prog_id {
        LinkState::Attached(Mode::Native)
    } else if programs.generic == prog_id {
        LinkState::Attached(Mode::Generic)
    } else {
        LinkState::Unlisted
    })
}

/// Detaches the link pinned at `path` from whatever it drives, then removes the pin. The
/// detach is done before this returns (the kernel frees an unpinned link only later): the
/// interface takes a program in another mode at once.
pub fn remove(path: &Path) -> io::Result<()> {
    PinnedXdpLink::open(path)?.detach()?;
    std::fs::remove_file(path)
}

/// A pinned XDP link, opened from its pin.
struct PinnedXdpLink {
    fd: OwnedFd,
}

/// The leading part of `union bpf_attr` for `BPF_OBJ_GET`.
#[repr(C)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// The leading part of `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The leading part of `union bpf_attr` for `BPF_LINK_DETACH`.
#[repr(C)]
struct LinkDetach {
    link_fd: u32,
}

/// The `bpf` system call with `attr`, the leading part of `union bpf_attr` that `cmd` reads.
fn bpf<T>(cmd: bpf_cmd, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is valid for the size given, which is all the kernel reads (it takes the
    // rest of `union bpf_attr` as zero); the pointers in it are valid for what `cmd` writes.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut T, std::mem::size_of::<T>())
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

impl PinnedXdpLink {
    fn open(path: &Path) -> io::Result<PinnedXdpLink> {
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut attr = ObjGet { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
        let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
        // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
        Ok(PinnedXdpLink { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) } })
    }

    /// The link's program id, and its interface's index (0: detached).
    fn info(&self) -> io::Result<(u32, u32)> {
        // SAFETY: plain data, valid zeroed (and the kernel wants its inputs zero).
        let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
        let mut attr = InfoByFd {
            bpf_fd: self.fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<bpf_link_info>() as u32,
            info: &mut info as *mut bpf_link_info as u64,
        };
        bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        if info.type_ != bpf_link_type::BPF_LINK_TYPE_XDP as u32 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the pin holds a link of type {}, not an XDP link", info.type_),
            ));
        }
        // SAFETY: the kernel fills the union's `xdp` member for an XDP link.
        Ok((info.prog_id, unsafe { info.__bindgen_anon_1.xdp.ifindex }))
    }

    fn detach(&self) -> io::Result<()> {
        let mut attr = LinkDetach { link_fd: self.fd.as_raw_fd() as u32 };
        bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(drop)
    }
}
