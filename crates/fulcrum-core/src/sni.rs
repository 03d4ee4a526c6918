//! Routing a TLS connection by the server name of its ClientHello (SNI), the decision half:
//! which of a frontend's `sni` routes a name takes, what a valid `sni` pattern is, and which
//! patterns can never be taken because an earlier route has the same one.
//!
//! Matching rules (docs/tls.md, "Passthrough by SNI"), the same as a certificate's names:
//! * an exact name first (`a.example.com`), whatever the route order;
//! * then a wildcard `*.example.com`, which covers exactly one label: `a.example.com`, not
//!   `a.b.example.com` nor `example.com`;
//! * ASCII case-insensitive, a trailing dot of the client's name ignored;
//! * a name in two routes belongs to the first of them.
//!
//! Unlike an HTTP route's `host` (docs/routing.md), a wildcard does not reach deeper
//! subdomains: a TLS client checks the certificate it gets against the name it sent, and a
//! certificate's `*.example.com` covers one label, so the route follows what the server
//! behind it can present.
//!
//! [`SniTable::find`] allocates only for a name with upper-case letters (clients send them
//! lower case).

use std::collections::HashMap;

/// A frontend's `sni` routes, compiled for matching.
#[derive(Debug, Default)]
pub struct SniTable {
    /// Exact names, lower case, without a trailing dot → route.
    exact: HashMap<String, usize>,
    /// The domain after `*.`, lower case → route.
    wildcard: HashMap<String, usize>,
}

impl SniTable {
    /// `routes[i]` holds route `i`'s patterns, each as [`pattern`] returns it (lower case, an
    /// exact name or `*.domain`). A pattern in several routes belongs to the first.
    pub fn build<R: AsRef<[S]>, S: AsRef<str>>(routes: &[R]) -> SniTable {
        let mut t = SniTable::default();
        for (i, patterns) in routes.iter().enumerate() {
            for p in patterns.as_ref() {
                let p = p.as_ref().to_ascii_lowercase();
                let (map, key) = match p.strip_prefix("*.") {
                    Some(domain) => (&mut t.wildcard, domain.to_string()),
                    None => (&mut t.exact, p),
                };
                map.entry(key).or_insert(i);
            }
        }
        t
    }

    /// The route `name` (a ClientHello's server name) takes; `None`: the frontend's default.
    pub fn find(&self, name: &str) -> Option<usize> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return None;
        }
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(&i) = self.exact.get(name) {
            return Some(i);
        }
        // One label, and a non-empty one, in front of the wildcard's domain.
        match name.split_once('.') {
            Some((label, domain)) if !label.is_empty() => self.wildcard.get(domain).copied(),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

/// A route's `sni` entry as the table keeps it: lower case, a trailing dot removed; an exact
/// DNS name or `*.` followed by one. Refused, with the reason: IP addresses (a ClientHello
/// never names one, RFC 6066 §3), a port, a wildcard anywhere but as the whole first label,
/// characters a host name does not have.
pub fn pattern(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower).to_string();
    if lower == "*" || lower.is_empty() {
        return Err(format!(
            "\"{s}\" names no host: leave the name out of every route to send it to the \
             frontend's pool"
        ));
    }
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    if name.contains('*') {
        return Err(format!(
            "\"{s}\": a wildcard is only allowed as the whole first label, as in \"*.example.com\""
        ));
    }
    if name.contains(':') || name.starts_with('[') {
        if name.trim_matches(['[', ']']).parse::<std::net::Ipv6Addr>().is_ok() {
            return Err(format!("\"{s}\": a client's SNI is never an IP address (RFC 6066)"));
        }
        return Err(format!("\"{s}\": give the name without a port"));
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!("\"{s}\": a client's SNI is never an IP address (RFC 6066)"));
    }
    let chars_ok = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !chars_ok || name.split('.').any(str::is_empty) || name.len() > 253 {
        return Err(format!(
            "\"{s}\" is not a host name (letters, digits, '-' and '_' in dot-separated labels, \
             optionally \"*.\" in front)"
        ));
    }
    Ok(lower)
}

