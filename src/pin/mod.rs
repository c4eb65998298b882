//! The pin: one page, one build.
//!
//! A page (navigation) is decided as usual and answered with a signed cookie naming the pool
//! **and build** of the server that served it. Assets carrying a valid pin go to that pool and
//! build without any lookup, so a page and its scripts and styles always come from one build, even
//! while a whitelist, a switch or a rolling deploy changes under it. See docs/pin.md.
//!
//! - [`cookie`]: the value's codec and HMAC (pure).
//! - [`classify`]: page or asset (pure).
//! - [`scope`]: what a valid pin proves, and for how long (pure).
//! - [`issued`]: the `Set-Cookie` values issued this second, kept per thread.
//! - [`outage`]: since when a pinned build has had no usable server (pure state).
//! - [`Pinner`]: settings + keys: reads the request's pin, writes `Set-Cookie`.

pub mod classify;
pub mod cookie;
pub mod issued;
pub mod outage;
pub mod scope;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::secret::Secret;
use classify::AssetPatterns;
use cookie::{Keys, Reject};

/// Environment variable with pin secrets (comma-separated, first signs) when the config file
/// sets none.
pub const SECRETS_ENV: &str = "GRAYSPLIT_PIN_SECRETS";

/// Shortest secret accepted: HMAC is only as strong as a secret nobody can guess.
pub const MIN_SECRET_LEN: usize = 16;

/// Values of the pin cookie looked at per request. A browser sends one (a few when cookies of
/// other paths or domains share the name); more is hostile, and is not read.
pub const MAX_CANDIDATES: usize = 8;

