//! What an accepted TCP connection passes on its worker before its service runs: the PROXY
//! header a trusted balancer (`accept_proxy`) must send first, whose client is then checked by
//! address (guard.rs), and the frontend's per-client limits (clients.rs, through the ledger).
//! A client refused here is reset; no server ever hears of it. Also the fair share of the
//! connection slots (docs/guards.md): the share an address may hold under pressure, and the
//! room made for a newcomer when no slot is left.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use fulcrum_core::acl::Rejection;
use fulcrum_core::clients::under_pressure;
use tokio::net::TcpStream;

use crate::clock::now_ms;
use crate::context::{AcceptCtx, Shared};
use crate::ledger::Ledger;
use crate::ratelog::RateLimit;

/// Whether `peer` is an `accept_proxy` source of `ctx`'s frontend.
pub(crate) fn is_proxy_source(ctx: &AcceptCtx, peer: SocketAddr) -> bool {
    ctx.frontend.accept_proxy.iter().any(|n| n.contains(&peer.ip().to_canonical()))
}

static PROXY_HEADER_LOG: crate::ratelog::RateLimit = crate::ratelog::RateLimit::new(1_000);

/// What a connection passes before its service runs: the PROXY header of a trusted source
/// (its client becomes the client, checked by address), then the per-client limits of the
/// frontend. A refused client is reset: no server ever hears of it.
pub(crate) async fn admit(ledger: &mut Ledger, stream: &mut TcpStream, proxied: bool) -> bool {
    if proxied && !take_proxy_header(ledger, stream).await {
        return false;
    }
    let why = match ledger.admit_client() {
        Ok(()) => match first_byte(ledger, stream).await {
            Ok(()) => return true,
            Err(why) => why,
        },
        Err(why) => why.name(),
    };
    ledger.outcome = why;
    // A reset frees the socket at once, where a FIN would leave it in TIME_WAIT here.
    let _ = socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO));
    false
}

static FIRST_BYTE_LOG: RateLimit = RateLimit::new(1_000);

/// `first_byte_timeout`: waits until the client has sent something (or closed) before any
/// server hears of it; a client still silent when it ends is refused (`first-byte-timeout`,
/// counted). Nothing is read: the service gets every byte.
async fn first_byte(ledger: &Ledger, stream: &TcpStream) -> Result<(), &'static str> {
    let Some(wait) = ledger.ctx().frontend.first_byte_timeout else { return Ok(()) };
    if tokio::time::timeout(wait, stream.readable()).await.is_ok() {
        return Ok(());
    }
    let ctx = ledger.ctx();
    ctx.stats.first_byte_timeouts.fetch_add(1, Ordering::Relaxed);
    if let Some(skipped) = FIRST_BYTE_LOG.allow(now_ms()) {
        tracing::info!(
            frontend = %ctx.name, client = %ledger.client(), wait_ms = wait.as_millis() as u64,
            skipped, "client sent nothing within first_byte_timeout: closed"
        );
    }
    Err("first-byte-timeout")
}

/// Reads the PROXY header a trusted source (`accept_proxy`) must send first; its client becomes
/// the connection's client. Without a valid one the connection is closed (`bad-proxy-header`);
/// so is one whose client its frontend refuses by address (outcome: the reason).
async fn take_proxy_header(ledger: &mut Ledger, stream: &mut TcpStream) -> bool {
    ledger.set_proxied();
    let client = match crate::proxyproto::read_header(stream).await {
        Ok(Some(client)) => {
            ledger.set_client(client);
            client
        }
        // UNKNOWN / LOCAL: the balancer in front speaks for itself (its health check).
        Ok(None) => ledger.client(),
        Err(e) => {
            ledger.outcome = "bad-proxy-header";
            if let Some(skipped) = PROXY_HEADER_LOG.allow(crate::clock::now_ms()) {
                tracing::warn!(
                    frontend = %ledger.ctx().name, source = %ledger.client(), error = %e,
                    skipped, "connection without a valid PROXY header closed"
                );
            }
            return false;
        }
    };
    match crate::guard::check(ledger.shared(), ledger.ctx(), client.ip()) {
        Ok(()) => true,
        Err(why) => {
            crate::guard::refused(ledger.shared(), ledger.ctx(), client, why);
            ledger.outcome = why.name();
            false
        }
    }
}

