//! Power of two choices: draw two different servers at random (weighted like [`Random`]),
//! send the connection to the one with the smaller `active / weight`.
//!
//! It gets most of least-connections' balance at the cost of two counter reads instead of
//! `n`, and because the candidates are random, workers that pick at the same moment from the
//! same (slightly stale) counts do not all pile onto the one least-loaded server. The second
//! candidate is drawn with the first one's weight taken out, so it differs in one step
//! instead of by rejection, which matters when one server carries most of the weight.
//!
//! [`Random`]: super::Random

use super::random::{DRAWS, Sampler};
use super::{Gate, LoadView, PickInput, ServerSpec, Tried, less_loaded, mix, reduce};

/// Decorrelates the second candidate's words from the first's.
const SECOND: u64 = 0x5851_F42D_4C95_7F2D;

#[derive(Debug)]
pub struct PowerOfTwo {
    weights: Box<[u32]>,
    sampler: Sampler,
}

impl PowerOfTwo {
    pub fn new(servers: &[ServerSpec<'_>]) -> Self {
        let weights: Box<[u32]> = servers.iter().map(|s| s.weight).collect();
        Self { sampler: Sampler::new(&weights), weights }
    }

    pub fn pick(&self, input: &PickInput, view: &impl LoadView, tried: &Tried) -> Option<usize> {
        let gate = Gate::new(input, view, tried, &self.weights);
        let n = gate.len();
        if n == 0 || self.sampler.total() == 0 {
            return None;
        }
        let mut word = input.rand;
        let mut first = None;
        for _ in 0..DRAWS {
            let i = self.sampler.draw(word);
            if gate.allows(i) {
                first = Some(i);
                break;
            }
            word = mix(word);
        }
        let a = match first {
            Some(a) => a,
            None => gate.scan(reduce(word, n as u64) as usize, None)?,
        };
        let mut word = mix(input.rand ^ SECOND);
        let mut second = None;
        for _ in 0..DRAWS {
            let i = self.sampler.draw_except(word, a);
            if i != a && gate.allows(i) {
                second = Some(i);
                break;
            }
            word = mix(word);
        }
        let b = second.or_else(|| gate.scan(reduce(word, n as u64) as usize, Some(a)));
        match b {
            Some(b)
                if less_loaded(
                    gate.active(b),
                    gate.effective_weight(b),
                    gate.active(a),
                    gate.effective_weight(a),
                ) =>
            {
                Some(b)
            }
            _ => Some(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{VecView, histogram, keys, specs};
    use super::*;

    fn p2c(weights: &[u32]) -> PowerOfTwo {
        PowerOfTwo::new(&specs(&keys(weights.len()), weights))
    }

    fn input(i: u64) -> PickInput {
        PickInput { hash: 0, rand: mix(i) }
    }

    #[test]
    fn two_servers_always_compared() {
        // With two usable servers the candidates must differ, so the idle one always wins.
        let b = p2c(&[1, 1]);
        let view = VecView::with_active(&[0, 10]);
        for i in 0..200 {
            assert_eq!(b.pick(&input(i), &view, &Tried::new()), Some(0));
        }
        let b = p2c(&[1000, 1]);
        let view = VecView::with_active(&[10_000, 1]);
        for i in 0..200 {
            assert_eq!(b.pick(&input(i), &view, &Tried::new()), Some(1));
        }
    }

    #[test]
    fn the_busiest_server_is_never_picked() {
        let b = p2c(&[1, 1, 1, 1]);
        let view = VecView::with_active(&[1, 2, 9, 3]);
        let h = histogram(4, (0..2000).map(|i| b.pick(&input(i), &view, &Tried::new())));
        assert_eq!(h[2], 0);
        // Server 0 wins every pair it is in: half of all pairs.
        assert!(h[0] > 900, "{h:?}");
    }

    #[test]
    fn load_is_relative_to_weight() {
        let b = p2c(&[4, 1]);
        // 7/4 < 2/1.
        let view = VecView::with_active(&[7, 2]);
        for i in 0..50 {
            assert_eq!(b.pick(&input(i), &view, &Tried::new()), Some(0));
        }
    }

    #[test]
    fn skips_weight_zero_ineligible_and_tried() {
        let b = p2c(&[0, 1, 1, 1, 1]);
        let mut view = VecView::with_active(&[0, 5, 0, 5, 5]);
        view.eligible[2] = false;
        let mut tried = Tried::new();
        tried.insert(3);
        for i in 0..200 {
            let p = b.pick(&input(i), &view, &tried);
            assert!(matches!(p, Some(1 | 4)), "{p:?}");
        }
        tried.insert(1);
        tried.insert(4);
        assert_eq!(b.pick(&input(0), &view, &tried), None);
    }

    #[test]
    fn single_usable_server() {
        let b = p2c(&[1, 1, 1]);
        let view = VecView::with_eligible(&[false, true, false]);
        for i in 0..50 {
            assert_eq!(b.pick(&input(i), &view, &Tried::new()), Some(1));
        }
    }

    #[test]
    fn none_when_nothing_usable() {
        assert_eq!(p2c(&[]).pick(&input(1), &VecView::all(0), &Tried::new()), None);
        assert_eq!(p2c(&[0, 0]).pick(&input(1), &VecView::all(2), &Tried::new()), None);
        let view = VecView::with_eligible(&[false, false]);
        assert_eq!(p2c(&[1, 1]).pick(&input(1), &view, &Tried::new()), None);
    }

    #[test]
    fn view_shorter_than_built_size() {
        for b in [p2c(&[1, 1, 1, 1]), p2c(&[4, 3, 2, 1])] {
            for i in 0..50 {
                assert!(b.pick(&input(i), &VecView::all(2), &Tried::new()).is_some_and(|i| i < 2));
            }
            assert_eq!(b.pick(&input(0), &VecView::all(0), &Tried::new()), None);
        }
    }
}
