//! Privileged tests call [`require_root`] first, so that without root they fail saying why,
//! instead of failing somewhere deep with EPERM, or worse, skipping.

/// Capabilities the privileged tests use, by number (linux/capability.h).
const NEEDED: &[(u32, &str)] = &[(12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN"), (39, "CAP_BPF")];

/// The first words of the panic message, so that a test can recognise it.
pub const MESSAGE_START: &str = "this test needs root";

/// Panics with a clear message unless the process has the capabilities the tests need.
pub fn require_root() {
    let missing = missing_capabilities();
    if !missing.is_empty() {
        panic!(
            "{MESSAGE_START} (it creates network namespaces and loads XDP programs; missing {}): \
             run the suite as root with `sudo -E env \"PATH=$PATH\" cargo xtask test`",
            missing.join(", ")
        );
    }
}

fn missing_capabilities() -> Vec<&'static str> {
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    NEEDED.iter().filter(|(bit, _)| effective & (1 << bit) == 0).map(|(_, name)| *name).collect()
}
