//! The controller: the one writer of the routing state. It keeps the last good config file,
//! the runtime overlay (API changes) and the state file in step, and pushes every change to
//! the engine as a whole new snapshot. A change that fails validation or binding changes
//! nothing; an accepted one never drops an open connection (connections keep the pool
//! snapshot they started with).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use fulcrum_config::{ChangeError, Config, Overlay, ServerState};
use fulcrum_proxy::{Engine, EngineOptions, ServerStats};
use tokio_util::sync::CancellationToken;

use crate::events::{EventKind, EventLog};
use crate::statefile;

mod blocks;
pub use blocks::block_json;

/// An API-facing error: HTTP status and one message (plus every config error on reload).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub errors: Vec<String>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), errors: Vec::new() }
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::NotFound(m) => ApiError::new(404, m),
            ChangeError::Invalid(m) => ApiError::new(400, m),
            ChangeError::Conflict(m) => ApiError::new(409, m),
        }
    }
}

/// Orders the state file's writes: each carries the whole overlay and a version, and a write
/// older than one already on disk is skipped, so writes finishing out of order never leave an
/// old overlay behind.
#[derive(Default)]
pub struct StateWriter {
    next: std::sync::atomic::AtomicU64,
    written: std::sync::Mutex<u64>,
}

/// A state-file write owed by a change (nothing when there is no state file).
#[must_use = "finish() writes the state file"]
pub struct StateWrite(Option<(PathBuf, Overlay, u64, Arc<StateWriter>)>);

impl StateWrite {
    /// Writes (and fsyncs) the state file on a blocking thread: never on the control thread,
    /// never under the controller's lock.
    pub async fn finish(self) -> Result<(), ApiError> {
        let Some((path, overlay, version, writer)) = self.0 else { return Ok(()) };
        let shown = path.display().to_string();
        let r = tokio::task::spawn_blocking(move || {
            let mut written = writer.written.lock().unwrap_or_else(|e| e.into_inner());
            if *written >= version {
                return Ok(());
            }
            statefile::save(&path, &overlay)?;
            *written = version;
            Ok::<(), std::io::Error>(())
        })
        .await;
        let e = match r {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(file = %shown, error = %e, "cannot write state file");
        Err(ApiError::new(
            500,
            format!("applied, but the state file {shown} could not be written: {e}"),
        ))
    }
}

/// Resolves `address` (a server as the API names it) when it is a host name, with the
/// config's `[resolver]` (`settings`), for [`Controller::add_server`]. Blocking: run it on a
/// blocking thread. An address that does not parse or resolve yields no name here; the change
/// then reports the error itself.
pub fn resolve_address(
    address: &str,
    settings: Option<&fulcrum_config::Resolver>,
) -> fulcrum_proxy::Names {
    let mut names = fulcrum_proxy::Names::new();
    if let Ok(a) = fulcrum_config::parse_dest(address)
        && a.socket().is_none()
        && let Some(Ok(answer)) =
            fulcrum_proxy::lookup_blocking(settings, std::slice::from_ref(&a.host)).pop()
    {
        let mut list: Vec<std::net::SocketAddr> =
            answer.addrs.iter().map(|&ip| std::net::SocketAddr::new(ip, a.port)).collect();
        list.sort_unstable();
        list.dedup();
        names.insert(a.to_string(), list);
    }
    names
}

/// A config file read and its host names resolved, ready for [`Controller::reload_with`].
pub struct Loaded {
    path: PathBuf,
    /// The file's text, for the dashboard's config view.
    text: String,
    config: Config,
    names: fulcrum_proxy::Names,
    /// Names whose lookup failed: `(host:port, error)`.
    failed: Vec<(String, String)>,
}

/// Reloads the config file with the slow half (reading, resolving names) on a blocking
/// thread and the controller's lock held only to apply the result.
pub async fn reload_off_thread(
    controller: &tokio::sync::Mutex<Controller>,
) -> Result<(), ApiError> {
    crate::notify::reloading();
    let (path, events) = {
        let c = controller.lock().await;
        (c.config_path(), c.events.clone())
    };
    let result = match tokio::task::spawn_blocking(move || Controller::load_for_reload(path)).await
    {
        Ok(Ok(loaded)) => controller.lock().await.reload_with(loaded),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ApiError::new(500, format!("reload task failed: {e}"))),
    };
    crate::notify::reloaded(result.as_ref().err().map(|e| e.message.as_str()));
    match &result {
        Ok(()) => events.push(EventKind::Reload, None, None, "configuration reloaded"),
        Err(e) => {
            let mut m = format!("reload refused: {}", e.message);
            for x in e.errors.iter().take(5) {
                m.push('\n');
                m.push_str(x);
            }
            events.push(EventKind::ConfigError, None, None, m);
        }
    }
    result
}

