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
    /// Whether `n` more units would not fit.
    pub(crate) fn full_for(&self, n: usize) -> bool {
        self.active().saturating_add(n) > self.max
    }
    /// Takes a slot if one is free.
    pub(crate) fn try_acquire(&self) -> bool {
        self.try_acquire_n(1)
    }
    /// Takes `n` units if they are free (a proxied TCP connection holds two descriptors).
    pub(crate) fn try_acquire_n(&self, n: usize) -> bool {
        self.active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                (a.saturating_add(n) <= self.max).then_some(a + n)
            })
            .is_ok()
    }
    /// Takes `n` units even past the limit, by at most `over`: a client let in by the fair
    /// share in place of a connection being closed for it, whose units come back when that
    /// one ends. False (nothing taken) past `max + over`.
    pub(crate) fn take_over(&self, n: usize, over: usize) -> bool {
        let cap = self.max.saturating_add(over);
        self.active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                (a.saturating_add(n) <= cap).then_some(a + n)
            })
            .is_ok()
    }
    pub(crate) fn release(&self) {
        self.release_n(1);
    }
    pub(crate) fn release_n(&self, n: usize) {
        let before = self.active.fetch_sub(n, Ordering::Relaxed);
        // Somebody may be waiting for up to MAX_UNITS units only when the count was that close
        // to the limit: otherwise no wake-up is owed and none is paid for.
        if before.saturating_add(MAX_UNITS) > self.max {
            self.freed.notify_waiters();
        }
    }
    pub(crate) fn freed(&self) -> &Notify {
        &self.freed
    }
}

/// Most units one acquisition takes (a proxied TCP connection's two descriptors).
pub(crate) const MAX_UNITS: usize = 2;

/// Descriptors the process keeps out of the budget, for listeners, logs, the admin and agent
/// ports, health probes, and accepting and closing under pressure.
pub const DESCRIPTOR_RESERVE: u64 = 256;

/// The descriptor budget for an open-file limit of `nofile`: what proxied connections, UDP
/// sessions and other per-client sockets may hold together.
pub fn descriptor_budget(nofile: u64) -> usize {
    nofile.saturating_sub(DESCRIPTOR_RESERVE).clamp(64, 4_000_000) as usize
}

/// The names of [`FrontendStats::sni_hellos`]' counters, in order (the `result` label).
pub const SNI_RESULTS: [&str; 5] = ["sni", "no-sni", "not-tls", "closed", "timeout"];

#[derive(Debug, Default)]
#[repr(align(64))]
pub struct FrontendStats {
    /// HTTP frontends: requests answered, by status class (1xx..5xx), ...
    pub http_responses: [AtomicU64; 5],
    /// ... all requests ended, in progress now, and how long they took to the end of the
    /// response.
    pub http_requests: AtomicU64,
    pub http_active: AtomicU64,
    pub http_latency: crate::state::Histogram,
    /// HTTPS frontends: handshakes completed (by version and ALPN) and failed, and their time.
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub tls_handshake_timeouts: AtomicU64,
    pub tls_v13: AtomicU64,
    pub tls_alpn_h2: AtomicU64,
    pub tls_handshake_time: crate::state::Histogram,
    /// Frontends with routes by SNI: what the first bytes of each connection were, by
    /// [`SNI_RESULTS`] (a named ClientHello, one without a name, not TLS, closed before a
    /// whole ClientHello, none within `sni_timeout`).
    pub sni_hellos: [AtomicU64; 5],
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    /// Client addresses: what each holds and how fast it comes (per-client limits, busiest
    /// clients).
    pub clients: crate::clients::ClientTable,
    /// Connections closed to make room for an address holding less (the fair share).
    pub fair_share_evictions: AtomicU64,
    /// Idle connections closed at `pressure_idle_timeout` (shorter than their own) while the
    /// connection slots were under pressure.
    pub pressure_idle_closed: AtomicU64,
    /// Clients closed for sending nothing within `first_byte_timeout`.
    pub first_byte_timeouts: AtomicU64,
    /// Clients closed because no server could take them.
    pub no_server: AtomicU64,
    /// Clients refused by address, by `fulcrum_core::acl::Rejection::index` (TCP connections
    /// at accept, UDP datagrams).
    pub rejections: [AtomicU64; fulcrum_core::acl::Rejection::COUNT],
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub accept_errors: AtomicU64,
    /// Connections accepted by one worker and moved to a less loaded one (engine.rs).
    pub handoffs: AtomicU64,
    /// Directory answers over UDP dropped because the send queue was full.
    pub udp_dropped: AtomicU64,
    // UDP proxy frontends (`protocol = "udp"`, udp.rs; docs/udp.md). Datagrams and bytes
    // received from clients, dropped ones included.
    pub udp_datagrams_in: AtomicU64,
    pub udp_bytes_in: AtomicU64,
    /// Datagrams and bytes of the servers' answers sent back to clients.
    pub udp_datagrams_out: AtomicU64,
    pub udp_bytes_out: AtomicU64,
    /// Sessions open now, over all workers (also what `max_sessions` is checked against).
    pub udp_sessions_active: AtomicU64,
    pub udp_sessions_total: AtomicU64,
    /// Client datagrams dropped because no server of the pool could take a new session.
    pub udp_drops_no_server: AtomicU64,
    /// Client datagrams dropped because a new session would pass `max_sessions` (or the
    /// global connection limit: a session holds a descriptor like a connection).
    pub udp_drops_session_limit: AtomicU64,
    /// UDP datagrams dropped because their source address holds its most sessions.
    pub udp_drops_source_limit: AtomicU64,
    /// UDP datagrams dropped because the process's descriptor budget is spent.
    pub udp_drops_descriptors: AtomicU64,
    /// Client datagrams dropped because the session's queue toward its server was full.
    pub udp_drops_queue_full: AtomicU64,
    /// Datagrams (either way) dropped because a send failed, or because no upstream socket
    /// could be opened for a new session.
    pub udp_drops_send_error: AtomicU64,
    // Fan-out and hedge frontends (fanout.rs; docs/fanout.md). Every request received ends as
    // answered, timed out or dropped (or is still in flight).
    /// Requests received (UDP datagrams, TCP lines), dropped ones included.
    pub fanout_requests: AtomicU64,
    /// Requests relayed an acceptable answer.
    pub fanout_answered: AtomicU64,
    /// Requests with no acceptable answer before the timeout (`on_timeout` sent, if set).
    pub fanout_timeouts: AtomicU64,
    /// Answers refused by `reject_prefix` while their request waited.
    pub fanout_rejected_answers: AtomicU64,
    /// Requests dropped: the worker's UDP in-flight limit was full, the answer could not be
    /// sent, the TCP client sent an over-long line or left before its answers.
    pub fanout_dropped: AtomicU64,
    /// Hedged requests that asked a further server.
    pub fanout_hedges: AtomicU64,
    /// Failed exchanges with servers (connect, write or read errors, protocol mismatches).
    pub fanout_upstream_errors: AtomicU64,
    /// TCP answer lines that belonged to no request and were discarded: a second line on a
    /// one-request connection, or (`match = "first-word"`) a line whose first word matches no
    /// outstanding request (answered twice, or after its request's deadline).
    pub fanout_unmatched_answers: AtomicU64,
    /// TCP clients closed because they took no byte of their answers for `send_timeout`.
    pub send_timeouts: AtomicU64,
}

impl FrontendStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
