//! The routing snapshot: frontends, pools, their servers and built balancers, immutable and
//! swapped whole behind an `ArcSwap` by the control plane. Live per-server numbers live in
//! [`ServerStats`], which outlive snapshots so counters and ejections survive a rebuild.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use fulcrum_config::{AgentPull, Config, HealthCheck, ServerAddr, ServerState};
use fulcrum_core::balance::{Balancer, LoadView, Metric, PickInput, SHARE_ONE, ServerSpec, Tried};
use fulcrum_core::eject::{EjectPolicy, FailureOutcome, is_ejected};

use crate::queue::PoolQueue;
pub use crate::routes::{HttpRoutes, SniRoutes, StickyState};
use crate::stats::FrontendStats;
use crate::upstream_tls::TlsRegistry;

/// Live numbers of one server. Written by every worker, hence atomics, aligned to a cache
/// line so two servers' counters never share one.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ServerStats {
    pub active: AtomicU64,
    pub connections_total: AtomicU64,
    pub connect_failures: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub ejections: AtomicU64,
    consecutive_failures: AtomicU32,
    eject_streak: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Published by the pool's health checker: [`HEALTH_UP`] or [`HEALTH_DOWN`].
    health: AtomicU8,
    /// When the server last came back up (ms on the process clock); 0 = never was down.
    up_since_ms: AtomicU64,
    pub connect_time: Histogram,
    /// HTTP responses from this server by status class (1xx..5xx).
    pub http_responses: [AtomicU64; 5],
    /// The server's own last report (agent protocol, push): clients and queue length.
    reported_clients: AtomicU64,
    reported_queue: AtomicU64,
    /// When that report arrived (process clock ms); 0 = never.
    report_at_ms: AtomicU64,
    /// New clients sent to the server since its last report (connections or directory answers).
    assigned_since: AtomicU64,
    /// Connections to the server (counted in `assigned_since` or in the report) that ended
    /// since its last report.
    released_since: AtomicU64,
    /// What the server's agent (push or pull) says: [`AGENT_UP`], [`AGENT_DRAIN`], [`AGENT_DOWN`].
    agent_state: AtomicU8,
    /// Weight percentage from a pull agent ("75%"); 0 means none given (full weight).
    agent_weight_pct: AtomicU32,
    /// `maxconn:N` from a pull agent (0: none given) and when it was said (process clock ms).
    agent_maxconn: AtomicU32,
    agent_maxconn_at_ms: AtomicU64,
}

pub const AGENT_UP: u8 = 0;
pub const AGENT_DRAIN: u8 = 1;
pub const AGENT_DOWN: u8 = 2;

pub use crate::histogram::{CONNECT_BUCKETS, Histogram};

impl ServerStats {
    /// Records a report from the server's agent; the assignments counted since the previous
    /// one are now part of what it reports.
    pub fn on_report(&self, clients: u64, queue: u64, now_ms: u64) {
        self.reported_clients.store(clients, Ordering::Relaxed);
        self.reported_queue.store(queue, Ordering::Relaxed);
        self.assigned_since.store(0, Ordering::Relaxed);
        self.released_since.store(0, Ordering::Relaxed);
        self.report_at_ms.store(now_ms.max(1), Ordering::Relaxed);
    }

