//! The recent-events ring: one bounded list of what happened to the running balancer (health
//! changes, ejections, reloads and failed ones, registrations, server changes, scale signals,
//! blocks), fed by the controller, the scale task and the dashboard's sampler, read by
//! `GET /api/v1/events` and the dashboard's live stream. Control plane only: nothing on the
//! data path pushes here (ejections are seen by the sampler in the counters).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// Events kept; older ones are dropped first.
pub const KEEP_EVENTS: usize = 500;

/// What an event is about. The names are the `kind` field of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A server's health check verdict changed (`up` / `down`).
    Health,
    /// Passive ejection took a server out of rotation for a while.
    Ejection,
    /// The configuration was reloaded (file, SIGHUP, API or dashboard).
    Reload,
    /// A reload or a config apply was refused: the old configuration keeps serving.
    ConfigError,
    /// A backend registered itself through the agent port, or left.
    Registration,
    /// A server was added, removed, drained, enabled, put in maintenance or reweighted.
    Server,
    /// A scale-out or scale-in signal fired.
    Scale,
    /// A client address was blocked (access lists).
    Block,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increases by one per event, so a reader asks for what came after the last it saw.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub kind: EventKind,
    pub pool: Option<String>,
    pub server: Option<String>,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct EventLog {
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    next_seq: u64,
    events: VecDeque<Event>,
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EventLog {
    /// Records an event now.
    pub fn push(
        &self,
        kind: EventKind,
        pool: Option<&str>,
        server: Option<&str>,
        message: impl Into<String>,
    ) {
        self.push_at(unix_ms(), kind, pool, server, message.into());
    }

    fn push_at(
        &self,
        at_unix_ms: u64,
        kind: EventKind,
        pool: Option<&str>,
        server: Option<&str>,
        message: String,
    ) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.next_seq += 1;
        let seq = r.next_seq;
        if r.events.len() >= KEEP_EVENTS {
            r.events.pop_front();
        }
        r.events.push_back(Event {
            seq,
            at_unix_ms,
            kind,
            pool: pool.map(str::to_string),
            server: server.map(str::to_string),
            message,
        });
    }

    /// Events with a sequence number above `after`, oldest first, at most `limit`
    /// (the newest ones when there are more).
    pub fn since(&self, after: u64, limit: usize) -> Vec<Event> {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let newer = r.events.iter().filter(|e| e.seq > after);
        let n = newer.clone().count();
        newer.skip(n.saturating_sub(limit)).cloned().collect()
    }

    /// The sequence number of the newest event (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_reads_after_a_sequence_number() {
        let log = EventLog::default();
        for i in 0..(KEEP_EVENTS + 10) {
            log.push_at(i as u64, EventKind::Reload, None, None, format!("e{i}"));
        }
        let all = log.since(0, usize::MAX);
        assert_eq!(all.len(), KEEP_EVENTS, "the ring is bounded");
        assert_eq!(all[0].message, "e10", "the oldest were dropped first");
        assert_eq!(log.last_seq(), (KEEP_EVENTS + 10) as u64);
        let tail = log.since(log.last_seq() - 3, usize::MAX);
        assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![508, 509, 510]);
        let limited = log.since(0, 2);
        assert_eq!(limited.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![509, 510]);
    }
}
