//! One lbd per pin path. Two agents on the same pins would both write the maps and the second
//! would take the first one's API socket; so lbd holds an exclusive `flock` on its `pin_path`
//! directory (on bpffs, which supports `flock` as any file system without locking of its own
//! does) from before it touches anything until it exits, however it exits: the kernel drops
//! the lock with the process. A lock file beside the state file would do as well, but the pins
//! are what must not be shared, and a directory on bpffs needs no file that could be left over.
use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PinLockError {
    #[error("another lbd{} is running on the pins in {}: stop it first, or give this one its own pin_path, api_socket and state_file", holder_text(*.holder), .path.display())]
    Held { path: PathBuf, holder: Option<u32> },
    #[error("cannot lock the pin directory {}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn holder_text(holder: Option<u32>) -> String {
    holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
}

/// The lock, held as long as this lives.
#[derive(Debug)]
pub struct PinLock {
    _dir: File,
}

impl PinLock {
    /// Creates `pin_path` if needed and locks it, without waiting: held by another process, it
    /// says which (from `/proc/locks`, when it can).
    pub fn acquire(pin_path: &Path) -> Result<PinLock, PinLockError> {
        let io = |source| PinLockError::Io { path: pin_path.to_owned(), source };
        std::fs::create_dir_all(pin_path).map_err(io)?;
        let dir = File::open(pin_path).map_err(io)?;
        // SAFETY: a valid descriptor; flock only reads its arguments.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(PinLock { _dir: dir });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(e));
        }
        Err(PinLockError::Held { path: pin_path.to_owned(), holder: holder(&dir) })
    }
}

/// The pid of the process holding a `flock` on `file`, from `/proc/locks`, whose lines read
/// `1: FLOCK  ADVISORY  WRITE 4466 00:28:4833671 0 EOF` (pid, then device in hex and inode).
fn holder(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    let id = format!("{:02x}:{:02x}:{}", libc::major(dev), libc::minor(dev), meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&id.as_str()))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("lbd-pin-lock-test-{}", std::process::id()));
        let first = PinLock::acquire(&dir).unwrap();
        // flock locks belong to the open file: a second open in the same process conflicts too.
        match PinLock::acquire(&dir) {
            Err(e @ PinLockError::Held { .. }) => {
                let text = e.to_string();
                assert!(text.contains(&format!("(pid {})", std::process::id())), "{text}");
                assert!(text.contains(&dir.display().to_string()), "{text}");
            }
            other => panic!("a second lock: {other:?}"),
        }
        drop(first);
        PinLock::acquire(&dir).expect("free again once the first is dropped");
        std::fs::remove_dir(&dir).unwrap();
    }
}
