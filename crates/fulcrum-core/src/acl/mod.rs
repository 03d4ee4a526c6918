//! Access control, the decision half: whether a client address may reach a frontend.
//!
//! A frontend's `allow` and `deny` lists (inline and from files) compile into an [`Access`],
//! the runtime block list ([`BlockTable`], its rules: one entry per range, expiry) into an
//! [`IpSet`]; [`check`] is the one verdict every protocol acts on, with the first reason that
//! applies ([`Rejection`]). Lookups are binary searches over sorted disjoint ranges, so a deny
//! file of many thousands of CIDRs costs a client a few comparisons. Addresses are matched in
//! their canonical form: an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is its IPv4 address,
//! for clients and list entries alike.

mod blocks;
mod set;

pub use blocks::{AddError, Block, BlockTable, MAX_BLOCKS};
pub use set::{FOREVER, IpSet};

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why a client was refused: by address (the access lists and blocks) or by a per-client
/// limit (`[frontend.NAME.limits]`). Counted per frontend under [`Rejection::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The address is in the frontend's `deny` list (deny wins over allow).
    Deny,
    /// The frontend has an `allow` list and the address is not in it.
    NotAllowed,
    /// The address is in the runtime block list.
    Blocked,
    /// The client already holds `conn_per_client` connections.
    ConnPerClient,
    /// The client opens connections faster than `conn_rate_per_client`.
    ConnRate,
    /// The client sends HTTP requests faster than `request_rate_per_client` (answered 429).
    RequestRate,
    /// The client sends datagrams faster than `datagram_rate_per_client` (dropped).
    DatagramRate,
    /// The connection slots are under pressure and the client holds more than its fair share.
    FairShare,
    /// No connection slot was left and none could be made for this client.
    Full,
}

impl Rejection {
    pub const ALL: [Rejection; 9] = [
        Rejection::Deny,
        Rejection::NotAllowed,
        Rejection::Blocked,
        Rejection::ConnPerClient,
        Rejection::ConnRate,
        Rejection::RequestRate,
        Rejection::DatagramRate,
        Rejection::FairShare,
        Rejection::Full,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The metric label and access-log outcome.
    pub fn name(self) -> &'static str {
        match self {
            Rejection::Deny => "deny",
            Rejection::NotAllowed => "not-allowed",
            Rejection::Blocked => "blocked",
            Rejection::ConnPerClient => "conn-per-client",
            Rejection::ConnRate => "conn-rate",
            Rejection::RequestRate => "request-rate",
            Rejection::DatagramRate => "datagram-rate",
            Rejection::FairShare => "fair-share",
            Rejection::Full => "full",
        }
    }

    /// Position in [`Rejection::ALL`], for counters kept in an array.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A frontend's access lists, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// `None`: every address not denied may connect. `Some`: only these (an allow file with
    /// no entry admits nobody: emptying it must not open the frontend to everyone).
    pub allow: Option<IpSet>,
    pub deny: IpSet,
}

impl Access {
    /// `allow`: `None` when the frontend has no allow list at all.
    pub fn new(allow: Option<&[IpNet]>, deny: &[IpNet]) -> Access {
        Access { allow: allow.map(IpSet::new), deny: IpSet::new(deny) }
    }

    /// Whether every address passes (nothing to look up).
    pub fn is_open(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }
}

/// The verdict for a client at `ip`: the frontend's lists first (`deny`, then `allow`), then
/// the runtime `blocks`, whose entries are in force while `now` is before their end (the same
/// clock the block set was compiled for).
pub fn check(access: &Access, blocks: &IpSet, ip: IpAddr, now: u64) -> Result<(), Rejection> {
    if access.deny.contains(ip, now) {
        return Err(Rejection::Deny);
    }
    if let Some(allow) = &access.allow
        && !allow.contains(ip, now)
    {
        return Err(Rejection::NotAllowed);
    }
    if blocks.contains(ip, now) {
        return Err(Rejection::Blocked);
    }
    Ok(())
}

/// An address (`10.0.0.1`, `::1`: a range of one) or a CIDR range (`10.0.0.0/8`), with the
/// bits below the prefix cleared and an IPv4-mapped IPv6 range written as IPv4.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            format!(
                "\"{s}\" is not an address or CIDR range (e.g. \"10.0.0.0/8\", \"2001:db8::/32\")"
            )
        })?,
    };
    Ok(canonical_net(net))
}

