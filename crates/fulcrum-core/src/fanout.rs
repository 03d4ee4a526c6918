//! Fan-out and hedged requests, the pure part: when to ask which number of servers, which
//! answer wins, when the request has timed out ([`Race`]), whether an answer is acceptable
//! ([`acceptable`]), the buffer that puts pipelined TCP answers back into request order
//! ([`Reorder`]), and how a server's answer lines on TCP are matched to requests: one line per
//! request on a connection carrying one request at a time ([`one_answer`]), or by first word
//! on a pipelined connection ([`WordTable`]). Time is passed in as a duration (since the
//! request arrived, or since any fixed origin), so every rule here is tested without sockets
//! or clocks; the proxy crate only sends, receives and sleeps.
//!
//! The rules a [`Race`] keeps:
//! * the first acceptable answer that arrives before the timeout wins; every later answer,
//!   acceptable or not, is discarded;
//! * when no acceptable answer arrived before the timeout the request times out exactly at
//!   the timeout, even when every server already answered with a rejection: the client sees
//!   the same timing whether the servers said "no" or said nothing;
//! * hedging asks one more server when the last one asked has not answered within `delay`,
//!   or at once when every server asked so far has failed or been rejected (waiting for the
//!   delay would only make the client wait for an answer that cannot come), up to `max`
//!   servers in all.

use std::collections::VecDeque;
use std::time::Duration;

/// Whether `answer` may win: it does not start with `reject_prefix`. An empty prefix rejects
/// nothing (every answer starts with it, so taking it literally would reject everything).
pub fn acceptable(answer: &[u8], reject_prefix: Option<&[u8]>) -> bool {
    match reject_prefix {
        Some(p) if !p.is_empty() => !answer.starts_with(p),
        _ => true,
    }
}

/// Hedging: ask one server, and another each `delay` without an acceptable answer, up to
/// `max` servers in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hedge {
    pub delay: Duration,
    pub max: usize,
}

/// What the caller does next with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send the request now: to the whole chosen set on the first `Ask` of a fan-out, to one
    /// more server when hedging. Report how many were sent to with [`Race::sent`] (0 when no
    /// server is left), then ask [`Race::next`] again.
    Ask,
    /// Nothing to do before this time (since the request arrived) unless an answer comes.
    Wait(Duration),
    /// Relay the answer just reported; the request is over.
    Relay,
    /// No acceptable answer in time: send the timeout answer; the request is over.
    TimedOut,
    /// The request was already over; discard whatever was reported.
    Over,
}

/// One request racing its servers' answers against the timeout.
#[derive(Debug, Clone)]
pub struct Race {
    timeout: Duration,
    hedge: Option<Hedge>,
    /// Servers asked so far.
    asked: usize,
    /// Servers asked that have neither answered nor failed.
    open: usize,
    /// When the last server was asked.
    last_ask: Duration,
    started: bool,
    /// No further server may be asked (fan-out after its first send, or none left).
    exhausted: bool,
    done: bool,
}

impl Race {
    /// A fan-out: the first [`Step::Ask`] sends to every chosen server, and nobody is asked
    /// later.
    pub fn fanout(timeout: Duration) -> Race {
        Race::new(timeout, None)
    }

    /// A hedged request: one server at a time, another after each `delay`, `max` in all.
    pub fn hedged(timeout: Duration, delay: Duration, max: usize) -> Race {
        Race::new(timeout, Some(Hedge { delay, max: max.max(1) }))
    }

    fn new(timeout: Duration, hedge: Option<Hedge>) -> Race {
        Race {
            timeout,
            hedge,
            asked: 0,
            open: 0,
            last_ask: Duration::ZERO,
            started: false,
            exhausted: false,
            done: false,
        }
    }

    /// What to do at `at` (since the request arrived).
    pub fn next(&mut self, at: Duration) -> Step {
        if self.done {
            return Step::Over;
        }
        if at >= self.timeout {
            self.done = true;
            return Step::TimedOut;
        }
        if !self.started {
            return Step::Ask;
        }
        if let Some(h) = self.hedge
            && !self.exhausted
            && self.asked < h.max
        {
            let due = self.last_ask.saturating_add(h.delay);
            if at >= due || self.open == 0 {
                return Step::Ask;
            }
            return Step::Wait(due.min(self.timeout));
        }
        Step::Wait(self.timeout)
    }

