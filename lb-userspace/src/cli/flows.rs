//! `lbctl flows`: the flows pinned to each backend, and a sample of them.
use std::net::IpAddr;

use super::{output::table, segment, Ctx, Failure};
use crate::agent::flows::{FlowState, Flows};

#[derive(clap::Args)]
pub struct FlowsArgs {
    /// Only the flows of this VIP (those whose destination matches its service).
    #[arg(long, value_name = "VIP")]
    vip: Option<String>,
    /// Only the flows pinned to this backend address.
    #[arg(long, value_name = "ADDRESS")]
    backend: Option<IpAddr>,
    /// Only the flows in this state (every flow is recorded unconfirmed by its first packet and
    /// confirmed by its second).
    #[arg(long, value_enum)]
    state: Option<FlowState>,
    /// How many flows to list (0 to 10000); the counts cover all of them whatever this is.
    #[arg(long, value_name = "N", default_value_t = crate::agent::flows::DEFAULT_SAMPLE as u64,
          value_parser = clap::value_parser!(u64).range(0..=crate::agent::flows::MAX_SAMPLE as u64))]
    limit: u64,
}

pub async fn run(ctx: &Ctx, args: FlowsArgs) -> Result<(), Failure> {
    let mut query = format!("/v1/flows?limit={}", args.limit);
    if let Some(vip) = &args.vip {
        query += &format!("&vip={}", segment(vip));
    }
    if let Some(backend) = args.backend {
        query += &format!("&backend={}", segment(&backend.to_string()));
    }
    if let Some(state) = args.state {
        query += &format!("&state={}", state.name());
    }
    let body = ctx.get(&query).await?;
    ctx.print(&body, |f: Flows| {
        let mut rows: Vec<Vec<String>> = f
            .backends
            .iter()
            .map(|b| {
                vec![
                    b.vip.clone(),
                    b.address.to_string(),
                    if b.drained { "drained".into() } else { format!("weight {}", b.weight) },
                    b.flows.to_string(),
                    b.unconfirmed.to_string(),
                ]
            })
            .collect();
        if f.other > 0 {
            rows.push(vec![
                "-".into(),
                "(removed backends)".into(),
                String::new(),
                f.other.to_string(),
                f.other_unconfirmed.to_string(),
            ]);
        }
        rows.push(vec![
            "total".into(),
            String::new(),
            String::new(),
            f.total.to_string(),
            f.unconfirmed.to_string(),
        ]);
        table(&["VIP", "BACKEND", "STATE", "FLOWS", "UNCONFIRMED"], &rows);
        if !f.complete {
            println!("(some entries were being written at every read of them: the counts are lower bounds)");
        }
        if f.sample.is_empty() {
            return;
        }
        println!();
        let sample: Vec<Vec<String>> = f
            .sample
            .iter()
            .map(|s| {
                vec![
                    s.vip.clone().unwrap_or_else(|| "-".into()),
                    s.protocol.clone(),
                    s.client.to_string(),
                    s.destination.to_string(),
                    s.backend.map(|b| b.to_string()).unwrap_or_else(|| "(removed)".into()),
                    s.state.name().into(),
                ]
            })
            .collect();
        table(&["VIP", "PROTO", "CLIENT", "DESTINATION", "BACKEND", "FLOW"], &sample);
        println!(
            "{} of {} flows listed (--limit N lists more); the table holds {} flows in all.\n\
             A flow stays until a new flow of its set takes its entry (unconfirmed and idle ones \
             first): closed connections count until then. Unconfirmed: one packet seen (a SYN \
             waiting for its ACK, a one-datagram UDP flow, or a flood's spoofed packets).",
            f.sample.len(),
            f.total,
            f.table
        );
    })
}
