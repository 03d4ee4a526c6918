//! Test doubles for the unit tests of the balancing algorithms: a [`LoadView`] over plain
//! vectors, so that each test states the pool it exercises in one line.

use super::{LoadView, ServerSpec};

/// A pool state held in vectors. `eligible` and `active` may differ in length from the
/// number of specs a balancer was built with, which is how the size-mismatch tests work.
#[derive(Debug, Clone, Default)]
pub(crate) struct VecView {
    pub(crate) eligible: Vec<bool>,
    pub(crate) active: Vec<u64>,
}

impl VecView {
    /// `n` eligible servers, none busy.
    pub(crate) fn all(n: usize) -> Self {
        Self { eligible: vec![true; n], active: vec![0; n] }
    }

    /// Eligibility as given, none busy.
    pub(crate) fn with_eligible(eligible: &[bool]) -> Self {
        Self { eligible: eligible.to_vec(), active: vec![0; eligible.len()] }
    }

    /// All eligible, with the given active counts.
    pub(crate) fn with_active(active: &[u64]) -> Self {
        Self { eligible: vec![true; active.len()], active: active.to_vec() }
    }
}

impl LoadView for VecView {
    fn len(&self) -> usize {
        self.eligible.len()
    }
    fn eligible(&self, i: usize) -> bool {
        self.eligible.get(i).copied().unwrap_or(false)
    }
    fn active(&self, i: usize) -> u64 {
        self.active.get(i).copied().unwrap_or(0)
    }
}

/// Stable server keys `10.0.0.i:80`; returned owned so that specs can borrow them.
pub(crate) fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.0.{}.{}:80", i / 256, i % 256)).collect()
}

/// Specs pairing `keys` with `weights` (the shorter of the two decides the length).
pub(crate) fn specs<'a>(keys: &'a [String], weights: &[u32]) -> Vec<ServerSpec<'a>> {
    keys.iter().zip(weights).map(|(k, &w)| ServerSpec { key: k, weight: w }).collect()
}

/// Counts of picks per server over `picks`, ignoring `None`.
pub(crate) fn histogram(n: usize, picks: impl IntoIterator<Item = Option<usize>>) -> Vec<usize> {
    let mut counts = vec![0; n];
    for i in picks.into_iter().flatten() {
        if let Some(c) = counts.get_mut(i) {
            *c += 1;
        }
    }
    counts
}