/// Values verified (an HMAC each, per secret) per request: a `Cookie` of 2,000 well-shaped forged
/// pins costs at most this many HMACs, not 2,000.
pub const MAX_VERIFIED: usize = 3;

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
    /// An asset follows its pin without any lookup for this long after the pin's page decision;
    /// past it, only if the decision still names the pin's pool ([`scope`]).
    pub grace: Duration,
    /// How long a pinned asset waits for its build when the build is configured but has no
    /// usable server right now ([`outage`]); zero: never wait.
    pub build_wait: Duration,
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
            grace: Duration::from_secs(300),
            build_wait: Duration::from_secs(5),
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
    /// Pinned builds that requests found without a usable server (the wait for a hiccup).
    pub outages: outage::Outages,
    /// Tells this pinner's kept `Set-Cookie` values from another's ([`issued`]).
    id: u64,
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
            outages: outage::Outages::new(settings.build_wait),
            settings,
            keys,
            attributes,
            random_secret,
            id: issued::next_id(),
        }
    }

    /// The request's pin, verified at `now` (Unix seconds). Only a present cookie costs an HMAC,
    /// and the cost is bounded whatever the request holds: at most [`MAX_CANDIDATES`] values
    /// are looked at, cheap shape checks come first, at most [`MAX_VERIFIED`] are verified.
    pub fn read(&self, headers: &HeaderMap, now: u64) -> Read {
        if !self.settings.enabled {
            return Read::Absent;
        }
        let lifetime = self.settings.lifetime.as_secs();
        let mut first_reject = None;
        let mut verified = 0;
        for value in crate::cookies::values(headers, &self.settings.name).take(MAX_CANDIDATES) {
            let shaped = match cookie::shape(value) {
                Ok(s) => s,
                Err(r) => {
                    first_reject.get_or_insert(r);
                    continue;
                }
            };
            if verified == MAX_VERIFIED {
                break;
            }
            verified += 1;
            match cookie::verify(&self.keys, &shaped, now, lifetime) {
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

    /// The pin's age at `now`, in seconds (0 for a pin issued within the allowed future skew).
    pub fn age(pin: &Pin, now: u64) -> u64 {
        now.saturating_sub(pin.issued)
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

    /// The `Set-Cookie` header of a pin issued at `now` ([`Pinner::set_cookie_tls`] over TLS),
    /// signed once per second per thread ([`issued`]).
    pub fn set_cookie_header(
        &self,
        pool: &str,
        build: &str,
        now: u64,
        tls: bool,
    ) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
        let what = issued::For {
            pinner: self.id,
            pool,
            build,
            issued: now,
            tls,
        };
        issued::get_or_make(what, || {
            let cookie = if tls {
                self.set_cookie_tls(pool, build, now)
            } else {
                self.set_cookie(pool, build, now)
            };
            http::HeaderValue::try_from(cookie)
        })
    }

    /// Should a page that confirmed `pin` send it again? With `max_age` the browser's copy
    /// slides on every page. Without, once the pin is older than a tenth of the grace (or half
    /// the lifetime, if that is shorter): the re-issued pin carries this page's decision time, so
    /// every page load gives its assets at least nine tenths of `grace` to follow it (and an
    /// active user's pin never expires under an open page). Cost: one HMAC per such page.
    pub fn refresh_due(&self, pin: &Pin, now: u64) -> bool {
        self.settings.max_age.is_some() || Self::age(pin, now) >= self.refresh_after()
    }

    /// The pin age (seconds) from which a page re-issues a confirmed pin (without `max_age`).
    pub fn refresh_after(&self) -> u64 {
        (self.settings.grace.as_secs() / 10).min(self.settings.lifetime.as_secs() / 2)
    }
}

/// The current time in Unix seconds (the request path's only clock read for pins).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
        // The hostile case of issue 13: one Cookie header holding 2,000 well-shaped forged pins.
        let forged = forged_cookie(2_000);
        time("read, 2,000 forged pins in one Cookie", &mut || {
            sink += matches!(p.read(&forged, 1_010), Read::Rejected(_)) as usize;
        });
        assert!(sink > 0);
    }

    #[test]
    fn refresh_slides_with_max_age_else_at_a_tenth_of_the_grace() {
        let pin = |issued| Pin {
            pool: "base".into(),
            build: "b".into(),
            issued,
        };
        assert!(pinner(Some(60)).refresh_due(&pin(1_000), 1_000));
        let session = pinner(None);
        assert_eq!(session.refresh_after(), 30, "grace 5m");
        assert!(!session.refresh_due(&pin(1_000), 1_029));
        assert!(session.refresh_due(&pin(1_000), 1_030));
        let short_life = Pinner::new(PinSettings {
            lifetime: Duration::from_secs(40),
            ..PinSettings::default()
        });
        assert_eq!(short_life.refresh_after(), 20, "half a short lifetime");
    }

    /// A pin for each of `n` forged values (well shaped, wrong signature).
    fn forged_cookie(n: usize) -> HeaderMap {
        let sig = "A".repeat(43);
        let mut v = String::new();
        for i in 0..n {
            v.push_str(&format!("graysplit=v1.gray.g-{i}.1700000000.{sig}; "));
        }
        with_cookie(v.trim_end_matches("; "))
    }

    #[test]
    fn at_most_a_few_values_are_verified_and_a_good_pin_behind_them_is_not_read() {
        let p = pinner(None);
        assert_eq!(
            p.read(&forged_cookie(2_000), 1_700_000_000),
            Read::Rejected(Reject::Forged)
        );
        // A good pin after MAX_VERIFIED forged ones is never reached: the cost is bounded, and a
        // browser never sends that many values of one cookie.
        let good = p.set_cookie("base", "b", 1_700_000_000);
        let good = good.split(';').next().unwrap();
        let mut h = forged_cookie(MAX_VERIFIED);
        h.append(http::header::COOKIE, HeaderValue::from_str(good).unwrap());
        assert_eq!(p.read(&h, 1_700_000_000), Read::Rejected(Reject::Forged));
        let mut h = forged_cookie(MAX_VERIFIED - 1);
        h.append(http::header::COOKIE, HeaderValue::from_str(good).unwrap());
        assert!(matches!(p.read(&h, 1_700_000_000), Read::Valid(_)));
        // Malformed values cost no HMAC and do not use up the verifications ...
        let mut v = "graysplit=junk; ".repeat(MAX_CANDIDATES - 1);
        v.push_str(good);
        assert!(matches!(
            p.read(&with_cookie(&v), 1_700_000_000),
            Read::Valid(_)
        ));
        // ... but only MAX_CANDIDATES values are looked at.
        let mut v = "graysplit=junk; ".repeat(MAX_CANDIDATES);
        v.push_str(good);
        assert_eq!(
            p.read(&with_cookie(&v), 1_700_000_000),
            Read::Rejected(Reject::Malformed)
        );
    }
}
