//! The messages a backend sends and their JSON payloads: the types, the exact JSON written by
//! [`super::encode_message`], and the strict reading and validation done for
//! [`super::Session::open`] (unknown fields, wrong types and out-of-range values are refused,
//! so a typo in a backend's agent shows up as an error instead of a silently ignored field).

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::{FrameError, VERSION, kind};

/// Longest pool name a HELLO may carry, in characters.
pub const MAX_POOL_LEN: usize = 64;

/// The state a backend asks to be in. `Drain` takes no new connections but keeps the open
/// ones; `Down` is out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    Up,
    Drain,
    Down,
}

impl AgentState {
    /// The wire and config spelling: `up`, `drain` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Up => "up",
            AgentState::Drain => "drain",
            AgentState::Down => "down",
        }
    }
}

/// First frame of a connection: the pool to join and the address clients should be sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub pool: String,
    /// `ip:port`, `[v6]:port` or just `:port` (the IP is then the connection's), port nonzero;
    /// kept as sent. [`registered_address`] gives the address it stands for.
    pub address: String,
    /// Must equal [`VERSION`].
    pub version: u8,
}

/// A load report. `weight` and `state`, when absent, leave the balancer's current values alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Clients the backend is serving now.
    pub clients: u64,
    /// Requests or connections waiting in the backend's own queue.
    pub queue: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AgentState>,
}

/// One authenticated message from a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Report(Report),
    Bye,
}

impl Message {
    /// The frame kind this message travels as.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello(_) => kind::HELLO,
            Message::Report(_) => kind::REPORT,
            Message::Bye => kind::BYE,
        }
    }
}

/// The payload bytes of `msg`: compact JSON in field declaration order, empty for BYE.
pub(super) fn encode_payload(msg: &Message) -> Vec<u8> {
    // Serialising these plain structs (strings, integers, unit enums) cannot fail: serde_json
    // errors only on I/O or non-string map keys, neither of which exists here.
    match msg {
        Message::Hello(h) => serde_json::to_vec(h).unwrap_or_default(),
        Message::Report(r) => serde_json::to_vec(r).unwrap_or_default(),
        Message::Bye => Vec::new(),
    }
}

/// Reads and validates the payload of an authenticated frame whose kind the session already
/// allowed. Kinds other than HELLO, REPORT and BYE are [`FrameError::UnexpectedKind`].
pub(super) fn decode_payload(frame_kind: u8, payload: &[u8]) -> Result<Message, FrameError> {
    match frame_kind {
        kind::HELLO => {
            let hello: Hello = from_json_object(payload)?;
            validate_hello(&hello)?;
            Ok(Message::Hello(hello))
        }
        kind::REPORT => Ok(Message::Report(from_json_object(payload)?)),
        kind::BYE if payload.is_empty() => Ok(Message::Bye),
        kind::BYE => Err(FrameError::BadPayload("BYE carries no payload".into())),
        other => Err(FrameError::UnexpectedKind(other)),
    }
}

/// serde's derived structs also accept a JSON array of the fields in order; the protocol
/// promises objects only, so anything else is refused before serde sees it.
fn from_json_object<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, FrameError> {
    let first = payload.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(FrameError::BadPayload("payload is not a JSON object".into()));
    }
    serde_json::from_slice(payload).map_err(|e| FrameError::BadPayload(e.to_string()))
}

fn validate_hello(h: &Hello) -> Result<(), FrameError> {
    if h.version != VERSION {
        return Err(FrameError::BadPayload(format!(
            "unsupported version {}, this balancer speaks {VERSION}",
            h.version
        )));
    }
    if h.pool.is_empty() {
        return Err(FrameError::BadPayload("pool is empty".into()));
    }
    if h.pool.chars().count() > MAX_POOL_LEN {
        return Err(FrameError::BadPayload(format!(
            "pool is longer than {MAX_POOL_LEN} characters"
        )));
    }
    claim(&h.address).map(|_| ())
}

/// What a HELLO's `address` claims: a whole address, or only a port on the connection's IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Port(u16),
    Address(SocketAddr),
}

