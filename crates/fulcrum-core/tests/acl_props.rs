//! Property tests of the access lists' matcher: for any set of overlapping ranges with any
//! ends, the compiled [`IpSet`] answers exactly what a scan of every entry answers, for IPv4,
//! IPv6 and IPv4-mapped IPv6 clients; and the verdict follows deny, then allow, then blocks.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fulcrum_core::acl::{Access, IpSet, Rejection, check};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;

/// Ranges packed into 10.0.0.0/20 so that they overlap often; `until` 0..8 (0: never in force).
fn v4_entries() -> impl Strategy<Value = Vec<(IpNet, u64)>> {
    prop::collection::vec((0u32..4096, 20u8..=32, 0u64..8), 0..40).prop_map(|v| {
        v.into_iter()
            .map(|(low, len, until)| {
                let a = Ipv4Addr::from(0x0a00_0000 | low);
                (IpNet::V4(Ipv4Net::new(a, len).unwrap().trunc()), until)
            })
            .collect()
    })
}

fn v6_entries() -> impl Strategy<Value = Vec<(IpNet, u64)>> {
    prop::collection::vec((0u128..4096, 116u8..=128, 0u64..8), 0..40).prop_map(|v| {
        v.into_iter()
            .map(|(low, len, until)| {
                let a = Ipv6Addr::from(0x2001_0db8_u128 << 96 | low);
                (IpNet::V6(Ipv6Net::new(a, len).unwrap().trunc()), until)
            })
            .collect()
    })
}

fn scan(entries: &[(IpNet, u64)], ip: IpAddr, now: u64) -> bool {
    entries.iter().any(|(n, until)| n.contains(&ip) && now < *until)
}

proptest! {
    #[test]
    fn compiled_ranges_answer_like_a_scan(
        v4 in v4_entries(),
        v6 in v6_entries(),
        probes in prop::collection::vec((0u32..4200, 0u64..9), 1..60),
    ) {
        let all: Vec<(IpNet, u64)> = v4.iter().chain(&v6).cloned().collect();
        let set = IpSet::with_until(all.iter().cloned());
        // Random addresses, and each range's edges and their neighbours, where a wrong cut
        // would show.
        let edges = all.iter().flat_map(|(n, _)| {
            let (first, last) = match n {
                IpNet::V4(n) => (u32::from(n.network()) as u128, u32::from(n.broadcast()) as u128),
                IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
            };
            [first.wrapping_sub(1), first, last, last + 1].map(|x| ((x & 0xffff) as u32, 0..9))
        });
        let probes: Vec<(u32, u64)> = probes
            .into_iter()
            .chain(edges.flat_map(|(low, times)| times.map(move |t| (low, t))))
            .collect();
        for (low, now) in probes {
            let a4 = Ipv4Addr::from(0x0a00_0000 | low);
            let want = scan(&all, IpAddr::V4(a4), now);
            prop_assert_eq!(set.contains(IpAddr::V4(a4), now), want, "{} at {}", a4, now);
            // The same client as an IPv4-mapped IPv6 address.
            let mapped = IpAddr::V6(a4.to_ipv6_mapped());
            prop_assert_eq!(set.contains(mapped, now), want, "{} at {}", mapped, now);
            let a6 = IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(low)));
            prop_assert_eq!(set.contains(a6, now), scan(&all, a6, now), "{} at {}", a6, now);
        }
        prop_assert!(set.ranges() <= all.len() * 2 + 1);
    }

    #[test]
    fn the_verdict_is_deny_then_allow_then_blocks(
        deny in v4_entries(),
        allow in prop::option::of(v4_entries()),
        blocks in v4_entries(),
        probes in prop::collection::vec(0u32..4200, 1..40),
    ) {
        let nets = |v: &[(IpNet, u64)]| v.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        let (deny_n, allow_n) = (nets(&deny), allow.as_deref().map(nets));
        let access = Access::new(allow_n.as_deref(), &deny_n);
        let block_set = IpSet::with_until(blocks.iter().cloned());
        for low in probes {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | low));
            let want = if deny_n.iter().any(|n| n.contains(&ip)) {
                Err(Rejection::Deny)
            } else if allow_n.as_ref().is_some_and(|a| !a.iter().any(|n| n.contains(&ip))) {
                Err(Rejection::NotAllowed)
            } else if scan(&blocks, ip, 3) {
                Err(Rejection::Blocked)
            } else {
                Ok(())
            };
            prop_assert_eq!(check(&access, &block_set, ip, 3), want, "{}", ip);
        }
    }
}
