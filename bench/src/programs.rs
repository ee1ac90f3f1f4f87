//! The benches' XDP object: lb-ebpf built with its `bench` feature (by build.rs), so the
//! balancer and decap programs with their maps, as in lbd's object, and the bench programs
//! (lb-ebpf/src/bench.rs) with theirs (`lb_common::bench`). The benches load everything from it:
//! `bench_flow_lookup` looks flows up in the FLOW_TABLE of the balancer it is loaded with.
use lb_userspace::datapath::{self, Datapath, Sizes};

/// The traffic generator, run with `BPF_PROG_TEST_RUN` in live-frames mode.
pub const GEN: &str = "bench_gen";
/// The field generator: run with `BPF_PROG_TEST_RUN` and a repeat count, it writes a frame of
/// the next flow in a traffic shape and tail-calls the program in BENCH_CHAIN.
pub const FLOWGEN: &str = "bench_flowgen";
/// Counts and drops every frame.
pub const SINK: &str = "bench_sink";
/// The floor: MAC addresses swapped, XDP_TX.
pub const MAC_SWAP: &str = "bench_mac_swap";
/// The encapsulation floor: an outer header pushed, XDP_TX.
pub const ENCAP: &str = "bench_encap";
/// A FLOW_TABLE lookup, then the MAC-swap floor.
pub const FLOW_LOOKUP: &str = "bench_flow_lookup";
/// IPv4 frames for its host on to one fixed MAC address (bench_conn's hop floor).
pub const FORWARD: &str = "bench_forward";
/// Every bench program.
pub const ALL: [&str; 7] = [GEN, FLOWGEN, SINK, MAC_SWAP, ENCAP, FLOW_LOOKUP, FORWARD];

/// The object, embedded so that the bench binaries are self-contained.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"))
}

/// Loads the object with private maps of `sizes` (the kernel verifies the balancer and decap
/// here; each bench loads the bench programs it uses).
pub fn load(sizes: Sizes) -> Datapath {
    datapath::load_object_with(object(), sizes)
        .unwrap_or_else(|e| panic!("loading the benches' XDP programs: {e}"))
}

#[cfg(test)]
mod tests {
    use lb_common::{bench, map_names};
    use lb_userspace::datapath::{self, BALANCER, DECAP};

    fn parse(object: &[u8], whose: &str) -> aya_obj::Object {
        aya_obj::Object::parse(object)
            .unwrap_or_else(|e| panic!("{whose} object does not parse (built with AYA_BUILD_SKIP?): {e}"))
    }

    #[test]
    fn the_object_has_the_bench_programs_and_the_production_ones() {
        let obj = parse(super::object(), "the benches'");
        let mut programs: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
        programs.sort_unstable();
        let mut want: Vec<&str> = [BALANCER, DECAP].into_iter().chain(super::ALL).collect();
        want.sort_unstable();
        assert_eq!(programs, want, "the programs of the benches' object");
        for name in bench::map_names::ALL.into_iter().chain(map_names::ALL) {
            assert!(obj.maps.contains_key(name), "the benches' object lacks map {name}");
        }
    }

    /// What the benches measure is the product: the `bench` feature adds programs, it must not
    /// change the code of the balancer, decap, or any function they call.
    #[test]
    fn the_product_code_is_the_same_as_in_lbd_s_object() {
        let ours = product_functions(&parse(super::object(), "the benches'"));
        let lbd = product_functions(&parse(datapath::object(), "lbd's"));
        let names: Vec<&str> = lbd.iter().map(|(name, _)| name.as_str()).collect();
        assert!(names.contains(&BALANCER) && names.contains(&DECAP), "lbd's object has functions {names:?}");
        assert_eq!(ours.len(), lbd.len(), "the benches' object has other functions than lbd's {names:?}");
        for ((name, want), (_, got)) in lbd.iter().zip(&ours) {
            assert!(got == want, "{name}: its instructions in the benches' object differ from lbd's");
        }
    }

    /// A function's instructions as (opcode, registers, offset, immediate).
    type Code = Vec<(u8, u8, i16, i32)>;

    /// Every function but the bench programs, by section and address: its name and its code.
    fn product_functions(obj: &aya_obj::Object) -> Vec<(String, Code)> {
        obj.functions
            .values()
            .filter(|f| !super::ALL.contains(&f.name.as_str()))
            .map(|f| {
                let code =
                    f.instructions.iter().map(|i| (i.code, i.dst_reg() | i.src_reg() << 4, i.off, i.imm));
                (f.name.clone(), code.collect())
            })
            .collect()
    }
}
