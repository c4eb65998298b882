//! The pin: one page, one build.
//!
//! A page (navigation) is decided as usual and answered with a signed cookie naming the pool
//! **and build** of the server that served it. Assets carrying a valid pin go to that pool and
//! build without any lookup, so a page and its scripts and styles always come from one build, even
//! while a whitelist, a switch or a rolling deploy changes under it. See docs/pin.md.
//!
//! - [`cookie`]: the value's codec and HMAC (pure).
//! - [`classify`]: page or asset (pure).
//! - [`Pinner`]: settings + keys: reads the request's pin, writes `Set-Cookie`.

pub mod classify;
pub mod cookie;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::config::Secret;
use classify::AssetPatterns;
use cookie::{Keys, Reject};

/// Environment variable with pin secrets (comma-separated, first signs) when the config file
/// sets none.
pub const SECRETS_ENV: &str = "GRAYSPLIT_PIN_SECRETS";

/// Shortest secret accepted: HMAC is only as strong as a secret nobody can guess.
pub const MIN_SECRET_LEN: usize = 16;

/// Validated `[pin]` settings.
#[derive(Debug, Clone)]
pub struct PinSettings {
    /// false: no cookie is read or written; assets are decided like pages.
    pub enabled: bool,
    pub name: String,
    /// First signs, all verify. Empty: a random secret is made at start.
    pub secrets: Vec<Secret>,
    pub secure: bool,
    /// `Max-Age` of the cookie; `None`: a session cookie.
    pub max_age: Option<Duration>,
    /// A pin older than this is ignored.
    pub lifetime: Duration,
    pub assets: AssetPatterns,
    /// A pinned asset answered 404 is tried once on another build.
    pub retry_missing: bool,
    /// A script/style/image request answered with HTML (an SPA fallback) counts as missing.
    pub reject_html: bool,
}

impl Default for PinSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            name: "graysplit".into(),
            secrets: Vec::new(),
            secure: false,
            max_age: None,
            lifetime: Duration::from_secs(12 * 3600),
            assets: AssetPatterns::default(),
            retry_missing: true,
            reject_html: true,
        }
    }
}

/// A verified pin, owned (it lives in the request context until the response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub pool: String,
    pub build: String,
    pub issued: u64,
}

/// What the request's cookie said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// No pin cookie (nothing to count).
    Absent,
    Valid(Pin),
    Rejected(Reject),
}

/// The pin settings with their keys, shared by every request.
#[derive(Debug)]
pub struct Pinner {
    pub settings: PinSettings,
    keys: Keys,
    /// `; Path=/; HttpOnly; SameSite=Lax[; Secure][; Max-Age=N]`, built once.
    attributes: String,
    /// True when no secret was configured and a random one is in use.
    pub random_secret: bool,
}

impl Pinner {
    pub fn new(settings: PinSettings) -> Pinner {
        let configured: Vec<&[u8]> = settings
            .secrets
            .iter()
            .map(|s| s.expose().as_bytes())
            .collect();
        let (keys, random_secret) = match Keys::new(&configured) {
            Some(k) => (k, false),
            None => (
                Keys::new(&[random_secret()]).unwrap_or_else(fallback_keys),
                true,
            ),
        };
        let mut attributes = String::from("; Path=/; HttpOnly; SameSite=Lax");
        if settings.secure {
            attributes.push_str("; Secure");
        }
        if let Some(age) = settings.max_age {
            attributes.push_str(&format!("; Max-Age={}", age.as_secs()));
        }
        Pinner {
            settings,
            keys,
            attributes,
            random_secret,
        }
    }

    /// The request's pin, verified at `now` (Unix seconds). Only a present cookie costs an HMAC.
    pub fn read(&self, headers: &HeaderMap, now: u64) -> Read {
        if !self.settings.enabled {
            return Read::Absent;
        }
        let lifetime = self.settings.lifetime.as_secs();
        let mut first_reject = None;
        for value in cookie_values(headers, &self.settings.name) {
            match cookie::decode(&self.keys, value, now, lifetime) {
                Ok(p) => {
                    return Read::Valid(Pin {
                        pool: p.pool.to_string(),
                        build: p.build.to_string(),
                        issued: p.issued,
                    })
                }
                Err(r) => {
                    first_reject.get_or_insert(r);
                }
            }
        }
        first_reject.map_or(Read::Absent, Read::Rejected)
    }

    /// A `Set-Cookie` value pinning `pool` and `build`.
    pub fn set_cookie(&self, pool: &str, build: &str, now: u64) -> String {
        let value = cookie::encode(&self.keys, pool, build, now);
        let mut out = String::with_capacity(
            self.settings.name.len() + 1 + value.len() + self.attributes.len(),
        );
        out.push_str(&self.settings.name);
        out.push('=');
        out.push_str(&value);
        out.push_str(&self.attributes);
        out
    }

    /// As [`Pinner::set_cookie`], for a response sent over TLS: always `Secure` (the browser then
    /// never sends the pin over plain HTTP), whatever `pin.secure` says for plain listeners.
    pub fn set_cookie_tls(&self, pool: &str, build: &str, now: u64) -> String {
        let mut cookie = self.set_cookie(pool, build, now);
        if !self.settings.secure {
            cookie.push_str("; Secure");
        }
        cookie
    }

