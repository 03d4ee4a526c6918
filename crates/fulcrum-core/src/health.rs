//! Active health checking, the decision half: a per-server state machine that turns a stream
//! of probe results into up/down verdicts with hysteresis (`rise` successes in a row bring a
//! down server up, `fall` failures in a row take an up server down), and the jittered delay
//! between rounds. The probes themselves (sockets, clock) live in the proxy crate.

use std::time::Duration;

/// The verdict of one server's health checks and the run of results that leads to the next
/// transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthMachine {
    up: bool,
    /// Successes in a row while down (always 0 while up).
    successes: u32,
    /// Failures in a row while up (always 0 while down).
    failures: u32,
    rise: u32,
    fall: u32,
}

impl HealthMachine {
    /// A machine whose current verdict is `initially_up`. A threshold of 0 acts as 1: a
    /// verdict can only change on a result.
    pub fn new(initially_up: bool, rise: u32, fall: u32) -> Self {
        Self { up: initially_up, successes: 0, failures: 0, rise: rise.max(1), fall: fall.max(1) }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive successes counted towards coming up.
    pub fn successes(&self) -> u32 {
        self.successes
    }

    /// Consecutive failures counted towards going down.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Feeds one probe result; `Some(new_up)` exactly when the verdict changes.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        match (self.up, ok) {
            // The result agrees with the verdict: any run towards the other verdict is broken.
            (true, true) => {
                self.failures = 0;
                None
            }
            (false, false) => {
                self.successes = 0;
                None
            }
            (true, false) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures < self.fall {
                    return None;
                }
                self.up = false;
                self.failures = 0;
                Some(false)
            }
            (false, true) => {
                self.successes = self.successes.saturating_add(1);
                if self.successes < self.rise {
                    return None;
                }
                self.up = true;
                self.successes = 0;
                Some(true)
            }
        }
    }
}

/// The pause before the next round of checks: `interval` ± 10%, chosen by `rand`. The jitter
/// keeps the checkers of many pools (and of several balancers) from probing in lockstep.
pub fn next_delay(interval: Duration, rand: u64) -> Duration {
    let nanos = interval.as_nanos();
    let spread = nanos / 10;
    let low = nanos - spread;
    // `span` ≤ u128::MAX / 5, so `+ 1` cannot overflow.
    let span = 2 * spread + 1;
    let picked = low + u128::from(rand) % span;
    from_nanos_saturating(picked)
}

