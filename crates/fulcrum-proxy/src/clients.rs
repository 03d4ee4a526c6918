//! Each frontend's table of client addresses: what every client holds (connections, UDP
//! sessions) and how fast it comes (connections, requests, datagrams), for the per-client
//! limits of `[frontend.NAME.limits]` and for the busiest clients the API and the dashboard
//! list. The rules (who a client is, the rate rule) are `fulcrum_core::clients`.
//!
//! Bounded: at most `max_clients` addresses per frontend (twice that only while every one of
//! them holds a connection, which the connection limits bound anyway); when full, the quarter
//! seen least recently among those holding nothing is forgotten in one pass, so each new
//! address costs O(1) amortized. The table is locked only to find a client when its
//! connection or session opens (one shard of 16, a hash lookup); everything after goes
//! through the client's own atomics, held by the connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_config::ClientLimits;
use fulcrum_core::acl::Rejection;
use fulcrum_core::clients::{Rate, client_key};
use rustix::time::{ClockId, clock_gettime};
use tokio::sync::Notify;

const SHARDS: usize = 16;

/// Most connections (and requests) begun in the last second or two that the fair share
/// does not count as held yet.
const YOUNG_ALLOWANCE: u64 = 64;

type Shard = Mutex<HashMap<IpAddr, Arc<Client>>>;

/// Nanoseconds on the coarse monotonic clock (a vDSO load; one tick of resolution is far
/// finer than any rate a client is held to over its burst).
pub fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::MonotonicCoarse);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// One client address (or IPv6 prefix) of a frontend.
#[derive(Debug)]
pub struct Client {
    pub key: IpAddr,
    /// Connections and UDP sessions open now.
    active: AtomicU32,
    /// The table's count of clients holding something (this one counts while `active > 0`).
    holders: Arc<AtomicUsize>,
    /// Wakes one of its connections (the one waiting longest: its oldest) to close it and
    /// make room for an address holding less (the fair share).
    pub(crate) evict: Notify,
    /// Connections told through `evict` to close that have not yet: not counted again when
    /// the next newcomer looks for room (a `Notify` keeps one permit at most, so telling a
    /// client more often than it has connections waiting would free nothing).
    evicting: AtomicU32,
    /// Refusals by a per-client limit in the ban window begun at `trips_since_ns`.
    trips: AtomicU32,
    trips_since_ns: AtomicU64,
    /// Until when (process clock, ns) a ban asked for it holds: not asked for again before.
    banned_until_ns: AtomicU64,
    connections: AtomicU64,
    requests: AtomicU64,
    refused: AtomicU64,
    /// GCRA theoretical arrival times (`fulcrum_core::clients::Rate::admit`).
    conn_tat: AtomicU64,
    request_tat: AtomicU64,
    datagram_tat: AtomicU64,
    last_seen_ns: AtomicU64,
    /// Connections and requests in the current and the previous whole second (approximate
    /// under races: for display only, never for a limit).
    window: Window,
}

#[derive(Debug, Default)]
struct Window {
    second: AtomicU64,
    now: AtomicU64,
    before: AtomicU64,
}

impl Window {
    fn bump(&self, now_ns: u64) {
        let sec = now_ns / 1_000_000_000;
        let at = self.second.load(Ordering::Relaxed);
        if at != sec
            && self.second.compare_exchange(at, sec, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let last = self.now.swap(0, Ordering::Relaxed);
            self.before.store(if at + 1 == sec { last } else { 0 }, Ordering::Relaxed);
        }
        self.now.fetch_add(1, Ordering::Relaxed);
    }

