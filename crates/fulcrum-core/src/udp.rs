//! UDP sessions, the decision half: which client address is tied to which server, how many
//! such ties may exist at once, and when an idle one ends. UDP has no connection, so a
//! *session* is what the proxy makes of one: the datagrams of one client address (IP and
//! port) go to the same server, and its answers come back, until nothing has moved either way
//! for the idle timeout.
//!
//! The table is generic over what the proxy keeps per session (its upstream socket, its task)
//! and takes the clock as an argument, so it is tested here without sockets. Idle expiry is
//! exact and cheap at 10,000 sessions: a min-heap holds one *checked-by* deadline per session,
//! never later than its true one (traffic only pushes the true deadline out, and touching a
//! session does not touch the heap). `expire` pops the deadlines that have passed, ends the
//! sessions that really are idle and puts the others back with their true deadline, so a
//! datagram costs one hash lookup and each session is looked at about once per timeout.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;

/// One client's session.
#[derive(Debug)]
pub struct Session<V> {
    /// Index of the session's server in the pool it was picked from.
    pub server: usize,
    /// When the session started (same clock as every `now_ms`).
    pub created_ms: u64,
    last_seen_ms: u64,
    /// Tells this session's heap entry from those of an earlier session of the same client.
    generation: u64,
    /// What the caller keeps per session.
    pub value: V,
}

impl<V> Session<V> {
    /// The last time the table saw traffic of this session (an insert or a touch).
    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms
    }
}

/// Why an insert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The table holds `max_sessions` sessions already.
    Full,
    /// The client has a session already (remove it first).
    Exists,
}

/// What the caller knows of a session beyond the table, asked at expiry time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Traffic the table did not see (answers from the server) last happened at this time.
    Seen(u64),
    /// The session is over whatever its traffic (its server refused it): end it now.
    Ended,
}

/// Sessions by client address, at most `max_sessions`, each ending `timeout_ms` after its
/// last traffic.
#[derive(Debug)]
pub struct SessionTable<V> {
    sessions: HashMap<SocketAddr, Session<V>>,
    /// (checked-by deadline, generation, client); min-heap through `Reverse`.
    deadlines: BinaryHeap<Reverse<(u64, u64, SocketAddr)>>,
    max_sessions: usize,
    timeout_ms: u64,
    next_generation: u64,
}

