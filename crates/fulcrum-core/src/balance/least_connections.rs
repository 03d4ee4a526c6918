//! Weighted least connections: the allowed server with the smallest `active / weight`.
//!
//! The ratio is compared by cross-multiplication in u128, so there is no division and no
//! rounding that could make unequal loads tie. A pick reads every server's count (O(n)); that
//! is what the algorithm is, and it needs no state, so there is nothing to contend on. Ties
//! go to the first server met on a scan that starts at `rand % n`: always breaking them
//! towards index 0 would pile every quiet moment's connections onto the same server.
//!
//! With connections only arriving, the rule never lets a server get more than one connection
//! above its weighted share, and it hits the shares exactly whenever the total is a multiple
//! of the total weight. In between, a heavy server can sit more than one below its share
//! (from an idle pool, every light server's first connection comes before the heavy one's
//! second); minimising `(active + 1) / weight` instead would swap which side overshoots.

//!
//! The same rule serves `least-load` and `shortest-queue`: only the number compared changes
//! ([`Metric`]), read through [`LoadView::metric`].

use super::{
    LoadView, Metric, PickInput, ServerSpec, Tried, effective_weight, less_loaded, usable,
};

#[derive(Debug)]
pub struct LeastConnections {
    weights: Box<[u32]>,
    metric: Metric,
}

