//! Tokens made with the crate's encoder; RSA and EC keys made by `openssl` (scripts/test
//! installs it), so no key material lives in the repository.

use super::*;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is not installed: run scripts/test, which installs it");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    out.stdout
}

/// (private PKCS#8 PEM, public SPKI PEM).
fn keypair(kind: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("key.pem");
    let p = private.to_str().unwrap();
    match kind {
        "rsa" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p,
        ]),
        _ => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p,
        ]),
    };
    let public = openssl(&["pkey", "-in", p, "-pubout"]);
    (std::fs::read(&private).unwrap(), public)
}

fn settings(algorithms: &[Algorithm], keys: KeySource) -> JwtSettings {
    JwtSettings {
        cookie: Some("access_token".into()),
        header: Some(http::header::AUTHORIZATION),
        algorithms: algorithms.to_vec(),
        keys,
        claim: "sub".into(),
        leeway: Duration::from_secs(30),
        issuer: None,
        audience: None,
        cache_size: 100,
    }
}

fn hs256() -> TokenVerifier {
    TokenVerifier::new(settings(
        &[Algorithm::HS256],
        KeySource::Secret(Secret::new(SECRET)),
    ))
}

fn now() -> u64 {
    unix_now()
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn hs(claims: serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        None,
        claims,
    )
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn a_valid_token_names_the_user_and_is_then_served_from_the_cache() {
    let v = hs256();
    let t = hs(json!({"sub": "alice", "exp": now() + 600}));
    assert_eq!(
        v.check(&t),
        (Some(Arc::from("alice")), TokenCheck::Verified)
    );
    assert_eq!(v.check(&t), (Some(Arc::from("alice")), TokenCheck::Cached));
    let numeric = hs(json!({"sub": 42, "exp": now() + 600}));
    assert_eq!(v.check(&numeric).0.as_deref(), Some("42"));
}

#[test]
fn expired_not_yet_valid_and_claimless_tokens_name_no_one() {
    let v = hs256();
    let expired = hs(json!({"sub": "alice", "exp": now() - 120}));
    assert_eq!(v.check(&expired), (None, TokenCheck::Expired));
    // Within the leeway (30 s) an expired token still counts, as clocks drift.
    let just = hs(json!({"sub": "alice", "exp": now() - 5}));
    assert_eq!(v.check(&just).1, TokenCheck::Verified);
    let early = hs(json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 300}));
    assert_eq!(v.check(&early), (None, TokenCheck::NotYetValid));
    let no_exp = hs(json!({"sub": "alice"}));
    assert_eq!(v.check(&no_exp), (None, TokenCheck::Claims));
    let no_sub = hs(json!({"uid": "alice", "exp": now() + 600}));
    assert_eq!(v.check(&no_sub), (None, TokenCheck::NoUser));
    let bad_sub = hs(json!({"sub": "a b", "exp": now() + 600}));
    assert_eq!(v.check(&bad_sub), (None, TokenCheck::NoUser));
}

#[test]
fn a_cached_token_still_expires() {
    let v = Verified {
        user: Arc::from("alice"),
        exp: 1_000,
        nbf: Some(500),
    };
    assert_eq!(still_valid(&v, 1_000, 30), Ok(()));
    assert_eq!(still_valid(&v, 1_030, 30), Ok(()));
    assert_eq!(still_valid(&v, 1_031, 30), Err(TokenCheck::Expired));
    assert_eq!(still_valid(&v, 469, 30), Err(TokenCheck::NotYetValid));
    assert_eq!(still_valid(&v, 470, 30), Ok(()));
}