    /// Counts one new client sent to this server.
    pub fn on_assigned(&self) {
        self.assigned_since.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one end of a connection or session that [`on_assigned`](Self::on_assigned)
    /// counted (its `active` is given back by the caller).
    pub fn on_released(&self) {
        self.released_since.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections ended since the last report.
    pub fn released_since(&self) -> u64 {
        self.released_since.load(Ordering::Relaxed)
    }

    /// (clients, queue, assigned since) of a report no older than `ttl_ms`.
    pub fn fresh_report(&self, ttl_ms: u64, now_ms: u64) -> Option<(u64, u64, u64)> {
        let at = self.report_at_ms.load(Ordering::Relaxed);
        if at == 0 || now_ms.saturating_sub(at) > ttl_ms {
            return None;
        }
        Some((
            self.reported_clients.load(Ordering::Relaxed),
            self.reported_queue.load(Ordering::Relaxed),
            self.assigned_since.load(Ordering::Relaxed),
        ))
    }

    pub fn last_report_ms(&self) -> u64 {
        self.report_at_ms.load(Ordering::Relaxed)
    }

    pub fn set_agent_state(&self, state: u8) {
        self.agent_state.store(state, Ordering::Relaxed);
    }

    pub fn agent_state(&self) -> u8 {
        self.agent_state.load(Ordering::Relaxed)
    }

    pub fn agent_state_name(&self) -> &'static str {
        match self.agent_state() {
            AGENT_DRAIN => "drain",
            AGENT_DOWN => "down",
            _ => "up",
        }
    }

    /// Records the pull agent's `maxconn:N` from its latest reply (`None` or 0: it asks for no
    /// cap, so the configured `max_connections` applies).
    pub fn set_agent_maxconn(&self, maxconn: Option<u32>, now_ms: u64) {
        self.agent_maxconn.store(maxconn.unwrap_or(0), Ordering::Relaxed);
        self.agent_maxconn_at_ms.store(now_ms.max(1), Ordering::Relaxed);
    }

    /// The agent's `maxconn` if it was said within `ttl_ms`.
    pub fn agent_maxconn(&self, ttl_ms: u64, now_ms: u64) -> Option<u32> {
        let n = self.agent_maxconn.load(Ordering::Relaxed);
        let at = self.agent_maxconn_at_ms.load(Ordering::Relaxed);
        (n > 0 && now_ms.saturating_sub(at) <= ttl_ms).then_some(n)
    }

    /// Takes one of the server's connection slots: counts the client in `active`, unless a
    /// `cap` is given and reached. Check and increment are one atomic step, so workers racing
    /// for the last slot never take it twice.
    pub fn try_take_slot(&self, cap: Option<u64>) -> bool {
        match cap {
            None => {
                self.active.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(cap) => self
                .active
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| (a < cap).then_some(a + 1))
                .is_ok(),
        }
    }

    /// Sets the pull agent's weight percentage (0 = none given).
    pub fn set_agent_weight_pct(&self, pct: u32) {
        self.agent_weight_pct.store(pct, Ordering::Relaxed);
    }

    /// The part of its weight the server takes now, out of [`SHARE_ONE`]: the slow-start ramp
    /// (over `slow_start_ms`) times the agent's weight percentage. The balancer applies it as an
    /// effective weight (`LoadView::share`).
    pub fn share(&self, slow_start_ms: u64, now_ms: u64) -> u32 {
        let pct = self.agent_weight_pct.load(Ordering::Relaxed);
        let agent = if pct == 0 || pct >= 100 {
            u64::from(SHARE_ONE)
        } else {
            u64::from(SHARE_ONE) * u64::from(pct) / 100
        };
        let ramp = self.slow_start_share(slow_start_ms, now_ms);
        // Never zero: a server at 1 % in slow start still sees a little traffic.
        (agent * u64::from(ramp) / u64::from(SHARE_ONE)).max(1) as u32
    }

    pub fn health_name(&self) -> &'static str {
        if self.is_down() { "down" } else { "up" }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
}

pub const HEALTH_UP: u8 = 0;
pub const HEALTH_DOWN: u8 = 1;

impl ServerStats {
    pub fn is_down(&self) -> bool {
        self.health.load(Ordering::Relaxed) == HEALTH_DOWN
    }

    /// Publishes a health verdict; a down → up transition starts slow start at `now_ms`.
    pub fn set_health(&self, up: bool, now_ms: u64) {
        let new = if up { HEALTH_UP } else { HEALTH_DOWN };
        let old = self.health.swap(new, Ordering::Relaxed);
        if old == HEALTH_DOWN && up {
            self.up_since_ms.store(now_ms.max(1), Ordering::Relaxed);
        }
    }

