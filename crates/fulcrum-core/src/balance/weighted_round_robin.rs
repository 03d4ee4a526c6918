//! Smooth weighted round robin, as NGINX does it (each step every server's current weight
//! grows by its weight, the largest is picked and loses the total), made lock-free.
//!
//! NGINX runs that loop under the upstream lock on every pick. Here the loop is run once at
//! build time for one full cycle, whose sequence is stored and indexed by a shared atomic
//! counter, so a pick is one `fetch_add` and one load, and the interleaving is exact across
//! worker threads. The cycle is as short as possible (weights are divided by their gcd) and
//! at most [`MAX_CYCLE`] long (larger weights are scaled down proportionally), so the table
//! stays small whatever weights the configuration gives.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Gate, LoadView, PickInput, ServerSpec, Tried};

/// Longest cycle stored; 65,536 entries of 4 bytes. Exceeded only when more servers than
/// this have a positive weight, as each keeps at least one slot.
const MAX_CYCLE: u64 = 65_536;

/// How far a pick follows the sequence past unusable entries before scanning the servers
/// instead: bounds the cost of a pick when most servers are down.
const MAX_SEQUENCE_PROBES: usize = 1024;

#[derive(Debug)]
pub struct WeightedRoundRobin {
    /// One full smooth cycle of server indices.
    sequence: Box<[u32]>,
    weights: Box<[u32]>,
    next: AtomicUsize,
}

impl WeightedRoundRobin {
    pub fn new(servers: &[ServerSpec<'_>]) -> Self {
        let weights: Box<[u32]> = servers.iter().map(|s| s.weight).collect();
        let cycle_weights = cycle_weights(&weights, MAX_CYCLE);
        Self { sequence: smooth_sequence(&cycle_weights), weights, next: AtomicUsize::new(0) }
    }

    /// The next entry of the cycle; when it is not allowed, the next allowed entry after it.
    pub fn pick(&self, input: &PickInput, view: &impl LoadView, tried: &Tried) -> Option<usize> {
        let gate = Gate::new(input, view, tried, &self.weights);
        let m = self.sequence.len();
        if m == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % m;
        let (tail, head) = self.sequence.split_at_checked(start).unwrap_or((&self.sequence, &[]));
        let first = head.first().map_or(0, |&i| i as usize);
        head.iter()
            .chain(tail)
            .take(MAX_SEQUENCE_PROBES)
            .map(|&i| i as usize)
            .find(|&i| gate.allows(i))
            .or_else(|| gate.scan(first + 1, None))
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Weights reduced to the shortest cycle with the same proportions, then scaled down so that
/// the cycle (their sum) is at most `limit`, keeping every positive weight at least 1.
fn cycle_weights(weights: &[u32], limit: u64) -> Vec<u64> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w)));
    if g == 0 {
        return vec![0; weights.len()];
    }
    let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
    let sum: u64 = reduced.iter().sum();
    if sum <= limit {
        return reduced;
    }
    // Flooring to at least 1 can overshoot `limit` by the number of weights it lifts, so
    // shrink the target by the overshoot until the result fits; target 1 means all ones.
    let mut target = limit;
    loop {
        let scaled: Vec<u64> = reduced
            .iter()
            .map(|&w| {
                if w == 0 {
                    0
                } else {
                    ((u128::from(w) * u128::from(target) / u128::from(sum)) as u64).max(1)
                }
            })
            .collect();
        let total: u64 = scaled.iter().sum();
        if total <= limit || target <= 1 {
            let g = scaled.iter().fold(0, |g, &w| gcd(g, w)).max(1);
            return scaled.into_iter().map(|w| w / g).collect();
        }
        target = target.saturating_sub(total - limit).max(1);
    }
}

