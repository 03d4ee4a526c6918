//! Listener sockets: one `SO_REUSEPORT` socket per frontend per worker, so the kernel spreads
//! new connections over the workers with no hand-off between threads. All are bound up front
//! by the control plane, so a bind error stops the start with one clear line.

use std::io;
use std::net::SocketAddr;

use fulcrum_config::io_reason;
use socket2::{Domain, Protocol, Socket, Type};

const BACKLOG: i32 = 4096;
const UDP_BUFFER: usize = 4 << 20;

/// TCP_NOTSENT_LOWAT of every listener, inherited by the client sockets it accepts: a client
/// socket takes more of an answer only while less than this much of it waits unsent. Without
/// it the kernel lets a socket's send buffer grow to `tcp_wmem`'s maximum (4 MiB), so a
/// client that reads nothing parks up to 4 MiB of kernel memory per connection, and a few
/// thousand of them pass `tcp_mem` and make the kernel reset connections of every process.
/// With it the rest stays upstream, where the server's own buffers bound it.
/// 16 KiB, as Cloudflare's edge runs it: bulk answers through the balancer on loopback lose
/// 10-20 % (iperf3 -R, BENCHMARKS.md), a network's clients far less.
const UNSENT_LOWAT: u32 = 16 << 10;

/// Binds `count` listening sockets sharing `addr`. With port 0 the first socket gets a port
/// from the kernel and the others join it.
pub fn bind_group(addr: SocketAddr, count: usize) -> Result<Vec<std::net::TcpListener>, String> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let l = bind_one(addr).map_err(|e| format!("cannot bind {addr}: {}", io_reason(&e)))?;
        if addr.port() == 0 {
            addr = l.local_addr().map_err(|e| format!("cannot bind {addr}: {}", io_reason(&e)))?;
        }
        out.push(l);
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: set once here instead
    // of one setsockopt per connection.
    s.set_tcp_nodelay(true)?;
    s.set_tcp_notsent_lowat(UNSENT_LOWAT)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// Binds `count` UDP sockets sharing `addr` (the kernel spreads datagrams by source).
pub fn bind_udp_group(addr: SocketAddr, count: usize) -> Result<Vec<std::net::UdpSocket>, String> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let s = (|| {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            // The default ~200 KiB holds only ~200 small datagrams (each costs ~1 KiB of
            // buffer accounting): a burst would be dropped by the kernel before we see it.
            // The kernel caps this at net.core.rmem_max / wmem_max.
            let _ = s.set_recv_buffer_size(UDP_BUFFER);
            let _ = s.set_send_buffer_size(UDP_BUFFER);
            s.bind(&addr.into())?;
            io::Result::Ok(std::net::UdpSocket::from(s))
        })()
        .map_err(|e| format!("cannot bind udp {addr}: {}", io_reason(&e)))?;
        if addr.port() == 0 {
            addr =
                s.local_addr().map_err(|e| format!("cannot bind udp {addr}: {}", io_reason(&e)))?;
        }
        out.push(s);
    }
    Ok(out)
}

/// Errors of `accept(2)` that mean "out of a resource for now": back off and try again.
pub fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == libc_errno::EMFILE
            || code == libc_errno::ENFILE
            || code == libc_errno::ENOBUFS
            || code == libc_errno::ENOMEM
    )
}

/// The errno values the data plane checks (Linux): one table, in `fulcrum-core::blame`.
pub(crate) use fulcrum_core::blame::errno as libc_errno;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_and_unsent_lowat() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = group[0].local_addr().unwrap();
        assert_eq!(group[1].local_addr().unwrap(), addr, "the group shares one port");
        // SO_REUSEPORT spreads the connections by hash, so both sockets are drained, until all
        // have been seen or the deadline passes (the last handshake's ACK may still be on its
        // way to the accept queue when `connect` returns).
        let clients: Vec<_> =
            (0..64).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut seen = 0;
        while seen < clients.len() && std::time::Instant::now() < deadline {
            for l in &group {
                while let Ok((s, _)) = l.accept() {
                    let s = socket2::SockRef::from(&s);
                    assert!(s.tcp_nodelay().unwrap());
                    assert_eq!(s.tcp_notsent_lowat().unwrap(), UNSENT_LOWAT);
                    seen += 1;
                }
            }
            std::thread::yield_now();
        }
        assert_eq!(seen, clients.len());
    }
}
