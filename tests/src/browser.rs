//! A real browser for tests: headless Chromium driven through chromedriver over the W3C
//! WebDriver protocol (a few commands, plain HTTP/1.1 and JSON: no client crate to keep
//! building with our rustc).
//!
//! chromedriver runs as a child of the test inside a test namespace (so Chromium reaches that
//! namespace's loopback, e.g. lbd's metrics listener), listening on that namespace's loopback.
//! It is started in a process group of its own; dropping the [`Browser`] ends the session
//! (Chromium quits) and kills the whole group, so no Chromium is left running even when the
//! test panics. Chromium runs as root here, which needs `--no-sandbox`.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{bins::Running, netns::Netns, unique_name};

/// Where chromedriver listens, on the namespace's loopback.
const DRIVER_PORT: u16 = 9515;
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless Chromium in a namespace, with one WebDriver session.
pub struct Browser<'a> {
    ns: &'a Netns,
    driver: Option<Running>,
    session: String,
    /// Chromium's profile and chromedriver's log.
    dir: PathBuf,
}

/// An element of the page.
#[derive(Clone, Debug)]
pub struct Element(String);

impl<'a> Browser<'a> {
    /// Starts chromedriver in `ns` and a Chromium session with a window of `width` x `height`.
    pub fn start(ns: &'a Netns, width: u32, height: u32) -> Browser<'a> {
        let dir = std::env::temp_dir().join(unique_name("chromium"));
        std::fs::create_dir_all(&dir).expect("chromium dir");
        let out = std::fs::File::create(dir.join("chromedriver.out")).expect("chromedriver's output");
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .args(["chromedriver", &format!("--port={DRIVER_PORT}"), "--allowed-ips=127.0.0.1"])
            // The log's path names the test's directory, as Chromium's profile does: `cargo
            // xtask test` finds them by it if a killed test leaves them running.
            .arg(format!("--log-path={}", dir.join("chromedriver.log").display()))
            .arg("--log-level=WARNING")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("chromedriver's output"))
            .stderr(out)
            // Its own process group: Chromium and its helpers are killed with it (its crash
            // handlers, in groups of their own, exit when it does).
            .process_group(0);
        let driver = match command.spawn() {
            Ok(child) => Running { child },
            Err(e) => panic!(
                "cannot start chromedriver ({e}): `cargo xtask setup` installs Debian's chromium-driver"
            ),
        };
        let mut browser = Browser { ns, driver: Some(driver), session: String::new(), dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while browser.call("GET", "/status", None).map(|v| v["ready"] != true).unwrap_or(true) {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not come up in 10 s:\n{}",
                browser.driver_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = browser.profile();
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            // Nothing but the page: no updates, sync or first-run calls to the internet.
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let session = browser.call("POST", "/session", Some(&capabilities)).unwrap_or_else(|e| {
            panic!("cannot start a Chromium session: {e}\nchromedriver log:\n{}", browser.driver_log())
        });
        browser.session = session["sessionId"].as_str().expect("a session id").to_owned();
        browser
    }

    /// The directory of Chromium's profile and chromedriver's log: chromedriver and every
    /// Chromium process of this browser name it on their command lines.
    pub fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    fn profile(&self) -> PathBuf {
        self.dir.join("profile")
    }

    /// chromedriver's output and log (warnings and errors), for failure messages.
    pub fn driver_log(&self) -> String {
        ["chromedriver.out", "chromedriver.log"]
            .map(|name| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default())
            .concat()
    }

    /// One WebDriver command; its `value`, or the driver's error.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = self
            .ns
            .run(|| TcpStream::connect(("127.0.0.1", DRIVER_PORT)))
            .map_err(|e| format!("connecting to chromedriver: {e}"))?;
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).expect("read timeout");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{DRIVER_PORT}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).map_err(|e| format!("{method} {path}: {e}"))?;
        let (head, content) = read_answer(&mut stream).map_err(|e| format!("{method} {path}: {e}"))?;
        let value: Value =
            serde_json::from_str(&content).map_err(|e| format!("{method} {path}: {e} in {content:.200}"))?;
        let value = value.get("value").cloned().unwrap_or(Value::Null);
        if head.starts_with("HTTP/1.1 2") {
            Ok(value)
        } else {
            Err(format!("{method} {path}: {} ({})", value["error"], value["message"]))
        }
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let full = format!("/session/{}{path}", self.session);
        self.call(method, &full, body.as_ref()).unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn set_window_size(&self, width: u32, height: u32) {
        self.session_call("POST", "/window/rect", Some(json!({"width": width, "height": height})));
    }

