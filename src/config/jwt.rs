//! `[gray.jwt]`: a verified user id from a signed token — the file shape and its validation into
//! [`JwtSettings`]. Key material is read and checked here, so `graysplit -t` catches a wrong key
//! file, a key of the wrong kind for the algorithms, or a JWKS file with no usable key.

use std::path::Path;
use std::str::FromStr;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;

use super::{Secret, Validator};
use crate::gray::jwt::{self, JwtSettings, KeySource};

/// Environment variable holding the HS* secret when the file does not set `secret`.
pub const JWT_SECRET_ENV: &str = "GRAYSPLIT_JWT_SECRET";

/// RFC 7518 §3.2: an HMAC key at least as long as the hash output (256 bits for HS256).
const MIN_SECRET_LEN: usize = 32;

#[derive(Deserialize)]
#[serde(default)]
pub struct JwtSection {
    pub cookie: String,
    pub header: String,
    pub algorithms: Vec<String>,
    /// HS*: a secret; this type's `Debug` never shows it.
    pub secret: Option<String>,
    pub public_key: String,
    pub jwks_file: String,
    pub claim: String,
    pub leeway: String,
    pub issuer: String,
    pub audience: String,
    pub cache_size: usize,
}

impl Default for JwtSection {
    fn default() -> Self {
        Self {
            cookie: String::new(),
            header: String::new(),
            algorithms: vec!["RS256".into()],
            secret: None,
            public_key: String::new(),
            jwks_file: String::new(),
            claim: "sub".into(),
            leeway: "30s".into(),
            issuer: String::new(),
            audience: String::new(),
            cache_size: 10_000,
        }
    }
}

impl std::fmt::Debug for JwtSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSection")
            .field("cookie", &self.cookie)
            .field("header", &self.header)
            .field("algorithms", &self.algorithms)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key", &self.public_key)
            .field("jwks_file", &self.jwks_file)
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