    /// Part of its weight a server in slow start takes now, out of [`SHARE_ONE`]: rising
    /// linearly over `window_ms` from when it came back up.
    pub fn slow_start_share(&self, window_ms: u64, now_ms: u64) -> u32 {
        if window_ms == 0 {
            return SHARE_ONE;
        }
        let since = self.up_since_ms.load(Ordering::Relaxed);
        let elapsed = now_ms.saturating_sub(since);
        if since == 0 || elapsed >= window_ms {
            return SHARE_ONE;
        }
        // Never below a twentieth, so a server that just came up still sees some traffic.
        let share = u64::from(SHARE_ONE) * elapsed / window_ms;
        share.max(u64::from(SHARE_ONE / 20)) as u32
    }

    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        is_ejected(self.ejected_until_ms.load(Ordering::Relaxed), now_ms)
    }

    /// A connect that succeeded, for a stream whose end will tell whether the server worked
    /// ([`ServerStats::on_exchange_ok`]).
    pub(crate) fn on_connected(&self, took: Duration) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connect_time.record(took);
    }

    /// A connect or an answer that shows at once that the server works (fan-out).
    pub(crate) fn on_connect_success(&self, took: Duration) {
        self.on_connected(took);
        self.on_exchange_ok();
    }

    /// The server did its part of an exchange (it answered, or the client ended it): its run
    /// of failures is over. Called when a proxied connection ends, not at the connect, so a
    /// server that accepts and then resets every connection still runs up failures.
    pub(crate) fn on_exchange_ok(&self) {
        // Plain loads first: a store on every success would bounce the cache line between
        // workers for nothing.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.eject_streak.load(Ordering::Relaxed) != 0 {
            self.eject_streak.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed connect; returns true when this failure ejected the server.
    pub(crate) fn on_connect_failure(
        &self,
        policy: &EjectPolicy,
        may_eject: bool,
        now_ms: u64,
    ) -> bool {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        // Racing workers may both count the same failure run; an ejection a little early
        // or late is harmless, a lock here is not.
        let consecutive = self.consecutive_failures.load(Ordering::Relaxed);
        let streak = self.eject_streak.load(Ordering::Relaxed);
        match policy.on_failure(consecutive, streak, now_ms) {
            FailureOutcome::Counted(n) => {
                self.consecutive_failures.store(n, Ordering::Relaxed);
                false
            }
            // The pool's ejection share is used up: keep counting, eject later.
            FailureOutcome::Ejected { .. } if !may_eject => false,
            FailureOutcome::Ejected { until_ms, streak } => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                self.eject_streak.store(streak, Ordering::Relaxed);
                self.ejected_until_ms.store(until_ms, Ordering::Relaxed);
                self.ejections.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }
}

#[derive(Debug)]
pub struct ServerEntry {
    /// Stable identity, the address as configured (`host:port`).
    pub key: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: ServerState,
    /// The configured cap of proxied client connections (`max_connections`).
    pub max_connections: Option<u32>,
    pub stats: Arc<ServerStats>,
    /// The pool has TLS: the name the server's certificate is checked against (and its SNI).
    pub tls_name: Option<rustls_pki_types::ServerName<'static>>,
}

impl ServerEntry {
    /// The cap in force: the agent's fresh `maxconn:N` over the configured `max_connections`.
    pub fn cap(&self, agent_ttl_ms: u64, now_ms: u64) -> Option<u64> {
        self.stats.agent_maxconn(agent_ttl_ms, now_ms).or(self.max_connections).map(u64::from)
    }

    /// Whether the operator and the health checks both allow new connections.
    pub fn in_rotation(&self) -> bool {
        self.state == ServerState::Up
            && !self.stats.is_down()
            && self.stats.agent_state() == AGENT_UP
    }
}

impl PoolState {
    /// The server a client should try next: the admission step every protocol calls (TCP
    /// connections, UDP sessions, directory answers, fan-out requests). `client_hash` is
    /// [`fulcrum_core::balance::hash_ip`] of the client; `tried` and `exclude` are servers
    /// this client or request already has. Shares (slow start, agent weight) act as effective
    /// weights inside the algorithm, and panic mode is the last stage; see
    /// [`Balancer::admit`]. `None` only when no server may take the client at all.
    pub fn admit(&self, client_hash: u64, tried: &Tried, exclude: &[usize]) -> Option<usize> {
        let caps = if self.capped { CapBy::Active } else { CapBy::None };
        let input = PickInput { hash: client_hash, rand: fastrand::u64(..) };
        self.balancer.admit(&input, &self.view(exclude, caps), tried)
    }

    /// [`PoolState::admit`] for a directory answer: a server's load is what the directory
    /// counts (its report plus answers since, or its open connections), compared with its
    /// cap. Nothing is reserved: a directory hands out addresses, not connections.
    pub fn admit_directory(&self, client_hash: u64) -> Option<usize> {
        let caps = if self.capped { CapBy::Load } else { CapBy::None };
        let input = PickInput { hash: client_hash, rand: fastrand::u64(..) };
        self.balancer.admit(&input, &self.view(&[], caps), &Tried::new())
    }

    fn view<'a>(&'a self, exclude: &'a [usize], caps: CapBy) -> PoolView<'a> {
        PoolView {
            servers: &self.servers,
            now_ms: crate::clock::now_ms(),
            report_ttl_ms: self.report_ttl_ms,
            slow_start_ms: self.slow_start_ms,
            exclude,
            caps,
            agent_maxconn_ttl_ms: self.agent_maxconn_ttl_ms,
        }
    }

    /// Admits a client and takes a slot on its server (its `active` count includes the
    /// client from here on). A server another worker filled between the pick and the slot
    /// counts as tried, and the pick is made again.
    pub fn take_slot(&self, client_hash: u64, tried: &mut Tried) -> Result<usize, NoSlot> {
        loop {
            let Some(i) = self.admit(client_hash, tried, &[]) else {
                return Err(if self.any_full(tried) { NoSlot::Full } else { NoSlot::NoServer });
            };
            let Some(s) = self.servers.get(i) else { return Err(NoSlot::NoServer) };
            let cap = if self.capped {
                s.cap(self.agent_maxconn_ttl_ms, crate::clock::now_ms())
            } else {
                None
            };
            if s.stats.try_take_slot(cap) {
                return Ok(i);
            }
            // Bounded: each lost race fills one place of the fixed-size set.
            if !tried.insert(i) {
                return Err(NoSlot::Full);
            }
        }
    }

    /// Whether a server not in `tried` would take the client but for its cap.
    fn any_full(&self, tried: &Tried) -> bool {
        if !self.capped {
            return false;
        }
        let view = self.view(&[], CapBy::Active);
        (0..self.servers.len()).any(|i| {
            self.servers[i].weight > 0
                && view.eligible_in_panic(i)
                && !tried.contains(i)
                && !view.has_room(i)
        })
    }

    /// Takes a slot on server `i` itself (a sticky client's server), when it is eligible and
    /// has room; `false` sends the client through the normal pick.
    pub fn take_server(&self, i: usize) -> bool {
        let view = self.view(&[], if self.capped { CapBy::Active } else { CapBy::None });
        let Some(s) = self.servers.get(i) else { return false };
        if !view.eligible(i) || s.weight == 0 {
            return false;
        }
        let cap = if self.capped {
            s.cap(self.agent_maxconn_ttl_ms, crate::clock::now_ms())
        } else {
            None
        };
        s.stats.try_take_slot(cap)
    }

    /// A server slot of this pool was given back: the first waiting client looks.
    pub fn slot_freed(&self) {
        self.queue.wake_head();
    }

    /// Whether one more server may be ejected without passing `max_ejection_percent`.
    pub fn may_eject(&self, now_ms: u64) -> bool {
        let ejected = self.servers.iter().filter(|s| s.stats.is_ejected(now_ms)).count();
        (ejected + 1) * 100 <= self.max_ejection_percent as usize * self.servers.len()
    }
}

#[derive(Debug)]
pub struct PoolState {
    pub name: String,
    pub algorithm: fulcrum_core::balance::Algorithm,
    pub balancer: Balancer,
    pub servers: Vec<ServerEntry>,
    pub connect_timeout: Duration,
    /// `receive_buffer`: SO_RCVBUF of its server connections (`None`: autotuned).
    pub receive_buffer: Option<u32>,
    pub retries: u32,
    pub eject: EjectPolicy,
    pub max_ejection_percent: u32,
    pub slow_start: Duration,
    /// `slow_start` in ms, as the share computation wants it.
    pub slow_start_ms: u64,
    pub health: Option<HealthCheck>,
    pub report_ttl_ms: u64,
    pub agent_pull: Option<AgentPull>,
    /// Some server may have a cap (a configured `max_connections`, or an agent that may say
    /// `maxconn:N`); when false, picks skip the cap check entirely.
    pub capped: bool,
    /// How long a pull agent's `maxconn:N` holds without a new reply (0: no pull agent).
    pub agent_maxconn_ttl_ms: u64,
    /// Clients waiting for a slot; shared with the pool's earlier and later snapshots.
    pub queue: Arc<PoolQueue>,
    /// HTTP frontends: how to talk to the servers (`[pool.X.http]`).
    pub http: fulcrum_config::PoolHttp,
    /// `send_proxy`: a PROXY header first on every server connection (TCP).
    pub send_proxy: Option<fulcrum_config::ProxyVersion>,
    /// HTTP: `sticky = { cookie, ttl }`, with each server's cookie value.
    pub sticky: Option<StickyState>,
    /// HTTP: what hashing algorithms hash (`hash`); the client address by default.
    pub hash: fulcrum_core::route::HashKey,
    /// HTTP: what retries of sent requests may still spend (`retry_budget`).
    pub retry_budget: fulcrum_core::retry::RetryBudget,
    /// HTTP: retries made (connect failures and idempotent requests).
    pub http_retries: std::sync::atomic::AtomicU64,
    /// `[pool.X.tls]`: connections to the servers speak TLS.
    pub tls: Option<Arc<crate::upstream_tls::UpstreamTls>>,
}

/// Why [`PoolState::take_slot`] found no server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// None may take clients at all.
    NoServer,
    /// Some would, but each is at its cap.
    Full,
}

