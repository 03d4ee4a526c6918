//! Every way an agent connection can be refused, with a stable short label per kind (for the
//! metric the proxy counts rejections under) and a one-line human message (for the log and the
//! ERROR frame sent back to the backend).

use std::fmt;

use super::MAX_FRAME;

/// Why a byte stream or a frame was refused. Every error ends the connection: the stream
/// cannot be resynchronised after a framing error, and an authentication or ordering error
/// means the peer is broken or hostile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A length field above [`MAX_FRAME`], or more buffered bytes than one such frame; carries
    /// the offending size.
    Oversized(usize),
    /// Bytes that cannot be a frame (a length too small to hold kind, sequence number and MAC;
    /// a challenge with the wrong magic, version or type).
    Garbage(&'static str),
    /// The MAC does not match: wrong key, tampered frame, or a frame from another connection.
    BadMac,
    /// A sequence number not strictly above the last accepted one (0 is never valid).
    Replayed { seq: u64, last: u64 },
    /// The stream ended inside a frame (or a challenge shorter than its fixed size).
    Truncated,
    /// An authenticated frame whose payload is not a valid message of its kind.
    BadPayload(String),
    /// A frame kind that is not allowed here: anything before HELLO, a second HELLO, anything
    /// after BYE, or a kind the protocol does not define.
    UnexpectedKind(u8),
    /// The peer sent an ERROR frame with this reason.
    Remote(String),
    /// A HELLO claimed an address on another host than the one the connection comes from, in
    /// a pool that does not trust claimed addresses.
    ClaimRefused { claimed: std::net::IpAddr, peer: std::net::IpAddr },
}

impl FrameError {
    /// A short, stable label for metrics; never changes once published.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Oversized(_) => "oversized",
            FrameError::Garbage(_) => "garbage",
            FrameError::BadMac => "bad_mac",
            FrameError::Replayed { .. } => "replayed",
            FrameError::Truncated => "truncated",
            FrameError::BadPayload(_) => "bad_payload",
            FrameError::UnexpectedKind(_) => "unexpected_kind",
            FrameError::Remote(_) => "remote",
            FrameError::ClaimRefused { .. } => "claimed_address",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Oversized(n) => {
                write!(f, "frame of {n} bytes exceeds the limit of {MAX_FRAME}")
            }
            FrameError::Garbage(what) => write!(f, "not a frame: {what}"),
            FrameError::BadMac => f.write_str("frame MAC does not match (wrong key or tampered)"),
            FrameError::Replayed { seq, last } => {
                write!(f, "sequence number {seq} is not above the last accepted {last}")
            }
            FrameError::Truncated => f.write_str("stream ended inside a frame"),
            FrameError::BadPayload(why) => write!(f, "bad payload: {}", one_line(why)),
            FrameError::UnexpectedKind(kind) => write!(f, "unexpected frame kind 0x{kind:02x}"),
            FrameError::Remote(why) => write!(f, "peer reported: {}", one_line(why)),
            FrameError::ClaimRefused { claimed, peer } => write!(
                f,
                "address {claimed} is not this connection's {peer} and the pool does not set \
                 trust_claimed_address (send only the port)"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Text that came from the peer (or quotes it) must not break the log line: control
/// characters, newlines included, are shown escaped.
fn one_line(s: &str) -> impl fmt::Display + '_ {
    struct OneLine<'a>(&'a str);
    impl fmt::Display for OneLine<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            for c in self.0.chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            Ok(())
        }
    }
    OneLine(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<FrameError> {
        vec![
            FrameError::Oversized(2000),
            FrameError::Garbage("length below 41"),
            FrameError::BadMac,
            FrameError::Replayed { seq: 3, last: 5 },
            FrameError::Truncated,
            FrameError::BadPayload("missing field `clients`".into()),
            FrameError::UnexpectedKind(0x42),
            FrameError::Remote("bye\nnow".into()),
            FrameError::ClaimRefused { claimed: [10, 0, 0, 2].into(), peer: [10, 0, 0, 1].into() },
        ]
    }

    #[test]
    fn labels_are_stable_and_distinct() {
        let labels: Vec<_> = all().iter().map(FrameError::reason).collect();
        assert_eq!(
            labels,
            [
                "oversized",
                "garbage",
                "bad_mac",
                "replayed",
                "truncated",
                "bad_payload",
                "unexpected_kind",
                "remote",
                "claimed_address"
            ]
        );
    }

    #[test]
    fn display_is_one_line() {
        for e in all() {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.contains('\n') && !s.contains('\r'), "{s:?}");
        }
        assert_eq!(FrameError::Remote("a\nb".into()).to_string(), "peer reported: a\\nb");
        assert_eq!(
            FrameError::Replayed { seq: 3, last: 5 }.to_string(),
            "sequence number 3 is not above the last accepted 5"
        );
    }
}
