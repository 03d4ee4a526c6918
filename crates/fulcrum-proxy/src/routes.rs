//! What a frontend's snapshot carries beyond the pools: its HTTP routes and its routes by SNI
//! as the workers use them (built from the config once per snapshot), and a pool's
//! sticky-cookie values.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use fulcrum_config::Config;

use crate::state::{PoolState, ServerEntry};

/// An HTTP frontend's routes as the workers use them: the matcher (fulcrum-core) and, per
/// route, where a match goes and what is changed on the way.
#[derive(Debug)]
pub struct HttpRoutes {
    pub table: fulcrum_core::route::RouteTable,
    pub routes: Vec<RouteState>,
}

#[derive(Debug)]
pub struct RouteState {
    /// The route's place in the frontend's `route` list (its name in metrics): routes by SNI
    /// share the list but are not here.
    pub index: usize,
    pub target: RouteTarget,
    pub strip_prefix: Option<String>,
    pub remove_headers: Vec<http::HeaderName>,
    pub set_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Responses to requests this route matched, by status class (1xx..5xx).
    pub responses: [std::sync::atomic::AtomicU64; 5],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    /// Index into the snapshot's pools.
    Pool(usize),
    /// `redirect = "https"`.
    RedirectHttps,
}

impl HttpRoutes {
    pub(crate) fn build(
        f: &fulcrum_config::Frontend,
        config: &Config,
    ) -> Result<HttpRoutes, String> {
        let http: Vec<(usize, &fulcrum_config::Route)> =
            f.routes.iter().enumerate().filter(|(_, r)| !r.is_sni()).collect();
        let specs: Vec<_> = http.iter().map(|(_, r)| r.spec()).collect();
        let table = fulcrum_core::route::RouteTable::build(&specs)?;
        let mut routes = Vec::with_capacity(http.len());
        for &(i, r) in &http {
            let target = match &r.pool {
                _ if r.redirect_https => RouteTarget::RedirectHttps,
                Some(p) => RouteTarget::Pool(
                    config
                        .pools
                        .iter()
                        .position(|x| &x.name == p)
                        .ok_or_else(|| format!("route[{i}]: pool \"{p}\" is not defined"))?,
                ),
                None => return Err(format!("route[{i}]: no pool")),
            };
            let name = |n: &str| {
                http::HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("route[{i}]: bad header name {n:?}"))
            };
            let mut set_headers = Vec::with_capacity(r.set_headers.len());
            for (k, v) in &r.set_headers {
                let v = http::HeaderValue::from_str(v)
                    .map_err(|_| format!("route[{i}]: bad header value for {k:?}"))?;
                set_headers.push((name(k)?, v));
            }
            let remove_headers =
                r.remove_headers.iter().map(|n| name(n)).collect::<Result<_, _>>()?;
            routes.push(RouteState {
                index: i,
                target,
                strip_prefix: r.strip_prefix.clone(),
                remove_headers,
                set_headers,
                responses: Default::default(),
            });
        }
        Ok(HttpRoutes { table, routes })
    }
}

/// A frontend's routes by SNI as the workers use them: the matcher (fulcrum-core) and, per
/// route, its pool and what it took.
#[derive(Debug)]
pub struct SniRoutes {
    pub table: fulcrum_core::sni::SniTable,
    /// In the table's order.
    pub routes: Vec<SniRoute>,
    /// Connections no route took: to the frontend's pool (`tcp`), or TLS terminated by
    /// fulcrum (`https`).
    pub default: AtomicU64,
}

#[derive(Debug)]
pub struct SniRoute {
    /// The route's place in the frontend's `route` list (its name in metrics).
    pub index: usize,
    pub pool: Arc<PoolState>,
    /// Connections this route took, since the routes were built (start or reload).
    pub routed: AtomicU64,
}

impl SniRoutes {
    /// `None` when the frontend has no route by SNI. `pools` are the snapshot's, in the
    /// config's order.
    pub(crate) fn build(
        f: &fulcrum_config::Frontend,
        config: &Config,
        pools: &[Arc<PoolState>],
    ) -> Result<Option<SniRoutes>, String> {
        let mut names = Vec::new();
        let mut routes = Vec::new();
        for (i, r) in f.routes.iter().enumerate().filter(|(_, r)| r.is_sni()) {
            let pool = r
                .pool
                .as_ref()
                .and_then(|p| config.pools.iter().position(|x| &x.name == p))
                .and_then(|p| pools.get(p))
                .ok_or_else(|| format!("route[{i}]: no pool"))?;
            names.push(r.sni.clone());
            routes.push(SniRoute { index: i, pool: pool.clone(), routed: AtomicU64::new(0) });
        }
        if routes.is_empty() {
            return Ok(None);
        }
        let table = fulcrum_core::sni::SniTable::build(&names);
        Ok(Some(SniRoutes { table, routes, default: AtomicU64::new(0) }))
    }
}

/// A pool's sticky cookie: its name, its `Max-Age`, and the value naming each server. The
/// value is a keyed hash of the server's key (not its address), stable across restarts and
/// nodes with the same config, so a client keeps its server behind several balancers.
#[derive(Debug)]
pub struct StickyState {
    pub cookie: String,
    pub ttl_secs: u64,
    /// Per server (same order as `PoolState::servers`): the cookie value, 16 hex digits.
    pub values: Vec<String>,
}

impl StickyState {
    pub(crate) fn new(st: &fulcrum_config::Sticky, pool: &str, servers: &[ServerEntry]) -> Self {
        let values = servers
            .iter()
            .map(|s| {
                let mut key = Vec::with_capacity(pool.len() + s.key.len() + 1);
                key.extend_from_slice(pool.as_bytes());
                key.push(0);
                key.extend_from_slice(s.key.as_bytes());
                format!("{:016x}", fulcrum_core::balance::hash_bytes(&key))
            })
            .collect();
        StickyState { cookie: st.cookie.clone(), ttl_secs: st.ttl.as_secs(), values }
    }

    /// The server a cookie value names.
    pub fn server(&self, value: &[u8]) -> Option<usize> {
        self.values.iter().position(|v| v.as_bytes() == value)
    }
}
