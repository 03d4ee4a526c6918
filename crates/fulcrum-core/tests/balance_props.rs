//! Property tests of every balancing algorithm, through the public interface the data plane
//! uses: picks obey eligibility, `tried` and zero weights; weights are honoured; the
//! consistent-hashing algorithms keep clients in place when the pool changes.
//!
//! Statistical checks use deterministic inputs derived from the case (so a failure
//! reproduces) and tolerances of six binomial standard deviations, plus whatever imbalance
//! the algorithm has by construction, so that they do not flake across thousands of runs.

#![allow(clippy::unwrap_used)]

use fulcrum_core::balance::{
    Algorithm, Balancer, LeastConnections, LoadView, MAX_ATTEMPTS, Maglev, PickInput, RingHash,
    ServerSpec, Tried, WeightedRoundRobin, mix,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct VecView {
    eligible: Vec<bool>,
    active: Vec<u64>,
}

impl VecView {
    fn all(n: usize) -> Self {
        Self { eligible: vec![true; n], active: vec![0; n] }
    }
}

impl LoadView for VecView {
    fn len(&self) -> usize {
        self.eligible.len()
    }
    fn eligible(&self, i: usize) -> bool {
        self.eligible[i]
    }
    fn active(&self, i: usize) -> u64 {
        self.active[i]
    }
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}.example:8080")).collect()
}

fn specs<'a>(keys: &'a [String], weights: &[u32]) -> Vec<ServerSpec<'a>> {
    keys.iter().zip(weights).map(|(k, &weight)| ServerSpec { key: k, weight }).collect()
}

fn picks_of(
    b: &Balancer,
    view: &VecView,
    inputs: impl Iterator<Item = PickInput>,
    n: usize,
) -> Vec<usize> {
    let mut counts = vec![0; n];
    for input in inputs {
        counts[b.pick(&input, view, &Tried::new()).unwrap()] += 1;
    }
    counts
}

/// Six standard deviations of a binomial share estimate, plus one sample of slack.
fn six_sigma(p: f64, samples: usize) -> f64 {
    6.0 * (p * (1.0 - p) / samples as f64).sqrt() + 1.0 / samples as f64
}

