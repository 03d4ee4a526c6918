//! The engine: one thread per worker (each a current-thread tokio runtime running its own
//! accept loops), the shared routing snapshot, and the listener set. `apply` moves the whole
//! data plane to a new config: it binds new listeners first (so a bind error changes
//! nothing), swaps the snapshot in one store, then tells workers which accept loops to start
//! and stop. Open connections keep the pool they started with and are never cut.
//! Stopping is graceful: accept loops end, open connections get the drain timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use fulcrum_config::{Config, Protocol};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::context::{AcceptCtx, Service, Shared, SpliceMode};
use crate::context::{Peer, Sock, WorkerCmd};
use crate::ledger::Ledger;
use crate::listener::{bind_group, bind_udp_group};
use crate::resolve::{NameSet, NameUse};
use crate::state::{Names, QueueRegistry, Snapshot, StatsRegistry};
use crate::stats::{FrontendStats, Limits};
use crate::tls::{Refresh, TlsStore};
use crate::upstream_tls::TlsRegistry;

/// Settings that are not part of the config file's routing model.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub splice: SpliceMode,
    /// Fallback for the config's `max_connections` when it has none.
    pub default_max_connections: usize,
    /// A busy worker yields its core once before it blocks (see `park.rs`).
    pub park_yield: bool,
    /// Descriptors per-client sockets may hold together (`stats::descriptor_budget`).
    pub descriptor_budget: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            splice: SpliceMode::Auto,
            default_max_connections: 10_000,
            park_yield: true,
            descriptor_budget: 1_000_000,
        }
    }
}

#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A frontend's bound listener group, as the engine remembers it.
struct Bound {
    local: SocketAddr,
    ctx: Arc<AcceptCtx>,
    /// The engine's own descriptor of each worker's socket, so that a reload can hand the same
    /// sockets to new accept loops: the listening socket, with the handshakes in its backlog,
    /// outlives the loops that accept from it.
    group: Vec<Sock>,
}

impl Bound {
    /// Whether this listener group can keep serving `f` as it is now configured (anything
    /// bound into the accept side changed means a rebind).
    fn serves(&self, f: &fulcrum_config::Frontend) -> bool {
        let b = &self.ctx.frontend;
        b.bind == f.bind
            && b.max_connections == f.max_connections
            && b.protocol == f.protocol
            && b.mode == f.mode
            && b.session_timeout == f.session_timeout
            && b.max_sessions == f.max_sessions
            && b.max_sessions_per_source == f.max_sessions_per_source
            && b.sessions == f.sessions
            && b.limits == f.limits
    }

    /// Whether the sockets themselves can serve `f` (same address and protocol), so that a
    /// change of the other settings needs new accept loops but no new sockets.
    fn same_sockets(&self, f: &fulcrum_config::Frontend) -> bool {
        let b = &self.ctx.frontend;
        b.bind == f.bind && b.protocol == f.protocol
    }
}

