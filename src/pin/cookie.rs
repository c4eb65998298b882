//! The pin cookie's value, `v1.<pool>.<build>.<issued>.<sig>`: a pure codec (the clock is an
//! argument, the keys are given).
//!
//! - `pool` is a pool name (`a-z A-Z 0-9 _ -`, no dot), `build` a build id (the same plus `.`),
//!   `issued` Unix seconds, `sig` the unpadded base64url HMAC-SHA256 of everything before it.
//!   Build ids may hold dots (`base-2026.11.1`), pool names may not: the value splits
//!   unambiguously from the left (version, pool) and from the right (sig, issued).
//! - Several keys verify (rotation: a new secret goes first, the old one stays until every pin
//!   it signed has expired); the first one signs.
//! - Verification is constant-time (`Mac::verify_slice`) and runs only after the cheap shape
//!   checks, so garbage costs no HMAC.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The version this codec writes and reads.
pub const VERSION: &str = "v1";

/// Length of the base64url signature (32 bytes, unpadded).
const SIG_LEN: usize = 43;

/// A pin issued in the future by more than this is refused (a clock skew between instances
/// within it is harmless).
pub const MAX_FUTURE_SKEW: u64 = 300;

/// A verified pin, borrowed from the cookie value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinRef<'a> {
    pub pool: &'a str,
    pub build: &'a str,
    pub issued: u64,
}

/// Why a cookie was ignored (each is counted, none is an error for the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not shaped like `v<n>.pool.build.issued.sig`, or a field breaks its rule.
    Malformed,
    /// Shaped like a pin of another version (`v2.…`).
    Version,
    /// Well formed, but no key signed it.
    Forged,
    /// Signed, but older than its lifetime (or issued too far in the future).
    Expired,
}

impl Reject {
    pub fn label(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::Version => "version",
            Reject::Forged => "forged",
            Reject::Expired => "expired",
        }
    }
}

/// HMAC keys, already keyed: each use clones the keyed state instead of hashing the secret again.
#[derive(Clone)]
pub struct Keys {
    macs: Vec<HmacSha256>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} secret(s), redacted)", self.macs.len())
    }
}

impl Keys {
    /// `secrets[0]` signs, every one verifies. `None` when the list is empty.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Option<Keys> {
        let macs: Vec<HmacSha256> = secrets
            .iter()
            // HMAC takes keys of any length; this cannot fail.
            .filter_map(|s| HmacSha256::new_from_slice(s.as_ref()).ok())
            .collect();
        (!macs.is_empty()).then_some(Keys { macs })
    }

    fn sign(&self, msg: &[u8]) -> [u8; 32] {
        let mut mac = self.macs[0].clone();
        mac.update(msg);
        mac.finalize().into_bytes().into()
    }

    fn verify(&self, msg: &[u8], tag: &[u8]) -> bool {
        self.macs.iter().any(|k| {
            let mut mac = k.clone();
            mac.update(msg);
            mac.verify_slice(tag).is_ok()
        })
    }
}

/// The cookie value for `pool` and `build`, issued at `now` (Unix seconds).
pub fn encode(keys: &Keys, pool: &str, build: &str, now: u64) -> String {
    let mut out = String::with_capacity(VERSION.len() + pool.len() + build.len() + 24 + SIG_LEN);
    out.push_str(VERSION);
    out.push('.');
    out.push_str(pool);
    out.push('.');
    out.push_str(build);
    out.push('.');
    out.push_str(itoa(now, &mut [0u8; 20]));
    let sig = keys.sign(out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(sig, &mut out);
    out
}

/// The longest value [`encode`] can produce (`v1.` + 64-byte pool + 64-byte build + 20 digits +
/// signature, with dots): anything longer is refused before any other work.
pub const MAX_VALUE_LEN: usize = VERSION.len() + 1 + 64 + 1 + 64 + 1 + 20 + 1 + SIG_LEN;

/// A value shaped like a pin of our version, not yet verified: borrowed parts and the decoded tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shaped<'a> {
    /// Everything the signature covers (`v1.pool.build.issued`).
    signed: &'a str,
    pub pool: &'a str,
    pub build: &'a str,
    pub issued: u64,
    tag: [u8; 32],
}

