//! Fan-out and hedged frontends (`mode = "fanout"` / `"hedge"`): each request goes to several
//! servers (all healthy ones, `servers` of them, or one more per hedge delay) and the first
//! acceptable answer is relayed; without one before the timeout the client gets `on_timeout`.
//! The rules (who is asked when, which answer wins, request order, which answer line belongs
//! to which request) are `fulcrum-core::fanout`; these files send, receive and sleep.
//!
//! * `mod.rs` (this file): settings, choosing the servers ([`choose`]), bookkeeping shared by
//!   both protocols.
//! * `udp.rs`: one datagram is one request, a fresh connected socket per server asked (also
//!   the UDP proxy without sessions: one server asked per datagram).
//! * `tcp.rs`: one line is one request, many per client connection, answered in order (or,
//!   with `framing = "message"`, one read is one request, one at a time).
//! * `upstream.rs`: TCP server connections: one request at a time (default) or pipelined and
//!   matched by first word (`match = "first-word"`).

mod tcp;
mod udp;
mod upstream;

pub use tcp::serve_tcp;
pub use udp::serve_udp;

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fulcrum_config::{AnswerMatch, Frontend, Mode, Protocol};
use fulcrum_core::balance::Tried;
use fulcrum_core::blame::connect_failed;
use fulcrum_core::fanout::{Race, Step, acceptable};

use crate::clock::now_ms;
use crate::ratelog::RateLimit;
use crate::state::{PoolState, ServerStats};
use crate::stats::FrontendStats;

/// UDP requests in flight per worker; further ones are dropped (and counted) until some end.
/// Each holds one socket per server asked, so this also bounds the descriptors a worker uses.
const UDP_IN_FLIGHT: usize = 4096;
/// TCP requests of one client connection read and not yet answered. At the limit the client
/// is not read until answers drain: a client cannot queue unbounded work.
const PIPELINE_DEPTH: usize = 64;
/// Longest request or answer line; a client sending more without a newline is closed, a
/// server doing so loses its connection.
const MAX_LINE: usize = 64 * 1024;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_536;

static NO_SERVER_LOG: RateLimit = RateLimit::new(1_000);
static UPSTREAM_LOG: RateLimit = RateLimit::new(1_000);
static DROP_LOG: RateLimit = RateLimit::new(1_000);
static CLIENT_LOG: RateLimit = RateLimit::new(1_000);
static UNMATCHED_LOG: RateLimit = RateLimit::new(1_000);

/// The frontend's `[fanout]` settings in the form the data path uses.
struct Settings {
    timeout: Duration,
    on_timeout: Option<Box<[u8]>>,
    reject: Option<Box<[u8]>>,
    servers: Option<usize>,
    /// `Some(delay)` in hedge mode.
    hedge: Option<Duration>,
    /// TCP: how answer lines are matched to requests.
    matching: AnswerMatch,
}

impl Settings {
    /// The settings of frontend `f`: its `[fanout]` table, or for a UDP proxy without
    /// sessions one server per datagram, its answer awaited for `session_timeout`.
    fn of_frontend(f: &Frontend) -> Option<Settings> {
        if f.protocol == Protocol::Udp && f.mode == Mode::Proxy && !f.sessions {
            return Some(Settings {
                timeout: f.session_timeout,
                on_timeout: None,
                reject: None,
                servers: Some(1),
                hedge: None,
                matching: AnswerMatch::OneAtATime,
            });
        }
        Settings::of(&f.mode)
    }

    fn of(mode: &Mode) -> Option<Settings> {
        let (f, hedge) = match mode {
            Mode::Fanout(f) => (f, None),
            Mode::Hedge(f) => (f, Some(f.delay)),
            Mode::Proxy => return None,
        };
        Some(Settings {
            timeout: f.timeout,
            on_timeout: f.on_timeout.as_ref().map(|s| s.as_bytes().into()),
            reject: f.reject_prefix.as_ref().filter(|p| !p.is_empty()).map(|s| s.as_bytes().into()),
            servers: f.servers,
            hedge,
            matching: f.matching,
        })
    }

    fn race(&self) -> Race {
        match self.hedge {
            // Hedging asks two servers in all unless `servers` says otherwise.
            Some(delay) => Race::hedged(self.timeout, delay, self.servers.unwrap_or(2)),
            None => Race::fanout(self.timeout),
        }
    }

    /// How many servers one `Step::Ask` goes to; `None` = every eligible one.
    fn per_ask(&self) -> Option<usize> {
        if self.hedge.is_some() { Some(1) } else { self.servers }
    }

    fn acceptable(&self, answer: &[u8]) -> bool {
        acceptable(answer, self.reject.as_deref())
    }
}

/// Adds up to `want` servers (`None`: every eligible one) not yet in `asked` to `asked`;
/// returns how many. Each comes from the pool's admission step, as for a proxied connection
/// (shares, then panic mode when every server is ejected), with the servers already asked
/// excluded, so the balancer picks a different server each time however many are wanted.
fn choose(pool: &PoolState, hash: u64, want: Option<usize>, asked: &mut Vec<usize>) -> usize {
    let before = asked.len();
    let want = want.unwrap_or(pool.servers.len()).min(pool.servers.len());
    let tried = Tried::new();
    while asked.len() - before < want {
        let Some(i) = pool.admit(hash, &tried, asked) else { break };
        asked.push(i);
    }
    asked.len() - before
}

fn no_server(stats: &FrontendStats, frontend: &str, pool: &PoolState) {
    stats.no_server.fetch_add(1, Ordering::Relaxed);
    if let Some(skipped) = NO_SERVER_LOG.allow(now_ms()) {
        tracing::warn!(
            frontend, pool = %pool.name, skipped,
            "no server available for a fan-out request: it will time out"
        );
    }
}

/// Records a failed exchange with server `index` (maybe ejecting it) and logs it, rate-limited.
fn upstream_failed(pool: &PoolState, index: usize, err: &io::Error, stats: &FrontendStats) {
    stats.fanout_upstream_errors.fetch_add(1, Ordering::Relaxed);
    let Some(server) = pool.servers.get(index) else { return };
    let now = now_ms();
    let ejected = connect_failed(err.raw_os_error()).counts_against_server()
        && server.stats.on_connect_failure(&pool.eject, pool.may_eject(now), now);
    let allowed = UPSTREAM_LOG.allow(now);
    if ejected || allowed.is_some() {
        tracing::warn!(
            pool = %pool.name, server = %server.key, error = %err, ejected,
            skipped = allowed.unwrap_or(0), "fan-out request to server failed"
        );
    }
}

/// One request outstanding on a server: counted in the server's `active` (so that
/// least-connections compares requests in flight) until dropped, however the request ends.
struct Outstanding(Arc<ServerStats>);

impl Outstanding {
    fn new(stats: &Arc<ServerStats>) -> Outstanding {
        stats.active.fetch_add(1, Ordering::Relaxed);
        stats.on_assigned();
        Outstanding(stats.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.on_released();
    }
}

fn is_over(step: Step) -> bool {
    matches!(step, Step::Relay | Step::TimedOut | Step::Over)
}
