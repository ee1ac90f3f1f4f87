//! The per-backend health state machine: probe results in, state changes out. Pure, so its
//! thresholds and its resistance to flapping are tested without a network.

/// A change of a backend's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// Up or down, and how many consecutive results so far contradict that.
///
/// A new backend starts up: it gets traffic at once, as it did before it had a check, and a
/// dead one leaves after `fall` failures (`fall` × interval). Starting down would hold every new
/// or restarted backend, and after an agent restart every backend, out for `rise` intervals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthState {
    up: bool,
    streak: u32,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState::new(true)
    }
}

impl HealthState {
    pub fn new(up: bool) -> Self {
        HealthState { up, streak: 0 }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive results against the current state (failures while up, successes while down).
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// Counts one probe result: up goes down after `fall` consecutive failures, down goes up
    /// after `rise` consecutive successes. A result that agrees with the state restarts the
    /// count, so a backend failing every other probe never changes state when both are ≥ 2.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<Transition> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak < needed.max(1) {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(if ok { Transition::Up } else { Transition::Down })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(state: &mut HealthState, results: &[bool], rise: u32, fall: u32) -> Vec<(usize, Transition)> {
        results
            .iter()
            .enumerate()
            .filter_map(|(i, &ok)| state.record(ok, rise, fall).map(|t| (i, t)))
            .collect()
    }

    #[test]
    fn starts_up() {
        assert!(HealthState::default().is_up());
    }

    #[test]
    fn goes_down_after_fall_consecutive_failures() {
        let mut s = HealthState::default();
        assert_eq!(feed(&mut s, &[false, false], 2, 3), []);
        assert_eq!(s.streak(), 2);
        assert_eq!(s.record(false, 2, 3), Some(Transition::Down));
        assert!(!s.is_up());
        assert_eq!(s.streak(), 0);
        assert_eq!(feed(&mut s, &[false; 10], 2, 3), [], "further failures change nothing");
    }

    #[test]
    fn comes_up_after_rise_consecutive_successes() {
        let mut s = HealthState::new(false);
        assert_eq!(s.record(true, 2, 3), None);
        assert_eq!(s.record(true, 2, 3), Some(Transition::Up));
        assert!(s.is_up());
        assert_eq!(feed(&mut s, &[true; 10], 2, 3), []);
    }

    #[test]
    fn an_agreeing_result_restarts_the_count() {
        let mut s = HealthState::default();
        let results = [false, false, true, false, false, true, false, false, false];
        assert_eq!(feed(&mut s, &results, 2, 3), [(8, Transition::Down)]);
        let results = [true, false, true, true];
        assert_eq!(feed(&mut s, &results, 2, 3), [(3, Transition::Up)]);
    }

    #[test]
    fn counts_of_one_follow_every_result() {
        let mut s = HealthState::default();
        let t = feed(&mut s, &[false, true, false], 1, 1);
        assert_eq!(t, [(0, Transition::Down), (1, Transition::Up), (2, Transition::Down)]);
    }

    #[test]
    fn alternating_results_never_change_state() {
        for initial in [true, false] {
            for first in [true, false] {
                let mut s = HealthState::new(initial);
                let results: Vec<bool> = (0..1000).map(|i| (i % 2 == 0) == first).collect();
                assert_eq!(feed(&mut s, &results, 3, 3), [], "initial up={initial}, first ok={first}");
                assert_eq!(s.is_up(), initial);
                // Any rise and fall of 2 or more resists it too.
                let mut s = HealthState::new(initial);
                assert_eq!(feed(&mut s, &results, 2, 2), []);
            }
        }
    }
}
