//! Maglev table build time (`cargo bench -p lb-userspace --bench maglev`): 10 and 100 backends
//! at 65537 slots, 1000 backends at 131071 slots, equal weights, plus the agent's ring with one
//! backend drained (`build_available`: two tables and a merge). Target: 1000 backends at 131071
//! slots under 10 ms. `bench/src/bin/bench_control.rs` times the same cases without criterion
//! and prints them for `cargo xtask bench`.
use std::{hint::black_box, net::IpAddr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb_userspace::maglev::{self, Member};

/// `n` backends of weight 100 at 198.18.x.y (ids 1..=n).
fn members(n: usize) -> Vec<Member> {
    (0..n).map(|i| Member::new(IpAddr::from([198, 18, (i >> 8) as u8, i as u8]), i as u32 + 1, 100)).collect()
}

const CASES: [(usize, u32); 3] = [(10, 65_537), (100, 65_537), (1000, 131_071)];

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    for (n, size) in CASES {
        let m = members(n);
        group.bench_with_input(BenchmarkId::new(format!("{n}_backends"), size), &m, |b, m| {
            b.iter(|| maglev::build(black_box(m), black_box(size)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("maglev_build_one_drained");
    for (n, size) in CASES {
        let m = members(n);
        let down = m[n / 2].id;
        group.bench_with_input(BenchmarkId::new(format!("{n}_backends"), size), &m, |b, m| {
            b.iter(|| maglev::build_available(black_box(m), &|id| id != down, black_box(size)))
        });
    }
    group.finish();
}

criterion_group!(benches, build);
criterion_main!(benches);
