//! Pins an earlier release left under `pin_path` in a map layout of its own (`pin_path/vN`,
//! lb_common::PIN_LAYOUT): this release cannot adopt its maps, and the kernel takes no second
//! XDP program on an interface while that release's link is there. So they are retired at start:
//! each link detached (the interface is then free for this release's own), the pins removed.
//! Forwarding pauses for the moment between the detach and the new attach; the flow table starts
//! empty. The saved state is not in the pins: drains, denies and run-time VIPs carry over.
use std::{
    io,
    path::{Path, PathBuf},
};

use super::{loader::LINK_PIN_PREFIX, xdp_link};

/// An earlier layout's pins, retired.
#[derive(Debug)]
pub struct Retired {
    pub dir: PathBuf,
    /// Interfaces whose link was detached.
    pub links: Vec<String>,
}

/// Retires every directory under `pin_path` named like a layout (`v` and a number) older than
/// `current` that `ours` recognises by its pins (another role's pins stay).
pub fn retire(pin_path: &Path, current: &str, ours: impl Fn(&Path) -> bool) -> io::Result<Vec<Retired>> {
    let Some(current) = version(current) else { return Ok(Vec::new()) };
    retire_where(pin_path, |v| v < current, ours)
}

/// Whether `pin_path` holds a directory of a layout older than `current`.
pub fn any(pin_path: &Path, current: &str) -> bool {
    let Some(current) = version(current) else { return false };
    layouts(pin_path).is_ok_and(|dirs| dirs.iter().any(|(v, _)| *v < current))
}

/// Retires every layout's directory under `pin_path`, the current one's too, that `ours`
/// recognises (`lbd detach`).
pub fn retire_every(pin_path: &Path, ours: impl Fn(&Path) -> bool) -> io::Result<Vec<Retired>> {
    retire_where(pin_path, |_| true, ours)
}

fn retire_where(
    pin_path: &Path,
    layout: impl Fn(u32) -> bool,
    ours: impl Fn(&Path) -> bool,
) -> io::Result<Vec<Retired>> {
    let mut retired = Vec::new();
    for (v, dir) in layouts(pin_path)? {
        if layout(v) && ours(&dir) {
            retired.push(retire_dir(dir)?);
        }
    }
    Ok(retired)
}

/// The directories under `pin_path` named like a layout, with their numbers (none if there is
/// no `pin_path`).
fn layouts(pin_path: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let entries = match std::fs::read_dir(pin_path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other?,
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let dir = entry?.path();
        if let Some(v) = dir.file_name().and_then(|n| version(&n.to_string_lossy())) {
            dirs.push((v, dir));
        }
    }
    Ok(dirs)
}

/// `v7` -> 7.
fn version(name: &str) -> Option<u32> {
    name.strip_prefix('v')?.parse().ok()
}

fn retire_dir(dir: PathBuf) -> io::Result<Retired> {
    let mut links = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match name.strip_prefix(LINK_PIN_PREFIX) {
            Some(interface) => {
                // A dead link detaches as a no-op; a pin that is no link is removed all the same.
                if xdp_link::remove(&path).is_err() {
                    std::fs::remove_file(&path)?;
                }
                links.push(interface.to_owned());
            }
            None => std::fs::remove_file(&path)?,
        }
    }
    std::fs::remove_dir(&dir)?;
    Ok(Retired { dir, links })
}

#[cfg(test)]
mod tests {
    use super::version;

    #[test]
    fn layout_directories_are_read_by_their_number() {
        assert_eq!(version("v6"), Some(6));
        assert_eq!(version("v12"), Some(12));
        assert_eq!(version("lock"), None);
        assert_eq!(version("v"), None);
        assert_eq!(version("vx"), None);
    }
}
