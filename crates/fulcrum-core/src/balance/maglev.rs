//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4), weighted.
//!
//! A lookup table of prime size `M` is filled at build time: each server walks its own
//! permutation of the slots (`offset + j * skip mod M`, both derived from its key, so every
//! process builds the same table) and servers take turns claiming their next free slot.
//! Taking turns gives near-perfect balance (with equal weights, per-server slot counts differ
//! by at most one) and consistency (removing a server mostly reassigns only its own slots).
//! Weights are honoured by turn credit: per round each server earns its weight and claims a
//! slot each time its credit reaches the largest weight, so the heaviest server claims every
//! round. A lookup is one table read.
//!
//! `M` is at least 100 times the server count (the paper's bound for ~1% imbalance) and at
//! least 65,537. It is the next prime after `65,537 * 2^k`, not after `100 * n`, so that
//! adding or removing a server almost never changes `M`: a new `M` remaps nearly every key.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{Gate, LoadView, PickInput, ServerSpec, Tried, hash_key, mix};

/// Smallest table size.
const MIN_TABLE: u64 = 65_537;
/// Table slots per server, at least.
const SLOTS_PER_SERVER: u64 = 100;
/// Seeds of the two key hashes (offset and skip).
const SEED_OFFSET: u64 = 0x6D61_676C_6576_3031;
const SEED_SKIP: u64 = 0x6D61_676C_6576_3032;
/// Further table entries probed, deterministically from the hash, when the first one is not
/// allowed; each lands on a server in proportion to its weight, so a down server's keys
/// spread over the others. Bounded so that a pick on a mostly-down pool stays cheap.
const PROBES: u64 = 32;
const EMPTY: u32 = u32::MAX;

#[derive(Debug)]
pub struct Maglev {
    /// Server index per slot; empty when no server has a positive weight.
    table: Box<[u32]>,
    weights: Box<[u32]>,
}

