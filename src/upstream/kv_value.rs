//! Consul KV answers turned into servers, the way nginx-upsync-module reads them (pure, no I/O).
//!
//! A `GET /v1/kv/<prefix>?recurse` answer is a JSON array of entries; each entry's key names one
//! server (`<prefix><ip:port>`) and its base64 `Value` holds the server's settings as JSON:
//!
//! ```text
//! upstreams/base/10.0.0.1:8080  {"weight":1, "max_fails":2, "fail_timeout":10}
//! upstreams/base/[::1]:8080     {"Weight":"2", "down":1, "build":"2026.11.2"}
//! upstreams/base/web1:8080      (empty: all defaults)
//! ```
//!
//! Compatibility decisions (see `docs/consul.md`):
//! - field names are case-insensitive and numbers may be JSON numbers or numeric strings (upsync's
//!   cJSON is case-insensitive and reads both);
//! - an empty value means defaults, as in upsync;
//! - an unparsable value keeps the server with its *previous* settings (defaults if it is new) and
//!   is reported: upsync silently resets such a server to defaults, which can undo a `down`;
//! - `weight: 0` drains the server (upsync turns it into 1), `backup: 1` is a real nginx backup
//!   (upsync treats it as primary);
//! - hostnames and IPv6 keys are accepted (upsync takes IPv4 literals only); keys below a further
//!   '/' are reported and skipped.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::server::{
    ServerSpec, DEFAULT_FAIL_TIMEOUT, DEFAULT_MAX_FAILS, DEFAULT_WEIGHT, MAX_FAIL_TIMEOUT,
};
use super::upsync_format::valid_build;
use crate::config::duration;

/// One KV entry as Consul sends it. Compared as a whole to tell a real change from a blocking
/// query that merely returned (indexes are deliberately not part of it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KvEntry {
    #[serde(rename = "Key")]
    pub key: String,
    /// Base64, `None` when the key has no value.
    #[serde(rename = "Value", default)]
    pub value: Option<String>,
}

/// Parses the body of a 200 answer. Anything but a JSON array of entries is an error, so a proxy's
/// HTML page or a truncated body never empties a pool.
pub fn parse_body(body: &[u8]) -> Result<Vec<KvEntry>, String> {
    serde_json::from_slice::<Vec<KvEntry>>(body).map_err(|e| {
        let start: String = String::from_utf8_lossy(&body[..body.len().min(80)])
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        format!("answer is not a JSON array of KV entries ({e}); it starts with {start:?}")
    })
}

/// What the key of an entry means for the pool.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyKind<'a> {
    /// The folder key itself (`upstreams/base/`), created by UIs; not a server.
    Folder,
    /// `<prefix><server>`; the server part still has to be resolved.
    Server(&'a str),
    /// Not a server key; the reason is logged and the key skipped.
    Skip(String),
}

/// Classifies a key read under `prefix` (which ends in '/').
pub fn key_kind<'a>(prefix: &str, key: &'a str) -> KeyKind<'a> {
    let Some(rest) = key.strip_prefix(prefix) else {
        return KeyKind::Skip(format!("key is outside the prefix {prefix:?}"));
    };
    if rest.is_empty() {
        return KeyKind::Folder;
    }
    if rest.contains('/') {
        return KeyKind::Skip(format!(
            "key is in a sub-folder of {prefix:?}; servers are keys directly below it, \
             e.g. {prefix}10.0.0.1:8080"
        ));
    }
    KeyKind::Server(rest)
}

/// A server's settings from its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub weight: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub down: bool,
    pub backup: bool,
    pub build: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            weight: DEFAULT_WEIGHT,
            max_fails: DEFAULT_MAX_FAILS,
            fail_timeout: DEFAULT_FAIL_TIMEOUT,
            down: false,
            backup: false,
            build: None,
        }
    }
}

impl Settings {
    fn spec(&self, addr: SocketAddr, name: &str) -> ServerSpec {
        ServerSpec {
            addr,
            name: name.to_string(),
            weight: self.weight,
            max_fails: self.max_fails,
            fail_timeout: self.fail_timeout,
            down: self.down,
            backup: self.backup,
            build: self.build.clone(),
        }
    }
}

/// Decodes Consul's base64 `Value` (`None` = no value).
pub fn decode_value(value: Option<&str>) -> Result<Vec<u8>, String> {
    match value {
        None => Ok(Vec::new()),
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("Value is not base64 ({e})")),
    }
}

const EXAMPLE: &str = r#"{"weight":1, "max_fails":2, "fail_timeout":10}"#;

