//! [`IpSet`]: CIDR ranges compiled into sorted, disjoint address ranges, one table per address
//! family, looked up by binary search. Each range carries the time it stops matching, so the
//! runtime block list (entries that expire) and the config's lists (entries that never do)
//! share one structure. Overlapping entries are split where they overlap, each piece keeping
//! the latest end of the entries covering it, so a lookup is one search, never a scan.

use std::collections::BinaryHeap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::canonical_net;

/// "Never ends": the `until` of an entry without expiry.
pub const FOREVER: u64 = u64::MAX;

/// Addresses of both families, each range in force while the clock is before its `until`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

impl std::fmt::Debug for IpSet {
    // A deny file can hold thousands of ranges: a config's debug print shows how many.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IpSet({} IPv4 ranges, {} IPv6 ranges)", self.v4.0.len(), self.v6.0.len())
    }
}

impl IpSet {
    /// No address.
    pub const EMPTY: IpSet = IpSet { v4: Ranges(Vec::new()), v6: Ranges(Vec::new()) };

    /// The set of `nets`, none of which expires.
    pub fn new<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> IpSet {
        IpSet::with_until(nets.into_iter().map(|n| (*n, FOREVER)))
    }

    /// The set of `(net, until)` pairs: each net matches while the clock reads less than its
    /// `until` (on whatever clock the caller then asks [`IpSet::contains`] with).
    pub fn with_until(entries: impl IntoIterator<Item = (IpNet, u64)>) -> IpSet {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (net, until) in entries {
            match canonical_net(net) {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()), until)),
                IpNet::V6(n) => {
                    v6.push((u128::from(n.network()), u128::from(n.broadcast()), until))
                }
            }
        }
        IpSet { v4: Ranges::build(v4), v6: Ranges::build(v6) }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.0.is_empty() && self.v6.0.is_empty()
    }

    /// Disjoint ranges held (fewer than the entries given when they touch or overlap).
    pub fn ranges(&self) -> usize {
        self.v4.0.len() + self.v6.0.len()
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address) is in a range
    /// still in force at `now`.
    pub fn contains(&self, ip: IpAddr, now: u64) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => self.v4.find(u32::from(a), now),
            IpAddr::V6(a) => self.v6.find(u128::from(a), now),
        }
    }
}

/// An address as a number: what a range's ends are.
trait Key: Copy + Ord {
    const MAX: Self;
    fn succ(self) -> Option<Self>;
    fn pred(self) -> Self;
}

impl Key for u32 {
    const MAX: Self = u32::MAX;
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn pred(self) -> Self {
        self.saturating_sub(1)
    }
}

impl Key for u128 {
    const MAX: Self = u128::MAX;
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn pred(self) -> Self {
        self.saturating_sub(1)
    }
}

/// Disjoint `(first, last, until)` ranges sorted by `first`.
#[derive(Clone, Default, PartialEq, Eq)]
struct Ranges<T>(Vec<(T, T, u64)>);

impl<T: Key> Ranges<T> {
    /// Cuts `entries` (inclusive ranges, any order, overlapping or not) at every point where
    /// the entries covering an address change, gives each piece the latest `until` among
    /// them, and joins neighbours that end up alike. O(n log n).
    fn build(mut entries: Vec<(T, T, u64)>) -> Ranges<T> {
        entries.sort_unstable_by_key(|e| e.0);
        let mut cuts: Vec<T> = Vec::with_capacity(entries.len() * 2);
        for &(first, last, _) in &entries {
            cuts.push(first);
            if let Some(after) = last.succ() {
                cuts.push(after);
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        // Entries begun at or before the current cut, latest `until` on top; those that ended
        // before it are dropped when they surface.
        let mut open: BinaryHeap<(u64, T)> = BinaryHeap::new();
        let mut next = 0;
        let mut out: Vec<(T, T, u64)> = Vec::new();
        for (k, &at) in cuts.iter().enumerate() {
            while let Some(&(first, last, until)) = entries.get(next) {
                if first > at {
                    break;
                }
                open.push((until, last));
                next += 1;
            }
            while open.peek().is_some_and(|&(_, last)| last < at) {
                open.pop();
            }
            let Some(&(until, _)) = open.peek() else { continue };
            // Nothing changes before the next cut; after the last one, only an entry reaching
            // the family's last address can still be open.
            let last = cuts.get(k + 1).map_or(T::MAX, |c| c.pred());
            match out.last_mut() {
                Some(prev) if prev.2 == until && prev.1.succ() == Some(at) => prev.1 = last,
                _ => out.push((at, last, until)),
            }
        }
        Ranges(out)
    }

    fn find(&self, x: T, now: u64) -> bool {
        let i = self.0.partition_point(|r| r.0 <= x);
        match i.checked_sub(1).and_then(|i| self.0.get(i)) {
            Some(&(_, last, until)) => x <= last && now < until,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        super::super::parse_net(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn finds_addresses_in_ranges_of_both_families() {
        let s = IpSet::new(&[net("10.0.0.0/8"), net("192.168.1.7"), net("2001:db8::/32")]);
        for yes in ["10.0.0.0", "10.255.255.255", "192.168.1.7", "2001:db8::1", "::ffff:10.1.2.3"] {
            assert!(s.contains(ip(yes), 0), "{yes}");
        }
        for no in ["9.255.255.255", "11.0.0.0", "192.168.1.8", "2001:db9::", "::1", "::a00:1"] {
            assert!(!s.contains(ip(no), 0), "{no}");
        }
        assert!(!IpSet::default().contains(ip("10.0.0.1"), 0));
    }

    #[test]
    fn touching_and_overlapping_ranges_merge() {
        let s = IpSet::new(&[
            net("10.0.0.0/25"),
            net("10.0.0.128/25"),
            net("10.0.0.5"),
            net("0.0.0.0/0"),
            net("::/0"),
        ]);
        assert_eq!(s.ranges(), 2, "{:?}", s.v4.0);
        assert!(s.contains(ip("255.255.255.255"), 0));
        assert!(s.contains(ip("ffff::"), 0));
    }

    #[test]
    fn overlaps_keep_the_latest_end() {
        // A short block inside a long one, and one reaching past its end.
        let s = IpSet::with_until([
            (net("10.0.0.0/24"), 100),
            (net("10.0.0.16/28"), 50),
            (net("10.0.0.128/25"), 300),
            (net("10.0.1.0/24"), 300),
        ]);
        assert!(s.contains(ip("10.0.0.20"), 99));
        assert!(!s.contains(ip("10.0.0.20"), 100));
        assert!(s.contains(ip("10.0.0.200"), 299));
        assert!(s.contains(ip("10.0.1.200"), 299));
        assert!(!s.contains(ip("10.0.1.200"), 300));
        assert_eq!(s.ranges(), 2, "{:?}", s.v4.0);
    }
}
