//! What a request and a response carry across the proxy: hop-by-hop headers removed both
//! ways, the forwarding headers (`X-Forwarded-For/-Proto/-Host`, `Via`, `X-Request-Id`,
//! opt-in `Forwarded`), who the client is when a trusted proxy says so, and the request head
//! rewritten for the server (a route's changes, the target form its HTTP version wants).

use std::net::IpAddr;

use fulcrum_config::HttpVersion;
use fulcrum_core::route::strip_path;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version, request::Parts};

use crate::routes::RouteState;
use ipnet::IpNet;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop, never the message (RFC 9110 7.6.1, plus the
/// `Proxy-Connection` and `Keep-Alive` of old clients).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
}

/// Whether an HTTP/1.1 request asks to switch protocols (`Connection: upgrade` and an
/// `Upgrade` header), such as a WebSocket handshake.
pub(crate) fn wants_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && connection_lists(headers, "upgrade")
}

fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers and those the `Connection` header names. With `upgrade`, the
/// `Upgrade` header and `Connection: upgrade` are kept: they are the message then.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Names listed in Connection are hop-by-hop too; collect them first (rare, small).
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for n in listed {
        headers.remove(n);
    }
    let upgrade_value = if upgrade { headers.get(header::UPGRADE).cloned() } else { None };
    let has_hop = headers.keys().any(is_hop_by_hop);
    if has_hop {
        let names: Vec<HeaderName> = headers.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
        for n in names {
            headers.remove(n);
        }
    }
    if let Some(u) = upgrade_value {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The request's host: HTTP/2's `:authority` (in the URI) or the `Host` header.
pub(crate) fn host_of(parts: &Parts) -> Option<HeaderValue> {
    if let Some(a) = parts.uri.authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    parts.headers.get(header::HOST).cloned()
}

/// The client as the servers should see it: the peer, or, when the peer is a trusted proxy,
/// the right-most address of its `X-Forwarded-For` that is not itself a trusted proxy.
pub(crate) fn effective_client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in values.iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    client
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|n| n.contains(&ip))
}

/// What `prepare_request` needs to know about the connection.
pub(crate) struct Forwarding<'a> {
    pub(crate) peer: IpAddr,
    pub(crate) trusted: &'a [IpNet],
    pub(crate) proto: &'static str,
    pub(crate) forwarded: bool,
    /// `https`: `client_cert_header`, always cleared of what the client sent, and the verified
    /// subject to set it to when the client presented a certificate.
    pub(crate) client_cert: Option<(&'a HeaderName, Option<&'a HeaderValue>)>,
}

/// Rewrites a client's request head for the server: hop-by-hop headers out, the forwarding
/// headers in. Returns the request id (the client's if valid, else a new one).
pub(crate) fn prepare_request(
    parts: &mut Parts,
    host: Option<&HeaderValue>,
    upgrade: bool,
    f: &Forwarding<'_>,
) -> HeaderValue {
    let h = &mut parts.headers;
    strip_hop_by_hop(h, upgrade);
    if let Some((name, subject)) = f.client_cert {
        // `remove` takes every copy; only the verified subject goes on.
        h.remove(name);
        if let Some(v) = subject {
            h.insert(name, v.clone());
        }
    }
    let trusted = is_trusted(f.peer, f.trusted);
    let peer = HeaderValue::from_str(&f.peer.to_string()).unwrap_or(HeaderValue::from_static(""));
    match h.get(&X_FORWARDED_FOR).filter(|_| trusted) {
        Some(old) => {
            let mut v = old.as_bytes().to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                h.insert(&X_FORWARDED_FOR, v);
            }
        }
        None => {
            h.insert(&X_FORWARDED_FOR, peer);
        }
    }
    if !(trusted && h.contains_key(&X_FORWARDED_PROTO)) {
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(f.proto));
    }
    if !(trusted && h.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(v) => h.insert(&X_FORWARDED_HOST, v.clone()),
            None => h.remove(&X_FORWARDED_HOST),
        };
    }
    let via = match parts.version {
        Version::HTTP_2 => "2 fulcrum",
        Version::HTTP_10 => "1.0 fulcrum",
        _ => "1.1 fulcrum",
    };
    h.append(header::VIA, HeaderValue::from_static(via));
    if f.forwarded {
        let for_ = match f.peer {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let mut v = format!("for={for_};proto={}", f.proto);
        if let Some(host) = host.and_then(|v| v.to_str().ok()) {
            v.push_str(";host=\"");
            v.push_str(host);
            v.push('"');
        }
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.append(header::FORWARDED, v);
        }
    }
    match h.get(&X_REQUEST_ID) {
        Some(v) if valid_request_id(v.as_bytes()) => v.clone(),
        _ => {
            let id = new_request_id();
            h.insert(&X_REQUEST_ID, id.clone());
            id
        }
    }
}

/// A request id worth keeping: 1 to 200 bytes of letters, digits and `-_.:+/=`.
fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 200
        && v.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b))
}

/// 32 hex digits from the thread's random generator.
fn new_request_id() -> HeaderValue {
    let n = fastrand::u128(..);
    HeaderValue::from_str(&format!("{n:032x}")).unwrap_or(HeaderValue::from_static("0"))
}

