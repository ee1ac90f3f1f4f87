//! systemd's service notifications (`Type=notify`): lbd says READY=1 once it serves, so that
//! `systemctl start` (and a reload, or anything ordered after the unit) waits for a start that
//! may take seconds, and fails when the start does. Nothing without `$NOTIFY_SOCKET`.
use std::{
    io,
    os::{
        linux::net::SocketAddrExt,
        unix::{ffi::OsStrExt, net::UnixDatagram},
    },
};

use tracing::warn;

/// The start is done: lbd serves.
pub fn ready() {
    notify("READY=1");
}

/// The stop began.
pub fn stopping() {
    notify("STOPPING=1");
}

fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send(socket.as_bytes(), state) {
        warn!(socket = %socket.to_string_lossy(), "telling systemd {state}: {e}");
    }
}

/// Sends `state` to the datagram socket at `socket`: a path, or `@name` in the abstract
/// namespace.
fn send(socket: &[u8], state: &str) -> io::Result<()> {
    let out = UnixDatagram::unbound()?;
    match socket.strip_prefix(b"@") {
        Some(name) => {
            out.send_to_addr(state.as_bytes(), &std::os::unix::net::SocketAddr::from_abstract_name(name)?)
        }
        None => out.send_to(state.as_bytes(), std::ffi::OsStr::from_bytes(socket)),
    }
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = std::env::temp_dir().join(format!("lbd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let by_path = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str().as_bytes(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = by_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("lbd-notify-test-{}", std::process::id());
        let by_name = UnixDatagram::bind_addr(
            &std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap(),
        )
        .unwrap();
        send(format!("@{name}").as_bytes(), "STOPPING=1").unwrap();
        let n = by_name.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
