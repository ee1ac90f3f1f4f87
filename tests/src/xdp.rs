//! Runs the embedded XDP programs on frames with `BPF_PROG_TEST_RUN`: no interface, no traffic,
//! the real verifier-checked program and its real maps (fresh for every runner).
use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use lb_common::Counter;
use lb_userspace::datapath::{self, Datapath};

/// What an XDP program decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
}

impl Verdict {
    fn from_action(action: u32) -> Self {
        match action {
            0 => Verdict::Aborted,
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            3 => Verdict::Tx,
            4 => Verdict::Redirect,
            other => panic!("XDP program returned {other}, which is no XDP action"),
        }
    }
}

/// The verdict and the frame as the program left it.
#[derive(Debug)]
pub struct Outcome {
    pub verdict: Verdict,
    pub frame: Vec<u8>,
}

/// Room for headers a program may push in front of the frame (encapsulation).
const HEADROOM: usize = 256;

/// One loaded copy of the programs with their own maps.
pub struct XdpRunner {
    pub datapath: Datapath,
    program: &'static str,
}

impl XdpRunner {
    /// Loads the balancer program (the kernel verifies it here).
    pub fn balancer() -> Self {
        Self::new(datapath::BALANCER)
    }

    fn new(program: &'static str) -> Self {
        crate::privilege::require_root();
        let datapath = datapath::load().unwrap_or_else(|e| panic!("loading the XDP programs: {e}"));
        XdpRunner { datapath, program }
    }

    /// Runs the program once on `frame` (at least 14 bytes, the least the kernel accepts).
    pub fn run(&mut self, frame: &[u8]) -> Outcome {
        let (outcome, _) = self.run_repeat(frame, 1);
        outcome
    }

    /// Runs the program `repeat` times on the same input and returns the outcome of the last run
    /// and the kernel's mean time per run. Beware: each run starts from `frame` again, so this
    /// measures one packet class, not a flow of changing packets.
    pub fn run_repeat(&mut self, frame: &[u8], repeat: u32) -> (Outcome, Duration) {
        let prog = datapath::program(&mut self.datapath.ebpf, self.program).expect("program");
        let mut out = vec![0u8; frame.len() + HEADROOM];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {e}", frame.len()));
        out.truncate(result.data_size_out as usize);
        let outcome = Outcome { verdict: Verdict::from_action(result.return_value), frame: out };
        (outcome, result.duration)
    }

    /// A global counter summed over CPUs.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.datapath.counter(counter).unwrap_or_else(|e| panic!("reading {}: {e}", counter.name()))
    }

    /// All global counters, in `Counter::ALL` order.
    pub fn counters(&self) -> Vec<u64> {
        Counter::ALL.iter().map(|c| self.counter(*c)).collect()
    }
}
