//! BIRD's control socket, read in a restricted session: the BGP sessions and what each exports.
//!
//! The protocol: BIRD greets with `0001 BIRD <version> ready.`; each reply line is a 4-digit
//! code then `-` (more follows) or ` ` (last line), or a space then text (continuing the
//! previous code). A reply ends with its last line, normally `0000 `. Codes 8xxx (runtime
//! errors) and 9xxx (syntax errors) are refusals.
//!
//! Every session starts with `restrict`: BIRD then refuses (8007) every command that would
//! change it, so reading its state can never disturb the announcements.
use std::{
    collections::BTreeSet,
    io::{self, BufRead, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// The longest one command may take: a frozen BIRD must not hold lbd up.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// One line of a reply: its code (e.g. 1002 for a row of `show protocols`) and text.
/// Continuation lines carry the code of the line they continue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyLine {
    pub code: u16,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("BIRD's control socket {}: {error} (is BIRD running, not frozen, and is this the socket it was started with, `bird -s`?)", socket.display())]
    Io { socket: PathBuf, error: io::Error },
    /// BIRD answered with an error code: 8xxx runtime error, 9xxx syntax error.
    #[error("BIRD refused `{command}` ({code}): {message}")]
    Refused { command: String, code: u16, message: String },
    #[error("not a line of BIRD's control protocol: {line:?} (is it BIRD's socket?)")]
    Garbled { line: String },
}

/// A restricted session on BIRD's control socket.
pub struct Control {
    socket: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Control {
    /// Connects, reads the greeting and restricts the session.
    pub fn connect(socket: &Path) -> Result<Control, ControlError> {
        let io_err = |error| ControlError::Io { socket: socket.to_owned(), error };
        let stream = UnixStream::connect(socket).map_err(io_err)?;
        stream.set_read_timeout(Some(CONTROL_TIMEOUT)).map_err(io_err)?;
        stream.set_write_timeout(Some(CONTROL_TIMEOUT)).map_err(io_err)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(io_err)?);
        let mut greeting = String::new();
        reader.read_line(&mut greeting).map_err(io_err)?;
        if !greeting.starts_with("0001 ") {
            return Err(ControlError::Garbled { line: greeting });
        }
        let mut control = Control { socket: socket.to_owned(), stream, reader };
        control.command("restrict")?;
        Ok(control)
    }

    /// Sends one command (what `birdc -s SOCKET CMD` does) and returns the reply.
    pub fn command(&mut self, command: &str) -> Result<Vec<ReplyLine>, ControlError> {
        let io_err = |error| ControlError::Io { socket: self.socket.clone(), error };
        (&self.stream).write_all(format!("{command}\n").as_bytes()).map_err(io_err)?;
        read_reply(&mut self.reader, &self.socket, command)
    }

    /// Every protocol and its state (`show protocols`).
    pub fn protocols(&mut self) -> Result<Vec<Protocol>, ControlError> {
        Ok(self
            .command("show protocols")?
            .iter()
            .filter(|l| l.code == 1002)
            .filter_map(Protocol::parse)
            .collect())
    }

    /// The addresses whose host routes (/32, /128) protocol `name` exports
    /// (`show route export NAME`).
    pub fn exported_hosts(&mut self, name: &str) -> Result<BTreeSet<IpAddr>, ControlError> {
        let reply = self.command(&format!("show route export {name}"))?;
        Ok(reply.iter().filter_map(|l| host_route(&l.text)).collect())
    }
}

fn read_reply(
    reader: &mut impl BufRead,
    socket: &Path,
    command: &str,
) -> Result<Vec<ReplyLine>, ControlError> {
    let io_err = |error| ControlError::Io { socket: socket.to_owned(), error };
    let mut reply = Vec::new();
    let mut code = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io_err)? == 0 {
            let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "BIRD closed the socket mid-reply");
            return Err(io_err(eof));
        }
        let text = line.trim_end_matches('\n');
        if let Some(rest) = text.strip_prefix(' ') {
            reply.push(ReplyLine { code, text: rest.to_owned() });
            continue;
        }
        let (head, rest) = text.split_at_checked(5).unwrap_or((text, ""));
        let parsed = head.get(..4).and_then(|c| c.parse::<u16>().ok());
        let (Some(c), Some(sep)) = (parsed, head.chars().nth(4)) else {
            return Err(ControlError::Garbled { line: text.to_owned() });
        };
        code = c;
        if code >= 8000 {
            let (command, message) = (command.to_owned(), rest.to_owned());
            return Err(ControlError::Refused { command, code, message });
        }
        if code != 0 {
            reply.push(ReplyLine { code, text: rest.to_owned() });
        }
        if sep == ' ' {
            return Ok(reply);
        }
    }
}

/// The address of a route line that starts with a host route (`198.18.100.1/32 unicast ...`).
fn host_route(text: &str) -> Option<IpAddr> {
    let (address, len) = text.split_whitespace().next()?.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let host = if address.is_ipv4() { "32" } else { "128" };
    (len == host).then_some(address)
}