/// Whether the connection slots `ctx`'s frontend draws on (the global ones or its own) are
/// under pressure: taken past `fair_share_above`. Never with `fair_share = false`.
pub(crate) fn pressed(shared: &Shared, ctx: &AcceptCtx) -> bool {
    let fs = &ctx.frontend.fair_share;
    if !fs.enabled {
        return false;
    }
    let global = &shared.limits;
    under_pressure(global.active(), global.max(), fs.above_percent)
        || ctx
            .limits
            .as_ref()
            .is_some_and(|l| under_pressure(l.active(), l.max(), fs.above_percent))
}

/// The most connections one address of `ctx`'s frontend may hold now: its fair share of the
/// connection slots while they are under pressure (`fair_share_above` of the global or the
/// frontend's), `None` otherwise, when `fair_share = false`, and for exempt addresses.
pub(crate) fn fair_share(shared: &Shared, ctx: &AcceptCtx, ip: IpAddr) -> Option<usize> {
    if !pressed(shared, ctx) || exempt(ctx, ip) {
        return None;
    }
    Some(share_when_full(shared, ctx))
}

/// How long a connection may stay idle: its frontend's idle (or keep-alive) timeout, cut to
/// `pressure_idle_timeout` while the frontend's slots are under pressure (`pressed`) and
/// back to whole when the pressure passes. Idle connections are the cheapest to give up:
/// their clients reconnect when they have something to say.
#[derive(Clone, Copy)]
pub(crate) struct IdleLimit<'a> {
    full: Duration,
    under: Option<(Duration, &'a Shared, &'a AcceptCtx)>,
}

impl<'a> IdleLimit<'a> {
    /// `full` for a connection of `ctx`'s frontend.
    pub(crate) fn new(full: Duration, shared: &'a Shared, ctx: &'a AcceptCtx) -> Self {
        let fs = &ctx.frontend.fair_share;
        let under = (fs.enabled && fs.pressure_idle_timeout < full).then_some((
            fs.pressure_idle_timeout,
            shared,
            ctx,
        ));
        IdleLimit { full, under }
    }

    /// The limit in force now.
    pub(crate) fn now(&self) -> Duration {
        match self.under {
            Some((short, shared, ctx)) if pressed(shared, ctx) => short,
            _ => self.full,
        }
    }

    /// A connection idle for `limit` (what `now` said) is being closed: counted and logged
    /// (rate-limited) when it was the shortened limit.
    pub(crate) fn expired(&self, limit: Duration) {
        if let Some((_, _, ctx)) = self.under
            && limit < self.full
        {
            ctx.stats.pressure_idle_closed.fetch_add(1, Ordering::Relaxed);
            if let Some(skipped) = PRESSURE_LOG.allow(now_ms()) {
                tracing::info!(
                    frontend = %ctx.name, idle_ms = limit.as_millis() as u64, skipped,
                    "connection slots under pressure: idle connection closed early"
                );
            }
        }
    }

    /// How long a wait may run before the limit is looked at again: the short limit, so a
    /// connection idle that long is closed within it once pressure begins.
    pub(crate) fn recheck(&self) -> Duration {
        self.under.map_or(self.full, |(short, ..)| short)
    }
}

impl From<Duration> for IdleLimit<'static> {
    /// A limit that never shrinks.
    fn from(full: Duration) -> Self {
        IdleLimit { full, under: None }
    }
}

fn exempt(ctx: &AcceptCtx, ip: IpAddr) -> bool {
    let set = &ctx.frontend.fair_share.exempt;
    !set.is_empty() && set.contains(ip.to_canonical(), now_ms())
}

/// Connections accepted while every slot was taken and still being decided on (over all
/// workers), and how far past the limits a client let in by closing another may take
/// slots until that one's come back: both live on the descriptor reserve, so they are few.
pub(crate) const DECIDING_MAX: usize = 64;

/// How long a client accepted while every slot was taken, for whom no room could be made,
/// waits for a slot to free (as it would have in the kernel's backlog) before it is reset.
pub(crate) const ROOM_WAIT: Duration = Duration::from_secs(2);

static FULL_LOG: RateLimit = RateLimit::new(1_000);
static PRESSURE_LOG: RateLimit = RateLimit::new(1_000);

/// What becomes of a client accepted while no connection slot was left (`fair_share` on).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Room {
    /// One connection of an address holding more was told to close, and the client holds
    /// its slots already (taken past the limits until that one's come back): serve it.
    Made,
    /// It may wait `ROOM_WAIT` for a slot to free: nobody holds enough more than it does.
    Wait,
    /// Refused (`full`, counted and logged): it holds its fair share already.
    Refused,
}

