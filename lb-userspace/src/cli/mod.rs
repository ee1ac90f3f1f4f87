//! lbctl: commands, one module per group, all talking to lbd's control API.
mod backend;
mod capture;
mod config;
mod deny;
mod flows;
mod host;
mod output;
mod stats;
mod top;
mod vip;

use std::{path::PathBuf, time::Duration};

use clap::{CommandFactory as _, Parser, Subcommand};
use hyper::Method;
use serde::de::DeserializeOwned;

use crate::client::{self, ClientError};

const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  lbd refused the request (invalid input, unknown VIP or backend, already exists); nothing changed
  2  the command line is wrong
  3  lbd could not be reached, or did not answer within --wait
  4  lbd failed while applying (see its log)";

/// Controls the XDP load balancer through lbd's control API.
///
/// Every change is checked as a whole by lbd before anything changes; a refused change leaves
/// the running state as it was. Output is a table; --json gives the API's JSON for scripts.
#[derive(Parser)]
#[command(version, after_help = EXIT_CODES)]
pub struct Args {
    /// lbd's API socket.
    #[arg(long, global = true, env = "LBCTL_SOCKET", default_value = crate::config::DEFAULT_API_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for lbd's answer (1 to 3600; a capture waits its own --timeout more): an
    /// lbd that does not answer is reported (exit 3) rather than waited for without end.
    #[arg(long = "wait", value_name = "SECONDS", global = true, default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    wait: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show lbd's state: interfaces, pins, whether it adopted a running data plane, the flow
    /// table's fill, the event loop's lag, ring fingerprints and announcements.
    Status,
    /// Add, remove and list VIPs (virtual services).
    #[command(subcommand)]
    Vip(vip::VipCommand),
    /// Add, remove, drain, undrain and weigh a VIP's backends.
    #[command(subcommand)]
    Backend(backend::BackendCommand),
    /// Drain or undrain this balancer host: withdraw every VIP it announces over BGP (needs
    /// [announce]); `lbctl status` shows what it announces.
    #[command(subcommand)]
    Host(host::HostCommand),
    /// Packets/s, bits/s, new flows/s and totals per VIP and backend; the global counters.
    ///
    /// Rates come from two samples of the counters `--interval` apart; --watch keeps redrawing.
    /// With --json: one sample of the API's JSON (totals only).
    Stats(stats::StatsArgs),
    /// Deny a source prefix by hand (to one VIP or all), list and remove denies.
    #[command(subcommand)]
    Deny(deny::DenyCommand),
    /// The sources sending the most packets and new flows a second now, with what the
    /// rate limits refused (VIPs with [vip.limits]).
    Top(top::TopArgs),
    /// The flows pinned to each backend, and a sample of them.
    ///
    /// The counts cover every flow in the table: a drained backend with none left is safe to
    /// remove. UNCONFIRMED counts the flows that have seen one packet (a SYN waiting for its
    /// ACK, a one-datagram UDP flow, or a flood's spoofed packets): a new flow takes their
    /// entries first.
    Flows(flows::FlowsArgs),
    /// Apply a config file's VIPs and source settings (like SIGHUP, from any file).
    Apply {
        /// The config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Show what `apply -f FILE` would change: per VIP, the share of its ring that moves.
    Plan {
        /// The config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Copy a VIP's next packets, as received and as sent to the backend, to a pcap file
    /// (XDP-handled packets never reach tcpdump on the interface). Read it with `tcpdump -r`.
    Capture {
        /// The VIP's name.
        #[arg(long)]
        vip: String,
        /// Packets to capture (1 to 10000); each is written twice (before and after its rewrite).
        #[arg(short = 'c', long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        count: u64,
        /// The pcap file to write.
        #[arg(short = 'w', long, value_name = "FILE")]
        write: PathBuf,
        /// Give up waiting for packets after this many seconds (1 to 60).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
        timeout: u64,
    },
    /// Print a shell completion script, e.g. `lbctl completions bash > /etc/bash_completion.d/lbctl`.
    Completions { shell: clap_complete::Shell },
    /// List the XDP programs and maps built into this binary (no lbd needed).
    Object,
}

/// Why a command failed; each maps to an exit code.
pub enum Failure {
    Refused(String),
    Unreachable(String),
    Server(String),
}

impl Failure {
    fn exit_code(&self) -> i32 {
        match self {
            Failure::Refused(_) => 1,
            Failure::Unreachable(_) => 3,
            Failure::Server(_) => 4,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Refused(m) | Failure::Unreachable(m) | Failure::Server(m) => m,
        }
    }
}

/// Runs lbctl and returns its exit code.
pub fn main() -> i32 {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("lbctl: {}", f.message());
            f.exit_code()
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let mut ctx = Ctx { socket: args.socket, json: args.json, wait: Duration::from_secs(args.wait) };
    if let Command::Capture { timeout, .. } = &args.command {
        ctx.wait += Duration::from_secs(*timeout);
    }
    match args.command {
        Command::Status => output::status(&ctx, ctx.get("/v1/status").await?),
        Command::Vip(cmd) => vip::run(&ctx, cmd).await,
        Command::Backend(cmd) => backend::run(&ctx, cmd).await,
        Command::Host(cmd) => host::run(&ctx, cmd).await,
        Command::Stats(a) => stats::run(&ctx, a).await,
        Command::Flows(a) => flows::run(&ctx, a).await,
        Command::Deny(cmd) => deny::run(&ctx, cmd).await,
        Command::Top(a) => top::run(&ctx, a).await,
        Command::Apply { file } => config::run(&ctx, &file, "/v1/apply").await,
        Command::Plan { file } => config::run(&ctx, &file, "/v1/plan").await,
        Command::Capture { vip, count, write, timeout } => {
            capture::run(&ctx, vip, count as usize, &write, timeout).await
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Args::command(), "lbctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Object => {
            let info = crate::datapath::object::info().map_err(|e| Failure::Refused(e.to_string()))?;
            for name in &info.programs {
                println!("program {name}");
            }
            for m in &info.maps {
                println!("map {} max_entries={}", m.name, m.max_entries);
            }
            Ok(())
        }
    }
}

/// What every command needs: where lbd is, how long to wait for it and how to print.
pub struct Ctx {
    socket: PathBuf,
    json: bool,
    wait: Duration,
}

impl Ctx {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
        origin: Option<&str>,
    ) -> Result<hyper::body::Bytes, Failure> {
        Ok(self.call_full(method, path, body, origin).await?.body)
    }

    /// Like [`Self::call`], with the answer's headers.
    async fn call_full(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
        origin: Option<&str>,
    ) -> Result<client::Response, Failure> {
        let request = client::request(&self.socket, method, path, body, origin);
        let answered = tokio::time::timeout(self.wait, request).await.map_err(|_| {
            Failure::Unreachable(format!(
                "lbd at {} did not answer within {} s: is it stuck? (its log says what it is doing; --wait waits longer)",
                self.socket.display(),
                self.wait.as_secs()
            ))
        })?;
        let res = answered.map_err(|e| match e {
            ClientError::Connect { .. } => Failure::Unreachable(e.to_string()),
            ClientError::Http(_) => Failure::Server(e.to_string()),
            // What the operator gave cannot be sent (a config file name with a newline).
            ClientError::Request(_) => Failure::Refused(e.to_string()),
        })?;
        if res.status.is_success() {
            return Ok(res);
        }
        let message = serde_json::from_slice::<crate::api::ErrorBody>(&res.body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&res.body).into_owned());
        Err(if res.status.is_server_error() { Failure::Server(message) } else { Failure::Refused(message) })
    }

