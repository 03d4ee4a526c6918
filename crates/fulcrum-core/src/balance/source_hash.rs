//! Source-address hashing: the client's address hash picks the server, so a client keeps
//! landing on the same server while the pool does not change (NGINX's `ip_hash`, weighted).
//!
//! The hash is mapped onto the weight line (prefix sums shared with [`Random`]), which keeps
//! shares proportional to weights without expanding a table. When the chosen server is
//! unusable the hash is re-mixed with the attempt number, up to [`REHASHES`] times as NGINX
//! does, so a client whose server is down still lands somewhere stable and clients of a
//! dead server spread over the others instead of all moving to its neighbour; only then
//! does it scan. Everything depends on the hash and the pool state only, never on `rand`.
//! It is not consistent hashing: adding or removing a server moves many clients (use
//! `maglev` or `ring-hash` for that).
//!
//! [`Random`]: super::Random

use super::random::Sampler;
use super::{Gate, LoadView, PickInput, ServerSpec, Tried, mix};

/// Rehashes before scanning, as in NGINX's `ip_hash`.
const REHASHES: u64 = 20;

#[derive(Debug)]
pub struct SourceHash {
    weights: Box<[u32]>,
    sampler: Sampler,
}

impl SourceHash {
    pub fn new(servers: &[ServerSpec<'_>]) -> Self {
        let weights: Box<[u32]> = servers.iter().map(|s| s.weight).collect();
        Self { sampler: Sampler::new(&weights), weights }
    }

    pub fn pick(&self, input: &PickInput, view: &impl LoadView, tried: &Tried) -> Option<usize> {
        let gate = Gate::new(input, view, tried, &self.weights);
        let total = self.sampler.total();
        if gate.len() == 0 || total == 0 {
            return None;
        }
        let mut h = input.hash;
        for attempt in 1..=REHASHES + 1 {
            let i = if self.sampler.uniform() {
                (h % self.weights.len() as u64) as usize
            } else {
                self.sampler.at(h % total)
            };
            if gate.allows(i) {
                return Some(i);
            }
            h = mix(input.hash ^ attempt);
        }
        gate.scan((input.hash % gate.len() as u64) as usize, None)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{VecView, histogram, keys, specs};
    use super::*;

    fn sh(weights: &[u32]) -> SourceHash {
        SourceHash::new(&specs(&keys(weights.len()), weights))
    }

    fn input(hash: u64, rand: u64) -> PickInput {
        PickInput { hash, rand }
    }

    #[test]
    fn same_hash_same_server_whatever_rand() {
        let b = sh(&[1, 2, 3, 1]);
        let view = VecView::all(4);
        for k in 0..100 {
            let h = mix(k);
            let first = b.pick(&input(h, 0), &view, &Tried::new());
            for r in 1..5 {
                assert_eq!(b.pick(&input(h, r), &view, &Tried::new()), first);
            }
        }
    }

    #[test]
    fn equal_weights_use_hash_mod_n() {
        let b = sh(&[1, 1, 1]);
        for h in 0..9 {
            assert_eq!(b.pick(&input(h, 0), &VecView::all(3), &Tried::new()), Some(h as usize % 3));
        }
    }

    #[test]
    fn shares_follow_weights() {
        let b = sh(&[3, 0, 1]);
        let h = histogram(
            3,
            (0..8000).map(|k| b.pick(&input(mix(k), 0), &VecView::all(3), &Tried::new())),
        );
        assert_eq!(h[1], 0);
        assert!((5700..6300).contains(&h[0]), "{h:?}");
    }

    #[test]
    fn clients_of_a_down_server_spread_and_stay_put() {
        let b = sh(&[1, 1, 1, 1]);
        let view = VecView::with_eligible(&[true, false, true, true]);
        let moved: Vec<_> = (0..4000u64)
            .map(mix)
            .filter(|h| h % 4 == 1)
            .map(|h| (h, b.pick(&input(h, 0), &view, &Tried::new())))
            .collect();
        let h = histogram(4, moved.iter().map(|&(_, p)| p));
        assert_eq!(h[1], 0);
        assert!(h[0] > 200 && h[2] > 200 && h[3] > 200, "{h:?}");
        for &(hash, p) in &moved {
            assert_eq!(b.pick(&input(hash, 9), &view, &Tried::new()), p);
        }
    }

    #[test]
    fn scan_after_rehashes() {
        let b = sh(&[1; 64]);
        let mut eligible = [false; 64];
        eligible[40] = true;
        let view = VecView::with_eligible(&eligible);
        for k in 0..100 {
            assert_eq!(b.pick(&input(mix(k), 0), &view, &Tried::new()), Some(40));
        }
    }

    #[test]
    fn tried_is_respected() {
        let b = sh(&[1, 1, 1]);
        let mut tried = Tried::new();
        tried.insert(0);
        let p = b.pick(&input(3, 0), &VecView::all(3), &tried);
        assert!(matches!(p, Some(1 | 2)));
        tried.insert(1);
        tried.insert(2);
        assert_eq!(b.pick(&input(3, 0), &VecView::all(3), &tried), None);
    }

    #[test]
    fn none_when_nothing_usable() {
        assert_eq!(sh(&[]).pick(&input(1, 1), &VecView::all(0), &Tried::new()), None);
        assert_eq!(sh(&[0, 0]).pick(&input(1, 1), &VecView::all(2), &Tried::new()), None);
        let view = VecView::with_eligible(&[false, true]);
        assert_eq!(sh(&[1, 0]).pick(&input(1, 1), &view, &Tried::new()), None);
    }

    #[test]
    fn view_shorter_than_built_size() {
        for b in [sh(&[1, 1, 1, 1]), sh(&[1, 2, 3, 4])] {
            for k in 0..50 {
                let p = b.pick(&input(mix(k), 0), &VecView::all(2), &Tried::new());
                assert!(p.is_some_and(|i| i < 2));
            }
            assert_eq!(b.pick(&input(1, 0), &VecView::all(0), &Tried::new()), None);
        }
    }
}
