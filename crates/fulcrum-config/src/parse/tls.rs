//! The TLS tables: an `https` frontend's `[frontend.NAME.tls]` (its certificates and client
//! certificate rules, read by the proxy when the frontend is bound) and a pool's `[pool.NAME.tls]` (how fulcrum speaks TLS
//! to its servers), and the check that a pool with TLS only serves frontends that use it.

use toml::de::{DeTable, DeValue};

use super::{Value, Walker};
use crate::model::*;

const TLS_KEYS: &[&str] = &[
    "certificates",
    "min_version",
    "sni_strict",
    "client_ca",
    "client_auth",
    "client_cert_header",
    "session_resumption",
];
const CERT_KEYS: &[&str] = &["cert", "key"];
const POOL_TLS_KEYS: &[&str] = &["enabled", "ca", "server_name", "verify", "cert", "key", "alpn"];
/// Longest ALPN protocol name (its length is one byte on the wire).
const MAX_ALPN_LEN: usize = 255;

/// Headers fulcrum writes itself or that frame the message: a client certificate's subject
/// may not take their place.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "via",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// Whether `name` can be `client_cert_header`: an HTTP field name (RFC 9110 token) that is
/// not one of [`RESERVED_HEADERS`].
fn client_cert_header(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("\"{name}\" is not an HTTP header name"));
    }
    if RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(format!("\"{name}\" is a header fulcrum writes or that frames the message"));
    }
    Ok(())
}

