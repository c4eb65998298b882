//! `[limits]`: what a slow or greedy client may cost — the file shape and its validation into
//! [`LimitSettings`]. The keys are nginx's where nginx has one.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{size, Validator};
use crate::limits::{HeaderBuffers, LimitSettings, MaxConnections};

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct LimitsSection {
    pub client_header_timeout: String,
    pub large_client_header_buffers: String,
    pub client_max_body_size: String,
    pub max_connections: ConnCount,
    pub max_connections_per_ip: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            client_header_timeout: "60s".into(),
            large_client_header_buffers: "4 8k".into(),
            client_max_body_size: "1m".into(),
            max_connections: ConnCount::Word("auto".into()),
            max_connections_per_ip: 0,
        }
    }
}

/// `max_connections` as written: a number or a word (`"auto"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnCount {
    Number(u64),
    Word(String),
}

impl<'de> Deserialize<'de> for ConnCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConnCount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of connections or \"auto\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConnCount, E> {
                Ok(ConnCount::Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConnCount, E> {
                u64::try_from(v)
                    .map(ConnCount::Number)
                    .map_err(|_| E::custom("must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConnCount, E> {
                Ok(ConnCount::Word(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Pingora refuses a head over 1 MiB whatever the configuration says.
const MAX_HEAD: u64 = 1 << 20;
/// Below this a browser's ordinary request line or Cookie would not fit.
const MIN_BUFFER: u64 = 1 << 10;

/// `"4 8k"`: the number of buffers and their size, or the rule the text breaks.
fn header_buffers(text: &str) -> Result<HeaderBuffers, String> {
    const RULE: &str = "must be a number of buffers and their size, as in nginx (e.g. \"4 8k\")";
    let mut words = text.split_whitespace();
    let (Some(number), Some(size), None) = (words.next(), words.next(), words.next()) else {
        return Err(RULE.into());
    };
    let number: u64 = number.parse().map_err(|_| RULE.to_string())?;
    let size = super::size::parse(size).map_err(|_| RULE.to_string())?;
    if number == 0 {
        return Err("must have at least one buffer".into());
    }
    if size < MIN_BUFFER {
        return Err(format!(
            "must have buffers of at least {} (a browser's Cookie alone is often larger)",
            super::size::format(MIN_BUFFER)
        ));
    }
    if number.saturating_mul(size) > MAX_HEAD {
        return Err(format!(
            "must come to at most {} in all (Pingora's own limit for a request head)",
            super::size::format(MAX_HEAD)
        ));
    }
    Ok(HeaderBuffers {
        number: u32::try_from(number).map_err(|_| RULE.to_string())?,
        size: u32::try_from(size).map_err(|_| RULE.to_string())?,
    })
}

/// More than this is surely a typo (and above any file-descriptor limit).
const MAX_CONNECTIONS: u64 = 10_000_000;

impl Validator<'_> {
    pub(super) fn limits(&mut self, l: &LimitsSection) -> LimitSettings {
        let client_header_timeout =
            self.positive_duration("limits.client_header_timeout", &l.client_header_timeout);
        let header_buffers =
            header_buffers(&l.large_client_header_buffers).unwrap_or_else(|rule| {
                self.error(
                    "limits.large_client_header_buffers",
                    &l.large_client_header_buffers,
                    rule,
                );
                HeaderBuffers::default()
            });
        let client_max_body_size = size::parse(&l.client_max_body_size).unwrap_or_else(|rule| {
            self.error("limits.client_max_body_size", &l.client_max_body_size, rule);
            0
        });
        let max_connections = match &l.max_connections {
            ConnCount::Word(w) if w == "auto" => MaxConnections::Auto,
            ConnCount::Number(0) => MaxConnections::Unlimited,
            ConnCount::Number(n) if *n <= MAX_CONNECTIONS => {
                MaxConnections::At(usize::try_from(*n).unwrap_or(usize::MAX))
            }
            ConnCount::Number(n) => {
                self.error(
                    "limits.max_connections",
                    n,
                    format!("must be at most {MAX_CONNECTIONS}"),
                );
                MaxConnections::Auto
            }
            ConnCount::Word(w) => {
                self.error(
                    "limits.max_connections",
                    w,
                    "must be a number of connections (0 = no limit) or \"auto\"",
                );
                MaxConnections::Auto
            }
        };
        let max_connections_per_ip = u32::try_from(l.max_connections_per_ip)
            .ok()
            .filter(|n| u64::from(*n) <= MAX_CONNECTIONS)
            .unwrap_or_else(|| {
                self.error(
                    "limits.max_connections_per_ip",
                    l.max_connections_per_ip,
                    format!("must be at most {MAX_CONNECTIONS} (0 = no limit)"),
                );
                0
            });
        if let (MaxConnections::At(total), per_ip) = (max_connections, max_connections_per_ip) {
            if per_ip > 0 && u64::from(per_ip) > total as u64 {
                self.error(
                    "limits.max_connections_per_ip",
                    per_ip,
                    format!("is more than max_connections ({total}): it would never apply"),
                );
            }
        }
        LimitSettings {
            client_header_timeout,
            header_buffers,
            client_max_body_size,
            max_connections,
            max_connections_per_ip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use crate::limits::{HeaderBuffers, MaxConnections};
    use std::path::Path;
    use std::time::Duration;

    const POOLS: &str = "[pools.base]\nfile = \"b.conf\"\n";

    fn load(extra: &str) -> Result<Config, Vec<String>> {
        Config::from_toml(&format!("{POOLS}{extra}"), Path::new("/x/g.toml"))
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults_are_nginx_s() {
        let l = load("").unwrap().limits;
        assert_eq!(l.client_header_timeout, Duration::from_secs(60));
        assert_eq!(
            l.header_buffers,
            HeaderBuffers {
                number: 4,
                size: 8192
            }
        );
        assert_eq!(l.header_buffers.to_string(), "4 8k");
        assert_eq!(l.client_max_body_size, 1 << 20);
        assert_eq!(l.max_connections, MaxConnections::Auto);
        assert_eq!(l.max_connections_per_ip, 0);
    }

    #[test]
    fn the_shipped_config_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/graysplit.toml");
        let c = Config::load(&path).unwrap();
        let d = crate::limits::LimitSettings::default();
        let l = &c.limits;
        assert_eq!(
            (
                l.client_header_timeout,
                l.header_buffers,
                l.client_max_body_size,
                l.max_connections,
                l.max_connections_per_ip
            ),
            (
                d.client_header_timeout,
                d.header_buffers,
                d.client_max_body_size,
                d.max_connections,
                d.max_connections_per_ip
            )
        );
        let default_server = load("").unwrap().server;
        assert_eq!(c.server.debug_headers, default_server.debug_headers);
    }

    #[test]
    fn values_and_their_errors() {
        let l = load(
            "[limits]\nclient_header_timeout = \"10s\"\nclient_max_body_size = \"0\"\n\
             max_connections = 0\nmax_connections_per_ip = 20\n",
        )
        .unwrap()
        .limits;
        assert_eq!(
            (
                l.client_header_timeout,
                l.client_max_body_size,
                l.max_connections,
                l.max_connections_per_ip
            ),
            (Duration::from_secs(10), 0, MaxConnections::Unlimited, 20)
        );
        let e = load(
            "[limits]\nclient_header_timeout = \"0s\"\nclient_max_body_size = \"1mb\"\n\
             max_connections = \"lots\"\nmax_connections_per_ip = 5000000000\nburst = 1\n",
        )
        .unwrap_err();
        for want in [
            "limits.client_header_timeout = \"0s\": must be greater than zero",
            "limits.client_max_body_size = \"1mb\": must be a size in bytes",
            "limits.max_connections = \"lots\": must be a number of connections",
            "limits.max_connections_per_ip = \"5000000000\": must be at most",
            "limits.burst: unknown key",
        ] {
            assert!(
                e.iter().any(|m| m.starts_with(want)),
                "missing {want:?} in {e:#?}"
            );
        }
        let l = load("[limits]\nlarge_client_header_buffers = \" 8  128k \"\n")
            .unwrap()
            .limits;
        assert_eq!(
            l.header_buffers.limits(),
            crate::limits::head_size::HeadLimits {
                line_max: 128 << 10,
                head_max: (1 << 20) - 1
            }
        );
        for (value, rule) in [
            ("8k", "must be a number of buffers and their size"),
            ("4 8k 2", "must be a number of buffers and their size"),
            ("four 8k", "must be a number of buffers and their size"),
            ("4 8q", "must be a number of buffers and their size"),
            ("0 8k", "must have at least one buffer"),
            ("4 512", "must have buffers of at least 1k"),
            ("16 128k", "must come to at most 1m in all"),
        ] {
            let e = load(&format!(
                "[limits]\nlarge_client_header_buffers = \"{value}\"\n"
            ))
            .unwrap_err();
            let want = format!("limits.large_client_header_buffers = \"{value}\": {rule}");
            assert!(e[0].starts_with(&want), "{want:?} in {e:?}");
        }
        let e = load("[limits]\nmax_connections = 10\nmax_connections_per_ip = 11\n").unwrap_err();
        assert!(e[0].contains("is more than max_connections (10)"), "{e:?}");
        let e = load("[limits]\nmax_connections = -1\n").unwrap_err();
        assert!(
            e[0].starts_with("limits.max_connections: must not be negative"),
            "{e:?}"
        );
    }
}
