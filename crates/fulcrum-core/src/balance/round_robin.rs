//! Plain round robin over the servers of positive weight, ignoring the weights' values.
//!
//! One shared atomic counter is the whole state: every worker thread takes the next slot
//! with a relaxed `fetch_add`, so the rotation is exact across threads without a lock (the
//! counter is a ticket dispenser, not a synchronisation point; nothing else is published
//! through it). Servers of weight 0 are left out of the rotation at build time so that they
//! do not make their successor take two turns.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Gate, LoadView, PickInput, ServerSpec, Tried};

#[derive(Debug)]
pub struct RoundRobin {
    /// Indices of the servers with a positive weight, in pool order.
    live: Box<[u32]>,
    weights: Box<[u32]>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(servers: &[ServerSpec<'_>]) -> Self {
        let live = (0..servers.len())
            .filter(|&i| servers.get(i).is_some_and(|s| s.weight > 0))
            .map(|i| i as u32)
            .collect();
        Self {
            live,
            weights: servers.iter().map(|s| s.weight).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next server in rotation; when it is not allowed, the next allowed one after it.
    pub fn pick(&self, input: &PickInput, view: &impl LoadView, tried: &Tried) -> Option<usize> {
        let gate = Gate::new(input, view, tried, &self.weights);
        let m = self.live.len();
        if m == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % m;
        let (tail, head) = self.live.split_at_checked(start).unwrap_or((&self.live, &[]));
        head.iter().chain(tail).map(|&i| i as usize).find(|&i| gate.allows(i))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{VecView, histogram, keys, specs};
    use super::*;

    fn rr(weights: &[u32]) -> RoundRobin {
        RoundRobin::new(&specs(&keys(weights.len()), weights))
    }

    #[test]
    fn exact_rotation() {
        let b = rr(&[1, 1, 1]);
        let view = VecView::all(3);
        let seq: Vec<_> =
            (0..7).map(|_| b.pick(&PickInput::default(), &view, &Tried::new())).collect();
        assert_eq!(seq, [0, 1, 2, 0, 1, 2, 0].map(Some));
    }

    #[test]
    fn exact_split_across_threads() {
        let b = rr(&[1, 1, 1]);
        let view = VecView::all(3);
        let picks: Vec<Option<usize>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..75)
                            .map(|_| b.pick(&PickInput::default(), &view, &Tried::new()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        assert_eq!(picks.len(), 300);
        assert_eq!(histogram(3, picks), [100, 100, 100]);
    }

    #[test]
    fn weight_zero_is_left_out_of_the_rotation() {
        let b = rr(&[1, 0, 1]);
        let view = VecView::all(3);
        let seq: Vec<_> =
            (0..4).map(|_| b.pick(&PickInput::default(), &view, &Tried::new())).collect();
        assert_eq!(seq, [0, 2, 0, 2].map(Some));
    }

    #[test]
    fn skips_ineligible_and_tried() {
        let b = rr(&[1, 1, 1]);
        let view = VecView::with_eligible(&[true, false, true]);
        let mut tried = Tried::new();
        tried.insert(2);
        for _ in 0..6 {
            assert_eq!(b.pick(&PickInput::default(), &view, &tried), Some(0));
        }
    }

    #[test]
    fn none_when_nothing_usable() {
        let b = rr(&[1, 1, 0]);
        let view = VecView::with_eligible(&[false, true, true]);
        let mut tried = Tried::new();
        tried.insert(1);
        assert_eq!(b.pick(&PickInput::default(), &view, &tried), None);
        assert_eq!(rr(&[]).pick(&PickInput::default(), &VecView::all(0), &Tried::new()), None);
        assert_eq!(rr(&[0, 0]).pick(&PickInput::default(), &VecView::all(2), &Tried::new()), None);
    }

    #[test]
    fn view_shorter_or_longer_than_built_size() {
        let b = rr(&[1, 1, 1, 1]);
        let short = VecView::all(2);
        for _ in 0..8 {
            assert!(b.pick(&PickInput::default(), &short, &Tried::new()).is_some_and(|i| i < 2));
        }
        let long = VecView::all(9);
        for _ in 0..8 {
            assert!(b.pick(&PickInput::default(), &long, &Tried::new()).is_some_and(|i| i < 4));
        }
        assert_eq!(b.pick(&PickInput::default(), &VecView::all(0), &Tried::new()), None);
    }
}