pub struct Engine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    cmds: Vec<mpsc::UnboundedSender<WorkerCmd>>,
    stop: CancellationToken,
    bound: Vec<(String, Bound)>,
    /// Host names resolved for the current config, reused by later changes.
    names: Names,
    /// The names in use, published after every change for the resolver task.
    name_set: watch::Sender<Arc<NameSet>>,
    /// Each `https` frontend's certificates, swapped in place by reloads and file changes.
    certs: TlsStore,
    /// The files the certificates were read from, published after every change for the
    /// certificate watcher.
    tls_files: watch::Sender<Arc<Vec<PathBuf>>>,
    registry: StatsRegistry,
    queues: QueueRegistry,
    /// Each pool's TLS to its servers, built when its settings or files change.
    tls: TlsRegistry,
    frontend_stats: HashMap<String, Arc<FrontendStats>>,
    generation: AtomicU64,
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
        let max = config.max_connections.unwrap_or(opts.default_max_connections);
        let (cmds, rxs): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let shared = Arc::new(Shared {
            state: ArcSwap::from_pointee(Snapshot { frontends: Vec::new(), pools: Vec::new() }),
            limits: Limits::new(max),
            descriptors: Limits::new(opts.descriptor_budget),
            deciding: Limits::new(crate::admit::DECIDING_MAX),
            access_log: config.access_log.into(),
            splice: opts.splice,
            park_yield: opts.park_yield,
            peers: cmds
                .iter()
                .map(|tx| Peer {
                    load: AtomicUsize::new(0),
                    tx: tx.clone(),
                    cut: Default::default(),
                })
                .collect(),
            guard: Default::default(),
        });
        let stop = CancellationToken::new();
        let drain = config.drain_timeout;
        let mut threads = Vec::with_capacity(workers);
        for (w, rx) in rxs.into_iter().enumerate() {
            let shared = shared.clone();
            let stop = stop.clone();
            let t = std::thread::Builder::new()
                .name(format!("fulcrum-w{w}"))
                .spawn(move || worker(w, shared, rx, stop, drain))
                .map_err(|e| StartError(format!("cannot start worker thread: {e}")))?;
            threads.push(t);
        }
        let mut engine = Engine {
            shared,
            threads,
            cmds,
            stop,
            bound: Vec::new(),
            names: Names::new(),
            name_set: watch::Sender::new(Arc::default()),
            certs: TlsStore::default(),
            tls_files: watch::Sender::new(Arc::default()),
            registry: StatsRegistry::new(),
            queues: QueueRegistry::new(),
            tls: TlsRegistry::default(),
            frontend_stats: HashMap::new(),
            generation: AtomicU64::new(0),
            workers,
        };
        engine.apply(config).map_err(StartError)?;
        Ok(engine)
    }

    /// Moves the data plane to `config`. On error nothing changed. Listeners whose frontend
    /// kept its address stay open (no client sees a refused connection during a reload).
    pub fn apply(&mut self, config: &Config) -> Result<(), String> {
        for f in &config.frontends {
            self.frontend_stats.entry(f.name.clone()).or_default();
        }
        self.apply_with(config, Names::new())
    }

    /// [`Engine::apply`] with host names resolved beforehand (`state::resolve_names` on a
    /// blocking thread, or the resolver task); they replace what this engine had for those
    /// names. Names this engine resolved before are reused; only a name in neither is resolved
    /// here, blocking.
    pub fn apply_with(&mut self, config: &Config, fresh: Names) -> Result<(), String> {
        self.change(config, fresh, false)
    }

    /// [`Engine::apply_with`] for a reload: the certificate files of every `https` frontend
    /// are read again too, and those whose contents changed are replaced (open connections
    /// keep theirs). A file that cannot be loaded fails the reload and changes nothing.
    pub fn reload_with(&mut self, config: &Config, fresh: Names) -> Result<(), String> {
        self.change(config, fresh, true)
    }

    fn change(&mut self, config: &Config, fresh: Names, reread_tls: bool) -> Result<(), String> {
        let mut names = self.names.clone();
        names.extend(fresh);
        let mut snapshot = Snapshot::build(
            config,
            &mut self.registry,
            &mut self.queues,
            &self.frontend_stats,
            &mut names,
            &mut self.tls,
        )?;
        // Certificates are read here, on the control plane: a bad file stops the change
        // with its reason, and every frontend keeps what it had.
        let tls = self.certs.prepare(config, reread_tls)?;
        for f in &mut snapshot.frontends {
            f.tls = tls.get(&f.name);
        }
        // Bind what is new or moved before touching anything; a frontend whose address and
        // protocol are unchanged keeps its sockets (new descriptors of them) even when its
        // other settings changed, so no handshake in a backlog is ever reset by a reload.
        let mut fresh: Vec<(String, Bound, Vec<Sock>)> = Vec::new();
        for f in &config.frontends {
            let old = self.bound.iter().find(|(n, _)| n == &f.name).map(|(_, b)| b);
            if old.is_some_and(|b| b.serves(f)) {
                continue;
            }
            let group: Vec<Sock> = match old.filter(|b| b.same_sockets(f)) {
                Some(b) => {
                    b.group.iter().map(Sock::try_clone).collect::<std::io::Result<_>>().map_err(
                        |e| format!("frontend {}: cannot reuse its sockets: {e}", f.name),
                    )?
                }
                None => match f.protocol {
                    Protocol::Tcp | Protocol::Directory | Protocol::Http | Protocol::Https => {
                        bind_group(f.bind, self.workers)?.into_iter().map(Sock::Tcp).collect()
                    }
                    Protocol::DirectoryUdp | Protocol::Udp => {
                        bind_udp_group(f.bind, self.workers)?.into_iter().map(Sock::Udp).collect()
                    }
                },
            };
            let local = group
                .first()
                .and_then(|l| match l {
                    Sock::Tcp(l) => l.local_addr().ok(),
                    Sock::Udp(u) => u.local_addr().ok(),
                })
                .ok_or_else(|| format!("cannot bind {}: no socket", f.bind))?;
            // The workers' descriptors; the engine keeps `group`.
            let to_workers = group
                .iter()
                .map(Sock::try_clone)
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| format!("frontend {}: cannot share its sockets: {e}", f.name))?;
            let ctx = Arc::new(AcceptCtx {
                name: Arc::from(f.name.as_str()),
                stats: self.frontend_stats.get(&f.name).cloned().unwrap_or_default(),
                limits: f.max_connections.map(Limits::new),
                generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
                protocol: f.protocol,
                service: Service::of(f),
                frontend: f.clone(),
                retired: self.stop.child_token(),
                tls: tls.get(&f.name),
            });
            let b = Bound { local, ctx, group };
            fresh.push((f.name.clone(), b, to_workers));
        }
        self.shared.state.store(Arc::new(snapshot));
        self.certs.commit(tls);
        // Access lists may have changed: UDP sessions check their clients again.
        self.shared.guard.changed();
        for f in &config.frontends {
            if let Some(s) = self.frontend_stats.get(&f.name) {
                s.clients.set_capacity(f.limits.max_clients);
            }
        }
        // A change may have made room (servers added, caps raised): waiting clients look.
        for q in self.queues.values() {
            q.wake_head();
        }
        self.shared.access_log.store(config.access_log, Ordering::Relaxed);
        // New accept loops first, then the old ones close: on every worker some loop is
        // always on the socket, and the socket itself never closes while it is kept.
        let mut replaced = Vec::new();
        let mut kept = Vec::new();
        for (name, b) in self.bound.drain(..) {
            let stays = config.frontends.iter().any(|f| f.name == name && b.serves(f));
            if stays {
                kept.push((name, b));
            } else {
                replaced.push(b);
            }
        }
        self.bound = kept;
        for (name, b, group) in fresh {
            for (tx, l) in self.cmds.iter().zip(group) {
                let _ = tx.send(WorkerCmd::Listen(b.ctx.clone(), l));
            }
            self.bound.push((name, b));
        }
        for b in replaced {
            b.ctx.retired.cancel();
            for tx in &self.cmds {
                let _ = tx.send(WorkerCmd::Close(b.ctx.name.clone(), b.ctx.generation));
            }
        }
        // Keep the registries from growing with servers and frontends long gone.
        let snapshot = self.shared.state.load();
        self.registry.retain(|(pool, key), _| {
            snapshot.pool(pool).is_some_and(|p| p.servers.iter().any(|s| &s.key == key))
        });
        self.frontend_stats.retain(|name, _| config.frontends.iter().any(|f| &f.name == name));
        self.queues.retain(|name, _| config.pools.iter().any(|p| &p.name == name));
        self.tls.retain(|name| config.pools.iter().any(|p| p.name == name && p.tls.is_some()));
        names.retain(|key, _| {
            config.pools.iter().flat_map(|p| &p.servers).any(|s| &s.address.to_string() == key)
        });
        self.names = names;
        self.publish_names(config);
        let files = Arc::new(self.certs.files());
        self.tls_files.send_if_modified(|old| {
            let changed = *old != files;
            if changed {
                *old = files;
            }
            changed
        });
        Ok(())
    }

    /// Reads the certificate files of every `https` frontend again and swaps in those whose
    /// contents changed, each frontend on its own (a bad file is reported and its frontend
    /// keeps the certificates it has). Nothing else changes; open connections are untouched.
    pub fn refresh_certificates(&self) -> Vec<(String, Refresh)> {
        self.certs.refresh()
    }

    /// The certificate files in use, updated after every change.
    pub fn watch_tls_files(&self) -> watch::Receiver<Arc<Vec<PathBuf>>> {
        self.tls_files.subscribe()
    }

    fn publish_names(&self, config: &Config) {
        let names = config
            .pools
            .iter()
            .flat_map(|p| p.servers.iter().map(move |s| (p, &s.address)))
            .filter(|(_, a)| a.socket().is_none())
            .map(|(p, a)| {
                let key = a.to_string();
                NameUse {
                    addrs: self.names.get(&key).cloned().unwrap_or_default(),
                    key,
                    host: a.host.clone(),
                    port: a.port,
                    interval: p.resolve_interval,
                }
            })
            .collect();
        let set = NameSet { settings: config.resolver.clone(), names };
        self.name_set.send_if_modified(|old| {
            let changed = **old != set;
            if changed {
                *old = Arc::new(set);
            }
            changed
        });
    }

    /// The host names in use and their addresses, updated after every change.
    pub fn watch_names(&self) -> watch::Receiver<Arc<NameSet>> {
        self.name_set.subscribe()
    }

    /// The addresses each host name in use has now, by configured `host:port`.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Each frontend's name and the address it listens on (with the kernel's port for port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.bound.iter().map(|(n, b)| (n.clone(), b.local)).collect()
    }

    pub fn local_addr(&self, frontend: &str) -> Option<SocketAddr> {
        self.bound.iter().find(|(n, _)| n == frontend).map(|(_, b)| b.local)
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Current routing snapshot (for the admin API, metrics and tests).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.state.load_full()
    }

    /// Stops accepting; open connections get the drain timeout to finish.
    pub fn shutdown(&mut self) {
        self.stop.cancel();
        // The engine's own descriptors of the listening sockets: without them the sockets
        // close as the workers' accept loops end, and new clients are refused, not queued.
        for (_, b) in &mut self.bound {
            b.group.clear();
        }
    }

    /// Waits until every worker has stopped (after [`Engine::shutdown`]).
    pub fn join(&mut self) {
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
    mut cmds: mpsc::UnboundedReceiver<WorkerCmd>,
    stop: CancellationToken,
    drain: Duration,
) {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    if shared.park_yield {
        builder.on_thread_park(crate::park::on_park).on_thread_unpark(crate::park::on_unpark);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot start worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        tokio::spawn(keep_timer_wake_near());
        let tracker = TaskTracker::new();
        // Accept loops by (frontend, generation), each with its own stop token.
        let mut loops: Vec<(Arc<str>, u64, CancellationToken, tokio::task::JoinHandle<()>)> =
            Vec::new();
        loop {
            let cmd = tokio::select! {
                c = cmds.recv() => c,
                () = stop.cancelled() => None,
            };
            match cmd {
                Some(WorkerCmd::Listen(ctx, sock)) => {
                    let token = stop.child_token();
                    let (name, generation) = (ctx.name.clone(), ctx.generation);
                    let h = match sock {
                        Sock::Tcp(l) => crate::accept::register_listener(l).map(|l| {
                            tokio::spawn(crate::accept::accept_loop(
                                id,
                                shared.clone(),
                                ctx,
                                l,
                                token.clone(),
                                tracker.clone(),
                            ))
                        }),
                        Sock::Udp(u) => tokio::net::UdpSocket::from_std(u).map(|u| {
                            let (sh, t) = (shared.clone(), token.clone());
                            match ctx.service {
                                Service::DirectoryUdp => {
                                    tokio::spawn(crate::directory::serve_udp(sh, ctx, u, t))
                                }
                                Service::UdpFanout | Service::UdpDatagram => {
                                    tokio::spawn(crate::fanout::serve_udp(sh, ctx, u, t))
                                }
                                // The UDP proxy; a TCP service never gets a UDP socket.
                                _ => tokio::spawn(crate::udp::serve(sh, ctx, u, t)),
                            }
                        }),
                    };
                    match h {
                        Ok(h) => loops.push((name, generation, token, h)),
                        Err(e) => {
                            tracing::error!(worker = id, error = %e, "cannot register listener")
                        }
                    }
                }
                Some(WorkerCmd::Adopt(ctx, stream, peer)) => {
                    serve_here(id, &shared, ctx, stream, peer, &tracker)
                }
                Some(WorkerCmd::Close(name, generation)) => {
                    loops.retain(|(n, g, token, _)| {
                        let hit = *n == name && *g == generation;
                        if hit {
                            token.cancel();
                        }
                        !hit
                    });
                }
                None => break,
            }
        }
        for (_, _, token, h) in loops {
            token.cancel();
            let _ = h.await;
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

/// How often an otherwise idle worker wakes (see [`keep_timer_wake_near`]).
const TIMER_TICK: Duration = Duration::from_millis(100);

/// tokio writes to its driver's eventfd whenever a timer is armed to fire before the driver's
/// next planned wake-up, and every connection arms two (its connect timeout, then its idle
/// watchdog): one syscall per connection. A timer ticking every [`TIMER_TICK`] keeps the
/// planned wake-up that near, so arming any timer longer than the tick costs no syscall.
async fn keep_timer_wake_near() {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Registers a connection with this worker's runtime and serves it. Its slots and its place
/// in this worker's load were taken by the acceptor.
pub(crate) fn serve_here(
    me: usize,
    shared: &Arc<Shared>,
    ctx: Arc<AcceptCtx>,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    tracker: &TaskTracker,
) {
    // From here on the ledger gives the slots and the worker's load back, however this ends.
    let ledger = Ledger::tcp(shared.clone(), ctx.clone(), me, peer);
    let stream = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(worker = me, error = %e, "cannot register a connection");
            return;
        }
    };
    // A trusted balancer in front sends a PROXY header first; its client is the client.
    let proxied = crate::admit::is_proxy_source(&ctx, peer);
    let shared = shared.clone();
    // One task per service kind: a task is as large as its future, and an HTTP
    // connection's is larger than a TCP one's (a TCP connection must not carry its size).
    match ctx.service {
        Service::Http | Service::Https => {
            tracker.spawn(async move {
                let (mut ledger, mut stream) = (ledger, stream);
                if !crate::admit::admit(&mut ledger, &mut stream, proxied).await {
                    return;
                }
                let client = ledger.client().ip();
                // Its client's entry outlives the service: until_cut waits on its `evict`.
                let entry = ledger.client_arc();
                let mark = crate::guard::CutMark::default();
                let service = crate::http::serve(ledger, stream);
                tokio::pin!(service);
                let evict = entry.as_ref().map(|c| &c.evict);
                if let Some(why) =
                    crate::guard::until_cut(&shared, me, client, evict, service).await
                {
                    if why == crate::guard::Cut::FairShare
                        && let Some(c) = &entry
                    {
                        c.evicted();
                    }
                    mark.set(why);
                }
            });
        }
        _ => {
            tracker.spawn(async move {
                let (mut ledger, mut stream) = (ledger, stream);
                if !crate::admit::admit(&mut ledger, &mut stream, proxied).await {
                    return;
                }
                let client = ledger.client().ip();
                // Its client's entry outlives the service: until_cut waits on its `evict`.
                let entry = ledger.client_arc();
                let mark = crate::guard::CutMark::default();
                let service = async move {
                    match ctx.service {
                        Service::Directory => crate::directory::serve_tcp(ledger, stream).await,
                        Service::TcpProxy => crate::tcp::serve(ledger, stream).await,
                        Service::TcpFanout => crate::fanout::serve_tcp(ledger, stream).await,
                        // A UDP service never gets a TCP connection; HTTP has its own task.
                        Service::Http
                        | Service::Https
                        | Service::UdpProxy
                        | Service::UdpFanout
                        | Service::UdpDatagram
                        | Service::DirectoryUdp => drop(ledger),
                    }
                };
                tokio::pin!(service);
                let evict = entry.as_ref().map(|c| &c.evict);
                if let Some(why) =
                    crate::guard::until_cut(&shared, me, client, evict, service).await
                {
                    if why == crate::guard::Cut::FairShare
                        && let Some(c) = &entry
                    {
                        c.evicted();
                    }
                    mark.set(why);
                }
            });
        }
    }
}
