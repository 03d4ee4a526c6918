//! The engine: binds every listener, starts one thread per worker (each a current-thread
//! tokio runtime running its own accept loops), holds the shared routing snapshot, and stops
//! gracefully: stop accepting, let open connections finish up to the drain timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use fulcrum_config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::now_ms;
pub use crate::copy::SpliceMode;
use crate::listener::{bind_group, is_resource_error};
use crate::ratelog::RateLimit;
use crate::state::{Snapshot, StatsRegistry};
use crate::stats::{FrontendStats, Limits};

/// Settings that are not part of the config file's routing model.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub splice: SpliceMode,
    /// Fallback for the config's `max_connections` when it has none.
    pub default_max_connections: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { splice: SpliceMode::Auto, default_max_connections: 10_000 }
    }
}

/// What every worker shares. Read-mostly: the snapshot is swapped whole, counters are atomics.
pub struct Shared {
    pub state: ArcSwap<Snapshot>,
    pub limits: Limits,
    pub frontend_stats: Vec<FrontendStats>,
    /// Per-frontend limits (`frontend.NAME.max_connections`), checked on top of `limits`.
    pub frontend_limits: Vec<Option<Limits>>,
    pub access_log: bool,
    pub splice: SpliceMode,
}

#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

pub struct Engine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
    addrs: Vec<(String, SocketAddr)>,
    workers: usize,
}

impl Engine {
    /// Binds all listeners and starts the workers. Fails, with one line naming the cause,
    /// when a listener cannot be bound or a server name cannot be resolved.
    pub fn start(config: &Config, opts: EngineOptions) -> Result<Engine, StartError> {
        let workers = config
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let mut registry = StatsRegistry::new();
        let snapshot = Snapshot::build(config, &mut registry).map_err(StartError)?;
        let mut groups = Vec::with_capacity(config.frontends.len());
        let mut addrs = Vec::new();
        for f in &config.frontends {
            let group = bind_group(f.bind, workers).map_err(StartError)?;
            let addr = group
                .first()
                .and_then(|l| l.local_addr().ok())
                .ok_or_else(|| StartError(format!("cannot bind {}: no socket", f.bind)))?;
            addrs.push((f.name.clone(), addr));
            groups.push(group);
        }
        let max = config.max_connections.unwrap_or(opts.default_max_connections);
        let shared = Arc::new(Shared {
            state: ArcSwap::from_pointee(snapshot),
            limits: Limits::new(max),
            frontend_stats: config.frontends.iter().map(|_| FrontendStats::default()).collect(),
            frontend_limits: config
                .frontends
                .iter()
                .map(|f| f.max_connections.map(Limits::new))
                .collect(),
            access_log: config.access_log,
            splice: opts.splice,
        });
        let stop = CancellationToken::new();
        let drain = config.drain_timeout;
        let mut threads = Vec::with_capacity(workers);
        for w in 0..workers {
            // Each worker takes the w-th socket of every frontend's group.
            let mine: Vec<(usize, std::net::TcpListener)> = groups
                .iter_mut()
                .enumerate()
                .filter_map(|(fi, g)| (!g.is_empty()).then(|| (fi, g.remove(0))))
                .collect();
            let shared = shared.clone();
            let stop = stop.clone();
            let t = std::thread::Builder::new()
                .name(format!("fulcrum-w{w}"))
                .spawn(move || worker(w, shared, mine, stop, drain))
                .map_err(|e| StartError(format!("cannot start worker thread: {e}")))?;
            threads.push(t);
        }
        Ok(Engine { shared, threads, stop, addrs, workers })
    }

    /// Each frontend's name and the address it listens on (with the kernel's port for port 0).
    pub fn local_addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    pub fn local_addr(&self, frontend: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == frontend).map(|(_, a)| *a)
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Current routing snapshot (for stats and tests).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.state.load_full()
    }

    /// Stops accepting; open connections get the drain timeout to finish.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits until every worker has stopped (after [`Engine::shutdown`]).
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn worker(
    id: usize,
    shared: Arc<Shared>,
    listeners: Vec<(usize, std::net::TcpListener)>,
    stop: CancellationToken,
    drain: Duration,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot start worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        let tracker = TaskTracker::new();
        let mut accept_loops = Vec::new();
        for (fi, l) in listeners {
            match TcpListener::from_std(l) {
                Ok(l) => accept_loops.push(tokio::spawn(accept_loop(
                    shared.clone(),
                    fi,
                    l,
                    stop.clone(),
                    tracker.clone(),
                ))),
                Err(e) => tracing::error!(worker = id, error = %e, "cannot register listener"),
            }
        }
        stop.cancelled().await;
        for a in accept_loops {
            let _ = a.await;
        }
        tracker.close();
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::warn!(
                worker = id,
                open = tracker.len(),
                "drain timeout reached: closing the connections still open"
            );
        }
    });
}

static ACCEPT_ERR_LOG: RateLimit = RateLimit::new(1_000);

async fn accept_loop(
    shared: Arc<Shared>,
    fe: usize,
    listener: TcpListener,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(5);
    let own = shared.frontend_limits.get(fe).and_then(Option::as_ref);
    loop {
        // Accept backpressure: at a limit, leave new clients in the kernel's backlog.
        for limits in std::iter::once(&shared.limits).chain(own) {
            if wait_below(limits, &stop).await.is_err() {
                return;
            }
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                // Other workers may have filled the limit while this one waited in accept:
                // the slot is taken atomically, and the client waits (accepted, unserved)
                // until one frees. At most one client per accept loop waits like this.
                if acquire(&shared.limits, &stop).await.is_err() {
                    return;
                }
                if let Some(l) = own
                    && acquire(l, &stop).await.is_err()
                {
                    shared.limits.release();
                    return;
                }
                let shared = shared.clone();
                tracker.spawn(async move {
                    let guard = ReleaseOnDrop(shared.clone(), fe);
                    crate::tcp::serve(shared, fe, stream, peer).await;
                    drop(guard);
                });
            }
            Err(e) => {
                if let Some(stats) = shared.frontend_stats.get(fe) {
                    stats.accept_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(skipped) = ACCEPT_ERR_LOG.allow(now_ms()) {
                    tracing::warn!(error = %e, skipped, "accept failed");
                }
                if is_resource_error(&e) {
                    // Out of descriptors or memory: wait for connections to close.
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}

/// Takes a slot of `limits`, waiting for one to free; `Err` when the worker is stopping.
async fn acquire(limits: &Limits, stop: &CancellationToken) -> Result<(), ()> {
    loop {
        if limits.try_acquire() {
            return Ok(());
        }
        wait_below(limits, stop).await?;
    }
}

/// Waits until `limits` has room; `Err` when the worker is stopping.
async fn wait_below(limits: &Limits, stop: &CancellationToken) -> Result<(), ()> {
    while limits.full() {
        let freed = limits.freed().notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if !limits.full() {
            break;
        }
        tokio::select! {
            () = freed => {}
            () = stop.cancelled() => return Err(()),
            // Another worker may take the freed slot first; look again now and then.
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    Ok(())
}

/// Releases the connection slots however the connection task ends.
struct ReleaseOnDrop(Arc<Shared>, usize);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.limits.release();
        if let Some(Some(l)) = self.0.frontend_limits.get(self.1) {
            l.release();
        }
    }
}
