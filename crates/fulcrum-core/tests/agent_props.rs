//! Property tests of the agent protocol codec through its public interface, the way the proxy
//! drives it: bytes pushed into a `Decoder` in whatever pieces TCP delivers, every frame handed
//! to a `Session`. Properties: the chunking of a stream never changes what it decodes to; all
//! coalesced frames come out of one push; garbage never panics or authenticates; any single
//! flipped bit is refused; replayed frames are refused.
//!
//! Case counts are modest (the every-byte-boundary property decodes each stream once per byte)
//! so the file runs in a few seconds in a debug build.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};

use fulcrum_core::agent::{
    AgentState, Decoder, FrameError, Hello, MAX_BUFFER, Message, NONCE_LEN, Report, Session,
    VERSION, encode_message,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

const KEY: &[u8] = b"prop-key";
const NONCE: [u8; NONCE_LEN] = [0x5a; NONCE_LEN];

/// One connection as the balancer sees it.
struct Conn {
    decoder: Decoder,
    session: Session,
    got: Vec<Message>,
    err: Option<FrameError>,
}

impl Conn {
    fn new() -> Self {
        Self { decoder: Decoder::new(), session: Session::new(KEY, NONCE), got: vec![], err: None }
    }

    /// Delivers `bytes` as one read would, split further only where the decoder has no room
    /// (a real reader never reads more than `room()`), taking out every whole frame after each
    /// push.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.err.is_none() {
            let n = bytes.len().min(self.decoder.room());
            assert!(n > 0, "a decoder with whole frames taken out always has room");
            let (now, later) = bytes.split_at(n);
            bytes = later;
            if let Err(e) = self.decoder.push(now) {
                self.err = Some(e);
                return;
            }
            self.drain();
        }
    }

    fn drain(&mut self) {
        while self.err.is_none() {
            match self.decoder.next_frame() {
                Ok(None) => return,
                Ok(Some(raw)) => match self.session.open(&raw) {
                    Ok(msg) => self.got.push(msg),
                    Err(e) => self.err = Some(e),
                },
                Err(e) => self.err = Some(e),
            }
            assert!(self.decoder.buffered() <= MAX_BUFFER);
        }
    }

    /// End of stream: the messages accepted and the first error, truncation included.
    fn finish(mut self) -> (Vec<Message>, Option<FrameError>) {
        if self.err.is_none() {
            self.err = self.decoder.finish().err();
        }
        (self.got, self.err)
    }
}

fn decode_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Message>, Option<FrameError>) {
    let mut conn = Conn::new();
    for c in chunks {
        conn.feed(c);
    }
    conn.finish()
}

fn state() -> impl Strategy<Value = AgentState> {
    prop_oneof![Just(AgentState::Up), Just(AgentState::Drain), Just(AgentState::Down)]
}

fn report() -> impl Strategy<Value = Message> {
    (any::<u64>(), any::<u64>(), option::of(any::<u32>()), option::of(state())).prop_map(
        |(clients, queue, weight, state)| Message::Report(Report { clients, queue, weight, state }),
    )
}

fn hello() -> impl Strategy<Value = Message> {
    // Any printable characters (multi-byte included) exercise JSON escaping and UTF-8.
    ("\\PC{1,64}", any::<IpAddr>(), 1..=u16::MAX).prop_map(|(pool, ip, port)| {
        Message::Hello(Hello {
            pool,
            address: SocketAddr::new(ip, port).to_string(),
            version: VERSION,
        })
    })
}

/// A valid connection: HELLO, some REPORTs, maybe BYE, with strictly increasing sequence
/// numbers that may have gaps. Returns each frame's bytes with its message.
fn session_frames(max_reports: usize) -> impl Strategy<Value = Vec<(Vec<u8>, Message)>> {
    (
        hello(),
        vec(report(), 0..=max_reports),
        any::<bool>(),
        1..100u64,
        vec(1..1000u64, max_reports + 2),
    )
        .prop_map(|(hello, reports, bye, first, gaps)| {
            let mut msgs = vec![hello];
            msgs.extend(reports);
            if bye {
                msgs.push(Message::Bye);
            }
            let mut seq = first;
            msgs.into_iter()
                .zip(gaps)
                .map(|(msg, gap)| {
                    let frame = encode_message(KEY, &NONCE, seq, &msg);
                    seq += gap;
                    (frame, msg)
                })
                .collect()
        })
}

