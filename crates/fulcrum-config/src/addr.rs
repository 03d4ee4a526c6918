//! Address syntax shared by the config file and the `forward` command line:
//! listen addresses `[IP:]PORT` and server addresses `[HOST:]PORT` (IPv6 as `[::1]:PORT`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Where a frontend listens.
pub type ListenAddr = SocketAddr;

/// A server's address as written, with the host kept as a name when it is not a literal IP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
    /// The literal IP, when the host is one (no resolution needed).
    pub ip: Option<IpAddr>,
}

impl ServerAddr {
    pub fn from_socket(addr: SocketAddr) -> Self {
        Self { host: addr.ip().to_string(), port: addr.port(), ip: Some(addr.ip()) }
    }
    /// The literal socket address, if the host is an IP.
    pub fn socket(&self) -> Option<SocketAddr> {
        self.ip.map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(IpAddr::V6(_)) => write!(f, "[{}]:{}", self.host, self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() {
        return Err("missing port".into());
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port \"{s}\" is not a number"));
    }
    match s.parse::<u32>() {
        Ok(p) if p <= 65_535 => Ok(p as u16),
        _ => Err(format!("port {s} is out of range (0-65535)")),
    }
}

/// Splits `host:port`, `[v6]:port` or a bare `port` (host `None`).
fn split_host_port(s: &str) -> Result<(Option<&str>, &str), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return Err(format!("\"{s}\": missing ']' after IPv6 address"));
        };
        let host = &rest[..end];
        let Some(port) = rest[end + 1..].strip_prefix(':') else {
            return Err(format!("\"{s}\": expected ':PORT' after ']'"));
        };
        return Ok((Some(host), port));
    }
    match s.rfind(':') {
        Some(i) => {
            let host = &s[..i];
            if host.contains(':') {
                return Err(format!("\"{s}\": write IPv6 addresses in brackets, as [::1]:PORT"));
            }
            Ok((Some(host), &s[i + 1..]))
        }
        None => Ok((None, s)),
    }
}

/// Parses a listen address `[IP:]PORT`; a bare port listens on all interfaces.
pub fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    let s = s.trim();
    let (host, port) = split_host_port(s)?;
    let port = parse_port(port)?;
    let ip = match host {
        None | Some("") | Some("*") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(h) => h
            .parse::<IpAddr>()
            .map_err(|_| format!("\"{h}\" is not an IP address (a listen address is [IP:]PORT)"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// Parses a server address `[HOST:]PORT`; a bare port means localhost (127.0.0.1).
pub fn parse_dest(s: &str) -> Result<ServerAddr, String> {
    let s = s.trim();
    let (host, port) = split_host_port(s)?;
    let port = parse_port(port)?;
    if port == 0 {
        return Err("port 0 is not a valid server port".into());
    }
    let host = match host {
        None => {
            return Ok(ServerAddr::from_socket(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)));
        }
        Some(h) => h,
    };
    if host.is_empty() {
        return Err(format!("\"{s}\": missing host before ':'"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        if ip.is_unspecified() {
            return Err(format!("\"{s}\": {ip} is not a server address"));
        }
        return Ok(ServerAddr::from_socket(SocketAddr::new(ip, port)));
    }
    if host.parse::<Ipv6Addr>().is_err() && !valid_hostname(host) {
        return Err(format!("\"{host}\" is neither an IP address nor a valid host name"));
    }
    Ok(ServerAddr { host: host.to_ascii_lowercase(), port, ip: None })
}

fn valid_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen("8080").unwrap(), "0.0.0.0:8080".parse().unwrap());
        assert_eq!(parse_listen("127.0.0.1:8080").unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(parse_listen("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        assert!(parse_listen("127.0.0.1:70000").unwrap_err().contains("out of range"));
        assert!(parse_listen("localhost:80").is_err());
        assert!(parse_listen("::1:80").unwrap_err().contains("brackets"));
        assert!(parse_listen("").is_err());
    }

    #[test]
    fn dest_forms() {
        assert_eq!(parse_dest("9001").unwrap().to_string(), "127.0.0.1:9001");
        assert_eq!(parse_dest("10.0.0.1:9001").unwrap().to_string(), "10.0.0.1:9001");
        assert_eq!(parse_dest("[::1]:9001").unwrap().to_string(), "[::1]:9001");
        let named = parse_dest("Backend-1.local:80").unwrap();
        assert_eq!((named.host.as_str(), named.ip), ("backend-1.local", None));
        assert!(parse_dest("9x").is_err());
        assert!(parse_dest("127.0.0.1:0").is_err());
        assert!(parse_dest(":80").is_err());
        assert!(parse_dest("bad_host:80").is_err());
        assert!(parse_dest("0.0.0.0:80").is_err());
    }
}
