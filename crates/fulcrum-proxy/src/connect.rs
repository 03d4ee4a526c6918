//! Opening connections to servers, with the fewest syscalls a connection can cost.
//!
//! Why not `tokio::net::TcpStream::connect`: after the handshake it always asks the kernel for
//! `SO_ERROR`, and `TCP_NODELAY` then needs a `setsockopt` of its own. Here the option is set
//! on the socket before `connect`, and the error is fetched only when epoll reports the
//! handshake failed: a refused or reset handshake leaves the socket closed for writing
//! (`EPOLLHUP`, and `EPOLLERR` with the error). A connection that succeeds costs
//! `socket`, a `setsockopt` per option (`TCP_NODELAY`, and the pool's `receive_buffer` unless
//! it is `"auto"`), `connect` and the epoll registration, as in HAProxy.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::listener::libc_errno::EINPROGRESS;

/// Connects to `addr` with `TCP_NODELAY` on and the pool's `receive_buffer` (`None`: the
/// kernel's autotuning). The caller bounds it with its connect timeout.
pub async fn connect(addr: SocketAddr, receive_buffer: Option<u32>) -> io::Result<TcpStream> {
    let s =
        Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    s.set_tcp_nodelay(true)?;
    // Before the handshake, so the window scale fits it. A fixed size turns the kernel's
    // autotuning off: it would grow the buffer to hold megabytes of an answer whose client
    // reads nothing (docs/guards.md, "Slow clients").
    if let Some(n) = receive_buffer {
        s.set_recv_buffer_size(n as usize)?;
    }
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(s))?;
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_write_closed() || ready.is_error() {
        return Err(stream.take_error()?.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed in the handshake")
        }));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_with_nodelay_and_reports_a_refusal() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (s, accepted) = tokio::join!(connect(addr, Some(65536)), l.accept());
        let s = s.unwrap();
        assert!(s.nodelay().unwrap());
        // The kernel doubles what it is asked for (its bookkeeping's share).
        assert_eq!(socket2::SockRef::from(&s).recv_buffer_size().unwrap(), 2 * 65536);
        assert_eq!(s.peer_addr().unwrap(), addr);
        assert_eq!(accepted.unwrap().1, s.local_addr().unwrap());

        // A port nobody listens on: the listener's, once it is closed.
        drop(l);
        let err = connect(addr, None).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    }
}
