//! `server.listen`: one address (the old form, still accepted) or a list of listeners, each an
//! address or a table with its own options — the file shape and its validation into
//! [`Listener`]s.
//!
//! ```toml
//! [server]
//! listen = "0.0.0.0:8080"                      # one plain HTTP listener, as before
//! listen = ["0.0.0.0:80", "[::]:80"]           # several, IPv4 and IPv6
//! listen = [
//!   { addr = "0.0.0.0:80", https_redirect = true },
//!   { addr = "0.0.0.0:443", tls = true },     # HTTP/2 + HTTP/1.1 by ALPN
//!   { addr = "10.0.0.5:8443", tls = true, proxy_protocol = true },
//! ]
//! ```

use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::Validator;
use crate::listeners::Listener;

/// `server.listen` as written.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenSection {
    /// `listen = "0.0.0.0:8080"` (reported as `server.listen`).
    One(String),
    /// `listen = [...]` or `[[server.listen]]` (reported as `server.listen[i]`).
    Many(Vec<ListenEntry>),
}

/// One element of the list.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenEntry {
    Addr(String),
    Table(ListenTable),
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ListenTable {
    pub addr: String,
    pub tls: bool,
    /// `None`: on for TLS listeners.
    pub http2: Option<bool>,
    pub proxy_protocol: bool,
    pub https_redirect: bool,
    /// `None`: 443.
    pub https_port: Option<u16>,
    /// `None`: on for IPv6 addresses (as nginx's `ipv6only=on`), so `[::]:80` and `0.0.0.0:80`
    /// can both be listed.
    pub ipv6_only: Option<bool>,
}

impl Default for ListenSection {
    fn default() -> Self {
        ListenSection::One("0.0.0.0:8080".into())
    }
}

// Hand-written so that a table's unknown keys still reach `serde_ignored` (an untagged enum would
// buffer the table and lose them) and a wrong shape names what is expected.
impl<'de> Deserialize<'de> for ListenSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ListenSection;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address (\"0.0.0.0:8080\") or a list of addresses and tables")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ListenSection::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = seq.next_element::<ListenEntry>()? {
                    out.push(e);
                }
                Ok(ListenSection::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for ListenEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ListenEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address (\"0.0.0.0:443\") or a table ({ addr = \"0.0.0.0:443\", tls = true })")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ListenEntry::Addr(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                ListenTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ListenEntry::Table)
            }
        }
        d.deserialize_any(V)
    }
}

const ADDR_RULE: &str = "must be an address with a port, e.g. \"0.0.0.0:8080\" or \"[::1]:8080\"";

impl Validator<'_> {
    /// Every listener, each with its options checked; `tls_configured` says whether `[tls]` has
    /// a certificate for the TLS listeners.
    pub(super) fn listeners(&mut self, s: &ListenSection, tls_configured: bool) -> Vec<Listener> {
        let tables: Vec<(String, ListenTable)> = match s {
            ListenSection::One(a) => vec![(
                "server.listen".to_string(),
                ListenTable {
                    addr: a.clone(),
                    ..ListenTable::default()
                },
            )],
            ListenSection::Many(list) => list
                .iter()
                .enumerate()
                .map(|(i, e)| match e {
                    ListenEntry::Addr(a) => (
                        format!("server.listen[{i}]"),
                        ListenTable {
                            addr: a.clone(),
                            ..ListenTable::default()
                        },
                    ),
                    ListenEntry::Table(t) => (format!("server.listen[{i}].addr"), t.clone()),
                })
                .collect(),
        };
        if tables.is_empty() {
            self.error_no_value("server.listen", "must name at least one address");
        }
        let mut out: Vec<Listener> = Vec::with_capacity(tables.len());
        for (key, t) in tables {
            let Ok(addr) = t.addr.parse::<SocketAddr>() else {
                self.error(&key, &t.addr, ADDR_RULE);
                continue;
            };
            let table_key = key.strip_suffix(".addr").unwrap_or(&key).to_string();
            let opt = |name: &str| format!("{table_key}.{name}");
            if let Some(other) = out.iter().find(|l| overlaps(l.addr, addr)) {
                self.error(
                    &key,
                    &t.addr,
                    format!(
                        "overlaps the listener {} (the same port on the same or a wildcard address)",
                        other.addr
                    ),
                );
            }
            if t.tls && !tls_configured {
                self.error(
                    &opt("tls"),
                    true,
                    "needs a certificate: add [[tls.certificates]] with `cert` and `key`",
                );
            }
            let http2 = t.http2.unwrap_or(t.tls);
            if http2 && !t.tls {
                self.error(
                    &opt("http2"),
                    true,
                    "needs `tls = true`: browsers speak HTTP/2 only over TLS (ALPN)",
                );
            }
            if t.https_redirect && t.tls {
                self.error(
                    &opt("https_redirect"),
                    true,
                    "is for plain HTTP listeners: this one already has `tls = true`",
                );
            }
            if t.https_port.is_some() && !t.https_redirect {
                self.error_no_value(
                    &opt("https_port"),
                    "only applies with `https_redirect = true`",
                );
            }
            if t.https_port == Some(0) {
                self.error(&opt("https_port"), 0, "must be a port between 1 and 65535");
            }
            if t.ipv6_only.is_some() && !addr.is_ipv6() {
                self.error_no_value(&opt("ipv6_only"), "only applies to an IPv6 address");
            }
            out.push(Listener {
                addr,
                tls: t.tls,
                http2: http2 && t.tls,
                proxy_protocol: t.proxy_protocol,
                https_redirect: t.https_redirect.then(|| t.https_port.unwrap_or(443)),
                ipv6_only: t.ipv6_only.unwrap_or(addr.is_ipv6()),
            });
        }
        out
    }
}

