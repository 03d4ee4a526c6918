//! Rate-limited logging: a failing server or a flood of bad clients must not turn the log
//! into the bottleneck. At most one line per interval per call site; the lines skipped in
//! between are counted and reported with the next one.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct RateLimit {
    next_ms: AtomicU64,
    suppressed: AtomicU64,
    interval_ms: u64,
}

impl RateLimit {
    pub const fn new(interval_ms: u64) -> Self {
        Self { next_ms: AtomicU64::new(0), suppressed: AtomicU64::new(0), interval_ms }
    }

    /// Returns `Some(skipped since the last line)` when a line may be written now.
    pub fn allow(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_counts_the_rest() {
        let r = RateLimit::new(1000);
        assert_eq!(r.allow(5), Some(0));
        assert_eq!(r.allow(6), None);
        assert_eq!(r.allow(1004), None);
        assert_eq!(r.allow(1005), Some(2));
    }
}
