//! Reading a PROXY protocol header (HAProxy's v1 text or v2 binary) off the front of a byte
//! stream, without I/O: given the bytes read so far, [`step`] says how many more to read, or
//! that the header is complete (and which client it names), or why it is refused.
//!
//! The decision of how many bytes to ask for lives here so that the socket reader never reads
//! past the header: the bytes after it are the client's own and go to the server untouched.
//! Parsing of a complete header is the `ppp` crate's. The fuzz target `proxy_header` drives
//! this with arbitrary bytes in arbitrary pieces.

use std::net::SocketAddr;

/// A v1 header is at most 107 bytes (the protocol's own bound).
pub const V1_MAX: usize = 107;
/// The 12-byte v2 signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v2 headers carry TLVs after the addresses; a longer body than this is refused.
pub const V2_MAX_BODY: usize = 512;
/// No header is longer than this: the reader's buffer size.
pub const MAX_HEADER: usize = 16 + V2_MAX_BODY;

/// What the bytes read so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read exactly this many more bytes (never past the header's end), then call again.
    Need(usize),
    /// The header is the first `len` bytes. `client` is the client it names; `None` for a
    /// header that names none (v1 `UNKNOWN`, v2 `LOCAL` or an address family other than
    /// TCP/UDP over IPv4/IPv6): the balancer in front speaking for itself.
    Done { len: usize, client: Option<SocketAddr> },
}

/// Why a header is refused; the text is one line, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError(pub String);

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HeaderError {}

fn bad(what: impl Into<String>) -> HeaderError {
    // Errors from the parser may quote input; keep the log line one line.
    HeaderError(what.into().replace(['\r', '\n'], " "))
}

/// The next step for a stream that began with `buf` (every byte read so far).
pub fn step(buf: &[u8]) -> Result<Step, HeaderError> {
    if buf.len() < 8 {
        return Ok(Step::Need(8 - buf.len()));
    }
    if buf.starts_with(b"PROXY ") {
        // Byte by byte up to the line end: nothing after the header may be consumed.
        if !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(bad("PROXY v1 header longer than 107 bytes"));
            }
            return Ok(Step::Need(1));
        }
        // The protocol's line is printable US-ASCII ending in its one CRLF. Checked here,
        // not left to the parser: ppp 2.3 slices at the first CR and panics when a
        // multi-byte character follows it (found by the fuzz target).
        let line = &buf[..buf.len() - 2];
        if !line.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Err(bad("PROXY v1 header not printable ASCII"));
        }
        let text = std::str::from_utf8(buf).map_err(|_| bad("PROXY v1 header not text"))?;
        let h = ppp::v1::Header::try_from(text).map_err(|e| bad(format!("PROXY v1: {e}")))?;
        let client = match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        };
        return Ok(Step::Done { len: buf.len(), client });
    }
    if buf[..8] != V2_SIGNATURE[..8] {
        return Err(bad("no PROXY header"));
    }
    if buf.len() < 16 {
        return Ok(Step::Need(16 - buf.len()));
    }
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if body > V2_MAX_BODY {
        return Err(bad(format!("PROXY v2 header of {body} bytes")));
    }
    let len = 16 + body;
    if buf.len() < len {
        return Ok(Step::Need(len - buf.len()));
    }
    if buf.len() > len {
        // The caller read more than it was told to: a bug, not the peer's doing; refuse
        // rather than guess where the client's bytes start.
        return Err(bad("PROXY v2 header read past its end"));
    }
    let h = ppp::v2::Header::try_from(buf).map_err(|e| bad(format!("PROXY v2: {e}")))?;
    if h.command == ppp::v2::Command::Local {
        return Ok(Step::Done { len, client: None });
    }
    let client = match h.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        _ => None,
    };
    Ok(Step::Done { len, client })
}

/// Whether `start` (the first bytes a connection sent) opens with a PROXY header: used to
/// refuse headers from sources that are not trusted to send one. Six bytes decide (`PROXY `
/// or the first six of the v2 signature); fewer never count as a header, so a client whose
/// first segment is a lone `P` is not mistaken for one.
pub fn looks_like_header(start: &[u8]) -> bool {
    start.len() >= 6 && (start.starts_with(b"PROXY ") || start[..6] == V2_SIGNATURE[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` the way the socket reader does and returns the result and the bytes used.
    fn read(stream: &[u8]) -> (Result<Step, HeaderError>, usize) {
        let mut n = 0;
        loop {
            match step(&stream[..n]) {
                Ok(Step::Need(k)) => {
                    assert!(k > 0);
                    if n + k > stream.len() {
                        return (Ok(Step::Need(k)), n);
                    }
                    n += k;
                }
                other => return (other, n),
            }
        }
    }

    fn v2(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    #[test]
    fn v1_tcp4_names_the_client_and_stops_at_the_line_end() {
        let mut s = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec();
        let header_len = s.len();
        s.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (r, used) = read(&s);
        let client = "192.0.2.1:56324".parse().ok();
        assert_eq!(r, Ok(Step::Done { len: header_len, client }));
        assert_eq!(used, header_len);
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let s = b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 443\r\n";
        let client = "[2001:db8::1]:1000".parse().ok();
        assert_eq!(read(s).0, Ok(Step::Done { len: s.len(), client }));
        let s = b"PROXY UNKNOWN\r\n";
        assert_eq!(read(s).0, Ok(Step::Done { len: s.len(), client: None }));
    }

    #[test]
    fn v1_too_long_or_garbled_is_refused() {
        let mut s = b"PROXY TCP4 ".to_vec();
        s.resize(200, b'1');
        assert!(read(&s).0.is_err());
        assert!(read(b"PROXY TCP4 banana\r\n").0.is_err());
        assert!(read(b"GET / HTTP/1.1\r\n").0.is_err());
        // Found by the fuzz target: a CR followed by a multi-byte character made ppp panic.
        let s = "PROXY @PROXY Y\u{6d9} N\r\u{6d9} N\r\n";
        assert!(read(s.as_bytes()).0.is_err());
    }

    #[test]
    fn v2_proxy_names_the_client_and_local_names_none() {
        let addrs = [192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb];
        let mut s = v2(1, 0x11, &addrs);
        let header_len = s.len();
        s.extend_from_slice(b"client bytes");
        let client = "192.0.2.1:56324".parse().ok();
        assert_eq!(read(&s), (Ok(Step::Done { len: header_len, client }), header_len));
        let s = v2(0, 0x00, &[]);
        assert_eq!(read(&s).0, Ok(Step::Done { len: 16, client: None }));
    }

    #[test]
    fn v2_oversized_body_is_refused_before_reading_it() {
        let mut s = V2_SIGNATURE.to_vec();
        s.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let (r, used) = read(&s);
        assert!(r.is_err());
        assert_eq!(used, 16);
    }

    #[test]
    fn a_header_is_recognised_from_its_first_six_bytes() {
        assert!(!looks_like_header(b"P"));
        assert!(looks_like_header(b"PROXY TCP4 "));
        assert!(looks_like_header(b"\r\n\r\n\0\r\nQUIT"));
        assert!(!looks_like_header(b"PRI * HTTP/2.0"));
        assert!(!looks_like_header(b"GET /"));
        assert!(!looks_like_header(b""));
    }
}
