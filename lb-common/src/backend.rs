use crate::vip::{FAMILY_V4, FAMILY_V6};

/// The backend id rings never hold for a real backend; BACKENDS[0] stays empty.
pub const NO_BACKEND: u32 = 0;

/// `BackendValue::flags`: the backend is in its VIP's ring (or round-robin sequence) now, so it
/// takes new flows. A SYN whose earlier flow is pinned to a backend without it (drained, down,
/// removed) is scheduled anew instead of following the old flow.
pub const BACKEND_TAKES_NEW_FLOWS: u8 = 1 << 0;

/// A backend host, by id (index in BACKENDS). `family` 0 marks an empty slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue {
    pub addr: [u8; 16],
    /// Moved on by the agent whenever the id is given to another backend: flows recorded under
    /// another generation are void, so they never follow an id to its next owner. 32 bits: it
    /// does not come back round in any real life of a pin directory.
    pub generation: u32,
    /// The configured weight (the `least-conn` scheduler compares active connections per unit
    /// of weight). 0 for a backend that takes no new flows.
    pub weight: u16,
    pub family: u8,
    /// `BACKEND_*` bits.
    pub flags: u8,
}
const _: () = assert!(core::mem::size_of::<BackendValue>() == 24);

pub(crate) const fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = a[0];
    out[1] = a[1];
    out[2] = a[2];
    out[3] = a[3];
    out
}

impl BackendValue {
    pub const fn v4(addr: [u8; 4]) -> Self {
        Self { addr: v4_in_16(addr), family: FAMILY_V4, generation: 0, weight: 0, flags: 0 }
    }

    pub const fn v6(addr: [u8; 16]) -> Self {
        Self { addr, family: FAMILY_V6, generation: 0, weight: 0, flags: 0 }
    }

    pub const fn with_weight(self, weight: u16) -> Self {
        Self { weight, ..self }
    }

    /// With `BACKEND_TAKES_NEW_FLOWS` set or cleared.
    pub const fn taking_new_flows(self, yes: bool) -> Self {
        let flags =
            if yes { self.flags | BACKEND_TAKES_NEW_FLOWS } else { self.flags & !BACKEND_TAKES_NEW_FLOWS };
        Self { flags, ..self }
    }

    pub const fn takes_new_flows(&self) -> bool {
        self.flags & BACKEND_TAKES_NEW_FLOWS != 0
    }
}

#[cfg(feature = "user")]
// SAFETY: plain integers and byte arrays without padding (size asserted above).
unsafe impl aya::Pod for BackendValue {}

#[cfg(feature = "user")]
impl From<core::net::IpAddr> for BackendValue {
    fn from(addr: core::net::IpAddr) -> Self {
        match addr {
            core::net::IpAddr::V4(a) => Self::v4(a.octets()),
            core::net::IpAddr::V6(a) => Self::v6(a.octets()),
        }
    }
}