/// `net` as it is matched: truncated to its prefix, and an IPv6 range inside `::ffff:0:0/96`
/// (IPv4-mapped) as the IPv4 range it stands for.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, n.prefix_len() - 96).map_or(net, |v| IpNet::V4(v.trunc())),
            None => IpNet::V6(n.trunc()),
        },
        IpNet::V6(n) => IpNet::V6(n.trunc()),
        IpNet::V4(n) => IpNet::V4(n.trunc()),
    }
}

/// A list file's entry that is not an address or range, with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListError {
    pub line: usize,
    pub message: String,
}

/// Most entries one list file may hold.
pub const MAX_LIST_ENTRIES: usize = 1_000_000;

/// A list file's text: one address or CIDR range a line; `#` starts a comment (a whole line or
/// the end of one), blank lines are skipped. Every bad line is reported.
pub fn parse_list(text: &str) -> Result<Vec<IpNet>, Vec<ListError>> {
    let mut nets = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let entry = raw.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        if nets.len() == MAX_LIST_ENTRIES {
            errors.push(ListError {
                line: i + 1,
                message: format!("more than {MAX_LIST_ENTRIES} entries"),
            });
            break;
        }
        match parse_net(entry) {
            Ok(n) => nets.push(n),
            Err(message) => errors.push(ListError { line: i + 1, message }),
        }
    }
    if errors.is_empty() { Ok(nets) } else { Err(errors) }
}

/// `ip` as a range of one address, canonical (the form [`parse_net`] gives an address).
pub fn host_net(ip: IpAddr) -> IpNet {
    match ip.to_canonical() {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::from(a)),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::from(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| parse_net(s).unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_over_allow_and_blocks_come_last() {
        let allow = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        let a = Access::new(Some(&allow), &nets(&["10.1.0.0/16"]));
        let blocks = IpSet::with_until([(parse_net("10.2.0.0/16").unwrap(), 100)]);
        assert_eq!(check(&a, &blocks, ip("10.0.0.1"), 0), Ok(()));
        assert_eq!(check(&a, &blocks, ip("::ffff:10.0.0.1"), 0), Ok(()));
        assert_eq!(check(&a, &blocks, ip("10.1.2.3"), 0), Err(Rejection::Deny));
        assert_eq!(check(&a, &blocks, ip("11.0.0.1"), 0), Err(Rejection::NotAllowed));
        assert_eq!(check(&a, &blocks, ip("10.2.0.1"), 99), Err(Rejection::Blocked));
        assert_eq!(check(&a, &blocks, ip("10.2.0.1"), 100), Ok(()), "an expired block");
        assert_eq!(check(&a, &blocks, ip("2001:db8::9"), 0), Ok(()));
        assert_eq!(check(&Access::default(), &IpSet::default(), ip("::1"), 0), Ok(()));
        // An allow list with nothing in it admits nobody.
        let closed = Access::new(Some(&[]), &[]);
        assert_eq!(
            check(&closed, &IpSet::default(), ip("10.0.0.1"), 0),
            Err(Rejection::NotAllowed)
        );
        assert!(!closed.is_open() && Access::default().is_open());
    }

    #[test]
    fn parses_addresses_ranges_and_mapped_forms() {
        assert_eq!(parse_net("10.0.0.7").unwrap().to_string(), "10.0.0.7/32");
        assert_eq!(parse_net(" 10.0.0.7/8 ").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert_eq!(parse_net("::ffff:10.0.0.0/104").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("::ffff:1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
        assert_eq!(parse_net("2001:db8::1/32").unwrap().to_string(), "2001:db8::/32");
        for bad in ["", "10.0.0.256", "10.0.0.0/33", "host.example", "10.0.0.0/8/8"] {
            assert!(parse_net(bad).is_err(), "{bad:?}");
        }
        assert_eq!(host_net(ip("::ffff:127.0.0.3")).to_string(), "127.0.0.3/32");
    }

    #[test]
    fn list_files_skip_comments_and_name_bad_lines() {
        let text = "# office\n10.0.0.0/8   # all of it\n\n  ::1\n#10.9.9.9\n";
        assert_eq!(parse_list(text).unwrap(), nets(&["10.0.0.0/8", "::1"]));
        let errs = parse_list("10.0.0.1\nnot-an-ip\n10.0.0.300 # x\n").unwrap_err();
        assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2, 3]);
        assert!(errs[0].message.contains("\"not-an-ip\" is not an address"), "{errs:?}");
        assert_eq!(parse_list("").unwrap(), Vec::<IpNet>::new());
    }
}
