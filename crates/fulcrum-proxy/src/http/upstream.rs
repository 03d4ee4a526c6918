//! Connections to servers for the HTTP service: per worker, per server, kept alive and
//! reused (`[pool.X.http] max_idle`, `idle_timeout`). HTTP/1 connections carry one request
//! at a time and go back to the worker's idle list when their response body has ended;
//! an HTTP/2 connection (`version = "h2"`) is shared by all requests of the worker.
//!
//! The lists are thread-local: a worker is one thread with one runtime, so no lock and no
//! atomic is needed to take or return a connection. Every connection holds a descriptor of
//! the process's budget while it is open. A pool with `[pool.X.tls]` speaks TLS to its
//! servers (ALPN `http/1.1`, or `h2` for `version = "h2"`); its connections are listed apart
//! from plain ones to the same address (see [`Key`]). A pool with `send_proxy` opens each
//! connection with a PROXY header naming one client: its connections are listed under that
//! client connection alone, never given to another, and closed when it ends.

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

/// What an idle connection is listed under: its server's address, the TLS settings it was
/// made with (0: plain TCP) and, for a pool with `send_proxy`, the one client connection
/// its PROXY header names (0: any). Two pools reaching one address with and without TLS, or
/// with other TLS settings, never take each other's connections, nor does a pool after its
/// TLS settings changed, nor does a client another client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    addr: SocketAddr,
    tls: u64,
    client: u64,
}

impl Key {
    /// `client`: the connection's [`client_id`].
    pub(crate) fn of(pool: &PoolState, server: &ServerEntry, client: u64) -> Key {
        let client = if pool.send_proxy.is_some() { client } else { 0 };
        Key { addr: server.addr, tls: pool.tls.as_ref().map_or(0, |t| t.id), client }
    }
}

thread_local! {
    static CLIENT_IDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A number for a new client connection of this worker, never 0 and never reused on it:
/// what its private server connections are listed under (the lists are the worker's own).
pub(crate) fn client_id() -> u64 {
    CLIENT_IDS.with(|c| {
        let id = c.get().wrapping_add(1).max(1);
        c.set(id);
        id
    })
}

/// Closes the idle server connections of client connection `client` (it ended): they could
/// serve nobody else.
pub(crate) fn forget_client(client: u64) {
    let _ = LISTS.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            l.h1.retain(|k, _| k.client != client);
            l.h2.retain(|k, _| k.client != client);
        }
    });
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

/// Opens a connection to `server` of `pool` for client connection `client` (its id, its
/// client's address and the address it reached): the TCP connect, the PROXY header when the
/// pool has `send_proxy` (in the clear, before TLS), the TLS handshake when the pool has
/// TLS, and the HTTP/2 preface for h2, all within the pool's `connect_timeout`.
pub(crate) async fn connect(
    shared: &Arc<Shared>,
    pool: &PoolState,
    server: &ServerEntry,
    client: (u64, SocketAddr, SocketAddr),
) -> io::Result<Sender> {
    let Some(descriptor) = Descriptor::take(shared) else {
        return Err(io::Error::other("descriptor budget spent"));
    };
    let deadline = tokio::time::Instant::now() + pool.connect_timeout;
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
    let started = Instant::now();
    let tcp = tokio::time::timeout_at(
        deadline,
        crate::connect::connect(server.addr, pool.receive_buffer),
    );
    let mut stream = tcp.await.map_err(|_| timed_out())??;
    server.stats.on_connected(started.elapsed());
    let (key, version) = (Key::of(pool, server, client.0), pool.http.version);
    let open = async {
        if let Some(v) = pool.send_proxy {
            crate::proxyproto::send(&mut stream, v, client.1, client.2).await?;
        }
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