fn from_nanos_saturating(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    match u64::try_from(nanos / NANOS_PER_SEC) {
        // The remainder is below 10^9 and so fits in u32.
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `results` and returns the transitions, as (index of the result, new verdict).
    fn run(m: &mut HealthMachine, results: &[bool]) -> Vec<(usize, bool)> {
        results.iter().enumerate().filter_map(|(i, &ok)| m.observe(ok).map(|up| (i, up))).collect()
    }

    #[test]
    fn up_goes_down_after_exactly_fall_failures() {
        for fall in 1..=6u32 {
            let mut m = HealthMachine::new(true, 2, fall);
            for k in 1..fall {
                assert_eq!(m.observe(false), None, "fall={fall}: failure {k} must not flip");
                assert_eq!(m.failures(), k);
                assert!(m.is_up());
            }
            assert_eq!(m.observe(false), Some(false), "fall={fall}");
            assert!(!m.is_up());
            assert_eq!((m.successes(), m.failures()), (0, 0));
            // Further failures keep it down without announcing anything.
            assert_eq!(m.observe(false), None);
            assert!(!m.is_up());
        }
    }

    #[test]
    fn down_comes_up_after_exactly_rise_successes() {
        for rise in 1..=6u32 {
            let mut m = HealthMachine::new(false, rise, 3);
            for k in 1..rise {
                assert_eq!(m.observe(true), None, "rise={rise}: success {k} must not flip");
                assert_eq!(m.successes(), k);
                assert!(!m.is_up());
            }
            assert_eq!(m.observe(true), Some(true), "rise={rise}");
            assert!(m.is_up());
            assert_eq!((m.successes(), m.failures()), (0, 0));
            assert_eq!(m.observe(true), None);
            assert!(m.is_up());
        }
    }

    #[test]
    fn a_success_breaks_a_run_of_failures() {
        let mut m = HealthMachine::new(true, 2, 3);
        assert_eq!(run(&mut m, &[false, false, true]), vec![]);
        assert_eq!(m.failures(), 0);
        // The run starts over: two more failures are not enough, the third is.
        assert_eq!(run(&mut m, &[false, false]), vec![]);
        assert_eq!(m.observe(false), Some(false));
    }

    #[test]
    fn a_failure_breaks_a_run_of_successes() {
        let mut m = HealthMachine::new(false, 3, 2);
        assert_eq!(run(&mut m, &[true, true, false]), vec![]);
        assert_eq!(m.successes(), 0);
        assert_eq!(run(&mut m, &[true, true]), vec![]);
        assert_eq!(m.observe(true), Some(true));
    }

    #[test]
    fn flapping_never_flips_with_thresholds_above_one() {
        let mut up = HealthMachine::new(true, 2, 2);
        let mut down = HealthMachine::new(false, 2, 2);
        let flap: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
        assert_eq!(run(&mut up, &flap), vec![]);
        assert_eq!(run(&mut down, &flap), vec![]);
        assert!(up.is_up());
        assert!(!down.is_up());
    }

    #[test]
    fn thresholds_of_one_follow_every_result() {
        let mut m = HealthMachine::new(true, 1, 1);
        assert_eq!(
            run(&mut m, &[true, false, false, true, true, false]),
            vec![(1, false), (3, true), (5, false)]
        );
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut m = HealthMachine::new(true, 0, 0);
        assert_eq!(m.observe(true), None);
        assert_eq!(m.observe(false), Some(false));
        assert_eq!(m.observe(true), Some(true));
    }

    #[test]
    fn full_cycle_down_and_back_up() {
        let mut m = HealthMachine::new(true, 2, 2);
        let results = [true, false, false, false, true, false, true, true, true];
        assert_eq!(run(&mut m, &results), vec![(2, false), (7, true)]);
    }

    #[test]
    fn counters_saturate_instead_of_overflowing() {
        let mut m = HealthMachine::new(true, 1, u32::MAX);
        m.failures = u32::MAX - 1;
        assert_eq!(m.observe(false), Some(false));
    }

    #[test]
    fn delay_stays_within_ten_percent() {
        let i = Duration::from_millis(200);
        assert_eq!(next_delay(i, 0), Duration::from_millis(180));
        // Every nanosecond of the 20 ms span is reachable, the top one included.
        assert_eq!(next_delay(i, 40_000_000), Duration::from_millis(220));
        assert_eq!(next_delay(i, 40_000_001), Duration::from_millis(180));
        assert_eq!(next_delay(i, 20_000_000), i);
        for r in [1, 7, 1 << 20, u64::MAX / 3, u64::MAX] {
            let d = next_delay(i, r);
            assert!(d >= Duration::from_millis(180) && d <= Duration::from_millis(220), "{d:?}");
        }
    }

    #[test]
    fn delay_edge_intervals() {
        assert_eq!(next_delay(Duration::ZERO, 12345), Duration::ZERO);
        // Below 10 ns there is no room for jitter.
        assert_eq!(next_delay(Duration::from_nanos(9), u64::MAX), Duration::from_nanos(9));
        // The largest interval does not overflow, and whatever exceeds `Duration` saturates.
        let d = next_delay(Duration::MAX, u64::MAX);
        assert!(d >= Duration::MAX - Duration::MAX / 10);
        assert_eq!(from_nanos_saturating(u128::MAX), Duration::MAX);
        let d = next_delay(Duration::from_secs(u64::MAX / 2), 0);
        assert!(d < Duration::from_secs(u64::MAX / 2));
    }

    /// An independent statement of the rule: the verdict flips exactly when the results since
    /// the last flip end in a run of `rise` successes (while down) or `fall` failures (while up).
    fn expected_transitions(
        up0: bool,
        rise: u32,
        fall: u32,
        results: &[bool],
    ) -> Vec<(usize, bool)> {
        let mut out = Vec::new();
        let mut up = up0;
        let mut since = 0; // index of the first result after the last flip
        for i in 0..results.len() {
            let want = !up; // the kind of result that leads to a flip
            let need = if up { fall } else { rise } as usize;
            let tail = results[since..=i].iter().rev().take_while(|&&r| r == want).count();
            if tail == need {
                up = !up;
                out.push((i, up));
                since = i + 1;
            }
        }
        out
    }

    proptest! {
        #[test]
        fn flips_only_after_exact_runs(
            up0 in any::<bool>(),
            rise in 1u32..6,
            fall in 1u32..6,
            results in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            let mut m = HealthMachine::new(up0, rise, fall);
            let got = run(&mut m, &results);
            prop_assert_eq!(&got, &expected_transitions(up0, rise, fall, &results));
            // Transitions alternate and each announces the opposite of the verdict before it.
            let mut up = up0;
            for &(_, new_up) in &got {
                prop_assert_ne!(new_up, up);
                up = new_up;
            }
            prop_assert_eq!(m.is_up(), up);
        }

        #[test]
        fn delay_is_within_ten_percent(ms in 1u64..10_000_000, r in any::<u64>()) {
            let i = Duration::from_millis(ms);
            let d = next_delay(i, r);
            prop_assert!(d >= i - i / 10 && d <= i + i / 10, "{:?} for {:?}", d, i);
        }
    }
}
