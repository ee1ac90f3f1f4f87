//! Statistics of the benches' rounds, and the kernel's own of a program.
use aya::programs::Xdp;

/// `kernel.bpf_stats_enabled` as it reads now: a bench that turned the statistics on checks
/// that it is back as it was.
pub fn bpf_stats_enabled() -> String {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default().trim().to_owned()
}

/// The kernel's BPF run-time statistics of `prog` (on while `BPF_ENABLE_STATS` is held):
/// (nanoseconds run, runs).
pub fn run_stats(prog: &Xdp) -> (u64, u64) {
    let info = prog.info().unwrap_or_else(|e| panic!("program info: {e}"));
    (info.run_time().as_nanos() as u64, info.run_count())
}

/// The median of `values` (sorted in place); `None` for none.
pub fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
