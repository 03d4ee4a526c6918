//! The scale-out / scale-in signal: fire when a pool's average load per healthy server stays
//! beyond a threshold for a whole window, at most once per cooldown. Pure: the caller samples
//! the load and the clock. Also which server a scale-in should stop ([`idlest`]).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Fire while load is above the threshold.
    Out,
    /// Fire while load is below the threshold.
    In,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Out => "scale_out",
            Direction::In => "scale_in",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Trigger {
    pub direction: Direction,
    pub threshold: f64,
    pub window_ms: u64,
    pub cooldown_ms: u64,
    beyond_since: Option<u64>,
    last_fired: Option<u64>,
}

impl Trigger {
    pub fn new(direction: Direction, threshold: f64, window_ms: u64, cooldown_ms: u64) -> Self {
        Self { direction, threshold, window_ms, cooldown_ms, beyond_since: None, last_fired: None }
    }

    /// Feeds one sample; true when the signal fires now. After firing, the load must stay
    /// beyond the threshold for another full window (and the cooldown pass) to fire again.
    pub fn observe(&mut self, load: f64, now_ms: u64) -> bool {
        let beyond = match self.direction {
            Direction::Out => load > self.threshold,
            Direction::In => load < self.threshold,
        };
        if !beyond {
            self.beyond_since = None;
            return false;
        }
        let since = *self.beyond_since.get_or_insert(now_ms);
        let cooled = self.last_fired.is_none_or(|t| now_ms.saturating_sub(t) >= self.cooldown_ms);
        if now_ms.saturating_sub(since) >= self.window_ms && cooled {
            self.last_fired = Some(now_ms);
            self.beyond_since = None;
            return true;
        }
        false
    }
}

/// The server a scale-in names to stop: the least loaded of those in rotation (`Some` load),
/// the one listed last on a tie (servers added at run time are listed after the config
/// file's). `None` while fewer than two are in rotation: the signal never drains a pool's
/// last server.
pub fn idlest(loads: &[Option<u64>]) -> Option<usize> {
    if loads.iter().flatten().count() < 2 {
        return None;
    }
    let mut best: Option<(usize, u64)> = None;
    for (i, load) in loads.iter().enumerate() {
        if let Some(l) = *load
            && best.is_none_or(|(_, b)| l <= b)
        {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idlest_is_the_least_loaded_in_rotation_and_never_the_last_one() {
        assert_eq!(idlest(&[Some(3), Some(1), Some(2)]), Some(1));
        assert_eq!(idlest(&[Some(0), Some(4), Some(0)]), Some(2), "the last listed on a tie");
        assert_eq!(idlest(&[None, Some(5), Some(9)]), Some(1));
        assert_eq!(idlest(&[Some(0), None, Some(7)]), Some(0), "out of rotation is no candidate");
        assert_eq!(idlest(&[None, Some(0), None]), None, "the last in rotation stays");
        assert_eq!(idlest(&[Some(0)]), None);
        assert_eq!(idlest(&[]), None);
    }

    #[test]
    fn fires_once_per_window_and_cooldown() {
        let mut t = Trigger::new(Direction::Out, 5.0, 1_000, 3_000);
        let fired: Vec<u64> =
            (0..=80).map(|i| i * 100).filter(|&now| t.observe(9.0, now)).collect();
        // First after the window, then only once per cooldown while it stays high.
        assert_eq!(fired, vec![1_000, 4_000, 7_000]);
    }

    #[test]
    fn a_dip_restarts_the_window() {
        let mut t = Trigger::new(Direction::Out, 5.0, 1_000, 0);
        assert!(!t.observe(9.0, 0));
        assert!(!t.observe(9.0, 900));
        assert!(!t.observe(4.0, 950));
        assert!(!t.observe(9.0, 1_000));
        assert!(!t.observe(9.0, 1_900));
        assert!(t.observe(9.0, 2_000));
    }

    #[test]
    fn scale_in_fires_on_low_load() {
        let mut t = Trigger::new(Direction::In, 1.0, 500, 10_000);
        assert!(!t.observe(0.5, 0));
        assert!(t.observe(0.0, 500));
        assert!(!t.observe(0.0, 1_500));
        assert!(!t.observe(3.0, 1_600));
    }
}