#[test]
fn wrong_key_none_and_garbage_are_refused() {
    let v = hs256();
    let claims = json!({"sub": "alice", "exp": now() + 600});
    let other = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret, 32 bytes long!!!").unwrap(),
        None,
        claims.clone(),
    );
    assert_eq!(v.check(&other), (None, TokenCheck::Signature));
    // alg=none: a header and claims, no signature.
    for none in ["none", "None", "NONE"] {
        let t = format!(
            "{}.{}.",
            b64(&json!({"alg": none, "typ": "JWT"})),
            b64(&claims)
        );
        assert_eq!(v.check(&t), (None, TokenCheck::Algorithm), "{none}");
    }
    // A valid token whose header was swapped for alg=none keeps its signature: still refused.
    let good = hs(claims.clone());
    let sig = good.rsplit('.').next().unwrap();
    let swapped = format!("{}.{}.{sig}", b64(&json!({"alg": "none"})), b64(&claims));
    assert_eq!(v.check(&swapped).1, TokenCheck::Algorithm);
    // Claims changed under a valid signature.
    let forged = format!(
        "{}.{}.{sig}",
        good.split('.').next().unwrap(),
        b64(&json!({"sub": "root", "exp": now() + 600}))
    );
    assert_eq!(v.check(&forged).1, TokenCheck::Signature);
    for garbage in ["", "a.b", "a.b.c.d", "!!!.e30.", "e30.e30.x", "e30"] {
        assert_eq!(v.check(garbage).1, TokenCheck::Malformed, "{garbage:?}");
    }
    let huge = format!(
        "{}.{}.x",
        b64(&json!({"alg": "HS256"})),
        "a".repeat(MAX_TOKEN_LEN)
    );
    assert_eq!(v.check(&huge).1, TokenCheck::TooLarge);
}

#[test]
fn a_refused_token_is_remembered_so_a_stale_cookie_costs_one_check() {
    let v = hs256();
    let stale = hs(json!({"sub": "alice", "exp": now() - 3600}));
    assert_eq!(v.check(&stale).1, TokenCheck::Expired);
    assert_eq!(v.cache.len(), 1, "remembered");
    assert_eq!(
        v.check(&stale).1,
        TokenCheck::Expired,
        "answered from the cache"
    );
    // Not yet valid and malformed are not remembered.
    let early = hs(json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300}));
    assert_eq!(v.check(&early).1, TokenCheck::NotYetValid);
    assert_eq!(v.check("garbage").1, TokenCheck::Malformed);
    assert_eq!(v.cache.len(), 1);
}

#[test]
fn issuer_and_audience_when_configured() {
    let mut s = settings(&[Algorithm::HS256], KeySource::Secret(Secret::new(SECRET)));
    s.issuer = Some("https://sso.example.com/".into());
    s.audience = Some("frontend".into());
    let v = TokenVerifier::new(s);
    let exp = now() + 600;
    let ok = hs(
        json!({"sub": "a", "exp": exp, "iss": "https://sso.example.com/", "aud": ["x", "frontend"]}),
    );
    assert_eq!(v.check(&ok).1, TokenCheck::Verified);
    for bad in [
        json!({"sub": "a", "exp": exp, "iss": "https://evil.example.com/", "aud": "frontend"}),
        json!({"sub": "a", "exp": exp, "iss": "https://sso.example.com/", "aud": "backend"}),
    ] {
        assert_eq!(v.check(&hs(bad)).1, TokenCheck::Claims);
    }
    // Without a configured audience, `aud` is not checked.
    let plain = hs256();
    assert_eq!(
        plain
            .check(&hs(json!({"sub": "a", "exp": exp, "aud": "anything"})))
            .1,
        TokenCheck::Verified
    );
}

#[test]
fn rs256_with_a_public_key_and_no_algorithm_confusion() {
    let (private, public) = keypair("rsa");
    let key = DecodingKey::from_rsa_pem(&public).unwrap();
    let v = TokenVerifier::new(settings(
        &[Algorithm::RS256],
        KeySource::PublicKey("pub.pem".into(), key),
    ));
    let claims = json!({"sub": "alice", "exp": now() + 600});
    let good = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(&private).unwrap(),
        None,
        claims.clone(),
    );
    assert_eq!(v.check(&good).1, TokenCheck::Verified);
    // The classic confusion: HS256 "signed" with the public key (which is no secret).
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public).unwrap(),
        None,
        claims.clone(),
    );
    assert_eq!(v.check(&confused), (None, TokenCheck::Algorithm));
    // Same family but not listed.
    let rs384 = sign(
        Algorithm::RS384,
        &EncodingKey::from_rsa_pem(&private).unwrap(),
        None,
        claims.clone(),
    );
    assert_eq!(v.check(&rs384).1, TokenCheck::Algorithm);
    // Another RSA key.
    let (other, _) = keypair("rsa");
    let stranger = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(&other).unwrap(),
        None,
        claims,
    );
    assert_eq!(v.check(&stranger).1, TokenCheck::Signature);
}

