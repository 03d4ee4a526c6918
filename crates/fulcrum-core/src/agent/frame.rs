//! Bytes on the wire: the challenge, client frames (`len | kind | seq | payload | mac`), ERROR
//! frames, their MAC, and the incremental [`Decoder`] that cuts a TCP byte stream into frames.
//! Nothing here trusts its input: lengths are checked before they are used, reads go through
//! `get`/`split_*_chunk` instead of indexing, and the decoder never holds more than one frame of
//! the largest size.

use std::fmt;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::message::encode_payload;
use super::{
    CHALLENGE_LEN, FrameError, MAC_LEN, MAGIC, MAX_BUFFER, MAX_FRAME, MIN_FRAME, Message,
    NONCE_LEN, VERSION, kind,
};

pub(super) type HmacSha256 = Hmac<Sha256>;

/// SHA-256's block size: HMAC keys are hashed down (if longer) and zero-padded to this.
const HMAC_BLOCK: usize = 64;

/// The keyed HMAC state with the connection's nonce already absorbed; each frame's MAC is a
/// clone of it fed kind, seq and payload, so the key schedule runs once per connection.
pub(super) fn nonce_mac(key: &[u8], nonce: &[u8; NONCE_LEN]) -> HmacSha256 {
    // RFC 2104 key preparation done here rather than by `Mac::new_from_slice`, whose `Result`
    // can never be an error for HMAC but would still need an unwrap: a key longer than the
    // block is replaced by its hash, then zero-padded. A block-sized key passes through
    // hmac's own preparation unchanged, so the tag is the standard HMAC-SHA256 of `key`.
    let mut block = [0u8; HMAC_BLOCK];
    let hashed;
    let material: &[u8] = if key.len() > HMAC_BLOCK {
        hashed = Sha256::digest(key);
        &hashed
    } else {
        key
    };
    for (b, k) in block.iter_mut().zip(material) {
        *b = *k;
    }
    let mut mac = <HmacSha256 as KeyInit>::new(&block.into());
    mac.update(nonce);
    mac
}

/// `base` (from [`nonce_mac`]) fed the rest of the MAC input: kind, seq (8 bytes big-endian),
/// payload.
pub(super) fn frame_mac(base: &HmacSha256, kind: u8, seq: u64, payload: &[u8]) -> HmacSha256 {
    let mut mac = base.clone();
    mac.update(&[kind]);
    mac.update(&seq.to_be_bytes());
    mac.update(payload);
    mac
}

/// The 22 bytes the balancer writes first on every agent connection.
pub fn challenge_bytes(nonce: &[u8; NONCE_LEN]) -> [u8; CHALLENGE_LEN] {
    let mut out = [0u8; CHALLENGE_LEN];
    let head = MAGIC.iter().chain(&[VERSION, kind::CHALLENGE]).chain(nonce);
    for (o, b) in out.iter_mut().zip(head) {
        *o = *b;
    }
    out
}

/// The nonce from a challenge. `b` must be exactly [`CHALLENGE_LEN`] bytes: fewer is
/// [`FrameError::Truncated`]; more, or a wrong magic, version or type, is
/// [`FrameError::Garbage`].
pub fn parse_challenge(b: &[u8]) -> Result<[u8; NONCE_LEN], FrameError> {
    let Ok(whole) = <[u8; CHALLENGE_LEN]>::try_from(b) else {
        return Err(if b.len() < CHALLENGE_LEN {
            FrameError::Truncated
        } else {
            FrameError::Garbage("challenge longer than 22 bytes")
        });
    };
    let [m0, m1, m2, m3, version, ty, nonce @ ..] = whole;
    if [m0, m1, m2, m3] != MAGIC {
        return Err(FrameError::Garbage("bad magic: not a fulcrum agent port"));
    }
    if version != VERSION {
        return Err(FrameError::Garbage("unsupported protocol version in challenge"));
    }
    if ty != kind::CHALLENGE {
        return Err(FrameError::Garbage("not a challenge"));
    }
    Ok(nonce)
}

/// One client frame as cut from the stream, not yet authenticated: hand it to
/// [`super::Session::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub kind: u8,
    pub seq: u64,
    pub payload: Vec<u8>,
    pub mac: [u8; MAC_LEN],
}

/// The frame a backend sends for `msg` on the connection whose challenge carried `nonce`.
/// Messages within the protocol's limits (pool ≤ 64 characters, an `ip:port` address) always
/// fit in [`MAX_FRAME`].
pub fn encode_message(key: &[u8], nonce: &[u8; NONCE_LEN], seq: u64, msg: &Message) -> Vec<u8> {
    encode_raw(key, nonce, msg.kind(), seq, &encode_payload(msg))
}

