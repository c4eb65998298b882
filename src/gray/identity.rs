//! Who the user is, and what that claim is worth.
//!
//! A user id chooses builds (user whitelists, the percent bucket) and travels to the backend, so
//! it is taken only from where it can be trusted, in this order:
//!
//! 1. `gray.user_header` from a peer inside `trusted_proxies` (a gateway or SSO in front set it).
//!    From any other peer the header is ignored and removed before proxying: the first release
//!    believed `h-gray-userid: alice` from anyone, so anyone could be alice;
//! 2. a verified token (`[gray.jwt]`), for deployments where graysplit is the first hop. A token
//!    that is present but bad means no user at all (a bad token never falls through to a claimed
//!    id);
//! 3. `gray.user_cookie`: an id the visitor chose (any browser can set any cookie). Fit for
//!    spreading visitors over the percent rollout, not for deciding who a tester is.
//!
//! Upstream, `gray.user_header` then always means the same thing: it is the trusted proxy's
//! (passed on), or graysplit's own from a verified token (set), or absent.

use http::HeaderMap;

use super::jwt::{TokenCheck, TokenVerifier};
use super::whitelist::valid_user;
use super::GraySettings;

/// Where a request's user id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSource {
    /// `gray.user_header`, sent by a trusted proxy.
    TrustedHeader,
    /// A verified token.
    Token,
    /// `gray.user_cookie`: chosen by the visitor.
    Cookie,
}

/// What the request path needs to know about the identity beyond the id itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity {
    /// The direct peer is inside `trusted_proxies`.
    pub peer_trusted: bool,
    pub source: Option<UserSource>,
    /// The result of checking the request's token, if it had one.
    pub token: Option<TokenCheck>,
    /// `gray.user_header` came from an untrusted peer (ignored; removed upstream).
    pub header_ignored: bool,
}

/// What to do with `gray.user_header` on the proxied request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamUser<'a> {
    /// Pass on whatever the (trusted) peer sent.
    Keep,
    /// Remove the client's copy.
    Remove,
    /// Replace any copy with the verified id.
    Set(&'a str),
}

/// The user id of a request and how it was found (see the module docs for the order).
pub fn user(
    settings: &GraySettings,
    verifier: Option<&TokenVerifier>,
    peer_trusted: bool,
    headers: &HeaderMap,
) -> (Option<String>, Identity) {
    let mut identity = Identity {
        peer_trusted,
        ..Identity::default()
    };
    // Borrowed until known to be a valid id, so an oversized header is never copied.
    let header = settings
        .user_header
        .as_ref()
        .and_then(|h| headers.get(h))
        .map(|v| v.to_str().map(str::trim));
    if let Some(value) = header {
        if !peer_trusted {
            identity.header_ignored = true;
        } else if let Some(u) = value.ok().filter(|u| valid_user(u)) {
            identity.source = Some(UserSource::TrustedHeader);
            return (Some(u.to_string()), identity);
        }
    }
    if let Some((v, token)) = verifier.and_then(|v| Some((v, v.token(headers)?))) {
        let (user, check) = v.check(token);
        identity.token = Some(check);
        identity.source = user.is_some().then_some(UserSource::Token);
        return (user.map(|u| u.to_string()), identity);
    }
    let from_cookie = settings
        .user_cookie
        .as_deref()
        .and_then(|c| super::rules::cookie(headers, c))
        .filter(|u| valid_user(u));
    identity.source = from_cookie.map(|_| UserSource::Cookie);
    (from_cookie.map(str::to_string), identity)
}

/// `gray.user_header` on the proxied request.
pub fn upstream_user<'u>(identity: &Identity, user: Option<&'u str>) -> UpstreamUser<'u> {
    match (identity.source, user) {
        (Some(UserSource::Token), Some(u)) => UpstreamUser::Set(u),
        _ if identity.peer_trusted => UpstreamUser::Keep,
        _ => UpstreamUser::Remove,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::gray::jwt::{JwtSettings, KeySource};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use std::time::Duration;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn settings() -> GraySettings {
        GraySettings {
            user_header: Some(http::HeaderName::from_static("h-gray-userid")),
            user_cookie: Some("uid".into()),
            ..GraySettings::default()
        }
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(JwtSettings {
            cookie: Some("access_token".into()),
            header: None,
            algorithms: vec![Algorithm::HS256],
            keys: KeySource::Secret(Secret::new(SECRET)),
            claim: "sub".into(),
            leeway: Duration::from_secs(30),
            issuer: None,
            audience: None,
            cache_size: 10,
        })
    }

    fn token(sub: &str, exp_in: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let exp = now + exp_in;
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": sub, "exp": exp}),
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_user_header_counts_only_from_a_trusted_peer() {
        let s = settings();
        let h = headers(&[("h-gray-userid", "alice")]);
        let (u, id) = user(&s, None, true, &h);
        assert_eq!(u.as_deref(), Some("alice"));
        assert_eq!(id.source, Some(UserSource::TrustedHeader));
        assert_eq!(upstream_user(&id, u.as_deref()), UpstreamUser::Keep);

        let (u, id) = user(&s, None, false, &h);
        assert_eq!(u, None);
        assert!(id.header_ignored);
        assert_eq!(upstream_user(&id, u.as_deref()), UpstreamUser::Remove);
    }

    #[test]
    fn an_untrusted_peer_s_header_does_not_shadow_its_cookie_or_token() {
        let s = settings();
        let h = headers(&[("h-gray-userid", "alice"), ("cookie", "uid=visitor-7")]);
        let (u, id) = user(&s, None, false, &h);
        assert_eq!(u.as_deref(), Some("visitor-7"));
        assert_eq!(
            (id.source, id.header_ignored),
            (Some(UserSource::Cookie), true)
        );
        assert_eq!(upstream_user(&id, u.as_deref()), UpstreamUser::Remove);

        let v = verifier();
        let t = format!("access_token={}", token("bob", 600));
        let h = headers(&[("h-gray-userid", "alice"), ("cookie", &t)]);
        let (u, id) = user(&s, Some(&v), false, &h);
        assert_eq!(u.as_deref(), Some("bob"));
        assert_eq!(id.token, Some(TokenCheck::Verified));
        assert_eq!(upstream_user(&id, u.as_deref()), UpstreamUser::Set("bob"));
    }

    #[test]
    fn a_bad_token_means_no_user_not_the_claimed_cookie() {
        let s = settings();
        let v = verifier();
        let t = format!("access_token={}; uid=alice", token("bob", -600));
        let (u, id) = user(&s, Some(&v), false, &headers(&[("cookie", &t)]));
        assert_eq!(
            (u, id.token, id.source),
            (None, Some(TokenCheck::Expired), None)
        );
        // No token at all: the self-chosen cookie.
        let (u, _) = user(&s, Some(&v), false, &headers(&[("cookie", "uid=alice")]));
        assert_eq!(u.as_deref(), Some("alice"));
    }

    #[test]
    fn invalid_ids_are_no_ids() {
        let s = settings();
        let long = "x".repeat(10_000);
        let (u, id) = user(&s, None, true, &headers(&[("h-gray-userid", &long)]));
        assert_eq!((u, id.source), (None, None));
        let (u, _) = user(&s, None, true, &headers(&[("cookie", "uid=a,b")]));
        assert_eq!(u, None);
    }
}
