//! The PROXY protocol (HAProxy's, v1 text and v2 binary): reading the header a trusted
//! balancer in front of fulcrum sends (`accept_proxy` on a frontend) and writing one to the
//! servers (`send_proxy` on a pool). Parsing and building are the `ppp` crate's; this module
//! only reads exactly the header's bytes off the socket, bounded in size and time.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_config::ProxyVersion;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a trusted source has to send its header.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A v1 header is at most 107 bytes (the protocol's own bound).
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v2 headers carry TLVs after the addresses; more than this is refused.
const V2_MAX_BODY: usize = 512;

/// Reads the PROXY header at the start of `s`: `Ok(Some(client))` for a proxied connection,
/// `Ok(None)` for a header that names no client (v1 `UNKNOWN`, v2 `LOCAL`: the balancer's own
/// check), an error for anything else (no header, a malformed one, too slow).
pub(crate) async fn read_header(s: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    tokio::time::timeout(HEADER_TIMEOUT, read(s))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no PROXY header in time"))?
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

async fn read(s: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    let mut buf = [0u8; 16 + V2_MAX_BODY];
    s.read_exact(&mut buf[..8]).await?;
    if buf.starts_with(b"PROXY ") {
        // Byte by byte up to the line end: nothing after the header may be consumed.
        let mut n = 8;
        while !buf[..n].ends_with(b"\r\n") {
            if n >= V1_MAX {
                return Err(bad("PROXY v1 header longer than 107 bytes"));
            }
            s.read_exact(&mut buf[n..n + 1]).await?;
            n += 1;
        }
        let text = std::str::from_utf8(&buf[..n]).map_err(|_| bad("PROXY v1 header not text"))?;
        let h = ppp::v1::Header::try_from(text).map_err(|e| bad(format!("PROXY v1: {e}")))?;
        return Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        });
    }
    if buf[..8] != V2_SIGNATURE[..8] {
        return Err(bad("no PROXY header"));
    }
    s.read_exact(&mut buf[8..16]).await?;
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX_BODY {
        return Err(bad(format!("PROXY v2 header of {len} bytes")));
    }
    s.read_exact(&mut buf[16..16 + len]).await?;
    let h =
        ppp::v2::Header::try_from(&buf[..16 + len]).map_err(|e| bad(format!("PROXY v2: {e}")))?;
    if h.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match h.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        _ => None,
    })
}

/// The header naming `client` (and `local`, where it connected) for a server connection.
pub(crate) fn header(version: ProxyVersion, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    // A v4 client seen on a v6 socket (or the other way) is written in one family.
    let (client, local) = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V6(l)) => match l.ip().to_ipv4_mapped() {
            Some(v4) => (client, SocketAddr::from((v4, l.port()))),
            None => (SocketAddr::from((client.ip().to_canonical(), client.port())), local),
        },
        (SocketAddr::V6(c), SocketAddr::V4(_)) => match c.ip().to_ipv4_mapped() {
            Some(v4) => (SocketAddr::from((v4, c.port())), local),
            None => (client, local),
        },
        _ => (client, local),
    };
    match version {
        ProxyVersion::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                local.ip(),
                client.port(),
                local.port()
            )
            .into_bytes()
        }
        ProxyVersion::V2 => {
            let addresses: ppp::v2::Addresses = match (client, local) {
                (SocketAddr::V4(c), SocketAddr::V4(l)) => {
                    ppp::v2::IPv4::new(*c.ip(), *l.ip(), c.port(), l.port()).into()
                }
                (c, l) => {
                    let v6 = |a: SocketAddr| match a {
                        SocketAddr::V6(a) => *a.ip(),
                        SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
                    };
                    ppp::v2::IPv6::new(v6(c), v6(l), c.port(), l.port()).into()
                }
            };
            ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                ppp::v2::Protocol::Stream,
                addresses,
            )
            .build()
            .unwrap_or_default()
        }
    }
}

/// Writes the header to a fresh server connection.
pub(crate) async fn send(
    upstream: &mut TcpStream,
    version: ProxyVersion,
    client: SocketAddr,
    local: SocketAddr,
) -> io::Result<()> {
    upstream.write_all(&header(version, client, local)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers_parse_back() {
        let c: SocketAddr = "192.0.2.7:4321".parse().unwrap();
        let l: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v1 = header(ProxyVersion::V1, c, l);
        assert_eq!(v1, b"PROXY TCP4 192.0.2.7 127.0.0.1 4321 80\r\n");
        let v2 = header(ProxyVersion::V2, c, l);
        let h = ppp::v2::Header::try_from(&v2[..]).unwrap();
        assert_eq!(h.command, ppp::v2::Command::Proxy);
        assert!(matches!(h.addresses, ppp::v2::Addresses::IPv4(a) if a.source_port == 4321));
    }
}
