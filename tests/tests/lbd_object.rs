//! The object lbd and lbctl embed holds the product's programs and maps only: the benches'
//! programs and maps (lb-ebpf's `bench` feature) are in lb-bench's own object, never in lbd's.
use std::process::Command;

use lb_common::{bench, map_names};
use lb_tests::bins;
use lb_userspace::datapath::{self, BALANCER, DECAP};

/// The programs an operator may see, sorted.
const PRODUCTION_PROGRAMS: [&str; 2] = [BALANCER, DECAP];

/// A map the product names (pinned or per instance), or one of the object's data sections
/// (`.rodata`: load-time globals and constants).
fn is_production_map(name: &str) -> bool {
    map_names::ALL.contains(&name) || map_names::UNPINNED.contains(&name) || name.starts_with('.')
}

#[test]
fn embedded_object_has_only_the_production_programs_and_maps() {
    let obj = aya_obj::Object::parse(datapath::object())
        .unwrap_or_else(|e| panic!("the object lbd embeds does not parse (built with AYA_BUILD_SKIP?): {e}"));
    let mut programs: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
    programs.sort_unstable();
    assert_eq!(programs, PRODUCTION_PROGRAMS, "the programs of the object lbd embeds");
    let bench_maps: Vec<&str> =
        bench::map_names::ALL.into_iter().filter(|m| obj.maps.contains_key(*m)).collect();
    assert!(bench_maps.is_empty(), "the object lbd embeds has the bench maps {bench_maps:?}");
    let mut unknown: Vec<&str> =
        obj.maps.keys().map(String::as_str).filter(|m| !is_production_map(m)).collect();
    unknown.sort_unstable();
    assert!(
        unknown.is_empty(),
        "the object lbd embeds has maps lb_common::map_names does not name: {unknown:?}"
    );
    for name in map_names::ALL.into_iter().chain(map_names::UNPINNED) {
        assert!(obj.maps.contains_key(name), "the object lbd embeds lacks map {name}");
    }
}

#[test]
fn lbctl_object_lists_only_the_production_programs() {
    let out = Command::new(bins::path("lbctl")).arg("object").output().expect("running lbctl object");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lbctl object failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let mut programs: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("program ")).collect();
    programs.sort_unstable();
    assert_eq!(programs, PRODUCTION_PROGRAMS, "the programs lbctl object lists:\n{stdout}");
    let maps: Vec<&str> =
        stdout.lines().filter_map(|l| l.strip_prefix("map ")?.split_whitespace().next()).collect();
    assert!(maps.contains(&map_names::FLOW_TABLE), "lbctl object lists no FLOW_TABLE map:\n{stdout}");
    let odd: Vec<&&str> = maps.iter().filter(|m| !is_production_map(m)).collect();
    assert!(odd.is_empty(), "lbctl object lists maps that are not the product's: {odd:?}");
}
