//! What the engine and the services share: the workers' common state ([`Shared`]), one
//! frontend's accept side ([`AcceptCtx`]) with the [`Service`] chosen for it when it is bound,
//! and the commands a worker takes. Services (tcp, udp, directory, fan-out) import this
//! module, never the engine, so the engine depends on them and not the other way round.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use fulcrum_config::{Frontend, Mode, Protocol};
use tokio::sync::mpsc;

pub use crate::copy::SpliceMode;
use crate::state::Snapshot;
use crate::stats::{FrontendStats, Limits};

/// What serves a frontend's clients: one per kind of frontend, chosen once at bind from its
/// protocol and mode, so the data path never matches on config again. A new kind (HTTP next)
/// is one variant and one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `tcp`, `mode = "proxy"`: proxied connections (tcp.rs).
    TcpProxy,
    /// `tcp` with `mode = "fanout"` or `"hedge"`: line requests to several servers.
    TcpFanout,
    /// `directory`: `PICK` lines over TCP.
    Directory,
    /// `udp`, `mode = "proxy"`: a session per client address (udp.rs).
    UdpProxy,
    /// `udp` with `mode = "fanout"` or `"hedge"`.
    UdpFanout,
    /// `udp` with `sessions = false`: a server picked for every datagram; the fan-out
    /// machinery with one server asked (fanout/udp.rs).
    UdpDatagram,
    /// `directory-udp`: one `PICK` per datagram.
    DirectoryUdp,
    /// `http`: HTTP/1.1 and h2c, proxied per request (http/).
    Http,
    /// `https`: TLS terminated (tls.rs), then the HTTP service.
    Https,
}

impl Service {
    pub fn of(f: &Frontend) -> Service {
        match (f.protocol, &f.mode) {
            (Protocol::Directory, _) => Service::Directory,
            (Protocol::DirectoryUdp, _) => Service::DirectoryUdp,
            (Protocol::Tcp, Mode::Proxy) => Service::TcpProxy,
            (Protocol::Tcp, _) => Service::TcpFanout,
            (Protocol::Udp, Mode::Proxy) if !f.sessions => Service::UdpDatagram,
            (Protocol::Udp, Mode::Proxy) => Service::UdpProxy,
            (Protocol::Udp, _) => Service::UdpFanout,
            (Protocol::Http, _) => Service::Http,
            (Protocol::Https, _) => Service::Https,
        }
    }

    /// The protocol name in access-log lines.
    pub fn log_name(self) -> &'static str {
        match self {
            Service::TcpProxy => "tcp",
            Service::TcpFanout => "tcp-fanout",
            Service::Directory => "directory",
            Service::UdpProxy => "udp",
            Service::UdpFanout => "udp-fanout",
            Service::UdpDatagram => "udp-datagram",
            Service::DirectoryUdp => "directory-udp",
            Service::Http => "http",
            Service::Https => "https",
        }
    }
}

/// What every worker shares. Read-mostly: the snapshot is swapped whole, counters are atomics.
pub struct Shared {
    pub state: ArcSwap<Snapshot>,
    /// The global TCP connection limit (`max_connections`).
    pub limits: Limits,
    /// The descriptor budget every per-client descriptor draws from (a TCP connection two, a
    /// UDP session one), so that no configuration reaches EMFILE; see `stats::descriptor_budget`.
    pub descriptors: Limits,
    pub access_log: std::sync::atomic::AtomicBool,
    pub splice: SpliceMode,
    pub park_yield: bool,
    /// Every worker's open connections and command channel, for accept-time balancing.
    pub(crate) peers: Vec<Peer>,
    /// Admission by client address: the runtime block list and what cuts connections.
    pub guard: crate::guard::Guard,
    /// Clients accepted while no slot was left, being decided on (admit.rs, the fair share).
    pub(crate) deciding: Limits,
}

/// One worker as the others see it.
#[repr(align(64))]
pub(crate) struct Peer {
    pub(crate) load: AtomicUsize,
    pub(crate) tx: mpsc::UnboundedSender<WorkerCmd>,
    /// Wakes this worker's connections when a block cuts open connections (guard.rs).
    pub(crate) cut: tokio::sync::Notify,
}

impl Shared {
    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.peers.len()
    }
    pub fn access_log(&self) -> bool {
        self.access_log.load(Ordering::Relaxed)
    }
}

/// One frontend's accept side, shared by its accept loops on every worker.
pub struct AcceptCtx {
    pub name: Arc<str>,
    pub stats: Arc<FrontendStats>,
    /// `frontend.NAME.max_connections`, on top of the global limit.
    pub limits: Option<Limits>,
    /// Identifies this listener generation: a rebind starts a new one.
    pub generation: u64,
    pub protocol: Protocol,
    /// What serves this frontend's clients, chosen once when it is bound.
    pub service: Service,
    /// The frontend's settings as bound (mode, UDP session limits); routing settings such as
    /// the pool live in the snapshot.
    pub frontend: fulcrum_config::Frontend,
    /// Cancelled when this generation of the frontend is replaced or removed, or the engine
    /// stops: HTTP connections then close after their current request.
    pub retired: tokio_util::sync::CancellationToken,
    /// `https`: the frontend's certificates; each connection takes those in force when it is
    /// accepted.
    pub tls: Option<Arc<crate::tls::TlsState>>,
}

pub(crate) enum Sock {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl Sock {
    /// Another descriptor for the same socket: the socket, its port and its backlog live as
    /// long as any descriptor does.
    pub(crate) fn try_clone(&self) -> std::io::Result<Sock> {
        Ok(match self {
            Sock::Tcp(l) => Sock::Tcp(l.try_clone()?),
            Sock::Udp(u) => Sock::Udp(u.try_clone()?),
        })
    }
}

pub(crate) enum WorkerCmd {
    Listen(Arc<AcceptCtx>, Sock),
    Close(Arc<str>, u64),
    /// A connection accepted by a busier worker, to be served by this one.
    Adopt(Arc<AcceptCtx>, std::net::TcpStream, SocketAddr),
}