/// Decides on a client accepted while no connection slot was left. Room is made for an
/// address holding less than half its fair share when some address holds at least two more
/// connections than it (so closing one never turns the tables): the oldest connection of
/// the address holding the most is closed, and the client takes its slots at once, ahead of
/// anybody waiting for them. A newcomer (an address holding nothing) thus always gets in
/// while anybody holds two or more.
pub(crate) fn make_room(shared: &Shared, ctx: &AcceptCtx, peer: SocketAddr) -> Room {
    let ip = peer.ip();
    let table = &ctx.stats.clients;
    let limits = &ctx.frontend.limits;
    let share = share_when_full(shared, ctx);
    let is_exempt = exempt(ctx, ip);
    let held = table.held_by(ip, limits) as usize;
    if held >= share && !is_exempt {
        refuse_full(shared, ctx, peer, held, share);
        return Room::Refused;
    }
    // Room is made for an address holding less than half its share: a newcomer always, not
    // the members of a flood closing each other's connections in turn. One holding more is
    // refused at once rather than left to wait: a flood's backlog would otherwise take every
    // place of those being decided on, two seconds each, with newcomers queued behind it.
    if held > 0 && held >= share / 2 && !is_exempt {
        refuse_full(shared, ctx, peer, held, share);
        return Room::Refused;
    }
    let me = fulcrum_core::clients::client_key(ip, limits.ipv6_prefix);
    let victim = table
        .busiest(|a| exempt(ctx, a))
        .filter(|v| v.spare() as usize > held.saturating_add(1) && v.key != me);
    // Only a newcomer (holding nothing) waits for a slot when no room can be made now: one
    // holding some is served already, and its waiting would hold up those behind it.
    let wait_or_refuse = || {
        if held == 0 || is_exempt {
            Room::Wait
        } else {
            refuse_full(shared, ctx, peer, held, share);
            Room::Refused
        }
    };
    let Some(victim) = victim else { return wait_or_refuse() };
    if !take_slots_over(shared, ctx) {
        // Those closed for earlier newcomers have not ended yet: too many at once. Their
        // slots come back soon.
        return wait_or_refuse();
    }
    victim.evict_one();
    ctx.stats.fair_share_evictions.fetch_add(1, Ordering::Relaxed);
    if let Some(skipped) = FULL_LOG.allow(now_ms()) {
        tracing::info!(
            frontend = %ctx.name, client = %peer, evicted = %victim.key, held = victim.active(),
            share, skipped, "no connection slot left: closed one of the busiest address's"
        );
    }
    Room::Made
}

/// Takes a TCP connection's slots (global, descriptors, frontend) past their limits by at
/// most `DECIDING_MAX` connections' worth, all or none.
fn take_slots_over(shared: &Shared, ctx: &AcceptCtx) -> bool {
    use crate::ledger::TCP_DESCRIPTORS;
    if !shared.limits.take_over(1, DECIDING_MAX) {
        return false;
    }
    if !shared.descriptors.take_over(TCP_DESCRIPTORS, DECIDING_MAX * TCP_DESCRIPTORS) {
        shared.limits.release();
        return false;
    }
    if let Some(l) = &ctx.limits
        && !l.take_over(1, DECIDING_MAX)
    {
        shared.limits.release();
        shared.descriptors.release_n(TCP_DESCRIPTORS);
        return false;
    }
    true
}

/// A client that waited `ROOM_WAIT` in vain for a slot.
pub(crate) fn waited_in_vain(shared: &Shared, ctx: &AcceptCtx, peer: SocketAddr) {
    let held = ctx.stats.clients.held_by(peer.ip(), &ctx.frontend.limits) as usize;
    refuse_full(shared, ctx, peer, held, share_when_full(shared, ctx));
}

/// An address's fair share of the slots of `ctx`'s frontend (the smaller of its limit and
/// the global one) among those holding some now.
fn share_when_full(shared: &Shared, ctx: &AcceptCtx) -> usize {
    let capacity =
        ctx.limits.as_ref().map_or(shared.limits.max(), |l| l.max().min(shared.limits.max()));
    fulcrum_core::clients::fair_share(capacity, ctx.stats.clients.holders())
}

fn refuse_full(shared: &Shared, ctx: &AcceptCtx, peer: SocketAddr, held: usize, share: usize) {
    crate::guard::refused(shared, ctx, peer, Rejection::Full);
    if let Some(skipped) = FULL_LOG.allow(now_ms()) {
        tracing::info!(
            frontend = %ctx.name, client = %peer, held, share, skipped,
            "no connection slot left and none to make: client refused"
        );
    }
}
