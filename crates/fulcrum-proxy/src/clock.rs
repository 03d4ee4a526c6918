//! A monotonic millisecond clock shared by all workers, for ejection deadlines and idle
//! tracking kept in atomics (an `Instant` does not fit in one).

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process; never 0 after the first millisecond.
pub fn now_ms() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