    /// The request was sent to `n` servers at `at` (after a [`Step::Ask`]).
    pub fn sent(&mut self, n: usize, at: Duration) {
        self.started = true;
        self.asked += n;
        self.open += n;
        self.last_ask = at;
        if n == 0 || self.hedge.is_none() {
            self.exhausted = true;
        }
    }

    /// An answer from one of the servers asked arrived at `at`.
    pub fn on_answer(&mut self, acceptable: bool, at: Duration) -> Step {
        if self.done {
            return Step::Over;
        }
        self.open = self.open.saturating_sub(1);
        if at >= self.timeout {
            self.done = true;
            return Step::TimedOut;
        }
        if acceptable {
            self.done = true;
            return Step::Relay;
        }
        self.next(at)
    }

    /// One of the servers asked failed (refused, reset, closed) at `at`: no answer will come
    /// from it.
    pub fn on_failure(&mut self, at: Duration) -> Step {
        if self.done {
            return Step::Over;
        }
        self.open = self.open.saturating_sub(1);
        self.next(at)
    }

    /// Servers asked so far.
    pub fn asked(&self) -> usize {
        self.asked
    }

    pub fn is_over(&self) -> bool {
        self.done
    }
}

/// Puts answers that complete in any order back into request order. Each request takes a
/// sequence number with [`Reorder::issue`]; [`Reorder::pop`] releases an answer only when
/// every earlier request's answer has been released.
#[derive(Debug, Clone)]
pub struct Reorder<T> {
    /// Sequence number of `slots[0]`.
    base: u64,
    /// One slot per issued, unreleased request: `Some` once its answer is known.
    slots: VecDeque<Option<T>>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder { base: 0, slots: VecDeque::new() }
    }
}

impl<T> Reorder<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The sequence number of a new request.
    pub fn issue(&mut self) -> u64 {
        let seq = self.base + self.slots.len() as u64;
        self.slots.push_back(None);
        seq
    }

    /// Requests issued and not yet released (answered or not): the pipeline depth.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Records the answer of `seq`; false (and nothing recorded) when `seq` was not issued,
    /// was released already or has its answer already.
    pub fn complete(&mut self, seq: u64, value: T) -> bool {
        let Some(i) = seq.checked_sub(self.base) else { return false };
        let Ok(i) = usize::try_from(i) else { return false };
        match self.slots.get_mut(i) {
            Some(slot @ None) => {
                *slot = Some(value);
                true
            }
            _ => false,
        }
    }

    /// The next answer in request order, if it is known.
    pub fn pop(&mut self) -> Option<T> {
        if !matches!(self.slots.front(), Some(Some(_))) {
            return None;
        }
        self.base += 1;
        self.slots.pop_front().flatten()
    }
}

/// The first word of a line: its bytes up to the first space (or its end), without a
/// trailing `\r\n`/`\n`. Lookup servers echo the name they answer for, so with
/// `match = "first-word"` an answer belongs to the outstanding request with the same first
/// word.
pub fn first_word(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.iter().position(|&b| b == b' ') {
        Some(i) => line.get(..i).unwrap_or_default(),
        None => line,
    }
}

/// The requests outstanding on one pipelined server connection (`match = "first-word"`),
/// oldest first, each with its deadline (any clock, as a duration since a fixed origin) and
/// a value the caller keeps with it. An answer goes to the oldest entry whose first word is
/// the answer's first word; an answer matching none is for nobody (answered twice, too
/// late, or garbage) and the caller discards it.
#[derive(Debug)]
pub struct WordTable<T> {
    entries: VecDeque<WordEntry<T>>,
}

#[derive(Debug)]
struct WordEntry<T> {
    seq: u64,
    word: Box<[u8]>,
    deadline: Duration,
    value: T,
}

impl<T> Default for WordTable<T> {
    fn default() -> Self {
        WordTable { entries: VecDeque::new() }
    }
}