/// Parses a decoded value. Empty (or JSON `null`) means all defaults.
pub fn parse_value(raw: &[u8]) -> Result<Settings, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "value is not UTF-8 text".to_string())?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(Settings::default());
    }
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("value is not JSON ({e}); expected e.g. {EXAMPLE}"))?;
    let fields = match json {
        serde_json::Value::Null => return Ok(Settings::default()),
        serde_json::Value::Object(fields) => fields,
        _ => return Err(format!("value must be a JSON object such as {EXAMPLE}")),
    };
    let mut s = Settings::default();
    let mut seen = HashSet::new();
    for (name, v) in &fields {
        let field = name.to_ascii_lowercase();
        let known = matches!(
            field.as_str(),
            "weight" | "max_fails" | "fail_timeout" | "down" | "backup" | "build"
        );
        // Other fields are ignored, as upsync does: values may carry notes for other tools.
        if !known {
            continue;
        }
        if !seen.insert(field.clone()) {
            return Err(format!(
                "field {field:?} is given twice (field names are case-insensitive)"
            ));
        }
        if v.is_null() {
            continue; // explicit null: keep the default
        }
        match field.as_str() {
            "weight" => s.weight = whole_number(name, v)?,
            "max_fails" => s.max_fails = whole_number(name, v)?,
            "fail_timeout" => s.fail_timeout = fail_timeout(name, v)?,
            "down" => s.down = flag(name, v)?,
            "backup" => s.backup = flag(name, v)?,
            _ => s.build = build(name, v)?,
        }
    }
    Ok(s)
}

/// A whole number >= 0, as a JSON number (`2`, `2.0`) or a numeric string (`"2"`).
fn whole_number(name: &str, v: &serde_json::Value) -> Result<u32, String> {
    let err = || format!("{name:?}: {v} is not a whole number from 0 to {}", u32::MAX);
    let n = match v {
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u,
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f <= f64::from(u32::MAX) => f as u64,
            _ => return Err(err()),
        },
        serde_json::Value::String(t) => t.trim().parse::<u64>().map_err(|_| err())?,
        _ => return Err(err()),
    };
    u32::try_from(n).map_err(|_| err())
}

/// Seconds as a number or numeric string (`10`, `"10"`, `0.5`), or a duration string (`"10s"`,
/// `"500ms"`).
fn fail_timeout(name: &str, v: &serde_json::Value) -> Result<Duration, String> {
    let err = || {
        format!("{name:?}: {v} is not a duration (seconds as a number, or a string like \"10s\")")
    };
    // At most MAX_FAIL_TIMEOUT (a day). Whole milliseconds: the dump file (upsync's format) has no finer unit, so a finer value
    // would come back different after a restart.
    let secs = |f: f64| {
        (f.is_finite() && (0.0..=MAX_FAIL_TIMEOUT.as_secs_f64()).contains(&f))
            .then(|| Duration::from_millis((f * 1000.0).round() as u64))
            .ok_or_else(err)
    };
    match v {
        serde_json::Value::Number(n) => secs(n.as_f64().ok_or_else(err)?),
        serde_json::Value::String(t) => {
            let t = t.trim();
            match t.parse::<f64>() {
                Ok(f) => secs(f),
                Err(_) => {
                    let d = duration::parse(t).map_err(|_| err())?;
                    secs(d.as_secs_f64()).map(|_| d)
                }
            }
        }
        _ => Err(err()),
    }
}

/// 0/1, true/false, or the same as strings.
fn flag(name: &str, v: &serde_json::Value) -> Result<bool, String> {
    match v {
        serde_json::Value::Bool(b) => Ok(*b),
        serde_json::Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        serde_json::Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        serde_json::Value::String(t) => match t.trim() {
            "0" | "false" => Ok(false),
            "1" | "true" => Ok(true),
            _ => Err(format!("{name:?}: {v} must be 0 or 1")),
        },
        _ => Err(format!("{name:?}: {v} must be 0 or 1")),
    }
}

fn build(name: &str, v: &serde_json::Value) -> Result<Option<String>, String> {
    match v {
        serde_json::Value::String(b) if b.is_empty() => Ok(None),
        serde_json::Value::String(b) if valid_build(b) => Ok(Some(b.clone())),
        _ => Err(format!(
            "{name:?}: {v} is not a build id (1-64 characters of a-z, A-Z, 0-9, '.', '_' or '-')"
        )),
    }
}

/// One server key with its parsed (or unparsable) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvServer {
    /// The full key, for messages.
    pub key: String,
    /// The server part: `ip:port`, `[v6]:port` or `host:port`.
    pub name: String,
    pub settings: Result<Settings, String>,
}