/// What a pool's control-plane tasks were started for.
#[derive(Debug, Clone, PartialEq)]
struct PoolTasks {
    health: bool,
    pull: bool,
    scale_out: Option<fulcrum_config::ScaleRule>,
    scale_in: Option<fulcrum_config::ScaleRule>,
}

/// The shared controller, for tasks the controller starts itself (a scale-in drains its
/// server through it). Filled by [`Controller::into_shared`]; weak, so tasks never keep it.
pub type ControllerHandle =
    Arc<std::sync::OnceLock<std::sync::Weak<tokio::sync::Mutex<Controller>>>>;

pub struct Controller {
    /// Self-registered servers by pool: address → sessions holding it. Not persisted: a
    /// backend that registered itself re-registers after a restart.
    dynamic: BTreeMap<String, BTreeMap<String, u32>>,
    /// Self-registered servers a scale-in drained, by (pool, address): their drain is
    /// forgotten when they leave, so a new backend on the same address starts in rotation.
    scaled_in: std::collections::BTreeSet<(String, String)>,
    handle: ControllerHandle,
    pub scale_log: Arc<crate::scale::ScaleLog>,
    pub agent_stats: Arc<crate::agent::AgentStats>,
    pub resolve_stats: Arc<crate::resolver::ResolveStats>,
    /// Recent events (health, reloads, registrations, changes...) for the dashboard.
    pub events: Arc<EventLog>,
    engine: Engine,
    config_path: Option<PathBuf>,
    /// The config file's text as the last good start or reload read it.
    config_text: Option<String>,
    base: Config,
    overlay: Overlay,
    state_file: Option<PathBuf>,
    /// Each pool's control-plane tasks (health checks, agent pull, scale signals), with what
    /// they were started for: restarted only when that changes.
    tasks: BTreeMap<String, (PoolTasks, CancellationToken)>,
    runtime: tokio::runtime::Handle,
    reloads: Arc<std::sync::atomic::AtomicU64>,
    writer: Arc<StateWriter>,
    /// The runtime block list (kept in the overlay too, for the state file).
    blocks: fulcrum_core::acl::BlockTable,
    /// When its next entry ends (Unix ms, `u64::MAX` for never): the sweep reads it without
    /// the lock and takes the lock only when something is due.
    block_expiry: Arc<std::sync::atomic::AtomicU64>,
}

/// What readers (metrics, readiness, listings) need, read without the controller's lock: the
/// engine's shared state (the snapshot behind its `ArcSwap` and the atomics) and counters.
/// A scrape never waits behind a reload or an API change.
#[derive(Clone)]
pub struct ReadView {
    pub shared: Arc<fulcrum_proxy::Shared>,
    pub agent_stats: Arc<crate::agent::AgentStats>,
    pub scale_log: Arc<crate::scale::ScaleLog>,
    pub reloads: Arc<std::sync::atomic::AtomicU64>,
    pub resolve_stats: Arc<crate::resolver::ResolveStats>,
    pub events: Arc<EventLog>,
}

impl Controller {
    /// Starts the engine with `base` plus the state file's overlay. `runtime` runs the
    /// health-check tasks (the control plane's runtime, never a worker's).
    pub fn start(
        base: Config,
        config_path: Option<PathBuf>,
        opts: EngineOptions,
        runtime: tokio::runtime::Handle,
    ) -> Result<Controller, String> {
        let state_file = base.state_file.clone();
        let mut overlay = state_file.as_deref().map(statefile::load).unwrap_or_default();
        let engine = Engine::start(&overlay.apply(&base), opts).map_err(|e| e.0)?;
        let table = blocks::table_of(&overlay.blocks);
        // Entries that ended while the daemon was down leave the next state file written.
        overlay.blocks = blocks::records_of(&table);
        // Read again for the config view; `base` was parsed from the same file a moment ago.
        let config_text = config_path.as_deref().and_then(|p| std::fs::read_to_string(p).ok());
        let mut c = Controller {
            dynamic: BTreeMap::new(),
            scaled_in: Default::default(),
            handle: Arc::default(),
            scale_log: Arc::default(),
            agent_stats: Arc::default(),
            resolve_stats: Arc::default(),
            events: Arc::default(),
            engine,
            config_path,
            config_text,
            base,
            overlay,
            state_file,
            tasks: BTreeMap::new(),
            runtime,
            reloads: Arc::default(),
            writer: Arc::default(),
            blocks: table,
            block_expiry: Arc::default(),
        };
        c.publish_blocks(false);
        c.restart_health();
        Ok(c)
    }

