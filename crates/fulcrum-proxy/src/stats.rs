//! Live counters shared by the workers: the global connection limit with its wake-up for
//! paused accept loops, and per-frontend totals. All atomics; nothing here locks.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The global limit of concurrently proxied connections. Accept loops pause at the limit
/// (the kernel's backlog queues further clients) and are woken when a connection ends.
pub struct Limits {
    active: AtomicUsize,
    max: usize,
    freed: Notify,
}

impl Limits {
    pub fn new(max: usize) -> Self {
        Self { active: AtomicUsize::new(0), max: max.max(1), freed: Notify::new() }
    }
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
    pub fn max(&self) -> usize {
        self.max
    }
    pub(crate) fn full(&self) -> bool {
        self.active() >= self.max
    }
    /// Takes a slot if one is free.
    pub(crate) fn try_acquire(&self) -> bool {
        self.active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| (a < self.max).then_some(a + 1))
            .is_ok()
    }
    pub(crate) fn release(&self) {
        let before = self.active.fetch_sub(1, Ordering::Relaxed);
        if before >= self.max {
            self.freed.notify_waiters();
        }
    }
    pub(crate) fn freed(&self) -> &Notify {
        &self.freed
    }
}

#[derive(Debug, Default)]
#[repr(align(64))]
pub struct FrontendStats {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    /// Clients closed because no server could take them.
    pub no_server: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub accept_errors: AtomicU64,
    /// Directory answers over UDP dropped because the send queue was full.
    pub udp_dropped: AtomicU64,
}

impl FrontendStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
