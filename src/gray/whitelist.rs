//! The file whitelist (the embedded default, and a local supplement to Redis): one entry per line.
//!
//! ```text
//! # office
//! 192.168.93.182
//! 10.20.0.0/16
//! 2001:db8::/48
//! user:alice
//! ```
//!
//! A bad line is logged with its number and skipped; the rest apply.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::client_ip::parse_ip;
use super::decision::Hits;
use crate::proxy::forwarded::canonical_net;
use crate::upstream::upsync_format::LineError;

/// Longest user id we accept anywhere (header, cookie, whitelist).
pub const MAX_USER_LEN: usize = 128;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Whitelist {
    pub ips: HashSet<IpAddr>,
    pub cidrs: Vec<IpNet>,
    pub users: HashSet<String>,
}

impl Whitelist {
    pub fn hits(&self, ip: IpAddr, user: Option<&str>) -> Hits {
        Hits {
            ip: self.ips.contains(&ip),
            cidr: self.cidrs.iter().any(|n| n.contains(&ip)),
            user: user.is_some_and(|u| self.users.contains(u)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.cidrs.is_empty() && self.users.is_empty()
    }
}

/// A usable user id: printable ASCII without spaces or separators, at most [`MAX_USER_LEN`].
pub fn valid_user(u: &str) -> bool {
    (1..=MAX_USER_LEN).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b';' | b'"' | b'\\'))
}

/// A CIDR as operators write it; a bare address is a /32 or /128. The network is normalised
/// (`10.1.2.3/16` means `10.1.0.0/16`, `::ffff:10.0.0.0/104` means `10.0.0.0/8`, as client
/// addresses are compared in their canonical form).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(canonical_net(net.trunc()));
    }
    parse_ip(s.as_bytes()).map(IpNet::from)
}

pub fn parse(text: &str) -> (Whitelist, Vec<LineError>) {
    let mut w = Whitelist::default();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let ok = if let Some(user) = line.strip_prefix("user:") {
            let user = user.trim();
            let ok = valid_user(user);
            if ok {
                w.users.insert(user.to_string());
            }
            ok
        } else if line.contains('/') {
            parse_cidr(line).map(|n| w.cidrs.push(n)).is_some()
        } else {
            parse_ip(line.as_bytes())
                .map(|ip| w.ips.insert(ip))
                .is_some()
        };
        if !ok {
            errors.push(LineError {
                line: i + 1,
                text: line.chars().take(200).collect(),
                reason: "expected an IP address, a CIDR (10.0.0.0/8) or user:<id>".into(),
            });
        }
    }
    (w, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ips_cidrs_and_users_and_reports_bad_lines() {
        let (w, errors) = parse(
            "# office\n192.168.93.182\n10.20.0.0/16 # vpn\n::ffff:10.9.9.9\nuser:alice\n\
             nonsense\n10.0.0.0/99\nuser:\nuser:a b\n",
        );
        assert_eq!(
            errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![6, 7, 8, 9]
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            w.hits(ip("192.168.93.182"), None),
            Hits {
                ip: true,
                cidr: false,
                user: false
            }
        );
        assert_eq!(
            w.hits(ip("10.20.3.4"), None),
            Hits {
                ip: false,
                cidr: true,
                user: false
            }
        );
        assert!(w.hits(ip("10.9.9.9"), None).ip, "mapped v6 normalised");
        assert!(w.hits(ip("1.1.1.1"), Some("alice")).user);
        assert_eq!(w.hits(ip("1.1.1.1"), Some("bob")), Hits::default());
    }

    #[test]
    fn user_ids_are_checked() {
        assert!(valid_user("u-42@example.com"));
        assert!(!valid_user(""));
        assert!(!valid_user("a b"));
        assert!(!valid_user(&"x".repeat(MAX_USER_LEN + 1)));
        assert!(!valid_user("é"));
    }

    #[test]
    fn cidrs_normalise() {
        assert_eq!(
            parse_cidr("10.1.2.3/16"),
            Some("10.1.0.0/16".parse().unwrap())
        );
        assert_eq!(parse_cidr("10.1.2.3"), Some("10.1.2.3/32".parse().unwrap()));
        assert_eq!(parse_cidr("nope/8"), None);
        assert_eq!(
            parse_cidr("::ffff:10.1.2.3/112"),
            Some("10.1.0.0/16".parse().unwrap())
        );
    }
}