/// The cheap half of reading a pin: length, version, fields, base64. No HMAC, no clock.
pub fn shape(value: &str) -> Result<Shaped<'_>, Reject> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Reject::Malformed);
    }
    let Some(rest) = value
        .strip_prefix(VERSION)
        .and_then(|r| r.strip_prefix('.'))
    else {
        return Err(if other_version(value) {
            Reject::Version
        } else {
            Reject::Malformed
        });
    };
    let (pool, rest) = rest.split_once('.').ok_or(Reject::Malformed)?;
    let (rest, sig) = rest.rsplit_once('.').ok_or(Reject::Malformed)?;
    let (build, issued) = rest.rsplit_once('.').ok_or(Reject::Malformed)?;
    if sig.len() != SIG_LEN || !valid_pool(pool) || !valid_build(build) {
        return Err(Reject::Malformed);
    }
    if issued.is_empty() || issued.len() > 20 || !issued.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reject::Malformed);
    }
    let issued: u64 = issued.parse().map_err(|_| Reject::Malformed)?;
    // One spare byte: the decoder's length estimate for 43 characters is 33.
    let mut buf = [0u8; 33];
    match URL_SAFE_NO_PAD.decode_slice(sig, &mut buf) {
        Ok(32) => {}
        _ => return Err(Reject::Malformed),
    }
    let mut tag = [0u8; 32];
    tag.copy_from_slice(&buf[..32]);
    Ok(Shaped {
        signed: &value[..value.len() - SIG_LEN - 1],
        pool,
        build,
        issued,
        tag,
    })
}

/// The expensive half: the HMAC (one per key at most), then the clock. `lifetime` in seconds.
pub fn verify<'a>(
    keys: &Keys,
    shaped: &Shaped<'a>,
    now: u64,
    lifetime: u64,
) -> Result<PinRef<'a>, Reject> {
    if !keys.verify(shaped.signed.as_bytes(), &shaped.tag) {
        return Err(Reject::Forged);
    }
    let issued = shaped.issued;
    if issued > now.saturating_add(MAX_FUTURE_SKEW) || now.saturating_sub(issued) > lifetime {
        return Err(Reject::Expired);
    }
    Ok(PinRef {
        pool: shaped.pool,
        build: shaped.build,
        issued,
    })
}

/// Reads and verifies a cookie value ([`shape`], then [`verify`]). `lifetime` is in seconds.
pub fn decode<'a>(
    keys: &Keys,
    value: &'a str,
    now: u64,
    lifetime: u64,
) -> Result<PinRef<'a>, Reject> {
    verify(keys, &shape(value)?, now, lifetime)
}

/// `v<digits>.…` of a version other than ours.
fn other_version(value: &str) -> bool {
    let Some(rest) = value.strip_prefix('v') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && rest.as_bytes().get(digits) == Some(&b'.')
}

