//! Who is to blame when an exchange with a server fails, and whether trying another server is
//! safe. One verdict for every protocol: only failures blamed on the server count towards
//! passive ejection, so a client that resets, or keeps uploading after the server has
//! answered, never takes a healthy server out of rotation.

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// This host: out of descriptors, memory, buffers or local ports.
    Local,
    /// The server: refused, timed out, or reset before it answered anything.
    Server,
    /// The client: it reset, stopped reading, or kept sending after the server had answered
    /// and closed.
    Client,
}

/// A failure's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub blame: Blame,
    /// Whether the client's request may go to another server: true only while no byte of it
    /// has reached a server.
    pub retry_safe: bool,
}

impl Verdict {
    /// Whether the failure counts towards the server's passive ejection.
    pub fn counts_against_server(self) -> bool {
        self.blame == Blame::Server
    }
}

/// Linux errno values that mean this host ran out of something (descriptors, memory, socket
/// buffers, local ports), not that the server failed.
pub mod errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const EADDRNOTAVAIL: i32 = 99;
    pub const ENOBUFS: i32 = 105;
    pub const EINPROGRESS: i32 = 115;
}

/// Whether `code` (an OS error number) means a local resource ran out.
pub fn is_local_resource(code: Option<i32>) -> bool {
    matches!(
        code,
        Some(errno::ENOMEM | errno::ENFILE | errno::EMFILE | errno::EADDRNOTAVAIL | errno::ENOBUFS)
    )
}

/// A connect (or a timed-out connect, `code` None) that failed: nothing was sent yet, so
/// another server may be tried. A connect is everything before the client's first byte goes
/// out: the TCP handshake, a PROXY header, and the TLS handshake with a server of a pool with
/// TLS (a refused or unverifiable certificate is the server's failure like a refused port).
pub fn connect_failed(code: Option<i32>) -> Verdict {
    let blame = if is_local_resource(code) { Blame::Local } else { Blame::Server };
    Verdict { blame, retry_safe: true }
}

/// Which socket of a proxied pair failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// A proxied stream that failed after the connect: reading from or writing to `side` gave an
/// error. The server is blamed only when it failed before sending a byte back: a server that
/// answered (say a 413 while the client still uploads) and closed has done its part, and
/// the reset or broken pipe that follows comes from the client still talking. Bytes were
/// sent, so it is never retried.
pub fn stream_failed(side: Side, server_answered: bool) -> Verdict {
    let blame = match side {
        Side::Server if !server_answered => Blame::Server,
        _ => Blame::Client,
    };
    Verdict { blame, retry_safe: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failures_blame_the_server_unless_this_host_ran_out() {
        assert_eq!(connect_failed(Some(111)).blame, Blame::Server, "refused");
        assert_eq!(connect_failed(None).blame, Blame::Server, "timed out");
        for code in [12, 23, 24, 99, 105] {
            let v = connect_failed(Some(code));
            assert_eq!(v.blame, Blame::Local, "errno {code}");
            assert!(!v.counts_against_server());
        }
        assert!(connect_failed(Some(113)).retry_safe);
    }

    #[test]
    fn stream_failures_blame_the_server_only_before_it_answered() {
        assert!(stream_failed(Side::Server, false).counts_against_server());
        assert!(!stream_failed(Side::Server, true).counts_against_server());
        assert_eq!(stream_failed(Side::Client, false).blame, Blame::Client);
        assert_eq!(stream_failed(Side::Client, true).blame, Blame::Client);
        assert!(!stream_failed(Side::Server, false).retry_safe);
    }
}
