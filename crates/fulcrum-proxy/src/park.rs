//! What a worker does when its run queue empties: a saturated worker yields its core once
//! before it blocks in `epoll_wait`; any other blocks at once.
//!
//! Why: a worker that runs nearly all the time shares its core with the processes it talks to
//! (clients and servers on the same host, or other daemons). When it blocks, the next event
//! has to wake it, and that wake-up waits for the core: with one worker behind `wrk -c64` on
//! two shared cores, fulcrum blocked 2–4 times as often as HAProxy and its keep-alive p99 sat
//! 3–15 % above HAProxy's. `sched_yield` instead lets whatever is runnable on this core run
//! now, and when the worker gets the core back the events that arrived meanwhile are read
//! without a sleep and a wake-up in between: it blocked about five times less and p99 fell
//! below HAProxy's (BENCHMARKS.md, "Eighth pass"). With nothing else runnable the yield
//! returns at once and costs one syscall. A worker with slack gains nothing and, yielding to
//! long-running neighbours, waits longer for its own events: with two workers, yielding
//! above 80 % busy made p99 1.2–1.3× worse, above 90 % it did not. Hence the threshold.

use std::cell::RefCell;
use std::time::Instant;

/// Length of one measuring window.
const WINDOW_NS: u64 = 10_000_000;

/// Share of wall time spent running (not parked) from which a worker yields before it
/// blocks. One saturated worker measured 700–970 ‰ per window (median 930); each of two
/// workers under the same load 390–700 ‰ (median 520).
pub const BUSY_YIELD_PERMILLE: u32 = 900;

/// The share of wall time a worker spent running tasks (not parked), per window.
#[derive(Debug, Default)]
pub struct BusyMeter {
    window_start: u64,
    busy_in_window: u64,
    unparked_at: Option<u64>,
    /// Busy share of the last complete window, in per mille.
    last: u32,
}

impl BusyMeter {
    /// The worker woke up at `now` (nanoseconds on any monotonic scale).
    pub fn unparked(&mut self, now: u64) {
        self.unparked_at = Some(now);
    }

    /// The worker is about to park at `now`; returns the busy share (per mille) of the last
    /// complete window.
    pub fn parked(&mut self, now: u64) -> u32 {
        if let Some(t) = self.unparked_at.take() {
            self.busy_in_window += now.saturating_sub(t);
        }
        let span = now.saturating_sub(self.window_start);
        if span >= WINDOW_NS {
            self.last = (self.busy_in_window.saturating_mul(1000) / span).min(1000) as u32;
            self.window_start = now;
            self.busy_in_window = 0;
        }
        self.last
    }
}

thread_local! {
    static METER: RefCell<BusyMeter> = RefCell::new(BusyMeter::default());
    /// Set on the thread's first park or unpark.
    static EPOCH: Instant = Instant::now();
}

fn now_ns() -> u64 {
    EPOCH.with(|e| e.elapsed().as_nanos() as u64)
}

/// Runtime hook: the worker's runtime woke up.
pub fn on_unpark() {
    let now = now_ns();
    METER.with(|m| m.borrow_mut().unparked(now));
}

/// Runtime hook: the worker's run queue is empty and it is about to block.
pub fn on_park() {
    let now = now_ns();
    if METER.with(|m| m.borrow_mut().parked(now)) >= BUSY_YIELD_PERMILLE {
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Runs `cycles` of `busy` ms running then `idle` ms parked, from `t`; returns the end.
    fn drive(m: &mut BusyMeter, mut t: u64, cycles: u32, busy: u64, idle: u64) -> (u64, u32) {
        let mut share = 0;
        for _ in 0..cycles {
            m.unparked(t);
            t += busy * MS;
            share = m.parked(t);
            t += idle * MS;
        }
        (t, share)
    }

    #[test]
    fn a_saturated_worker_reads_busy_and_an_idle_one_does_not() {
        let mut m = BusyMeter::default();
        let (t, share) = drive(&mut m, 0, 40, 19, 1);
        assert!((900..=1000).contains(&share), "19 of 20 ms busy read as {share}");
        assert!(share >= BUSY_YIELD_PERMILLE);
        // The same meter follows the load down within a window or two.
        let (_, share) = drive(&mut m, t, 40, 1, 1);
        assert!((400..=600).contains(&share), "1 of 2 ms busy read as {share}");
        assert!(share < BUSY_YIELD_PERMILLE);
    }

    #[test]
    fn nothing_is_known_before_the_first_window_ends() {
        let mut m = BusyMeter::default();
        m.unparked(0);
        assert_eq!(m.parked(5 * MS), 0);
    }

    #[test]
    fn a_long_sleep_reads_idle_and_never_overflows() {
        let mut m = BusyMeter::default();
        drive(&mut m, 0, 20, 10, 0);
        m.unparked(u64::MAX / 2);
        assert_eq!(m.parked(u64::MAX / 2 + MS), 0);
        m.unparked(u64::MAX - 1);
        assert!(m.parked(u64::MAX) <= 1000);
    }
}
