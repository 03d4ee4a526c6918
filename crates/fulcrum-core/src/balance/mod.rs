//! Balancing algorithms. Each algorithm lives in its own file and is built once per pool
//! snapshot (tables such as Maglev's are computed then, off the data path); a pick reads the
//! live per-server numbers through [`LoadView`] and allocates nothing.
//!
//! Servers are identified by their index in the pool's server list. Consistent-hashing
//! algorithms also take each server's stable `key` (its address) so that tables agree across
//! processes and restarts.

mod least_connections;
mod maglev;
mod power_of_two;
mod random;
mod ring_hash;
mod round_robin;
mod source_hash;
mod weighted_round_robin;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

pub use least_connections::LeastConnections;
pub use maglev::Maglev;
pub use power_of_two::PowerOfTwo;
pub use random::Random;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;
pub use source_hash::SourceHash;
pub use weighted_round_robin::WeightedRoundRobin;

/// A server as the balancer builder sees it: a stable identity and a static weight.
/// A weight of 0 means "never picked".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSpec<'a> {
    pub key: &'a str,
    pub weight: u32,
}

/// Live view of a pool's servers at pick time. Implemented by the data plane over its
/// per-server atomics and by tests over plain vectors.
pub trait LoadView {
    /// Number of servers; equal to the number of specs the balancer was built with.
    fn len(&self) -> usize;
    /// Whether server `i` may take a new connection now (healthy, not ejected, not draining).
    fn eligible(&self, i: usize) -> bool;
    /// Active connections (or in-flight requests) on server `i`.
    fn active(&self, i: usize) -> u64;
    /// The load number `least-load` or `shortest-queue` compares for server `i`: the server's
    /// own last report plus the assignments made since it, or `active` when there is no fresh
    /// report.
    fn metric(&self, i: usize, _metric: Metric) -> u64 {
        self.active(i)
    }
    /// The part of its weight server `i` takes now, out of [`SHARE_ONE`]: below it while the
    /// server is in slow start or its agent asks for less (`up 10%`). Applied inside every
    /// algorithm as an effective weight, never as a refusal after the pick.
    fn share(&self, _i: usize) -> u32 {
        SHARE_ONE
    }
    /// Whether server `i` may be used in panic mode, when no server is [`eligible`]: passive
    /// ejection is ignored then (trying an ejected server beats refusing every client), the
    /// operator's and the health checks' verdicts are not.
    ///
    /// [`eligible`]: LoadView::eligible
    fn eligible_in_panic(&self, i: usize) -> bool {
        self.eligible(i)
    }
    /// Whether server `i` is below its connection cap (`max_connections`, or its agent's
    /// `maxconn:N`). Unlike eligibility, no stage relaxes it: a full server is never picked,
    /// not in panic mode either, since sending a client to it breaks the promise the cap
    /// makes to the server. The caller that takes the slot reserves it atomically; this is
    /// the balancer's view of it.
    fn has_room(&self, _i: usize) -> bool {
        true
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the least-* algorithms compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Connections the balancer has open to the server.
    Active,
    /// Clients the server reports (plus assignments since its report).
    Load,
    /// Queue length the server reports (plus assignments since its report).
    Queue,
}

/// A full share (see [`LoadView::share`]).
pub const SHARE_ONE: u32 = 1 << 16;

/// Most attempts one client connection makes (first try plus retries); bounds [`Tried`].
pub const MAX_ATTEMPTS: usize = 8;

/// Servers already tried for this client connection: a pick never returns one of them.
/// Fixed-size so that carrying it through retries allocates nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tried {
    idx: [u32; MAX_ATTEMPTS],
    len: u8,
}

impl Tried {
    pub fn new() -> Self {
        Self::default()
    }
    /// Records `i`; returns false (and records nothing) when the set is full.
    pub fn insert(&mut self, i: usize) -> bool {
        if usize::from(self.len) >= MAX_ATTEMPTS {
            return false;
        }
        self.idx[usize::from(self.len)] = i as u32;
        self.len += 1;
        true
    }
    pub fn contains(&self, i: usize) -> bool {
        self.idx[..usize::from(self.len)].iter().any(|&x| x as usize == i)
    }
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Per-pick inputs that do not come from the view.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickInput {
    /// Hash of the client's identity (see [`hash_ip`]); used by hashing algorithms.
    pub hash: u64,
    /// A fresh random word; algorithms needing more derive them with [`mix`].
    pub rand: u64,
}

/// Stable hash of a request key (a header, a cookie, a path: `hash = ...` on HTTP pools),
/// xxh3 like [`hash_ip`], so every node and version agrees.
pub fn hash_bytes(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Stable hash of a client address (xxh3, identical across processes and versions).
/// IPv4-mapped IPv6 addresses hash like their IPv4 form.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => xxhash_rust::xxh3::xxh3_64(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => xxhash_rust::xxh3::xxh3_64(&v4.octets()),
            None => xxhash_rust::xxh3::xxh3_64(&v6.octets()),
        },
    }
}