impl<T> WordTable<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Request `seq` (its line `request`) was sent and waits until `deadline`.
    pub fn push(&mut self, seq: u64, request: &[u8], deadline: Duration, value: T) {
        let word = first_word(request).into();
        self.entries.push_back(WordEntry { seq, word, deadline, value });
    }

    /// The request `answer` belongs to, taken out of the table; `None`: it belongs to none.
    pub fn take(&mut self, answer: &[u8]) -> Option<(u64, T)> {
        let word = first_word(answer);
        let i = self.entries.iter().position(|e| *e.word == *word)?;
        self.entries.remove(i).map(|e| (e.seq, e.value))
    }

    /// Removes and returns the entries whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Duration) -> Vec<(u64, T)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            if self.entries.get(i).is_some_and(|e| e.deadline <= now) {
                if let Some(e) = self.entries.remove(i) {
                    out.push((e.seq, e.value));
                }
            } else {
                i += 1;
            }
        }
        out
    }

    /// The earliest deadline in the table.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.entries.iter().map(|e| e.deadline).min()
    }

    /// Removes every entry (the connection failed), oldest first.
    pub fn drain(&mut self) -> Vec<(u64, T)> {
        self.entries.drain(..).map(|e| (e.seq, e.value)).collect()
    }
}

/// What has arrived on a connection that carries one request at a time (the default
/// matching): the server owes exactly one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneAnswer<'a> {
    /// No complete line yet (and not too long).
    Incomplete,
    /// The answer line, without its newline (and without a `\r` before it). `more`: bytes
    /// followed it, which the server does not owe: the connection must not carry another
    /// request (those bytes, or later ones, could be read as that request's answer).
    Line { line: &'a [u8], more: bool },
    /// Over `max` bytes without a newline.
    TooLong,
}

