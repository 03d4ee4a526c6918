//! The runtime block list's rules: one entry per range (blocking a range again replaces its
//! entry, so a new `--for` extends or shortens it), entries that end on their own, and the
//! [`IpSet`]s the data path matches against. Times are Unix milliseconds (entries outlive the
//! process in the state file); compiling translates them onto the caller's monotonic clock.

use ipnet::IpNet;

use super::{FOREVER, IpSet, canonical_net};

/// Most entries the table holds: each is a range in every lookup's search, and the API that
/// fills it must not grow without bound.
pub const MAX_BLOCKS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub net: IpNet,
    /// When it was added (Unix ms).
    pub created_ms: u64,
    /// When it ends (Unix ms); `None`: until removed.
    pub until_ms: Option<u64>,
    /// Free text from the operator.
    pub reason: Option<String>,
    /// Open connections from the range are closed (it was added with `cut`). Not kept across
    /// a restart: no connection outlives the process.
    pub cut: bool,
}

impl Block {
    /// Whether the entry has ended at `now_ms` (Unix ms).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.until_ms.is_some_and(|u| u <= now_ms)
    }
}

/// Why an entry was not added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddError {
    /// [`MAX_BLOCKS`] entries already.
    Full,
}

/// Entries sorted by range, one per range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    entries: Vec<Block>,
}

impl BlockTable {
    /// A table of `blocks` (a later entry for the same range replaces an earlier one; beyond
    /// [`MAX_BLOCKS`] the rest is dropped).
    pub fn new(blocks: impl IntoIterator<Item = Block>) -> BlockTable {
        let mut t = BlockTable::default();
        for b in blocks {
            let _ = t.add(b);
        }
        t
    }

    pub fn entries(&self) -> &[Block] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds `block`, replacing the entry of the same range; returns the entry replaced.
    pub fn add(&mut self, mut block: Block) -> Result<Option<Block>, AddError> {
        block.net = canonical_net(block.net);
        match self.entries.binary_search_by(|b| b.net.cmp(&block.net)) {
            Ok(i) => Ok(self.entries.get_mut(i).map(|b| std::mem::replace(b, block))),
            Err(_) if self.entries.len() >= MAX_BLOCKS => Err(AddError::Full),
            Err(i) => {
                self.entries.insert(i, block);
                Ok(None)
            }
        }
    }

    /// Removes the entry of exactly `net` (not the entries inside or around it).
    pub fn remove(&mut self, net: &IpNet) -> Option<Block> {
        let net = canonical_net(*net);
        let i = self.entries.binary_search_by(|b| b.net.cmp(&net)).ok()?;
        Some(self.entries.remove(i))
    }

    /// Removes and returns the entries ended at `now_ms` (Unix ms).
    pub fn expire(&mut self, now_ms: u64) -> Vec<Block> {
        let (gone, kept) =
            std::mem::take(&mut self.entries).into_iter().partition(|b| b.expired(now_ms));
        self.entries = kept;
        gone
    }

    /// The earliest end among the entries (Unix ms).
    pub fn next_expiry(&self) -> Option<u64> {
        self.entries.iter().filter_map(|b| b.until_ms).min()
    }

    /// The sets the data path matches against, on its monotonic clock (`now_mono` is that
    /// clock's reading at the Unix time `now_unix`): every entry, and the entries added with
    /// `cut`. An entry ends on that clock when its Unix end comes; one already ended is left
    /// out.
    pub fn compile(&self, now_unix: u64, now_mono: u64) -> (IpSet, IpSet) {
        let live = || {
            self.entries.iter().filter(move |b| !b.expired(now_unix)).map(move |b| {
                let until = b.until_ms.map_or(FOREVER, |u| now_mono.saturating_add(u - now_unix));
                (b, until)
            })
        };
        let all = IpSet::with_until(live().map(|(b, u)| (b.net, u)));
        let cut = IpSet::with_until(live().filter(|(b, _)| b.cut).map(|(b, u)| (b.net, u)));
        (all, cut)
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_net;
    use super::*;

    fn block(net: &str, until_ms: Option<u64>, cut: bool) -> Block {
        Block { net: parse_net(net).unwrap(), created_ms: 1, until_ms, reason: None, cut }
    }

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_entry_per_range_and_removal_is_exact() {
        let mut t = BlockTable::default();
        assert_eq!(t.add(block("10.0.0.0/8", None, false)), Ok(None));
        let again = t.add(block("10.1.2.3/8", Some(5_000), false)).unwrap();
        assert_eq!(again.map(|b| b.until_ms), Some(None), "the same range replaces its entry");
        assert_eq!(t.len(), 1);
        t.add(block("10.0.0.7", None, false)).unwrap();
        assert!(t.remove(&parse_net("10.0.0.0/16").unwrap()).is_none(), "no such entry");
        assert!(t.remove(&parse_net("::ffff:10.0.0.7").unwrap()).is_some(), "mapped form");
        assert_eq!(
            t.entries().iter().map(|b| b.net.to_string()).collect::<Vec<_>>(),
            ["10.0.0.0/8"]
        );
    }

    #[test]
    fn entries_end_on_their_own_on_both_clocks() {
        // Unix time 1_000_000 is monotonic time 50.
        let t = BlockTable::new([
            block("10.0.0.1", Some(1_000_100), true),
            block("10.0.0.2", None, false),
            block("10.0.0.3", Some(999_999), true),
        ]);
        assert_eq!(t.next_expiry(), Some(999_999));
        let (all, cut) = t.compile(1_000_000, 50);
        assert!(all.contains(ip("10.0.0.1"), 149) && !all.contains(ip("10.0.0.1"), 150));
        assert!(all.contains(ip("10.0.0.2"), u64::MAX - 1));
        assert!(!all.contains(ip("10.0.0.3"), 50), "ended before the compile");
        assert!(cut.contains(ip("10.0.0.1"), 60) && !cut.contains(ip("10.0.0.2"), 60));
        let mut t = t;
        let gone = t.expire(1_000_100);
        assert_eq!(gone.len(), 2);
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = BlockTable::default();
        for i in 0..MAX_BLOCKS as u32 {
            let net = IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(i)));
            t.add(Block { net, created_ms: 0, until_ms: None, reason: None, cut: false }).unwrap();
        }
        assert_eq!(t.add(block("200.0.0.1", None, false)), Err(AddError::Full));
        // Replacing an entry needs no room.
        assert!(t.add(block("0.0.0.1", Some(9), false)).is_ok());
    }
}
