//! `[cache]`: what graysplit does to caching headers of responses decided per client
//! (`http_cache`) — the file shape and its validation.

use serde::Deserialize;

use super::Validator;
use crate::http_cache::{CacheSettings, Decided, DEFAULT_IMMUTABLE};
use crate::pin::classify::AssetPatterns;

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct CacheSection {
    /// "private" or "unchanged".
    pub decided: String,
    pub immutable: Vec<String>,
    pub tag_validators: bool,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            decided: "private".into(),
            immutable: DEFAULT_IMMUTABLE.iter().map(|s| s.to_string()).collect(),
            tag_validators: true,
        }
    }
}

impl Validator<'_> {
    pub(super) fn cache(&mut self, c: &CacheSection) -> CacheSettings {
        let decided = match c.decided.as_str() {
            "private" => Decided::Private,
            "unchanged" => Decided::Unchanged,
            other => {
                self.error(
                    "cache.decided",
                    other,
                    "must be \"private\" (safe behind any shared cache) or \"unchanged\"",
                );
                Decided::Private
            }
        };
        let immutable = match AssetPatterns::new(&c.immutable) {
            Ok(a) => a,
            Err((i, rule)) => {
                self.error(&format!("cache.immutable[{i}]"), &c.immutable[i], rule);
                AssetPatterns::default()
            }
        };
        CacheSettings {
            decided,
            immutable,
            tag_validators: c.tag_validators,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;
    use crate::http_cache::Decided;

    const POOLS: &str = "[pools.base]\nfile = \"base.conf\"\n";

    fn load(extra: &str) -> Result<Config, Vec<crate::config::ConfigError>> {
        Config::from_toml(&format!("{POOLS}{extra}\n"), Path::new("/etc/g/g.toml"))
    }

    #[test]
    fn defaults_are_safe() {
        let c = load("").unwrap();
        assert_eq!(c.cache.decided, Decided::Private);
        assert!(c.cache.tag_validators);
        assert!(c.cache.immutable.matches("/assets/app.5bdff181.js"));
        assert!(!c.cache.immutable.matches("/config.js"));
    }

    #[test]
    fn bad_values_name_key_value_and_rule() {
        let e = load("[cache]\ndecided = \"public\"\nimmutable = [\"*.js\", \"static/*\"]")
            .unwrap_err();
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["cache.decided", "cache.immutable[1]"], "{e:?}");
        assert_eq!(e[1].value.as_deref(), Some("static/*"));
        let c = load("[cache]\ndecided = \"unchanged\"\nimmutable = []\ntag_validators = false")
            .unwrap();
        assert_eq!(c.cache.decided, Decided::Unchanged);
        assert!(!c.cache.immutable.matches("/assets/app.5bdff181.js"));
    }

    #[test]
    fn the_shipped_config_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/graysplit.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let shipped: crate::config::file::FileConfig = toml::from_str(&text).unwrap();
        assert!(text.contains("\n[cache]\n") && text.contains("\n[visitor]\n"));
        let want = super::CacheSection::default();
        assert_eq!(format!("{:?}", shipped.cache), format!("{want:?}"));
        let want = super::super::visitor::VisitorSection::default();
        assert_eq!(format!("{:?}", shipped.visitor), format!("{want:?}"));
    }
}
