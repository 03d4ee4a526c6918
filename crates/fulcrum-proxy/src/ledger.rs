//! One ledger per client: an accepted TCP connection (whatever its service) or a UDP session.
//! Made when the client is admitted, it owns every slot and count the client holds — the
//! global and frontend connection slots and descriptors (TCP) or the session slot and
//! descriptor (UDP), the worker's load, the frontend's active count, and the server's
//! `active` count once a server is held — and gives them all back when it is dropped, however
//! the client's task ends (cancellation at shutdown included). It also writes the client's
//! one access-log line, with the same fields for every protocol: `client`, `frontend`,
//! `protocol`, `server` (`-` when none), `bytes_in`, `bytes_out`, `duration_ms`, `outcome`.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::context::{AcceptCtx, Shared};
use crate::state::{PoolState, ServerEntry};

/// Descriptors an accepted TCP connection is charged: its own and one upstream socket.
pub(crate) const TCP_DESCRIPTORS: usize = 2;

/// Gives back what the accept loop took for a TCP connection: the global and frontend slots
/// and its descriptors. The ledger's drop and the accept loop's failure paths both call this.
pub(crate) fn release_tcp_slots(shared: &Shared, ctx: &AcceptCtx) {
    shared.limits.release();
    shared.descriptors.release_n(TCP_DESCRIPTORS);
    if let Some(l) = &ctx.limits {
        l.release();
    }
}

/// Gives back a UDP session's slot and descriptor (taken by `udp::acquire`).
pub(crate) fn release_udp_session(shared: &Shared, ctx: &AcceptCtx) {
    ctx.stats.udp_sessions_active.fetch_sub(1, Ordering::Relaxed);
    shared.descriptors.release();
}

/// A server entry that stays valid after the snapshot it came from is replaced.
pub struct Picked {
    pub(crate) pool: Arc<PoolState>,
    pub(crate) index: usize,
}

impl Deref for Picked {
    type Target = ServerEntry;
    fn deref(&self) -> &ServerEntry {
        &self.pool.servers[self.index]
    }
}

/// One descriptor of the process's budget, held as long as the socket it was taken for (a
/// fan-out request's upstream socket): given back on drop.
pub(crate) struct Descriptor(Arc<Shared>);

impl Descriptor {
    /// Takes one, or `None` when the budget is spent.
    pub(crate) fn take(shared: &Arc<Shared>) -> Option<Descriptor> {
        shared.descriptors.try_acquire().then(|| Descriptor(shared.clone()))
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        self.0.descriptors.release();
    }
}

/// What kind of admission the ledger gives back.
enum Slots {
    /// Global and frontend connection slots, two descriptors, and the load of this worker.
    Tcp { worker: usize },
    /// A session slot of the frontend and one descriptor.
    UdpSession,
}

pub struct Ledger {
    shared: Arc<Shared>,
    ctx: Arc<AcceptCtx>,
    client: SocketAddr,
    started: Instant,
    slots: Slots,
    /// The server this client is held on; its `active` count includes this client.
    server: Option<Picked>,
    /// The connection came from an `accept_proxy` source (and opened with its header).
    proxied: bool,
    /// Its hold on its client address in the frontend's table (per-client limits, busiest
    /// clients); `None` before admission, or when the table had no room.
    held: Option<crate::clients::ClientRef>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub outcome: &'static str,
    /// The `protocol` of the access-log line: the service's name, unless the connection
    /// became something else (an `https` connection passed through by SNI).
    pub(crate) protocol: &'static str,
}

impl Ledger {
    /// The ledger of a TCP connection whose slots the accept loop took and whose place in
    /// `worker`'s load was counted.
    pub(crate) fn tcp(
        shared: Arc<Shared>,
        ctx: Arc<AcceptCtx>,
        worker: usize,
        client: SocketAddr,
    ) -> Ledger {
        Self::open(shared, ctx, client, Slots::Tcp { worker })
    }

    /// The ledger of a UDP session whose slots `udp::acquire` took.
    pub(crate) fn udp_session(
        shared: Arc<Shared>,
        ctx: Arc<AcceptCtx>,
        client: SocketAddr,
    ) -> Ledger {
        Self::open(shared, ctx, client, Slots::UdpSession)
    }