    /// Should a page that confirmed `pin` send it again? With `max_age` the browser's copy
    /// slides on every page; without, only once half the lifetime has passed (so an active user's
    /// pin never expires under an open page).
    pub fn refresh_due(&self, pin: &Pin, now: u64) -> bool {
        self.settings.max_age.is_some()
            || now.saturating_sub(pin.issued) >= self.settings.lifetime.as_secs() / 2
    }
}

/// The current time in Unix seconds (the request path's only clock read for pins).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every value of cookie `name` in the request's `Cookie` headers, in order, without allocating.
fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

fn random_secret() -> [u8; 32] {
    use rand::RngCore;
    let mut k = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    k
}

/// Unreachable in practice (HMAC accepts any key length); keeps `new` free of panics.
fn fallback_keys() -> Keys {
    let k = rand::random::<[u8; 32]>();
    Keys::new(&[k]).unwrap_or_else(fallback_keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn pinner(max_age: Option<u64>) -> Pinner {
        Pinner::new(PinSettings {
            secrets: vec![Secret::new("a-test-secret-of-32-characters!!")],
            max_age: max_age.map(Duration::from_secs),
            secure: true,
            ..PinSettings::default()
        })
    }

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn set_cookie_has_the_attributes_and_reads_back() {
        let p = pinner(Some(3600));
        let sc = p.set_cookie("gray", "gray-2026.11.2", 1_000);
        assert!(
            sc.starts_with("graysplit=v1.gray.gray-2026.11.2.1000."),
            "{sc}"
        );
        assert!(
            sc.ends_with("; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=3600"),
            "{sc}"
        );
        let value = sc.split(';').next().unwrap();
        let h = with_cookie(&format!("a=1; {value}; b=2"));
        let Read::Valid(pin) = p.read(&h, 1_010) else {
            panic!("not valid")
        };
        assert_eq!(
            (pin.pool.as_str(), pin.build.as_str()),
            ("gray", "gray-2026.11.2")
        );
    }

    #[test]
    fn absent_rejected_and_first_valid_of_several() {
        let p = pinner(None);
        assert_eq!(p.read(&HeaderMap::new(), 0), Read::Absent);
        assert_eq!(p.read(&with_cookie("other=1"), 0), Read::Absent);
        assert_eq!(
            p.read(&with_cookie("graysplit=junk"), 0),
            Read::Rejected(Reject::Malformed)
        );
        let good = p.set_cookie("base", "b", 100);
        let good = good.split(';').next().unwrap();
        let h = with_cookie(&format!("graysplit=junk; {good}"));
        assert!(matches!(p.read(&h, 100), Read::Valid(_)));
        let disabled = Pinner::new(PinSettings {
            enabled: false,
            ..PinSettings::default()
        });
        assert_eq!(disabled.read(&h, 100), Read::Absent);
    }

    #[test]
    fn random_secret_when_none_is_configured() {
        let a = Pinner::new(PinSettings::default());
        let b = Pinner::new(PinSettings::default());
        assert!(a.random_secret && b.random_secret);
        let v = a.set_cookie("base", "b", 5);
        let v = v.split(';').next().unwrap();
        assert!(matches!(a.read(&with_cookie(v), 5), Read::Valid(_)));
        assert_eq!(
            b.read(&with_cookie(v), 5),
            Read::Rejected(Reject::Forged),
            "another instance's random secret"
        );
        assert!(!pinner(None).random_secret);
    }

    /// Per-request cost of the pin: `cargo test --release --lib pin::tests::cost -- --ignored
    /// --nocapture`. Prints nanoseconds per call for classify, read (verify) and set_cookie.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost() {
        use crate::pin::classify::{classify, AssetPatterns};
        const N: u32 = 200_000;
        let p = pinner(None);
        let value = p.set_cookie("gray", "gray-2026.11.2", 1_000);
        let value = value.split(';').next().unwrap();
        let h = with_cookie(&format!("_ga=GA1.1.123; theme=dark; {value}; lang=en"));
        let none = with_cookie("_ga=GA1.1.123; theme=dark; lang=en");
        let assets = AssetPatterns::default();
        let time = |what: &str, f: &mut dyn FnMut()| {
            let start = std::time::Instant::now();
            for _ in 0..N {
                f();
            }
            let ns = start.elapsed().as_nanos() / u128::from(N);
            println!("{what}: {ns} ns per call");
        };
        let mut sink = 0usize;
        time("classify", &mut || {
            let k = classify(&http::Method::GET, &h, "/assets/app.5bdff181.js", &assets);
            sink += k as usize;
        });
        time("read, no pin cookie", &mut || {
            sink += matches!(p.read(&none, 1_010), Read::Absent) as usize;
        });
        time("read + verify a valid pin", &mut || {
            sink += matches!(p.read(&h, 1_010), Read::Valid(_)) as usize;
        });
        time("set_cookie (sign)", &mut || {
            sink += p.set_cookie("gray", "gray-2026.11.2", 1_000).len();
        });
        assert!(sink > 0);
    }

    #[test]
    fn refresh_slides_with_max_age_else_at_half_life() {
        let pin = |issued| Pin {
            pool: "base".into(),
            build: "b".into(),
            issued,
        };
        assert!(pinner(Some(60)).refresh_due(&pin(1_000), 1_000));
        let session = pinner(None);
        let half = session.settings.lifetime.as_secs() / 2;
        assert!(!session.refresh_due(&pin(1_000), 1_000 + half - 1));
        assert!(session.refresh_due(&pin(1_000), 1_000 + half));
    }
}
