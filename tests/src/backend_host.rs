//! `lbd backend-host` as a process in a test namespace: its files (config, log, state file, pin
//! path), its status, start and stop. [`BackendHost`] is one that runs until dropped (it is then
//! stopped with SIGTERM, which undoes what it set up), for topologies.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    bins::{self, Running},
    lbd::LbdFiles,
    netns::Netns,
};

/// One backend host's files (config, log, state file; its pin path under /sys/fs/bpf),
/// removed on drop, and the commands run on them.
pub struct BackendHostFiles {
    files: LbdFiles,
    pub config: PathBuf,
    pub log: PathBuf,
    pub state_file: PathBuf,
}

impl BackendHostFiles {
    /// Writes a config: `settings` (TOML lines), then this instance's paths.
    pub fn new(settings: &str) -> Self {
        let files = LbdFiles::new();
        let (config, log, state_file) = (
            files.dir.join("backend.toml"),
            files.dir.join("backend-host.log"),
            files.dir.join("state.json"),
        );
        let paths = format!(
            "pin_path = {:?}\nstate_file = {:?}\n",
            files.pin_path.display().to_string(),
            state_file.display().to_string()
        );
        std::fs::write(&config, format!("{settings}{paths}")).expect("write the backend host's config");
        BackendHostFiles { files, config, log, state_file }
    }

    pub fn pin_path(&self) -> &Path {
        &self.files.pin_path
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `lbd backend-host --config FILE ARGS` in `ns`, output to the log.
    pub fn command(&self, ns: &Netns, args: &[&str]) -> Command {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(bins::path("lbd"))
            .args(["backend-host", "--config"])
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("RUST_BACKTRACE")
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        cmd
    }

    /// `--status` (`--json` too when `json`): its output, `None` if it failed.
    pub fn status_output(&self, ns: &Netns, json: bool) -> Option<String> {
        let args: &[&str] = if json { &["--status", "--json"] } else { &["--status"] };
        let out =
            self.command(ns, args).stdout(Stdio::piped()).output().expect("run lbd backend-host --status");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn status(&self, ns: &Netns) -> Option<serde_json::Value> {
        self.status_output(ns, true).map(|s| serde_json::from_str(&s).expect("status JSON"))
    }

    /// Starts `lbd backend-host` in `ns` and waits until it logs that it is set up and its
    /// status shows every VIP on lo (and decap attached, with decap on); returns the process and
    /// that status. (The log line, not the status alone: after a crash the status shows the
    /// crashed run's set-up before the new run has taken it over.)
    pub fn start(&self, ns: &Netns) -> (Running, serde_json::Value) {
        const SET_UP: &str = "backend host set up;";
        let set_up_before = self.log().matches(SET_UP).count();
        let process = Running::spawn(&mut self.command(ns, &[]));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let this_run_set_up = self.log().matches(SET_UP).count() > set_up_before;
            let status = self.status(ns).filter(|_| this_run_set_up);
            let up = status.as_ref().is_some_and(|s| {
                s["interfaces"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|i| s["decap"] == false || i["decap_attached"] == true)
                    && s["vips"].as_array().unwrap().iter().all(|v| v["on_lo"] == true)
            });
            match status {
                Some(status) if up => return (process, status),
                _ if Instant::now() > deadline => {
                    panic!("backend-host did not come up within 20 s:\n{}", self.log())
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// A backend host that runs until dropped, then stops (SIGTERM: it undoes what it set up).
pub struct BackendHost {
    process: Option<Running>,
    pub files: BackendHostFiles,
}

impl BackendHost {
    /// Starts `lbd backend-host` in `ns` with `settings` (TOML lines of its config: interfaces,
    /// VIPs, ...) and waits until it is set up.
    pub fn start(ns: &Netns, settings: &str) -> Self {
        let files = BackendHostFiles::new(settings);
        let (process, _) = files.start(ns);
        BackendHost { process: Some(process), files }
    }

    /// One of its decap counters (`decapsulated`, `decap_refused`, `decap_fragment`,
    /// `decap_ce_not_ect`), as `--status` reports it.
    pub fn counter(&self, ns: &Netns, name: &str) -> u64 {
        let status = self
            .files
            .status(ns)
            .unwrap_or_else(|| panic!("backend-host --status failed:\n{}", self.files.log()));
        status["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {status}"))
    }
}

impl Drop for BackendHost {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            let _ = process.stop();
        }
    }
}
