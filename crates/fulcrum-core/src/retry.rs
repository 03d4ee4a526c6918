//! The retry budget of a pool (`retry_budget = "20%"`): retries may add at most that share of
//! extra requests, so a failing pool is not hammered by its own retries (Envoy's and
//! Linkerd's retry budgets). A token bucket in one atomic: every request deposits
//! `percent / 100` of a retry, a retry spends a whole one, the bucket holds at most
//! [`BUCKET`] retries and starts with [`RESERVE`] so a pool that just started can retry.

use std::sync::atomic::{AtomicI64, Ordering};

/// One retry, in the bucket's units.
const UNIT: i64 = 1000;
/// Most retries the bucket holds.
pub const BUCKET: i64 = 100;
/// Retries a fresh pool may make before any request paid for them.
pub const RESERVE: i64 = 10;

#[derive(Debug)]
pub struct RetryBudget {
    tokens: AtomicI64,
    /// Units deposited per request: `percent` × 10.
    per_request: i64,
}

impl RetryBudget {
    pub fn new(percent: u32) -> Self {
        RetryBudget {
            tokens: AtomicI64::new(RESERVE * UNIT),
            per_request: i64::from(percent) * UNIT / 100,
        }
    }

    /// A request was sent (first attempts only).
    pub fn on_request(&self) {
        if self.per_request == 0 {
            return;
        }
        let _ = self.tokens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            (t < BUCKET * UNIT).then(|| (t + self.per_request).min(BUCKET * UNIT))
        });
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_retry(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| (t >= UNIT).then(|| t - UNIT))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_percent_allows_one_retry_in_five_requests_after_the_reserve() {
        let b = RetryBudget::new(20);
        for _ in 0..RESERVE {
            assert!(b.try_retry());
        }
        assert!(!b.try_retry(), "the reserve is spent");
        let mut allowed = 0;
        for _ in 0..1000 {
            b.on_request();
            if b.try_retry() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 200);
    }

    #[test]
    fn zero_percent_allows_only_the_reserve_and_the_bucket_is_bounded() {
        let b = RetryBudget::new(0);
        for _ in 0..10_000 {
            b.on_request();
        }
        let n = (0..1000).filter(|_| b.try_retry()).count();
        assert_eq!(n as i64, RESERVE);
        let b = RetryBudget::new(100);
        for _ in 0..10_000 {
            b.on_request();
        }
        let n = (0..1000).filter(|_| b.try_retry()).count();
        assert_eq!(n as i64, BUCKET);
    }
}
