//! Weighted random, and the weighted sampler it shares with power-of-two and source-hash.
//!
//! The sampler keeps prefix sums of the weights, built once, so drawing a server is one
//! binary search over `n` words and allocates nothing; with equal weights (the common case)
//! it skips the search and maps the word straight onto an index. An unusable draw is redrawn
//! a few times with a re-mixed word, which keeps the weighted shares among the servers that
//! remain; only when that keeps failing (most of the pool down) does the pick fall back to a
//! scan from a random start, which bounds its cost.

use super::{Gate, LoadView, PickInput, ServerSpec, Tried, mix, reduce};

/// Draws before a random pick gives up sampling and scans.
pub(crate) const DRAWS: usize = 4;

/// Maps a word to a server index with probability proportional to the weights.
#[derive(Debug)]
pub(crate) struct Sampler {
    /// `prefix[i]` = sum of the weights of servers `0..=i`.
    prefix: Box<[u64]>,
    total: u64,
    /// All servers have the same positive weight: index = word mapped onto `0..n`.
    uniform: bool,
}

impl Sampler {
    pub(crate) fn new(weights: &[u32]) -> Self {
        let prefix: Box<[u64]> = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        let total = prefix.last().copied().unwrap_or(0);
        let uniform = weights.first().is_some_and(|&w0| w0 > 0 && weights.iter().all(|&w| w == w0));
        Self { prefix, total, uniform }
    }

    /// Sum of all weights; 0 means nothing can be drawn.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Whether every server has the same positive weight.
    pub(crate) fn uniform(&self) -> bool {
        self.uniform
    }

    /// The server owning point `x` of `0..total` (a server of weight 0 owns no point).
    #[inline]
    pub(crate) fn at(&self, x: u64) -> usize {
        if self.uniform {
            // Every weight is total / n, so no search is needed.
            let w = self.total / self.prefix.len().max(1) as u64;
            return (x / w.max(1)) as usize;
        }
        self.prefix.partition_point(|&p| p <= x)
    }

    /// A weighted draw from a well-mixed word.
    #[inline]
    pub(crate) fn draw(&self, word: u64) -> usize {
        if self.uniform {
            return reduce(word, self.prefix.len() as u64) as usize;
        }
        self.at(reduce(word, self.total))
    }

    /// A weighted draw among all servers but `except`, in one step: the word is mapped onto
    /// the total minus `except`'s share, and points past the start of that share are shifted
    /// over it.
    #[inline]
    pub(crate) fn draw_except(&self, word: u64, except: usize) -> usize {
        let end = self.prefix.get(except).copied().unwrap_or(0);
        let start = match except.checked_sub(1) {
            Some(p) => self.prefix.get(p).copied().unwrap_or(0),
            None => 0,
        };
        let w = end - start.min(end);
        let rest = self.total - w.min(self.total);
        if rest == 0 {
            return except;
        }
        let x = reduce(word, rest);
        self.at(if x >= start { x + w } else { x })
    }
}

#[derive(Debug)]
pub struct Random {
    weights: Box<[u32]>,
    sampler: Sampler,
}

impl Random {
    pub fn new(servers: &[ServerSpec<'_>]) -> Self {
        let weights: Box<[u32]> = servers.iter().map(|s| s.weight).collect();
        Self { sampler: Sampler::new(&weights), weights }
    }

    pub fn pick(&self, input: &PickInput, view: &impl LoadView, tried: &Tried) -> Option<usize> {
        let gate = Gate::new(input, view, tried, &self.weights);
        if gate.len() == 0 || self.sampler.total() == 0 {
            return None;
        }
        let mut word = input.rand;
        for _ in 0..DRAWS {
            let i = self.sampler.draw(word);
            if gate.allows(i) {
                return Some(i);
            }
            word = mix(word);
        }
        gate.scan(reduce(word, gate.len() as u64) as usize, None)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{VecView, histogram, keys, specs};
    use super::*;

    fn random(weights: &[u32]) -> Random {
        Random::new(&specs(&keys(weights.len()), weights))
    }

    fn input(i: u64) -> PickInput {
        PickInput { hash: 0, rand: mix(i) }
    }

    #[test]
    fn sampler_points() {
        let s = Sampler::new(&[2, 0, 3]);
        let owners: Vec<_> = (0..5).map(|x| s.at(x)).collect();
        assert_eq!(owners, [0, 0, 2, 2, 2]);
        assert!(!s.uniform());
        let u = Sampler::new(&[4, 4, 4]);
        assert!(u.uniform());
        assert_eq!(
            (0..12).map(|x| u.at(x)).collect::<Vec<_>>(),
            [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
        );
        assert_eq!(u.draw(0), 0);
        assert_eq!(u.draw(u64::MAX), 2);
    }

    #[test]
    fn draw_except_never_returns_the_excluded() {
        for weights in [&[3u32, 1, 0, 6][..], &[1, 1, 1], &[0, 5], &[7]] {
            let s = Sampler::new(weights);
            for except in 0..weights.len() {
                for k in 0..200 {
                    let i = s.draw_except(mix(k), except);
                    let others = weights.iter().enumerate().any(|(j, &w)| j != except && w > 0);
                    if others {
                        assert_ne!(i, except, "{weights:?} except {except}");
                        assert!(weights[i] > 0);
                    }
                }
            }
        }
    }

    #[test]
    fn shares_follow_weights() {
        let b = random(&[1, 2, 0, 5]);
        let view = VecView::all(4);
        let h = histogram(4, (0..8000).map(|i| b.pick(&input(i), &view, &Tried::new())));
        assert_eq!(h[2], 0);
        for (count, w) in h.iter().zip([1.0, 2.0, 0.0, 5.0]) {
            let expected = 8000.0 * w / 8.0;
            assert!((*count as f64 - expected).abs() < 0.1 * expected + 1.0, "{h:?}");
        }
    }

    #[test]
    fn unusable_draws_are_redrawn_then_scanned() {
        let b = random(&[1, 1, 1, 1, 1, 1, 1, 1]);
        let mut eligible = [false; 8];
        eligible[5] = true;
        let view = VecView::with_eligible(&eligible);
        for i in 0..100 {
            assert_eq!(b.pick(&input(i), &view, &Tried::new()), Some(5));
        }
        let mut tried = Tried::new();
        tried.insert(5);
        assert_eq!(b.pick(&input(1), &view, &tried), None);
    }

    #[test]
    fn none_when_nothing_usable() {
        assert_eq!(random(&[]).pick(&input(1), &VecView::all(0), &Tried::new()), None);
        assert_eq!(random(&[0, 0]).pick(&input(1), &VecView::all(2), &Tried::new()), None);
        let view = VecView::with_eligible(&[false, true]);
        assert_eq!(random(&[1, 0]).pick(&input(1), &view, &Tried::new()), None);
    }

    #[test]
    fn view_shorter_than_built_size() {
        for b in [random(&[1, 1, 1, 1]), random(&[1, 2, 3, 4])] {
            for i in 0..50 {
                assert!(b.pick(&input(i), &VecView::all(2), &Tried::new()).is_some_and(|i| i < 2));
            }
            assert_eq!(b.pick(&input(0), &VecView::all(0), &Tried::new()), None);
        }
    }
}