/// Pool names as the config allows them.
fn valid_pool(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Build ids as pools files and Consul values allow them.
fn valid_build(s: &str) -> bool {
    crate::upstream::upsync_format::valid_build(s)
}

/// Formats `n` without allocating.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_793_000_000;
    const DAY: u64 = 86_400;

    fn keys(secrets: &[&str]) -> Keys {
        Keys::new(secrets).unwrap()
    }

    #[test]
    fn round_trip_with_dots_in_the_build() {
        let k = keys(&["0123456789abcdef-first"]);
        let v = encode(&k, "base", "base-2026.11.1", NOW);
        assert!(v.starts_with("v1.base.base-2026.11.1.1793000000."), "{v}");
        assert_eq!(
            v.len(),
            "v1.base.base-2026.11.1.1793000000.".len() + SIG_LEN
        );
        assert_eq!(
            decode(&k, &v, NOW + 10, DAY),
            Ok(PinRef {
                pool: "base",
                build: "base-2026.11.1",
                issued: NOW
            })
        );
        // Cookie-safe: no ';', ',', space, quote or backslash.
        assert!(v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    }

    #[test]
    fn tampering_with_any_field_is_forged() {
        let k = keys(&["0123456789abcdef-first"]);
        let v = encode(&k, "base", "b-1", NOW);
        for (from, to) in [
            (".base.", ".gray."),
            (".b-1.", ".b-2."),
            (".1793000000.", ".1793000001."),
        ] {
            let t = v.replacen(from, to, 1);
            assert_ne!(t, v);
            assert_eq!(decode(&k, &t, NOW, DAY), Err(Reject::Forged), "{t}");
        }
        // Flip one signature character (keeping it valid base64url).
        let mut sig: Vec<u8> = v.clone().into_bytes();
        let last = sig.len() - 5;
        sig[last] = if sig[last] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(sig).unwrap();
        assert_eq!(decode(&k, &t, NOW, DAY), Err(Reject::Forged));
        // Signed with another secret.
        let other = encode(&keys(&["another-secret-0123456"]), "base", "b-1", NOW);
        assert_eq!(decode(&k, &other, NOW, DAY), Err(Reject::Forged));
    }

    #[test]
    fn expiry_and_future_issue() {
        let k = keys(&["0123456789abcdef-first"]);
        let v = encode(&k, "gray", "g", NOW);
        assert!(decode(&k, &v, NOW + DAY, DAY).is_ok(), "exactly at the end");
        assert_eq!(decode(&k, &v, NOW + DAY + 1, DAY), Err(Reject::Expired));
        assert!(
            decode(&k, &v, NOW - MAX_FUTURE_SKEW, DAY).is_ok(),
            "small skew"
        );
        assert_eq!(
            decode(&k, &v, NOW - MAX_FUTURE_SKEW - 1, DAY),
            Err(Reject::Expired)
        );
    }

    #[test]
    fn rotation_first_signs_all_verify() {
        let old = keys(&["old-secret-0123456789"]);
        let rotated = keys(&["new-secret-0123456789", "old-secret-0123456789"]);
        let by_old = encode(&old, "base", "b", NOW);
        assert!(
            decode(&rotated, &by_old, NOW, DAY).is_ok(),
            "old pins still verify"
        );
        let by_new = encode(&rotated, "base", "b", NOW);
        assert_eq!(
            decode(&old, &by_new, NOW, DAY),
            Err(Reject::Forged),
            "the new secret signs"
        );
        assert!(decode(&keys(&["new-secret-0123456789"]), &by_new, NOW, DAY).is_ok());
    }

    #[test]
    fn malformed_and_other_versions() {
        let k = keys(&["0123456789abcdef-first"]);
        let good = encode(&k, "base", "b", NOW);
        let sig = good.rsplit_once('.').unwrap().1.to_string();
        for bad in [
            "",
            "v1",
            "v1.",
            "v1.base",
            "hello",
            "v1..b.1.x",
            &format!("v1.base..{NOW}.{sig}"),
            &format!("v1.base.b.{NOW}.short"),
            &format!("v1.base.b..{sig}"),
            &format!("v1.base.b.12x.{sig}"),
            &format!("v1.ba se.b.{NOW}.{sig}"),
            &format!("v1.base.b/c.{NOW}.{sig}"),
            &format!("v1.base.b.99999999999999999999999.{sig}"),
            &format!("v1.base.b.{NOW}.{}", "*".repeat(SIG_LEN)),
            "v.base.b.1.sig",
        ] {
            assert_eq!(decode(&k, bad, NOW, DAY), Err(Reject::Malformed), "{bad:?}");
        }
        let v2 = good.replacen("v1.", "v2.", 1);
        assert_eq!(decode(&k, &v2, NOW, DAY), Err(Reject::Version));
        assert_eq!(decode(&k, "v10.x", NOW, DAY), Err(Reject::Version));
    }

    #[test]
    fn itoa_formats_every_width() {
        for n in [0, 7, 10, 1_793_000_000, u64::MAX] {
            assert_eq!(itoa(n, &mut [0u8; 20]), n.to_string());
        }
    }

    #[test]
    fn no_keys_no_keys() {
        assert!(Keys::new::<&str>(&[]).is_none());
    }
}

/// Property tests (`cargo test --lib fuzz_`; `PROPTEST_CASES=1000000` for the long run).
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: u64 = 86_400;

    fn secrets() -> impl Strategy<Value = Vec<Vec<u8>>> {
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 1..4)
    }

    fn pool() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_-]{1,64}"
    }

    fn build() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{1,64}"
    }

    /// A pin issued at `issued` and read at a time inside its lifetime.
    fn issued_pin() -> impl Strategy<Value = (Vec<Vec<u8>>, String, String, u64, u64, u64)> {
        (secrets(), pool(), build(), any::<u64>(), 0..=10 * DAY).prop_flat_map(
            |(s, p, b, issued, lifetime)| {
                let earliest = issued.saturating_sub(MAX_FUTURE_SKEW);
                let latest = issued.saturating_add(lifetime);
                (
                    Just(s),
                    Just(p),
                    Just(b),
                    Just(issued),
                    Just(lifetime),
                    earliest..=latest,
                )
            },
        )
    }

    proptest! {
        /// Whatever a client sends (the Cookie header is visible ASCII, but any text must do),
        /// nothing verifies without the secret, and nothing panics.
        #[test]
        fn fuzz_arbitrary_values_never_verify(
            s in secrets(),
            value in prop_oneof![".{0,120}", "[ -~]{0,120}",
                "v1\\.[a-z]{1,6}\\.[a-z0-9.]{1,10}\\.[0-9]{1,22}\\.[A-Za-z0-9_-]{40,46}"],
            now in any::<u64>(),
            lifetime in any::<u64>(),
        ) {
            let keys = Keys::new(&s).unwrap();
            prop_assert!(decode(&keys, &value, now, lifetime).is_err());
        }

        /// Every pin we issue reads back to its pool, build and time within its lifetime, with
        /// the signing key or with a rotated key list that still holds it.
        #[test]
        fn fuzz_issued_pins_round_trip((s, p, b, issued, lifetime, now) in issued_pin(), newer in proptest::collection::vec(any::<u8>(), 1..40)) {
            let keys = Keys::new(&s).unwrap();
            let v = encode(&keys, &p, &b, issued);
            let want = PinRef { pool: &p, build: &b, issued };
            prop_assert_eq!(decode(&keys, &v, now, lifetime), Ok(want));
            let mut rotated = vec![newer];
            rotated.push(s[0].clone());
            prop_assert_eq!(decode(&Keys::new(&rotated).unwrap(), &v, now, lifetime), Ok(want));
            // Outside the lifetime it is expired, never accepted.
            if let Some(late) = issued.checked_add(lifetime).and_then(|t| t.checked_add(1)) {
                prop_assert_eq!(decode(&keys, &v, late, lifetime), Err(Reject::Expired));
            }
            // Cookie-safe alphabet.
            prop_assert!(v.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)));
        }

        /// Any change to an issued pin (one character replaced, inserted or removed, or the
        /// value cut short or extended) never verifies.
        #[test]
        fn fuzz_tampered_or_truncated_pins_never_verify(
            (s, p, b, issued, lifetime, now) in issued_pin(),
            at in any::<usize>(),
            c in prop_oneof![any::<char>(), prop::sample::select(b"0123456789abcxyzABCXYZ._-".to_vec()).prop_map(char::from)],
            op in 0..4u8,
        ) {
            let keys = Keys::new(&s).unwrap();
            let v = encode(&keys, &p, &b, issued);
            let mut chars: Vec<char> = v.chars().collect();
            let i = at % chars.len();
            match op {
                0 => chars[i] = c,
                1 => chars.insert(i, c),
                2 => chars.truncate(i),
                _ => chars.push(c),
            }
            let t: String = chars.into_iter().collect();
            if t == v {
                // The edit changed nothing (a character replaced by itself): nothing to check.
                return Ok(());
            }
            prop_assert!(decode(&keys, &t, now, lifetime).is_err(), "{:?} verified", t);
        }

        /// A pin signed with other secrets is forged for us.
        #[test]
        fn fuzz_other_keys_never_verify((s, p, b, issued, lifetime, now) in issued_pin(), other in secrets()) {
            // HMAC pads short keys with zeros: "k" and "k\0" are the same key.
            let norm = |k: &Vec<u8>| {
                let mut k = k.clone();
                while k.len() <= 64 && k.last() == Some(&0) {
                    k.pop();
                }
                k
            };
            if other.iter().any(|o| s.iter().any(|k| norm(k) == norm(o))) {
                return Ok(()); // the same key: not "other"
            }
            let v = encode(&Keys::new(&other).unwrap(), &p, &b, issued);
            prop_assert_eq!(decode(&Keys::new(&s).unwrap(), &v, now, lifetime), Err(Reject::Forged));
        }
    }
}