/// One full cycle of NGINX's smooth weighted round robin over `weights`.
///
/// At step `t` (from 1) server `i`, picked `c_i` times so far, has current weight
/// `t * w_i - total * c_i`. Servers of equal weight therefore take turns in index order, so
/// only the next-in-turn member of each distinct weight can win a step: the cost is
/// `total * distinct weights` (at most about 65,536 * 361) instead of `total * servers`.
/// Ties go to the lowest index, as in NGINX.
fn smooth_sequence(weights: &[u64]) -> Box<[u32]> {
    struct Group {
        weight: i128,
        members: Vec<u32>,
        picks: usize,
    }
    let mut by_weight: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (i, &w) in weights.iter().enumerate() {
        if w > 0 {
            by_weight.entry(w).or_default().push(i as u32);
        }
    }
    let mut groups: Vec<Group> = by_weight
        .into_iter()
        .map(|(w, members)| Group { weight: i128::from(w), members, picks: 0 })
        .collect();
    let total: u64 = weights.iter().sum();
    let total_i = i128::from(total);
    let mut sequence = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for t in 1..=i128::from(total) {
        let mut best: Option<(i128, u32, usize)> = None;
        for (g, group) in groups.iter().enumerate() {
            let len = group.members.len();
            let Some(&member) = group.members.get(group.picks % len) else { continue };
            let current = t * group.weight - total_i * (group.picks / len) as i128;
            let better = match best {
                None => true,
                Some((bc, bm, _)) => current > bc || (current == bc && member < bm),
            };
            if better {
                best = Some((current, member, g));
            }
        }
        let Some((_, member, g)) = best else { break };
        sequence.push(member);
        if let Some(group) = groups.get_mut(g) {
            group.picks += 1;
        }
    }
    sequence.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{VecView, histogram, keys, specs};
    use super::*;

    fn wrr(weights: &[u32]) -> WeightedRoundRobin {
        WeightedRoundRobin::new(&specs(&keys(weights.len()), weights))
    }

    fn picks(b: &WeightedRoundRobin, view: &VecView, n: usize) -> Vec<Option<usize>> {
        (0..n).map(|_| b.pick(&PickInput::default(), view, &Tried::new())).collect()
    }

    /// NGINX's loop, verbatim, as the reference for the table builder.
    fn nginx(weights: &[u64], steps: usize) -> Vec<u32> {
        let total: i128 = weights.iter().map(|&w| i128::from(w)).sum();
        let mut current = vec![0i128; weights.len()];
        let mut out = Vec::new();
        for _ in 0..steps {
            let mut best: Option<usize> = None;
            for (i, &w) in weights.iter().enumerate() {
                if w == 0 {
                    continue;
                }
                current[i] += i128::from(w);
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let Some(b) = best else { break };
            current[b] -= total;
            out.push(b as u32);
        }
        out
    }

    #[test]
    fn nginx_sequence_5_1_1() {
        let b = wrr(&[5, 1, 1]);
        let view = VecView::all(3);
        let (a, bb, c) = (Some(0), Some(1), Some(2));
        let cycle = [a, a, bb, a, c, a, a];
        let seq = picks(&b, &view, 21);
        for chunk in seq.chunks(7) {
            assert_eq!(chunk, cycle);
        }
    }

    #[test]
    fn table_matches_nginx_loop() {
        let cases: &[&[u64]] = &[
            &[5, 1, 1],
            &[1, 1, 1],
            &[3, 2],
            &[7, 0, 3, 3, 1],
            &[10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            &[2, 3, 5, 7, 11, 13],
            &[4, 4, 2, 2, 1],
        ];
        for &w in cases {
            let total: u64 = w.iter().sum();
            assert_eq!(&*smooth_sequence(w), nginx(w, total as usize), "weights {w:?}");
        }
    }

    #[test]
    fn gcd_shortens_the_cycle() {
        assert_eq!(cycle_weights(&[10, 2, 2], MAX_CYCLE), [5, 1, 1]);
        assert_eq!(&*wrr(&[10, 2, 2]).sequence, &*wrr(&[5, 1, 1]).sequence);
    }

    #[test]
    fn large_weights_are_scaled_within_the_limit() {
        let w = cycle_weights(&[1_000_000, 1, 500_000, 0, 3], MAX_CYCLE);
        assert!(w.iter().sum::<u64>() <= MAX_CYCLE);
        assert_eq!(w[3], 0);
        assert!(w[1] >= 1 && w[4] >= 1);
        assert!(w[0] > w[2] && w[2] > w[4]);
        let b = wrr(&[u32::MAX, u32::MAX - 1, 1]);
        assert!(b.sequence.len() as u64 <= MAX_CYCLE);
        // More positive servers than the limit: one slot each.
        let many = cycle_weights(&vec![3; 70_000], 65_536);
        assert!(many.iter().all(|&w| w == 1));
        let tight = cycle_weights(&[100, 1, 1, 1, 1, 1], 10);
        assert!(tight.iter().sum::<u64>() <= 10 && tight.iter().all(|&w| w >= 1));
    }

    #[test]
    fn weight_zero_never_picked() {
        let b = wrr(&[0, 3, 0, 1]);
        let h = histogram(4, picks(&b, &VecView::all(4), 400));
        assert_eq!(h, [0, 300, 0, 100]);
    }

    #[test]
    fn unusable_entries_are_skipped_along_the_cycle() {
        let b = wrr(&[5, 1, 1]);
        let view = VecView::with_eligible(&[false, true, true]);
        let h = histogram(3, picks(&b, &view, 700));
        assert_eq!(h[0], 0);
        assert_eq!(h[1] + h[2], 700);
        let mut tried = Tried::new();
        tried.insert(1);
        tried.insert(2);
        for _ in 0..10 {
            assert_eq!(b.pick(&PickInput::default(), &VecView::all(3), &tried), Some(0));
        }
    }

    #[test]
    fn falls_back_to_a_scan_past_the_probe_bound() {
        // Server 1 appears once in a cycle of 5,001: the bounded walk usually misses it.
        let b = wrr(&[5000, 1]);
        let view = VecView::with_eligible(&[false, true]);
        for _ in 0..20 {
            assert_eq!(b.pick(&PickInput::default(), &view, &Tried::new()), Some(1));
        }
    }

    #[test]
    fn none_when_nothing_usable() {
        let b = wrr(&[2, 1, 0]);
        assert_eq!(picks(&b, &VecView::with_eligible(&[false, false, true]), 5), [None; 5]);
        assert_eq!(picks(&wrr(&[]), &VecView::all(0), 2), [None; 2]);
        assert_eq!(picks(&wrr(&[0, 0]), &VecView::all(2), 2), [None; 2]);
    }

    #[test]
    fn view_shorter_than_built_size() {
        let b = wrr(&[1, 2, 3, 4]);
        for p in picks(&b, &VecView::all(2), 30) {
            assert!(p.is_some_and(|i| i < 2));
        }
        assert_eq!(picks(&b, &VecView::all(0), 3), [None; 3]);
    }

    #[test]
    fn equal_weights_rotate_in_order() {
        let b = wrr(&[4, 4, 4]);
        assert_eq!(picks(&b, &VecView::all(3), 6), [0, 1, 2, 0, 1, 2].map(Some));
    }
}
