use std::path::PathBuf;

/// Path of a binary built from this workspace (same profile as the running test or demo).
///
/// Test executables live in `target/<profile>/deps`, binaries in `target/<profile>`.
pub fn path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe has a directory");
    let candidates = [dir.join(name), dir.parent().map(|p| p.join(name)).unwrap_or_default()];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!("{name} is not built next to {}: run `cargo build -p lb-userspace` first", exe.display())
    })
}

/// The longest a process may take to stop on SIGTERM ([`Running::terminate`]): lbd with
/// `[announce]` first withdraws its VIPs for `drain_seconds` (the tests keep that short).
pub const TERMINATE_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// A child process that is killed and reaped when dropped, so no test leaves one running.
pub struct Running {
    pub child: std::process::Child,
}

impl Running {
    pub fn spawn(cmd: &mut std::process::Command) -> Self {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
        Running { child }
    }

    /// Sends SIGTERM and waits for the exit status: at most [`TERMINATE_WITHIN`], then it is
    /// killed and the caller panics (a stop that hangs is a failure, not a hung test run).
    pub fn terminate(self) -> std::process::ExitStatus {
        let pid = self.child.id();
        self.stop()
            .unwrap_or_else(|| panic!("pid {pid} still ran {TERMINATE_WITHIN:?} after SIGTERM: killed"))
    }

    /// [`Running::terminate`] that never panics (for drops, which may run while a test
    /// unwinds): `None` if it had to be killed.
    pub fn stop(mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: kill with a pid we own (not yet reaped) and a valid signal.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + TERMINATE_WITHIN;
        while std::time::Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
                Err(_) => return None,
            }
        }
        // (Drop kills and reaps it.)
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set by SIGINT, SIGTERM or SIGHUP once [`stop_on_signals`] is called: long-running binaries
/// (demo, benches) check it and unwind, so their namespaces, processes and pins are removed
/// instead of dying in place.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn stop_on_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

/// Whether a stop signal came.
pub fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}
