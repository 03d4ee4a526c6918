//! What fulcrum reads from an X.509 certificate itself: its subject as an RFC 4514 string
//! (the verified client's identity passed on in `client_cert_header`) and its validity (expiry
//! metrics, `fulcrum ctl certs`). Pure: DER in, facts out; parsing is x509-cert's.
//!
//! The subject string is the one `openssl x509 -nameopt RFC2253` prints for the usual
//! attributes (and nginx's `$ssl_client_s_dn`): the most specific RDN first, `,` between RDNs,
//! `+` inside a multi-valued one, RFC 4514 short names, special characters escaped with `\`,
//! and every byte that is not printable ASCII written as `\XX` (so the string is always a valid
//! HTTP header value). Attribute types without a short name are written as their dotted OID
//! with the value's DER in hex (`1.2.3.4=#0c0161`), as RFC 4514 section 2.4 prescribes.

use std::fmt::Write as _;

use der::asn1::ObjectIdentifier as Oid;
use der::{Decode, Encode, Tag, Tagged};
use x509_cert::Certificate;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::der;
use x509_cert::name::Name;

/// The facts of one certificate fulcrum reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// RFC 4514 string of the subject.
    pub subject: String,
    /// Validity, in seconds since the Unix epoch.
    pub not_before: u64,
    pub not_after: u64,
}

/// Reads a DER certificate's subject and validity.
pub fn facts(der: &[u8]) -> Result<Facts, String> {
    let cert = Certificate::from_der(der).map_err(|e| format!("cannot read it as X.509: {e}"))?;
    let tbs = &cert.tbs_certificate;
    Ok(Facts {
        subject: rfc4514(&tbs.subject),
        not_before: tbs.validity.not_before.to_unix_duration().as_secs(),
        not_after: tbs.validity.not_after.to_unix_duration().as_secs(),
    })
}

/// The subject of a DER certificate as an RFC 4514 string; `None` when it cannot be read.
pub fn subject(der: &[u8]) -> Option<String> {
    Certificate::from_der(der).ok().map(|c| rfc4514(&c.tbs_certificate.subject))
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a time in seconds since the Unix epoch.
pub fn rfc3339(unix: u64) -> String {
    der::DateTime::from_unix_duration(std::time::Duration::from_secs(unix))
        .map_or_else(|_| format!("@{unix}"), |d| d.to_string())
}

const fn oid(s: &str) -> Oid {
    Oid::new_unwrap(s)
}

/// RFC 4514's short names (section 3), and the few OpenSSL also writes by name that client
/// certificates commonly carry.
const SHORT_NAMES: &[(Oid, &str)] = &[
    (oid("2.5.4.3"), "CN"),
    (oid("2.5.4.7"), "L"),
    (oid("2.5.4.8"), "ST"),
    (oid("2.5.4.10"), "O"),
    (oid("2.5.4.11"), "OU"),
    (oid("2.5.4.6"), "C"),
    (oid("2.5.4.9"), "STREET"),
    (oid("0.9.2342.19200300.100.1.25"), "DC"),
    (oid("0.9.2342.19200300.100.1.1"), "UID"),
    (oid("1.2.840.113549.1.9.1"), "emailAddress"),
    (oid("2.5.4.5"), "serialNumber"),
    (oid("2.5.4.4"), "SN"),
    (oid("2.5.4.42"), "GN"),
    (oid("2.5.4.12"), "title"),
];

/// RFC 4514 string of a distinguished name: RDNs in reverse order.
pub fn rfc4514(name: &Name) -> String {
    let mut out = String::new();
    for (i, rdn) in name.0.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.0.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            attribute(atv, &mut out);
        }
    }
    out
}

fn attribute(atv: &AttributeTypeAndValue, out: &mut String) {
    let short = SHORT_NAMES.iter().find(|(o, _)| *o == atv.oid).map(|(_, n)| *n);
    match (short, text(atv.value.tag(), atv.value.value())) {
        (Some(n), Some(v)) => {
            out.push_str(n);
            out.push('=');
            escape(&v, out);
        }
        _ => {
            let _ = write!(out, "{}=#", atv.oid);
            for b in atv.value.to_der().unwrap_or_default() {
                let _ = write!(out, "{b:02x}");
            }
        }
    }
}

/// A directory string's characters, for the string types names use; `None` for other types
/// or bytes that do not decode. (der cannot represent UniversalString: a certificate using it
/// does not parse at all.)
fn text(tag: Tag, bytes: &[u8]) -> Option<String> {
    match tag {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::VisibleString
        | Tag::NumericString => std::str::from_utf8(bytes).ok().map(str::to_string),
        // T.61 in practice carries Latin-1 (OpenSSL reads it so).
        Tag::TeletexString => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units = bytes.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units).collect::<Result<String, _>>().ok()
        }
        _ => None,
    }
}

