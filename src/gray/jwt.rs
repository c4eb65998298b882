//! A verified user id from a signed token (JWT), for deployments where graysplit is the first hop
//! and no gateway in front can vouch for the user (`[gray.jwt]`).
//!
//! Verification is the `jsonwebtoken` crate's (RustCrypto backend); this module chooses the key,
//! refuses what must be refused before that, and caches what was verified:
//!
//! - the token's `alg` must be one of `algorithms`, which all share one family, and the key
//!   material decides that family (a secret for HS*, a public key or JWKS for RS*/PS*/ES*/EdDSA):
//!   `alg: none` and algorithm confusion (an HS256 token "signed" with the RSA public key) are
//!   refused before any crypto runs; HMAC keys in a JWKS file are never used;
//! - `exp` is required and, like `nbf`, honoured with `leeway`; `iss` / `aud` when configured;
//! - a JWKS file is re-read within a second of a change (kept when the new one is unusable);
//!   the token's `kid` picks the key;
//! - a checked token is remembered by its SHA-256 (the cache is emptied when the keys change): a
//!   valid one until it expires, a refused one (bad signature, unknown key, expired...) for as
//!   long as it stays in the cache. An RS256 or ES256 check costs tens to hundreds of
//!   microseconds in pure Rust, a hit under one (`bench/jwt`).
//!
//! A missing, bad or expired token means "no user id", never an error: counted by [`TokenCheck`]
//! and logged at most every 10 s, without the token.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine;
use http::{HeaderMap, HeaderName};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use log::{info, warn};
use sha2::{Digest, Sha256};

use super::bounded_cache::BoundedCache;
use super::whitelist::valid_user;
use crate::config::Secret;
use crate::rate_limited_log::RateLimitedLog;
use crate::watched_file::WatchedFile;

/// Longer tokens are refused unread: a JWT from an IdP is well under 4 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// What one token check found; the label of `graysplit_user_tokens_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// Verified now.
    Verified,
    /// Verified before, still valid (the cache).
    Cached,
    /// Longer than [`MAX_TOKEN_LEN`].
    TooLarge,
    /// Not a JWT: wrong shape, bad base64 or JSON.
    Malformed,
    /// `alg` not accepted (`none`, another family, not listed).
    Algorithm,
    /// No key for its `kid` (or no `kid` and several keys).
    UnknownKey,
    /// The signature does not verify with the key.
    Signature,
    /// `exp` passed (beyond `leeway`).
    Expired,
    /// `nbf` still ahead (beyond `leeway`).
    NotYetValid,
    /// `exp` missing, or `iss`/`aud` not the configured ones.
    Claims,
    /// Valid, but the user claim is missing or not a usable id.
    NoUser,
}

impl TokenCheck {
    pub const ALL: [TokenCheck; 11] = [
        TokenCheck::Verified,
        TokenCheck::Cached,
        TokenCheck::TooLarge,
        TokenCheck::Malformed,
        TokenCheck::Algorithm,
        TokenCheck::UnknownKey,
        TokenCheck::Signature,
        TokenCheck::Expired,
        TokenCheck::NotYetValid,
        TokenCheck::Claims,
        TokenCheck::NoUser,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TokenCheck::Verified => "verified",
            TokenCheck::Cached => "cached",
            TokenCheck::TooLarge => "too_large",
            TokenCheck::Malformed => "malformed",
            TokenCheck::Algorithm => "algorithm",
            TokenCheck::UnknownKey => "unknown_key",
            TokenCheck::Signature => "signature",
            TokenCheck::Expired => "expired",
            TokenCheck::NotYetValid => "not_yet_valid",
            TokenCheck::Claims => "claims",
            TokenCheck::NoUser => "no_user",
        }
    }

    pub fn is_valid(self) -> bool {
        matches!(self, TokenCheck::Verified | TokenCheck::Cached)
    }
}

/// Where the verifying keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// HS256/384/512: the shared secret.
    Secret(Secret),
    /// One public key from a PEM file, read at start.
    PublicKey(PathBuf, DecodingKey),
    /// A JWKS file (what an IdP serves at `/.well-known/jwks.json`), re-read on change.
    Jwks(PathBuf, Arc<KeySet>),
}

