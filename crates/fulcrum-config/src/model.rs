//! The validated configuration model, with the defaults of every key. What the data plane
//! builds its routing snapshot from; constructed by the TOML parser or by `fulcrum forward`.

use std::time::Duration;

use fulcrum_core::balance::Algorithm;
use fulcrum_core::eject::EjectPolicy;

use crate::addr::{ListenAddr, ServerAddr};

pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_RETRIES: u32 = 2;
/// Retries are bounded by the fixed-size tried set of the balancer.
pub const MAX_RETRIES: u32 = (fulcrum_core::balance::MAX_ATTEMPTS - 1) as u32;
pub const MAX_WEIGHT: u32 = 10_000;
pub const MAX_WORKERS: usize = 1_024;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Worker threads; `None` means one per available core.
    pub workers: Option<usize>,
    /// Global limit of concurrently proxied connections; `None` derives it from the open-file
    /// limit.
    pub max_connections: Option<usize>,
    /// How long open connections may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// One log line per finished connection.
    pub access_log: bool,
    pub frontends: Vec<Frontend>,
    pub pools: Vec<Pool>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workers: None,
            max_connections: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            access_log: true,
            frontends: Vec::new(),
            pools: Vec::new(),
        }
    }
}

impl Config {
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Frontend {
    pub name: String,
    pub bind: ListenAddr,
    pub protocol: Protocol,
    pub pool: String,
    /// A connection with no byte moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// Per-frontend limit of concurrent connections, on top of the global one.
    pub max_connections: Option<usize>,
}

impl Frontend {
    pub fn new(name: &str, bind: ListenAddr, pool: &str) -> Self {
        Self {
            name: name.to_string(),
            bind,
            protocol: Protocol::Tcp,
            pool: pool.to_string(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub algorithm: Algorithm,
    pub servers: Vec<Server>,
    pub connect_timeout: Duration,
    /// Further servers tried after a failed connect (never the same one twice).
    pub retries: u32,
    pub eject: EjectPolicy,
}

impl Pool {
    pub fn new(name: &str, algorithm: Algorithm, servers: Vec<Server>) -> Self {
        Self {
            name: name.to_string(),
            algorithm,
            servers,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            eject: EjectPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub address: ServerAddr,
    pub weight: u32,
}

impl Server {
    pub fn new(address: ServerAddr) -> Self {
        Self { address, weight: 1 }
    }
}