/// A row of `show protocols`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protocol {
    pub name: String,
    /// BGP, Kernel, Device, BFD...
    pub proto: String,
    /// up, start, down...
    pub state: String,
    /// For BGP: the session state (Established, Active, Idle...) and the last error.
    pub info: String,
}

impl Protocol {
    /// Columns: name, protocol, table, state, since (one word in the default time format), info.
    fn parse(line: &ReplyLine) -> Option<Protocol> {
        let mut words = line.text.split_whitespace();
        let (name, proto, _table, state, _since) =
            (words.next()?, words.next()?, words.next()?, words.next()?, words.next()?);
        Some(Protocol {
            name: name.to_owned(),
            proto: proto.to_owned(),
            state: state.to_owned(),
            info: words.collect::<Vec<_>>().join(" "),
        })
    }

    pub fn is_established(&self) -> bool {
        self.state == "up" && self.info.starts_with("Established")
    }
}

/// A BGP session of BIRD, as lbd reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub name: String,
    pub established: bool,
    /// BIRD's words: `up Established`, `start Active Socket: Connection refused`, ...
    pub state: String,
}

/// What lbd reads from BIRD: its BGP sessions, and the host routes the established ones export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BirdState {
    pub sessions: Vec<Session>,
    pub exported: BTreeSet<IpAddr>,
}

/// Reads BIRD's state through `socket` (blocking: at most [`CONTROL_TIMEOUT`] a command).
pub fn read(socket: &Path) -> Result<BirdState, ControlError> {
    let mut control = Control::connect(socket)?;
    let mut state = BirdState::default();
    for p in control.protocols()?.into_iter().filter(|p| p.proto == "BGP") {
        if p.is_established() {
            state.exported.extend(control.exported_hosts(&p.name)?);
        }
        let words = format!("{} {}", p.state, p.info);
        state.sessions.push(Session {
            established: p.is_established(),
            name: p.name,
            state: words.trim().into(),
        });
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_protocols_row_with_its_session_state() {
        let row = ReplyLine {
            code: 1002,
            text: "router4    BGP        ---        up     20:37:17.853  Established   ".into(),
        };
        let p = Protocol::parse(&row).unwrap();
        assert_eq!((p.name.as_str(), p.proto.as_str(), p.state.as_str()), ("router4", "BGP", "up"));
        assert!(p.is_established());
        let row = ReplyLine {
            code: 1002,
            text: "b2v4       BGP        ---        start  20:35:18.153  Active        Socket: Connection refused".into(),
        };
        let p = Protocol::parse(&row).unwrap();
        assert_eq!(p.info, "Active Socket: Connection refused");
        assert!(!p.is_established());
    }

    #[test]
    fn reads_a_reply_of_several_lines_and_an_error() {
        let raw = "2002-Name       Proto      Table      State  Since         Info\n\
                   1002-device1    Device     ---        up     20:37:16.977  \n \
                   router_ipv4 BGP        ---        up     20:37:17.853  Established   \n0000 \n";
        let reply = read_reply(&mut raw.as_bytes(), Path::new("test.ctl"), "show protocols").unwrap();
        let codes: Vec<u16> = reply.iter().map(|l| l.code).collect();
        assert_eq!(codes, [2002, 1002, 1002], "{reply:?}");
        assert!(reply[2].text.starts_with("router_ipv4"), "{reply:?}");
        let denied = read_reply(&mut "8007 Access denied\n".as_bytes(), Path::new("test.ctl"), "configure");
        assert!(matches!(denied, Err(ControlError::Refused { code: 8007, .. })), "{denied:?}");
        let garbled = read_reply(&mut "HTTP/1.1 400\n".as_bytes(), Path::new("test.ctl"), "show protocols");
        assert!(matches!(garbled, Err(ControlError::Garbled { .. })), "{garbled:?}");
    }

    #[test]
    fn exported_host_routes_are_read_from_a_route_listing() {
        // `show route export router_ipv4` of BIRD 2.0.12.
        let raw = "1007-Table vips_ipv4:\n 198.18.100.1/32      unicast [lbd_ipv4 10:11:12.123] * (10)\n\
                   1008-\tType: inherit univ\n1007-198.18.100.2/32      unicast [lbd_ipv4 10:11:12.124] * (10)\n\
                   \x20198.18.100.0/24      unicast [static1 10:11:12.124] * (200)\n0000 \n";
        let reply = read_reply(&mut raw.as_bytes(), Path::new("test.ctl"), "show route export x").unwrap();
        let hosts: BTreeSet<IpAddr> = reply.iter().filter_map(|l| host_route(&l.text)).collect();
        let want: BTreeSet<IpAddr> =
            ["198.18.100.1", "198.18.100.2"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(hosts, want);
        assert_eq!(host_route("fd00:0:0:100::1/128 unicast"), Some("fd00:0:0:100::1".parse().unwrap()));
        assert_eq!(host_route("fd00:0:0:100::/64 unicast"), None);
    }
}