/// A pool: weights (some zero), eligibility, active counts, a `tried` set, and a view length
/// that may differ from the number of specs by a little.
fn pool() -> impl Strategy<Value = (Vec<u32>, VecView, Tried, usize)> {
    (1usize..=12).prop_flat_map(|n| {
        (
            prop::collection::vec(prop_oneof![1 => Just(0u32), 4 => 1u32..=6], n),
            prop::collection::vec(prop::bool::weighted(0.7), n + 2),
            prop::collection::vec(0u64..20, n + 2),
            prop::collection::vec(0..n + 2, 0..=MAX_ATTEMPTS),
            (n.saturating_sub(2))..=n + 2,
        )
            .prop_map(|(weights, eligible, active, tried_idx, view_len)| {
                let mut tried = Tried::new();
                for i in tried_idx {
                    tried.insert(i);
                }
                let view = VecView {
                    eligible: eligible[..view_len].to_vec(),
                    active: active[..view_len].to_vec(),
                };
                (weights, view, tried, view_len)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// (a) Every algorithm returns only allowed servers, and None exactly when none is.
    #[test]
    fn picks_are_always_allowed((weights, view, tried, view_len) in pool(), seed: u64, prefix in "[a-z]{1,6}") {
        let k = keys(&prefix, weights.len());
        let servers = specs(&k, &weights);
        let n = weights.len().min(view_len);
        let allowed = |i: usize| i < n && weights[i] > 0 && view.eligible[i] && !tried.contains(i);
        let any_allowed = (0..n).any(allowed);
        for algorithm in Algorithm::ALL {
            let b = Balancer::new(algorithm, &servers);
            for j in 0..16u64 {
                let input = PickInput { hash: mix(seed ^ j), rand: mix(seed.wrapping_add(j)) };
                match b.pick(&input, &view, &tried) {
                    Some(i) => prop_assert!(allowed(i), "{algorithm} picked {i}"),
                    None => prop_assert!(!any_allowed, "{algorithm} found nothing"),
                }
            }
        }
    }

    /// (b) Weighted round robin: every cycle of the gcd-reduced weights is exact.
    #[test]
    fn wrr_cycles_are_exact(weights in prop::collection::vec(0u32..=12, 1..=10)) {
        let k = keys("wrr", weights.len());
        let b = WeightedRoundRobin::new(&specs(&k, &weights));
        let g = weights.iter().fold(0, |g, &w| gcd(g, w));
        prop_assume!(g > 0);
        let cycle: u32 = weights.iter().map(|w| w / g).sum();
        let view = VecView::all(weights.len());
        for _ in 0..3 {
            let mut counts = vec![0u32; weights.len()];
            for _ in 0..cycle {
                counts[b.pick(&PickInput::default(), &view, &Tried::new()).unwrap()] += 1;
            }
            let expected: Vec<u32> = weights.iter().map(|w| w / g).collect();
            prop_assert_eq!(&counts, &expected);
        }
    }

    /// (b) Random, source-hash and Maglev shares follow the weights.
    #[test]
    fn sampled_shares_follow_weights(weights in prop::collection::vec(0u32..=8, 2..=8), seed: u64) {
        let total: u32 = weights.iter().sum();
        prop_assume!(total > 0);
        let k = keys(&format!("w{seed}"), weights.len());
        let servers = specs(&k, &weights);
        let view = VecView::all(weights.len());
        const S: usize = 4000;
        for algorithm in [Algorithm::Random, Algorithm::SourceHash, Algorithm::Maglev] {
            let b = Balancer::new(algorithm, &servers);
            let inputs = (0..S as u64).map(|i| {
                let x = mix(seed.wrapping_add(i));
                PickInput { hash: x, rand: x }
            });
            let counts = picks_of(&b, &view, inputs, weights.len());
            for (c, &w) in counts.iter().zip(&weights) {
                let p = f64::from(w) / f64::from(total);
                let share = *c as f64 / S as f64;
                // Maglev's weighted table is itself proportional to within a fraction of a
                // percent; the rest is sampling.
                let tol = six_sigma(p, S) + 0.005;
                prop_assert!((share - p).abs() <= tol, "{algorithm}: {counts:?} for {weights:?}");
            }
        }
    }

    /// (b) Ring-hash shares follow the weights, within the ring's own imbalance: a server
    /// with `p` points owns a share whose relative deviation is about `1/sqrt(p)`.
    #[test]
    fn ring_shares_follow_weights(weights in prop::collection::vec(0u32..=6, 2..=8), seed: u64) {
        let total: u32 = weights.iter().sum();
        prop_assume!(total > 0);
        let k = keys(&format!("r{seed}"), weights.len());
        let b = RingHash::new(&specs(&k, &weights));
        let points = b.points_per_server();
        let view = VecView::all(weights.len());
        const S: usize = 4000;
        let mut counts = vec![0usize; weights.len()];
        for i in 0..S as u64 {
            let input = PickInput { hash: mix(seed.wrapping_add(i)), rand: 0 };
            counts[b.pick(&input, &view, &Tried::new()).unwrap()] += 1;
        }
        for ((c, &w), &pts) in counts.iter().zip(&weights).zip(&points) {
            let p = f64::from(w) / f64::from(total);
            let share = *c as f64 / S as f64;
            let ring_tol = if pts == 0 { 0.0 } else { p * 6.0 / (pts as f64).sqrt() };
            prop_assert!((share - p).abs() <= ring_tol + six_sigma(p, S), "{counts:?} for {weights:?}");
        }
    }

    /// (b) Least connections, each pick adding a connection to the picked server: no server
    /// ever holds more than one connection above its weighted share, and the counts are
    /// exactly proportional whenever the total is a multiple of the total weight.
    #[test]
    fn least_connections_tracks_weights(weights in prop::collection::vec(0u32..=6, 1..=8), seed: u64) {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        prop_assume!(total > 0);
        let k = keys("lc", weights.len());
        let b = LeastConnections::new(&specs(&k, &weights));
        let mut view = VecView::all(weights.len());
        for step in 1..=3 * total {
            let input = PickInput { hash: 0, rand: mix(seed.wrapping_add(step)) };
            let i = b.pick(&input, &view, &Tried::new()).unwrap();
            view.active[i] += 1;
            for (a, &w) in view.active.iter().zip(&weights) {
                // a <= step * w / total + 1, in integers.
                prop_assert!(a * total <= step * u64::from(w) + total, "{:?} after {step}", view.active);
            }
            if step % total == 0 {
                let expected: Vec<u64> = weights.iter().map(|&w| step / total * u64::from(w)).collect();
                prop_assert_eq!(&view.active, &expected);
            }
        }
    }

    /// Least connections with equal weights keeps every count within one of the others.
    #[test]
    fn least_connections_equal_weights_within_one(n in 1usize..=10, picks in 1u64..60, seed: u64) {
        let k = keys("lce", n);
        let b = LeastConnections::new(&specs(&k, &vec![3; n]));
        let mut view = VecView::all(n);
        for step in 0..picks {
            let input = PickInput { hash: 0, rand: mix(seed ^ step) };
            let i = b.pick(&input, &view, &Tried::new()).unwrap();
            view.active[i] += 1;
            let (min, max) = (view.active.iter().min().unwrap(), view.active.iter().max().unwrap());
            prop_assert!(max - min <= 1);
        }
    }

    /// Power of two never sends to the single most loaded server when another is usable.
    #[test]
    fn power_of_two_avoids_the_most_loaded(
        weights in prop::collection::vec(1u32..=4, 2..=8),
        active in prop::collection::vec(0u64..50, 8),
        seed: u64,
    ) {
        let n = weights.len();
        let k = keys("p2c", n);
        let b = Balancer::new(Algorithm::PowerOfTwo, &specs(&k, &weights));
        let view = VecView { eligible: vec![true; n], active: active[..n].to_vec() };
        // The unique server with the highest active/weight, if there is one.
        let ratio = |i: usize| view.active[i] as f64 / f64::from(weights[i]);
        let worst = (0..n).max_by(|&a, &b| ratio(a).total_cmp(&ratio(b))).unwrap();
        prop_assume!((0..n).filter(|&i| ratio(i) == ratio(worst)).count() == 1);
        for j in 0..64u64 {
            let input = PickInput { hash: 0, rand: mix(seed ^ j) };
            prop_assert_ne!(b.pick(&input, &view, &Tried::new()), Some(worst));
        }
    }

    /// Source hash: the same hash and pool state give the same server, whatever `rand`.
    #[test]
    fn source_hash_is_sticky((weights, view, tried, _len) in pool(), hash: u64, r1: u64, r2: u64) {
        let k = keys("sh", weights.len());
        let b = Balancer::new(Algorithm::SourceHash, &specs(&k, &weights));
        let p1 = b.pick(&PickInput { hash, rand: r1 }, &view, &tried);
        let p2 = b.pick(&PickInput { hash, rand: r2 }, &view, &tried);
        prop_assert_eq!(p1, p2);
    }
}

proptest! {
    // Each case builds two 65,537-slot Maglev tables and looks up tens of thousands of keys.
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// (c) Removing one of N servers moves about 1/N of the keys, and (nearly) only those.
    #[test]
    fn removal_moves_about_one_nth(n in 3usize..=20, removed_seed: usize, seed: u64, prefix in "[a-z]{1,6}") {
        let removed = removed_seed % n;
        let k = keys(&prefix, n);
        let full = specs(&k, &vec![1; n]);
        let rest: Vec<ServerSpec<'_>> =
            full.iter().enumerate().filter(|&(i, _)| i != removed).map(|(_, s)| *s).collect();
        const S: usize = 10_000;
        for algorithm in [Algorithm::Maglev, Algorithm::RingHash] {
            let before = Balancer::new(algorithm, &full);
            let after = Balancer::new(algorithm, &rest);
            let (view_before, view_after) = (VecView::all(n), VecView::all(n - 1));
            let (mut moved, mut survivors, mut survivors_stayed) = (0, 0, 0);
            for i in 0..S as u64 {
                let input = PickInput { hash: mix(seed.wrapping_add(i)), rand: 0 };
                let old = full[before.pick(&input, &view_before, &Tried::new()).unwrap()].key;
                let new = rest[after.pick(&input, &view_after, &Tried::new()).unwrap()].key;
                if old != new {
                    moved += 1;
                }
                if old != k[removed] {
                    survivors += 1;
                    if old == new {
                        survivors_stayed += 1;
                    }
                }
            }
            let stayed = survivors_stayed as f64 / survivors as f64;
            let moved = moved as f64 / S as f64;
            let p = 1.0 / n as f64;
            match algorithm {
                Algorithm::Maglev => {
                    prop_assert!(stayed >= 0.9, "maglev kept {stayed} of survivors' keys");
                    prop_assert!(moved <= p + 0.05 + six_sigma(p, S), "maglev moved {moved}");
                }
                _ => {
                    prop_assert_eq!(survivors_stayed, survivors);
                    // Only the removed server's keys move: its ring share (160 points).
                    let tol = p * 6.0 / 160f64.sqrt() + six_sigma(p, S);
                    prop_assert!(moved <= p + tol, "ring moved {moved}");
                }
            }
        }
    }

    /// (d) Maglev with equal weights: table slots within 2% of even, keys spread evenly.
    #[test]
    fn maglev_equal_weights_is_even(n in 1usize..=20, seed: u64, prefix in "[a-z]{1,6}") {
        let k = keys(&prefix, n);
        let b = Maglev::new(&specs(&k, &vec![5; n]));
        let slots = b.slots_per_server();
        let even = b.table_len() as f64 / n as f64;
        for &s in &slots {
            prop_assert!((s as f64 - even).abs() <= 0.02 * even, "{slots:?}");
        }
        const S: usize = 20_000;
        let view = VecView::all(n);
        let mut counts = vec![0usize; n];
        for i in 0..S as u64 {
            let input = PickInput { hash: mix(seed.wrapping_add(i)), rand: 0 };
            counts[b.pick(&input, &view, &Tried::new()).unwrap()] += 1;
        }
        let p = 1.0 / n as f64;
        for &c in &counts {
            prop_assert!((c as f64 / S as f64 - p).abs() <= six_sigma(p, S), "{counts:?}");
        }
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[test]
fn balancers_are_shareable_across_threads() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<Balancer>();
    check::<std::sync::Arc<Balancer>>();
}

#[test]
fn every_algorithm_name_round_trips() {
    for a in Algorithm::ALL {
        assert_eq!(a.name().parse::<Algorithm>(), Ok(a));
    }
    assert!("nope".parse::<Algorithm>().is_err());
}

#[test]
fn maglev_and_ring_build_at_ten_thousand_servers() {
    let k = keys("big", 10_000);
    let servers = specs(&k, &[1; 10_000]);
    let m = Maglev::new(&servers);
    assert!(m.table_len() >= 1_000_000);
    let slots = m.slots_per_server();
    let (min, max) = (slots.iter().min().unwrap(), slots.iter().max().unwrap());
    assert!(max - min <= 1);
    let r = RingHash::new(&servers);
    assert_eq!(r.ring_len(), 1_000_000);
    let view = VecView::all(10_000);
    for b in [Balancer::Maglev(m), Balancer::RingHash(r)] {
        for i in 0..100 {
            let input = PickInput { hash: mix(i), rand: mix(i + 1) };
            assert!(b.pick(&input, &view, &Tried::new()).is_some());
        }
    }
}
