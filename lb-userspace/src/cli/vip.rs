use clap::Subcommand;
use hyper::Method;

use super::{output::table, segment, Ctx, Failure};
use crate::{
    api::VipView,
    config::{AllDown, Announce, BackendSpec, ForwardMode, HashMode, OnDown, Protocol, Scheduler, VipSpec},
    health::CheckSettings,
};

#[derive(Subcommand)]
pub enum VipCommand {
    /// List VIPs.
    List,
    /// Add a VIP, e.g. `lbctl vip add web --address 198.18.100.1 --port 80 --protocol tcp
    /// --backend 198.18.0.11 --backend 198.18.0.12=200`.
    Add {
        /// A unique name (letters, digits, '-', '_', '.').
        name: String,
        /// The service address clients connect to, IPv4 or IPv6.
        #[arg(long)]
        address: String,
        /// 1-65535, or 0 for every port.
        #[arg(long)]
        port: i64,
        #[arg(long, value_enum)]
        protocol: Protocol,
        /// ipip: tunnel to backends that decapsulate; l2dsr: MAC rewrite, same L2 segment.
        #[arg(long, value_enum, default_value = "ipip")]
        mode: ForwardMode,
        /// What picks a new flow's backend (default maglev): maglev (weighted consistent hash of
        /// the 5-tuple), source-hash (of the client address), round-robin, least-conn (TCP).
        #[arg(long, value_enum)]
        scheduler: Option<Scheduler>,
        /// The older spelling of the scheduler: `--hash source` is `--scheduler source-hash`.
        #[arg(long, value_enum, default_value = "5-tuple", hide = true)]
        hash: HashMode,
        /// Maglev ring size: a prime at least 100 × the backends (default 65537, or larger).
        #[arg(long)]
        ring_size: Option<i64>,
        /// A backend ADDRESS or ADDRESS=WEIGHT; repeat for several.
        #[arg(long = "backend", value_name = "ADDRESS[=WEIGHT]", value_parser = parse_backend)]
        backends: Vec<BackendSpec>,
        /// With [announce]: announce the VIP while a backend takes new flows (healthy), always,
        /// or never.
        #[arg(long, value_enum, default_value = "healthy")]
        announce: Announce,
        #[command(flatten)]
        health: Box<HealthArgs>,
    },
    /// Remove a VIP: its packets go to the stack from now on.
    Remove { name: String },
}

pub async fn run(ctx: &Ctx, cmd: VipCommand) -> Result<(), Failure> {
    match cmd {
        VipCommand::List => {
            let body = ctx.get("/v1/vips").await?;
            ctx.print(&body, |vips: Vec<VipView>| {
                let rows = vips
                    .iter()
                    .map(|view| {
                        let v = &view.vip;
                        vec![
                            v.name.clone(),
                            v.service(),
                            format!("{:?}", v.mode).to_lowercase(),
                            v.scheduler.name().into(),
                            v.ring_size.to_string(),
                            v.backends.len().to_string(),
                            view.ring_fingerprint.clone(),
                            match (v.allow.len(), v.deny.len()) {
                                (0, 0) => "-".into(),
                                (a, d) => format!("allow {a}, deny {d}"),
                            },
                            v.limits.as_ref().map_or("-".into(), |l| l.summary(v.address)),
                        ]
                    })
                    .collect::<Vec<_>>();
                table(
                    &[
                        "NAME",
                        "SERVICE",
                        "MODE",
                        "SCHEDULER",
                        "RING",
                        "BACKENDS",
                        "FINGERPRINT",
                        "ACL",
                        "LIMITS",
                    ],
                    &rows,
                );
            })
        }
        VipCommand::Add {
            name,
            address,
            port,
            protocol,
            mode,
            scheduler,
            hash,
            ring_size,
            backends,
            announce,
            health,
        } => {
            let spec = VipSpec {
                name: name.clone(),
                address,
                port,
                protocol,
                mode,
                hash,
                scheduler,
                ring_size,
                health: health.settings(),
                all_down: health.all_down,
                on_down: health.on_down,
                announce,
                backends,
                ..VipSpec::default()
            };
            ctx.send_json(Method::POST, "/v1/vips", &spec).await?;
            ctx.done(&format!("added VIP {name}"))
        }
        VipCommand::Remove { name } => {
            ctx.call(Method::DELETE, &format!("/v1/vips/{}", segment(&name)), None, None).await?;
            ctx.done(&format!("removed VIP {name}"))
        }
    }
}

/// The VIP's health check (none unless --check is given) and what failing backends mean.
#[derive(clap::Args)]
pub struct HealthArgs {
    /// Check the backends: tcp (connect), http (GET, status in range), udp (send, expect a
    /// reply), none (always up). The other check options need it.
    #[arg(long, value_name = "TYPE", help_heading = "Health check")]
    check: Option<String>,
    /// Port to check (default: the VIP's port).
    #[arg(long, requires = "check", help_heading = "Health check")]
    check_port: Option<i64>,
    /// Milliseconds between checks (default 1000).
    #[arg(long, requires = "check", help_heading = "Health check")]
    check_interval_ms: Option<i64>,
    /// Milliseconds a check may take, less than the interval (default 500).
    #[arg(long, requires = "check", help_heading = "Health check")]
    check_timeout_ms: Option<i64>,
    /// Successes in a row that bring a down backend back (default 2).
    #[arg(long, requires = "check", help_heading = "Health check")]
    rise: Option<i64>,
    /// Failures in a row that take a backend out (default 3).
    #[arg(long, requires = "check", help_heading = "Health check")]
    fall: Option<i64>,
    /// http: the path to GET (default /).
    #[arg(long, requires = "check", help_heading = "Health check")]
    check_path: Option<String>,
    /// http: healthy status codes, e.g. 200 or 200-399 (the default).
    #[arg(long, requires = "check", help_heading = "Health check")]
    check_status: Option<String>,
    /// udp: the datagram to send.
    #[arg(long, requires = "check", help_heading = "Health check")]
    check_send: Option<String>,
    /// udp: what the reply must contain (default: any reply).
    #[arg(long, requires = "check", help_heading = "Health check")]
    check_expect: Option<String>,
    /// New flows when every backend is down: spread over every backend in service (fail open)
    /// or dropped.
    #[arg(long, value_enum, default_value = "fail-open", help_heading = "Health check")]
    all_down: AllDown,
    /// A down backend's open flows: keep them, or reset them to healthy backends.
    #[arg(long, value_enum, default_value = "keep-flows", help_heading = "Health check")]
    on_down: OnDown,
}

impl HealthArgs {
    fn settings(&self) -> Option<CheckSettings> {
        let s = CheckSettings {
            kind: self.check.clone(),
            port: self.check_port,
            interval_ms: self.check_interval_ms,
            timeout_ms: self.check_timeout_ms,
            rise: self.rise,
            fall: self.fall,
            path: self.check_path.clone(),
            status: self.check_status.clone(),
            send: self.check_send.clone(),
            expect: self.check_expect.clone(),
        };
        (s != CheckSettings::default()).then_some(s)
    }
}

/// `ADDRESS` or `ADDRESS=WEIGHT` (a command-line error otherwise: clap's exit code 2).
fn parse_backend(text: &str) -> Result<BackendSpec, String> {
    let (address, weight) = match text.split_once('=') {
        None => (text, None),
        Some((a, w)) => {
            let w =
                w.parse().map_err(|_| format!("the weight {w:?} is not a number (use ADDRESS=WEIGHT)"))?;
            (a, Some(w))
        }
    };
    Ok(BackendSpec { address: address.to_owned(), weight, drained: false, health: None })
}