    /// Makes the page see the system's colour scheme as dark (or light): Chromium's own
    /// emulation of `prefers-color-scheme`, through chromedriver's DevTools passthrough.
    pub fn prefer_dark(&self, dark: bool) {
        let scheme = if dark { "dark" } else { "light" };
        self.session_call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.setEmulatedMedia",
                "params": {"features": [{"name": "prefers-color-scheme", "value": scheme}]}})),
        );
    }

    /// Runs `script` (a function body: `return ...`) in the page with `args`; its result.
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.session_call("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
    }

    /// The elements that match a CSS selector, in document order.
    pub fn find_all(&self, css: &str) -> Vec<Element> {
        let found =
            self.session_call("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        found
            .as_array()
            .map(|a| a.iter().filter_map(|e| e[ELEMENT].as_str()).map(|id| Element(id.to_owned())).collect())
            .unwrap_or_default()
    }

    /// The first element that matches, if any.
    pub fn find(&self, css: &str) -> Option<Element> {
        self.find_all(css).into_iter().next()
    }

    /// The element's rendered text.
    pub fn text(&self, e: &Element) -> String {
        self.session_call("GET", &format!("/element/{}/text", e.0), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn click(&self, e: &Element) {
        self.session_call("POST", &format!("/element/{}/click", e.0), Some(json!({})));
    }

    /// Empties an input.
    pub fn clear(&self, e: &Element) {
        self.session_call("POST", &format!("/element/{}/clear", e.0), Some(json!({})));
    }

    pub fn type_text(&self, e: &Element, text: &str) {
        self.session_call("POST", &format!("/element/{}/value", e.0), Some(json!({ "text": text })));
    }

    /// A PNG of what the window shows.
    pub fn screenshot(&self) -> Vec<u8> {
        let encoded = self.session_call("GET", "/screenshot", None);
        base64_decode(encoded.as_str().expect("a base64 screenshot"))
    }

    /// Polls `check` every 100 ms until it gives a value or `timeout` passes; the last error
    /// otherwise.
    pub fn wait<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<T, String>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match check(self) {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() >= deadline => return Err(format!("after {timeout:?}: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        if let Some(driver) = self.driver.take() {
            // SAFETY: kill with the group of a child we started in its own group, not yet reaped.
            unsafe { libc::kill(-(driver.child.id() as libc::pid_t), libc::SIGKILL) };
            drop(driver);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP/1.1 answer's head and body. chromedriver may keep the connection open whatever the
/// request asks: the body ends where its length says (or its last chunk), not at EOF.
fn read_answer(stream: &mut TcpStream) -> std::io::Result<(String, String)> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = stream.read(&mut buf)?;
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, content)) = text.split_once("\r\n\r\n") {
            let lower = head.to_ascii_lowercase();
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match length {
                Some(length) => content.len() >= length,
                None if lower.contains("transfer-encoding: chunked") => content.ends_with("0\r\n\r\n"),
                None => n == 0,
            };
            if done || n == 0 {
                let body = if length.is_none() && lower.contains("transfer-encoding: chunked") {
                    dechunk(content)
                } else {
                    content.to_owned()
                };
                return Ok((head.to_owned(), body));
            }
        } else if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no HTTP answer"));
        }
    }
}

/// The body of a chunked HTTP answer.
fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        text = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Standard base64 (what WebDriver screenshots are), padding allowed.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("{:?} is not base64", c as char),
    };
    let digits: Vec<u8> =
        text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, d)| n | u32::from(*d) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_and_chunks() {
        assert_eq!(super::base64_decode("aGVsbG8="), b"hello");
        assert_eq!(super::base64_decode("aGVsbG8h"), b"hello!");
        assert_eq!(super::base64_decode("aGk="), b"hi");
        assert_eq!(super::dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }
}
