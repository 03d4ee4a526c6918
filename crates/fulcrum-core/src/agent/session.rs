//! The balancer's view of one agent connection: authenticates each frame against the key and
//! the nonce it sent, enforces strictly increasing sequence numbers and the message order
//! (HELLO once and first, nothing after BYE), and only then reads the payload.

use std::fmt;

use hmac::Mac;

use super::frame::{HmacSha256, frame_mac, nonce_mac};
use super::message::decode_payload;
use super::{FrameError, Message, NONCE_LEN, RawFrame, kind};

/// Per-connection protocol state. Create it with the nonce written in the challenge; feed it
/// every frame the [`super::Decoder`] yields. Any error means: send
/// [`super::encode_error`] and close.
pub struct Session {
    /// Keyed HMAC with the nonce absorbed (see `frame::nonce_mac`).
    mac: HmacSha256,
    last_seq: u64,
    hello_seen: bool,
    bye_seen: bool,
}

impl Session {
    pub fn new(key: &[u8], nonce: [u8; NONCE_LEN]) -> Self {
        Self { mac: nonce_mac(key, &nonce), last_seq: 0, hello_seen: false, bye_seen: false }
    }

    /// Authenticates and reads one frame. Checks run in this order so that nothing an
    /// unauthenticated peer sends reaches the JSON parser: MAC ([`FrameError::BadMac`]), then
    /// sequence number ([`FrameError::Replayed`]), then kind against the connection's state
    /// ([`FrameError::UnexpectedKind`]), then payload ([`FrameError::BadPayload`]). The
    /// session's state changes only when a message is returned.
    pub fn open(&mut self, raw: &RawFrame) -> Result<Message, FrameError> {
        // `verify_slice` compares in constant time, so timing reveals nothing about how much of
        // a forged tag was right.
        frame_mac(&self.mac, raw.kind, raw.seq, &raw.payload)
            .verify_slice(&raw.mac)
            .map_err(|_| FrameError::BadMac)?;
        // last_seq starts at 0, so this also refuses seq 0 on the first frame.
        if raw.seq <= self.last_seq {
            return Err(FrameError::Replayed { seq: raw.seq, last: self.last_seq });
        }
        let allowed = !self.bye_seen && (raw.kind == kind::HELLO) != self.hello_seen;
        if !allowed {
            return Err(FrameError::UnexpectedKind(raw.kind));
        }
        let msg = decode_payload(raw.kind, &raw.payload)?;
        self.last_seq = raw.seq;
        match msg {
            Message::Hello(_) => self.hello_seen = true,
            Message::Bye => self.bye_seen = true,
            Message::Report(_) => {}
        }
        Ok(msg)
    }

    /// Sequence number of the last message returned by [`Session::open`]; 0 before the first.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

/// Leaves out the keyed MAC state: debug output must not carry key material.
impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("last_seq", &self.last_seq)
            .field("hello_seen", &self.hello_seen)
            .field("bye_seen", &self.bye_seen)
            .finish_non_exhaustive()
    }
}