/// A correctly authenticated frame of any kind with any payload bytes: what
/// [`encode_message`] builds on, and what tests use to send well-signed nonsense. A payload
/// longer than `MAX_FRAME - 41` makes a frame the decoder refuses as oversized (the length
/// field saturates at `u16::MAX` rather than wrapping into a plausible value).
pub fn encode_raw(
    key: &[u8],
    nonce: &[u8; NONCE_LEN],
    kind: u8,
    seq: u64,
    payload: &[u8],
) -> Vec<u8> {
    let len = MIN_FRAME + payload.len();
    let mut out = Vec::with_capacity(2 + len);
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
    let tag = frame_mac(&nonce_mac(key, nonce), kind, seq, payload).finalize().into_bytes();
    out.extend_from_slice(&tag);
    out
}

/// The frame the balancer sends before closing on a violation: `len u16 | 0x7F | reason`, no
/// seq and no MAC. The reason is cut (at a character boundary) to fit in [`MAX_FRAME`].
pub fn encode_error(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_FRAME - 1);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = reason.get(..end).unwrap_or_default().as_bytes();
    let mut out = Vec::with_capacity(3 + reason.len());
    // end < MAX_FRAME, so the length fits in u16.
    out.extend_from_slice(&u16::try_from(1 + reason.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.push(kind::ERROR);
    out.extend_from_slice(reason);
    out
}

/// For clients: the reason of the ERROR frame at the start of `b`, if `b` starts with a whole
/// one (trailing bytes are ignored). Invalid UTF-8 is replaced rather than refused: the reason
/// is for a human and the connection is over anyway.
pub fn read_error_frame(b: &[u8]) -> Option<String> {
    let (len, rest) = b.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    if len == 0 || len > MAX_FRAME {
        return None;
    }
    let (&k, reason) = rest.get(..len)?.split_first()?;
    (k == kind::ERROR).then(|| String::from_utf8_lossy(reason).into_owned())
}

/// Cuts a byte stream into frames: buffers a partial frame until the rest arrives and yields
/// coalesced frames one by one. Holds at most [`MAX_BUFFER`] bytes; the buffer is allocated
/// once, at that size, and never grows. Any error is final: every later call returns it again,
/// because a stream cannot be resynchronised once its framing is lost.
///
/// Use: read at most [`Decoder::room`] bytes, [`push`](Decoder::push) them, call
/// [`next_frame`](Decoder::next_frame) until it returns `Ok(None)`, repeat; at end of stream
/// call [`finish`](Decoder::finish).
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` before this were already returned as frames.
    start: usize,
    failed: Option<FrameError>,
}

impl Decoder {
    pub fn new() -> Self {
        Self { buf: Vec::with_capacity(MAX_BUFFER), start: 0, failed: None }
    }

    /// Appends stream bytes. Refuses, with [`FrameError::Oversized`] carrying the size the
    /// buffer would have reached, to hold more than [`MAX_BUFFER`] bytes: no valid stream needs
    /// that if frames are taken out between pushes.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let total = self.buffered().saturating_add(bytes.len());
        if total > MAX_BUFFER {
            return Err(self.fail(FrameError::Oversized(total)));
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed. An ERROR frame from the peer
    /// comes out as [`FrameError::Remote`].
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match cut(self.buf.get(self.start..).unwrap_or_default()) {
            Cut::NeedMore => Ok(None),
            Cut::Invalid(e) => Err(self.fail(e)),
            Cut::Frame(used, frame) => {
                self.consume(used);
                Ok(Some(frame))
            }
            Cut::Error(used, reason) => {
                self.consume(used);
                Err(self.fail(FrameError::Remote(reason)))
            }
        }
    }

    /// Bytes held that are not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// How many bytes the next [`push`](Decoder::push) may carry.
    pub fn room(&self) -> usize {
        MAX_BUFFER.saturating_sub(self.buffered())
    }

    /// Call when the stream ends: [`FrameError::Truncated`] if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffered() > 0 { Err(FrameError::Truncated) } else { Ok(()) }
    }

    fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.failed = Some(e.clone());
        e
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("buffered", &self.buffered())
            .field("failed", &self.failed)
            .finish()
    }
}

/// What the bytes at the head of the buffer are.
enum Cut {
    NeedMore,
    Invalid(FrameError),
    /// A client frame and the bytes it used, length field included.
    Frame(usize, RawFrame),
    /// An ERROR frame's reason and the bytes it used.
    Error(usize, String),
}

fn cut(avail: &[u8]) -> Cut {
    let Some((len, body)) = avail.split_first_chunk::<2>() else {
        return Cut::NeedMore;
    };
    let len = usize::from(u16::from_be_bytes(*len));
    // Judge the length as soon as it is known, so a hostile peer cannot make us wait for (or
    // buffer) bytes of a frame that will be refused anyway.
    if len > MAX_FRAME {
        return Cut::Invalid(FrameError::Oversized(len));
    }
    if len == 0 {
        return Cut::Invalid(FrameError::Garbage("zero length field"));
    }
    let Some(&k) = body.first() else {
        return Cut::NeedMore;
    };
    // ERROR frames have no seq or MAC, so they are the one kind allowed below MIN_FRAME.
    if k != kind::ERROR && len < MIN_FRAME {
        return Cut::Invalid(FrameError::Garbage("length field too small for kind, seq and MAC"));
    }
    let Some(frame) = body.get(..len) else {
        return Cut::NeedMore;
    };
    let used = 2 + len;
    let Some((&k, rest)) = frame.split_first() else {
        return Cut::NeedMore;
    };
    if k == kind::ERROR {
        return Cut::Error(used, String::from_utf8_lossy(rest).into_owned());
    }
    let Some((seq, rest)) = rest.split_first_chunk::<8>() else {
        return Cut::Invalid(FrameError::Garbage("length field too small for kind, seq and MAC"));
    };
    let Some((payload, mac)) = rest.split_last_chunk::<MAC_LEN>() else {
        return Cut::Invalid(FrameError::Garbage("length field too small for kind, seq and MAC"));
    };
    Cut::Frame(
        used,
        RawFrame { kind: k, seq: u64::from_be_bytes(*seq), payload: payload.to_vec(), mac: *mac },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"k";
    const NONCE: [u8; NONCE_LEN] = [7; NONCE_LEN];

    fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
        encode_raw(KEY, &NONCE, kind::REPORT, seq, payload)
    }

    fn decode_all(d: &mut Decoder) -> Result<Vec<RawFrame>, FrameError> {
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn mac_matches_standard_hmac_for_every_key_length() {
        for n in 0..200 {
            let key: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            let mut reference = <HmacSha256 as Mac>::new_from_slice(&key).unwrap();
            reference.update(&NONCE);
            reference.update(&[kind::HELLO]);
            reference.update(&9u64.to_be_bytes());
            reference.update(b"{}");
            let ours = frame_mac(&nonce_mac(&key, &NONCE), kind::HELLO, 9, b"{}");
            assert_eq!(ours.finalize().into_bytes(), reference.finalize().into_bytes(), "{n}");
        }
    }

    #[test]
    fn challenge_round_trip_and_refusals() {
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| i as u8);
        let c = challenge_bytes(&nonce);
        assert_eq!(&c[..6], b"FLCR\x01\x01");
        assert_eq!(parse_challenge(&c), Ok(nonce));
        assert_eq!(parse_challenge(&c[..21]), Err(FrameError::Truncated));
        assert_eq!(parse_challenge(&[]), Err(FrameError::Truncated));
        let mut long = c.to_vec();
        long.push(0);
        assert!(matches!(parse_challenge(&long), Err(FrameError::Garbage(_))));
        for (at, value) in [(0, b'X'), (3, b'S'), (4, 2), (5, kind::HELLO)] {
            let mut bad = c;
            bad[at] = value;
            assert!(matches!(parse_challenge(&bad), Err(FrameError::Garbage(_))), "byte {at}");
        }
    }

    #[test]
    fn frame_layout() {
        let f = frame(0x0102030405060708, b"{}");
        assert_eq!(f.len(), 2 + 41 + 2);
        assert_eq!(&f[..2], &[0, 43]);
        assert_eq!(f[2], kind::REPORT);
        assert_eq!(&f[3..11], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&f[11..13], b"{}");
        let mut d = Decoder::new();
        d.push(&f).unwrap();
        let raw = d.next_frame().unwrap().unwrap();
        assert_eq!(raw.kind, kind::REPORT);
        assert_eq!(raw.seq, 0x0102030405060708);
        assert_eq!(raw.payload, b"{}");
        assert_eq!(&raw.mac[..], &f[13..]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn partial_frames_wait_and_coalesced_frames_split() {
        let a = frame(1, b"{\"a\":1}");
        let b = frame(2, b"");
        let stream = [a.clone(), b.clone(), a.clone()].concat();
        let mut d = Decoder::new();
        d.push(&stream[..a.len() - 1]).unwrap();
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated));
        d.push(&stream[a.len() - 1..a.len() + 1]).unwrap();
        assert_eq!(decode_all(&mut d).unwrap().len(), 1);
        assert_eq!(d.buffered(), 1);
        d.push(&stream[a.len() + 1..]).unwrap();
        let got = decode_all(&mut d).unwrap();
        assert_eq!(got.iter().map(|f| f.seq).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut d = Decoder::new();
        d.push(&[0x04, 0x01]).unwrap(); // 1025
        assert_eq!(d.next_frame(), Err(FrameError::Oversized(1025)));
        // Final: more bytes do not revive it.
        assert_eq!(d.push(&[0]), Err(FrameError::Oversized(1025)));
        assert_eq!(d.next_frame(), Err(FrameError::Oversized(1025)));
        let mut d = Decoder::new();
        d.push(&[0xff, 0xff]).unwrap();
        assert_eq!(d.next_frame(), Err(FrameError::Oversized(65535)));
    }

    #[test]
    fn largest_frame_is_accepted_and_buffer_never_exceeds_it() {
        let big = frame(1, &vec![b' '; MAX_FRAME - MIN_FRAME]);
        assert_eq!(big.len(), MAX_BUFFER);
        let mut d = Decoder::new();
        d.push(&big[..1000]).unwrap();
        assert_eq!(d.room(), MAX_BUFFER - 1000);
        assert_eq!(d.push(&[0; MAX_BUFFER - 999]), Err(FrameError::Oversized(MAX_BUFFER + 1)));
        let mut d = Decoder::new();
        d.push(&big).unwrap();
        assert_eq!(d.room(), 0);
        assert_eq!(d.next_frame().unwrap().unwrap().payload.len(), MAX_FRAME - MIN_FRAME);
        assert_eq!(d.room(), MAX_BUFFER);
        assert_eq!(d.buf.capacity(), MAX_BUFFER, "the buffer never reallocated");
        let too_big = frame(1, &vec![b' '; MAX_FRAME - MIN_FRAME + 1]);
        let mut d = Decoder::new();
        d.push(&too_big[..3]).unwrap();
        assert_eq!(d.next_frame(), Err(FrameError::Oversized(MAX_FRAME + 1)));
        let huge = frame(1, &vec![b' '; 70_000]);
        assert_eq!(&huge[..2], &[0xff, 0xff], "length saturates instead of wrapping");
    }

    #[test]
    fn short_lengths_are_garbage() {
        for len in [0u16, 1, 40] {
            let mut d = Decoder::new();
            d.push(&len.to_be_bytes()).unwrap();
            d.push(&[kind::REPORT]).unwrap();
            assert!(matches!(d.next_frame(), Err(FrameError::Garbage(_))), "{len}");
        }
        // 41 is the smallest frame: an empty payload.
        let mut d = Decoder::new();
        d.push(&frame(1, b"")).unwrap();
        assert_eq!(d.next_frame().unwrap().unwrap().payload, b"");
    }

    #[test]
    fn error_frames() {
        let e = encode_error("bad MAC");
        assert_eq!(e, b"\x00\x08\x7fbad MAC");
        assert_eq!(read_error_frame(&e), Some("bad MAC".into()));
        assert_eq!(
            read_error_frame(&[e.clone(), b"trailing".to_vec()].concat()).as_deref(),
            Some("bad MAC")
        );
        assert_eq!(read_error_frame(&e[..e.len() - 1]), None);
        assert_eq!(read_error_frame(&frame(1, b"{}")), None);
        assert_eq!(read_error_frame(b"FLCR"), None);
        assert_eq!(read_error_frame(&[0, 0, 0x7f]), None);
        assert_eq!(read_error_frame(&encode_error("")), Some(String::new()));
        // Long reasons are cut at a character boundary to fit MAX_FRAME.
        let long = "é".repeat(MAX_FRAME);
        let e = encode_error(&long);
        assert!(e.len() <= MAX_BUFFER);
        let back = read_error_frame(&e).unwrap();
        assert_eq!(back.len(), MAX_FRAME - 2);
        assert!(back.chars().all(|c| c == 'é'));
        // The decoder reports a peer's ERROR frame, even one shorter than a client frame.
        let mut d = Decoder::new();
        d.push(&encode_error("go away")).unwrap();
        assert_eq!(d.next_frame(), Err(FrameError::Remote("go away".into())));
        assert_eq!(d.next_frame(), Err(FrameError::Remote("go away".into())));
    }
}
