//! `[health]`, `[pools.<name>.health]` and the passive-failure keys of `[upstream]`: their file
//! shape, their validated form and the rules between the two.
//!
//! Every key of a pool's `health` section is optional and falls back to the shared `[health]`
//! section, which falls back to the defaults below (those of the seed's
//! `check interval=1000 rise=2 fall=2 timeout=3000 type=http` with `HEAD /`). An error names the
//! key where the bad value was written, so `pools.gray.health.rise` and `health.rise` are told
//! apart.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, ConfigError};

/// `[health]` or `[pools.<name>.health]` as written; `None` = not set here.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct HealthSection {
    pub enabled: Option<bool>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub method: Option<String>,
    pub alive: Option<Vec<String>>,
    pub default_down: Option<bool>,
}

/// Which check answers count as "alive": whole classes (`2xx`) and exact codes (`404`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliveStatuses {
    /// `classes[n]` is true when every `n`xx status is alive (index 1..=5).
    classes: [bool; 6],
    codes: Vec<u16>,
}

impl AliveStatuses {
    pub fn is_alive(&self, status: u16) -> bool {
        let class = usize::from(status / 100);
        (class < self.classes.len() && self.classes[class]) || self.codes.contains(&status)
    }
}

impl Default for AliveStatuses {
    /// nginx_upstream_check_module's `check_http_expect_alive http_2xx http_3xx`.
    fn default() -> Self {
        Self {
            classes: [false, false, true, true, false, false],
            codes: Vec::new(),
        }
    }
}

impl fmt::Display for AliveStatuses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let classes = (1..self.classes.len())
            .filter(|&c| self.classes[c])
            .map(|c| format!("{c}xx"));
        let codes = self.codes.iter().map(u16::to_string);
        let all: Vec<String> = classes.chain(codes).collect();
        f.write_str(&all.join(" "))
    }
}

/// Validated active-check settings of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// Run active checks (default true). Off: servers are up unless passive failures eject them.
    pub enabled: bool,
    /// Time between two checks of one server (default 1s).
    pub interval: Duration,
    /// Connect + send + status line must complete within this (default 3s).
    pub timeout: Duration,
    /// Consecutive passes that bring a down server up (default 2).
    pub rise: u32,
    /// Consecutive failures that take an up server down (default 2).
    pub fall: u32,
    /// Request target (default "/").
    pub path: String,
    /// `Host` header; `None` = the server's address as written in the pool (`10.0.0.1:8080`).
    pub host: Option<String>,
    /// Request method (default "HEAD").
    pub method: String,
    /// Statuses that count as a pass (default 2xx and 3xx).
    pub alive: AliveStatuses,
    /// New servers start down and get traffic only after `rise` passes (default true).
    pub default_down: bool,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            rise: 2,
            fall: 2,
            path: "/".into(),
            host: None,
            method: "HEAD".into(),
            alive: AliveStatuses::default(),
            default_down: true,
        }
    }
}

impl HealthSettings {
    /// Does a new server of this pool start down (checked, but without traffic until it passes)?
    pub fn starts_down(&self) -> bool {
        self.enabled && self.default_down
    }
}

/// Shortest accepted `interval`: below it checks would cost more than they tell.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Upper bound of `rise` and `fall`: larger values only mean "never flips".
pub const MAX_THRESHOLD: u32 = 1000;

/// Upstream statuses counted as passive failures unless `upstream.fail_on_status` says otherwise:
/// none, as nginx's default `proxy_next_upstream error timeout` — an application's deliberate 503
/// (a maintenance page, a rate limit) never ejects a server.
pub const DEFAULT_FAIL_ON_STATUS: [u16; 0] = [];

/// Resolves one health section: keys set in `section` (reported under `prefix`), the rest from
/// `fallback`. Problems are appended to `errors`.
pub fn resolve(
    errors: &mut Vec<ConfigError>,
    prefix: &str,
    section: &HealthSection,
    fallback: &HealthSettings,
) -> HealthSettings {
    Checker(errors).health(prefix, section, fallback)
}

/// A list of upstream statuses (`upstream.fail_on_status`, `upstream.retry_on_status`): each must
/// be an error status.
pub fn statuses(errors: &mut Vec<ConfigError>, key: &str, list: &[u16]) -> Vec<u16> {
    Checker(errors).statuses(key, list)
}

/// Collects problems like the config's validator (key, value, rule), without stopping.
struct Checker<'e>(&'e mut Vec<ConfigError>);

