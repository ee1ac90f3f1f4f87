//! A full flow table without the traffic that would fill it: entries written into a running
//! lbd's pinned `FLOW_TABLE`, as the data plane would record them, for tests and benches of the
//! agent's walks (least-conn recounts, `lbctl flows`, resets).
use std::path::Path;

use aya::maps::{Array, Map, MapData};
use lb_common::{
    hash, map_names, BackendValue, ConfigValue, FlowEntry, FlowKey, VipSlot, FAMILY_V4, FLOW_CLOCK_SHIFT,
    FLOW_CONFIRMED, FLOW_COUNTED, FLOW_FIRST_SET_ALONE, FLOW_WAYS, PROTO_TCP,
};
use lb_userspace::datapath::{flow_clock_now, map_pinned_flow_table};

/// Flows per client address: source ports 10000 and up.
const PORTS_PER_CLIENT: u32 = 64;

/// Writes up to `n` open TCP connections (confirmed and marked `FLOW_COUNTED`, as a least-conn
/// VIP's are) of VIP `vip_id` pinned to backend `backend_id` into the flow table pinned in
/// `pin_dir`, valid under the VIP's and the backend's current generations, used now. Clients are
/// 198.19.x.y, 64 ports each. Each flow goes where the data plane looks for it and as it would
/// place it (its two sets under the pinned CONFIG's hash seed: an empty way of the first while
/// that holds few active flows, else of the set holding fewer, else of the other; every flow
/// written here is active, so the flows a set holds are its active ones); a flow whose two
/// sets are full is skipped (at half the table's entries, next to none are). Returns how many
/// were written.
pub fn fill_counted_flows(pin_dir: &Path, vip_id: u32, backend_id: u32, n: u32, vip: [u8; 4]) -> u32 {
    let open = |name: &str| {
        MapData::from_pin(pin_dir.join(name)).unwrap_or_else(|e| panic!("open pinned {name}: {e}"))
    };
    let slots: Array<MapData, VipSlot> = Array::try_from(Map::Array(open(map_names::VIP_BY_ID))).unwrap();
    let vip_generation = slots.get(&vip_id, 0).expect("read VIP_BY_ID").generation;
    let backends: Array<MapData, BackendValue> =
        Array::try_from(Map::Array(open(map_names::BACKENDS))).unwrap();
    let backend_generation = backends.get(&backend_id, 0).expect("read BACKENDS").generation;
    let config: Array<MapData, ConfigValue> = Array::try_from(Map::Array(open(map_names::CONFIG))).unwrap();
    let seed = config.get(&0, 0).expect("read CONFIG").hash_seed;
    let table = map_pinned_flow_table(&pin_dir.join(map_names::FLOW_TABLE))
        .unwrap_or_else(|e| panic!("mapping the pinned flow table: {e}"));
    let sets = table.len() / FLOW_WAYS;
    let ctl = FLOW_CONFIRMED | FLOW_COUNTED | u64::from(flow_clock_now()) << FLOW_CLOCK_SHIFT;
    let mut written = 0;
    for i in 0..n {
        let key = key(i, vip);
        let entry = FlowEntry {
            key,
            backend: backend_id,
            hash: hash::flow(&key, seed),
            vip: u16::try_from(vip_id).expect("VIP ids fit 16 bits"),
            vip_generation: vip_generation as u16,
            backend_generation: backend_generation as u16,
            policy_generation: 0,
            ctl,
        };
        let (first, second) = hash::flow_sets(&key, seed, sets);
        let ways = |set: u32| set * FLOW_WAYS..(set + 1) * FLOW_WAYS;
        let held = |index: u32| table.read_settled(index).is_none_or(|e| e.holds_flow());
        let held_in = |set: u32| ways(set).filter(|&i| held(i)).count();
        let (in_first, in_second) = (held_in(first), held_in(second));
        let order = if in_first < FLOW_FIRST_SET_ALONE as usize || in_first <= in_second {
            [first, second]
        } else {
            [second, first]
        };
        let free =
            order
                .into_iter()
                .flat_map(ways)
                .find_map(|index| if held(index) { None } else { table.claim(index) });
        if let Some(claim) = free {
            table.write(claim, &entry);
            written += 1;
        }
    }
    written
}

/// Flow `i`: client 198.19.x.y (`i` / 64), source port 10000 + `i` % 64, to `vip`:80.
fn key(i: u32, vip: [u8; 4]) -> FlowKey {
    let client = i / PORTS_PER_CLIENT;
    assert!(client < 1 << 16, "at most {} flows", PORTS_PER_CLIENT << 16);
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[198, 19, (client >> 8) as u8, client as u8]);
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&vip);
    FlowKey {
        src,
        dst,
        sport: 10_000 + (i % PORTS_PER_CLIENT) as u16,
        dport: 80,
        proto: PROTO_TCP,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}
