//! Admission by client address, for every protocol: the one place a client is checked
//! against its frontend's access lists (read from the routing snapshot) and the runtime block
//! list (its own snapshot, swapped whole by the control plane), with the verdict from
//! `fulcrum_core::acl::check`; the rejection counters and their rate-limited log; and the cut
//! of open connections and sessions when a block asks for it.
//!
//! Cutting without a registry: every TCP connection's task waits on its worker's `Notify`
//! (registered once, on a lock only that worker's tasks take) and looks at the cut set when
//! woken; UDP receive loops wait on one shared `Notify`, registered once per loop.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use arc_swap::ArcSwap;
use fulcrum_core::acl::{Access, BlockTable, IpSet, Rejection};
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::context::{AcceptCtx, Shared};
use crate::ratelog::RateLimit;

static REFUSED_LOG: RateLimit = RateLimit::new(1_000);

/// The runtime block list as the data path matches it.
#[derive(Default)]
struct Blocks {
    /// Every entry in force, ending on the process clock ([`now_ms`]).
    all: IpSet,
    /// The entries added with `cut`: open connections from them are closed.
    cut: IpSet,
    entries: usize,
}

/// What the workers share for admission by address.
pub struct Guard {
    blocks: ArcSwap<Blocks>,
    /// Moves whenever a verdict may change (the block list or the routing snapshot changed):
    /// a UDP session checks its client again when this differs from what it last saw.
    generation: AtomicU64,
    /// Wakes the UDP receive loops to end the sessions of addresses just cut.
    udp_cut: Notify,
    /// Bans asked for by the data path (`[frontend.X.limits] ban`), waiting for the control
    /// plane to put them on the block list. A lock taken only when a ban is asked or taken.
    bans: std::sync::Mutex<Vec<BanRequest>>,
    /// Wakes the control plane when a ban is asked.
    ban_asked: Notify,
}

/// A ban asked by the data path: what the control plane adds to the runtime block list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRequest {
    /// The client's address as a range: `/32`, or for IPv6 its `ipv6_prefix`.
    pub cidr: String,
    pub duration: std::time::Duration,
    /// For the block entry: which frontend, which limit, how many refusals in what window.
    pub reason: String,
}

/// Bans waiting for the control plane at most; more are dropped (and logged) until it
/// catches up. Each client asks once per ban, so this many is a flood of distinct clients.
const MAX_PENDING_BANS: usize = 1024;

static BAN_LOG: RateLimit = RateLimit::new(1_000);

impl Default for Guard {
    fn default() -> Self {
        Guard {
            blocks: ArcSwap::from_pointee(Blocks::default()),
            generation: AtomicU64::new(1),
            udp_cut: Notify::new(),
            bans: std::sync::Mutex::new(Vec::new()),
            ban_asked: Notify::new(),
        }
    }
}

impl Guard {
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Something a verdict depends on changed (called after the routing snapshot is swapped).
    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Entries of the runtime block list in force (for metrics).
    pub fn blocks(&self) -> usize {
        self.blocks.load().entries
    }

    /// Whether an open connection from `ip` must be closed now.
    pub(crate) fn cuts(&self, ip: IpAddr) -> bool {
        let b = self.blocks.load();
        !b.cut.is_empty() && b.cut.contains(ip, now_ms())
    }

    pub(crate) fn udp_cut(&self) -> &Notify {
        &self.udp_cut
    }

