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
/// (`10.1.2.3/16` means `10.1.0.0/16`).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
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
    }
}
