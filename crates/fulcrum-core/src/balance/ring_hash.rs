//! Ketama-style consistent hash ring.
//!
//! Each server puts `weight * V` points on a 64-bit ring, at `hash_key(key, point_index)`, so
//! every process builds the same ring and a server's points do not depend on the other
//! servers; a client hash goes to the owner of the first point at or after it. Removing a
//! server therefore moves only the clients it had, and adding one takes clients only for
//! itself. `V` is 160 (ketama's figure: about ±10% per-server imbalance) unless the ring
//! would then hold more than [`MAX_POINTS`], in which case points are scaled down
//! proportionally, keeping at least one per server of positive weight. Note that this scale
//! depends on the total weight, so past that size a pool change also moves some clients
//! between surviving servers.
//!
//! A lookup is a binary search. When the owner is not allowed, the walk continues clockwise,
//! which is what makes a down server's clients go where they would go if it were removed;
//! the walk is bounded so that a pick on a mostly-down pool stays cheap, and a scan of the
//! servers is the last resort.

use super::{Gate, LoadView, PickInput, ServerSpec, Tried, hash_key};

/// Points per unit of weight.
const POINTS_PER_WEIGHT: u64 = 160;
/// Ring size above which points are scaled down.
const MAX_POINTS: u64 = 1_000_000;
/// Ring points visited past the first before scanning the servers instead.
const MAX_WALK: usize = 1024;

/// Most bits of the hash used to index the ring: 2^16 + 1 entries of 4 bytes.
const MAX_INDEX_BITS: u32 = 16;

#[derive(Debug)]
pub struct RingHash {
    /// `(point, server)`, sorted.
    ring: Box<[(u64, u32)]>,
    /// `index[b]` = first ring position whose point has `b` or more in its top `index_bits`
    /// bits; one more entry holds the ring length. A lookup binary-searches only between
    /// `index[b]` and `index[b + 1]`, a few points in one or two cache lines, instead of
    /// taking ~20 cache misses across a ring of up to 16 MB.
    index: Box<[u32]>,
    index_bits: u32,
    weights: Box<[u32]>,
}

impl RingHash {
    pub fn new(servers: &[ServerSpec<'_>]) -> Self {
        let total: u64 = servers.iter().map(|s| u64::from(s.weight)).sum();
        let budget = total.saturating_mul(POINTS_PER_WEIGHT).min(MAX_POINTS);
        let mut ring = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            if s.weight == 0 {
                continue;
            }
            let points = (u128::from(s.weight) * u128::from(budget) / u128::from(total)).max(1);
            let points = u64::try_from(points).unwrap_or(u64::MAX);
            ring.extend((0..points).map(|p| (hash_key(s.key, p), i as u32)));
        }
        ring.sort_unstable();
        // About four points per bucket.
        let index_bits = (ring.len() / 4).max(1).ilog2().min(MAX_INDEX_BITS);
        let index = (0..=1u64 << index_bits)
            .map(|b| match bucket_start(b, index_bits) {
                Some(start) => ring.partition_point(|&(p, _)| p < start) as u32,
                None => ring.len() as u32,
            })
            .collect();
        Self {
            ring: ring.into_boxed_slice(),
            index,
            index_bits,
            weights: servers.iter().map(|s| s.weight).collect(),
        }
    }

    /// Position of the first point at or after `h`; `ring.len()` when there is none.
    #[inline]
    fn first_at_or_after(&self, h: u64) -> usize {
        let b = h.checked_shr(64 - self.index_bits).unwrap_or(0) as usize;
        let lo = self.index.get(b).map_or(0, |&x| x as usize);
        let hi = self.index.get(b + 1).map_or(self.ring.len(), |&x| x as usize);
        match self.ring.get(lo..hi) {
            Some(bucket) => lo + bucket.partition_point(|&(p, _)| p < h),
            None => self.ring.partition_point(|&(p, _)| p < h),
        }
    }

    /// Points on the ring.
    pub fn ring_len(&self) -> usize {
        self.ring.len()
    }

    /// Number of ring points of each server (for tests and diagnostics).
    pub fn points_per_server(&self) -> Vec<usize> {
        let mut counts = vec![0; self.weights.len()];
        for &(_, s) in &*self.ring {
            if let Some(c) = counts.get_mut(s as usize) {
                *c += 1;
            }
        }
        counts
    }

    pub fn pick(&self, input: &PickInput, view: &impl LoadView, tried: &Tried) -> Option<usize> {
        let gate = Gate::new(input, view, tried, &self.weights);
        if gate.len() == 0 || self.ring.is_empty() {
            return None;
        }
        let h = input.hash;
        let at = self.first_at_or_after(h);
        let (before, after) = self.ring.split_at_checked(at).unwrap_or((&self.ring, &[]));
        after
            .iter()
            .chain(before)
            .take(MAX_WALK)
            .map(|&(_, s)| s as usize)
            .find(|&i| gate.allows(i))
            .or_else(|| gate.scan((h % gate.len() as u64) as usize, None))
    }
}