/// Validated `[gray.jwt]`.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    pub cookie: Option<String>,
    /// `authorization` takes `Bearer <token>`; any other header its whole value.
    pub header: Option<HeaderName>,
    /// One family, non-empty.
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySource,
    /// The claim holding the user id (`sub`).
    pub claim: String,
    pub leeway: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Verified tokens kept (by hash).
    pub cache_size: usize,
}

/// Keys by `kid`, each with the algorithm its JWK allows, if it names one.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<(Option<String>, Option<Algorithm>, DecodingKey)>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token: by `kid`; without one, the only key there is.
    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Option<&DecodingKey> {
        let fits = |a: &Option<Algorithm>, k: &DecodingKey| {
            a.is_none_or(|a| a == alg) && k.family() == alg.family()
        };
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(id, a, k)| id.as_deref() == Some(kid) && fits(a, k))
                .map(|(_, _, k)| k),
            None => match &self.keys[..] {
                [(_, a, k)] if fits(a, k) => Some(k),
                _ => None,
            },
        }
    }
}

/// Parses a JWKS document into the keys usable with `algorithms`; the notes say what was left
/// out and why. An error when no key is usable.
pub fn parse_jwks(text: &str, algorithms: &[Algorithm]) -> Result<(KeySet, Vec<String>), String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_str(text)
        .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
    let family = algorithms.first().map(|a| a.family());
    let mut set = KeySet::default();
    let mut notes = Vec::new();
    for (i, value) in doc.keys.into_iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(j) => j,
            Err(e) => {
                notes.push(format!("keys[{i}]: not a usable JWK ({e}); skipped"));
                continue;
            }
        };
        let kid = jwk.common.key_id.clone();
        let name = kid.as_deref().unwrap_or("(no kid)");
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            notes.push(format!(
                "keys[{i}] {name}: an encryption key (\"use\": \"enc\"); skipped"
            ));
            continue;
        }
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            // A published secret would let anyone sign: HMAC keys come from `secret` only.
            notes.push(format!("keys[{i}] {name}: a symmetric (oct) key; skipped"));
            continue;
        }
        let alg = match jwk.common.key_algorithm.map(Algorithm::try_from) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(_)) => {
                notes.push(format!(
                    "keys[{i}] {name}: not a signing algorithm; skipped"
                ));
                continue;
            }
        };
        let key = match DecodingKey::from_jwk(&jwk) {
            Ok(k) => k,
            Err(e) => {
                notes.push(format!("keys[{i}] {name}: {e}; skipped"));
                continue;
            }
        };
        if Some(key.family()) != family || alg.is_some_and(|a| !algorithms.contains(&a)) {
            notes.push(format!(
                "keys[{i}] {name}: not for the configured algorithms; skipped"
            ));
            continue;
        }
        set.keys.push((kid, alg, key));
    }
    if set.is_empty() {
        return Err(format!(
            "no key usable with algorithms {}{}",
            names(algorithms),
            if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            }
        ));
    }
    Ok((set, notes))
}

/// `["RS256", "RS384"]` as written in the config.
pub fn names(algorithms: &[Algorithm]) -> String {
    let list: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
    format!("[{}]", list.join(", "))
}

/// What a verified token says.
#[derive(Debug, Clone)]
struct Verified {
    user: Arc<str>,
    exp: u64,
    nbf: Option<u64>,
}

/// The outcome of checking one token, remembered by the token's hash.
#[derive(Debug, Clone)]
struct Cached {
    outcome: Result<Verified, TokenCheck>,
    /// The key set it was checked with: a change of keys makes every entry stale.
    generation: u64,
}

pub struct TokenVerifier {
    settings: JwtSettings,
    validation: Validation,
    keys: ArcSwap<KeySet>,
    generation: AtomicU64,
    jwks: Option<WatchedFile>,
    cache: BoundedCache<[u8; 32], Cached>,
    log: RateLimitedLog,
}