    /// The bans asked since the last call, oldest first.
    pub fn take_bans(&self) -> Vec<BanRequest> {
        std::mem::take(&mut *self.bans.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Notified when a ban is asked (a permit is kept if nobody waits).
    pub fn ban_asked(&self) -> &Notify {
        &self.ban_asked
    }

    fn ask_ban(&self, ban: BanRequest) {
        let mut pending = self.bans.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= MAX_PENDING_BANS {
            drop(pending);
            if let Some(skipped) = BAN_LOG.allow(now_ms()) {
                tracing::warn!(cidr = %ban.cidr, skipped, "too many bans waiting: ban dropped");
            }
            return;
        }
        pending.push(ban);
        drop(pending);
        self.ban_asked.notify_one();
    }
}

impl Shared {
    /// Publishes the runtime block list: new clients are checked against it from now on. With
    /// `cut`, open connections and UDP sessions whose client is in an entry added with `cut`
    /// are closed.
    pub fn set_blocks(&self, table: &BlockTable, cut: bool) {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let (all, cuts) = table.compile(unix, now_ms());
        self.guard.blocks.store(Arc::new(Blocks { all, cut: cuts, entries: table.len() }));
        self.guard.changed();
        if cut {
            for p in &self.peers {
                p.cut.notify_waiters();
            }
            self.guard.udp_cut.notify_waiters();
        }
    }
}

static OPEN: Access = Access { allow: None, deny: IpSet::EMPTY };

/// The verdict for a client of `ctx`'s frontend at `ip`.
pub(crate) fn check(shared: &Shared, ctx: &AcceptCtx, ip: IpAddr) -> Result<(), Rejection> {
    let snap = shared.state.load();
    // No frontend only for a moment while a reload removes it: its lists went with it.
    let access = snap.frontend(&ctx.name).map_or(&OPEN, |f| &*f.access);
    let blocks = shared.guard.blocks.load();
    if access.is_open() && blocks.all.is_empty() {
        return Ok(());
    }
    fulcrum_core::acl::check(access, &blocks.all, ip, now_ms())
}

/// Counts a refused client of `ctx` and logs it (at most once a second for all frontends).
/// A refusal by a per-client limit counts towards the frontend's `ban`, if it has one.
pub(crate) fn refused(shared: &Shared, ctx: &AcceptCtx, client: SocketAddr, why: Rejection) {
    if let Some(c) = ctx.stats.rejections.get(why.index()) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    let limits = &ctx.frontend.limits;
    let by_limit = matches!(
        why,
        Rejection::ConnPerClient
            | Rejection::ConnRate
            | Rejection::RequestRate
            | Rejection::DatagramRate
    );
    if by_limit
        && let Some(ban) = limits.ban
        && let Some(key) = ctx.stats.clients.trip(client.ip(), limits)
    {
        let prefix = if key.is_ipv4() { 32 } else { limits.ipv6_prefix };
        let cidr = format!("{key}/{prefix}");
        let reason = format!(
            "ban: {} refusals by per-client limits within {}s on frontend {} (the last: {})",
            ban.after,
            ban.within.as_secs_f64(),
            ctx.name,
            why.name()
        );
        tracing::warn!(
            frontend = %ctx.name, cidr = %cidr, for_s = ban.duration.as_secs(), reason = why.name(),
            "client banned"
        );
        shared.guard.ask_ban(BanRequest { cidr, duration: ban.duration, reason });
    }
    if let Some(skipped) = REFUSED_LOG.allow(now_ms()) {
        tracing::info!(
            frontend = %ctx.name, client = %client, reason = why.name(), skipped,
            "client refused"
        );
    }
}

/// Checks a TCP client of `ctx` at accept; a refused one is counted, logged and closed at
/// once with a reset (no server ever hears of it). The stream comes back when it may go on.
pub(crate) fn admit_stream(
    shared: &Shared,
    ctx: &AcceptCtx,
    stream: std::net::TcpStream,
    peer: SocketAddr,
) -> Option<std::net::TcpStream> {
    match check(shared, ctx, peer.ip()) {
        Ok(()) => Some(stream),
        Err(why) => {
            refused(shared, ctx, peer, why);
            // A reset frees the socket at once, where a FIN would leave it in TIME_WAIT here.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
            None
        }
    }
}

/// Checks one datagram's sender for a UDP frontend (counted and logged when refused).
pub(crate) fn admit_datagram(
    shared: &Shared,
    ctx: &AcceptCtx,
    client: SocketAddr,
) -> Result<(), Rejection> {
    check(shared, ctx, client.ip()).inspect_err(|why| refused(shared, ctx, client, *why))
}

/// Checks one datagram of a UDP service without sessions (per-datagram proxy, fan-out,
/// directory): by address, then against the sender's `datagram_rate_per_client`.
pub(crate) fn admit_lone_datagram(
    shared: &Shared,
    ctx: &AcceptCtx,
    client: SocketAddr,
) -> Result<(), Rejection> {
    admit_datagram(shared, ctx, client)?;
    let limits = &ctx.frontend.limits;
    if let Some(rate) = &limits.datagram_rate_per_client
        && !ctx.stats.clients.datagram(client.ip(), limits, rate)
    {
        refused(shared, ctx, client, Rejection::DatagramRate);
        return Err(Rejection::DatagramRate);
    }
    Ok(())
}

thread_local! {
    /// Set while a cut connection's task is being dropped: why, for its ledger's log line.
    static CUTTING: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Why the connection being dropped on this thread was cut, if it was.
pub(crate) fn cutting() -> Option<&'static str> {
    CUTTING.get()
}

/// Marks the drop of a cut connection's service for its ledger. Declared before the service
/// future, so that it is dropped after it: [`CutMark::set`] then covers the service's drop, and
/// its own drop clears the mark (no await comes between, so no other task sees it).
#[derive(Default)]
pub(crate) struct CutMark(());

impl CutMark {
    pub(crate) fn set(&self, why: Cut) {
        CUTTING.set(Some(match why {
            Cut::Blocked => Rejection::Blocked.name(),
            Cut::FairShare => "fair-share-evicted",
        }));
    }
}

impl Drop for CutMark {
    fn drop(&mut self) {
        CUTTING.set(None);
    }
}

/// Why a connection was closed from outside its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// A block with `cut` covers its client.
    Blocked,
    /// Its client held the most connections when no slot was left (the fair share).
    FairShare,
}

/// Polls `service` (a TCP connection of `client`, served on `worker`) until it ends (`None`)
/// or until it must be closed (`Some(why)`): a block with `cut` covers `client`, or `evict`
/// (its client's, for the fair share) picks it. The caller then drops the service on the
/// spot, closing both sockets. The service is borrowed, not moved in: an HTTP connection's
/// future is large, and a future taken by value would be stored twice in this one.
pub(crate) async fn until_cut<F: Future<Output = ()>>(
    shared: &Shared,
    worker: usize,
    client: IpAddr,
    evict: Option<&Notify>,
    mut service: Pin<&mut F>,
) -> Option<Cut> {
    let Some(peer) = shared.peers.get(worker) else {
        service.await;
        return None;
    };
    let mut notified = pin!(peer.cut.notified());
    // Registered before the cut set is read: a cut published in between still wakes it.
    notified.as_mut().enable();
    if shared.guard.cuts(client) {
        return Some(Cut::Blocked);
    }
    let mut evicted = pin!(async {
        match evict {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    });
    std::future::poll_fn(|cx| {
        if service.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        while notified.as_mut().poll(cx).is_ready() {
            notified.set(peer.cut.notified());
            notified.as_mut().enable();
            if shared.guard.cuts(client) {
                return Poll::Ready(Some(Cut::Blocked));
            }
        }
        if evicted.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Cut::FairShare));
        }
        Poll::Pending
    })
    .await
}