/// Property tests (`cargo test --lib fuzz_`; `PROPTEST_CASES=1000000` for the long run).
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use crate::proxy::forwarded::canonical_ip;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[derive(Debug, Clone)]
    enum Entry {
        Ip(IpAddr, String),
        Cidr(IpNet, String),
        User(String, String),
        Bad(String),
        Blank(String),
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<Ipv4Addr>().prop_map(IpAddr::V4),
            any::<Ipv6Addr>().prop_map(IpAddr::V6),
            any::<Ipv4Addr>().prop_map(|a| IpAddr::V6(a.to_ipv6_mapped())),
        ]
    }

    fn comment() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[ \t]{0,2}#[^\r\n]{0,20}"]
    }

    fn entry() -> impl Strategy<Value = Entry> {
        prop_oneof![
            (any_ip(), comment(), "[ \t]{0,2}")
                .prop_map(|(ip, c, ws)| { Entry::Ip(canonical_ip(ip), format!("{ws}{ip}{c}")) }),
            (any_ip(), 0u8..=128, comment()).prop_map(|(ip, len, c)| {
                let len = if ip.is_ipv4() { len % 33 } else { len };
                // Written with host bits set: the network is normalised.
                let net = canonical_net(IpNet::new(ip, len).unwrap().trunc());
                Entry::Cidr(net, format!("{ip}/{len}{c}"))
            }),
            ("[!-~&&[^,;\"\\\\#]]{1,128}", comment(), "[ \t]{0,2}")
                .prop_map(|(u, c, ws)| { Entry::User(u.clone(), format!("user:{ws}{u}{c}")) }),
            prop_oneof![
                "[g-z][a-z]{0,10}",
                any::<Ipv4Addr>().prop_map(|a| format!("{a}/33")),
                any::<Ipv4Addr>().prop_map(|a| format!("{a}.1")),
                "user:[a-z]{1,5}[ ,;\"\\\\][a-z]{1,5}",
                Just("user:".to_string()),
                "user:[a-z]{129,140}",
                "[0-9]{1,3}/[0-9]{1,2}/[0-9]",
                "[a-z]{1,4}/[0-9]{1,2}",
            ]
            .prop_map(Entry::Bad),
            "[ \t]{0,3}(#[^\r\n]{0,20})?".prop_map(Entry::Blank),
        ]
    }

    proptest! {
        /// A generated file parses to exactly its entries, and exactly its bad lines are
        /// reported, by number.
        #[test]
        fn fuzz_whitelist_file_parses_to_its_entries(entries in proptest::collection::vec(entry(), 0..30), crlf in any::<bool>()) {
            let text = entries
                .iter()
                .map(|e| match e {
                    Entry::Ip(_, t) | Entry::Cidr(_, t) | Entry::User(_, t) | Entry::Bad(t) | Entry::Blank(t) => t.as_str(),
                })
                .collect::<Vec<_>>()
                .join(if crlf { "\r\n" } else { "\n" });
            let mut want = Whitelist::default();
            let mut bad = Vec::new();
            for (i, e) in entries.iter().enumerate() {
                match e {
                    Entry::Ip(ip, _) => {
                        want.ips.insert(*ip);
                    }
                    Entry::Cidr(net, _) => want.cidrs.push(*net),
                    Entry::User(u, _) => {
                        want.users.insert(u.clone());
                    }
                    Entry::Bad(_) => bad.push(i + 1),
                    Entry::Blank(_) => {}
                }
            }
            let (got, errors) = parse(&text);
            prop_assert_eq!(got, want);
            prop_assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), bad);
        }

        /// Arbitrary bytes (the file is read as bytes, decoded lossily): no panic; every entry
        /// is usable as stored and every line is either an entry or a numbered error.
        #[test]
        fn fuzz_whitelist_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let (w, errors) = parse(&text);
            let lines = text.lines().count();
            for e in &errors {
                prop_assert!(e.line >= 1 && e.line <= lines);
            }
            prop_assert!(w.users.iter().all(|u| valid_user(u)));
            prop_assert!(w.ips.iter().all(|ip| canonical_ip(*ip) == *ip));
            prop_assert!(w.cidrs.iter().all(|n| *n == canonical_net(n.trunc())));
            prop_assert!(w.ips.len() + w.cidrs.len() + w.users.len() + errors.len() <= lines);
        }

        /// A whitelisted network matches its addresses however they arrive (mapped or not).
        #[test]
        fn fuzz_cidr_hits_match_canonical_addresses(net in any::<Ipv4Addr>(), len in 0u8..=32, host in any::<u32>(), mapped in any::<bool>()) {
            let written = if mapped {
                format!("{}/{}", net.to_ipv6_mapped(), u32::from(len) + 96)
            } else {
                format!("{net}/{len}")
            };
            let (w, errors) = parse(&written);
            prop_assert!(errors.is_empty());
            let v4 = ipnet::Ipv4Net::new(net, len).unwrap().trunc();
            let mask = u32::from(v4.hostmask());
            let inside = Ipv4Addr::from(u32::from(v4.network()) | (host & mask));
            let client = canonical_ip(IpAddr::V6(inside.to_ipv6_mapped()));
            prop_assert!(w.hits(client, None).cidr);
        }
    }
}
