//! `[visitor]`: the visitor id cookie that keeps anonymous browsers on their side of a percent
//! rollout (`gray::visitor`) — the file shape and its validation.

use std::time::Duration;

use serde::Deserialize;

use super::Validator;
use crate::gray::visitor::{VisitorSettings, DEFAULT_COOKIE};

/// Browsers cap `Max-Age` at 400 days (RFC 6265bis).
const MAX_MAX_AGE: Duration = Duration::from_secs(400 * 86_400);

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct VisitorSection {
    /// Cookie name; "" = no visitor id (anonymous clients are bucketed by IP).
    pub cookie: String,
    pub max_age: String,
}

impl Default for VisitorSection {
    fn default() -> Self {
        Self {
            cookie: DEFAULT_COOKIE.into(),
            max_age: "365d".into(),
        }
    }
}

impl Validator<'_> {
    /// `secure` follows `pin.secure`: both cookies travel the same way.
    pub(super) fn visitor(
        &mut self,
        v: &VisitorSection,
        secure: bool,
        pin_name: &str,
    ) -> VisitorSettings {
        let cookie = (!v.cookie.is_empty()).then(|| v.cookie.clone());
        if let Some(name) = &cookie {
            let valid = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                self.error(
                    "visitor.cookie",
                    name,
                    "must be a cookie name: 1-64 characters of a-z, A-Z, 0-9, '_' or '-' (or \"\" for none)",
                );
            } else if name == pin_name {
                self.error("visitor.cookie", name, "must differ from pin.name");
            }
        }
        let max_age = self.positive_duration("visitor.max_age", &v.max_age);
        if max_age > MAX_MAX_AGE {
            self.error(
                "visitor.max_age",
                &v.max_age,
                "must be at most 400d (browsers cut longer Max-Age values to 400 days)",
            );
        }
        VisitorSettings {
            cookie,
            max_age,
            secure,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const POOLS: &str = "[pools.base]\nfile = \"base.conf\"\n";

    fn load(extra: &str) -> Result<Config, Vec<crate::config::ConfigError>> {
        Config::from_toml(&format!("{POOLS}{extra}\n"), Path::new("/etc/g/g.toml"))
    }

    #[test]
    fn defaults_and_off() {
        let c = load("").unwrap();
        let v = &c.gray.visitor;
        assert_eq!(v.cookie.as_deref(), Some("graysplit_vid"));
        assert_eq!(v.max_age.as_secs(), 365 * 86_400);
        assert!(!v.secure);
        let c = load("[visitor]\ncookie = \"\"\n[pin]\nsecure = true").unwrap();
        assert_eq!(c.gray.visitor.cookie, None);
        assert!(c.gray.visitor.secure, "follows pin.secure");
    }

    #[test]
    fn bad_values_name_key_value_and_rule() {
        let e =
            load("[visitor]\ncookie = \"a b\"\nmax_age = \"500d\"\n[gray]\nsalt = \"tab\\there\"")
                .unwrap_err();
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["gray.salt", "visitor.cookie", "visitor.max_age"],
            "{e:?}"
        );
        let e = load("[visitor]\ncookie = \"graysplit\"").unwrap_err();
        assert!(e[0].rule.contains("differ from pin.name"), "{e:?}");
    }
}