/// How a view judges a server's room under its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapBy {
    /// No server of the pool has a cap.
    None,
    /// Open proxied connections and sessions (`active`) against the cap.
    Active,
    /// The load a directory counts ([`Metric::Load`]) against the cap.
    Load,
}

/// The pool as the balancer sees it at one instant (built by [`PoolState::admit`]).
pub struct PoolView<'a> {
    pub servers: &'a [ServerEntry],
    pub now_ms: u64,
    /// A report older than this is stale: the balancer's own count is used instead.
    pub report_ttl_ms: u64,
    pub slow_start_ms: u64,
    /// Servers this request already has, beyond what `Tried` holds (a fan-out asking many).
    pub exclude: &'a [usize],
    pub caps: CapBy,
    pub agent_maxconn_ttl_ms: u64,
}

impl LoadView for PoolView<'_> {
    fn len(&self) -> usize {
        self.servers.len()
    }
    fn eligible(&self, i: usize) -> bool {
        self.eligible_in_panic(i)
            && self.servers.get(i).is_some_and(|s| !s.stats.is_ejected(self.now_ms))
    }
    /// Panic mode ignores passive ejection: when every server is ejected, trying them beats
    /// refusing every client (Envoy's panic mode).
    fn eligible_in_panic(&self, i: usize) -> bool {
        match self.servers.get(i) {
            Some(s) => s.in_rotation() && !self.exclude.contains(&i),
            None => false,
        }
    }
    fn share(&self, i: usize) -> u32 {
        self.servers.get(i).map_or(SHARE_ONE, |s| s.stats.share(self.slow_start_ms, self.now_ms))
    }
    fn active(&self, i: usize) -> u64 {
        self.servers.get(i).map_or(0, |s| s.stats.active.load(Ordering::Relaxed))
    }
    fn has_room(&self, i: usize) -> bool {
        let load = match self.caps {
            CapBy::None => return true,
            CapBy::Active => self.active(i),
            CapBy::Load => self.metric(i, Metric::Load),
        };
        self.servers
            .get(i)
            .and_then(|s| s.cap(self.agent_maxconn_ttl_ms, self.now_ms))
            .is_none_or(|cap| load < cap)
    }
    /// A fresh report plus what was assigned since, but never less than the connections the
    /// balancer itself has open to the server: a report is up to a report interval old, and
    /// least-load must never know less than least-connections does. Directory answers open
    /// no connection, so there the report rules. Sums saturate: a report of 2^64 − 1 clients
    /// is "full", not a wrap to 0.
    ///
    /// Clients are counted both ways since the report: + assigned, − ended. Counting only
    /// arrivals made a server that turns clients over quickly look busier with every client
    /// it had already finished, until its next report: a 2 ms server took 10 clients per
    /// 20 ms report and looked 10 busier, so least-load sent clients to the slow server that
    /// least-connections (which sees the ends) avoided. A queue is not a count of clients, so
    /// shortest-queue keeps adding arrivals only.
    fn metric(&self, i: usize, metric: Metric) -> u64 {
        let Some(s) = self.servers.get(i) else { return 0 };
        let live = s.stats.active.load(Ordering::Relaxed);
        match s.stats.fresh_report(self.report_ttl_ms, self.now_ms) {
            Some((clients, queue, assigned)) => match metric {
                Metric::Queue => queue.saturating_add(assigned).max(live),
                Metric::Load | Metric::Active => clients
                    .saturating_add(assigned)
                    .saturating_sub(s.stats.released_since())
                    .max(live),
            },
            None => live,
        }
    }
}

