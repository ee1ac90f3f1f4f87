//! The filesystem under the pins: a bpffs, and one that outlives the process.
//!
//! Pins are what keeps the maps and the XDP link alive after lbd exits, and pins live as long
//! as the bpffs instance (superblock) holding them is mounted somewhere. [`ensure`] mounts a
//! bpffs where there is none (as Cilium's agent does), then warns when that instance is
//! mounted only in a mount namespace other than the host's (PID 1's): it goes away with that
//! namespace, and the pins, the maps and the pinned XDP link with it. That is what happens
//! under `ip netns exec`, which gives the command a private mount namespace with a fresh /sys
//! and no bpffs at /sys/fs/bpf: a bpffs mounted there dies with the command.
//!
//! The check compares the superblock (the mount's device number in /proc/self/mountinfo) with
//! the mounts PID 1 sees (/proc/1/mountinfo): a copy of the host's /sys/fs/bpf in a private
//! namespace (`unshare --mount`) is the same superblock, and its pins do outlive the namespace,
//! whatever its propagation tags say.
use std::{
    ffi::CString,
    io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use super::HostError;

/// statfs(2)'s f_type of a bpffs.
pub const BPF_FS_MAGIC: i64 = 0xcafe4a11;
/// Where bpffs is normally mounted.
pub const DEFAULT_MOUNT: &str = "/sys/fs/bpf";

/// What [`ensure`] did and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bpffs {
    /// Where it mounted a bpffs, if it had to.
    pub mounted: Option<PathBuf>,
    /// Why pins under the pin path will not outlive this mount namespace, if they will not.
    pub warning: Option<String>,
}

/// Makes sure `pin_path` (which need not exist yet) is on a bpffs: if its nearest existing
/// ancestor is not, mounts one (mode 0700) at /sys/fs/bpf when `pin_path` is under it, else at
/// `pin_path` itself (created). Then checks that the pins can outlive this process. Logs the
/// mount (info) and the warning; returns both too.
pub fn ensure(pin_path: &Path) -> Result<Bpffs, HostError> {
    let pin_path = std::path::absolute(pin_path).map_err(|source| pin_error(pin_path, source))?;
    let mut result = Bpffs::default();
    if !is_bpffs(&existing_ancestor(&pin_path))? {
        let target =
            if pin_path.starts_with(DEFAULT_MOUNT) { PathBuf::from(DEFAULT_MOUNT) } else { pin_path.clone() };
        mount(&target)?;
        info!(path = %target.display(), "mounted a bpffs (mode 0700) for the pins");
        result.mounted = Some(target);
    }
    result.warning = outlives_namespace_warning(&pin_path)?;
    if let Some(w) = &result.warning {
        warn!("{w}");
    }
    Ok(result)
}

/// `path` or its nearest ancestor that exists.
fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/")).to_owned()
}

fn is_bpffs(path: &Path) -> Result<bool, HostError> {
    let c = c_path(path)?;
    // SAFETY: a zeroed statfs is a valid buffer; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(pin_error(path, io::Error::last_os_error()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

fn mount(target: &Path) -> Result<(), HostError> {
    let failed = |source| HostError::MountBpffs { path: target.to_owned(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(target).map_err(failed)?;
    let target_c = c_path(target)?;
    let (bpf, mode) = (c"bpf", c"mode=0700");
    // SAFETY: NUL-terminated strings for source, target, type and data.
    let rc = unsafe {
        libc::mount(bpf.as_ptr(), target_c.as_ptr(), bpf.as_ptr(), 0, mode.as_ptr() as *const libc::c_void)
    };
    if rc != 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    Ok(())
}

/// The warning text if the bpffs holding `pin_path` is mounted in this mount namespace but
/// nowhere PID 1 can see it. `None` when it is, or when that cannot be told (no access to
/// PID 1's view).
fn outlives_namespace_warning(pin_path: &Path) -> Result<Option<String>, HostError> {
    let same = |a: io::Result<PathBuf>, b: io::Result<PathBuf>| matches!((a, b), (Ok(a), Ok(b)) if a == b);
    if same(std::fs::read_link("/proc/self/ns/mnt"), std::fs::read_link("/proc/1/ns/mnt")) {
        return Ok(None);
    }
    let holder = existing_ancestor(pin_path).canonicalize().map_err(|source| pin_error(pin_path, source))?;
    let own = read_mountinfo(Path::new("/proc/self/mountinfo"))?;
    let Some(mount) = own
        .iter()
        .filter(|m| m.fstype == "bpf" && holder.starts_with(&m.point))
        .max_by_key(|m| m.point.as_os_str().len())
    else {
        return Ok(None);
    };
    let Ok(host) = read_mountinfo(Path::new("/proc/1/mountinfo")) else { return Ok(None) };
    if host.iter().any(|m| m.fstype == "bpf" && m.device == mount.device) {
        return Ok(None);
    }
    Ok(Some(format!(
        "the pins under {} are on a bpffs (mounted at {}) that exists only in this process's mount namespace, \
         not in the host's (PID 1's): they, the maps and the pinned XDP link die with this namespace, so if \
         this process is killed (kill -9 included) forwarding stops. Put pin_path on a bpffs mounted in the \
         host's mount namespace (/sys/fs/bpf). `ip netns exec` gives the command a private /sys: start it with \
         `nsenter --net=/run/netns/NAME` instead, or use a pin_path on a bpffs mounted beforehand outside /sys",
        pin_path.display(),
        mount.point.display()
    )))
}

/// One line of a mountinfo file: what the check needs.
struct Mount {
    /// major:minor of the filesystem instance.
    device: String,
    point: PathBuf,
    fstype: String,
}

fn read_mountinfo(path: &Path) -> Result<Vec<Mount>, HostError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| HostError::MountInfo { path: path.to_owned(), source })?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`: fields 3 and 5, and the
/// first after the `-` that ends the optional fields.
fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-")?;
    Some(Mount {
        device: fields.get(2)?.to_string(),
        point: PathBuf::from(unescape(fields.get(4)?)),
        fstype: fields.get(dash + 1)?.to_string(),
    })
}

/// Mount points escape space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok()) {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out + rest
}

fn c_path(path: &Path) -> Result<CString, HostError> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| pin_error(path, io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path")))
}

fn pin_error(path: &Path, source: io::Error) -> HostError {
    HostError::PinPath { path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_device_point_and_type() {
        let m = parse_mountinfo_line("45 23 0:40 / /sys/fs/bpf rw,relatime shared:12 master:3 - bpf bpf rw")
            .unwrap();
        assert_eq!(
            (m.device.as_str(), m.point.as_path(), m.fstype.as_str()),
            ("0:40", Path::new("/sys/fs/bpf"), "bpf")
        );
        let m = parse_mountinfo_line("50 23 0:41 / /tmp/a\\040b rw - tmpfs tmpfs rw").unwrap();
        assert_eq!(m.point, Path::new("/tmp/a b"));
        assert!(parse_mountinfo_line("garbage").is_none());
    }
}
