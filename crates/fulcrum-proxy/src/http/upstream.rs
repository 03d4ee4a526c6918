//! Connections to servers for the HTTP service: per worker, per server, kept alive and
//! reused (`[pool.X.http] max_idle`, `idle_timeout`). HTTP/1 connections carry one request
//! at a time and go back to the worker's idle list when their response body has ended;
//! an HTTP/2 connection (`version = "h2"`) is shared by all requests of the worker.
//!
//! The lists are thread-local: a worker is one thread with one runtime, so no lock and no
//! atomic is needed to take or return a connection. Every connection holds a descriptor of
//! the process's budget while it is open.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_config::HttpVersion;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::body::ReqBody;
use crate::context::Shared;
use crate::ledger::Descriptor;

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
    h1: HashMap<SocketAddr, Vec<Idle>>,
    h2: HashMap<SocketAddr, http2::SendRequest<ReqBody>>,
    sweeper: bool,
}

thread_local! {
    static LISTS: RefCell<Lists> = RefCell::new(Lists::default());
}

/// A connection to `addr` from this worker's lists, if one is idle and fresh.
pub(crate) fn take(addr: SocketAddr, version: HttpVersion) -> Option<Sender> {
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
pub(crate) fn give_back(addr: SocketAddr, sender: Sender, max_idle: usize, idle_timeout: Duration) {
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

/// Opens a connection to `addr` (the caller bounds it with the pool's connect timeout).
pub(crate) async fn connect(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    version: HttpVersion,
) -> io::Result<Sender> {
    let Some(descriptor) = Descriptor::take(shared) else {
        return Err(io::Error::other("descriptor budget spent"));
    };
    let stream = crate::connect::connect(addr).await?;
    let io = TokioIo::new(stream);
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
            LISTS.with_borrow_mut(|l| l.h2.insert(addr, sender.clone()));
            Ok(Sender::H2(sender))
        }
    }
}
