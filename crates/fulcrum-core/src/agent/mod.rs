//! The agent protocol's wire format: how a backend that dials the balancer's agent port proves
//! who it is and pushes load reports. This module is a pure codec: it turns bytes into
//! authenticated [`Message`]s and messages into bytes, and owns the rules a connection must
//! keep (MAC, sequence numbers, message order, payload limits). It does no I/O: the proxy crate
//! reads the socket, feeds a [`Decoder`], hands each frame to the connection's [`Session`] and
//! acts on the answer. The byte-level specification, written for implementers in other
//! languages, is `docs/agent-protocol.md`.
//!
//! Flow: the balancer writes a [`challenge_bytes`] frame carrying a fresh random nonce; the
//! backend answers with frames built by [`encode_message`]: HELLO first, then REPORTs, and BYE
//! to leave, each with a strictly increasing sequence number and an HMAC-SHA256 over the
//! nonce, kind, sequence number and payload. Binding the MAC to the per-connection nonce stops
//! frames captured on one connection being replayed on another; the sequence number stops
//! replay within a connection. On any violation the balancer writes [`encode_error`] and
//! closes.

mod error;
mod frame;
mod message;
mod session;

#[cfg(test)]
mod tests;

pub use error::FrameError;
pub use frame::{
    Decoder, RawFrame, challenge_bytes, encode_error, encode_message, encode_raw, parse_challenge,
    read_error_frame,
};
pub use message::{
    AgentState, Claim, Hello, MAX_POOL_LEN, Message, Report, claim, registered_address,
};
pub use session::Session;

/// Protocol version carried in the challenge and in HELLO.
pub const VERSION: u8 = 1;
/// First four bytes of the challenge, so a client that dialled the wrong port finds out at once.
pub const MAGIC: [u8; 4] = *b"FLCR";
/// Length of the per-connection nonce the balancer sends in the challenge.
pub const NONCE_LEN: usize = 16;
/// `MAGIC(4) | version u8 | type u8 = 0x01 | nonce[16]`.
pub const CHALLENGE_LEN: usize = 22;
/// Largest value of a frame's length field (the bytes after the 2-byte length itself).
pub const MAX_FRAME: usize = 1024;
/// Length of the HMAC-SHA256 tag that ends every client frame.
pub const MAC_LEN: usize = 32;
/// Smallest length field of a client frame: kind, sequence number and MAC with an empty payload.
pub const MIN_FRAME: usize = 1 + 8 + MAC_LEN;
/// Most bytes a [`Decoder`] ever holds: one whole frame of the largest size, length included.
/// A caller reading from a socket can size its read buffer with this and read at most
/// [`Decoder::room`] bytes at a time.
pub const MAX_BUFFER: usize = 2 + MAX_FRAME;

/// Frame kinds (the byte after the length field; the sixth byte of the challenge).
pub mod kind {
    /// Balancer → backend, first thing on the connection: magic, version and nonce.
    pub const CHALLENGE: u8 = 0x01;
    /// Backend → balancer, first frame: which pool to join and the address to be reached at.
    pub const HELLO: u8 = 0x10;
    /// Backend → balancer: current load.
    pub const REPORT: u8 = 0x11;
    /// Backend → balancer: leaving; the balancer closes the connection.
    pub const BYE: u8 = 0x12;
    /// Either direction, unauthenticated: the reason the sender is about to close.
    pub const ERROR: u8 = 0x7F;
}