/// Classifies and parses every entry. Returns the server keys and one message per skipped key.
pub fn servers(prefix: &str, entries: &[KvEntry]) -> (Vec<KvServer>, Vec<String>) {
    let mut servers = Vec::new();
    let mut skipped = Vec::new();
    for e in entries {
        match key_kind(prefix, &e.key) {
            KeyKind::Folder => {}
            KeyKind::Skip(reason) => skipped.push(format!("key {:?}: {reason}; skipped", e.key)),
            KeyKind::Server(name) => servers.push(KvServer {
                key: e.key.clone(),
                name: name.to_string(),
                settings: decode_value(e.value.as_deref()).and_then(|raw| parse_value(&raw)),
            }),
        }
    }
    (servers, skipped)
}

/// Turns server keys into the pool's new list.
///
/// `resolved` maps each server name to its address (or why it could not be resolved);
/// `previous` is the pool's current list, used to keep the settings of a server whose value is
/// unparsable and the address of a server whose name does not resolve right now. Returns the
/// specs and one message per problem.
pub fn specs(
    servers: &[KvServer],
    resolved: &HashMap<String, Result<SocketAddr, String>>,
    previous: &[ServerSpec],
) -> (Vec<ServerSpec>, Vec<String>) {
    let mut out: Vec<ServerSpec> = Vec::new();
    let mut problems = Vec::new();
    for s in servers {
        let before = previous.iter().find(|p| p.name == s.name);
        let addr = match resolved.get(&s.name) {
            Some(Ok(addr)) => *addr,
            other => {
                let why = match other {
                    Some(Err(e)) => e.clone(),
                    _ => "not resolved".to_string(),
                };
                match before {
                    // A DNS hiccup must not remove a working server.
                    Some(p) => {
                        problems.push(format!(
                            "key {:?}: {why}; keeping its last address {}",
                            s.key, p.addr
                        ));
                        p.addr
                    }
                    None => {
                        problems.push(format!("key {:?}: {why}; skipped", s.key));
                        continue;
                    }
                }
            }
        };
        let spec = match (&s.settings, before) {
            (Ok(settings), _) => settings.spec(addr, &s.name),
            (Err(e), Some(p)) => {
                problems.push(format!(
                    "key {:?}: {e}; keeping the server with its previous settings",
                    s.key
                ));
                ServerSpec { addr, ..p.clone() }
            }
            (Err(e), None) => {
                problems.push(format!(
                    "key {:?}: {e}; adding the server with default settings",
                    s.key
                ));
                Settings::default().spec(addr, &s.name)
            }
        };
        if let Some(dup) = out.iter().find(|o| o.addr == spec.addr) {
            problems.push(format!(
                "key {:?}: {} is the same address as {}; skipped",
                s.key, spec.addr, dup.name
            ));
            continue;
        }
        out.push(spec);
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "upstreams/base/";

    fn entry(key: &str, value: Option<&str>) -> KvEntry {
        KvEntry {
            key: key.into(),
            value: value.map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
        }
    }

    fn settings(v: &str) -> Result<Settings, String> {
        parse_value(v.as_bytes())
    }

    fn resolve_literals(servers: &[KvServer]) -> HashMap<String, Result<SocketAddr, String>> {
        servers
            .iter()
            .map(|s| {
                let r = s
                    .name
                    .parse::<SocketAddr>()
                    .map_err(|_| "no DNS in tests".to_string());
                (s.name.clone(), r)
            })
            .collect()
    }

    fn build_list(entries: &[KvEntry], previous: &[ServerSpec]) -> (Vec<ServerSpec>, Vec<String>) {
        let (servers, mut problems) = servers(PREFIX, entries);
        let (specs, more) = specs(&servers, &resolve_literals(&servers), previous);
        problems.extend(more);
        (specs, problems)
    }

    #[test]
    fn parses_consul_body_and_rejects_anything_else() {
        let body = br#"[{"LockIndex":0,"Key":"upstreams/base/10.0.0.1:80","Flags":0,
            "Value":"eyJ3ZWlnaHQiOjJ9","CreateIndex":5,"ModifyIndex":7},
            {"Key":"upstreams/base/","Value":null}]"#;
        let e = parse_body(body).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].key, "upstreams/base/10.0.0.1:80");
        assert_eq!(
            decode_value(e[0].value.as_deref()).unwrap(),
            br#"{"weight":2}"#
        );
        assert_eq!(e[1].value, None);
        for bad in [
            &b"not json {{{"[..],
            b"{}",
            b"",
            b"<html>502</html>",
            b"[{\"Value\":null}]",
        ] {
            let err = parse_body(bad).unwrap_err();
            assert!(err.contains("not a JSON array of KV entries"), "{err}");
        }
        assert_eq!(parse_body(b"[]").unwrap(), vec![]);
    }

    #[test]
    fn keys_folder_server_and_subfolder() {
        assert_eq!(key_kind(PREFIX, "upstreams/base/"), KeyKind::Folder);
        assert_eq!(
            key_kind(PREFIX, "upstreams/base/10.0.0.1:80"),
            KeyKind::Server("10.0.0.1:80")
        );
        assert_eq!(
            key_kind(PREFIX, "upstreams/base/[::1]:80"),
            KeyKind::Server("[::1]:80")
        );
        assert_eq!(
            key_kind(PREFIX, "upstreams/base/web1:80"),
            KeyKind::Server("web1:80")
        );
        assert!(
            matches!(key_kind(PREFIX, "upstreams/base/old/10.0.0.1:80"), KeyKind::Skip(r) if r.contains("sub-folder"))
        );
        assert!(
            matches!(key_kind(PREFIX, "upstreams/base2/10.0.0.1:80"), KeyKind::Skip(r) if r.contains("outside"))
        );
    }

    #[test]
    fn empty_value_and_null_mean_defaults() {
        assert_eq!(settings(""), Ok(Settings::default()));
        assert_eq!(settings("  \n"), Ok(Settings::default()));
        assert_eq!(settings("null"), Ok(Settings::default()));
        assert_eq!(settings("{}"), Ok(Settings::default()));
        assert_eq!(decode_value(None).unwrap(), b"");
        let d = Settings::default();
        assert_eq!(
            (d.weight, d.max_fails, d.fail_timeout),
            (1, 2, Duration::from_secs(10))
        );
        assert!(!d.down && !d.backup && d.build.is_none());
    }

    #[test]
    fn the_operators_curl_value_parses() {
        let s = settings(r#"{"weight":1, "max_fails":2, "fail_timeout":10}"#).unwrap();
        assert_eq!(s, Settings::default());
        let s = settings(r#"{"weight":3, "max_fails":0, "fail_timeout":30, "down":1, "backup":1, "build":"2026.11.2"}"#).unwrap();
        assert_eq!(
            s,
            Settings {
                weight: 3,
                max_fails: 0,
                fail_timeout: Duration::from_secs(30),
                down: true,
                backup: true,
                build: Some("2026.11.2".into()),
            }
        );
    }

    #[test]
    fn field_names_are_case_insensitive_and_numbers_may_be_strings() {
        let s = settings(
            r#"{"Weight":"5", "MAX_FAILS":" 4 ", "Fail_Timeout":"7", "DOWN":"1", "Backup":true}"#,
        )
        .unwrap();
        assert_eq!(
            (s.weight, s.max_fails, s.fail_timeout),
            (5, 4, Duration::from_secs(7))
        );
        assert!(s.down && s.backup);
        assert_eq!(settings(r#"{"weight":2.0}"#).unwrap().weight, 2);
        assert_eq!(
            settings(r#"{"down":false,"backup":"0"}"#).unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn fail_timeout_takes_seconds_or_a_duration() {
        let ft = |v: &str| settings(&format!(r#"{{"fail_timeout":{v}}}"#)).map(|s| s.fail_timeout);
        assert_eq!(ft("10"), Ok(Duration::from_secs(10)));
        assert_eq!(ft("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(ft(r#""10s""#), Ok(Duration::from_secs(10)));
        assert_eq!(ft(r#""1500ms""#), Ok(Duration::from_millis(1500)));
        assert_eq!(ft(r#""1m""#), Ok(Duration::from_secs(60)));
        assert_eq!(ft("0"), Ok(Duration::ZERO));
        for bad in ["-1", r#""ten""#, "true", "[]", "1e300", r#""2d""#] {
            assert!(ft(bad).is_err(), "fail_timeout {bad} should be refused");
        }
    }

    #[test]
    fn weight_zero_drains_and_is_kept() {
        assert_eq!(settings(r#"{"weight":0}"#).unwrap().weight, 0);
    }

    #[test]
    fn explicit_null_fields_and_unknown_fields_are_ignored() {
        let s = settings(r#"{"weight":null,"owner":"team-a","note":{"x":1}}"#).unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let err = |v: &str| settings(v).unwrap_err();
        assert!(err("weight=3").contains("not JSON"));
        assert!(err("[1,2]").contains("JSON object"));
        assert!(err("5").contains("JSON object"));
        assert!(err(r#"{"weight":-1}"#).contains("\"weight\": -1 is not a whole number"));
        assert!(err(r#"{"weight":1.5}"#).contains("whole number"));
        assert!(err(r#"{"weight":"abc"}"#).contains("whole number"));
        assert!(err(r#"{"weight":4294967296}"#).contains("whole number"));
        assert!(err(r#"{"weight":true}"#).contains("whole number"));
        assert!(err(r#"{"down":2}"#).contains("\"down\": 2 must be 0 or 1"));
        assert!(err(r#"{"backup":"yes"}"#).contains("must be 0 or 1"));
        assert!(err(r#"{"build":"a/b"}"#).contains("not a build id"));
        assert!(err(r#"{"build":7}"#).contains("not a build id"));
        assert!(err(r#"{"weight":1,"WEIGHT":2}"#).contains("given twice"));
        assert!(parse_value(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
        assert_eq!(settings(r#"{"build":""}"#).unwrap().build, None);
    }

    #[test]
    fn base64_garbage_is_a_value_error() {
        let e = decode_value(Some("!!!not base64")).unwrap_err();
        assert!(e.contains("base64"), "{e}");
    }

    #[test]
    fn folder_key_skipped_subfolder_reported() {
        let (list, problems) = build_list(
            &[
                entry("upstreams/base/", None),
                entry("upstreams/base/127.0.0.1:1", Some("")),
                entry("upstreams/base/old/127.0.0.1:2", Some("")),
            ],
            &[],
        );
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "127.0.0.1:1");
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("upstreams/base/old/127.0.0.1:2")
                && problems[0].contains("skipped")
        );
    }

    #[test]
    fn unparsable_value_keeps_previous_settings_or_defaults_when_new() {
        let mut before = ServerSpec::new("127.0.0.1:1".parse().unwrap(), "127.0.0.1:1");
        before.weight = 7;
        before.down = true;
        let (list, problems) = build_list(
            &[
                entry("upstreams/base/127.0.0.1:1", Some("{weight:")),
                entry("upstreams/base/127.0.0.1:2", Some("{weight:")),
            ],
            &[before.clone()],
        );
        assert_eq!(list[0], before, "known server keeps weight 7 and down");
        assert_eq!(
            list[1],
            ServerSpec::new("127.0.0.1:2".parse().unwrap(), "127.0.0.1:2")
        );
        assert_eq!(problems.len(), 2);
        assert!(
            problems[0].contains("\"upstreams/base/127.0.0.1:1\"")
                && problems[0].contains("previous settings")
        );
        assert!(problems[1].contains("default settings"));
    }

    #[test]
    fn unresolvable_name_keeps_its_last_address_or_is_skipped() {
        let servers = vec![
            KvServer {
                key: "upstreams/base/web1:80".into(),
                name: "web1:80".into(),
                settings: Ok(Settings {
                    weight: 2,
                    ..Settings::default()
                }),
            },
            KvServer {
                key: "upstreams/base/web2:80".into(),
                name: "web2:80".into(),
                settings: Ok(Settings::default()),
            },
        ];
        let resolved: HashMap<_, _> = [
            ("web1:80".to_string(), Err("cannot resolve".to_string())),
            ("web2:80".to_string(), Err("cannot resolve".to_string())),
        ]
        .into();
        let before = ServerSpec::new("10.0.0.1:80".parse().unwrap(), "web1:80");
        let (list, problems) = specs(&servers, &resolved, &[before]);
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].addr, list[0].weight),
            ("10.0.0.1:80".parse().unwrap(), 2)
        );
        assert!(problems[0].contains("keeping its last address 10.0.0.1:80"));
        assert!(problems[1].contains("web2:80") && problems[1].contains("skipped"));
    }

    #[test]
    fn two_names_for_one_address_keep_the_first() {
        let servers = vec![
            KvServer {
                key: "k/a".into(),
                name: "a".into(),
                settings: Ok(Settings::default()),
            },
            KvServer {
                key: "k/b".into(),
                name: "b".into(),
                settings: Ok(Settings::default()),
            },
        ];
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let resolved: HashMap<_, _> =
            [("a".to_string(), Ok(addr)), ("b".to_string(), Ok(addr))].into();
        let (list, problems) = specs(&servers, &resolved, &[]);
        assert_eq!(list.len(), 1);
        assert!(problems[0].contains("same address as a"), "{problems:?}");
    }

    #[test]
    fn ipv6_and_order_follow_consul() {
        let (list, problems) = build_list(
            &[
                entry("upstreams/base/127.0.0.1:2", Some(r#"{"weight":2}"#)),
                entry("upstreams/base/[::1]:3", Some(r#"{"backup":1}"#)),
            ],
            &[],
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(list[0].weight, 2);
        assert_eq!(list[1].addr, "[::1]:3".parse().unwrap());
        assert!(list[1].backup);
    }
}

/// Property tests (`cargo test --lib fuzz_`; `PROPTEST_CASES=1000000` for the long run).
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use crate::upstream::upsync_format::{parse_line_with, render_line};
    use proptest::prelude::*;
    use serde_json::{json, Value};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const PREFIX: &str = "upstreams/base/";
    const FIELDS: [&str; 6] = [
        "weight",
        "max_fails",
        "fail_timeout",
        "down",
        "backup",
        "build",
    ];

    fn b64(raw: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    fn no_dns(_: &str, _: u16) -> Result<SocketAddr, String> {
        Err("no DNS in tests".into())
    }

    /// The field name in a random mix of upper and lower case (upsync's cJSON ignores case).
    fn cased(name: &str, mask: u64) -> String {
        name.chars()
            .enumerate()
            .map(|(i, c)| {
                if mask >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    }

    fn number_text(n: u32, style: u8) -> String {
        match style % 4 {
            0 => n.to_string(),
            1 => format!("\"{n}\""),
            2 => format!("\" {n} \""),
            _ => format!("{n}.0"),
        }
    }

    fn flag_text(b: bool, style: u8) -> String {
        let s = match (style % 4, b) {
            (0, _) => b.to_string(),
            (1, true) => "1".into(),
            (1, false) => "0".into(),
            (2, _) => format!("\"{b}\""),
            (_, true) => "\" 1\"".into(),
            (_, false) => "\"0 \"".into(),
        };
        s
    }

    /// `fail_timeout` in every spelling upsync values use, exact to the millisecond.
    fn fail_timeout_text(ms: u64, style: u8) -> String {
        let secs = ms / 1000;
        match style % 6 {
            _ if !ms.is_multiple_of(1000) => match style % 3 {
                0 => format!("\"{ms}ms\""),
                // Binary fractions are exact in f64: 0.5 s, 0.25 s, 0.125 s...
                1 if ms.is_multiple_of(125) => format!("{}", ms as f64 / 1000.0),
                _ => format!("\"{ms}ms\""),
            },
            0 => secs.to_string(),
            1 => format!("\"{secs}\""),
            2 => format!("\"{secs}s\""),
            3 if secs.is_multiple_of(60) => format!("\"{}m\"", secs / 60),
            4 => format!("{secs}.0"),
            _ => format!("\"{ms}ms\""),
        }
    }

    fn settings() -> impl Strategy<Value = Settings> {
        (
            any::<u32>(),
            any::<u32>(),
            prop_oneof![
                (0u64..=86_400).prop_map(|s| s * 1000),
                0u64..=86_400_000,
                (0u64..=691_200).prop_map(|e| e * 125),
            ],
            any::<bool>(),
            any::<bool>(),
            proptest::option::of("[a-zA-Z0-9._-]{1,64}"),
        )
            .prop_map(|(weight, max_fails, ms, down, backup, build)| Settings {
                weight,
                max_fails,
                fail_timeout: Duration::from_millis(ms),
                down,
                backup,
                build,
            })
    }

    /// A JSON value an operator could PUT for `s`: any field order and case, numbers as numbers
    /// or strings, defaults left out or null, notes for other tools in extra fields.
    fn written() -> impl Strategy<Value = (String, Settings)> {
        (
            settings(),
            any::<[u8; 6]>(),
            any::<[u64; 6]>(),
            any::<[bool; 6]>(),
            proptest::collection::vec(("[a-z_]{1,10}", json_value()), 0..3),
            prop::sample::select(vec!["", " ", "\n", "\t "]),
        )
            .prop_flat_map(|(s, styles, masks, omit, extra, ws)| {
                let d = Settings::default();
                let mut fields: Vec<String> = Vec::new();
                let mut field = |i: usize, value: Option<String>| {
                    let name = cased(FIELDS[i], masks[i]);
                    match value {
                        Some(v) => fields.push(format!("\"{name}\":{ws}{v}")),
                        None if styles[i] & 16 != 0 => fields.push(format!("\"{name}\":null")),
                        None => {}
                    }
                };
                let keep = |i: usize, same: bool| !(same && omit[i]);
                field(
                    0,
                    keep(0, s.weight == d.weight).then(|| number_text(s.weight, styles[0])),
                );
                field(
                    1,
                    keep(1, s.max_fails == d.max_fails)
                        .then(|| number_text(s.max_fails, styles[1])),
                );
                let ms = s.fail_timeout.as_millis() as u64;
                field(
                    2,
                    keep(2, s.fail_timeout == d.fail_timeout)
                        .then(|| fail_timeout_text(ms, styles[2])),
                );
                field(3, keep(3, !s.down).then(|| flag_text(s.down, styles[3])));
                field(
                    4,
                    keep(4, !s.backup).then(|| flag_text(s.backup, styles[4])),
                );
                let build = match &s.build {
                    Some(b) => Some(format!("\"{b}\"")),
                    None if omit[5] => None,
                    None => Some("\"\"".into()),
                };
                field(5, build);
                for (name, v) in extra {
                    if !FIELDS.contains(&name.as_str()) {
                        fields.push(format!("{}:{v}", Value::String(name)));
                    }
                }
                Just(fields)
                    .prop_shuffle()
                    .prop_map(move |f| (format!("{ws}{{{ws}{}{ws}}}{ws}", f.join(",")), s.clone()))
            })
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            (0.0f64..90_000.0).prop_map(|f| json!(f)),
            (0.0f64..90_000.0).prop_map(|f| Value::String(f.to_string())),
            ".{0,12}".prop_map(Value::String),
            "[0-9 .a-z-]{0,10}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// An object whose known fields (in any case) hold values of any type.
    fn object_of_anything() -> impl Strategy<Value = Value> {
        proptest::collection::vec(
            (
                prop::sample::select(FIELDS.to_vec()),
                any::<u64>(),
                json_value(),
            ),
            0..6,
        )
        .prop_map(|fields| {
            Value::Object(
                fields
                    .into_iter()
                    .map(|(name, mask, v)| (cased(name, mask), v))
                    .collect(),
            )
        })
    }

    /// What an accepted value must satisfy whatever it was: sane ranges, and the server it
    /// makes survives the dump file (written in upsync's format, read back at the next start).
    fn check_accepted(s: &Settings) -> Result<(), TestCaseError> {
        prop_assert!(s.fail_timeout <= Duration::from_secs(86_400));
        if let Some(b) = &s.build {
            prop_assert!(valid_build(b), "{:?}", b);
        }
        let spec = s.spec("10.0.0.1:80".parse().unwrap(), "10.0.0.1:80");
        let line = render_line(&spec);
        prop_assert_eq!(
            parse_line_with(&line, &no_dns),
            Ok(Some(spec)),
            "dump line {:?}",
            line
        );
        Ok(())
    }

    fn server_name() -> impl Strategy<Value = (String, SocketAddr)> {
        prop_oneof![
            (any::<Ipv4Addr>(), any::<u16>())
                .prop_map(|(ip, p)| (format!("{ip}:{p}"), SocketAddr::from((ip, p)))),
            (any::<Ipv6Addr>(), any::<u16>())
                .prop_map(|(ip, p)| (format!("[{ip}]:{p}"), SocketAddr::from((ip, p)))),
        ]
    }

    proptest! {
        #[test]
        fn fuzz_written_value_parses_to_its_fields((text, want) in written()) {
            prop_assert_eq!(parse_value(text.as_bytes()), Ok(want.clone()), "{}", text);
            check_accepted(&want)?;
        }

        #[test]
        fn fuzz_value_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            match parse_value(&raw) {
                Ok(s) => check_accepted(&s)?,
                Err(e) => {
                    prop_assert!(!e.is_empty());
                    if std::str::from_utf8(&raw).is_err() {
                        prop_assert!(e.contains("UTF-8"), "{}", e);
                    }
                }
            }
        }

        #[test]
        fn fuzz_value_fields_of_any_type_never_panic(v in object_of_anything()) {
            let text = v.to_string();
            match parse_value(text.as_bytes()) {
                Ok(s) => check_accepted(&s)?,
                // Every refusal names the field at fault (or the duplicate).
                Err(e) => prop_assert!(
                    FIELDS.iter().any(|f| e.to_ascii_lowercase().contains(f)),
                    "{} -> {}", text, e
                ),
            }
        }

        #[test]
        fn fuzz_base64_values_decode_exactly(raw in proptest::collection::vec(any::<u8>(), 0..128),
                                             pad in "[ \t\r\n]{0,2}") {
            prop_assert_eq!(decode_value(Some(&format!("{pad}{}{pad}", b64(&raw)))), Ok(raw));
        }

        #[test]
        fn fuzz_base64_garbage_never_panics(text in ".{0,64}") {
            if let Err(e) = decode_value(Some(&text)) {
                prop_assert!(e.contains("base64"));
            }
        }

        #[test]
        fn fuzz_body_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            match parse_body(&body) {
                Ok(entries) => {
                    // What was accepted is exactly what the body says.
                    let again: Vec<Value> = entries
                        .iter()
                        .map(|e| json!({"Key": e.key, "Value": e.value}))
                        .collect();
                    let text = serde_json::to_vec(&again).unwrap();
                    prop_assert_eq!(parse_body(&text), Ok(entries));
                }
                Err(e) => {
                    prop_assert!(e.contains("not a JSON array of KV entries"), "{}", e);
                    prop_assert!(!e.chars().any(|c| c.is_control()), "{:?}", e);
                }
            }
        }

        #[test]
        fn fuzz_consul_answers_round_trip(
            entries in proptest::collection::vec(
                (".{0,40}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                 any::<u64>(), any::<u32>()),
                0..8,
            ),
        ) {
            // Consul's full entry shape, with the fields we ignore.
            let body: Vec<Value> = entries
                .iter()
                .map(|(key, value, index, flags)| json!({
                    "LockIndex": 0, "Key": key, "Flags": flags,
                    "Value": value.as_deref().map(b64),
                    "CreateIndex": index, "ModifyIndex": index,
                }))
                .collect();
            let parsed = parse_body(&serde_json::to_vec(&body).unwrap()).unwrap();
            prop_assert_eq!(parsed.len(), entries.len());
            for (got, (key, value, _, _)) in parsed.iter().zip(&entries) {
                prop_assert_eq!(&got.key, key);
                prop_assert_eq!(decode_value(got.value.as_deref()), Ok(value.clone().unwrap_or_default()));
            }
        }

        #[test]
        fn fuzz_key_kind_is_exactly_the_rule(
            prefix in "[a-z/._-]{0,12}/",
            key in prop_oneof![".{0,30}", "[a-z/._-]{0,12}/[^/]{0,20}", "[a-z/._-]{0,12}/.{0,20}"],
            own in any::<bool>(),
        ) {
            let key = if own { format!("{prefix}{key}") } else { key };
            let kind = key_kind(&prefix, &key);
            match key.strip_prefix(prefix.as_str()) {
                None => prop_assert!(matches!(kind, KeyKind::Skip(ref r) if r.contains("outside"))),
                Some("") => prop_assert_eq!(kind, KeyKind::Folder),
                Some(rest) if rest.contains('/') => {
                    prop_assert!(matches!(kind, KeyKind::Skip(ref r) if r.contains("sub-folder")))
                }
                Some(rest) => prop_assert_eq!(kind, KeyKind::Server(rest)),
            }
        }

        #[test]
        fn fuzz_generated_pool_becomes_exactly_its_servers(
            servers in proptest::collection::vec((server_name(), written()), 0..8),
            folder in any::<bool>(),
            junk in proptest::collection::vec(("[a-z]{1,5}/[a-z0-9:.]{1,10}", ".{0,10}"), 0..3),
        ) {
            let mut entries = Vec::new();
            if folder {
                entries.push(KvEntry { key: PREFIX.into(), value: None });
            }
            for ((name, _), (text, _)) in &servers {
                entries.push(KvEntry { key: format!("{PREFIX}{name}"), value: Some(b64(text.as_bytes())) });
            }
            for (sub, v) in &junk {
                entries.push(KvEntry { key: format!("{PREFIX}{sub}"), value: Some(b64(v.as_bytes())) });
            }
            let (kv, skipped) = super::servers(PREFIX, &entries);
            prop_assert_eq!(skipped.len(), junk.len());
            let resolved: HashMap<String, Result<SocketAddr, String>> =
                servers.iter().map(|((n, a), _)| (n.clone(), Ok(*a))).collect();
            let (specs, problems) = super::specs(&kv, &resolved, &[]);
            // The model: in order, the first key of each address wins.
            let mut want: Vec<ServerSpec> = Vec::new();
            for ((name, addr), (_, s)) in &servers {
                if !want.iter().any(|w| w.addr == *addr) {
                    want.push(s.spec(*addr, name));
                }
            }
            prop_assert_eq!(problems.len(), servers.len() - want.len());
            prop_assert_eq!(specs, want);
        }

        #[test]
        fn fuzz_pool_of_arbitrary_entries_never_panics(
            entries in proptest::collection::vec(
                (prop_oneof![".{0,30}", "upstreams/base/.{0,24}"],
                 proptest::option::of(prop_oneof![
                     proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| b64(&b)),
                     ".{0,20}",
                 ])),
                0..10,
            ),
            previous in proptest::collection::vec(server_name(), 0..3),
        ) {
            let entries: Vec<KvEntry> =
                entries.into_iter().map(|(key, value)| KvEntry { key, value }).collect();
            let (kv, skipped) = super::servers(PREFIX, &entries);
            let previous: Vec<ServerSpec> =
                previous.into_iter().map(|(n, a)| ServerSpec::new(a, n)).collect();
            let resolved: HashMap<String, Result<SocketAddr, String>> = kv
                .iter()
                .map(|s| {
                    let r = upsync_format_resolve(&s.name);
                    (s.name.clone(), r)
                })
                .collect();
            let (specs, problems) = super::specs(&kv, &resolved, &previous);
            prop_assert!(specs.len() <= kv.len());
            // Each entry is the folder, a server key or a reported skip.
            let folders = entries.iter().filter(|e| e.key == PREFIX).count();
            prop_assert_eq!(kv.len() + skipped.len() + folders, entries.len());
            let mut addrs = HashSet::new();
            for s in &specs {
                prop_assert!(addrs.insert(s.addr));
                prop_assert!(kv.iter().any(|k| k.name == s.name));
                check_accepted(&Settings {
                    weight: s.weight, max_fails: s.max_fails, fail_timeout: s.fail_timeout,
                    down: s.down, backup: s.backup, build: s.build.clone(),
                })?;
            }
            // Every server key that did not make it says why.
            prop_assert!(specs.len() + problems.len() >= kv.len());
        }
    }

    fn upsync_format_resolve(name: &str) -> Result<SocketAddr, String> {
        crate::upstream::upsync_format::resolve_with(name, &no_dns)
    }
}