/// Stable hash of a string key (server identities in hash rings and Maglev tables).
pub fn hash_key(key: &str, seed: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), seed)
}

/// Derives a further well-mixed word from `x` (splitmix64 finaliser).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The algorithms, by their configuration names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    Random,
    PowerOfTwo,
    SourceHash,
    Maglev,
    RingHash,
    LeastLoad,
    ShortestQueue,
}

impl Algorithm {
    pub const ALL: [Algorithm; 10] = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::Random,
        Algorithm::PowerOfTwo,
        Algorithm::SourceHash,
        Algorithm::Maglev,
        Algorithm::RingHash,
        Algorithm::LeastLoad,
        Algorithm::ShortestQueue,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::WeightedRoundRobin => "weighted-round-robin",
            Algorithm::LeastConnections => "least-connections",
            Algorithm::Random => "random",
            Algorithm::PowerOfTwo => "power-of-two",
            Algorithm::SourceHash => "source-hash",
            Algorithm::Maglev => "maglev",
            Algorithm::RingHash => "ring-hash",
            Algorithm::LeastLoad => "least-load",
            Algorithm::ShortestQueue => "shortest-queue",
        }
    }

    /// All names, comma separated, for error messages.
    pub fn names() -> String {
        Self::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.iter().copied().find(|a| a.name() == s).ok_or_else(|| {
            format!("unknown algorithm \"{s}\" (expected one of: {})", Self::names())
        })
    }
}

/// A built balancer for one pool snapshot.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
    WeightedRoundRobin(WeightedRoundRobin),
    LeastConnections(LeastConnections),
    Random(Random),
    PowerOfTwo(PowerOfTwo),
    SourceHash(SourceHash),
    Maglev(Maglev),
    RingHash(RingHash),
}

impl Balancer {
    pub fn new(algorithm: Algorithm, servers: &[ServerSpec<'_>]) -> Self {
        match algorithm {
            Algorithm::RoundRobin => Balancer::RoundRobin(RoundRobin::new(servers)),
            Algorithm::WeightedRoundRobin => {
                Balancer::WeightedRoundRobin(WeightedRoundRobin::new(servers))
            }
            Algorithm::LeastConnections => {
                Balancer::LeastConnections(LeastConnections::new(servers))
            }
            Algorithm::Random => Balancer::Random(Random::new(servers)),
            Algorithm::PowerOfTwo => Balancer::PowerOfTwo(PowerOfTwo::new(servers)),
            Algorithm::SourceHash => Balancer::SourceHash(SourceHash::new(servers)),
            Algorithm::Maglev => Balancer::Maglev(Maglev::new(servers)),
            Algorithm::RingHash => Balancer::RingHash(RingHash::new(servers)),
            Algorithm::LeastLoad => {
                Balancer::LeastConnections(LeastConnections::with_metric(servers, Metric::Load))
            }
            Algorithm::ShortestQueue => {
                Balancer::LeastConnections(LeastConnections::with_metric(servers, Metric::Queue))
            }
        }
    }

    /// Picks a server that is eligible in `view` and not in `tried`, or `None` when there is
    /// none. Allocates nothing.
    pub fn pick(&self, input: &PickInput, view: &impl LoadView, tried: &Tried) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b) => b.pick(input, view, tried),
            Balancer::WeightedRoundRobin(b) => b.pick(input, view, tried),
            Balancer::LeastConnections(b) => b.pick(input, view, tried),
            Balancer::Random(b) => b.pick(input, view, tried),
            Balancer::PowerOfTwo(b) => b.pick(input, view, tried),
            Balancer::SourceHash(b) => b.pick(input, view, tried),
            Balancer::Maglev(b) => b.pick(input, view, tried),
            Balancer::RingHash(b) => b.pick(input, view, tried),
        }
    }
}

impl Balancer {
    /// The admission step: the one place every protocol asks which server to try next.
    /// Returns a server not in `tried` whenever one is eligible, in three stages:
    /// 1. the algorithm over eligible servers, each at its effective weight (weight × share);
    /// 2. the same with every share full, so a pool whose servers are all in slow start or
    ///    all scaled down by their agents still serves;
    /// 3. panic mode: passively ejected servers too.
    ///
    /// Stage 1 is the only one a healthy pool ever runs: the others cost nothing then. A
    /// server at its cap ([`LoadView::has_room`]) is skipped in every stage.
    pub fn admit(&self, input: &PickInput, view: &impl LoadView, tried: &Tried) -> Option<usize> {
        if let Some(i) = self.pick(input, view, tried) {
            return Some(i);
        }
        let full = Stage { view, panic: false };
        if let Some(i) = self.pick(input, &full, tried) {
            return Some(i);
        }
        // A fresh word, so a random pick does not retrace the draws that just failed.
        let input = PickInput { hash: input.hash, rand: mix(input.rand ^ PANIC_SALT) };
        self.pick(&input, &Stage { view, panic: true }, tried)
    }
}