impl TokenVerifier {
    pub fn new(settings: JwtSettings) -> Self {
        // Config validation guarantees a non-empty list; an empty one refuses every token.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = settings.algorithms.clone();
        validation.leeway = settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &settings.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &settings.audience {
            Some(aud) => validation.set_audience(&[aud]),
            // Without a configured audience, `aud` is not checked: the token only names the
            // user for the gray decision, it grants nothing.
            None => validation.validate_aud = false,
        }
        let (keys, jwks) = match &settings.keys {
            KeySource::Secret(secret) => (
                KeySet {
                    keys: DecodingKey::from_secret(secret.expose().as_bytes())
                        .map(|k| vec![(None, None, k)])
                        .unwrap_or_default(),
                },
                None,
            ),
            KeySource::PublicKey(_, key) => (
                KeySet {
                    keys: vec![(None, None, key.clone())],
                },
                None,
            ),
            KeySource::Jwks(path, set) => {
                let watch = WatchedFile::new(path.clone(), "gray.jwt.jwks_file");
                // The file as validated at start is the baseline; `poll` reports changes.
                let _ = watch.changed();
                (
                    KeySet {
                        keys: set.keys.clone(),
                    },
                    Some(watch),
                )
            }
        };
        Self {
            cache: BoundedCache::new(settings.cache_size.max(1)),
            settings,
            validation,
            keys: ArcSwap::from_pointee(keys),
            generation: AtomicU64::new(0),
            jwks,
            log: RateLimitedLog::new(),
        }
    }

    /// Re-reads the JWKS file if it changed (background upkeep). A file that is no longer
    /// usable is logged and the last good keys stay.
    pub fn poll(&self) {
        let Some(text) = self.jwks.as_ref().and_then(WatchedFile::changed) else {
            return;
        };
        match parse_jwks(&text, &self.settings.algorithms) {
            Ok((set, notes)) => {
                for n in &notes {
                    warn!("gray.jwt.jwks_file: {n}");
                }
                info!("gray.jwt.jwks_file: {} key(s) in use", set.len());
                self.keys.store(Arc::new(set));
                self.generation.fetch_add(1, Ordering::AcqRel);
                // Tokens verified with keys that may be gone must be verified again.
                self.cache.clear();
            }
            Err(e) => warn!("gray.jwt.jwks_file: {e}; keeping the keys in use"),
        }
    }