/// RFC 4514 section 2.4 escaping, and `\XX` for every UTF-8 byte that is not printable ASCII.
fn escape(value: &str, out: &mut String) {
    let bytes = value.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let special = matches!(b, b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\')
            || (i == 0 && matches!(b, b'#' | b' '))
            || (i + 1 == bytes.len() && b == b' ');
        if special {
            out.push('\\');
            out.push(char::from(b));
        } else if (0x21..0x7f).contains(&b) || b == b' ' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_cert::der::asn1::{Any, SetOfVec};
    use x509_cert::name::{RdnSequence, RelativeDistinguishedName};

    fn atv(o: &str, tag: Tag, value: &[u8]) -> AttributeTypeAndValue {
        AttributeTypeAndValue { oid: oid_dyn(o), value: Any::new(tag, value).unwrap() }
    }

    fn oid_dyn(s: &str) -> Oid {
        s.parse().unwrap()
    }

    fn name(rdns: Vec<Vec<AttributeTypeAndValue>>) -> Name {
        RdnSequence(
            rdns.into_iter()
                .map(|r| RelativeDistinguishedName(SetOfVec::try_from(r).unwrap()))
                .collect(),
        )
    }

    #[test]
    fn rdns_come_most_specific_first_with_short_names() {
        let n = name(vec![
            vec![atv("2.5.4.6", Tag::PrintableString, b"FR")],
            vec![atv("2.5.4.10", Tag::Utf8String, b"Example Org")],
            vec![atv("2.5.4.3", Tag::Utf8String, b"client one")],
        ]);
        assert_eq!(rfc4514(&n), "CN=client one,O=Example Org,C=FR");
    }

    #[test]
    fn special_characters_are_escaped() {
        let n = name(vec![vec![atv("2.5.4.3", Tag::Utf8String, b"#a,b+c;d\"e\\f<g>h ")]]);
        assert_eq!(rfc4514(&n), "CN=\\#a\\,b\\+c\\;d\\\"e\\\\f\\<g\\>h\\ ");
        let n = name(vec![vec![atv("2.5.4.3", Tag::Utf8String, b" lead=ok")]]);
        assert_eq!(rfc4514(&n), "CN=\\ lead=ok");
    }

    #[test]
    fn bytes_outside_printable_ascii_are_hex_escaped() {
        let n = name(vec![vec![atv("2.5.4.3", Tag::Utf8String, "é\n\u{7f}".as_bytes())]]);
        assert_eq!(rfc4514(&n), "CN=\\C3\\A9\\0A\\7F");
        // A header value must hold it as it is.
        assert!(http::HeaderValue::from_str(&rfc4514(&n)).is_ok());
        let bmp: Vec<u8> = "Zoë".encode_utf16().flat_map(u16::to_be_bytes).collect();
        let n = name(vec![vec![atv("2.5.4.3", Tag::BmpString, &bmp)]]);
        assert_eq!(rfc4514(&n), "CN=Zo\\C3\\AB");
        let n = name(vec![vec![atv("2.5.4.3", Tag::TeletexString, &[b'a', 0xe9])]]);
        assert_eq!(rfc4514(&n), "CN=a\\C3\\A9");
    }

    #[test]
    fn unknown_types_and_values_are_dotted_oids_with_hex_der() {
        let n = name(vec![
            vec![atv("1.2.3.4", Tag::Utf8String, b"a")],
            vec![atv("2.5.4.3", Tag::OctetString, b"\x01")],
        ]);
        assert_eq!(rfc4514(&n), "2.5.4.3=#040101,1.2.3.4=#0c0161");
        // Bad UTF-8 in a UTF8String falls back to the hex form too.
        let n = name(vec![vec![atv("2.5.4.3", Tag::Utf8String, b"\xff")]]);
        assert_eq!(rfc4514(&n), "2.5.4.3=#0c01ff");
    }

    #[test]
    fn multi_valued_rdns_join_with_plus() {
        let n = name(vec![vec![
            atv("2.5.4.3", Tag::Utf8String, b"x"),
            atv("0.9.2342.19200300.100.1.1", Tag::Utf8String, b"7"),
        ]]);
        let s = rfc4514(&n);
        assert!(s == "CN=x+UID=7" || s == "UID=7+CN=x", "{s}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(facts(b"").is_err());
        assert!(facts(b"\x30\x03\x02\x01").is_err());
        assert_eq!(subject(&[0x30; 64]), None);
        for n in 0..512u32 {
            let bytes: Vec<u8> = (0..(n % 97)).map(|i| (n.wrapping_mul(31) ^ i) as u8).collect();
            let _ = facts(&bytes);
        }
    }

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
    }
}
