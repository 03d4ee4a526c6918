//! The routing snapshot: frontends, pools, their servers and built balancers, immutable and
//! swapped whole behind an `ArcSwap` by the control plane. Live per-server numbers live in
//! [`ServerStats`], which outlive snapshots so counters and ejections survive a rebuild.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use fulcrum_config::{Config, ServerAddr};
use fulcrum_core::balance::{Balancer, LoadView, ServerSpec};
use fulcrum_core::eject::{EjectPolicy, FailureOutcome, is_ejected};

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
}

impl ServerStats {
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        is_ejected(self.ejected_until_ms.load(Ordering::Relaxed), now_ms)
    }

    pub(crate) fn on_connect_success(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
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
    pub(crate) fn on_connect_failure(&self, policy: &EjectPolicy, now_ms: u64) -> bool {
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
    pub stats: Arc<ServerStats>,
}

#[derive(Debug)]
pub struct PoolState {
    pub name: String,
    pub balancer: Balancer,
    pub servers: Vec<ServerEntry>,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub eject: EjectPolicy,
}

/// The pool as the balancer sees it at one instant. `panic` ignores passive ejection: when
/// every server is ejected, trying them beats refusing every client (Envoy's panic mode).
pub struct PoolView<'a> {
    pub servers: &'a [ServerEntry],
    pub now_ms: u64,
    pub panic: bool,
}

impl LoadView for PoolView<'_> {
    fn len(&self) -> usize {
        self.servers.len()
    }
    fn eligible(&self, i: usize) -> bool {
        match self.servers.get(i) {
            Some(s) => self.panic || !s.stats.is_ejected(self.now_ms),
            None => false,
        }
    }
    fn active(&self, i: usize) -> u64 {
        self.servers.get(i).map_or(0, |s| s.stats.active.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
pub struct FrontendState {
    /// Shared so a connection can keep it for its log line without copying the string.
    pub name: Arc<str>,
    pub pool: usize,
    pub idle_timeout: Duration,
}

/// Everything a worker needs to route a new connection.
#[derive(Debug)]
pub struct Snapshot {
    pub frontends: Vec<FrontendState>,
    pub pools: Vec<Arc<PoolState>>,
}

/// Per-server stats by (pool, server key), kept by the control plane across snapshots.
pub type StatsRegistry = HashMap<(String, String), Arc<ServerStats>>;

impl Snapshot {
    /// Builds the snapshot for `config`, resolving host names (blocking: control plane only).
    pub fn build(config: &Config, registry: &mut StatsRegistry) -> Result<Snapshot, String> {
        let mut pools = Vec::with_capacity(config.pools.len());
        for p in &config.pools {
            let mut servers = Vec::with_capacity(p.servers.len());
            for s in &p.servers {
                let key = s.address.to_string();
                let addr = resolve(&s.address)?;
                let stats = registry.entry((p.name.clone(), key.clone())).or_default().clone();
                servers.push(ServerEntry { key, addr, weight: s.weight, stats });
            }
            let specs: Vec<ServerSpec<'_>> =
                servers.iter().map(|s| ServerSpec { key: &s.key, weight: s.weight }).collect();
            let balancer = Balancer::new(p.algorithm, &specs);
            pools.push(Arc::new(PoolState {
                name: p.name.clone(),
                balancer,
                servers,
                connect_timeout: p.connect_timeout,
                retries: p.retries,
                eject: p.eject,
            }));
        }
        let mut frontends = Vec::with_capacity(config.frontends.len());
        for f in &config.frontends {
            let pool = config.pools.iter().position(|p| p.name == f.pool).ok_or_else(|| {
                format!("frontend {}: pool \"{}\" is not defined", f.name, f.pool)
            })?;
            frontends.push(FrontendState {
                name: Arc::from(f.name.as_str()),
                pool,
                idle_timeout: f.idle_timeout,
            });
        }
        Ok(Snapshot { frontends, pools })
    }
}

fn resolve(a: &ServerAddr) -> Result<SocketAddr, String> {
    if let Some(s) = a.socket() {
        return Ok(s);
    }
    let mut addrs = (a.host.as_str(), a.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve server {a}: {e}"))?;
    addrs.next().ok_or_else(|| format!("cannot resolve server {a}: no address"))
}