fn split(frames: &[(Vec<u8>, Message)]) -> (Vec<u8>, Vec<Message>) {
    let stream = frames.iter().flat_map(|(f, _)| f.clone()).collect();
    (stream, frames.iter().map(|(_, m)| m.clone()).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// (a) Two pieces, cut at every byte boundary: always the same messages, no error.
    #[test]
    fn every_split_point_decodes_the_same(frames in session_frames(4)) {
        let (stream, want) = split(&frames);
        for at in 0..=stream.len() {
            let (a, b) = stream.split_at(at);
            let (got, err) = decode_chunks([a, b]);
            prop_assert_eq!(err, None, "split at {}", at);
            prop_assert_eq!(&got, &want, "split at {}", at);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (a) Random chunkings, one byte at a time included.
    #[test]
    fn any_chunking_decodes_the_same(
        frames in session_frames(10),
        sizes in vec(1..200usize, 1..40),
    ) {
        let (stream, want) = split(&frames);
        let mut chunks = vec![];
        let mut rest = &stream[..];
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((*size).min(rest.len()));
            chunks.push(now);
            rest = later;
        }
        prop_assert_eq!(decode_chunks(chunks), (want.clone(), None));
        prop_assert_eq!(decode_chunks(stream.chunks(1)), (want, None));
    }

    /// (b) As many frames as fit in the decoder's buffer, in a single push: all come out.
    #[test]
    fn coalesced_frames_all_come_out(frames in session_frames(20)) {
        let mut total = 0;
        let fitting: Vec<_> =
            frames.into_iter().take_while(|(f, _)| { total += f.len(); total <= MAX_BUFFER }).collect();
        let (stream, want) = split(&fitting);
        let mut decoder = Decoder::new();
        let mut session = Session::new(KEY, NONCE);
        decoder.push(&stream).unwrap();
        let mut got = vec![];
        while let Some(raw) = decoder.next_frame().unwrap() {
            got.push(session.open(&raw).unwrap());
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(decoder.buffered(), 0);
        prop_assert_eq!(decoder.finish(), Ok(()));
    }

    /// (c) Random bytes, in random pieces: no panic, nothing authenticates, and the decoder
    /// ends in an error or waiting for more data without exceeding its buffer.
    #[test]
    fn garbage_never_panics_or_authenticates(
        bytes in vec(any::<u8>(), 0..3000),
        sizes in vec(1..300usize, 1..10),
        after_hello in any::<bool>(),
    ) {
        let mut conn = Conn::new();
        if after_hello {
            let h = Message::Hello(Hello { pool: "p".into(), address: "10.0.0.1:1".into(), version: 1 });
            conn.feed(&encode_message(KEY, &NONCE, 1, &h));
        }
        let accepted_before = conn.got.len();
        let mut rest = &bytes[..];
        for size in sizes.iter().cycle() {
            if rest.is_empty() || conn.err.is_some() {
                break;
            }
            let (now, later) = rest.split_at((*size).min(rest.len()));
            conn.feed(now);
            rest = later;
        }
        prop_assert!(conn.decoder.buffered() <= MAX_BUFFER);
        let (got, err) = conn.finish();
        prop_assert_eq!(got.len(), accepted_before);
        prop_assert!(err.is_some() || bytes.is_empty());
        // One oversized push is refused as a whole.
        let mut d = Decoder::new();
        let pushed = d.push(&bytes);
        prop_assert_eq!(pushed.is_err(), bytes.len() > MAX_BUFFER);
    }

    /// (d) Any single bit flipped anywhere in a frame gets it refused: BadMac, or a framing
    /// error (or truncation) when the flip hit the length field. The frames before it stand.
    #[test]
    fn any_flipped_bit_is_refused(
        frames in session_frames(3),
        pick in any::<prop::sample::Index>(),
        bit in any::<prop::sample::Index>(),
        rest_follows in any::<bool>(),
    ) {
        let target = pick.index(frames.len());
        let mut frame = frames[target].0.clone();
        let bit = bit.index(frame.len() * 8);
        frame[bit / 8] ^= 1 << (bit % 8);
        let before: Vec<u8> = frames[..target].iter().flat_map(|(f, _)| f.clone()).collect();
        let after: Vec<u8> = if rest_follows {
            frames[target + 1..].iter().flat_map(|(f, _)| f.clone()).collect()
        } else {
            vec![]
        };
        let (got, err) = decode_chunks([&before[..], &frame, &after]);
        let want: Vec<_> = frames[..target].iter().map(|(_, m)| m.clone()).collect();
        prop_assert_eq!(got, want);
        if bit >= 16 {
            prop_assert_eq!(err, Some(FrameError::BadMac));
        } else {
            prop_assert!(
                matches!(
                    err,
                    Some(FrameError::BadMac | FrameError::Oversized(_) | FrameError::Garbage(_) | FrameError::Truncated)
                ),
                "{:?}", err
            );
        }
    }

    /// (e) Sending an earlier frame again is refused as a replay, whatever came in between;
    /// a frame made for another connection's nonce fails authentication.
    #[test]
    fn replays_are_refused(
        frames in session_frames(6),
        first in any::<prop::sample::Index>(),
        second in any::<prop::sample::Index>(),
    ) {
        let (a, b) = (first.index(frames.len()), second.index(frames.len()));
        let (replayed, last) = (a.min(b), a.max(b));
        let seq_of = |i: usize| u64::from_be_bytes(frames[i].0[3..11].try_into().unwrap());
        let mut stream: Vec<u8> = frames[..=last].iter().flat_map(|(f, _)| f.clone()).collect();
        stream.extend_from_slice(&frames[replayed].0);
        let (got, err) = decode_chunks([&stream[..]]);
        prop_assert_eq!(got.len(), last + 1);
        // Sequence numbers are checked before the kind, so even after BYE (or a second HELLO)
        // a replay is reported as one.
        let want = FrameError::Replayed { seq: seq_of(replayed), last: seq_of(last) };
        prop_assert_eq!(err, Some(want));

        // The same first frame, made for another connection, is refused there.
        let mut other = Conn::new();
        other.session = Session::new(KEY, [0xa5; NONCE_LEN]);
        other.feed(&frames[0].0);
        prop_assert_eq!(other.finish(), (vec![], Some(FrameError::BadMac)));
    }
}
