//! The waiting line of a pool whose servers are all at their connection cap (`queue = { size,
//! timeout }`): a bounded FIFO of tickets, served strictly in arrival order. Pure: the data
//! plane keeps one behind a lock (touched only while servers are full or clients wait) and
//! does the waking and the clock.
//!
//! Only the head may take a freed slot; everybody else waits behind it. That is what makes
//! the order hold across worker threads: a client arriving while others wait joins the tail
//! instead of racing them for the slot that just freed.

use std::collections::VecDeque;

/// A place in the line, unique for the queue's lifetime (tickets only grow, so the line is
/// sorted by them and a ticket is found by binary search).
pub type Ticket = u64;

/// Why a client was not let into the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

#[derive(Debug)]
pub struct WaitQueue<T> {
    line: VecDeque<(Ticket, T)>,
    next: Ticket,
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        Self { line: VecDeque::new(), next: 0 }
    }
}

impl<T> WaitQueue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins the tail, unless `capacity` clients already wait.
    pub fn push(&mut self, item: T, capacity: usize) -> Result<Ticket, Full> {
        if self.line.len() >= capacity {
            return Err(Full);
        }
        let t = self.next;
        self.next += 1;
        self.line.push_back((t, item));
        Ok(t)
    }

    /// Whether `ticket` is first in line.
    pub fn is_head(&self, ticket: Ticket) -> bool {
        self.line.front().is_some_and(|(t, _)| *t == ticket)
    }

    /// The first waiter.
    pub fn head(&self) -> Option<&T> {
        self.line.front().map(|(_, item)| item)
    }

    /// Takes `ticket` out of the line wherever it stands (served, timed out or gone);
    /// `None` when it is not there.
    pub fn remove(&mut self, ticket: Ticket) -> Option<T> {
        let at = self.line.binary_search_by_key(&ticket, |(t, _)| *t).ok()?;
        self.line.remove(at).map(|(_, item)| item)
    }

    pub fn len(&self) -> usize {
        self.line.len()
    }

    pub fn is_empty(&self) -> bool {
        self.line.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_first_in_first_out() {
        let mut q = WaitQueue::new();
        let a = q.push('a', 3).unwrap();
        let b = q.push('b', 3).unwrap();
        let c = q.push('c', 3).unwrap();
        assert_eq!(q.push('d', 3), Err(Full), "the fourth finds the line full");
        assert!(q.is_head(a) && !q.is_head(b));
        assert_eq!(q.head(), Some(&'a'));
        // The head is served; the next in line becomes the head.
        assert_eq!(q.remove(a), Some('a'));
        assert!(q.is_head(b));
        // A waiter in the middle leaves (its timeout): the order of the others holds.
        let d = q.push('d', 3).unwrap();
        assert_eq!(q.remove(c), Some('c'));
        assert_eq!(q.remove(c), None, "gone already");
        assert!(q.is_head(b));
        assert_eq!(q.remove(b), Some('b'));
        assert!(q.is_head(d));
        assert_eq!(q.len(), 1);
        assert_eq!(q.remove(d), Some('d'));
        assert!(q.is_empty() && q.head().is_none());
    }

    #[test]
    fn tickets_are_never_reused() {
        let mut q = WaitQueue::new();
        let first = q.push((), 1).unwrap();
        q.remove(first);
        let second = q.push((), 1).unwrap();
        assert_ne!(first, second);
        assert!(!q.is_head(first) && q.is_head(second));
        assert_eq!(q.push((), 0), Err(Full), "a capacity of 0 lets nobody wait");
    }
}
