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

/// A child process that is killed and reaped when dropped, so no test leaves one running.
pub struct Running {
    pub child: std::process::Child,
}

impl Running {
    pub fn spawn(cmd: &mut std::process::Command) -> Self {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
        Running { child }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill with a pid we own (not yet reaped) and a valid signal.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait().expect("wait")
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