/// The request target as the server's protocol wants it: origin form and a `Host` header
/// for HTTP/1.1, an absolute URI (`:scheme` `https` over TLS to the server, `:authority`) for
/// HTTP/2.
pub(crate) fn adapt_target(
    parts: &mut http::request::Parts,
    host: Option<&HeaderValue>,
    v: HttpVersion,
    tls: bool,
) {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    match v {
        HttpVersion::H1 => {
            if parts.uri.authority().is_some() || parts.uri.scheme().is_some() {
                if let Ok(u) = pq.parse::<Uri>() {
                    parts.uri = u;
                }
            }
            if !parts.headers.contains_key(header::HOST)
                && let Some(h) = host
            {
                parts.headers.insert(header::HOST, h.clone());
            }
        }
        HttpVersion::H2 => {
            let authority = host.and_then(|h| h.to_str().ok()).unwrap_or("localhost");
            let scheme = if tls { "https" } else { "http" };
            if let Ok(u) =
                Uri::builder().scheme(scheme).authority(authority).path_and_query(pq).build()
            {
                parts.uri = u;
            }
            parts.headers.remove(header::HOST);
        }
    }
}

/// What a route changes before the request goes on: its path prefix off (the query kept),
/// then the headers it removes and sets.
pub(crate) fn apply_route(r: &RouteState, parts: &mut http::request::Parts) {
    if let Some(prefix) = &r.strip_prefix {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let stripped = strip_path(target, prefix);
        if stripped != target {
            let mut p = parts.uri.clone().into_parts();
            if let Ok(pq) = stripped.parse() {
                p.path_and_query = Some(pq);
                if let Ok(u) = Uri::from_parts(p) {
                    parts.uri = u;
                }
            }
        }
    }
    for n in &r.remove_headers {
        parts.headers.remove(n);
    }
    for (n, v) in &r.set_headers {
        parts.headers.insert(n, v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri("/a?b=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn fwd(peer: &str, trusted: &[IpNet]) -> Forwarding<'static> {
        let trusted: &'static [IpNet] = Box::leak(trusted.to_vec().into_boxed_slice());
        Forwarding {
            peer: peer.parse().unwrap(),
            trusted,
            proto: "http",
            forwarded: true,
            client_cert: None,
        }
    }

    #[test]
    fn untrusted_clients_get_their_forwarding_headers_replaced() {
        let mut p = parts(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("transfer-encoding", "chunked"),
            ("x-request-id", "bad id with spaces"),
        ]);
        let host = HeaderValue::from_static("example.com");
        let id = prepare_request(&mut p, Some(&host), false, &fwd("10.1.2.3", &[]));
        let h = &p.headers;
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["via"], "1.1 fulcrum");
        assert_eq!(h["forwarded"], "for=10.1.2.3;proto=http;host=\"example.com\"");
        for gone in ["connection", "x-secret", "keep-alive", "transfer-encoding"] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"], id);
    }

    #[test]
    fn a_trusted_proxy_appends_and_names_the_client() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let mut p = parts(&[("x-forwarded-for", "1.2.3.4, 10.9.9.9"), ("x-request-id", "abc-1")]);
        let client = effective_client("10.1.1.1".parse().unwrap(), &p.headers, &trusted);
        assert_eq!(client, "1.2.3.4".parse::<IpAddr>().unwrap());
        let id = prepare_request(&mut p, None, false, &fwd("10.1.1.1", &trusted));
        assert_eq!(p.headers["x-forwarded-for"], "1.2.3.4, 10.9.9.9, 10.1.1.1");
        assert_eq!(id, "abc-1");
        // An untrusted peer's claims are ignored.
        let p = parts(&[("x-forwarded-for", "1.2.3.4")]);
        let client = effective_client("8.8.8.8".parse().unwrap(), &p.headers, &trusted);
        assert_eq!(client, "8.8.8.8".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn client_copies_of_the_certificate_header_never_pass() {
        let name = HeaderName::from_static("x-client-cert-subject");
        let raw = [("x-client-cert-subject", "CN=forged"), ("X-Client-Cert-Subject", "CN=again")];
        let mut f = fwd("10.1.2.3", &[]);
        // No certificate: every copy the client sent is gone, nothing is added.
        f.client_cert = Some((&name, None));
        let mut p = parts(&raw);
        prepare_request(&mut p, None, false, &f);
        assert!(!p.headers.contains_key(&name));
        // A verified certificate: exactly its subject.
        let subject = HeaderValue::from_static("CN=client,O=Test");
        f.client_cert = Some((&name, Some(&subject)));
        let mut p = parts(&raw);
        prepare_request(&mut p, None, false, &f);
        let got: Vec<_> = p.headers.get_all(&name).iter().collect();
        assert_eq!(got, [&subject]);
    }

    #[test]
    fn upgrade_headers_survive_for_an_upgrade() {
        let mut p = parts(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(Version::HTTP_11, &p.headers));
        strip_hop_by_hop(&mut p.headers, true);
        assert_eq!(p.headers["upgrade"], "websocket");
        assert_eq!(p.headers["connection"], "upgrade");
    }
}
