//! `[pin]`: the pin cookie (one page, one build) — the file shape and its validation into
//! [`PinSettings`].

use std::time::Duration;

use serde::Deserialize;

use super::{duration, Secret, Validator};
use crate::pin::classify::{AssetPatterns, DEFAULT_ASSET_PATTERNS};
use crate::pin::{PinSettings, MIN_SECRET_LEN, SECRETS_ENV};

/// Browsers cap `Max-Age` at 400 days (RFC 6265bis); longer values are cut silently.
const MAX_MAX_AGE: Duration = Duration::from_secs(400 * 86_400);

/// Default lifetime of a session pin (no `max_age`).
const DEFAULT_LIFETIME: &str = "12h";

/// Longest `build_wait`: a request held longer than this helps nobody (browsers and users give
/// up), and every waiting request holds a connection.
const MAX_BUILD_WAIT: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(default)]
pub struct PinSection {
    pub enabled: bool,
    pub name: String,
    /// Secrets; this type's `Debug` never shows them.
    pub secrets: Vec<String>,
    pub secure: bool,
    /// "" = a session cookie.
    pub max_age: String,
    /// "" = `max_age` when set, else 12h.
    pub lifetime: String,
    pub grace: String,
    pub build_wait: String,
    pub asset_patterns: Vec<String>,
    pub retry_missing_assets: bool,
    pub reject_html_assets: bool,
}

impl Default for PinSection {
    fn default() -> Self {
        Self {
            enabled: true,
            name: "graysplit".into(),
            secrets: Vec::new(),
            secure: false,
            max_age: String::new(),
            lifetime: String::new(),
            grace: "5m".into(),
            build_wait: "5s".into(),
            asset_patterns: DEFAULT_ASSET_PATTERNS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            retry_missing_assets: true,
            reject_html_assets: true,
        }
    }
}

impl std::fmt::Debug for PinSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinSection")
            .field("enabled", &self.enabled)
            .field("name", &self.name)
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("secure", &self.secure)
            .field("max_age", &self.max_age)
            .field("lifetime", &self.lifetime)
            .field("grace", &self.grace)
            .field("build_wait", &self.build_wait)
            .field("asset_patterns", &self.asset_patterns)
            .field("retry_missing_assets", &self.retry_missing_assets)
            .field("reject_html_assets", &self.reject_html_assets)
            .finish()
    }
}

impl Validator<'_> {
    pub(super) fn pin(&mut self, p: &PinSection) -> PinSettings {
        if !valid_cookie_name(&p.name) {
            self.error(
                "pin.name",
                &p.name,
                "must be a cookie name: 1-64 characters of a-z, A-Z, 0-9, '_' or '-'",
            );
        }
        let max_age = (!p.max_age.is_empty()).then(|| {
            let d = self.positive_duration("pin.max_age", &p.max_age);
            if d > MAX_MAX_AGE {
                self.error(
                    "pin.max_age",
                    &p.max_age,
                    "must be at most 400d (browsers cut longer Max-Age values to 400 days)",
                );
            }
            d
        });
        let lifetime = match (p.lifetime.as_str(), max_age) {
            ("", Some(age)) => age,
            ("", None) => duration::parse(DEFAULT_LIFETIME).unwrap_or(Duration::from_secs(43_200)),
            (written, _) => {
                let d = self.positive_duration("pin.lifetime", written);
                if let Some(age) = max_age.filter(|age| d < *age && !d.is_zero()) {
                    self.error(
                        "pin.lifetime",
                        written,
                        format!(
                            "must be at least max_age ({}): the browser would keep pins that \
                             graysplit no longer honours",
                            duration::format(age)
                        ),
                    );
                }
                d
            }
        };
        let grace = self.duration("pin.grace", &p.grace);
        // A lifetime that failed its own check (zero) is reported already.
        if grace > lifetime && !lifetime.is_zero() {
            self.error(
                "pin.grace",
                &p.grace,
                format!(
                    "must be at most the lifetime ({}): a pin is never honoured past it",
                    duration::format(lifetime)
                ),
            );
        }
        let build_wait = self.duration("pin.build_wait", &p.build_wait);
        if build_wait > MAX_BUILD_WAIT {
            self.error(
                "pin.build_wait",
                &p.build_wait,
                "must be at most 1m (each waiting request holds a connection; browsers give up)",
            );
        }
        let assets = match AssetPatterns::new(&p.asset_patterns) {
            Ok(a) => a,
            Err((i, rule)) => {
                self.error(
                    &format!("pin.asset_patterns[{i}]"),
                    &p.asset_patterns[i],
                    rule,
                );
                AssetPatterns::default()
            }
        };
        PinSettings {
            enabled: p.enabled,
            name: p.name.clone(),
            secrets: self.pin_secrets(&p.secrets),
            secure: p.secure,
            max_age,
            lifetime,
            grace,
            build_wait,
            assets,
            retry_missing: p.retry_missing_assets,
            reject_html: p.reject_html_assets,
        }
    }

    /// Secrets from the file, else from the environment (comma-separated). Never echoed.
    fn pin_secrets(&mut self, from_file: &[String]) -> Vec<Secret> {
        let (key, list): (String, Vec<String>) = if from_file.is_empty() {
            let env = (self.env)(SECRETS_ENV).unwrap_or_default();
            (
                SECRETS_ENV.to_string(),
                env.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            )
        } else {
            ("pin.secrets".to_string(), from_file.to_vec())
        };
        let mut out = Vec::with_capacity(list.len());
        for (i, s) in list.into_iter().enumerate() {
            if s.len() < MIN_SECRET_LEN {
                self.error_no_value(
                    &format!("{key}[{i}]"),
                    format!(
                        "must be at least {MIN_SECRET_LEN} bytes, e.g. `openssl rand -hex 32` \
                         (the value is not shown: it is a secret)"
                    ),
                );
                continue;
            }
            out.push(Secret::new(s));
        }
        out
    }
}