/// Patterns that can never be taken: `(later route, pattern, earlier route)` for each pattern
/// an earlier route already has (the first such route). A route all of whose patterns are
/// listed is unreachable.
pub fn duplicates<R: AsRef<[S]>, S: AsRef<str>>(routes: &[R]) -> Vec<(usize, String, usize)> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, patterns) in routes.iter().enumerate() {
        for p in patterns.as_ref() {
            let p = p.as_ref().to_ascii_lowercase();
            match seen.get(&p) {
                Some(&earlier) if earlier != i => out.push((i, p, earlier)),
                Some(_) => {}
                None => {
                    seen.insert(p, i);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn table(routes: &[&[&str]]) -> SniTable {
        let routes: Vec<Vec<&str>> = routes.iter().map(|r| r.to_vec()).collect();
        SniTable::build(&routes)
    }

    #[test]
    fn exact_names_come_before_wildcards_whatever_the_order() {
        let t = table(&[&["*.example.com"], &["a.example.com", "b.other.org"], &["*.other.org"]]);
        #[rustfmt::skip]
        let cases: &[(&str, Option<usize>)] = &[
            ("a.example.com", Some(1)),
            ("A.Example.COM", Some(1)),
            ("a.example.com.", Some(1)),
            ("x.example.com", Some(0)),
            ("X.EXAMPLE.com.", Some(0)),
            ("b.other.org", Some(1)),
            ("c.other.org", Some(2)),
            // One label only.
            ("x.y.example.com", None),
            ("example.com", None),
            (".example.com", None),
            ("badexample.com", None),
            ("", None),
            (".", None),
            ("unknown.test", None),
        ];
        for (name, want) in cases {
            assert_eq!(t.find(name), *want, "{name}");
        }
        assert!(table(&[]).is_empty());
        assert!(!t.is_empty());
    }

    #[test]
    fn a_name_in_two_routes_is_the_first_ones() {
        let t = table(&[&["a.test"], &["a.test", "b.test"], &["*.w.test"], &["*.W.test"]]);
        assert_eq!(t.find("a.test"), Some(0));
        assert_eq!(t.find("b.test"), Some(1));
        assert_eq!(t.find("x.w.test"), Some(2));
        let routes: Vec<Vec<&str>> =
            vec![vec!["a.test"], vec!["a.test", "b.test"], vec!["*.w.test"], vec!["*.w.test"]];
        assert_eq!(
            duplicates(&routes),
            vec![(1, "a.test".to_string(), 0), (3, "*.w.test".to_string(), 2)]
        );
        // The same name twice in one route is not a second route's loss.
        assert!(duplicates(&[vec!["a.test", "a.test"]]).is_empty());
    }

    #[test]
    fn patterns_are_host_names_or_one_leading_wildcard() {
        for (raw, want) in [
            ("A.Example.com", "a.example.com"),
            ("*.Example.com", "*.example.com"),
            ("a.example.com.", "a.example.com"),
            ("localhost", "localhost"),
            ("x_y.test", "x_y.test"),
            ("*.com.", "*.com"),
        ] {
            assert_eq!(pattern(raw).unwrap(), want, "{raw}");
        }
        for (raw, reason) in [
            ("*", "names no host"),
            ("", "names no host"),
            ("a.*.com", "whole first label"),
            ("*a.com", "whole first label"),
            ("*.*.com", "whole first label"),
            ("10.0.0.1", "never an IP address"),
            ("[::1]", "never an IP address"),
            ("a.com:443", "without a port"),
            ("a..com", "not a host name"),
            ("a b.com", "not a host name"),
            ("*.", "names no host"),
        ] {
            let e = pattern(raw).unwrap_err();
            assert!(e.contains(reason), "{raw}: {e}");
        }
    }
}