/// Smallest hash of bucket `b` of `2^bits`; `None` past the last bucket.
fn bucket_start(b: u64, bits: u32) -> Option<u64> {
    if b >= 1u64 << bits {
        return None;
    }
    Some(b.checked_shl(64 - bits).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::super::mix;
    use super::super::testutil::{VecView, histogram, keys, specs};
    use super::*;

    fn ring(weights: &[u32]) -> RingHash {
        RingHash::new(&specs(&keys(weights.len()), weights))
    }

    fn input(k: u64) -> PickInput {
        PickInput { hash: mix(k), rand: 0 }
    }

    #[test]
    fn points_follow_weights() {
        let b = ring(&[1, 3, 0]);
        assert_eq!(b.points_per_server(), [160, 480, 0]);
        assert!(b.ring.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn points_are_capped() {
        let b = ring(&[1; 10_000]);
        assert_eq!(b.ring_len(), 1_000_000);
        assert!(b.points_per_server().iter().all(|&p| p == 100));
        let b = ring(&[u32::MAX, 1, 1]);
        assert!(b.ring_len() as u64 <= MAX_POINTS + 2);
        assert_eq!(&b.points_per_server()[1..], [1, 1]);
    }

    #[test]
    fn index_agrees_with_a_full_binary_search() {
        for weights in [&[1u32][..], &[1, 1, 1], &[5; 100], &[1; 10_000]] {
            let b = ring(weights);
            let mut probes: Vec<u64> = (0..5000).map(mix).collect();
            probes.extend([0, 1, u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1]);
            probes.extend(
                b.ring
                    .iter()
                    .step_by(97)
                    .flat_map(|&(p, _)| [p, p.wrapping_add(1), p.wrapping_sub(1)]),
            );
            for h in probes {
                assert_eq!(b.first_at_or_after(h), b.ring.partition_point(|&(p, _)| p < h), "{h}");
            }
        }
    }

    #[test]
    fn first_point_at_or_after_the_hash_with_wraparound() {
        let b = ring(&[1, 1, 1]);
        let view = VecView::all(3);
        let (p0, s0) = b.ring[0];
        let (pl, _) = b.ring[b.ring.len() - 1];
        let (p5, s5) = b.ring[5];
        let pick = |h| b.pick(&PickInput { hash: h, rand: 0 }, &view, &Tried::new());
        assert_eq!(pick(p5), Some(s5 as usize));
        assert_eq!(pick(b.ring[4].0 + 1), Some(s5 as usize));
        assert_eq!(pick(p0), Some(s0 as usize));
        assert_eq!(pick(pl + 1), Some(s0 as usize));
        assert_eq!(pick(0), Some(s0 as usize));
    }

    #[test]
    fn down_server_clients_go_where_removal_would_send_them() {
        let k = keys(5);
        let full = RingHash::new(&specs(&k, &[1; 5]));
        let without: Vec<_> = specs(&k, &[1; 5]).into_iter().filter(|s| s.key != k[2]).collect();
        let smaller = RingHash::new(&without);
        let down = VecView::with_eligible(&[true, true, false, true, true]);
        for key in 0..3000 {
            let p = full.pick(&input(key), &down, &Tried::new()).map(|i| k[i].as_str());
            let q =
                smaller.pick(&input(key), &VecView::all(4), &Tried::new()).map(|i| without[i].key);
            assert_eq!(p, q);
        }
    }

    #[test]
    fn shares_roughly_follow_weights() {
        let b = ring(&[1, 2, 1]);
        let h = histogram(3, (0..8000).map(|k| b.pick(&input(k), &VecView::all(3), &Tried::new())));
        assert!((3200..4800).contains(&h[1]), "{h:?}");
    }

    #[test]
    fn tried_and_scan_fallback() {
        let b = ring(&[1; 40]);
        let mut eligible = [false; 40];
        eligible[7] = true;
        eligible[8] = true;
        let view = VecView::with_eligible(&eligible);
        let mut tried = Tried::new();
        tried.insert(8);
        for k in 0..50 {
            assert_eq!(b.pick(&input(k), &view, &tried), Some(7));
        }
        tried.insert(7);
        assert_eq!(b.pick(&input(0), &view, &tried), None);
    }

    #[test]
    fn none_when_nothing_usable() {
        assert_eq!(ring(&[]).pick(&input(1), &VecView::all(0), &Tried::new()), None);
        assert_eq!(ring(&[0, 0]).pick(&input(1), &VecView::all(2), &Tried::new()), None);
        let view = VecView::with_eligible(&[false, true]);
        assert_eq!(ring(&[1, 0]).pick(&input(1), &view, &Tried::new()), None);
    }

    #[test]
    fn view_shorter_than_built_size() {
        let b = ring(&[1, 2, 3, 4]);
        for k in 0..50 {
            assert!(b.pick(&input(k), &VecView::all(2), &Tried::new()).is_some_and(|i| i < 2));
        }
        assert_eq!(b.pick(&input(1), &VecView::all(0), &Tried::new()), None);
    }
}
