//! The kernel takes every program of the benches' object: CI runs no bench, so a bench program
//! the verifier refuses would otherwise go unseen until someone runs `cargo xtask bench`.
use lb_bench::programs::{self, ALL};
use lb_tests::{privilege::require_root, topology::TINY};
use lb_userspace::datapath;

#[test]
fn the_kernel_verifies_every_bench_program() {
    require_root();
    // The balancer and decap are verified by the load itself.
    let mut dp = programs::load(TINY);
    for name in ALL {
        let prog = datapath::program(dp.raw_mut(), name).unwrap_or_else(|e| panic!("{e}"));
        prog.load().unwrap_or_else(|e| panic!("the kernel rejected {name}: {e}"));
    }
}