    fn open(shared: Arc<Shared>, ctx: Arc<AcceptCtx>, client: SocketAddr, slots: Slots) -> Self {
        ctx.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        ctx.stats.connections_active.fetch_add(1, Ordering::Relaxed);
        let protocol = ctx.service.log_name();
        Ledger {
            shared,
            ctx,
            client,
            started: Instant::now(),
            slots,
            server: None,
            proxied: false,
            held: None,
            bytes_in: 0,
            bytes_out: 0,
            outcome: "stopped",
            protocol,
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn ctx(&self) -> &Arc<AcceptCtx> {
        &self.ctx
    }

    pub fn client(&self) -> SocketAddr {
        self.client
    }

    /// The client as a trusted PROXY header names it (`accept_proxy`).
    pub(crate) fn set_client(&mut self, client: SocketAddr) {
        self.client = client;
    }

    /// Marks the connection as one from an `accept_proxy` source, whose header was read.
    pub(crate) fn set_proxied(&mut self) {
        self.proxied = true;
    }

    /// Whether the connection came from an `accept_proxy` source.
    pub(crate) fn proxied(&self) -> bool {
        self.proxied
    }

    /// The client's entry in its frontend's table, once admitted.
    pub(crate) fn client_entry(&self) -> Option<&crate::clients::Client> {
        self.held.as_ref().map(|h| h.client())
    }

    /// The same, shared: the HTTP service counts each request on it.
    pub(crate) fn client_arc(&self) -> Option<Arc<crate::clients::Client>> {
        self.held.as_ref().map(|h| h.shared())
    }

    /// Admits the client against its frontend's per-client limits (`[frontend.NAME.limits]`)
    /// and counts it there until the ledger is dropped; a refused one is counted and logged.
    pub(crate) fn admit_client(&mut self) -> Result<(), fulcrum_core::acl::Rejection> {
        let ctx = &self.ctx;
        let table = &ctx.stats.clients;
        let limits = &ctx.frontend.limits;
        if limits.max_clients == 0 {
            // `max_clients = 0`: nothing here needs the table (check refuses the keys that do).
            return Ok(());
        }
        let held = match self.slots {
            Slots::Tcp { .. } => {
                let fair = crate::admit::fair_share(&self.shared, ctx, self.client.ip());
                table.connect(self.client.ip(), limits, fair).inspect_err(|why| {
                    crate::guard::refused(&self.shared, ctx, self.client, *why);
                })?
            }
            Slots::UdpSession => table.session(self.client.ip(), limits),
        };
        self.held = held;
        Ok(())
    }

    /// Holds `server`, whose `active` count the caller has already raised for this client:
    /// from now on the ledger lowers it when the client ends.
    pub(crate) fn hold(&mut self, server: Picked) {
        self.server = Some(server);
    }

    pub fn server(&self) -> Option<&Picked> {
        self.server.as_ref()
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Some(why) = crate::guard::cutting() {
            self.outcome = why;
        }
        let f = &self.ctx.stats;
        if let Some(s) = &self.server {
            s.stats.active.fetch_sub(1, Ordering::Relaxed);
            s.pool.slot_freed();
            s.stats.on_released();
            s.stats.bytes_in.fetch_add(self.bytes_in, Ordering::Relaxed);
            s.stats.bytes_out.fetch_add(self.bytes_out, Ordering::Relaxed);
        }
        f.bytes_in.fetch_add(self.bytes_in, Ordering::Relaxed);
        f.bytes_out.fetch_add(self.bytes_out, Ordering::Relaxed);
        f.connections_active.fetch_sub(1, Ordering::Relaxed);
        match self.slots {
            Slots::Tcp { worker } => {
                release_tcp_slots(&self.shared, &self.ctx);
                if let Some(p) = self.shared.peers.get(worker) {
                    p.load.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Slots::UdpSession => release_udp_session(&self.shared, &self.ctx),
        }
        if self.shared.access_log() {
            let server = self.server.as_ref().map_or("-", |s| s.key.as_str());
            tracing::info!(
                target: "fulcrum::access",
                client = %self.client, frontend = %self.ctx.name,
                protocol = self.protocol, server, bytes_in = self.bytes_in,
                bytes_out = self.bytes_out, duration_ms = self.started.elapsed().as_millis() as u64,
                outcome = self.outcome
            );
        }
    }
}
