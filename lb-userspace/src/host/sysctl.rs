//! Kernel parameters under /proc/sys. `/proc/sys/net` shows the network namespace of the thread
//! that opens it.
use std::{fmt, path::PathBuf, str::FromStr};

use super::{Family, HostError};

/// A kernel parameter, e.g. `net.ipv4.conf.eth0.forwarding`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sysctl {
    /// Components of its path under /proc/sys (an interface name may contain dots).
    parts: Vec<String>,
}

impl Sysctl {
    /// `net.<family>.conf.<interface>.<leaf>`, e.g. (Ipv4, "eth0", "forwarding").
    pub fn interface(family: Family, interface: &str, leaf: &str) -> Sysctl {
        let parts = ["net", family.sysctl_name(), "conf", interface, leaf];
        Sysctl { parts: parts.iter().map(|p| p.to_string()).collect() }
    }

    /// Its last component, e.g. `forwarding`.
    pub fn leaf(&self) -> &str {
        self.parts.last().map_or("", String::as_str)
    }

    pub fn path(&self) -> PathBuf {
        let mut path = PathBuf::from("/proc/sys");
        path.extend(&self.parts);
        path
    }

    /// Its value, without the trailing newline.
    pub fn read(&self) -> Result<String, HostError> {
        std::fs::read_to_string(self.path())
            .map(|v| v.trim_end().to_owned())
            .map_err(|source| HostError::ReadSysctl { key: self.to_string(), source })
    }

    pub fn write(&self, value: &str) -> Result<(), HostError> {
        std::fs::write(self.path(), value).map_err(|source| HostError::WriteSysctl {
            key: self.to_string(),
            value: value.to_owned(),
            source,
        })
    }

    /// The command that sets it: `sysctl -w net.ipv4.conf.eth0.forwarding=1`.
    pub fn command(&self, value: &str) -> String {
        format!("sysctl -w {self}={value}")
    }
}

/// sysctl(8)'s spelling: components joined by dots, a dot inside one (`eth0.100`) written `/`.
impl fmt::Display for Sysctl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.parts.iter().map(|p| p.replace('.', "/")).collect();
        f.write_str(&parts.join("."))
    }
}

impl FromStr for Sysctl {
    type Err = String;

    fn from_str(s: &str) -> Result<Sysctl, String> {
        let parts: Vec<String> = s.split('.').map(|p| p.replace('/', ".")).collect();
        if parts.iter().any(|p| p.is_empty() || p == ".." || p == ".") {
            return Err(format!("{s:?} is not a sysctl name"));
        }
        Ok(Sysctl { parts })
    }
}

impl serde::Serialize for Sysctl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Sysctl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sysctl, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_dots_use_slashes_as_sysctl_does() {
        let s = Sysctl::interface(Family::Ipv4, "eth0.100", "forwarding");
        assert_eq!(s.to_string(), "net.ipv4.conf.eth0/100.forwarding");
        assert_eq!(s.path(), PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding"));
        assert_eq!(s.command("1"), "sysctl -w net.ipv4.conf.eth0/100.forwarding=1");
        assert_eq!(s.to_string().parse::<Sysctl>().unwrap(), s);
        assert!("net..x".parse::<Sysctl>().is_err());
    }
}