impl Maglev {
    pub fn new(servers: &[ServerSpec<'_>]) -> Self {
        let m = table_size(servers.len() as u64);
        Self { table: populate(servers, m), weights: servers.iter().map(|s| s.weight).collect() }
    }

    /// Table size in use.
    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    /// Number of table slots owned by each server (for tests and diagnostics).
    pub fn slots_per_server(&self) -> Vec<usize> {
        let mut counts = vec![0; self.weights.len()];
        for &s in &*self.table {
            if let Some(c) = counts.get_mut(s as usize) {
                *c += 1;
            }
        }
        counts
    }

    pub fn pick(&self, input: &PickInput, view: &impl LoadView, tried: &Tried) -> Option<usize> {
        let gate = Gate::new(input, view, tried, &self.weights);
        let m = self.table.len() as u64;
        if gate.len() == 0 || m == 0 {
            return None;
        }
        let h = input.hash;
        let slot = |x: u64| self.table.get((x % m) as usize).map_or(usize::MAX, |&s| s as usize);
        let first = slot(h);
        if gate.allows(first) {
            return Some(first);
        }
        (1..=PROBES)
            .map(|k| slot(mix(h.wrapping_add(k))))
            .find(|&i| gate.allows(i))
            .or_else(|| gate.scan((h % gate.len() as u64) as usize, None))
    }
}

/// Whether `n` is prime, by trial division (build time only; `n` is about 2^16 to 2^30).
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// The table size for `servers` servers: the first prime at or after `65,537 * 2^k`, for the
/// smallest `k` that makes it at least `100 * servers`.
pub(crate) fn table_size(servers: u64) -> u64 {
    let need = servers.saturating_mul(SLOTS_PER_SERVER);
    let mut base = MIN_TABLE;
    while base < need {
        base *= 2;
    }
    let mut m = base;
    while !is_prime(m) {
        m += 1;
    }
    m
}

/// Fills a table of size `m`.
///
/// The paper's loop gives every server one turn per round. With weights, server `i`'s `k`-th
/// turn falls in round `ceil(k * max_weight / w_i)` (the round its credit reaches `k` times
/// the largest weight); turns are taken in (round, index) order from a heap, which is that
/// credit loop without visiting, every round, the servers whose turn has not come.
fn populate(servers: &[ServerSpec<'_>], m: u64) -> Box<[u32]> {
    let max_weight = u64::from(servers.iter().map(|s| s.weight).max().unwrap_or(0));
    if max_weight == 0 {
        return Box::default();
    }
    let mut table = vec![EMPTY; m as usize];
    // Per server: next slot of its permutation, and its skip.
    let mut walk: Vec<(u64, u64)> = servers
        .iter()
        .map(|s| (hash_key(s.key, SEED_OFFSET) % m, hash_key(s.key, SEED_SKIP) % (m - 1) + 1))
        .collect();
    let round = |k: u64, w: u64| (k * max_weight).div_ceil(w);
    let mut turns: BinaryHeap<Reverse<(u64, u32, u64)>> = servers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.weight > 0)
        .map(|(i, s)| Reverse((round(1, u64::from(s.weight)), i as u32, 1)))
        .collect();
    let mut filled = 0u64;
    while filled < m {
        let Some(Reverse((_, i, k))) = turns.pop() else { break };
        let Some((pos, skip)) = walk.get_mut(i as usize) else { break };
        // Every permutation covers all `m` slots (`m` is prime), so a free one is found
        // while any remains.
        loop {
            let c = *pos as usize;
            *pos += *skip;
            if *pos >= m {
                *pos -= m;
            }
            match table.get_mut(c) {
                Some(e) if *e == EMPTY => {
                    *e = i;
                    break;
                }
                _ => {}
            }
        }
        filled += 1;
        let w = servers.get(i as usize).map_or(1, |s| u64::from(s.weight));
        turns.push(Reverse((round(k + 1, w), i, k + 1)));
    }
    table.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{VecView, histogram, keys, specs};
    use super::*;

    fn maglev(weights: &[u32]) -> Maglev {
        Maglev::new(&specs(&keys(weights.len()), weights))
    }

    fn input(k: u64) -> PickInput {
        PickInput { hash: mix(k), rand: 0 }
    }

    /// The paper's loop, unweighted, as the reference for the heap-driven builder.
    fn paper(keys: &[String], m: u64) -> Vec<u32> {
        let perm: Vec<(u64, u64)> = keys
            .iter()
            .map(|k| (hash_key(k, SEED_OFFSET) % m, hash_key(k, SEED_SKIP) % (m - 1) + 1))
            .collect();
        let mut next = vec![0u64; keys.len()];
        let mut entry = vec![EMPTY; m as usize];
        let mut filled = 0;
        'outer: loop {
            for i in 0..keys.len() {
                let (offset, skip) = perm[i];
                let mut c = (offset + next[i] * skip) % m;
                while entry[c as usize] != EMPTY {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                entry[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'outer;
                }
            }
        }
        entry
    }

    #[test]
    fn matches_the_paper_with_equal_weights() {
        let k = keys(7);
        let built = populate(&specs(&k, &[3; 7]), 65_537);
        assert_eq!(&*built, paper(&k, 65_537));
    }

    #[test]
    fn table_sizes_are_prime_and_stable() {
        assert_eq!(table_size(0), 65_537);
        assert_eq!(table_size(3), 65_537);
        assert_eq!(table_size(655), 65_537);
        let m = table_size(656);
        assert!(m >= 131_074 && is_prime(m));
        assert_eq!(table_size(1000), m);
        assert!(table_size(10_000) >= 1_000_000);
        assert!(!is_prime(1) && is_prime(2) && is_prime(3) && !is_prime(9) && is_prime(65_537));
    }

    #[test]
    fn equal_weights_fill_evenly() {
        let b = maglev(&[1; 10]);
        let slots = b.slots_per_server();
        assert_eq!(slots.iter().sum::<usize>(), b.table_len());
        let (min, max) = (slots.iter().min(), slots.iter().max());
        assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{slots:?}");
    }

    #[test]
    fn weighted_slots_are_proportional() {
        let b = maglev(&[4, 1, 0, 2, 1]);
        let slots = b.slots_per_server();
        assert_eq!(slots[2], 0);
        let m = b.table_len() as f64;
        for (s, w) in slots.iter().zip([4.0, 1.0, 0.0, 2.0, 1.0]) {
            assert!((*s as f64 / m - w / 8.0).abs() < 0.005, "{slots:?}");
        }
    }

    #[test]
    fn lookup_is_stable_and_probes_past_unusable() {
        let b = maglev(&[1, 1, 1, 1]);
        let all = VecView::all(4);
        let down = VecView::with_eligible(&[true, false, true, true]);
        let mut moved = Vec::new();
        for k in 0..4000 {
            let p = b.pick(&input(k), &all, &Tried::new());
            assert_eq!(b.pick(&input(k), &all, &Tried::new()), p);
            let q = b.pick(&input(k), &down, &Tried::new());
            if p == Some(1) {
                moved.push(q);
            } else {
                assert_eq!(q, p);
            }
        }
        let h = histogram(4, moved);
        assert_eq!(h[1], 0);
        assert!(h[0] > 200 && h[2] > 200 && h[3] > 200, "{h:?}");
    }

    #[test]
    fn tried_and_scan_fallback() {
        let b = maglev(&[1; 50]);
        let mut eligible = [false; 50];
        eligible[17] = true;
        eligible[33] = true;
        let view = VecView::with_eligible(&eligible);
        let mut tried = Tried::new();
        tried.insert(33);
        for k in 0..50 {
            assert_eq!(b.pick(&input(k), &view, &tried), Some(17));
        }
        tried.insert(17);
        assert_eq!(b.pick(&input(0), &view, &tried), None);
    }

    #[test]
    fn none_when_nothing_usable() {
        assert_eq!(maglev(&[]).pick(&input(1), &VecView::all(0), &Tried::new()), None);
        assert_eq!(maglev(&[0, 0]).pick(&input(1), &VecView::all(2), &Tried::new()), None);
        let view = VecView::with_eligible(&[false, true]);
        assert_eq!(maglev(&[1, 0]).pick(&input(1), &view, &Tried::new()), None);
    }

    #[test]
    fn view_shorter_than_built_size() {
        let b = maglev(&[1, 2, 3, 4]);
        for k in 0..50 {
            assert!(b.pick(&input(k), &VecView::all(2), &Tried::new()).is_some_and(|i| i < 2));
        }
        assert_eq!(b.pick(&input(1), &VecView::all(0), &Tried::new()), None);
    }
}
