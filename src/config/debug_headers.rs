//! `server.debug_headers`: who is told why they got their pool (`X-Graysplit-Pool`,
//! `X-Graysplit-Reason`).
//!
//! The reason tells a visitor that they are on the gray build and why (`cidr`, `user`, `ip`),
//! which is the operator's business. By default only clients on this machine see them; an
//! operator lists the networks of their testers. The client is the one the gray decision sees:
//! behind a trusted proxy, the address it forwarded, so a proxy in front does not pass the
//! headers on to everyone it serves.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::Validator;

/// As written: `true`, `false`, or a list of CIDRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebugHeadersValue {
    Switch(bool),
    Clients(Vec<String>),
}

impl Default for DebugHeadersValue {
    fn default() -> Self {
        DebugHeadersValue::Clients(vec!["127.0.0.1/32".into(), "::1/128".into()])
    }
}

impl<'de> Deserialize<'de> for DebugHeadersValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DebugHeadersValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true (every client), false (none) or a list of client CIDRs")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(DebugHeadersValue::Switch(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(DebugHeadersValue::Clients(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Validated: who gets the debug headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebugHeaders {
    Nobody,
    Everyone,
    /// Clients (as resolved behind trusted proxies) inside these networks.
    Clients(Vec<IpNet>),
}

impl DebugHeaders {
    pub fn show(&self, client: IpAddr) -> bool {
        match self {
            DebugHeaders::Nobody => false,
            DebugHeaders::Everyone => true,
            DebugHeaders::Clients(nets) => crate::gray::client_ip::is_trusted(client, nets),
        }
    }
}

impl Validator<'_> {
    pub(super) fn debug_headers(&mut self, v: &DebugHeadersValue) -> DebugHeaders {
        match v {
            DebugHeadersValue::Switch(false) => DebugHeaders::Nobody,
            DebugHeadersValue::Switch(true) => DebugHeaders::Everyone,
            DebugHeadersValue::Clients(list) => {
                let mut nets = Vec::new();
                for (i, cidr) in list.iter().enumerate() {
                    match crate::gray::whitelist::parse_cidr(cidr) {
                        Some(n) => nets.push(n),
                        None => self.error(
                            &format!("server.debug_headers[{i}]"),
                            cidr,
                            "must be a CIDR such as \"10.8.0.0/16\" (or the whole key true/false)",
                        ),
                    }
                }
                if nets.is_empty() {
                    DebugHeaders::Nobody
                } else {
                    DebugHeaders::Clients(nets)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn load(server: &str) -> Result<DebugHeaders, Vec<String>> {
        Config::from_toml(
            &format!("[server]\n{server}\n[pools.base]\nfile = \"b.conf\"\n"),
            Path::new("/x/g.toml"),
        )
        .map(|c| c.server.debug_headers)
        .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn by_default_only_this_machine_sees_them() {
        let d = load("").unwrap();
        assert!(d.show(ip("127.0.0.1")) && d.show(ip("::1")));
        assert!(!d.show(ip("127.0.0.2")) && !d.show(ip("203.0.113.9")));
    }

    #[test]
    fn everyone_nobody_or_listed_networks() {
        assert_eq!(
            load("debug_headers = true").unwrap(),
            DebugHeaders::Everyone
        );
        assert_eq!(load("debug_headers = false").unwrap(), DebugHeaders::Nobody);
        assert_eq!(load("debug_headers = []").unwrap(), DebugHeaders::Nobody);
        let d = load("debug_headers = [\"10.8.0.0/16\", \"192.168.93.182\"]").unwrap();
        assert!(d.show(ip("10.8.3.4")) && d.show(ip("192.168.93.182")));
        assert!(!d.show(ip("127.0.0.1")));
        let e = load("debug_headers = [\"office\"]").unwrap_err();
        assert!(
            e[0].starts_with("server.debug_headers[0] = \"office\": must be a CIDR"),
            "{e:?}"
        );
        let e = load("debug_headers = \"trusted\"").unwrap_err();
        assert!(
            e[0].starts_with("server.debug_headers: invalid type"),
            "{e:?}"
        );
    }
}