    /// Shares the controller between the API, the agent listener and its own tasks.
    pub fn into_shared(self) -> Arc<tokio::sync::Mutex<Controller>> {
        let handle = self.handle.clone();
        let (runtime, expiry) = (self.runtime.clone(), self.block_expiry.clone());
        let engine = self.engine.shared().clone();
        let shared = Arc::new(tokio::sync::Mutex::new(self));
        let _ = handle.set(Arc::downgrade(&shared));
        runtime.spawn(blocks::sweep(Arc::downgrade(&shared), expiry));
        runtime.spawn(blocks::bans(Arc::downgrade(&shared), engine));
        shared
    }

    /// The agent listener's settings and key, when `[agent]` is configured.
    pub fn agent_settings(&self) -> Option<fulcrum_config::Agent> {
        self.base.agent.clone()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The configuration in force: the config file with the runtime changes applied, plus
    /// the servers that registered themselves.
    pub fn current(&self) -> Config {
        self.with_dynamic(&self.overlay, self.overlay.apply(&self.base))
    }

    /// `c` (the config file with `overlay` applied) plus the self-registered servers, with
    /// the overlay's changes to them (an API or scale-in drain, a weight) applied too.
    fn with_dynamic(&self, overlay: &Overlay, mut c: Config) -> Config {
        for pool in &mut c.pools {
            let Some(d) = self.dynamic.get(&pool.name) else { continue };
            if !pool.self_register {
                continue;
            }
            let overrides = overlay.pools.get(&pool.name).map(|o| &o.overrides);
            for addr in d.keys() {
                let Ok(a) = fulcrum_config::parse_dest(addr) else { continue };
                if !pool.servers.iter().any(|s| s.address == a) {
                    let mut s = fulcrum_config::Server::new(a);
                    if let Some(ov) = overrides.and_then(|o| o.get(addr)) {
                        s.weight = ov.weight.unwrap_or(s.weight);
                        if let Some(st) = ov.state.as_deref().and_then(|x| x.parse().ok()) {
                            s.state = st;
                        }
                        if ov.max_connections.is_some() {
                            s.max_connections = ov.max_connections;
                        }
                    }
                    pool.servers.push(s);
                }
            }
        }
        c
    }

    /// Whether `pool` lets an agent register an IP other than its connection's; `None` when
    /// there is no such pool.
    pub fn trusts_claimed_address(&self, pool: &str) -> Option<bool> {
        self.base.pool(pool).map(|p| p.trust_claimed_address)
    }

    /// An agent said hello for `address` in `pool`: returns the server's live stats, and
    /// whether it joined the pool by registering itself.
    pub fn register(
        &mut self,
        pool: &str,
        address: &str,
    ) -> Result<(Arc<ServerStats>, bool), ApiError> {
        let current = self.current();
        let p =
            current.pool(pool).ok_or_else(|| ApiError::new(404, format!("no pool \"{pool}\"")))?;
        let a = fulcrum_config::parse_dest(address)
            .map_err(|e| ApiError::new(400, format!("address: {e}")))?;
        let key = a.to_string();
        let dynamic = if p.servers.iter().any(|s| s.address == a) {
            // Already a member (configured, or registered by another session).
            if let Some(n) = self.dynamic.get_mut(pool).and_then(|d| d.get_mut(&key)) {
                *n += 1;
                true
            } else {
                false
            }
        } else if p.self_register {
            self.dynamic.entry(pool.to_string()).or_default().insert(key.clone(), 1);
            if let Err(e) = self.engine.apply(&self.current()) {
                self.dynamic.entry(pool.to_string()).or_default().remove(&key);
                return Err(ApiError::new(400, format!("cannot add {key}: {e}")));
            }
            self.restart_health();
            tracing::info!(pool, server = %key, "server registered itself");
            self.events.push(
                EventKind::Registration,
                Some(pool),
                Some(&key),
                format!("{key} registered itself"),
            );
            true
        } else {
            return Err(ApiError::new(
                403,
                format!("{key} is not in pool \"{pool}\", which does not allow self_register"),
            ));
        };
        let snapshot = self.engine.snapshot();
        // A server given by host name is keyed `host:port#ip`: its first address answers.
        let named = format!("{key}#");
        let stats = snapshot
            .pool(pool)
            .and_then(|p| p.servers.iter().find(|s| s.key == key || s.key.starts_with(&named)))
            .map(|s| s.stats.clone())
            .ok_or_else(|| ApiError::new(500, format!("{key} missing after registration")))?;
        Ok((stats, dynamic))
    }

    /// A self-registered server's session ended: it leaves the pool when no session holds it.
    /// Returns the state-file write owed when a scale-in's drain of it was forgotten.
    pub fn deregister(&mut self, pool: &str, address: &str) -> StateWrite {
        let none = StateWrite(None);
        let Ok(a) = fulcrum_config::parse_dest(address) else { return none };
        let key = a.to_string();
        let Some(d) = self.dynamic.get_mut(pool) else { return none };
        let Some(n) = d.get_mut(&key) else { return none };
        *n = n.saturating_sub(1);
        if *n > 0 {
            return none;
        }
        d.remove(&key);
        let mut overlay = self.overlay.clone();
        if self.scaled_in.remove(&(pool.to_string(), key.clone()))
            && let Some(o) = overlay.pools.get_mut(pool)
        {
            o.overrides.remove(&key);
        }
        match self.commit(overlay) {
            Ok(write) => {
                tracing::info!(pool, server = %key, "self-registered server left");
                self.events.push(
                    EventKind::Registration,
                    Some(pool),
                    Some(&key),
                    format!("{key} left (its agent session ended)"),
                );
                write
            }
            Err(e) => {
                tracing::error!(pool, server = %key, error = %e.message, "cannot remove self-registered server");
                none
            }
        }
    }

    /// Drains `address` for a scale-in, exactly as the API's drain does. A self-registered
    /// server's drain lasts only while it stays registered (see [`Controller::deregister`]).
    pub fn drain_for_scale_in(
        &mut self,
        pool: &str,
        address: &str,
    ) -> Result<(String, StateWrite), ApiError> {
        let (key, write) = self.patch_server(pool, address, Some(ServerState::Drain), None)?;
        if self.dynamic.get(pool).is_some_and(|d| d.contains_key(&key)) {
            self.scaled_in.insert((pool.to_string(), key.clone()));
        }
        Ok((key, write))
    }

    pub fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The lock-free view for readers.
    pub fn read_view(&self) -> ReadView {
        ReadView {
            shared: self.engine.shared().clone(),
            agent_stats: self.agent_stats.clone(),
            scale_log: self.scale_log.clone(),
            reloads: self.reloads.clone(),
            resolve_stats: self.resolve_stats.clone(),
            events: self.events.clone(),
        }
    }

    /// Re-reads the config file. On any error the old config keeps serving and every error
    /// is returned.
    /// The config file a reload reads, if there is one.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config_path.clone()
    }