/// Reads the single answer line owed on a one-request connection out of `buf`.
pub fn one_answer(buf: &[u8], max: usize) -> OneAnswer<'_> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i <= max => {
            let line = buf.get(..i).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            OneAnswer::Line { line, more: buf.len() > i + 1 }
        }
        Some(_) => OneAnswer::TooLong,
        None if buf.len() > max => OneAnswer::TooLong,
        None => OneAnswer::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn acceptable_checks_the_prefix_only() {
        assert!(acceptable(b"ANSWER a=1", Some(b"ERR")));
        assert!(!acceptable(b"ERR unknown", Some(b"ERR")));
        assert!(acceptable(b"ER", Some(b"ERR")));
        assert!(acceptable(b"", Some(b"ERR")));
        assert!(acceptable(b"ERR", None));
        assert!(acceptable(b"anything", Some(b"")));
    }

    /// What a simulated server does, counted from when it was asked.
    #[derive(Debug, Clone, Copy)]
    enum Reply {
        Answer { after: Duration, ok: bool },
        Fail { after: Duration },
        Silent,
    }

    /// How a simulated request ended: the step, when, which server's answer won, and when
    /// each server was asked (servers are asked in slice order).
    struct Sim {
        end: Step,
        at: Duration,
        winner: Option<usize>,
        asked_at: Vec<Duration>,
    }

    fn simulate(mut race: Race, servers: &[Reply], fanout: bool) -> Sim {
        let mut asked_at: Vec<Duration> = Vec::new();
        let mut seen = vec![false; servers.len()];
        let mut now = Duration::ZERO;
        let mut step = race.next(now);
        for _ in 0..10_000 {
            match step {
                Step::Ask => {
                    let n = if fanout {
                        servers.len()
                    } else {
                        usize::from(asked_at.len() < servers.len())
                    };
                    for _ in 0..n {
                        asked_at.push(now);
                    }
                    race.sent(n, now);
                    step = race.next(now);
                }
                Step::Wait(until) => {
                    assert!(until > now, "a wait must move time forward");
                    // The earliest event among asked servers not yet seen, before `until`.
                    let mut best: Option<(Duration, usize)> = None;
                    for (i, t0) in asked_at.iter().enumerate() {
                        if seen[i] {
                            continue;
                        }
                        let t = match servers[i] {
                            Reply::Answer { after, .. } | Reply::Fail { after } => *t0 + after,
                            Reply::Silent => continue,
                        };
                        if t <= until && best.is_none_or(|(b, _)| t < b) {
                            best = Some((t, i));
                        }
                    }
                    match best {
                        Some((t, i)) => {
                            seen[i] = true;
                            now = t.max(now);
                            step = match servers[i] {
                                Reply::Answer { ok, .. } => {
                                    let s = race.on_answer(ok, now);
                                    if s == Step::Relay {
                                        return Sim { end: s, at: now, winner: Some(i), asked_at };
                                    }
                                    s
                                }
                                _ => race.on_failure(now),
                            };
                        }
                        None => {
                            now = until;
                            step = race.next(now);
                        }
                    }
                }
                Step::Relay | Step::TimedOut | Step::Over => {
                    return Sim { end: step, at: now, winner: None, asked_at };
                }
            }
        }
        panic!("the race never ended");
    }

    #[test]
    fn fanout_relays_the_first_acceptable_answer() {
        let servers = [
            Reply::Answer { after: ms(5), ok: false },
            Reply::Answer { after: ms(30), ok: true },
            Reply::Answer { after: ms(10), ok: true },
        ];
        let s = simulate(Race::fanout(ms(300)), &servers, true);
        assert_eq!((s.end, s.at, s.winner), (Step::Relay, ms(10), Some(2)));
        assert_eq!(s.asked_at, vec![ms(0); 3]);
    }

    #[test]
    fn fanout_all_rejected_times_out_at_the_timeout_not_before() {
        let servers = [
            Reply::Answer { after: ms(1), ok: false },
            Reply::Fail { after: ms(2) },
            Reply::Silent,
        ];
        let s = simulate(Race::fanout(ms(300)), &servers, true);
        assert_eq!((s.end, s.at), (Step::TimedOut, ms(300)));
    }

    #[test]
    fn fanout_with_no_server_times_out_at_the_timeout() {
        let s = simulate(Race::fanout(ms(300)), &[], true);
        assert_eq!((s.end, s.at), (Step::TimedOut, ms(300)));
    }

    #[test]
    fn an_answer_at_or_after_the_timeout_is_a_timeout() {
        let mut r = Race::fanout(ms(100));
        assert_eq!(r.next(ms(0)), Step::Ask);
        r.sent(2, ms(0));
        assert_eq!(r.on_answer(true, ms(100)), Step::TimedOut);
        assert_eq!(r.on_answer(true, ms(101)), Step::Over);
        assert!(r.is_over());
    }

    #[test]
    fn later_answers_are_discarded() {
        let mut r = Race::fanout(ms(100));
        r.next(ms(0));
        r.sent(3, ms(0));
        assert_eq!(r.on_answer(true, ms(5)), Step::Relay);
        assert_eq!(r.on_answer(true, ms(6)), Step::Over);
        assert_eq!(r.on_failure(ms(7)), Step::Over);
        assert_eq!(r.next(ms(200)), Step::Over);
    }

    #[test]
    fn hedge_fast_first_server_answers_alone() {
        let servers =
            [Reply::Answer { after: ms(3), ok: true }, Reply::Answer { after: ms(1), ok: true }];
        let s = simulate(Race::hedged(ms(1000), ms(100), 2), &servers, false);
        assert_eq!((s.end, s.at, s.winner), (Step::Relay, ms(3), Some(0)));
        assert_eq!(s.asked_at, vec![ms(0)]);
    }

    #[test]
    fn hedge_slow_first_server_asks_a_second_after_the_delay() {
        let servers =
            [Reply::Answer { after: ms(500), ok: true }, Reply::Answer { after: ms(2), ok: true }];
        let s = simulate(Race::hedged(ms(1000), ms(100), 2), &servers, false);
        assert_eq!((s.end, s.at, s.winner), (Step::Relay, ms(102), Some(1)));
        assert_eq!(s.asked_at, vec![ms(0), ms(100)]);
    }

    #[test]
    fn hedge_slow_first_can_still_win() {
        let servers =
            [Reply::Answer { after: ms(150), ok: true }, Reply::Answer { after: ms(90), ok: true }];
        let s = simulate(Race::hedged(ms(1000), ms(100), 2), &servers, false);
        assert_eq!((s.end, s.at, s.winner), (Step::Relay, ms(150), Some(0)));
    }

    #[test]
    fn hedge_asks_at_once_after_a_rejection_or_failure() {
        let servers =
            [Reply::Answer { after: ms(10), ok: false }, Reply::Answer { after: ms(5), ok: true }];
        let s = simulate(Race::hedged(ms(1000), ms(100), 2), &servers, false);
        assert_eq!((s.end, s.at, s.winner), (Step::Relay, ms(15), Some(1)));
        assert_eq!(s.asked_at, vec![ms(0), ms(10)]);
        let servers = [Reply::Fail { after: ms(1) }, Reply::Answer { after: ms(5), ok: true }];
        let s = simulate(Race::hedged(ms(1000), ms(100), 2), &servers, false);
        assert_eq!((s.end, s.at, s.winner), (Step::Relay, ms(6), Some(1)));
    }

    #[test]
    fn hedge_stops_at_max_and_the_timeout_still_bounds_it() {
        let servers = [Reply::Silent, Reply::Silent, Reply::Silent];
        let s = simulate(Race::hedged(ms(250), ms(100), 2), &servers, false);
        assert_eq!((s.end, s.at), (Step::TimedOut, ms(250)));
        assert_eq!(s.asked_at, vec![ms(0), ms(100)]);
        // A delay beyond the timeout never hedges.
        let s = simulate(Race::hedged(ms(250), ms(400), 2), &servers, false);
        assert_eq!((s.end, s.at), (Step::TimedOut, ms(250)));
        assert_eq!(s.asked_at, vec![ms(0)]);
    }

    #[test]
    fn hedge_with_no_other_server_waits_for_the_first() {
        let servers = [Reply::Answer { after: ms(200), ok: true }];
        let s = simulate(Race::hedged(ms(1000), ms(100), 2), &servers, false);
        assert_eq!((s.end, s.at, s.winner), (Step::Relay, ms(200), Some(0)));
    }

    #[test]
    fn reorder_releases_in_order() {
        let mut r = Reorder::new();
        let (a, b, c) = (r.issue(), r.issue(), r.issue());
        assert_eq!(r.in_flight(), 3);
        assert!(r.complete(c, "c"));
        assert_eq!(r.pop(), None);
        assert!(r.complete(a, "a"));
        assert!(!r.complete(a, "again"));
        assert_eq!(r.pop(), Some("a"));
        assert_eq!(r.pop(), None);
        assert!(r.complete(b, "b"));
        assert_eq!((r.pop(), r.pop(), r.pop()), (Some("b"), Some("c"), None));
        assert_eq!(r.in_flight(), 0);
        assert!(!r.complete(a, "released"));
        assert!(!r.complete(99, "never issued"));
    }

    #[test]
    fn first_word_is_up_to_the_first_space() {
        assert_eq!(first_word(b"alpha.example 10.0.0.1"), b"alpha.example");
        assert_eq!(first_word(b"alpha.example\n"), b"alpha.example");
        assert_eq!(first_word(b"alpha.example\r\n"), b"alpha.example");
        assert_eq!(first_word(b""), b"");
        assert_eq!(first_word(b" x"), b"");
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn word_table_matches_by_first_word_not_by_position() {
        let mut t = WordTable::new();
        t.push(1, b"beta.example\n", secs(5), 'b');
        t.push(2, b"nowhere.example\n", secs(5), 'n');
        t.push(3, b"alpha.example\n", secs(5), 'a');
        // The server knows alpha only: its answer goes to request 3, not to the oldest.
        assert_eq!(t.take(b"alpha.example 10.0.0.1"), Some((3, 'a')));
        // Answered twice: the second copy belongs to nobody.
        assert_eq!(t.take(b"alpha.example 10.0.0.1"), None);
        // A longer name sharing a prefix is another name.
        assert_eq!(t.take(b"beta.example.org 1.2.3.4"), None);
        assert_eq!(t.take(b"beta.example 10.0.0.2"), Some((1, 'b')));
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_deadline(), Some(secs(5)));
        assert_eq!(t.expire(secs(4)), vec![]);
        assert_eq!(t.expire(secs(5)), vec![(2, 'n')]);
        assert!(t.is_empty());
    }

    #[test]
    fn word_table_same_name_twice_goes_oldest_first_and_drains() {
        let mut t = WordTable::new();
        t.push(7, b"x", secs(3), ());
        t.push(8, b"x", secs(2), ());
        t.push(9, b"y", secs(9), ());
        assert_eq!(t.take(b"x 1"), Some((7, ())));
        assert_eq!(t.next_deadline(), Some(secs(2)));
        assert_eq!(t.drain(), vec![(8, ()), (9, ())]);
        assert_eq!(t.take(b"x 1"), None);
    }

    #[test]
    fn one_answer_wants_exactly_one_line() {
        assert_eq!(one_answer(b"", 10), OneAnswer::Incomplete);
        assert_eq!(one_answer(b"abc", 10), OneAnswer::Incomplete);
        assert_eq!(one_answer(b"abc\n", 10), OneAnswer::Line { line: b"abc", more: false });
        assert_eq!(one_answer(b"abc\r\n", 10), OneAnswer::Line { line: b"abc", more: false });
        assert_eq!(one_answer(b"abc\nlate", 10), OneAnswer::Line { line: b"abc", more: true });
        assert_eq!(one_answer(b"0123456789x", 10), OneAnswer::TooLong);
        assert_eq!(one_answer(b"0123456789x\n", 10), OneAnswer::TooLong);
        assert_eq!(
            one_answer(b"0123456789\n", 10),
            OneAnswer::Line { line: b"0123456789", more: false }
        );
    }

    fn reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            (0u64..400, any::<bool>()).prop_map(|(a, ok)| Reply::Answer { after: ms(a), ok }),
            (0u64..400).prop_map(|a| Reply::Fail { after: ms(a) }),
            Just(Reply::Silent),
        ]
    }

    proptest! {
        /// Whatever order answers complete in, and however releases interleave with
        /// completions, every answer comes out once, in request order, and none before all
        /// earlier ones.
        #[test]
        fn reorder_releases_each_answer_once_in_order(
            n in 0usize..60,
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..60),
            pops in proptest::collection::vec(any::<bool>(), 0..60),
        ) {
            let mut r = Reorder::new();
            let seqs: Vec<u64> = (0..n).map(|_| r.issue()).collect();
            prop_assert_eq!(seqs.clone(), (0..n as u64).collect::<Vec<_>>());
            // A permutation of the sequence numbers driven by `order`.
            let mut left = seqs.clone();
            let mut perm = Vec::new();
            for ix in &order {
                if left.is_empty() { break; }
                perm.push(left.remove(ix.index(left.len())));
            }
            perm.extend(left);
            let mut done = vec![false; n];
            let mut out = Vec::new();
            for (k, &s) in perm.iter().enumerate() {
                prop_assert!(r.complete(s, s));
                done[s as usize] = true;
                if pops.get(k).copied().unwrap_or(true) {
                    while let Some(v) = r.pop() {
                        prop_assert!(done[..=v as usize].iter().all(|&d| d));
                        out.push(v);
                    }
                }
            }
            while let Some(v) = r.pop() {
                out.push(v);
            }
            prop_assert_eq!(out, seqs);
            prop_assert_eq!(r.in_flight(), 0);
        }

        /// A fan-out relays the earliest acceptable answer before the timeout, or times out
        /// exactly at the timeout.
        #[test]
        fn fanout_matches_the_earliest_acceptable_answer(
            servers in proptest::collection::vec(reply(), 0..6),
            timeout in 1u64..500,
        ) {
            let s = simulate(Race::fanout(ms(timeout)), &servers, true);
            let best = servers.iter().filter_map(|r| match r {
                Reply::Answer { after, ok: true } if *after < ms(timeout) => Some(*after),
                _ => None,
            }).min();
            match best {
                Some(t) => {
                    prop_assert_eq!(s.end, Step::Relay);
                    prop_assert_eq!(s.at, t);
                }
                None => {
                    prop_assert_eq!(s.end, Step::TimedOut);
                    prop_assert_eq!(s.at, ms(timeout));
                }
            }
        }

        /// Hedging never asks more than `max` servers, never asks before the delay unless
        /// everything asked so far failed or was rejected, and ends by the timeout.
        #[test]
        fn hedge_keeps_its_bounds(
            servers in proptest::collection::vec(reply(), 1..6),
            timeout in 1u64..600,
            delay in 0u64..300,
            max in 1usize..5,
        ) {
            let s = simulate(Race::hedged(ms(timeout), ms(delay), max), &servers, false);
            prop_assert!(s.asked_at.len() <= max);
            prop_assert!(s.at <= ms(timeout));
            prop_assert!(s.asked_at.iter().all(|&t| t < ms(timeout)));
            if s.end == Step::TimedOut {
                prop_assert_eq!(s.at, ms(timeout));
            }
            for k in 1..s.asked_at.len() {
                let at = s.asked_at[k];
                if at < s.asked_at[k - 1] + ms(delay) {
                    // Asked early: only because everything asked before had finished.
                    let finished = servers[..k].iter().zip(&s.asked_at).all(|(r, t0)| match r {
                        Reply::Answer { after, ok: false } | Reply::Fail { after } => {
                            *t0 + *after <= at
                        }
                        _ => false,
                    });
                    prop_assert!(finished, "asked early at {:?}: {:?}", at, s.asked_at);
                }
            }
        }
    }
}