fn jwks(keys: &[(&[u8], &str)]) -> String {
    let set = JwkSet {
        keys: keys
            .iter()
            .map(|(private, kid)| {
                let mut jwk = Jwk::from_encoding_key(
                    &EncodingKey::from_ec_pem(private).unwrap(),
                    Algorithm::ES256,
                )
                .unwrap();
                jwk.common.key_id = Some(kid.to_string());
                jwk
            })
            .collect(),
    };
    serde_json::to_string(&set).unwrap()
}

#[test]
fn a_jwks_rotation_takes_effect_and_a_broken_file_keeps_the_keys() {
    let (a, _) = keypair("ec");
    let (b, _) = keypair("ec");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[(&a, "a")])).unwrap();
    let (set, notes) = parse_jwks(
        &std::fs::read_to_string(&path).unwrap(),
        &[Algorithm::ES256],
    )
    .unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let v = TokenVerifier::new(settings(
        &[Algorithm::ES256],
        KeySource::Jwks(path.clone(), Arc::new(set)),
    ));
    let claims = json!({"sub": "alice", "exp": now() + 600});
    let by = |key: &[u8], kid: &str| {
        sign(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(key).unwrap(),
            Some(kid),
            claims.clone(),
        )
    };
    let (ta, tb) = (by(&a, "a"), by(&b, "b"));
    assert_eq!(v.check(&ta).1, TokenCheck::Verified);
    assert_eq!(v.check(&tb).1, TokenCheck::UnknownKey);
    // A token claiming kid "a" but signed by b.
    assert_eq!(v.check(&by(&b, "a")).1, TokenCheck::Signature);

    // Rotation: b in, a out. The cached verification of ta goes with a.
    std::fs::write(&path, jwks(&[(&b, "b")])).unwrap();
    v.poll();
    assert_eq!(v.check(&ta).1, TokenCheck::UnknownKey);
    assert_eq!(v.check(&tb).1, TokenCheck::Verified);

    // A broken rewrite is logged and ignored.
    std::fs::write(&path, "{\"keys\": [").unwrap();
    v.poll();
    assert_eq!(v.check(&tb).1, TokenCheck::Cached);
    std::fs::write(&path, "{\"keys\": []}").unwrap();
    v.poll();
    assert_eq!(
        v.check(&tb).1,
        TokenCheck::Cached,
        "an empty set is not applied"
    );
}

#[test]
fn jwks_keys_that_must_not_verify_are_left_out() {
    let (a, _) = keypair("ec");
    let mut doc: serde_json::Value = serde_json::from_str(&jwks(&[(&a, "sig")])).unwrap();
    let keys = doc["keys"].as_array_mut().unwrap();
    let mut enc = keys[0].clone();
    enc["kid"] = json!("enc");
    enc["use"] = json!("enc");
    keys.push(enc);
    keys.push(json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}));
    keys.push(json!({"kty": "nonsense", "kid": "x"}));
    let (set, notes) = parse_jwks(&doc.to_string(), &[Algorithm::ES256]).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(notes
        .iter()
        .any(|n| n.contains("hmac") && n.contains("symmetric")));
    // The same EC key is no use for RS256.
    let e = parse_jwks(&jwks(&[(&a, "sig")]), &[Algorithm::RS256]).unwrap_err();
    assert!(
        e.starts_with("no key usable with algorithms [RS256]"),
        "{e}"
    );
    assert!(parse_jwks("[]", &[Algorithm::ES256]).is_err());
}

#[test]
fn tokens_come_from_a_bearer_header_or_the_cookie() {
    let v = hs256();
    let mut h = HeaderMap::new();
    assert_eq!(v.token(&h), None);
    h.insert(
        http::header::COOKIE,
        "a=1; access_token=from-cookie".parse().unwrap(),
    );
    assert_eq!(v.token(&h), Some("from-cookie"));
    h.insert(
        http::header::AUTHORIZATION,
        "Bearer from-header".parse().unwrap(),
    );
    assert_eq!(v.token(&h), Some("from-header"), "the header first");
    h.insert(
        http::header::AUTHORIZATION,
        "Basic dXNlcjpwdw==".parse().unwrap(),
    );
    assert_eq!(v.token(&h), Some("from-cookie"), "not a bearer token");
    h.insert(
        http::header::AUTHORIZATION,
        "bearer  x.y.z ".parse().unwrap(),
    );
    assert_eq!(v.token(&h), Some("x.y.z"));
}
