//! The PROXY protocol (HAProxy's, v1 text and v2 binary): reading the header a trusted
//! balancer in front of fulcrum sends (`accept_proxy` on a frontend) and writing one to the
//! servers (`send_proxy` on a pool). Parsing and building are the `ppp` crate's and how many
//! bytes to read next is `fulcrum_core::proxy_header`'s; this module does the socket I/O:
//! exactly the header's bytes, bounded in size and time.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_config::ProxyVersion;
use fulcrum_core::proxy_header::{self, Step};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a trusted source has to send its header.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the PROXY header at the start of `s`: `Ok(Some(client))` for a proxied connection,
/// `Ok(None)` for a header that names no client (v1 `UNKNOWN`, v2 `LOCAL`: the balancer's own
/// check), an error for anything else (no header, a malformed one, too slow).
pub(crate) async fn read_header(s: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    tokio::time::timeout(HEADER_TIMEOUT, read(s))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no PROXY header in time"))?
}

async fn read(s: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    // fulcrum-core decides how much to read next, never past the header's end.
    let mut buf = [0u8; proxy_header::MAX_HEADER];
    let mut n = 0;
    loop {
        match proxy_header::step(&buf[..n]) {
            Ok(Step::Need(k)) => {
                let Some(to) = buf.get_mut(n..n + k) else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "PROXY header too long",
                    ));
                };
                s.read_exact(to).await?;
                n += k;
            }
            Ok(Step::Done { client, .. }) => return Ok(client),
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// The header naming `client` (and `local`, where it connected) for a server connection.
pub(crate) fn header(version: ProxyVersion, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    build(version, ppp::v2::Protocol::Stream, client, local)
}

/// The v2 header a UDP session's datagrams to its server start with (v1 has no UDP form).
pub(crate) fn datagram_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    build(ProxyVersion::V2, ppp::v2::Protocol::Datagram, client, local)
}

fn build(
    version: ProxyVersion,
    protocol: ppp::v2::Protocol,
    client: SocketAddr,
    local: SocketAddr,
) -> Vec<u8> {
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
                protocol,
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
        let d = datagram_header(c, l);
        let h = ppp::v2::Header::try_from(&d[..]).unwrap();
        assert_eq!(h.protocol, ppp::v2::Protocol::Datagram);
        assert!(matches!(h.addresses, ppp::v2::Addresses::IPv4(a) if a.source_port == 4321));
    }
}