/// Reads a HELLO's `address`: `:port`, `ip:port` or `[v6]:port`, port nonzero.
pub fn claim(address: &str) -> Result<Claim, FrameError> {
    let port_zero = || FrameError::BadPayload("address has port 0".into());
    if let Some(port) = address.strip_prefix(':') {
        // Digits only: u16's parser would also take a leading '+'.
        return match port.parse::<u16>() {
            Ok(0) => Err(port_zero()),
            Ok(p) if port.bytes().all(|b| b.is_ascii_digit()) => Ok(Claim::Port(p)),
            _ => Err(FrameError::BadPayload("address is not :port, ip:port or [ipv6]:port".into())),
        };
    }
    // SocketAddr's grammar is exactly `ip:port` or `[v6]:port` (no host names, which would
    // need a resolver the data plane must not call).
    match address.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(Claim::Address(a)),
        Ok(_) => Err(port_zero()),
        Err(_) => {
            Err(FrameError::BadPayload("address is not :port, ip:port or [ipv6]:port".into()))
        }
    }
}

/// The address a HELLO registers, given the IP its connection comes from. A bare port takes
/// the peer's IP. A whole address must be on the peer's IP unless the pool trusts claimed
/// addresses: the key is shared by every backend of a pool, so without this rule any one key
/// holder could drain, weigh down or redirect another backend by claiming its address. IPv4
/// peers seen through a dual-stack socket (`::ffff:a.b.c.d`) count as IPv4.
pub fn registered_address(
    address: &str,
    peer: IpAddr,
    trust_claimed: bool,
) -> Result<SocketAddr, FrameError> {
    let peer = peer.to_canonical();
    match claim(address)? {
        Claim::Port(port) => Ok(SocketAddr::new(peer, port)),
        Claim::Address(a) if trust_claimed => Ok(a),
        Claim::Address(a) if a.ip().to_canonical() == peer => Ok(SocketAddr::new(peer, a.port())),
        Claim::Address(a) => Err(FrameError::ClaimRefused { claimed: a.ip(), peer }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(kind: u8, payload: &str) -> String {
        match decode_payload(kind, payload.as_bytes()) {
            Err(FrameError::BadPayload(why)) => why,
            other => panic!("{payload:?} gave {other:?}"),
        }
    }

    fn hello(pool: &str, address: &str) -> String {
        format!(r#"{{"pool": "{pool}", "address": "{address}", "version": 1}}"#)
    }

    #[test]
    fn json_is_compact_in_declaration_order() {
        let h = Message::Hello(Hello {
            pool: "app".into(),
            address: "127.0.0.1:9001".into(),
            version: 1,
        });
        assert_eq!(encode_payload(&h), br#"{"pool":"app","address":"127.0.0.1:9001","version":1}"#);
        let r = Report { clients: 3, queue: 0, weight: Some(50), state: Some(AgentState::Drain) };
        assert_eq!(
            encode_payload(&Message::Report(r.clone())),
            br#"{"clients":3,"queue":0,"weight":50,"state":"drain"}"#
        );
        let bare = Report { weight: None, state: None, ..r };
        assert_eq!(encode_payload(&Message::Report(bare)), br#"{"clients":3,"queue":0}"#);
        assert!(encode_payload(&Message::Bye).is_empty());
    }

    #[test]
    fn reads_the_documented_examples() {
        let doc = r#"{"clients": 3, "queue": 0, "weight": 50, "state": "drain"}"#;
        assert_eq!(
            decode_payload(kind::REPORT, doc.as_bytes()),
            Ok(Message::Report(Report {
                clients: 3,
                queue: 0,
                weight: Some(50),
                state: Some(AgentState::Drain)
            }))
        );
        let minimal = decode_payload(kind::REPORT, br#" {"queue":7,"clients":0}"#);
        assert_eq!(
            minimal,
            Ok(Message::Report(Report { clients: 0, queue: 7, weight: None, state: None }))
        );
        let nulls =
            decode_payload(kind::REPORT, br#"{"clients":1,"queue":1,"weight":null,"state":null}"#);
        assert_eq!(
            nulls,
            Ok(Message::Report(Report { clients: 1, queue: 1, weight: None, state: None })),
            "null means not given"
        );
        for (state, want) in
            [("up", AgentState::Up), ("drain", AgentState::Drain), ("down", AgentState::Down)]
        {
            let p = format!(r#"{{"clients":1,"queue":1,"state":"{state}"}}"#);
            let Ok(Message::Report(r)) = decode_payload(kind::REPORT, p.as_bytes()) else {
                panic!("{p}")
            };
            assert_eq!(r.state, Some(want));
            assert_eq!(want.as_str(), state);
        }
        for addr in
            ["127.0.0.1:9001", "[::1]:80", "[2001:db8::7]:65535", "0.0.0.0:1", ":9001", ":1"]
        {
            assert!(decode_payload(kind::HELLO, hello("app", addr).as_bytes()).is_ok(), "{addr}");
        }
        let long_pool = "é".repeat(MAX_POOL_LEN);
        assert!(decode_payload(kind::HELLO, hello(&long_pool, "10.0.0.1:1").as_bytes()).is_ok());
    }

    #[test]
    fn refuses_malformed_reports() {
        for p in [
            "",
            "[3, 0]",
            "null",
            "3",
            r#"{"clients": 3}"#,
            r#"{"queue": 3}"#,
            r#"{"clients": -1, "queue": 0}"#,
            r#"{"clients": 1.5, "queue": 0}"#,
            r#"{"clients": "3", "queue": 0}"#,
            r#"{"clients": 3, "queue": 0, "weight": -1}"#,
            r#"{"clients": 3, "queue": 0, "weight": 4294967296}"#,
            r#"{"clients": 3, "queue": 0, "state": "maint"}"#,
            r#"{"clients": 3, "queue": 0, "extra": true}"#,
            r#"{"clients": 3, "clients": 4, "queue": 0}"#,
            r#"{"clients": 3, "queue": 0} {}"#,
            r#"{"clients": 3, "queue": 0"#,
        ] {
            bad(kind::REPORT, p);
        }
        assert!(bad(kind::REPORT, r#"{"clients":1,"queue":1,"cpu":5}"#).contains("unknown field"));
        assert!(decode_payload(kind::REPORT, b"{\"clients\":1,\"queue\":\xff}").is_err());
    }

    #[test]
    fn refuses_malformed_hellos() {
        assert!(
            bad(kind::HELLO, r#"{"pool":"a","address":"1.2.3.4:5","version":2}"#)
                .contains("version 2")
        );
        bad(kind::HELLO, r#"{"pool":"a","address":"1.2.3.4:5","version":256}"#);
        bad(kind::HELLO, r#"{"pool":"a","address":"1.2.3.4:5"}"#);
        bad(kind::HELLO, r#"{"pool":"a","address":"1.2.3.4:5","version":1,"x":0}"#);
        assert_eq!(bad(kind::HELLO, &hello("", "1.2.3.4:5")), "pool is empty");
        bad(kind::HELLO, &hello(&"p".repeat(MAX_POOL_LEN + 1), "1.2.3.4:5"));
        assert_eq!(bad(kind::HELLO, &hello("a", "1.2.3.4:0")), "address has port 0");
        assert_eq!(bad(kind::HELLO, &hello("a", ":0")), "address has port 0");
        for addr in [
            "1.2.3.4",
            "localhost:80",
            "::1:80",
            "1.2.3.4:65536",
            "[::1]",
            "",
            " 1.2.3.4:5",
            ":",
            ":+80",
            ": 80",
            ":65536",
            ":80 ",
        ] {
            bad(kind::HELLO, &hello("a", addr));
        }
    }

    #[test]
    fn a_bare_port_takes_the_peer_ip_and_another_ip_needs_trust() {
        let peer: IpAddr = [10, 0, 0, 7].into();
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(registered_address(":9001", peer, false), Ok(at("10.0.0.7:9001")));
        assert_eq!(registered_address(":9001", peer, true), Ok(at("10.0.0.7:9001")));
        assert_eq!(registered_address("10.0.0.7:9001", peer, false), Ok(at("10.0.0.7:9001")));
        assert_eq!(
            registered_address("10.0.0.8:9001", peer, false),
            Err(FrameError::ClaimRefused { claimed: [10, 0, 0, 8].into(), peer })
        );
        assert_eq!(registered_address("10.0.0.8:9001", peer, true), Ok(at("10.0.0.8:9001")));
        // A dual-stack listener sees IPv4 peers as mapped addresses: still the same host.
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(registered_address(":80", mapped, false), Ok(at("10.0.0.7:80")));
        assert_eq!(registered_address("10.0.0.7:80", mapped, false), Ok(at("10.0.0.7:80")));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(registered_address(":80", v6, false), Ok(at("[2001:db8::1]:80")));
        assert!(registered_address("[2001:db8::2]:80", v6, false).is_err());
        assert!(matches!(
            registered_address("10.0.0.7:0", peer, true),
            Err(FrameError::BadPayload(_))
        ));
    }

    #[test]
    fn bye_is_empty_and_other_kinds_are_unexpected() {
        assert_eq!(decode_payload(kind::BYE, b""), Ok(Message::Bye));
        bad(kind::BYE, "{}");
        for k in [kind::CHALLENGE, kind::ERROR, 0x00, 0x13, 0xff] {
            assert_eq!(decode_payload(k, b"{}"), Err(FrameError::UnexpectedKind(k)));
        }
    }
}
