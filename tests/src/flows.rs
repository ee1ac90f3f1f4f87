//! A full flow table without the traffic that would fill it: entries written into a running
//! lbd's pinned `FLOWS` map, as the data plane would record them, for tests and benches of the
//! agent's walks (least-conn recounts, `lbctl flows`, resets).
use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{map_names, BackendValue, FlowKey, FlowValue, VipSlot, FAMILY_V4, FLOW_COUNTED, PROTO_TCP};

/// Flows per client address: source ports 10000 and up.
const PORTS_PER_CLIENT: u32 = 64;

/// Writes `n` open TCP connections (marked `FLOW_COUNTED`, as a least-conn VIP's are) of VIP
/// `vip_id` pinned to backend `backend_id` into the flow table pinned in `pin_dir`, valid under
/// the VIP's and the backend's current generations. Clients are 198.19.x.y, 64 ports each.
///
/// The table keeps a least-recently-used list per CPU, filled by the CPU that inserts: each
/// online CPU writes its share from a thread bound to it, so the table holds `n` flows when
/// each CPU's share of `limits.flows` is at least `n` / online CPUs. Returns how many were written.
pub fn fill_counted_flows(pin_dir: &Path, vip_id: u32, backend_id: u32, n: u32, vip: [u8; 4]) -> u32 {
    let open = |name: &str| {
        MapData::from_pin(pin_dir.join(name)).unwrap_or_else(|e| panic!("open pinned {name}: {e}"))
    };
    let slots: Array<MapData, VipSlot> = Array::try_from(Map::Array(open(map_names::VIP_BY_ID))).unwrap();
    let vip_generation = slots.get(&vip_id, 0).expect("read VIP_BY_ID").generation;
    let backends: Array<MapData, BackendValue> =
        Array::try_from(Map::Array(open(map_names::BACKENDS))).unwrap();
    let backend_generation = backends.get(&backend_id, 0).expect("read BACKENDS").generation;
    let value = FlowValue {
        backend: backend_id,
        hash: 0,
        vip: vip_id,
        vip_generation,
        backend_generation,
        policy_generation: 0,
        flags: FLOW_COUNTED,
    };
    let cpus = aya::util::online_cpus().expect("online CPUs");
    let share = n.div_ceil(cpus.len() as u32);
    std::thread::scope(|s| {
        let writers: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(k, &cpu)| {
                let range = (k as u32 * share)..((k as u32 + 1) * share).min(n);
                let map = open(map_names::FLOWS);
                s.spawn(move || {
                    bind_to_cpu(cpu);
                    let mut flows: HashMap<MapData, FlowKey, FlowValue> =
                        HashMap::try_from(Map::LruHashMap(map)).expect("FLOWS is an LRU hash");
                    let len = range.len() as u32;
                    for i in range {
                        flows
                            .insert(key(i, vip), value, 0)
                            .unwrap_or_else(|e| panic!("insert flow {i}: {e}"));
                    }
                    len
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().expect("flow writer")).sum()
    })
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

fn bind_to_cpu(cpu: u32) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "binding a flow writer to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}
