//! What a backend host changed, written to its state file before each change: a restart after
//! a crash (which skipped the cleanup) still knows which VIPs it bound and what each sysctl was
//! before the first start, and restores those on stop.
use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
    path::Path,
};

use serde::{Deserialize, Serialize};

use super::BackendHostError;
use crate::host::sysctl::Sysctl;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// VIPs bound to `lo` by this command (not those that were there before).
    pub vips: BTreeSet<IpAddr>,
    /// Sysctls it changed, with their values from before.
    pub sysctls: BTreeMap<Sysctl, String>,
}

impl Record {
    /// The record a previous run left, `None` if there is none (it stopped cleanly, or never ran).
    pub fn read(path: &Path) -> Result<Option<Record>, BackendHostError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(BackendHostError::StateFile { path: path.to_owned(), source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| BackendHostError::CorruptStateFile { path: path.to_owned(), source })
    }

    /// Writes it (whole, atomically), creating the directory if needed.
    pub fn write(&self, path: &Path) -> Result<(), BackendHostError> {
        let failed = |source| BackendHostError::StateFile { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string_pretty(self).expect("a record serializes");
        std::fs::write(&tmp, text).map_err(failed)?;
        std::fs::rename(&tmp, path).map_err(failed)
    }

    /// Removes the file: everything it listed was undone.
    pub fn remove(path: &Path) -> Result<(), BackendHostError> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(BackendHostError::StateFile { path: path.to_owned(), source: e })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Family;

    #[test]
    fn a_record_survives_a_round_trip_through_its_file() {
        let dir = std::env::temp_dir().join(format!("lbt-record-{}", std::process::id()));
        let path = dir.join("state.json");
        let mut r = Record::default();
        r.vips.insert("198.18.100.1".parse().unwrap());
        r.sysctls.insert(Sysctl::interface(Family::Ipv4, "eth0.7", "arp_ignore"), "0".into());
        r.write(&path).unwrap();
        assert_eq!(Record::read(&path).unwrap(), Some(r));
        Record::remove(&path).unwrap();
        assert_eq!(Record::read(&path).unwrap(), None);
        std::fs::remove_dir(&dir).unwrap();
    }
}
