//! Passive ejection: when connects to a server keep failing, the server is skipped for a
//! backoff period that grows with each ejection in a row (outlier detection, as Envoy does it),
//! and comes back on its own when the period ends. The data plane keeps the numbers in
//! per-server atomics; the decisions are here, as pure functions of those numbers and `now`.

/// Tuning of passive ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectPolicy {
    /// Consecutive connect failures that eject a server.
    pub failures: u32,
    /// First ejection period, in milliseconds.
    pub base_ms: u64,
    /// Longest ejection period, in milliseconds.
    pub max_ms: u64,
}

impl Default for EjectPolicy {
    fn default() -> Self {
        Self { failures: 3, base_ms: 1_000, max_ms: 30_000 }
    }
}

/// What a connect failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Not yet ejected; the new consecutive-failure count.
    Counted(u32),
    /// Ejected until the given time (ms on the caller's clock); the new ejection streak.
    Ejected { until_ms: u64, streak: u32 },
}

impl EjectPolicy {
    /// Decides the outcome of one more consecutive failure. `consecutive` is the count before
    /// this failure; `streak` is how many ejections happened in a row without a success.
    pub fn on_failure(&self, consecutive: u32, streak: u32, now_ms: u64) -> FailureOutcome {
        let n = consecutive.saturating_add(1);
        if n < self.failures.max(1) {
            return FailureOutcome::Counted(n);
        }
        let until_ms = now_ms.saturating_add(self.backoff_ms(streak));
        FailureOutcome::Ejected { until_ms, streak: streak.saturating_add(1) }
    }

    /// Ejection period for the `streak`-th ejection in a row (0-based): base × 2^streak, capped.
    pub fn backoff_ms(&self, streak: u32) -> u64 {
        let factor = 1u64.checked_shl(streak.min(32)).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.max_ms.max(self.base_ms))
    }
}

/// Whether a server ejected until `until_ms` is back in rotation at `now_ms`.
pub fn is_ejected(until_ms: u64, now_ms: u64) -> bool {
    now_ms < until_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_threshold_and_backs_off() {
        let p = EjectPolicy { failures: 3, base_ms: 100, max_ms: 1_000 };
        assert_eq!(p.on_failure(0, 0, 0), FailureOutcome::Counted(1));
        assert_eq!(p.on_failure(1, 0, 0), FailureOutcome::Counted(2));
        assert_eq!(p.on_failure(2, 0, 50), FailureOutcome::Ejected { until_ms: 150, streak: 1 });
        assert_eq!(p.on_failure(2, 1, 50), FailureOutcome::Ejected { until_ms: 250, streak: 2 });
        assert_eq!(p.on_failure(2, 3, 0), FailureOutcome::Ejected { until_ms: 800, streak: 4 });
        assert_eq!(p.on_failure(2, 4, 0), FailureOutcome::Ejected { until_ms: 1_000, streak: 5 });
        assert_eq!(
            p.on_failure(2, u32::MAX, u64::MAX),
            FailureOutcome::Ejected { until_ms: u64::MAX, streak: u32::MAX }
        );
    }

    #[test]
    fn ejection_expires() {
        assert!(is_ejected(100, 99));
        assert!(!is_ejected(100, 100));
        assert!(!is_ejected(0, 0));
    }

    #[test]
    fn zero_threshold_ejects_on_first_failure() {
        let p = EjectPolicy { failures: 0, base_ms: 10, max_ms: 10 };
        assert!(matches!(p.on_failure(0, 0, 0), FailureOutcome::Ejected { .. }));
    }
}