/// Two listeners that cannot both bind: the same port on the same address, or on a wildcard
/// address of the same family (IPv6 wildcards are `ipv6_only` unless said otherwise, so
/// `0.0.0.0:80` and `[::]:80` do not clash). Port 0 (any free port) never clashes.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    const POOLS: &str = "[pools.base]\nfile = \"base.conf\"\n";
    const CERT: &str = "[[tls.certificates]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";

    fn load(server: &str, tls: bool) -> Result<Config, Vec<ConfigError>> {
        let text = format!("[server]\n{server}\n{POOLS}{}", if tls { CERT } else { "" });
        Config::from_toml(&text, Path::new("/etc/graysplit/graysplit.toml"))
    }

    fn errors(server: &str, tls: bool) -> Vec<String> {
        load(server, tls)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_single_string_form_still_loads() {
        let c = load("listen = \"127.0.0.1:8080\"", false).unwrap();
        let l = &c.server.listen;
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].addr, "127.0.0.1:8080".parse().unwrap());
        assert!(!l[0].tls && !l[0].http2 && !l[0].proxy_protocol);
        assert_eq!(l[0].https_redirect, None);
    }

    #[test]
    fn a_list_of_addresses_and_tables() {
        let c = load(
            "listen = [\"0.0.0.0:80\", \"[::]:80\", { addr = \"0.0.0.0:443\", tls = true }, \
             { addr = \"[::]:443\", tls = true, http2 = false, proxy_protocol = true }, \
             { addr = \"127.0.0.1:81\", https_redirect = true, https_port = 8443 }]",
            true,
        )
        .unwrap();
        let l = &c.server.listen;
        assert_eq!(l.len(), 5);
        assert!(l[1].ipv6_only, "an IPv6 wildcard is ipv6_only by default");
        assert!(l[2].tls && l[2].http2, "TLS offers HTTP/2 by default");
        assert!(l[3].tls && !l[3].http2 && l[3].proxy_protocol);
        assert_eq!(l[4].https_redirect, Some(8443));
        assert_eq!(l[0].https_redirect, None);
    }

    #[test]
    fn array_of_tables_form() {
        let text = format!(
            "{POOLS}{CERT}[[server.listen]]\naddr = \"0.0.0.0:80\"\nhttps_redirect = true\n\
             [[server.listen]]\naddr = \"0.0.0.0:443\"\ntls = true\n"
        );
        let c = Config::from_toml(&text, Path::new("/etc/graysplit/graysplit.toml")).unwrap();
        assert_eq!(c.server.listen[0].https_redirect, Some(443));
        assert!(c.server.listen[1].tls);
    }

    #[test]
    fn every_bad_option_names_key_value_and_rule() {
        let e = errors(
            "listen = [\"nope\", { addr = \"0.0.0.0:443\", tls = true }, \
             { addr = \"0.0.0.0:80\", http2 = true, https_port = 8443 }, \
             { addr = \"127.0.0.1:443\" }, { addr = \"0.0.0.0:444\", tls = true, https_redirect = true }, \
             { addr = \"0.0.0.0:445\", ipv6_only = true, colour = \"red\" }]",
            false,
        );
        let want = [
            "server.listen.5.colour: unknown key",
            "server.listen[0] = \"nope\": must be an address with a port",
            "server.listen[1].tls = \"true\": needs a certificate",
            "server.listen[2].http2 = \"true\": needs `tls = true`",
            "server.listen[2].https_port: only applies with `https_redirect = true`",
            "server.listen[3].addr = \"127.0.0.1:443\": overlaps the listener 0.0.0.0:443",
            "server.listen[4].tls = \"true\": needs a certificate",
            "server.listen[4].https_redirect = \"true\": is for plain HTTP listeners",
            "server.listen[5].ipv6_only: only applies to an IPv6 address",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn ipv4_and_ipv6_wildcards_on_one_port_do_not_clash() {
        assert!(load("listen = [\"0.0.0.0:80\", \"[::]:80\"]", false).is_ok());
        let e = errors("listen = [\"[::]:80\", \"[::1]:80\"]", false);
        assert!(e[0].contains("overlaps the listener [::]:80"), "{e:?}");
        assert!(load("listen = []", false).is_err());
    }
}