impl Walker<'_> {
    /// `[frontend.NAME.tls]`: required on `https`, refused elsewhere.
    pub(super) fn tls_frontend(
        &mut self,
        t: &DeTable<'_>,
        v: &Value<'_>,
        path: &str,
        f: &mut Frontend,
    ) -> bool {
        let tpath = format!("{path}.tls");
        let Some(x) = t.get("tls") else {
            if f.protocol == Protocol::Https {
                self.error(
                    v,
                    &tpath,
                    "missing table (an https frontend needs [frontend.NAME.tls] with \
                     certificates = [{ cert = \"PATH\", key = \"PATH\" }])",
                );
                return false;
            }
            return true;
        };
        if f.protocol != Protocol::Https {
            self.error(x, &tpath, "only a protocol = \"https\" frontend terminates TLS");
            return false;
        }
        let Some(tt) = self.table(x, &tpath) else { return false };
        self.check_keys(tt, &tpath, TLS_KEYS);
        let mut ok = true;
        let mut tls = TlsFrontend {
            certificates: Vec::new(),
            min_version: TlsVersion::V1_2,
            sni_strict: false,
            session_resumption: true,
            client_ca: None,
            client_auth: ClientAuth::Required,
            client_cert_header: DEFAULT_CLIENT_CERT_HEADER.to_string(),
        };
        match tt.get("certificates") {
            Some(cv) => {
                let ckey = format!("{tpath}.certificates");
                match cv.get_ref() {
                    DeValue::Array(items) if !items.is_empty() => {
                        for (i, item) in items.iter().enumerate() {
                            let ikey = format!("{ckey}[{i}]");
                            let Some(it) = self.table(item, &ikey) else {
                                ok = false;
                                continue;
                            };
                            self.check_keys(it, &ikey, CERT_KEYS);
                            let mut file = |k: &str| -> Option<std::path::PathBuf> {
                                match it.get(k) {
                                    Some(pv) => self
                                        .string(pv, &format!("{ikey}.{k}"))
                                        .map(|p| self.relative(p)),
                                    None => {
                                        self.error(
                                            item,
                                            &format!("{ikey}.{k}"),
                                            "missing key (a PEM file)",
                                        );
                                        None
                                    }
                                }
                            };
                            match (file("cert"), file("key")) {
                                (Some(cert), Some(key)) => {
                                    tls.certificates.push(CertFiles { cert, key })
                                }
                                _ => ok = false,
                            }
                        }
                    }
                    _ => {
                        self.error(
                            cv,
                            &ckey,
                            "expected a non-empty list of { cert = \"PATH\", key = \"PATH\" }",
                        );
                        ok = false;
                    }
                }
            }
            None => {
                self.error(
                    x,
                    &format!("{tpath}.certificates"),
                    "missing key (at least one { cert, key })",
                );
                ok = false;
            }
        }
        if let Some(mv) = tt.get("min_version") {
            let key = format!("{tpath}.min_version");
            match self.string(mv, &key) {
                Some("1.2") => tls.min_version = TlsVersion::V1_2,
                Some("1.3") => tls.min_version = TlsVersion::V1_3,
                Some(other) => {
                    self.error(
                        mv,
                        &key,
                        format!("unsupported version \"{other}\" (expected: \"1.2\", \"1.3\")"),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(sv) = tt.get("sni_strict") {
            match self.boolean(sv, &format!("{tpath}.sni_strict")) {
                Some(b) => tls.sni_strict = b,
                None => ok = false,
            }
        }
        if let Some(sv) = tt.get("session_resumption") {
            match self.boolean(sv, &format!("{tpath}.session_resumption")) {
                Some(b) => tls.session_resumption = b,
                None => ok = false,
            }
        }
        ok &= self.client_certs(tt, &tpath, &mut tls);
        f.tls = Some(tls);
        ok
    }

    /// `client_ca`, `client_auth` and `client_cert_header` of `[frontend.NAME.tls]`.
    fn client_certs(&mut self, tt: &DeTable<'_>, tpath: &str, tls: &mut TlsFrontend) -> bool {
        let mut ok = true;
        if let Some(v) = tt.get("client_ca") {
            match self.string(v, &format!("{tpath}.client_ca")) {
                Some(p) => tls.client_ca = Some(self.relative(p)),
                None => ok = false,
            }
        }
        if let Some(v) = tt.get("client_auth") {
            let key = format!("{tpath}.client_auth");
            match self.string(v, &key) {
                Some("optional") => tls.client_auth = ClientAuth::Optional,
                Some("required") => tls.client_auth = ClientAuth::Required,
                Some(other) => {
                    let m =
                        format!("unknown value \"{other}\" (expected: \"optional\", \"required\")");
                    self.error(v, &key, m);
                    ok = false;
                }
                None => ok = false,
            }
            if !tt.contains_key("client_ca") {
                self.error(
                    v,
                    &key,
                    "needs client_ca (the CAs client certificates are checked against)",
                );
                ok = false;
            }
        }
        if let Some(v) = tt.get("client_cert_header") {
            let key = format!("{tpath}.client_cert_header");
            match self.string(v, &key) {
                Some(name) => match client_cert_header(name) {
                    Ok(()) => tls.client_cert_header = name.to_string(),
                    Err(m) => {
                        self.error(v, &key, m);
                        ok = false;
                    }
                },
                None => ok = false,
            }
        }
        ok
    }

    /// `[pool.NAME.tls]`. The table's presence turns TLS on unless it says `enabled = false`
    /// (its other keys are still checked, so switching it back on finds no surprise).
    pub(super) fn pool_tls(&mut self, t: &DeTable<'_>, path: &str, pool: &mut Pool) {
        let Some(x) = t.get("tls") else { return };
        let tpath = format!("{path}.tls");
        let Some(tt) = self.table(x, &tpath) else { return };
        self.check_keys(tt, &tpath, POOL_TLS_KEYS);
        let key = |k: &str| format!("{tpath}.{k}");
        let mut tls =
            PoolTls { ca: None, server_name: None, verify: true, client_cert: None, alpn: vec![] };
        let mut enabled = true;
        if let Some(v) = tt.get("enabled") {
            enabled = self.boolean(v, &key("enabled")).unwrap_or(true);
        }
        if let Some(v) = tt.get("verify") {
            tls.verify = self.boolean(v, &key("verify")).unwrap_or(true);
        }
        if let Some(v) = tt.get("ca") {
            tls.ca = self.path_value(v, &key("ca"));
        }
        if let Some(v) = tt.get("server_name") {
            let k = key("server_name");
            if let Some(s) = self.string(v, &k) {
                match check_server_name(s) {
                    Ok(()) => tls.server_name = Some(s.to_ascii_lowercase()),
                    Err(e) => self.error(v, &k, e),
                }
            }
        }
        let cert = tt.get("cert").and_then(|v| self.path_value(v, &key("cert")));
        let pem_key = tt.get("key").and_then(|v| self.path_value(v, &key("key")));
        match (tt.get("cert"), tt.get("key")) {
            (Some(_), None) => self.error(
                x,
                &key("key"),
                "missing key (a client certificate needs its private key: set both cert and key)",
            ),
            (None, Some(_)) => self.error(
                x,
                &key("cert"),
                "missing key (a private key needs its client certificate: set both cert and key)",
            ),
            _ => {}
        }
        if let (Some(cert), Some(key)) = (cert, pem_key) {
            tls.client_cert = Some(CertFiles { cert, key });
        }
        if let Some(v) = tt.get("alpn") {
            tls.alpn = self.alpn(v, &key("alpn"));
        }
        if let Some(h) = &pool.health
            && matches!(h.kind, HealthKind::UdpSendExpect { .. })
            && enabled
        {
            self.error(
                x,
                &tpath,
                "the pool's health check sends UDP (health.transport = \"udp\"), which TLS \
                 cannot carry: check over tcp or turn tls off",
            );
        }
        pool.tls = enabled.then_some(tls);
    }

    /// A string key naming a file, relative to the config file.
    fn path_value(&mut self, v: &Value<'_>, key: &str) -> Option<std::path::PathBuf> {
        match self.string(v, key) {
            Some("") => {
                self.error(v, key, "must not be empty (a PEM file)");
                None
            }
            Some(p) => Some(self.relative(p)),
            None => None,
        }
    }

    fn alpn(&mut self, v: &Value<'_>, key: &str) -> Vec<String> {
        let DeValue::Array(items) = v.get_ref() else {
            let found = v.get_ref().type_str();
            self.error(v, key, format!("expected a list of protocol names, found {found}"));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ikey = format!("{key}[{i}]");
            match self.string(item, &ikey) {
                Some(s) if s.is_empty() || s.len() > MAX_ALPN_LEN => {
                    self.error(item, &ikey, "a protocol name is 1 to 255 bytes")
                }
                Some(s) => out.push(s.to_string()),
                None => {}
            }
        }
        out
    }

    /// A frontend whose pool has TLS must be one that opens its server connections itself
    /// and knows how to carry TLS on them: a tcp proxy, or an http/https frontend.
    pub(super) fn frontend_pool_tls(
        &mut self,
        t: &DeTable<'_>,
        path: &str,
        f: &Frontend,
        c: &Config,
    ) -> bool {
        let fits = f.protocol.is_http() || (f.protocol == Protocol::Tcp && f.mode == Mode::Proxy);
        match c.pool(&f.pool) {
            Some(p) if p.tls.is_some() && !fits => {
                if let Some(x) = t.get("pool") {
                    self.error(
                        x,
                        &format!("{path}.pool"),
                        format!(
                            "pool \"{}\" has tls, which only tcp frontends in proxy mode and \
                             http/https frontends speak to servers",
                            p.name
                        ),
                    );
                }
                false
            }
            _ => true,
        }
    }
}

/// A name a certificate can be checked against: a DNS name (letters, digits, `-`, dots
/// between labels of 1 to 63 bytes, 253 at most) or an IP address.
fn check_server_name(s: &str) -> Result<(), String> {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("\"{s}\" is not a DNS name or an IP address"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::model::*;
    use crate::parse::parse_str;

    fn pool_tls(table: &str) -> Result<Option<PoolTls>, Vec<String>> {
        let text = format!(
            "[frontend.web]\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n\
             [pool.app]\nservers = [\"db.internal:5432\"]\n\n[pool.app.tls]\n{table}\n"
        );
        parse_str(&text, "/etc/fulcrum/f.toml")
            .map(|c| c.pools[0].tls.clone())
            .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn a_tls_table_turns_tls_on_with_safe_defaults() {
        let tls = pool_tls("").unwrap().unwrap();
        assert_eq!(
            tls,
            PoolTls { ca: None, server_name: None, verify: true, client_cert: None, alpn: vec![] }
        );
        let c = parse_str(
            "[frontend.web]\nbind = \"9000\"\npool = \"app\"\n[pool.app]\nservers = [\"9001\"]\n",
            "f.toml",
        )
        .unwrap();
        assert_eq!(c.pools[0].tls, None, "no table, no TLS");
    }

    #[test]
    fn every_key_parses_and_paths_are_relative_to_the_config() {
        let tls = pool_tls(
            "enabled = true\nca = \"certs/ca.pem\"\nserver_name = \"DB.Example.com\"\n\
             verify = false\ncert = \"/keys/client.pem\"\nkey = \"client.key\"\n\
             alpn = [\"postgresql\", \"x\"]",
        )
        .unwrap()
        .unwrap();
        assert_eq!(tls.ca, Some("/etc/fulcrum/certs/ca.pem".into()));
        assert_eq!(tls.server_name.as_deref(), Some("db.example.com"));
        assert!(!tls.verify);
        assert_eq!(
            tls.client_cert,
            Some(CertFiles {
                cert: "/keys/client.pem".into(),
                key: "/etc/fulcrum/client.key".into()
            })
        );
        assert_eq!(tls.alpn, ["postgresql", "x"]);
        assert_eq!(
            pool_tls("server_name = \"10.0.0.7\"").unwrap().unwrap().server_name.as_deref(),
            Some("10.0.0.7")
        );
    }

    #[test]
    fn enabled_false_means_plain_tcp_but_the_keys_are_still_checked() {
        assert_eq!(pool_tls("enabled = false\nca = \"ca.pem\"").unwrap(), None);
        let e = pool_tls("enabled = false\nverify = \"no\"").unwrap_err();
        assert!(e[0].contains("pool.app.tls.verify: expected true or false"), "{e:?}");
    }

    #[test]
    fn bad_keys_are_named_with_their_reason() {
        let cases = [
            ("cert = \"c.pem\"", "pool.app.tls.key: missing key (a client certificate needs"),
            ("key = \"k.pem\"", "pool.app.tls.cert: missing key (a private key needs"),
            ("server_name = \"bad name!\"", "pool.app.tls.server_name: \"bad name!\" is not a DNS"),
            ("server_name = \"\"", "pool.app.tls.server_name: \"\" is not a DNS name"),
            ("server_name = \"a..b\"", "pool.app.tls.server_name: \"a..b\" is not"),
            ("ca = \"\"", "pool.app.tls.ca: must not be empty"),
            ("ca = 3", "pool.app.tls.ca: expected a string, found integer"),
            ("verify = 1", "pool.app.tls.verify: expected true or false"),
            ("enabled = \"yes\"", "pool.app.tls.enabled: expected true or false"),
            ("alpn = \"h2\"", "pool.app.tls.alpn: expected a list of protocol names"),
            ("alpn = [\"\"]", "pool.app.tls.alpn[0]: a protocol name is 1 to 255 bytes"),
            ("sni = \"x\"", "pool.app.tls.sni: unknown key (expected one of: enabled, ca,"),
        ];
        for (table, want) in cases {
            let e = pool_tls(table).unwrap_err();
            assert!(e.len() == 1 && e[0].contains(want), "{table}: {e:?}");
            assert!(e[0].starts_with("/etc/fulcrum/f.toml:"), "{e:?}");
        }
    }

    #[test]
    fn only_frontends_that_carry_tls_may_use_a_tls_pool() {
        let text = |protocol: &str, extra: &str| {
            format!(
                "[frontend.f]\nbind = \"127.0.0.1:0\"\nprotocol = \"{protocol}\"\npool = \"app\"\n\
                 {extra}\n[pool.app]\nservers = [\"127.0.0.1:9001\"]\n[pool.app.tls]\n"
            )
        };
        for (protocol, extra) in [("tcp", ""), ("http", "")] {
            assert!(parse_str(&text(protocol, extra), "f.toml").is_ok(), "{protocol}");
        }
        for (protocol, extra) in
            [("udp", ""), ("directory", ""), ("tcp", "mode = \"fanout\""), ("directory-udp", "")]
        {
            let e = parse_str(&text(protocol, extra), "f.toml").unwrap_err().to_string();
            assert!(e.contains("frontend.f.pool: pool \"app\" has tls, which only tcp"), "{e}");
        }
    }

    #[test]
    fn a_udp_health_check_cannot_go_over_tls() {
        let text = "[frontend.f]\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\
                    [pool.app]\nservers = [\"127.0.0.1:9001\"]\n\
                    [pool.app.health]\nkind = \"send-expect\"\ntransport = \"udp\"\n\
                    send = \"a\"\nexpect = \"b\"\n[pool.app.tls]\n";
        let e = parse_str(text, "f.toml").unwrap_err().to_string();
        assert!(e.contains("pool.app.tls: the pool's health check sends UDP"), "{e}");
    }
}