const PANIC_SALT: u64 = 0x5041_4e49_4321_0001;

/// A view with every share full, and in panic mode with ejection ignored.
struct Stage<'a, V: LoadView> {
    view: &'a V,
    panic: bool,
}

impl<V: LoadView> LoadView for Stage<'_, V> {
    fn len(&self) -> usize {
        self.view.len()
    }
    fn eligible(&self, i: usize) -> bool {
        if self.panic { self.view.eligible_in_panic(i) } else { self.view.eligible(i) }
    }
    fn active(&self, i: usize) -> u64 {
        self.view.active(i)
    }
    fn metric(&self, i: usize, metric: Metric) -> u64 {
        self.view.metric(i, metric)
    }
    // Forwarded, never defaulted: a stage that forgot the cap would pick full servers.
    fn has_room(&self, i: usize) -> bool {
        self.view.has_room(i)
    }
}

/// Whether `i` may be returned by a pick.
#[inline]
pub(crate) fn usable(view: &impl LoadView, tried: &Tried, i: usize) -> bool {
    view.eligible(i) && !tried.contains(i) && view.has_room(i)
}

/// Maps a uniform word onto `0..n` with a multiply instead of a 64-bit division (Lemire's
/// reduction): `rand`-driven picks do this on every connection. Uses the high bits, so it
/// must only see well-mixed words; `n == 0` gives 0.
#[inline]
pub(crate) fn reduce(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

/// Whether `a` active on weight `wa` is strictly less loaded than `b` active on weight `wb`,
/// i.e. `a / wa < b / wb`, cross-multiplied in u128 so it neither divides nor overflows.
/// Weights are effective weights ([`effective_weight`]).
#[inline]
pub(crate) fn less_loaded(a: u64, wa: u64, b: u64, wb: u64) -> bool {
    u128::from(a) * u128::from(wb) < u128::from(b) * u128::from(wa)
}

/// A spec weight scaled by a share, exact in u64 (at most 2^32 × 2^16): least-connections
/// compares loads against it, as HAProxy compares against its dynamic weight.
#[inline]
pub(crate) fn effective_weight(weight: u32, share: u32) -> u64 {
    u64::from(weight) * u64::from(share.min(SHARE_ONE))
}

/// Whether a server with `share` takes this pick: a draw from `rand` and the server index,
/// below the share. Thinning each server by its share is the same as scaling its weight for
/// the algorithms that have no load to compare (rotation, random draws, hash tables).
#[inline]
pub(crate) fn takes_share(share: u32, rand: u64, i: usize) -> bool {
    share >= SHARE_ONE
        || (mix(rand ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 48) < u64::from(share)
}

/// The rules every pick obeys, bundled once per pick: a server may be returned only if its
/// index is below both the built size and `view.len()` (the two can disagree for a moment
/// while a pool is swapped, and indexing past either must not panic), its spec weight is
/// positive, it is [`usable`], and it takes the pick by its share ([`takes_share`]).
pub(crate) struct Gate<'a, V: LoadView> {
    view: &'a V,
    tried: &'a Tried,
    weights: &'a [u32],
    n: usize,
    rand: u64,
}

impl<'a, V: LoadView> Gate<'a, V> {
    #[inline]
    pub(crate) fn new(
        input: &PickInput,
        view: &'a V,
        tried: &'a Tried,
        weights: &'a [u32],
    ) -> Self {
        Self { view, tried, weights, n: view.len().min(weights.len()), rand: input.rand }
    }

    /// Servers that may be considered: `min(view.len(), built size)`.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// Spec weight of `i`, 0 when out of range.
    #[inline]
    pub(crate) fn weight(&self, i: usize) -> u32 {
        if i < self.n { self.weights.get(i).copied().unwrap_or(0) } else { 0 }
    }

    #[inline]
    pub(crate) fn active(&self, i: usize) -> u64 {
        self.view.active(i)
    }

    /// Whether a pick may return `i`.
    #[inline]
    pub(crate) fn allows(&self, i: usize) -> bool {
        self.weight(i) > 0
            && usable(self.view, self.tried, i)
            && takes_share(self.view.share(i), self.rand, i)
    }

    /// Effective weight of `i` ([`effective_weight`]).
    #[inline]
    pub(crate) fn effective_weight(&self, i: usize) -> u64 {
        effective_weight(self.weight(i), self.view.share(i))
    }

    /// The first allowed server at or after `start` (wrapping), skipping `except`. This is
    /// every algorithm's last resort, so "None" from a pick always means "none allowed".
    pub(crate) fn scan(&self, start: usize, except: Option<usize>) -> Option<usize> {
        if self.n == 0 {
            return None;
        }
        let start = start % self.n;
        (start..self.n).chain(0..start).find(|&i| Some(i) != except && self.allows(i))
    }
}

#[cfg(test)]
pub(crate) mod testutil;