#[derive(Debug)]
pub struct FrontendState {
    /// Shared so a connection can keep it for its log line without copying the string.
    pub name: Arc<str>,
    pub pool: usize,
    /// HTTP: the frontend's routes, built once per snapshot (`None`: every request to `pool`).
    pub routes: Option<Arc<HttpRoutes>>,
    /// `tcp` and `https`: the routes by SNI (`None`: no ClientHello is read).
    pub sni: Option<Arc<SniRoutes>>,
    /// How long a client has to send its ClientHello when `sni` is set.
    pub sni_timeout: Duration,
    /// A `protocol = "http"` frontend.
    pub http: bool,
    pub idle_timeout: Duration,
    /// A client that takes no byte of the answers waiting for it for this long is closed.
    pub send_timeout: Duration,
    pub stats: Arc<FrontendStats>,
    /// `https`: the certificates in force (for metrics and the admin API; connections reach
    /// them through their accept side).
    pub tls: Option<Arc<crate::tls::TlsState>>,
    /// Which client addresses may connect (`allow`, `deny` and their files), checked by
    /// guard.rs at accept and per datagram.
    pub access: Arc<fulcrum_core::acl::Access>,
}

/// Everything a worker needs to route a new connection.
#[derive(Debug)]
pub struct Snapshot {
    pub frontends: Vec<FrontendState>,
    pub pools: Vec<Arc<PoolState>>,
}

