//! fulcrum's data plane: worker threads that each own a current-thread tokio runtime and their
//! own `SO_REUSEPORT` listeners, the routing snapshot they read without locks, upstream
//! connect with retry and passive ejection, and the TCP copy engine (buffers or `splice(2)`,
//! or through TLS to servers).
//! It never parses configuration text and never decides *how* to balance: it asks
//! `fulcrum-core` for picks and `fulcrum-config` for the model.

mod accept;
mod admit;
mod clients;
mod clock;
mod connect;
mod context;
mod copy;
mod copy_stream;
mod directory;
mod engine;
mod fanout;
mod guard;
mod health;
mod histogram;
mod http;
mod ledger;
mod listener;
mod park;
mod probe;
mod proxyproto;
mod pull;
mod queue;
mod ratelog;
mod resolve;
mod routes;
mod sni;
mod splice;
mod state;
mod stats;
mod tcp;
mod tls;
mod udp;
mod upstream_tls;

pub use clients::{ClientTable, ClientView};
pub use clock::now_ms;
pub use context::{AcceptCtx, Service, Shared, SpliceMode};
pub use engine::{Engine, EngineOptions, StartError};
pub use guard::{BanRequest, Guard};
pub use health::run_pool_checks;
pub use pull::run_agent_pull;
pub use queue::PoolQueue;
pub use ratelog::RateLimit;
pub use resolve::{Answer, LOOKUP_TIMEOUT, NameSet, NameUse, Resolver, lookup_blocking};
pub use state::{
    AGENT_DOWN, AGENT_DRAIN, AGENT_UP, CONNECT_BUCKETS, FrontendState, Histogram, Names, PoolState,
    ServerEntry, ServerStats, Snapshot, SniRoutes, resolve_names,
};
pub use stats::{DESCRIPTOR_RESERVE, FrontendStats, Limits, SNI_RESULTS, descriptor_budget};
pub use tls::{
    CertInfo, CertRole, Loaded as TlsLoaded, Refresh, TlsState, rfc3339,
    server_config as tls_server_config,
};
pub use upstream_tls::{TlsRegistry, UpstreamTls, UpstreamTlsStats};

/// Raises the soft open-file limit to the hard limit (each proxied connection holds two
/// descriptors, more while splicing); returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(1 << 20)
}
