//! A monotonic millisecond clock shared by all workers, for ejection deadlines and idle
//! tracking kept in atomics (an `Instant` does not fit in one).
//!
//! It reads `CLOCK_MONOTONIC_COARSE`: the data path stamps activity on every read, and the
//! coarse clock is a plain load from the vDSO page, where `Instant::now` (`CLOCK_MONOTONIC`)
//! reads the TSC (about 0.8 % of a worker's CPU time under keep-alive load, by perf). Its
//! resolution is one scheduler tick (1–4 ms), far finer than any timeout it serves.

use std::sync::OnceLock;

use rustix::time::{ClockId, clock_gettime};

static START: OnceLock<u64> = OnceLock::new();

fn coarse_ms() -> u64 {
    let t = clock_gettime(ClockId::MonotonicCoarse);
    (t.tv_sec as u64).saturating_mul(1_000) + (t.tv_nsec as u64) / 1_000_000
}

/// Milliseconds since the first call in this process; never 0 after the first millisecond.
pub fn now_ms() -> u64 {
    let start = *START.get_or_init(coarse_ms);
    coarse_ms().saturating_sub(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn follows_real_time_within_a_tick() {
        let t0 = now_ms();
        let real = Instant::now();
        // Bounded: the coarse clock moves at least every 10 ms (HZ >= 100).
        let deadline = real + Duration::from_secs(5);
        while now_ms() < t0 + 50 && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        let waited = real.elapsed().as_millis() as u64;
        assert!(now_ms() >= t0 + 50, "clock stood still for {waited} ms");
        // At least 40 real ms (the first reading may be a tick stale); the upper bound allows for
        // preemption on a loaded machine and still catches a wrong unit.
        assert!((40..=300).contains(&waited), "50 clock ms took {waited} real ms");
    }
}