impl LeastConnections {
    pub fn new(servers: &[ServerSpec<'_>]) -> Self {
        Self::with_metric(servers, Metric::Active)
    }

    /// Least of `metric` per weight: `Metric::Load` is least-load, `Metric::Queue`
    /// shortest-queue.
    pub fn with_metric(servers: &[ServerSpec<'_>], metric: Metric) -> Self {
        Self { weights: servers.iter().map(|s| s.weight).collect(), metric }
    }

    pub fn pick(&self, input: &PickInput, view: &impl LoadView, tried: &Tried) -> Option<usize> {
        let n = view.len().min(self.weights.len());
        let weights = self.weights.get(..n).unwrap_or_default();
        if n == 0 {
            return None;
        }
        let start = (input.rand % n as u64) as usize;
        let (head, tail) = weights.split_at_checked(start).unwrap_or((weights, &[]));
        // Two plain slices rather than a chained iterator: this loop is the whole cost of a
        // pick on a large pool, and the chain keeps it from being a tight loop.
        let best = scan(view, tried, self.metric, start, tail, None);
        scan(view, tried, self.metric, 0, head, best).map(|(i, _, _)| i)
    }
}

/// Folds servers `first..first + weights.len()` into the running best `(index, active,
/// effective weight)`, keeping the earlier one on ties.
#[inline]
fn scan(
    view: &impl LoadView,
    tried: &Tried,
    metric: Metric,
    first: usize,
    weights: &[u32],
    mut best: Option<(usize, u64, u64)>,
) -> Option<(usize, u64, u64)> {
    for (i, &weight) in (first..).zip(weights) {
        if weight == 0 || !usable(view, tried, i) {
            continue;
        }
        let weight = effective_weight(weight, view.share(i));
        let active = match metric {
            Metric::Active => view.active(i),
            m => view.metric(i, m),
        };
        if best.is_none_or(|(_, ba, bw)| less_loaded(active, weight, ba, bw)) {
            best = Some((i, active, weight));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{VecView, keys, specs};
    use super::*;

    fn lc(weights: &[u32]) -> LeastConnections {
        LeastConnections::new(&specs(&keys(weights.len()), weights))
    }

    fn input(rand: u64) -> PickInput {
        PickInput { hash: 0, rand }
    }

    #[test]
    fn picks_the_least_loaded() {
        let b = lc(&[1, 1, 1]);
        let view = VecView::with_active(&[5, 2, 9]);
        for r in 0..10 {
            assert_eq!(b.pick(&input(r), &view, &Tried::new()), Some(1));
        }
    }

    #[test]
    fn load_is_relative_to_weight() {
        // 9/3 = 3 < 4/1 = 4.
        let b = lc(&[3, 1]);
        assert_eq!(b.pick(&input(1), &VecView::with_active(&[9, 4]), &Tried::new()), Some(0));
        // 12/3 = 4 > 3/1.
        assert_eq!(b.pick(&input(0), &VecView::with_active(&[12, 3]), &Tried::new()), Some(1));
    }

    #[test]
    fn ties_spread_by_rand() {
        let b = lc(&[1, 1, 1, 1]);
        let view = VecView::with_active(&[3, 3, 3, 3]);
        for r in 0..8 {
            assert_eq!(b.pick(&input(r), &view, &Tried::new()), Some(r as usize % 4));
        }
        // Only the tied minimum is eligible for the tie-break: server 2 is busier.
        let view = VecView::with_active(&[1, 1, 2, 1]);
        let got: Vec<_> = (0..4).map(|r| b.pick(&input(r), &view, &Tried::new())).collect();
        assert_eq!(got, [0, 1, 3, 3].map(Some));
        // Weighted ties (2/2 == 1/1) also spread.
        let b = lc(&[2, 1]);
        let view = VecView::with_active(&[2, 1]);
        assert_eq!(b.pick(&input(0), &view, &Tried::new()), Some(0));
        assert_eq!(b.pick(&input(1), &view, &Tried::new()), Some(1));
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let b = lc(&[u32::MAX, 1]);
        let view = VecView::with_active(&[u64::MAX, u64::MAX / 2]);
        // u64::MAX / u32::MAX is about 2^32, far below 2^63.
        assert_eq!(b.pick(&input(1), &view, &Tried::new()), Some(0));
    }

    #[test]
    fn weight_zero_ineligible_and_tried_are_skipped() {
        let b = lc(&[0, 1, 1, 1]);
        let mut view = VecView::with_active(&[0, 7, 8, 9]);
        view.eligible[1] = false;
        let mut tried = Tried::new();
        tried.insert(2);
        for r in 0..8 {
            assert_eq!(b.pick(&input(r), &view, &tried), Some(3));
        }
        tried.insert(3);
        assert_eq!(b.pick(&input(0), &view, &tried), None);
    }

    #[test]
    fn none_when_nothing_usable() {
        assert_eq!(lc(&[]).pick(&input(3), &VecView::all(0), &Tried::new()), None);
        assert_eq!(lc(&[0, 0]).pick(&input(3), &VecView::all(2), &Tried::new()), None);
        let view = VecView::with_eligible(&[false, false]);
        assert_eq!(lc(&[1, 1]).pick(&input(3), &view, &Tried::new()), None);
    }

    #[test]
    fn view_shorter_than_built_size() {
        let b = lc(&[1, 1, 1, 1]);
        let view = VecView::with_active(&[4, 3]);
        for r in 0..8 {
            assert_eq!(b.pick(&input(r), &view, &Tried::new()), Some(1));
        }
        assert_eq!(b.pick(&input(0), &VecView::all(0), &Tried::new()), None);
    }
}

#[cfg(test)]
mod metric_tests {
    use super::super::{Algorithm, Balancer, LoadView, Metric, PickInput, ServerSpec, Tried};

    /// Servers reporting 0/5/10 clients; assignments made since the report count too.
    struct Reported {
        clients: [u64; 3],
        queue: [u64; 3],
        assigned: [u64; 3],
    }

    impl LoadView for Reported {
        fn len(&self) -> usize {
            3
        }
        fn eligible(&self, _: usize) -> bool {
            true
        }
        fn active(&self, _: usize) -> u64 {
            0
        }
        fn metric(&self, i: usize, m: Metric) -> u64 {
            let base = match m {
                Metric::Load => self.clients[i],
                Metric::Queue => self.queue[i],
                Metric::Active => 0,
            };
            base + self.assigned[i]
        }
    }

    fn specs() -> Vec<ServerSpec<'static>> {
        ["a", "b", "c"].iter().map(|k| ServerSpec { key: k, weight: 1 }).collect()
    }

    #[test]
    fn thirty_arrivals_between_reports_even_out_0_5_10() {
        let b = Balancer::new(Algorithm::LeastLoad, &specs());
        let mut v = Reported { clients: [0, 5, 10], queue: [0; 3], assigned: [0; 3] };
        for r in 0..30u64 {
            let i = b.pick(&PickInput { hash: 0, rand: r * 7919 }, &v, &Tried::new()).unwrap();
            v.assigned[i] += 1;
        }
        let finals: Vec<u64> = (0..3).map(|i| v.clients[i] + v.assigned[i]).collect();
        let spread = finals.iter().max().unwrap() - finals.iter().min().unwrap();
        assert!(spread <= 2, "{finals:?}");
        assert_eq!(v.assigned.iter().sum::<u64>(), 30);
    }

    #[test]
    fn shortest_queue_follows_reported_queues() {
        let b = Balancer::new(Algorithm::ShortestQueue, &specs());
        let v = Reported { clients: [0, 0, 0], queue: [9, 1, 4], assigned: [0; 3] };
        assert_eq!(b.pick(&PickInput::default(), &v, &Tried::new()), Some(1));
        let v = Reported { clients: [0, 0, 0], queue: [9, 1, 4], assigned: [0, 5, 0] };
        assert_eq!(b.pick(&PickInput::default(), &v, &Tried::new()), Some(2));
    }
}