impl Validator<'_> {
    pub(super) fn jwt(&mut self, j: &JwtSection, base_dir: &Path) -> Option<JwtSettings> {
        const K: &str = "gray.jwt";
        if j.cookie.is_empty() && j.header.is_empty() {
            self.error_no_value(
                K,
                "needs `cookie` or `header`: where the token is (e.g. header = \"authorization\" \
                 for `Authorization: Bearer <token>`)",
            );
        }
        let header = (!j.header.is_empty())
            .then(|| self.header_name("gray.jwt.header", &j.header))
            .flatten();
        if !j.cookie.is_empty() && !valid_cookie_name(&j.cookie) {
            self.error("gray.jwt.cookie", &j.cookie, "must be a cookie name");
        }
        let algorithms = self.algorithms(&j.algorithms);
        let leeway = self.duration("gray.jwt.leeway", &j.leeway);
        if leeway > std::time::Duration::from_secs(600) {
            self.error("gray.jwt.leeway", &j.leeway, "must be at most 10m");
        }
        if j.claim.trim().is_empty() {
            self.error(
                "gray.jwt.claim",
                &j.claim,
                "must name a claim, e.g. \"sub\"",
            );
        }
        if j.cache_size == 0 {
            self.error("gray.jwt.cache_size", j.cache_size, "must be at least 1");
        }
        let family = match jwt::families(&algorithms)[..] {
            [] => None,
            [one] => Some(one),
            _ => {
                self.error(
                    "gray.jwt.algorithms",
                    format!("{:?}", j.algorithms),
                    "must all be of one family (one kind of key): mixing a shared secret with \
                     public keys is how algorithm-confusion attacks work",
                );
                None
            }
        };
        let keys = family.and_then(|f| self.jwt_keys(j, f, &algorithms, base_dir));
        let settings = JwtSettings {
            cookie: (!j.cookie.is_empty()).then(|| j.cookie.clone()),
            header,
            algorithms,
            keys: keys?,
            claim: j.claim.trim().to_string(),
            leeway,
            issuer: (!j.issuer.is_empty()).then(|| j.issuer.clone()),
            audience: (!j.audience.is_empty()).then(|| j.audience.clone()),
            cache_size: j.cache_size.max(1),
        };
        (settings.cookie.is_some() || settings.header.is_some()).then_some(settings)
    }

    fn algorithms(&mut self, raw: &[String]) -> Vec<Algorithm> {
        if raw.is_empty() {
            self.error_no_value("gray.jwt.algorithms", "must list at least one algorithm");
        }
        let mut out = Vec::new();
        for (i, name) in raw.iter().enumerate() {
            match Algorithm::from_str(name) {
                Ok(a) if !out.contains(&a) => out.push(a),
                Ok(_) => {}
                Err(_) => self.error(
                    &format!("gray.jwt.algorithms[{i}]"),
                    name,
                    "must be one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, \
                     PS512, ES256, ES384, EdDSA (\"none\" is never accepted)",
                ),
            }
        }
        out
    }

    /// Exactly the key material the family needs, read and checked.
    fn jwt_keys(
        &mut self,
        j: &JwtSection,
        family: AlgorithmFamily,
        algorithms: &[Algorithm],
        base_dir: &Path,
    ) -> Option<KeySource> {
        let file_secret = j.secret.clone().filter(|s| !s.is_empty());
        let (public_key, jwks_file) = (!j.public_key.is_empty(), !j.jwks_file.is_empty());
        if family != AlgorithmFamily::Hmac {
            if file_secret.is_some() {
                self.error_no_value(
                    "gray.jwt.secret",
                    format!(
                        "is a shared secret, but algorithms {} need {}",
                        jwt::names(algorithms),
                        jwt::family_name(family)
                    ),
                );
                return None;
            }
            if public_key == jwks_file {
                self.error_no_value(
                    "gray.jwt",
                    format!(
                        "needs exactly one of `public_key` (a PEM file) and `jwks_file`: \
                         algorithms {} need {}",
                        jwt::names(algorithms),
                        jwt::family_name(family)
                    ),
                );
                return None;
            }
        } else {
            if public_key || jwks_file {
                self.error_no_value(
                    "gray.jwt",
                    format!(
                        "algorithms {} need `secret` (or {JWT_SECRET_ENV}), not a public key \
                         or JWKS file",
                        jwt::names(algorithms)
                    ),
                );
                return None;
            }
            let Some((key, s)) = file_secret.map(|s| ("gray.jwt.secret", s)).or_else(|| {
                (self.env)(JWT_SECRET_ENV)
                    .filter(|s| !s.is_empty())
                    .map(|s| (JWT_SECRET_ENV, s))
            }) else {
                self.error_no_value(
                    "gray.jwt.secret",
                    format!(
                        "is needed for algorithms {}: set it or {JWT_SECRET_ENV}",
                        jwt::names(algorithms)
                    ),
                );
                return None;
            };
            if s.len() < MIN_SECRET_LEN {
                self.error_no_value(
                    key,
                    format!(
                        "must be at least {MIN_SECRET_LEN} bytes (RFC 7518 3.2; the value is \
                         not shown: it is a secret)"
                    ),
                );
                return None;
            }
            return Some(KeySource::Secret(Secret::new(s)));
        }
        if !j.public_key.is_empty() {
            let key = "gray.jwt.public_key";
            let path = base_dir.join(&j.public_key);
            let pem = match std::fs::read(&path) {
                Ok(p) => p,
                Err(e) => {
                    self.error(key, &j.public_key, format!("cannot read: {e}"));
                    return None;
                }
            };
            let parsed = match family {
                AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                _ => DecodingKey::from_ed_pem(&pem),
            };
            return match parsed {
                Ok(k) => Some(KeySource::PublicKey(path, k)),
                Err(e) => {
                    self.error(
                        key,
                        &j.public_key,
                        format!(
                            "is not a PEM public key for {} ({e})",
                            jwt::family_name(family)
                        ),
                    );
                    None
                }
            };
        }
        let key = "gray.jwt.jwks_file";
        let path = base_dir.join(&j.jwks_file);
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|text| jwt::parse_jwks(&text, algorithms));
        match parsed {
            Ok((set, notes)) => {
                for n in notes {
                    log::warn!("{key} ({}): {n}", path.display());
                }
                Some(KeySource::Jwks(path, std::sync::Arc::new(set)))
            }
            Err(rule) => {
                self.error(key, &j.jwks_file, rule);
                None
            }
        }
    }
}

