//! How a line protocol's client bytes become requests (`framing`) and which request ends the
//! conversation (`quit`): one rule for TCP fan-out, hedge and the TCP directory, so they never
//! disagree about what a client asked.
//!
//! * [`Framing::Line`]: a request is a line; its `\n` (and a `\r` before it) is not part of
//!   it. A last line without its newline, at the client's end of stream, is still a request.
//! * [`Framing::Message`]: whatever one read from the client returned is one request, as is.
//!   Only safe for clients that send one message and wait for its reply before the next: TCP
//!   keeps no message boundaries, so two messages sent back to back may arrive in one read
//!   (and be taken as one request), and one large message may arrive in two. The services
//!   never read a message-framed client while its request is unanswered, which keeps such
//!   clients exact.

/// How a client's bytes split into requests (`[frontend.X] framing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Framing {
    /// `"line"` (default): one line is one request.
    #[default]
    Line,
    /// `"message"`: one read is one request, and one read from a server is one answer.
    Message,
}

impl Framing {
    pub fn name(self) -> &'static str {
        match self {
            Framing::Line => "line",
            Framing::Message => "message",
        }
    }
}

/// Takes the next request out of `buf` (the client's bytes not yet taken), without its line
/// end in [`Framing::Line`]. `eof`: the client has closed its side, so an unterminated last
/// line is complete. `None` when no complete request is there.
pub fn take_request(framing: Framing, buf: &mut Vec<u8>, eof: bool) -> Option<Vec<u8>> {
    match framing {
        Framing::Line => {
            if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Some(line)
            } else if eof && !buf.is_empty() {
                let mut line = std::mem::take(buf);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Some(line)
            } else {
                None
            }
        }
        Framing::Message => (!buf.is_empty()).then(|| std::mem::take(buf)),
    }
}

/// Whether `request` (as [`take_request`] gave it) is the frontend's `quit` word. A message
/// may carry a line end (`done\n` from a client that prints its messages): it is ignored, as
/// a line's is.
pub fn is_quit(request: &[u8], quit: Option<&[u8]>) -> bool {
    let Some(quit) = quit else { return false };
    let r = request.strip_suffix(b"\n").unwrap_or(request);
    let r = r.strip_suffix(b"\r").unwrap_or(r);
    r == quit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(framing: Framing, reads: &[&[u8]], eof: bool) -> Vec<Vec<u8>> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for (k, r) in reads.iter().enumerate() {
            buf.extend_from_slice(r);
            let last = k + 1 == reads.len();
            while let Some(q) = take_request(framing, &mut buf, eof && last) {
                out.push(q);
            }
        }
        out
    }

    #[test]
    fn lines_split_join_and_lose_their_line_ends() {
        let got = all(Framing::Line, &[b"a.example\r\nb.ex", b"ample\nc"], false);
        assert_eq!(got, vec![b"a.example".to_vec(), b"b.example".to_vec()]);
        let got = all(Framing::Line, &[b"a\n", b"tail"], true);
        assert_eq!(got, vec![b"a".to_vec(), b"tail".to_vec()]);
        // An empty line is a request too (its answer keeps positions aligned).
        assert_eq!(all(Framing::Line, &[b"\n"], false), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn a_message_is_one_read_as_is() {
        let got = all(Framing::Message, &[b"www.example.com", b"two\nlines\n"], false);
        assert_eq!(got, vec![b"www.example.com".to_vec(), b"two\nlines\n".to_vec()]);
        assert_eq!(all(Framing::Message, &[b""], true), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn quit_matches_the_word_with_or_without_a_line_end() {
        let q = Some(&b"done"[..]);
        assert!(is_quit(b"done", q));
        assert!(is_quit(b"done\n", q));
        assert!(is_quit(b"done\r\n", q));
        assert!(!is_quit(b"done.example.com", q));
        assert!(!is_quit(b"Done", q));
        assert!(!is_quit(b"done", None));
    }
}
