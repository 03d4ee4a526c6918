//! The controller: the one writer of the routing state. It keeps the last good config file,
//! the runtime overlay (API changes) and the state file in step, and pushes every change to
//! the engine as a whole new snapshot. A change that fails validation or binding changes
//! nothing; an accepted one never drops an open connection (connections keep the pool
//! snapshot they started with).

use std::path::PathBuf;

use fulcrum_config::{ChangeError, Config, Overlay, ServerState};
use fulcrum_proxy::{Engine, EngineOptions};
use tokio_util::sync::CancellationToken;

use crate::statefile;

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

pub struct Controller {
    engine: Engine,
    config_path: Option<PathBuf>,
    base: Config,
    overlay: Overlay,
    state_file: Option<PathBuf>,
    health: Vec<CancellationToken>,
    runtime: tokio::runtime::Handle,
    reloads: u64,
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
        let overlay = state_file.as_deref().map(statefile::load).unwrap_or_default();
        let engine = Engine::start(&overlay.apply(&base), opts).map_err(|e| e.0)?;
        let mut c = Controller {
            engine,
            config_path,
            base,
            overlay,
            state_file,
            health: Vec::new(),
            runtime,
            reloads: 0,
        };
        c.restart_health();
        Ok(c)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The configuration in force: the config file with the runtime changes applied.
    pub fn current(&self) -> Config {
        self.overlay.apply(&self.base)
    }

    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    /// Re-reads the config file. On any error the old config keeps serving and every error
    /// is returned.
    pub fn reload(&mut self) -> Result<(), ApiError> {
        let Some(path) = self.config_path.clone() else {
            return Err(ApiError::new(
                409,
                "no config file to reload (started by `fulcrum forward`)",
            ));
        };
        let new = fulcrum_config::load_file(&path).map_err(|e| {
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
        self.engine.apply(&self.overlay.apply(&new)).map_err(|e| ApiError {
            status: 400,
            message: format!("cannot apply config: {e}; the old config keeps serving"),
            errors: vec![e],
        })?;
        self.base = new;
        self.reloads += 1;
        self.restart_health();
        tracing::info!(file = %path.display(), "configuration reloaded");
        Ok(())
    }

    pub fn add_server(
        &mut self,
        pool: &str,
        address: &str,
        weight: u32,
    ) -> Result<String, ApiError> {
        let mut o = self.overlay.clone();
        let key = o.add_server(&self.current(), pool, address, weight)?;
        self.commit(o)?;
        tracing::info!(pool, server = %key, weight, "server added");
        Ok(key)
    }

    pub fn remove_server(&mut self, pool: &str, address: &str) -> Result<String, ApiError> {
        let mut o = self.overlay.clone();
        let key = o.remove_server(&self.current(), pool, address)?;
        self.commit(o)?;
        tracing::info!(pool, server = %key, "server removed; its open connections finish");
        Ok(key)
    }

    pub fn patch_server(
        &mut self,
        pool: &str,
        address: &str,
        state: Option<ServerState>,
        weight: Option<u32>,
    ) -> Result<String, ApiError> {
        let mut o = self.overlay.clone();
        let key = o.patch_server(&self.current(), pool, address, state, weight)?;
        self.commit(o)?;
        tracing::info!(pool, server = %key, state = state.map(|s| s.name()), weight, "server changed");
        Ok(key)
    }

    fn commit(&mut self, overlay: Overlay) -> Result<(), ApiError> {
        self.engine
            .apply(&overlay.apply(&self.base))
            .map_err(|e| ApiError::new(400, format!("cannot apply: {e}")))?;
        self.overlay = overlay;
        self.restart_health();
        if let Some(path) = &self.state_file
            && let Err(e) = statefile::save(path, &self.overlay)
        {
            tracing::error!(file = %path.display(), error = %e, "cannot write state file");
            return Err(ApiError::new(
                500,
                format!("applied, but the state file {} could not be written: {e}", path.display()),
            ));
        }
        Ok(())
    }

    /// One health task per pool with checks; restarted on every change so each task always
    /// reads the pool it checks from the snapshot in force.
    fn restart_health(&mut self) {
        for t in self.health.drain(..) {
            t.cancel();
        }
        let snapshot = self.engine.snapshot();
        for pool in snapshot.pools.iter().filter(|p| p.health.is_some()) {
            let token = CancellationToken::new();
            self.runtime.spawn(fulcrum_proxy::run_pool_checks(
                self.engine.shared().clone(),
                pool.name.clone(),
                token.clone(),
            ));
            self.health.push(token);
        }
    }

    /// Stops accepting and waits for the workers to drain (blocking).
    pub fn shutdown(&mut self) {
        for t in &self.health {
            t.cancel();
        }
        self.engine.shutdown();
        self.engine.join();
    }
}