fn valid_cookie_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::path::Path;

    const POOLS: &str = "[pools.base]\nfile = \"b.conf\"\n[pools.gray]\nfile = \"g.conf\"\n";

    fn load(extra: &str, dir: &Path) -> Result<Config, Vec<String>> {
        Config::from_toml_with_env(&format!("{POOLS}{extra}"), &dir.join("g.toml"), |name| {
            (name == super::JWT_SECRET_ENV).then(|| "e".repeat(40))
        })
        .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn the_documented_keys_are_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/graysplit.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text
            .find("# [gray.jwt]\n")
            .expect("a documented [gray.jwt]");
        // `# key = value   # comment` lines, without the prose.
        let section: String = text[start..]
            .lines()
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')))
            .map(|l| format!("{}\n", l.split(" #").next().unwrap_or(l).trim_end()))
            .collect();
        let documented: super::JwtSection = toml::from_str(&section).unwrap();
        let d = super::JwtSection::default();
        assert_eq!(
            section.lines().count(),
            11,
            "every key documented:\n{section}"
        );
        assert_eq!(
            (
                &documented.cookie,
                &documented.header,
                &documented.algorithms
            ),
            (&d.cookie, &d.header, &d.algorithms)
        );
        assert_eq!(
            (&documented.claim, &documented.leeway, documented.cache_size),
            (&d.claim, &d.leeway, d.cache_size)
        );
        assert_eq!(
            (
                &documented.public_key,
                &documented.jwks_file,
                &documented.issuer,
                &documented.audience
            ),
            (&d.public_key, &d.jwks_file, &d.issuer, &d.audience)
        );
    }

    #[test]
    fn a_secret_from_the_environment_for_hs256() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(
            "[gray.jwt]\ncookie = \"access_token\"\nalgorithms = [\"HS256\"]\n",
            dir.path(),
        )
        .unwrap();
        let j = c.gray.jwt.expect("jwt settings");
        assert_eq!(j.claim, "sub");
        assert!(matches!(j.keys, crate::gray::jwt::KeySource::Secret(_)));
        assert!(
            !format!("{j:?}").contains("eeee"),
            "the secret is never shown"
        );
    }

    #[test]
    fn every_mistake_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("not-a-key.pem"), "hello").unwrap();
        std::fs::write(dir.path().join("jwks.json"), "{\"keys\": []}").unwrap();
        let cases = [
            (
                "[gray.jwt]\nalgorithms = [\"HS256\"]\n",
                "gray.jwt: needs `cookie` or `header`",
            ),
            (
                "[gray.jwt]\nheader = \"authorization\"\nalgorithms = [\"none\"]\n",
                "gray.jwt.algorithms[0] = \"none\": must be one of",
            ),
            (
                "[gray.jwt]\nheader = \"authorization\"\nalgorithms = [\"HS256\", \"RS256\"]\n",
                "gray.jwt.algorithms = \"[\\\"HS256\\\", \\\"RS256\\\"]\": must all be of one family",
            ),
            (
                "[gray.jwt]\nheader = \"authorization\"\nalgorithms = [\"RS256\"]\nsecret = \"s3cret-s3cret-s3cret-s3cret-s3cret\"\n",
                "gray.jwt.secret: is a shared secret, but algorithms [RS256] need",
            ),
            (
                "[gray.jwt]\nheader = \"authorization\"\nalgorithms = [\"RS256\"]\n",
                "gray.jwt: needs exactly one of `public_key` (a PEM file) and `jwks_file`",
            ),
            (
                "[gray.jwt]\nheader = \"authorization\"\nalgorithms = [\"RS256\"]\npublic_key = \"not-a-key.pem\"\n",
                "gray.jwt.public_key = \"not-a-key.pem\": is not a PEM public key",
            ),
            (
                "[gray.jwt]\nheader = \"authorization\"\nalgorithms = [\"ES256\"]\njwks_file = \"jwks.json\"\n",
                "gray.jwt.jwks_file = \"jwks.json\": no key usable with algorithms [ES256]",
            ),
            (
                "[gray.jwt]\nheader = \"authorization\"\nalgorithms = [\"ES256\"]\njwks_file = \"missing.json\"\n",
                "gray.jwt.jwks_file = \"missing.json\": cannot read",
            ),
            (
                "[gray.jwt]\ncookie = \"a b\"\nalgorithms = [\"HS256\"]\nleeway = \"1h\"\n",
                "gray.jwt.leeway = \"1h\": must be at most 10m",
            ),
        ];
        for (toml, want) in cases {
            let e = load(toml, dir.path()).expect_err(toml);
            assert!(
                e.iter().any(|m| m.starts_with(want)),
                "missing {want:?} in {e:#?}"
            );
        }
    }

    #[test]
    fn a_short_or_misplaced_secret_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = Config::from_toml(
            &format!(
                "{POOLS}[gray.jwt]\ncookie = \"t\"\nalgorithms = [\"HS256\"]\nsecret = \"hunter2\"\n"
            ),
            &dir.path().join("g.toml"),
        )
        .unwrap_err();
        let text: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|m| m.starts_with("gray.jwt.secret: must be at least 32 bytes")),
            "{text:?}"
        );
        assert!(text.iter().all(|m| !m.contains("hunter2")), "{text:?}");
    }
}