/// Per-server stats by (pool, server key), kept by the control plane across snapshots.
pub type StatsRegistry = HashMap<(String, String), Arc<ServerStats>>;

/// Each pool's waiting line by pool name, kept by the control plane across snapshots.
pub type QueueRegistry = HashMap<String, Arc<PoolQueue>>;

impl Snapshot {
    pub fn frontend(&self, name: &str) -> Option<&FrontendState> {
        self.frontends.iter().find(|f| &*f.name == name)
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<PoolState>> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Builds the snapshot for `config`. Host names are taken from `names` (looked up earlier,
    /// off the control thread: [`resolve_names`], or by the resolver task); names not there
    /// are looked up here, which blocks (the start, or a change that brings a name nobody
    /// looked up yet). A name is one server per address, keyed `host:port#ip`, each with the
    /// configured weight and state.
    pub fn build(
        config: &Config,
        registry: &mut StatsRegistry,
        queues: &mut QueueRegistry,
        frontend_stats: &HashMap<String, Arc<FrontendStats>>,
        names: &mut Names,
        tls: &mut TlsRegistry,
    ) -> Result<Snapshot, String> {
        let missing: Vec<&ServerAddr> = config
            .pools
            .iter()
            .flat_map(|p| &p.servers)
            .map(|s| &s.address)
            .filter(|a| a.socket().is_none() && !names.contains_key(&a.to_string()))
            .collect();
        if !missing.is_empty() {
            let (found, failed) = lookup_names(config, &missing);
            if let Some((_, e)) = failed.into_iter().next() {
                return Err(e);
            }
            names.extend(found);
        }
        let mut pools = Vec::with_capacity(config.pools.len());
        for p in &config.pools {
            // Files are read here, on the control plane, and only when they or the settings
            // changed; a bad one fails the change with its reason.
            let pool_tls = match &p.tls {
                Some(t) => Some(tls.get(&p.name, t).map_err(|e| format!("pool {}: {e}", p.name))?),
                None => None,
            };
            let mut servers = Vec::with_capacity(p.servers.len());
            let mut add = |key: String, addr: SocketAddr, s: &fulcrum_config::Server| {
                let stats = registry.entry((p.name.clone(), key.clone())).or_default().clone();
                servers.push(ServerEntry {
                    key,
                    addr,
                    weight: s.weight,
                    state: s.state,
                    max_connections: s.max_connections,
                    stats,
                    tls_name: pool_tls.as_ref().map(|t| t.name_for(&s.address, addr)),
                });
            };
            for s in &p.servers {
                let key = s.address.to_string();
                match s.address.socket() {
                    Some(a) => add(key, a, s),
                    None => {
                        for &a in names.get(&key).map_or(&[][..], Vec::as_slice) {
                            add(format!("{key}#{}", a.ip()), a, s);
                        }
                    }
                }
            }
            let specs: Vec<ServerSpec<'_>> =
                servers.iter().map(|s| ServerSpec { key: &s.key, weight: s.weight }).collect();
            let balancer = Balancer::new(p.algorithm, &specs);
            let sticky = p.sticky.as_ref().map(|st| StickyState::new(st, &p.name, &servers));
            let queue = queues.entry(p.name.clone()).or_default().clone();
            queue.configure(p.queue);
            // Three polls missed (and the last one's timeout) before the agent's cap lapses.
            let agent_maxconn_ttl_ms = p.agent_pull.as_ref().map_or(0, |a| {
                u64::try_from((a.interval * 3 + a.timeout).as_millis()).unwrap_or(u64::MAX)
            });
            pools.push(Arc::new(PoolState {
                name: p.name.clone(),
                algorithm: p.algorithm,
                balancer,
                servers,
                connect_timeout: p.connect_timeout,
                receive_buffer: p.receive_buffer,
                retries: p.retries,
                eject: p.eject,
                max_ejection_percent: p.max_ejection_percent,
                slow_start: p.slow_start,
                slow_start_ms: u64::try_from(p.slow_start.as_millis()).unwrap_or(u64::MAX),
                health: p.health.clone(),
                // A pulled count is a report too, and must stay fresh until the next poll.
                report_ttl_ms: config
                    .agent
                    .as_ref()
                    .map_or(3_000, |a| a.report_ttl().as_millis() as u64)
                    .max(p.agent_pull.as_ref().map_or(0, |a| {
                        u64::try_from(a.interval.as_millis()).unwrap_or(u64::MAX).saturating_mul(3)
                    })),
                agent_pull: p.agent_pull.clone(),
                capped: agent_maxconn_ttl_ms > 0
                    || p.servers.iter().any(|s| s.max_connections.is_some()),
                agent_maxconn_ttl_ms,
                queue,
                http: p.http,
                hash: p.hash.clone(),
                sticky,
                send_proxy: p.send_proxy,
                retry_budget: fulcrum_core::retry::RetryBudget::new(p.retry_budget_percent),
                http_retries: std::sync::atomic::AtomicU64::new(0),
                tls: pool_tls,
            }));
        }
        let mut frontends = Vec::with_capacity(config.frontends.len());
        for f in &config.frontends {
            let pool = config.pools.iter().position(|p| p.name == f.pool).ok_or_else(|| {
                format!("frontend {}: pool \"{}\" is not defined", f.name, f.pool)
            })?;
            let sni = SniRoutes::build(f, config, &pools)
                .map_err(|e| format!("frontend {}: {e}", f.name))?
                .map(Arc::new);
            let routes = if !f.routes.iter().any(|r| !r.is_sni()) {
                None
            } else {
                Some(Arc::new(
                    HttpRoutes::build(f, config)
                        .map_err(|e| format!("frontend {}: {e}", f.name))?,
                ))
            };
            frontends.push(FrontendState {
                name: Arc::from(f.name.as_str()),
                pool,
                routes,
                sni,
                sni_timeout: f.sni_timeout,
                http: f.protocol.is_http(),
                idle_timeout: f.idle_timeout,
                send_timeout: f.send_timeout,
                stats: frontend_stats.get(&f.name).cloned().unwrap_or_default(),
                tls: None,
                access: f.access.clone(),
            });
        }
        Ok(Snapshot { frontends, pools })
    }
}

/// Looked-up host names of servers: each configured `host:port`'s addresses.
pub type Names = HashMap<String, Vec<SocketAddr>>;

/// Looks up every server host name of `config` (literal addresses need nothing) with its
/// `[resolver]`. Blocking: run it on a blocking thread, then hand the result to the engine, so
/// a slow name server never holds up the control thread or the controller's lock. Names that
/// failed come back apart, `(host:port, error)`: the engine may still have good addresses.
pub fn resolve_names(config: &Config) -> (Names, Vec<(String, String)>) {
    let addrs: Vec<&ServerAddr> = config
        .pools
        .iter()
        .flat_map(|p| &p.servers)
        .map(|s| &s.address)
        .filter(|a| a.socket().is_none())
        .collect();
    lookup_names(config, &addrs)
}

/// Looks up the hosts of `addrs` (each host once) with `config`'s `[resolver]`, blocking.
fn lookup_names(config: &Config, addrs: &[&ServerAddr]) -> (Names, Vec<(String, String)>) {
    let mut hosts: Vec<String> = addrs.iter().map(|a| a.host.clone()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let answers = crate::resolve::lookup_blocking(config.resolver.as_ref(), &hosts);
    let mut names = Names::new();
    let mut failed = Vec::new();
    for a in addrs {
        let key = a.to_string();
        let answer = hosts.binary_search(&a.host).ok().and_then(|i| answers.get(i));
        match answer {
            Some(Ok(ans)) => {
                let mut list: Vec<SocketAddr> =
                    ans.addrs.iter().map(|&ip| SocketAddr::new(ip, a.port)).collect();
                list.sort_unstable();
                list.dedup();
                names.insert(key, list);
            }
            Some(Err(e)) => failed.push((key, format!("server {a}: {e}"))),
            None => failed.push((key, format!("server {a}: not looked up"))),
        }
    }
    (names, failed)
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
