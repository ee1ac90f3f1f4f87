//! The docs' table of the data plane's limits (docs/data-plane.md, "Limits"), made from the
//! defaults in the code: [`Limits`] for what the config's `[limits]` sets, `lb_common::limits`
//! for the sizes compiled into the programs, `lb_common::map_names` for the maps.
use lb_common::{limits, map_names};

use crate::config::Limits;

/// One row: what is limited, the key that sets it (if any), its default, the maps it sizes.
struct Row {
    what: &'static str,
    key: Option<&'static str>,
    default: String,
    maps: &'static [&'static str],
}

fn rows() -> Vec<Row> {
    let d = Limits::default();
    let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64);
    // The kernel stores an array's values in 8-byte slots: a ring slot takes 8 bytes.
    let ring_bytes = u64::from(d.max_ring_size) * 8;
    vec![
        Row {
            what: "VIPs: an id each, with its ring and round-robin sequence; two `VIPS` entries each (its service, its address's)",
            key: Some("max_vips"),
            default: d.max_vips.to_string(),
            maps: &[
                map_names::VIPS,
                map_names::VIP_BY_ID,
                map_names::VIP_STATS,
                map_names::RINGS,
                map_names::RR_SEQS,
                map_names::RR_CURSORS,
            ],
        },
        Row {
            what: "slots reserved per Maglev ring: the largest `ring_size` a VIP may have (prime)",
            key: Some("max_ring_size"),
            default: format!(
                "{} ({} a ring, {} for {} rings)",
                d.max_ring_size,
                mib(ring_bytes),
                mib(ring_bytes * u64::from(d.max_vips)),
                d.max_vips
            ),
            maps: &[map_names::RINGS],
        },
        Row {
            what: "backends, over all VIPs: ids 1 to `max_backends` − 1 (0 is none)",
            key: Some("max_backends"),
            default: d.max_backends.to_string(),
            maps: &[map_names::BACKENDS, map_names::BACKEND_STATS, map_names::ACTIVE_CONNS, map_names::NEXT_HOPS],
        },
        Row {
            what: "flows, all CPUs together, confirmed or waiting for their second packet: 64 bytes each, rounded up to whole sets (or `flows_per_cpu` × possible CPUs); `pending_flows`, `pending_flows_per_cpu` and `flow_cache_slots` are no longer used",
            key: Some("flows"),
            default: format!(
                "{} ({}); 1024 to {}, in sets of {}",
                limits::FLOWS,
                mib(u64::from(limits::FLOWS) * size_of::<lb_common::FlowEntry>() as u64),
                limits::MAX_FLOWS,
                lb_common::FLOW_WAYS
            ),
            maps: &[map_names::FLOW_TABLE],
        },
        Row {
            what: "VIP address filter bits",
            key: None,
            default: format!("{} ({} KiB)", limits::VIP_FILTER_BITS, limits::VIP_FILTER_BITS / 8 / 1024),
            maps: &[map_names::VIP_FILTER],
        },
        Row {
            what: "a round-robin VIP's sequence (8 bytes a slot), so its backends and its weights' cycle",
            key: None,
            default: format!("{} ({} KiB a VIP)", limits::RR_SEQ_LEN, limits::RR_SEQ_LEN * 8 / 1024),
            maps: &[map_names::RR_SEQS],
        },
        Row {
            what: "interfaces the balancer redirects to",
            key: None,
            default: limits::MAX_TX_PORTS.to_string(),
            maps: &[map_names::TX_PORTS],
        },
        Row {
            what: "decap addresses of a backend host",
            key: None,
            default: limits::MAX_DECAP_ADDRS.to_string(),
            maps: &[map_names::DECAP_ADDRS],
        },
        Row {
            what: "decap allowed source prefixes of a backend host",
            key: None,
            default: limits::MAX_DECAP_SOURCES.to_string(),
            maps: &[map_names::DECAP_SOURCES],
        },
    ]
}

/// The table, in Markdown.
pub fn markdown_table() -> String {
    let mut out = String::from("| limit | set by | default | maps |\n|---|---|---|---|\n");
    for r in rows() {
        let key = r.key.map_or("fixed".to_string(), |k| format!("`limits.{k}`"));
        let maps: Vec<String> = r.maps.iter().map(|m| format!("`{m}`")).collect();
        out += &format!("| {} | {key} | {} | {} |\n", r.what, r.default, maps.join(", "));
    }
    out
}
