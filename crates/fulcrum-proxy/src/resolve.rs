//! Looking up servers given by host name (hickory-resolver): the addresses and how long they
//! are good for (the records' TTL), asking the config's `[resolver]` name servers or, without
//! one, the system's (`/etc/resolv.conf`; the hosts file is read either way, and `localhost`
//! is 127.0.0.1 without asking anyone). IPv4 addresses are taken when a name has any, IPv6
//! ones otherwise, as `getaddrinfo` users expect from a name with both.
//!
//! Control plane only: the resolver task (fulcrum-admin `resolver.rs`) looks names up on the
//! control runtime, and the blocking form runs on a thread of its own, for the start and for
//! a change that brings a name nobody has looked up yet.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// One lookup never takes longer than this, whatever the name servers do.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The host names the routing state uses, as the engine publishes them after every change
/// for the resolver task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NameSet {
    /// The config's `[resolver]` (none: the system's name servers).
    pub settings: Option<fulcrum_config::Resolver>,
    pub names: Vec<NameUse>,
}

/// One configured `host:port` of some pool.
#[derive(Debug, Clone, PartialEq)]
pub struct NameUse {
    /// `host:port` as configured: the key of [`crate::Names`].
    pub key: String,
    pub host: String,
    pub port: u16,
    /// The pool's `resolve_interval`.
    pub interval: Duration,
    /// The addresses the snapshot routes to now.
    pub addrs: Vec<SocketAddr>,
}

/// A successful lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addrs: Vec<IpAddr>,
    /// How long the answer is good for (the shortest TTL of its records).
    pub ttl: Duration,
}

/// A name resolver built for one `[resolver]` setting (none: the system's).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// Builds the resolver; needs no runtime until it looks something up. Without `[resolver]`
    /// and with no readable `/etc/resolv.conf`, only the hosts file answers (logged).
    pub fn new(settings: Option<&fulcrum_config::Resolver>) -> Resolver {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match settings {
            Some(s) => {
                let servers = s
                    .servers
                    .iter()
                    .map(|a| {
                        let mut udp = ConnectionConfig::udp();
                        udp.port = a.port();
                        let mut tcp = ConnectionConfig::tcp();
                        tcp.port = a.port();
                        NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                    })
                    .collect();
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(servers),
                    provider,
                )
            }
            None => match TokioResolver::builder(provider.clone()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the system's name servers (/etc/resolv.conf): only the hosts file resolves server names");
                    TokioResolver::builder_with_config(ResolverConfig::default(), provider)
                }
            },
        };
        let o = builder.options_mut();
        // Our own schedule asks again at the TTL; the timeout bounds one lookup below
        // `LOOKUP_TIMEOUT` with a retry.
        o.timeout = Duration::from_secs(2);
        o.attempts = 1;
        // A name with both families would otherwise be a server per IPv6 address too, which
        // a backend listening on 0.0.0.0 does not serve.
        o.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
        let inner = match builder.build() {
            Ok(r) => r,
            Err(e) => {
                // Only TLS setup can fail here, and it is not used; stay usable regardless.
                tracing::warn!(error = %e, "cannot build the name resolver; using the hosts file only");
                let b = TokioResolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioRuntimeProvider::default(),
                );
                match b.build() {
                    Ok(r) => r,
                    Err(_) => return Resolver::new(None),
                }
            }
        };
        Resolver { inner }
    }

    /// Looks `host` up; an error says why in one line. An answer always has an address.
    pub async fn lookup(&self, host: &str) -> Result<Answer, String> {
        let now = Instant::now();
        let r = tokio::time::timeout(LOOKUP_TIMEOUT, self.inner.lookup_ip(host))
            .await
            .map_err(|_| format!("cannot resolve {host}: no answer within {LOOKUP_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        let addrs: Vec<IpAddr> = r.iter().collect();
        if addrs.is_empty() {
            return Err(format!("cannot resolve {host}: no address"));
        }
        Ok(Answer { addrs, ttl: r.valid_until().saturating_duration_since(now) })
    }
}

/// Looks every host in `hosts` up, blocking the caller: on a thread of its own with its own
/// small runtime, so it works from inside an async context too (the start runs in one).
pub fn lookup_blocking(
    settings: Option<&fulcrum_config::Resolver>,
    hosts: &[String],
) -> Vec<Result<Answer, String>> {
    if hosts.is_empty() {
        return Vec::new();
    }
    let failed = |e: String| hosts.iter().map(|_| Err(e.clone())).collect::<Vec<_>>();
    std::thread::scope(|scope| {
        let t =
            std::thread::Builder::new().name("fulcrum-resolve".into()).spawn_scoped(scope, || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a runtime to resolve names: {e}"))?;
                let resolver = Resolver::new(settings);
                Ok::<_, String>(rt.block_on(async {
                    let mut out = Vec::with_capacity(hosts.len());
                    for h in hosts {
                        out.push(resolver.lookup(h).await);
                    }
                    out
                }))
            });
        match t {
            Ok(t) => match t.join() {
                Ok(Ok(out)) => out,
                Ok(Err(e)) => failed(e),
                Err(_) => failed("name lookup thread panicked".into()),
            },
            Err(e) => failed(format!("cannot start a thread to resolve names: {e}")),
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn localhost_and_invalid_names_resolve_as_before() {
        let hosts = ["localhost".to_string(), "backend.invalid".to_string()];
        let r = lookup_blocking(None, &hosts);
        let local = r[0].as_ref().unwrap();
        assert_eq!(local.addrs, [IpAddr::from([127, 0, 0, 1])]);
        assert!(local.ttl >= Duration::from_secs(1), "{:?}", local.ttl);
        // `.invalid` never resolves (RFC 2606).
        assert!(r[1].as_ref().unwrap_err().starts_with("cannot resolve backend.invalid"));
    }
}
