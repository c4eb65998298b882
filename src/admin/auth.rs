//! The admin token (`admin.token` / `GRAYSPLIT_ADMIN_TOKEN`): who may read the admin listener.
//!
//! Accepted as `Authorization: Bearer <token>` (scripts, Prometheus' `authorization` setting) and
//! as HTTP Basic with the token as password and any user name, so a browser opening the
//! dashboard gets its own login prompt and then sends the credentials on every request of the
//! page, its `fetch()` calls included — nothing to paste into a URL, where it would end up in
//! history and logs.
//!
//! `/healthz` and `/readyz` stay open: they say only "ok" / "ready", and load balancers and
//! orchestrators probe them without credentials (most cannot send any).
//!
//! The comparison is constant-time over SHA-256 digests of both sides, so neither the length
//! nor a matching prefix of the token leaks through timing.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// Paths answered without a token.
pub const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// The challenges of a 401: Basic first, so browsers prompt.
pub const CHALLENGES: [&str; 2] = [
    "Basic realm=\"graysplit admin\", charset=\"UTF-8\"",
    "Bearer realm=\"graysplit admin\"",
];

/// Does `authorization` (the header's bytes) carry `token`?
pub fn authorized(token: &Secret, authorization: Option<&[u8]>) -> bool {
    let Some(presented) = authorization.and_then(presented_token) else {
        return false;
    };
    constant_time_eq(
        &Sha256::digest(token.expose().as_bytes()),
        &Sha256::digest(&presented),
    )
}

/// The token in a `Bearer` or `Basic` credential (schemes compared without case).
fn presented_token(header: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Secret {
        Secret::new("0123456789abcdef0123")
    }

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[test]
    fn bearer_and_basic_with_the_token_as_password() {
        let t = token();
        assert!(authorized(&t, Some(b"Bearer 0123456789abcdef0123")));
        assert!(authorized(&t, Some(b"bearer   0123456789abcdef0123 ")));
        assert!(authorized(
            &t,
            Some(basic("ops:0123456789abcdef0123").as_bytes())
        ));
        assert!(authorized(
            &t,
            Some(basic(":0123456789abcdef0123").as_bytes())
        ));
    }

    #[test]
    fn anything_else_is_refused() {
        let t = token();
        for bad in [
            "Bearer 0123456789abcdef012",
            "Bearer 0123456789abcdef01234",
            "Bearer",
            "Token 0123456789abcdef0123",
            "0123456789abcdef0123",
            "Basic !!!",
        ] {
            assert!(!authorized(&t, Some(bad.as_bytes())), "{bad:?}");
        }
        assert!(
            !authorized(&t, Some(basic("0123456789abcdef0123").as_bytes())),
            "no colon"
        );
        assert!(
            !authorized(&t, Some(basic("0123456789abcdef0123:x").as_bytes())),
            "token as user"
        );
        assert!(!authorized(&t, None));
        assert!(!authorized(&t, Some(&[0xff, 0xfe])));
    }
}
