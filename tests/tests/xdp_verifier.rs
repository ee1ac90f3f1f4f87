//! The balancer stays well inside the kernel verifier's budget (it refuses a program whose walk
//! passes 1,000,000 instructions) at flow-table sizes from the least `limits.flows` allows to
//! 16M: the loader writes the table's sets into the program (`FLOW_SETS`) and the verifier
//! walks the program with that constant (a table of one set, which no config can ask for, walks
//! past the limit). A change that eats the headroom fails here, not on an operator's host.
use lb_userspace::datapath::{self, Sizes, BALANCER};

/// The verifier's limit of instructions walked.
const VERIFIER_LIMIT: u32 = 1_000_000;
/// The share of the limit the balancer may use: room for the next change, and for kernels
/// whose verifier walks a little more.
const BUDGET: f64 = 0.85;

#[test]
fn the_balancer_verifies_with_headroom_at_every_table_size() {
    lb_tests::privilege::require_root();
    let base = Sizes::default();
    // limits.flows: the least allowed, powers of four up to the default (1M), and 16M (1 GiB).
    let mut walked = Vec::new();
    for flows in [1024, 4096, 16_384, 65_536, 262_144, 1 << 20, 1 << 24] {
        let mut dp = datapath::load_with(Sizes { flows, ..base })
            .unwrap_or_else(|e| panic!("limits.flows = {flows}: the balancer does not load: {e}"));
        let n = dp
            .verified_instructions(BALANCER)
            .unwrap_or_else(|e| panic!("reading the balancer's program info: {e}"))
            .expect("this kernel reports verified instructions (5.16 and later)");
        walked.push((flows, n));
    }
    eprintln!("instructions the verifier walked, by limits.flows: {walked:?}");
    let over: Vec<_> =
        walked.iter().filter(|(_, n)| f64::from(*n) > BUDGET * f64::from(VERIFIER_LIMIT)).collect();
    assert!(
        over.is_empty(),
        "the balancer uses more than {:.0} % of the verifier's {VERIFIER_LIMIT} instructions: {over:?}",
        BUDGET * 100.0
    );
}
