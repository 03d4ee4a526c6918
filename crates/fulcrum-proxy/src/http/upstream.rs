//! Connections to servers for the HTTP service: per worker, per server, kept alive and
//! reused (`[pool.X.http] max_idle`, `idle_timeout`). HTTP/1 connections carry one request
//! at a time and go back to the worker's idle list when their response body has ended;
//! an HTTP/2 connection (`version = "h2"`) is shared by all requests of the worker.
//!
//! The lists are thread-local: a worker is one thread with one runtime, so no lock and no
//! atomic is needed to take or return a connection. Every connection holds a descriptor of
//! the process's budget while it is open. A pool with `[pool.X.tls]` speaks TLS to its
//! servers (ALPN `http/1.1`, or `h2` for `version = "h2"`); its connections are listed apart
//! from plain ones to the same address (see [`Key`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_config::HttpVersion;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::ReqBody;
use crate::context::Shared;
use crate::ledger::Descriptor;
use crate::state::{PoolState, ServerEntry};
use crate::upstream_tls::Alpn;

/// What an idle connection is listed under: its server's address and the TLS settings it
/// was made with (0: plain TCP). Two pools reaching one address with and without TLS, or
/// with other TLS settings, never take each other's connections, nor does a pool after its
/// TLS settings changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    addr: SocketAddr,
    tls: u64,
}

impl Key {
    pub(crate) fn of(pool: &PoolState, server: &ServerEntry) -> Key {
        Key { addr: server.addr, tls: pool.tls.as_ref().map_or(0, |t| t.id) }
    }
}

pub(crate) enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

struct Idle {
    sender: http1::SendRequest<ReqBody>,
    /// When the pool's `idle_timeout` closes it.
    expires: Instant,
}

#[derive(Default)]
struct Lists {
    h1: HashMap<Key, Vec<Idle>>,
    h2: HashMap<Key, http2::SendRequest<ReqBody>>,
    sweeper: bool,
}

thread_local! {
    static LISTS: RefCell<Lists> = RefCell::new(Lists::default());
}

/// A connection to `addr` from this worker's lists, if one is idle and fresh.
pub(crate) fn take(addr: Key, version: HttpVersion) -> Option<Sender> {
    LISTS.with_borrow_mut(|l| match version {
        HttpVersion::H2 => match l.h2.get(&addr) {
            Some(s) if !s.is_closed() => Some(Sender::H2(s.clone())),
            Some(_) => {
                l.h2.remove(&addr);
                None
            }
            None => None,
        },
        HttpVersion::H1 => {
            let list = l.h1.get_mut(&addr)?;
            let now = Instant::now();
            // Newest first: the likeliest to be alive and warm. A connection whose last
            // response just ended may not say it is ready yet (its task has not run since):
            // the caller waits for `ready()`, which is a moment.
            while let Some(idle) = list.pop() {
                if now < idle.expires && !idle.sender.is_closed() {
                    return Some(Sender::H1(idle.sender));
                }
            }
            None
        }
    })
}

/// Gives an HTTP/1 connection whose exchange ended cleanly back to this worker's list.
pub(crate) fn give_back(addr: Key, sender: Sender, max_idle: usize, idle_timeout: Duration) {
    let Sender::H1(sender) = sender else { return };
    if max_idle == 0 || sender.is_closed() {
        return;
    }
    let start_sweeper = LISTS.with_borrow_mut(|l| {
        let list = l.h1.entry(addr).or_default();
        if list.len() >= max_idle {
            // The oldest goes: it is the likeliest to have been closed by the server.
            list.remove(0);
        }
        list.push(Idle { sender, expires: Instant::now() + idle_timeout });
        !std::mem::replace(&mut l.sweeper, true)
    });
    if start_sweeper {
        tokio::spawn(sweep());
    }
}

/// Closes idle connections past their time, once a second, on this worker.
async fn sweep() {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        LISTS.with_borrow_mut(|l| {
            let now = Instant::now();
            l.h1.retain(|_, list| {
                list.retain(|i| now < i.expires && !i.sender.is_closed());
                !list.is_empty()
            });
            l.h2.retain(|_, s| !s.is_closed());
        });
    }
}

/// Opens a connection to `server` of `pool`: the TCP connect, the TLS handshake when the
/// pool has TLS, and the HTTP/2 preface for h2, all within the pool's `connect_timeout`.
pub(crate) async fn connect(
    shared: &Arc<Shared>,
    pool: &PoolState,
    server: &ServerEntry,
) -> io::Result<Sender> {
    let Some(descriptor) = Descriptor::take(shared) else {
        return Err(io::Error::other("descriptor budget spent"));
    };
    let deadline = tokio::time::Instant::now() + pool.connect_timeout;
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
    let started = Instant::now();
    let tcp = tokio::time::timeout_at(deadline, crate::connect::connect(server.addr));
    let stream = tcp.await.map_err(|_| timed_out())??;
    server.stats.on_connected(started.elapsed());
    let (key, version) = (Key::of(pool, server), pool.http.version);
    let open = async {
        match (&pool.tls, &server.tls_name) {
            (Some(tls), Some(name)) => {
                let alpn = if version == HttpVersion::H2 { Alpn::H2 } else { Alpn::H1 };
                let s = tls.handshake(stream, name.clone(), alpn, deadline).await?;
                handshake(s, key, version, descriptor).await
            }
            _ => handshake(stream, key, version, descriptor).await,
        }
    };
    tokio::time::timeout_at(deadline, open).await.map_err(|_| timed_out())?
}

/// hyper's client handshake over `io` (a socket or TLS); its connection task holds the
/// descriptor.
async fn handshake<I>(
    io: I,
    key: Key,
    version: HttpVersion,
    descriptor: Descriptor,
) -> io::Result<Sender>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let to_io = |e: hyper::Error| io::Error::new(io::ErrorKind::ConnectionAborted, e);
    match version {
        HttpVersion::H1 => {
            let (sender, conn) = http1::Builder::new().handshake(io).await.map_err(to_io)?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
                drop(descriptor);
            });
            Ok(Sender::H1(sender))
        }
        HttpVersion::H2 => {
            let (sender, conn) =
                http2::Builder::new(TokioExecutor::new()).handshake(io).await.map_err(to_io)?;
            tokio::spawn(async move {
                let _ = conn.await;
                drop(descriptor);
            });
            LISTS.with_borrow_mut(|l| l.h2.insert(key, sender.clone()));
            Ok(Sender::H2(sender))
        }
    }
}