    /// The config file's text as the last good start or reload read it.
    pub fn config_text(&self) -> Option<String> {
        self.config_text.clone()
    }

    /// The runtime changes laid over the config file (the state file's content).
    pub fn overlay_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.overlay).unwrap_or_default()
    }

    /// Reads and resolves the config file for a reload: the slow half (file I/O, DNS), which
    /// needs no controller state. Blocking: callers run it on a blocking thread, without the
    /// controller's lock, then hand the result to [`Controller::reload_with`].
    pub fn load_for_reload(path: Option<PathBuf>) -> Result<Loaded, ApiError> {
        let Some(path) = path else {
            return Err(ApiError::new(
                409,
                "no config file to reload (started by `fulcrum forward`)",
            ));
        };
        let file = path.display().to_string();
        // The text is kept for the config view; an unreadable file gives load_file's error.
        let parsed = match std::fs::read_to_string(&path) {
            Ok(text) => fulcrum_config::parse_str(&text, &file).map(|c| (c, text)),
            Err(_) => fulcrum_config::load_file(&path).map(|c| (c, String::new())),
        };
        let (config, text) = parsed.map_err(|e| {
            let errors: Vec<String> = e.0.iter().map(|x| x.to_string()).collect();
            ApiError {
                status: 400,
                message: format!(
                    "invalid config: {} error(s); the old config keeps serving",
                    errors.len()
                ),
                errors,
            }
        })?;
        let (names, failed) = fulcrum_proxy::resolve_names(&config);
        Ok(Loaded { path, text, config, names, failed })
    }

    /// Reloads on this thread (file I/O and DNS included).
    pub fn reload(&mut self) -> Result<(), ApiError> {
        let loaded = Self::load_for_reload(self.config_path.clone())?;
        self.reload_with(loaded)
    }

    /// The quick half of a reload: applies a config read and resolved by
    /// [`Controller::load_for_reload`].
    pub fn reload_with(&mut self, loaded: Loaded) -> Result<(), ApiError> {
        let Loaded { path, text, config: new, names, failed } = loaded;
        // A name that failed keeps the addresses the engine has for it; a new one fails the
        // reload (nothing to route to).
        for (key, e) in &failed {
            if !self.engine.names().contains_key(key) {
                return Err(ApiError {
                    status: 400,
                    message: format!("cannot apply config: {e}; the old config keeps serving"),
                    errors: vec![e.clone()],
                });
            }
            tracing::warn!(server = %key, error = %e, "name lookup failed on reload; keeping its last addresses");
        }
        // A reload reads every certificate file again too (Engine::reload_with).
        self.engine
            .reload_with(&self.with_dynamic(&self.overlay, self.overlay.apply(&new)), names)
            .map_err(|e| ApiError {
                status: 400,
                message: format!("cannot apply config: {e}; the old config keeps serving"),
                errors: vec![e],
            })?;
        self.base = new;
        self.config_text = Some(text);
        self.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.restart_health();
        tracing::info!(file = %path.display(), "configuration reloaded");
        Ok(())
    }

    /// Applies addresses the resolver task found for host names (`host:port` → addresses):
    /// a server change like any other, open connections keep theirs.
    pub fn refresh_names(&mut self, names: fulcrum_proxy::Names) -> Result<(), String> {
        self.engine.apply_with(&self.current(), names)?;
        self.restart_health();
        Ok(())
    }

    /// The config's `[resolver]`, for looking names up before taking the lock.
    pub fn resolver_settings(&self) -> Option<fulcrum_config::Resolver> {
        self.base.resolver.clone()
    }

    pub fn add_server(
        &mut self,
        pool: &str,
        address: &str,
        weight: u32,
        max_connections: Option<u32>,
        names: fulcrum_proxy::Names,
    ) -> Result<(String, StateWrite), ApiError> {
        let mut o = self.overlay.clone();
        let key = o.add_server(&self.current(), pool, address, weight)?;
        if let Some(max) = max_connections {
            let after = self.with_dynamic(&o, o.apply(&self.base));
            o.set_max_connections(&after, pool, &key, max)?;
        }
        // A self-registered server added through the API becomes a permanent member.
        if let Some(d) = self.dynamic.get_mut(pool) {
            d.remove(&key);
        }
        let write = self.commit_with(o, names)?;
        tracing::info!(pool, server = %key, weight, max_connections, "server added");
        self.events.push(
            EventKind::Server,
            Some(pool),
            Some(&key),
            format!("{key} added (weight {weight})"),
        );
        Ok((key, write))
    }

    pub fn remove_server(
        &mut self,
        pool: &str,
        address: &str,
    ) -> Result<(String, StateWrite), ApiError> {
        let mut o = self.overlay.clone();
        let key = o.remove_server(&self.current(), pool, address)?;
        let write = self.commit(o)?;
        tracing::info!(pool, server = %key, "server removed; its open connections finish");
        self.events.push(EventKind::Server, Some(pool), Some(&key), format!("{key} removed"));
        Ok((key, write))
    }

    pub fn patch_server(
        &mut self,
        pool: &str,
        address: &str,
        state: Option<ServerState>,
        weight: Option<u32>,
    ) -> Result<(String, StateWrite), ApiError> {
        let mut o = self.overlay.clone();
        let key = o.patch_server(&self.current(), pool, address, state, weight)?;
        let write = self.commit(o)?;
        tracing::info!(pool, server = %key, state = state.map(|s| s.name()), weight, "server changed");
        let mut what = Vec::new();
        if let Some(st) = state {
            what.push(format!("state {}", st.name()));
        }
        if let Some(w) = weight {
            what.push(format!("weight {w}"));
        }
        self.events.push(
            EventKind::Server,
            Some(pool),
            Some(&key),
            format!("{key}: {}", what.join(", ")),
        );
        Ok((key, write))
    }

    /// Applies `overlay`; returns the state-file write it calls for, which the caller runs
    /// after letting go of the controller's lock ([`StateWrite::finish`]).
    fn commit(&mut self, overlay: Overlay) -> Result<StateWrite, ApiError> {
        self.commit_with(overlay, fulcrum_proxy::Names::new())
    }

    /// [`Controller::commit`] with host names resolved beforehand, off the control thread.
    fn commit_with(
        &mut self,
        overlay: Overlay,
        names: fulcrum_proxy::Names,
    ) -> Result<StateWrite, ApiError> {
        self.engine
            .apply_with(&self.with_dynamic(&overlay, overlay.apply(&self.base)), names)
            .map_err(|e| ApiError::new(400, format!("cannot apply: {e}")))?;
        self.overlay = overlay;
        self.restart_health();
        Ok(self.state_write())
    }

    /// The state-file write of the overlay as it is now.
    fn state_write(&self) -> StateWrite {
        let Some(path) = self.state_file.clone() else { return StateWrite(None) };
        let version = self.writer.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        StateWrite(Some((path, self.overlay.clone(), version, self.writer.clone())))
    }

    /// Starts the tasks of pools that are new or whose task settings changed, and stops those
    /// of pools that left. A task that keeps running keeps its state (health runs, scale
    /// windows and cooldowns, pull rotations): the health and pull tasks read each server list
    /// from the current snapshot, so added or removed servers need no restart.
    fn restart_health(&mut self) {
        let snapshot = self.engine.snapshot();
        let shared = self.engine.shared().clone();
        self.tasks.retain(|name, (_, token)| {
            let stays = snapshot.pool(name).is_some();
            if !stays {
                token.cancel();
            }
            stays
        });
        for pool in snapshot.pools.iter() {
            let base = self.base.pool(&pool.name);
            let wanted = PoolTasks {
                health: pool.health.is_some(),
                pull: pool.agent_pull.is_some(),
                scale_out: base.and_then(|p| p.scale_out.clone()),
                scale_in: base.and_then(|p| p.scale_in.clone()),
            };
            if let Some((running, token)) = self.tasks.get(&pool.name) {
                if *running == wanted {
                    continue;
                }
                token.cancel();
            }
            let token = CancellationToken::new();
            if wanted.health {
                let t = fulcrum_proxy::run_pool_checks(
                    shared.clone(),
                    pool.name.clone(),
                    token.clone(),
                );
                self.runtime.spawn(t);
            }
            if wanted.pull {
                let t =
                    fulcrum_proxy::run_agent_pull(shared.clone(), pool.name.clone(), token.clone());
                self.runtime.spawn(t);
            }
            if let Some(p) = base
                && (wanted.scale_out.is_some() || wanted.scale_in.is_some())
            {
                let cx = crate::scale::Context {
                    shared: shared.clone(),
                    log: self.scale_log.clone(),
                    events: self.events.clone(),
                    controller: self.handle.clone(),
                    drain_wait: self.base.drain_timeout,
                };
                let t = crate::scale::run(p.clone(), cx, token.clone());
                self.runtime.spawn(t);
            }
            self.tasks.insert(pool.name.clone(), (wanted, token));
        }
    }

    pub fn shutdown(&mut self) {
        for (_, t) in self.tasks.values() {
            t.cancel();
        }
        self.engine.shutdown();
        self.engine.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn state_writes_finishing_out_of_order_leave_the_newest() {
        let dir = std::env::temp_dir().join(format!("fulcrum-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let writer = Arc::new(StateWriter::default());
        let overlay = |n: u32| {
            let mut o = Overlay::default();
            o.pools.entry("p".into()).or_default().added.insert(format!("127.0.0.1:{n}"), 1);
            o
        };
        let write = |v: u64| StateWrite(Some((path.clone(), overlay(v as u32), v, writer.clone())));
        let (older, newer) = (write(1), write(2));
        newer.finish().await.unwrap();
        older.finish().await.unwrap();
        assert_eq!(statefile::load(&path), overlay(2), "an older write replaced a newer one");
        StateWrite(None).finish().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
