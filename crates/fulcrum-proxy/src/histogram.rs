//! A latency histogram in atomics with fixed buckets (connect times, HTTP request and TLS
//! handshake times): recorded on the data path without a lock, read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the connect-time histogram buckets, in seconds (Prometheus convention).
pub const CONNECT_BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A fixed-bucket histogram in atomics (prometheus-client's own takes a lock per sample).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last one is +Inf.
    buckets: [AtomicU64; CONNECT_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = CONNECT_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(CONNECT_BUCKETS.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket (upper bound, count) pairs ending with +Inf; the
    /// Prometheus encoder makes them cumulative).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            total += n;
            out.push((CONNECT_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        (self.sum_us.load(Ordering::Relaxed) as f64 / 1e6, total, out)
    }
}