    /// Events in this second and the one before: those of the last one to two seconds.
    fn recent(&self, now_ns: u64) -> u64 {
        let sec = now_ns / 1_000_000_000;
        match sec.saturating_sub(self.second.load(Ordering::Relaxed)) {
            0 => self.now.load(Ordering::Relaxed) + self.before.load(Ordering::Relaxed),
            1 => self.now.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Events in the last whole second.
    fn per_second(&self, now_ns: u64) -> u64 {
        let sec = now_ns / 1_000_000_000;
        match sec.saturating_sub(self.second.load(Ordering::Relaxed)) {
            0 => self.before.load(Ordering::Relaxed),
            1 => self.now.load(Ordering::Relaxed),
            _ => 0,
        }
    }
}

impl Client {
    fn new(key: IpAddr, now_ns: u64, holders: Arc<AtomicUsize>) -> Client {
        Client {
            key,
            active: AtomicU32::new(0),
            holders,
            evict: Notify::new(),
            evicting: AtomicU32::new(0),
            trips: AtomicU32::new(0),
            trips_since_ns: AtomicU64::new(0),
            banned_until_ns: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            conn_tat: AtomicU64::new(0),
            request_tat: AtomicU64::new(0),
            datagram_tat: AtomicU64::new(0),
            last_seen_ns: AtomicU64::new(now_ns),
            window: Window::default(),
        }
    }

    /// One event under `rate`, kept in `tat`: `Err(wait)` when over it.
    fn take(tat: &AtomicU64, rate: &Rate, now_ns: u64) -> Result<(), Duration> {
        let mut cur = tat.load(Ordering::Relaxed);
        loop {
            let next = rate.admit(cur, now_ns)?;
            match tat.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(seen) => cur = seen,
            }
        }
    }

    /// One HTTP request of this client: `Err(wait)` (answered 429, `Retry-After`) when it
    /// comes faster than `rate`.
    pub fn request(&self, rate: Option<&Rate>) -> Result<(), Duration> {
        let now = now_ns();
        if let Some(rate) = rate
            && let Err(wait) = Client::take(&self.request_tat, rate, now)
        {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(wait);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.window.bump(now);
        Ok(())
    }

    /// One datagram of this client: false (dropped) when faster than `rate`.
    pub fn datagram(&self, rate: &Rate) -> bool {
        let ok = Client::take(&self.datagram_tat, rate, now_ns()).is_ok();
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections open now less those told to close for others that have not yet.
    pub(crate) fn spare(&self) -> u32 {
        self.active().saturating_sub(self.evicting.load(Ordering::Relaxed))
    }

    /// Tells its longest-waiting connection to close and make room (`evict`).
    pub(crate) fn evict_one(&self) {
        self.evicting.fetch_add(1, Ordering::Relaxed);
        self.evict.notify_one();
    }

    /// One of its connections closed as `evict` told it.
    pub(crate) fn evicted(&self) {
        let _ =
            self.evicting.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// What the fair share counts as held: connections open now less those (and requests)
    /// begun in the last one to two seconds, at most `YOUNG_ALLOWANCE` of them. A client
    /// making short requests holds little even when a slow moment leaves dozens open at once;
    /// connections kept open hold from a second or two on, and a flood opening thousands at
    /// once holds all but the allowance at once.
    fn holding(&self, now_ns: u64) -> u32 {
        let recent = self.window.recent(now_ns).min(YOUNG_ALLOWANCE) as u32;
        self.active().saturating_sub(recent)
    }

    /// Takes a hold (a connection or session): counted in `active`, and in the table's
    /// holders when it is the first.
    fn hold(self: &Arc<Client>, now: u64) -> ClientRef {
        if self.active.fetch_add(1, Ordering::Relaxed) == 0 {
            self.holders.fetch_add(1, Ordering::Relaxed);
        }
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.window.bump(now);
        ClientRef(self.clone())
    }
}

/// A connection's or session's hold on its client: counted in `active` until dropped.
#[derive(Debug)]
pub struct ClientRef(Arc<Client>);

impl ClientRef {
    pub fn client(&self) -> &Client {
        &self.0
    }

    pub(crate) fn shared(&self) -> Arc<Client> {
        self.0.clone()
    }
}

impl Drop for ClientRef {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.holders.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A client as the busiest-clients list shows it.
#[derive(Debug, Clone)]
pub struct ClientView {
    pub address: String,
    pub active: u32,
    pub connections_total: u64,
    pub requests_total: u64,
    pub refused_total: u64,
    /// Connections plus requests in the last whole second.
    pub per_second: u64,
    pub idle_ms: u64,
}

/// One frontend's clients.
#[derive(Debug)]
pub struct ClientTable {
    shards: Box<[Shard]>,
    /// `max_clients`, as last configured (a reload may change it).
    cap: AtomicU64,
    /// Clients holding at least one connection or session.
    holders: Arc<AtomicUsize>,
}

impl Default for ClientTable {
    fn default() -> Self {
        ClientTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            cap: AtomicU64::new(fulcrum_config::DEFAULT_MAX_CLIENTS as u64),
            holders: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl ClientTable {
    pub fn set_capacity(&self, max_clients: usize) {
        self.cap.store(max_clients as u64, Ordering::Relaxed);
    }

    fn shard(&self, key: &IpAddr) -> &Shard {
        use std::hash::{BuildHasher, Hasher};
        // Fixed keys: the shard only spreads the lock, the map inside has its own hasher.
        let mut h =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .build_hasher();
        std::hash::Hash::hash(key, &mut h);
        &self.shards[(h.finish() as usize) % self.shards.len()]
    }

    /// The client at `ip`, made if new (`None` only when the table is full of clients that
    /// all hold connections: the client then goes uncounted rather than unserved).
    fn find(&self, ip: IpAddr, limits: &ClientLimits, now: u64) -> Option<Arc<Client>> {
        let key = client_key(ip, limits.ipv6_prefix);
        let mut map = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&key) {
            c.last_seen_ns.store(now, Ordering::Relaxed);
            return Some(c.clone());
        }
        let cap = (self.cap.load(Ordering::Relaxed) as usize).div_ceil(SHARDS).max(1);
        if map.len() >= cap {
            forget_idlest(&mut map, cap);
            if map.len() >= cap * 2 {
                return None;
            }
        }
        let c = Arc::new(Client::new(key, now, self.holders.clone()));
        map.insert(key, c.clone());
        Some(c)
    }

    /// A new TCP connection from `ip`: its hold on the client, or why it is refused.
    /// `fair`: under pressure, the most connections an address may hold (the fair share).
    /// `Ok(None)`: served uncounted (table full of busy clients).
    pub fn connect(
        &self,
        ip: IpAddr,
        limits: &ClientLimits,
        fair: Option<usize>,
    ) -> Result<Option<ClientRef>, Rejection> {
        self.connect_at(ip, limits, fair, now_ns())
    }

    fn connect_at(
        &self,
        ip: IpAddr,
        limits: &ClientLimits,
        fair: Option<usize>,
        now: u64,
    ) -> Result<Option<ClientRef>, Rejection> {
        let Some(c) = self.find(ip, limits, now) else { return Ok(None) };
        if let Some(share) = fair
            && c.holding(now) as usize >= share
        {
            c.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Rejection::FairShare);
        }
        if let Some(max) = limits.conn_per_client
            && c.active.load(Ordering::Relaxed) >= max
        {
            c.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Rejection::ConnPerClient);
        }
        if let Some(rate) = &limits.conn_rate_per_client
            && Client::take(&c.conn_tat, rate, now).is_err()
        {
            c.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Rejection::ConnRate);
        }
        // Counted after the checks: two connections racing past `conn_per_client` may both
        // pass by one; the limit is a guard, not an exact cap.
        Ok(Some(c.hold(now)))
    }

    /// A new UDP session of `ip` (counted as held while it lives; no limit of its own:
    /// `max_sessions_per_source` bounds sessions).
    pub fn session(&self, ip: IpAddr, limits: &ClientLimits) -> Option<ClientRef> {
        let now = now_ns();
        Some(self.find(ip, limits, now)?.hold(now))
    }

    /// A refusal of `ip` by one of `limits`' per-client limits, counted towards its `ban`:
    /// the client's key (its address, an IPv6 one cut to its prefix) when this refusal makes
    /// `after` within the window and it is to be banned. Asked once per ban.
    pub fn trip(&self, ip: IpAddr, limits: &ClientLimits) -> Option<IpAddr> {
        self.trip_at(ip, limits, now_ns())
    }

    fn trip_at(&self, ip: IpAddr, limits: &ClientLimits, now: u64) -> Option<IpAddr> {
        let ban = limits.ban?;
        let key = client_key(ip, limits.ipv6_prefix);
        let c = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner()).get(&key)?.clone();
        if c.banned_until_ns.load(Ordering::Relaxed) > now {
            return None;
        }
        // Two refusals racing at a window's edge may both start it: one trip less counted.
        let since = c.trips_since_ns.load(Ordering::Relaxed);
        let n = if since == 0 || now.saturating_sub(since) >= ban.within.as_nanos() as u64 {
            c.trips_since_ns.store(now, Ordering::Relaxed);
            c.trips.store(1, Ordering::Relaxed);
            1
        } else {
            c.trips.fetch_add(1, Ordering::Relaxed) + 1
        };
        if n < ban.after {
            return None;
        }
        let until = now.saturating_add(ban.duration.as_nanos() as u64);
        c.banned_until_ns.store(until, Ordering::Relaxed);
        c.trips.store(0, Ordering::Relaxed);
        c.trips_since_ns.store(0, Ordering::Relaxed);
        Some(key)
    }

    /// Clients holding at least one connection or session now.
    pub fn holders(&self) -> usize {
        self.holders.load(Ordering::Relaxed)
    }

    /// What `ip` holds now as the fair share counts it (`Client::holding`), without making
    /// it an entry.
    pub fn held_by(&self, ip: IpAddr, limits: &ClientLimits) -> u32 {
        let key = client_key(ip, limits.ipv6_prefix);
        let map = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key).map_or(0, |c| c.holding(now_ns()))
    }

    /// The client holding the most connections not already told to close, `skip` (the
    /// exempt) aside.
    pub fn busiest(&self, skip: impl Fn(IpAddr) -> bool) -> Option<Arc<Client>> {
        let mut best: Option<Arc<Client>> = None;
        for shard in self.shards.iter() {
            let map = shard.lock().unwrap_or_else(|e| e.into_inner());
            for c in map.values() {
                if c.spare() > best.as_ref().map_or(0, |b| b.spare()) && !skip(c.key) {
                    best = Some(c.clone());
                }
            }
        }
        best
    }

    /// One datagram of `ip` on a frontend without sessions: false when over `rate`.
    pub fn datagram(&self, ip: IpAddr, limits: &ClientLimits, rate: &Rate) -> bool {
        match self.find(ip, limits, now_ns()) {
            Some(c) => c.datagram(rate),
            None => true,
        }
    }

    /// One HTTP request of `ip` when it is not the connection's client (a trusted proxy's
    /// `X-Forwarded-For` named it): found in the table for this request.
    pub fn request(&self, ip: IpAddr, limits: &ClientLimits, rate: &Rate) -> Result<(), Duration> {
        match self.find(ip, limits, now_ns()) {
            Some(c) => c.request(Some(rate)),
            None => Ok(()),
        }
    }

    /// The `n` busiest clients: most held first, then the fastest, then the most refused.
    /// Read as plain numbers under each shard's lock; text only for the `n` kept.
    pub fn top(&self, n: usize) -> Vec<ClientView> {
        let now = now_ns();
        // (active, per second, refused, connections, requests, last seen, address)
        type Row = (u32, u64, u64, u64, u64, u64, IpAddr);
        let mut all: Vec<Row> = Vec::new();
        for shard in self.shards.iter() {
            let map = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(map.values().map(|c| {
                (
                    c.active(),
                    c.window.per_second(now),
                    c.refused.load(Ordering::Relaxed),
                    c.connections.load(Ordering::Relaxed),
                    c.requests.load(Ordering::Relaxed),
                    c.last_seen_ns.load(Ordering::Relaxed),
                    c.key,
                )
            }));
        }
        let busiest =
            |a: &Row, b: &Row| (b.0, b.1, b.2, b.3).cmp(&(a.0, a.1, a.2, a.3)).then(a.6.cmp(&b.6));
        if n < all.len() && n > 0 {
            all.select_nth_unstable_by(n - 1, busiest);
        }
        all.truncate(n);
        all.sort_unstable_by(busiest);
        all.into_iter()
            .map(|(active, per_second, refused, conns, requests, seen, key)| ClientView {
                address: key.to_string(),
                active,
                connections_total: conns,
                requests_total: requests,
                refused_total: refused,
                per_second,
                idle_ms: now.saturating_sub(seen) / 1_000_000,
            })
            .collect()
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |m| m.len())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Forgets the quarter of `cap` seen least recently among the clients nothing holds.
fn forget_idlest(map: &mut HashMap<IpAddr, Arc<Client>>, cap: usize) {
    let mut idle: Vec<(u64, IpAddr)> = map
        .iter()
        .filter(|(_, c)| Arc::strong_count(c) == 1)
        .map(|(k, c)| (c.last_seen_ns.load(Ordering::Relaxed), *k))
        .collect();
    let n = (cap / 4).max(1).min(idle.len());
    if n == 0 {
        return;
    }
    if n < idle.len() {
        idle.select_nth_unstable(n - 1);
    }
    for (_, k) in &idle[..n] {
        map.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_per_client_are_held_until_dropped() {
        let t = ClientTable::default();
        let limits = ClientLimits { conn_per_client: Some(2), ..Default::default() };
        let a = t.connect(ip("10.0.0.1"), &limits, None).unwrap().unwrap();
        let b = t.connect(ip("10.0.0.1"), &limits, None).unwrap().unwrap();
        assert_eq!(t.connect(ip("10.0.0.1"), &limits, None).unwrap_err(), Rejection::ConnPerClient);
        assert!(t.connect(ip("10.0.0.2"), &limits, None).unwrap().is_some(), "others are apart");
        drop(a);
        let _c = t.connect(ip("10.0.0.1"), &limits, None).unwrap().unwrap();
        drop(b);
        let top = t.top(10);
        assert_eq!(top[0].address, "10.0.0.1");
        assert_eq!((top[0].active, top[0].connections_total, top[0].refused_total), (1, 3, 1));
    }

    #[test]
    fn the_fair_share_refuses_the_holder_and_finds_the_busiest() {
        let t = ClientTable::default();
        let limits = ClientLimits::default();
        // Opened ten seconds ago: held, as the fair share counts it.
        let then = now_ns() - 10_000_000_000;
        let held: Vec<_> =
            (0..3).map(|_| t.connect_at(ip("10.0.0.1"), &limits, Some(3), then).unwrap()).collect();
        let other = t.connect(ip("10.0.0.2"), &limits, Some(3)).unwrap();
        assert_eq!(t.holders(), 2);
        assert_eq!(t.connect(ip("10.0.0.1"), &limits, Some(3)).unwrap_err(), Rejection::FairShare);
        // Connections begun in the last second or two are not held yet: a client making
        // short requests is not refused for having several open at once.
        let young: Vec<_> =
            (0..5).map(|_| t.connect(ip("10.0.0.3"), &limits, Some(3)).unwrap()).collect();
        assert_eq!(young.len(), 5);
        drop(young);
        assert_eq!(
            (t.held_by(ip("10.0.0.1"), &limits), t.held_by(ip("10.0.0.9"), &limits)),
            (3, 0)
        );
        assert_eq!(t.busiest(|_| false).unwrap().key, ip("10.0.0.1"));
        assert_eq!(t.busiest(|a| a == ip("10.0.0.1")).unwrap().key, ip("10.0.0.2"));
        drop(held);
        drop(other);
        assert_eq!(t.holders(), 0);
        assert!(t.busiest(|_| false).is_none());
    }

    #[test]
    fn a_ban_is_asked_for_once_after_enough_refusals_within_the_window() {
        let t = ClientTable::default();
        let ban = fulcrum_config::Ban {
            after: 3,
            within: Duration::from_secs(60),
            duration: Duration::from_secs(600),
        };
        let limits =
            ClientLimits { conn_per_client: Some(1), ban: Some(ban), ..Default::default() };
        assert_eq!(t.trip(ip("10.0.0.1"), &limits), None, "an unknown client is not counted");
        let _held = t.connect(ip("10.0.0.1"), &limits, None).unwrap();
        assert_eq!(t.trip(ip("10.0.0.1"), &limits), None);
        assert_eq!(t.trip(ip("10.0.0.1"), &limits), None);
        assert_eq!(t.trip(ip("10.0.0.1"), &limits), Some(ip("10.0.0.1")));
        for _ in 0..10 {
            assert_eq!(t.trip(ip("10.0.0.1"), &limits), None, "asked once while banned");
        }
        // An IPv6 client by its /64; refusals further apart than `within` never add up.
        let _v6 = t.connect(ip("2001:db8::1"), &limits, None).unwrap();
        let minute = 60_000_000_000u64;
        for i in 1..=10 {
            assert_eq!(t.trip_at(ip("2001:db8::7"), &limits, i * minute), None, "window {i}");
        }
        let at = 11 * minute;
        assert_eq!(t.trip_at(ip("2001:db8::7"), &limits, at + 1), None);
        assert_eq!(t.trip_at(ip("2001:db8::7"), &limits, at + 2), None);
        assert_eq!(t.trip_at(ip("2001:db8::8"), &limits, at + 3), Some(ip("2001:db8::")));
        let none = ClientLimits { ban: None, ..limits };
        assert_eq!(t.trip(ip("10.0.0.1"), &none), None);
    }

    #[test]
    fn ipv6_clients_are_counted_by_prefix() {
        let t = ClientTable::default();
        let limits = ClientLimits { conn_per_client: Some(1), ..Default::default() };
        let _a = t.connect(ip("2001:db8::1"), &limits, None).unwrap();
        assert!(t.connect(ip("2001:db8::2"), &limits, None).is_err());
        let wide = ClientLimits { ipv6_prefix: 128, ..limits };
        assert!(t.connect(ip("2001:db8::3"), &wide, None).is_ok());
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_clients_that_hold_connections() {
        let t = ClientTable::default();
        t.set_capacity(1024);
        let limits = ClientLimits::default();
        let held: Vec<_> = (0..64u32)
            .map(|i| {
                t.connect(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()), &limits, None).unwrap()
            })
            .collect();
        for i in 0..100_000u32 {
            let _ = t.connect(IpAddr::from((0x0b00_0000u32 + i).to_be_bytes()), &limits, None);
        }
        assert!(t.len() <= 1024 + SHARDS, "{} tracked", t.len());
        let top = t.top(64);
        assert!(top.iter().all(|c| c.active == 1 && c.address.starts_with("10.")), "{top:?}");
        drop(held);
    }

    #[test]
    fn requests_over_the_rate_wait_the_exact_time() {
        let t = ClientTable::default();
        let limits = ClientLimits::default();
        let c = t.connect(ip("10.0.0.1"), &limits, None).unwrap().unwrap();
        let rate = Rate::parse("2/s", Some(2)).unwrap();
        assert!(c.client().request(Some(&rate)).is_ok());
        assert!(c.client().request(Some(&rate)).is_ok());
        let wait = c.client().request(Some(&rate)).unwrap_err();
        assert!(
            wait <= Duration::from_millis(500) && wait > Duration::from_millis(400),
            "{wait:?}"
        );
    }
}