    /// The token of a request, if it carries one: the header first, then the cookie.
    pub fn token<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let from_header = self.settings.header.as_ref().and_then(|name| {
            let value = headers.get(name)?.to_str().ok()?.trim();
            if name == http::header::AUTHORIZATION {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            } else {
                Some(value)
            }
        });
        from_header
            .or_else(|| {
                self.settings
                    .cookie
                    .as_deref()
                    .and_then(|c| super::rules::cookie(headers, c))
            })
            .filter(|t| !t.is_empty())
    }

    /// Checks a token; the user id when it is valid.
    pub fn check(&self, token: &str) -> (Option<Arc<str>>, TokenCheck) {
        let now = unix_now();
        let result = self.check_at(token, now);
        if !result.1.is_valid() {
            let why = result.1.label();
            self.log.note(|n| {
                warn!(
                    "gray.jwt: refused a user token ({why}); {n} refused in the last {}s, those \
                     requests have no user id (graysplit_user_tokens_total)",
                    crate::rate_limited_log::PERIOD.as_secs()
                )
            });
        }
        result
    }

    fn check_at(&self, token: &str, now: u64) -> (Option<Arc<str>>, TokenCheck) {
        if token.len() > MAX_TOKEN_LEN {
            return (None, TokenCheck::TooLarge);
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let generation = self.generation.load(Ordering::Acquire);
        match self.cache.get(&hash).filter(|c| c.generation == generation) {
            Some(Cached { outcome: Ok(v), .. }) => {
                return match still_valid(&v, now, self.settings.leeway.as_secs()) {
                    Ok(()) => (Some(v.user), TokenCheck::Cached),
                    Err(why) => (None, why),
                };
            }
            Some(Cached {
                outcome: Err(why), ..
            }) => return (None, why),
            None => {}
        }
        let outcome = self.verify(token);
        // A refusal that stays true with these keys is remembered too: a browser keeps sending
        // its stale token with every request until the user logs in again, and each would
        // otherwise cost a signature check. Not `not_yet_valid` (it becomes valid), and not the
        // shapes that cost nothing to refuse (they would only crowd the cache).
        let remember = match &outcome {
            Ok(_) => true,
            Err(why) => !matches!(why, TokenCheck::NotYetValid | TokenCheck::Malformed),
        };
        if remember {
            self.cache.insert(
                hash,
                Cached {
                    outcome: outcome.clone(),
                    generation,
                },
            );
        }
        match outcome {
            Ok(v) => (Some(v.user), TokenCheck::Verified),
            Err(why) => (None, why),
        }
    }

    fn verify(&self, token: &str) -> Result<Verified, TokenCheck> {
        let header = peek_header(token)?;
        let alg: Algorithm = header.alg.parse().map_err(|_| TokenCheck::Algorithm)?;
        if !self.settings.algorithms.contains(&alg) {
            return Err(TokenCheck::Algorithm);
        }
        let keys = self.keys.load();
        let key = keys
            .select(header.kid.as_deref(), alg)
            .ok_or(TokenCheck::UnknownKey)?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &self.validation,
        )
        .map_err(|e| refusal(e.kind()))?;
        let claims = data.claims;
        let user = match claims.get(&self.settings.claim) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
        .filter(|u| valid_user(u))
        .ok_or(TokenCheck::NoUser)?;
        let number = |name: &str| claims.get(name).and_then(serde_json::Value::as_u64);
        Ok(Verified {
            user: Arc::from(user),
            exp: number("exp").ok_or(TokenCheck::Claims)?,
            nbf: number("nbf"),
        })
    }
}

/// A cached token's time window at `now` (seconds since the epoch).
fn still_valid(v: &Verified, now: u64, leeway: u64) -> Result<(), TokenCheck> {
    if v.exp.saturating_add(leeway) < now {
        return Err(TokenCheck::Expired);
    }
    if v.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(TokenCheck::NotYetValid);
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

/// The header's `alg` and `kid`, read before any key is chosen (the crate's own header type
/// has no `none`, so that would only show as "malformed").
fn peek_header(token: &str) -> Result<RawHeader, TokenCheck> {
    let (head, rest) = token.split_once('.').ok_or(TokenCheck::Malformed)?;
    if rest.split('.').count() != 2 {
        return Err(TokenCheck::Malformed);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| TokenCheck::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenCheck::Malformed)
}

fn refusal(kind: &ErrorKind) -> TokenCheck {
    match kind {
        ErrorKind::InvalidSignature => TokenCheck::Signature,
        ErrorKind::ExpiredSignature => TokenCheck::Expired,
        ErrorKind::ImmatureSignature => TokenCheck::NotYetValid,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => TokenCheck::Algorithm,
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidIssuer
        | ErrorKind::InvalidAudience
        | ErrorKind::InvalidSubject => TokenCheck::Claims,
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenCheck::UnknownKey,
        _ => TokenCheck::Malformed,
    }
}

/// The algorithms of one family, for messages (`HS256, HS384, HS512`).
pub fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "HS256/HS384/HS512 (a shared secret)",
        AlgorithmFamily::Rsa => "RS256/RS384/RS512/PS256/PS384/PS512 (an RSA public key)",
        AlgorithmFamily::Ec => "ES256/ES384 (an EC public key)",
        AlgorithmFamily::Ed => "EdDSA (an Ed25519 public key)",
    }
}

/// Distinct families among `algorithms` (config validation wants exactly one).
pub fn families(algorithms: &[Algorithm]) -> Vec<AlgorithmFamily> {
    let mut out = Vec::new();
    for f in algorithms.iter().map(|a| a.family()) {
        if !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

#[cfg(test)]
mod tests;