impl<V> SessionTable<V> {
    pub fn new(max_sessions: usize, timeout_ms: u64) -> Self {
        Self {
            sessions: HashMap::new(),
            deadlines: BinaryHeap::new(),
            max_sessions,
            timeout_ms,
            next_generation: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.sessions.len() >= self.max_sessions
    }

    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    pub fn get(&self, client: &SocketAddr) -> Option<&Session<V>> {
        self.sessions.get(client)
    }

    /// The session without counting this as traffic.
    pub fn get_mut(&mut self, client: &SocketAddr) -> Option<&mut Session<V>> {
        self.sessions.get_mut(client)
    }

    /// The client's session, its idle time restarted at `now_ms` (a datagram arrived).
    pub fn touch(&mut self, client: &SocketAddr, now_ms: u64) -> Option<&mut Session<V>> {
        let s = self.sessions.get_mut(client)?;
        // A caller's clock read before a later one may arrive second: never move backwards.
        s.last_seen_ms = s.last_seen_ms.max(now_ms);
        Some(s)
    }

    /// Starts a session for `client` on `server`. Refused, handing `value` back, when the
    /// table is full or the client has a session already.
    pub fn insert(
        &mut self,
        client: SocketAddr,
        server: usize,
        value: V,
        now_ms: u64,
    ) -> Result<&mut Session<V>, (Refused, V)> {
        if self.sessions.contains_key(&client) {
            return Err((Refused::Exists, value));
        }
        if self.is_full() {
            return Err((Refused::Full, value));
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        self.deadlines.push(Reverse((self.deadline(now_ms), generation, client)));
        let s = Session { server, created_ms: now_ms, last_seen_ms: now_ms, generation, value };
        Ok(self.sessions.entry(client).or_insert(s))
    }

    /// Ends the client's session at once.
    pub fn remove(&mut self, client: &SocketAddr) -> Option<Session<V>> {
        let s = self.sessions.remove(client)?;
        // The session's heap entry stays until its deadline passes. A client whose sessions
        // keep being removed and started again would grow the heap with such leftovers:
        // rebuild it when they outnumber the live entries.
        if self.deadlines.len() > 2 * self.sessions.len() + 64 {
            self.rebuild();
        }
        Some(s)
    }

    /// The earliest time at which [`SessionTable::expire`] may have something to do (it may
    /// also find that traffic moved that session's deadline on); `None` without sessions.
    pub fn next_check_ms(&self) -> Option<u64> {
        if self.sessions.is_empty() {
            return None;
        }
        self.deadlines.peek().map(|Reverse((d, _, _))| *d)
    }

    /// Ends and returns every session idle for at least the timeout at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(SocketAddr, Session<V>)> {
        self.expire_with(now_ms, |_| Activity::Seen(0))
    }

    /// Like [`SessionTable::expire`], with the caller's knowledge of each session that is
    /// due: traffic the table did not see (which keeps the session alive), or that it ended.
    pub fn expire_with(
        &mut self,
        now_ms: u64,
        mut activity: impl FnMut(&V) -> Activity,
    ) -> Vec<(SocketAddr, Session<V>)> {
        let mut out = Vec::new();
        while let Some(&Reverse((due, generation, client))) = self.deadlines.peek() {
            if due > now_ms {
                break;
            }
            self.deadlines.pop();
            let Some(s) = self.sessions.get_mut(&client) else { continue };
            if s.generation != generation {
                continue; // left over from an earlier session of this client
            }
            let ended = match activity(&s.value) {
                Activity::Ended => true,
                Activity::Seen(t) => {
                    s.last_seen_ms = s.last_seen_ms.max(t);
                    false
                }
            };
            let deadline = s.last_seen_ms.saturating_add(self.timeout_ms);
            if ended || deadline <= now_ms {
                if let Some(s) = self.sessions.remove(&client) {
                    out.push((client, s));
                }
            } else {
                self.deadlines.push(Reverse((deadline, generation, client)));
            }
        }
        if self.sessions.is_empty() {
            self.deadlines.clear(); // only leftovers remain
        }
        out
    }

    /// Ends and returns the sessions of the clients `pred` picks (their address was blocked).
    pub fn remove_where(
        &mut self,
        mut pred: impl FnMut(&SocketAddr) -> bool,
    ) -> Vec<(SocketAddr, Session<V>)> {
        let picked: Vec<SocketAddr> = self.sessions.keys().filter(|c| pred(c)).copied().collect();
        picked.into_iter().filter_map(|c| Some((c, self.remove(&c)?))).collect()
    }

    /// Removes and returns every session (the proxy stops).
    pub fn drain(&mut self) -> Vec<(SocketAddr, Session<V>)> {
        self.deadlines.clear();
        self.sessions.drain().collect()
    }

    fn deadline(&self, last_seen_ms: u64) -> u64 {
        last_seen_ms.saturating_add(self.timeout_ms)
    }

    fn rebuild(&mut self) {
        let timeout = self.timeout_ms;
        self.deadlines = self
            .sessions
            .iter()
            .map(|(c, s)| Reverse((s.last_seen_ms.saturating_add(timeout), s.generation, *c)))
            .collect();
    }

    /// Heap entries, live and left over (for tests of the bound).
    #[doc(hidden)]
    pub fn heap_len(&self) -> usize {
        self.deadlines.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn remove_where_ends_only_the_picked_sessions() {
        let mut t = SessionTable::new(10, 1_000);
        for port in 1..=4 {
            t.insert(client(port), 0, port, 0).unwrap();
        }
        let mut gone: Vec<u16> =
            t.remove_where(|c| c.port() % 2 == 0).into_iter().map(|(c, _)| c.port()).collect();
        gone.sort_unstable();
        assert_eq!(gone, [2, 4]);
        assert_eq!(t.len(), 2);
        assert!(t.get(&client(1)).is_some() && t.get(&client(2)).is_none());
        // Their deadlines are leftovers: expiry later ends only the live sessions.
        let expired: Vec<u16> = t.expire(1_000).into_iter().map(|(c, _)| c.port()).collect();
        assert_eq!(expired.len(), 2, "{expired:?}");
    }

    #[test]
    fn refuses_when_full_and_duplicates() {
        let mut t = SessionTable::new(2, 100);
        assert!(t.insert(client(1), 0, "a", 0).is_ok());
        assert!(t.insert(client(2), 1, "b", 0).is_ok());
        assert_eq!(t.insert(client(3), 2, "c", 0).unwrap_err(), (Refused::Full, "c"));
        assert_eq!(t.insert(client(1), 2, "d", 0).unwrap_err(), (Refused::Exists, "d"));
        assert_eq!(t.len(), 2);
        assert!(t.is_full());
        // Existing sessions keep working.
        assert_eq!(t.touch(&client(1), 10).map(|s| s.server), Some(0));
        t.remove(&client(2)).unwrap();
        assert!(t.insert(client(3), 2, "c", 20).is_ok());
    }

    #[test]
    fn expires_exactly_at_the_timeout_after_the_last_traffic() {
        let mut t = SessionTable::new(10, 100);
        t.insert(client(1), 0, (), 0).unwrap();
        t.insert(client(2), 0, (), 0).unwrap();
        t.touch(&client(2), 60);
        assert_eq!(t.next_check_ms(), Some(100));
        assert!(t.expire(99).is_empty());
        let gone: Vec<_> = t.expire(100).into_iter().map(|(c, _)| c).collect();
        assert_eq!(gone, vec![client(1)]);
        // Client 2's deadline moved on to 160 when it was checked.
        assert_eq!(t.next_check_ms(), Some(160));
        assert!(t.expire(159).is_empty());
        assert_eq!(t.expire(160).len(), 1);
        assert!(t.is_empty());
        assert_eq!(t.next_check_ms(), None);
    }

    #[test]
    fn traffic_outside_the_table_keeps_a_session_and_ended_ends_it() {
        let mut t = SessionTable::new(10, 100);
        t.insert(client(1), 0, 150u64, 0).unwrap(); // value: last answer at 150
        t.insert(client(2), 0, 0u64, 0).unwrap();
        assert!(t.expire_with(200, |&v| Activity::Seen(v)).iter().any(|(c, _)| *c == client(2)));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(&client(1)).unwrap().last_seen_ms(), 150);
        assert_eq!(t.expire_with(250, |&v| Activity::Seen(v)).len(), 1);
        t.insert(client(3), 0, 0u64, 300).unwrap();
        assert!(t.expire_with(399, |_| Activity::Ended).is_empty(), "not due yet");
        assert_eq!(t.expire_with(400, |_| Activity::Ended).len(), 1);
    }

    #[test]
    fn a_new_session_of_the_same_client_is_not_ended_by_the_old_deadline() {
        let mut t = SessionTable::new(10, 100);
        t.insert(client(1), 0, (), 0).unwrap();
        t.remove(&client(1)).unwrap();
        t.insert(client(1), 1, (), 50).unwrap();
        assert!(t.expire(100).is_empty());
        assert_eq!(t.expire(150).len(), 1);
    }

    #[test]
    fn leftover_heap_entries_stay_bounded() {
        let mut t = SessionTable::new(10, 1_000_000);
        for i in 0..10_000u64 {
            t.insert(client(1), 0, (), i).unwrap();
            t.remove(&client(1)).unwrap();
        }
        assert!(t.heap_len() <= 2 * t.len() + 65, "{}", t.heap_len());
    }

    #[test]
    fn ten_thousand_sessions_expire_in_one_sweep() {
        let mut t = SessionTable::new(10_000, 30_000);
        for i in 0..10_000u16 {
            t.insert(client(i), usize::from(i % 3), (), u64::from(i)).unwrap();
        }
        assert_eq!(t.insert(client(60_000), 0, (), 0).unwrap_err().0, Refused::Full);
        assert_eq!(t.expire(30_000 + 4_999).len(), 5_000);
        assert_eq!(t.len(), 5_000);
        assert_eq!(t.drain().len(), 5_000);
        assert_eq!(t.next_check_ms(), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8),
        Touch(u8),
        Answer(u8),
        Remove(u8),
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..24).prop_map(Op::Insert),
            (0u8..24).prop_map(Op::Touch),
            (0u8..24).prop_map(Op::Answer),
            (0u8..24).prop_map(Op::Remove),
            (0u16..200).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against a plain model: never more than `max`, expiry ends exactly the sessions
        /// idle (both ways) for at least the timeout, and no other.
        #[test]
        fn matches_the_model(
            max in 1usize..12,
            timeout in 1u64..300,
            ops in proptest::collection::vec(op(), 1..400),
        ) {
            let mut t: SessionTable<u64> = SessionTable::new(max, timeout);
            // client -> (last datagram, last answer)
            let mut model: HashMap<SocketAddr, (u64, u64)> = HashMap::new();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Insert(c) => {
                        let c = client(u16::from(c));
                        let r = t.insert(c, 0, 0, now).map(|_| ());
                        if model.contains_key(&c) {
                            prop_assert_eq!(r, Err((Refused::Exists, 0)));
                        } else if model.len() >= max {
                            prop_assert_eq!(r, Err((Refused::Full, 0)));
                        } else {
                            prop_assert!(r.is_ok());
                            model.insert(c, (now, 0));
                        }
                    }
                    Op::Touch(c) => {
                        let c = client(u16::from(c));
                        prop_assert_eq!(t.touch(&c, now).is_some(), model.contains_key(&c));
                        if let Some(m) = model.get_mut(&c) { m.0 = now; }
                    }
                    Op::Answer(c) => {
                        let c = client(u16::from(c));
                        if let Some(s) = t.get_mut(&c) { s.value = now; }
                        if let Some(m) = model.get_mut(&c) { m.1 = now; }
                    }
                    Op::Remove(c) => {
                        let c = client(u16::from(c));
                        prop_assert_eq!(t.remove(&c).is_some(), model.remove(&c).is_some());
                    }
                    Op::Advance(d) => {
                        now += u64::from(d);
                        let mut got: Vec<SocketAddr> =
                            t.expire_with(now, |&v| Activity::Seen(v)).into_iter().map(|(c, _)| c).collect();
                        got.sort();
                        let mut want: Vec<SocketAddr> = model
                            .iter()
                            .filter(|(_, (d, a))| (*d).max(*a) + timeout <= now)
                            .map(|(c, _)| *c)
                            .collect();
                        want.sort();
                        prop_assert_eq!(&got, &want);
                        model.retain(|c, _| !want.contains(c));
                        if let Some(next) = t.next_check_ms() {
                            prop_assert!(next > now);
                        }
                    }
                }
                prop_assert!(t.len() <= max);
                prop_assert_eq!(t.len(), model.len());
            }
        }
    }
}