/// Warnings about the pin that `graysplit -t` prints and the start logs: things that work on one
/// instance and break a fleet. Not errors — a single instance without a secret is fine.
pub fn warnings(config: &super::Config) -> Vec<String> {
    let from_consul = config.pools.values().any(|p| p.consul_prefix.is_some())
        || config.gray.consul_prefix.is_some();
    let mut out = Vec::new();
    if config.pin.enabled && config.pin.secrets.is_empty() && from_consul {
        out.push(format!(
            "pin.secrets: no secret set (nor {SECRETS_ENV}) while pools or switches come from \
             Consul, which usually means several instances: each one signs pins with its own \
             random secret and rejects the others', so behind a load balancer pages mix builds \
             (and every restart re-pins everyone). Set the same secret on every instance, e.g. \
             {SECRETS_ENV}=$(openssl rand -hex 32)"
        ));
    }
    out
}

/// Cookie names as we allow them (a safe subset of RFC 6265's token).
fn valid_cookie_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    const POOLS: &str = "[pools.base]\nfile = \"base.conf\"\n";

    fn load(pin: &str, env: Option<&str>) -> Result<Config, Vec<ConfigError>> {
        let text = format!("{POOLS}[pin]\n{pin}\n");
        Config::from_toml_with_env(&text, Path::new("/etc/graysplit/graysplit.toml"), |n| {
            (n == super::SECRETS_ENV)
                .then(|| env.map(str::to_string))
                .flatten()
        })
    }

    fn errors(pin: &str) -> Vec<ConfigError> {
        load(pin, None).err().unwrap_or_default()
    }

    #[test]
    fn defaults() {
        let c = load("", None).unwrap();
        let p = &c.pin;
        assert!(p.enabled && !p.secure && p.retry_missing && p.reject_html);
        assert_eq!(p.name, "graysplit");
        assert!(p.secrets.is_empty(), "none: a random one at start");
        assert_eq!(p.max_age, None);
        assert_eq!(p.lifetime.as_secs(), 12 * 3600);
        assert_eq!((p.grace.as_secs(), p.build_wait.as_secs()), (300, 5));
        assert!(p.assets.matches("/assets/app.js") && !p.assets.matches("/index.html"));
    }

    #[test]
    fn max_age_sets_the_lifetime_unless_given() {
        let c = load("max_age = \"1h\"", None).unwrap();
        assert_eq!(c.pin.max_age.map(|d| d.as_secs()), Some(3600));
        assert_eq!(c.pin.lifetime.as_secs(), 3600);
        let c = load("max_age = \"1h\"\nlifetime = \"2h\"", None).unwrap();
        assert_eq!(c.pin.lifetime.as_secs(), 7200);
        let e = errors("max_age = \"2h\"\nlifetime = \"1h\"");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "pin.lifetime");
        assert!(e[0].rule.contains("at least max_age"), "{}", e[0]);
    }

    #[test]
    fn bad_values_name_key_value_and_rule() {
        let e = errors(
            "name = \"a b\"\nmax_age = \"0s\"\nlifetime = \"soon\"\nasset_patterns = [\"*.js\", \"assets/*\"]",
        );
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "pin.name",
                "pin.max_age",
                "pin.lifetime",
                "pin.asset_patterns[1]"
            ],
            "{e:?}"
        );
        assert_eq!(e[3].value.as_deref(), Some("assets/*"));
        assert!(e[3].rule.contains("must start with '/'"));
        let e = errors("grace = \"13h\"\nbuild_wait = \"2m\"");
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["pin.grace", "pin.build_wait"], "{e:?}");
        assert!(
            e[0].rule.contains("at most the lifetime (43200s)"),
            "{}",
            e[0]
        );
        let c = load("grace = \"0s\"\nbuild_wait = \"0s\"", None).unwrap();
        assert!(
            c.pin.grace.is_zero() && c.pin.build_wait.is_zero(),
            "0s: check always, never wait"
        );
        let e = errors("max_age = \"401d\"");
        assert!(e[0].rule.contains("400d"), "{e:?}");
        let e = errors("colour = \"red\"");
        assert_eq!(e[0].key, "pin.colour");
    }

    #[test]
    fn the_shipped_config_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/graysplit.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let shipped: crate::config::file::FileConfig = toml::from_str(&text).unwrap();
        let (got, want) = (shipped.pin, super::PinSection::default());
        assert!(
            text.contains("\n[pin]\n"),
            "conf/graysplit.toml has a [pin] section"
        );
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
        assert!(got.secrets.is_empty());
    }

    #[test]
    fn a_fleet_without_a_shared_secret_is_warned_about() {
        let consul = "[consul]\naddresses = [\"http://127.0.0.1:8500\"]\n\
                      [pools.base]\nconsul_prefix = \"upstreams/base/\"\n";
        let load = |extra: &str, env: Option<&str>| {
            Config::from_toml_with_env(
                &format!("{consul}{extra}"),
                Path::new("/etc/graysplit/graysplit.toml"),
                |n| {
                    (n == super::SECRETS_ENV)
                        .then(|| env.map(str::to_string))
                        .flatten()
                },
            )
            .unwrap()
        };
        let w = super::warnings(&load("", None));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("pin.secrets: no secret set"), "{}", w[0]);
        assert!(w[0].contains("pages mix builds"));
        assert!(super::warnings(&load("", Some("a-shared-secret-0123456789"))).is_empty());
        assert!(super::warnings(&load(
            "[pin]\nsecrets = [\"a-shared-secret-0123456789\"]",
            None
        ))
        .is_empty());
        assert!(super::warnings(&load("[pin]\nenabled = false", None)).is_empty());
        let file_pools = Config::from_toml(POOLS, Path::new("/etc/g.toml")).unwrap();
        assert!(
            super::warnings(&file_pools).is_empty(),
            "one machine: the start log says it"
        );
    }

    #[test]
    fn secrets_from_file_then_env_never_echoed() {
        let c = load(
            "secrets = [\"0123456789abcdef0123\", \"fedcba9876543210fedc\"]",
            Some("x"),
        )
        .unwrap();
        assert_eq!(c.pin.secrets.len(), 2, "file wins over the environment");
        assert_eq!(c.pin.secrets[0].expose(), "0123456789abcdef0123");
        let c = load("", Some(" new-secret-0123456789 , old-secret-0123456789,")).unwrap();
        let got: Vec<&str> = c.pin.secrets.iter().map(|s| s.expose()).collect();
        assert_eq!(got, ["new-secret-0123456789", "old-secret-0123456789"]);
        let e = load("secrets = [\"short-secret\"]", None).unwrap_err();
        assert_eq!(e[0].key, "pin.secrets[0]");
        assert_eq!(e[0].value, None);
        assert!(!e[0].to_string().contains("short-secret"), "{}", e[0]);
        let e = load("", Some("tiny")).unwrap_err();
        assert_eq!(e[0].key, "GRAYSPLIT_PIN_SECRETS[0]");
        assert!(
            !format!("{:?}", load("secrets = [\"0123456789abcdef0123\"]", None))
                .contains("0123456789abcdef")
        );
    }
}