impl Checker<'_> {
    fn error(&mut self, key: &str, value: impl fmt::Display, rule: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            value: Some(value.to_string()),
            rule: rule.into(),
        });
    }

    fn positive_duration(&mut self, key: &str, value: &str) -> Duration {
        match duration::parse(value) {
            Ok(d) if d.is_zero() => {
                self.error(key, value, "must be greater than zero");
                d
            }
            Ok(d) => d,
            Err(rule) => {
                self.error(key, value, rule);
                Duration::ZERO
            }
        }
    }

    fn health(
        &mut self,
        prefix: &str,
        section: &HealthSection,
        fallback: &HealthSettings,
    ) -> HealthSettings {
        let key = |name: &str| format!("{prefix}.{name}");
        let mut s = fallback.clone();
        if let Some(v) = section.enabled {
            s.enabled = v;
        }
        if let Some(v) = section.default_down {
            s.default_down = v;
        }
        if let Some(v) = &section.interval {
            s.interval = self.positive_duration(&key("interval"), v);
            if duration::parse(v).is_ok() && !s.interval.is_zero() && s.interval < MIN_INTERVAL {
                self.error(&key("interval"), v, "must be at least 10ms");
            }
        }
        if let Some(v) = &section.timeout {
            s.timeout = self.positive_duration(&key("timeout"), v);
        }
        if let Some(v) = section.rise {
            s.rise = self.threshold(&key("rise"), v);
        }
        if let Some(v) = section.fall {
            s.fall = self.threshold(&key("fall"), v);
        }
        if let Some(v) = &section.path {
            if !v.starts_with('/') || !v.bytes().all(|b| b.is_ascii_graphic()) {
                self.error(
                    &key("path"),
                    v,
                    "must start with '/' and contain no spaces or control characters, e.g. \"/healthz\"",
                );
            }
            s.path = v.clone();
        }
        if let Some(v) = &section.host {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
                self.error(
                    &key("host"),
                    v,
                    "must be a host name (optionally with :port) without spaces, \
                     e.g. \"www.example.com\"; leave it out to send the server's address",
                );
            }
            s.host = Some(v.clone());
        }
        if let Some(v) = &section.method {
            if v.is_empty() || v.len() > 16 || !v.bytes().all(|b| b.is_ascii_uppercase()) {
                self.error(
                    &key("method"),
                    v,
                    "must be an HTTP method in capitals, e.g. \"HEAD\" or \"GET\"",
                );
            }
            s.method = v.clone();
        }
        if let Some(v) = &section.alive {
            s.alive = self.alive(&key("alive"), v);
        }
        s
    }

    fn threshold(&mut self, key: &str, v: u32) -> u32 {
        if v == 0 || v > MAX_THRESHOLD {
            self.error(key, v, format!("must be between 1 and {MAX_THRESHOLD}"));
            return 1;
        }
        v
    }

    fn alive(&mut self, key: &str, list: &[String]) -> AliveStatuses {
        const RULE: &str =
            "must be a status class such as \"2xx\" or a status code from 100 to 599";
        let mut out = AliveStatuses {
            classes: [false; 6],
            codes: Vec::new(),
        };
        if list.is_empty() {
            self.error(
                key,
                "[]",
                "must list at least one status, e.g. [\"2xx\", \"3xx\"]",
            );
            return AliveStatuses::default();
        }
        for (i, item) in list.iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            let text = item.trim().to_ascii_lowercase();
            if let Some(class) = text.strip_suffix("xx") {
                match class.parse::<usize>() {
                    Ok(c @ 1..=5) if class.len() == 1 => out.classes[c] = true,
                    _ => self.error(&item_key, item, RULE),
                }
            } else {
                match text.parse::<u16>() {
                    Ok(code @ 100..=599) if text.len() == 3 => out.codes.push(code),
                    _ => self.error(&item_key, item, RULE),
                }
            }
        }
        out
    }

    fn statuses(&mut self, key: &str, list: &[u16]) -> Vec<u16> {
        for (i, code) in list.iter().enumerate() {
            if !(400..=599).contains(code) {
                self.error(
                    &format!("{key}[{i}]"),
                    code,
                    "must be an error status from 400 to 599, e.g. 502",
                );
            }
        }
        list.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};
    use std::path::Path;

    const BASE: &str = "[pools.base]\nfile = \"base.conf\"\n";

    fn load(text: &str) -> Result<Config, Vec<ConfigError>> {
        Config::from_toml(text, Path::new("/etc/graysplit/graysplit.toml"))
    }

    fn errors(text: &str) -> Vec<String> {
        load(text)
            .expect_err("config should be refused")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn defaults_are_the_seeds_check_line() {
        let c = load(BASE).unwrap();
        let h = &c.pools["base"].health;
        assert_eq!(h, &HealthSettings::default());
        assert!(h.enabled && h.default_down && h.starts_down());
        assert_eq!((h.rise, h.fall), (2, 2));
        assert_eq!(h.interval, Duration::from_secs(1));
        assert_eq!(h.timeout, Duration::from_secs(3));
        assert_eq!(
            (h.method.as_str(), h.path.as_str(), &h.host),
            ("HEAD", "/", &None)
        );
        assert!(
            c.upstream.fail_on_status.is_empty(),
            "nginx's default: only errors and timeouts count"
        );
        assert!(c.upstream.retry_on_status.is_empty());
    }

    #[test]
    fn pool_keys_override_shared_keys_which_override_defaults() {
        let c = load(&format!(
            "[health]\ninterval = \"100ms\"\nrise = 3\npath = \"/healthz\"\n\
             alive = [\"2xx\", \"404\"]\n\
             {BASE}[pools.gray]\nfile = \"gray.conf\"\n\
             [pools.gray.health]\nrise = 1\nhost = \"gray.example.com\"\ndefault_down = false\n\
             method = \"GET\"\n[upstream]\nretry_on_status = [502, 503]\nfail_on_status = []\n"
        ))
        .unwrap();
        let base = &c.pools["base"].health;
        assert_eq!((base.rise, base.interval), (3, Duration::from_millis(100)));
        assert_eq!(base.path, "/healthz");
        assert!(base.alive.is_alive(404) && base.alive.is_alive(204) && !base.alive.is_alive(302));
        let gray = &c.pools["gray"].health;
        assert_eq!((gray.rise, gray.fall), (1, 2), "own rise, default fall");
        assert_eq!(gray.interval, Duration::from_millis(100), "shared interval");
        assert_eq!(gray.host.as_deref(), Some("gray.example.com"));
        assert_eq!(gray.method, "GET");
        assert!(!gray.starts_down());
        assert_eq!(c.upstream.retry_on_status, vec![502, 503]);
        assert!(c.upstream.fail_on_status.is_empty());
        let off = load(&format!("{BASE}[pools.base.health]\nenabled = false\n")).unwrap();
        assert!(
            !off.pools["base"].health.starts_down(),
            "no checks: nothing to wait for"
        );
    }

    #[test]
    fn every_bad_value_names_its_key_value_and_rule() {
        let e = errors(&format!(
            "[health]\ninterval = \"5ms\"\ntimeout = \"0s\"\nrise = 0\nalive = [\"2xx\", \"6xx\", \"20\"]\n\
             {BASE}[pools.base.health]\nfall = 5000\npath = \"healthz\"\nhost = \"a b\"\n\
             method = \"head\"\n[upstream]\nfail_on_status = [200]\nretry_on_status = [503, 600]\n"
        ));
        assert_eq!(
            e,
            vec![
                "upstream.fail_on_status[0] = \"200\": must be an error status from 400 to 599, e.g. 502",
                "upstream.retry_on_status[1] = \"600\": must be an error status from 400 to 599, e.g. 502",
                "health.interval = \"5ms\": must be at least 10ms",
                "health.timeout = \"0s\": must be greater than zero",
                "health.rise = \"0\": must be between 1 and 1000",
                "health.alive[1] = \"6xx\": must be a status class such as \"2xx\" or a status \
                 code from 100 to 599",
                "health.alive[2] = \"20\": must be a status class such as \"2xx\" or a status \
                 code from 100 to 599",
                "pools.base.health.fall = \"5000\": must be between 1 and 1000",
                "pools.base.health.path = \"healthz\": must start with '/' and contain no spaces or \
                 control characters, e.g. \"/healthz\"",
                "pools.base.health.host = \"a b\": must be a host name (optionally with :port) \
                 without spaces, e.g. \"www.example.com\"; leave it out to send the server's address",
                "pools.base.health.method = \"head\": must be an HTTP method in capitals, e.g. \
                 \"HEAD\" or \"GET\"",
            ]
        );
    }

    #[test]
    fn unknown_health_keys_are_reported_with_their_path() {
        let e = errors(&format!(
            "[health]\nintervall = \"1s\"\n{BASE}[pools.base.health]\nup = 1\n"
        ));
        assert!(
            e.contains(&"health.intervall: unknown key".to_string()),
            "{e:?}"
        );
        assert!(
            e.contains(&"pools.base.health.up: unknown key".to_string()),
            "{e:?}"
        );
    }

    #[test]
    fn empty_alive_list_is_refused() {
        let e = errors(&format!("{BASE}[pools.base.health]\nalive = []\n"));
        assert_eq!(
            e,
            vec!["pools.base.health.alive = \"[]\": must list at least one status, e.g. [\"2xx\", \"3xx\"]"]
        );
    }

    #[test]
    fn alive_defaults_to_2xx_and_3xx() {
        let a = AliveStatuses::default();
        for ok in [200, 204, 301, 304, 399] {
            assert!(a.is_alive(ok), "{ok}");
        }
        for bad in [0, 100, 404, 500, 503, 600, 999] {
            assert!(!a.is_alive(bad), "{bad}");
        }
        assert_eq!(a.to_string(), "2xx 3xx");
    }
}