    async fn get(&self, path: &str) -> Result<hyper::body::Bytes, Failure> {
        self.call(Method::GET, path, None, None).await
    }

    async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<hyper::body::Bytes, Failure> {
        let bytes = serde_json::to_vec(body).expect("serializes");
        self.call(method, path, Some(("application/json", bytes)), None).await
    }

    /// Prints `body` as JSON (with --json) or as `human` says.
    fn print<T: DeserializeOwned>(&self, body: &[u8], human: impl FnOnce(T)) -> Result<(), Failure> {
        let value: T = serde_json::from_slice(body)
            .map_err(|e| Failure::Server(format!("lbd answered something lbctl does not understand: {e}")))?;
        if self.json {
            let v: serde_json::Value = serde_json::from_slice(body).expect("parsed above");
            println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
        } else {
            human(value);
        }
        Ok(())
    }

    /// For commands that change something: a one-line confirmation (JSON: `{"ok": true}`).
    fn done(&self, what: &str) -> Result<(), Failure> {
        if self.json {
            println!("{{\"ok\": true}}");
        } else {
            println!("{what}");
        }
        Ok(())
    }
}

/// `s` as one path segment or query value: every byte but the unreserved ones escaped, so that
/// a name with `?`, `#` or `/` cannot name another resource (`web?x` is not `web`) and one with
/// a space or a control character still makes a request (lbd answers that no such VIP exists).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_segment_names_one_resource_whatever_it_holds() {
        assert_eq!(super::segment("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(super::segment("fd00::1"), "fd00%3A%3A1");
        assert_eq!(super::segment("web?x"), "web%3Fx");
        assert_eq!(super::segment("198.18.0.11#"), "198.18.0.11%23");
        assert_eq!(super::segment("a/b%"), "a%2Fb%25");
        assert_eq!(super::segment("my web\n"), "my%20web%0A");
        assert_eq!(super::segment("é"), "%C3%A9");
    }
}
