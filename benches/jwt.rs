//! What checking a user token costs on the request path: a fresh verification per algorithm
//! against a cache hit (the verifier caches verified tokens by SHA-256 until they expire).
//!
//!   cargo bench --bench jwt            (or bench/jwt; keys are made by openssl)
//!
//! Prints microseconds per check. Timings belong here, not in tests: run it on a quiet machine.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use graysplit::config::Secret;
use graysplit::gray::jwt::{JwtSettings, KeySource, TokenCheck, TokenVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
const TOKENS: usize = 300;

fn openssl_key(args: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("graysplit-jwt-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("key.pem");
    let k = key.to_str().expect("utf-8 temp path");
    let mut gen = vec!["genpkey"];
    gen.extend_from_slice(args);
    gen.extend_from_slice(&["-out", k]);
    let run = |a: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(a)
            .output()
            .expect("openssl (scripts/ensure-deps openssl)");
        assert!(out.status.success(), "openssl {a:?}");
        out.stdout
    };
    run(&gen);
    let public = run(&["pkey", "-in", k, "-pubout"]);
    let private = std::fs::read(&key).expect("key");
    let _ = std::fs::remove_dir_all(&dir);
    (private, public)
}

fn settings(alg: Algorithm, keys: KeySource) -> JwtSettings {
    JwtSettings {
        cookie: None,
        header: Some(http::header::AUTHORIZATION),
        algorithms: vec![alg],
        keys,
        claim: "sub".into(),
        leeway: Duration::from_secs(30),
        issuer: None,
        audience: None,
        cache_size: 2 * TOKENS,
    }
}

/// Microseconds per check of each token once (fresh), then of each again (cached).
fn measure(name: &str, v: &TokenVerifier, tokens: &[String]) {
    let t = Instant::now();
    for tok in tokens {
        assert_eq!(v.check(tok).1, TokenCheck::Verified, "{name}");
    }
    let fresh = t.elapsed().as_secs_f64() * 1e6 / tokens.len() as f64;
    let t = Instant::now();
    for _ in 0..10 {
        for tok in tokens {
            assert_eq!(v.check(tok).1, TokenCheck::Cached, "{name}");
        }
    }
    let cached = t.elapsed().as_secs_f64() * 1e6 / (10 * tokens.len()) as f64;
    println!(
        "| {name} | {fresh:.1} | {cached:.2} | {:.0}× |",
        fresh / cached
    );
}

fn main() {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let make = |alg: Algorithm, key: &EncodingKey| -> Vec<String> {
        (0..TOKENS)
            .map(|i| {
                let claims = serde_json::json!({
                    "sub": format!("user-{i}"), "exp": exp, "iss": "https://sso.example.com/",
                    "aud": "frontend", "name": "A Typical User", "roles": ["tester"],
                });
                jsonwebtoken::encode(&Header::new(alg), &claims, key).expect("sign")
            })
            .collect()
    };
    println!("| algorithm | fresh µs/check | cached µs/check | ratio |");
    println!("| --- | --- | --- | --- |");

    let hs = TokenVerifier::new(settings(
        Algorithm::HS256,
        KeySource::Secret(Secret::new(SECRET)),
    ));
    let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("secret");
    measure("HS256", &hs, &make(Algorithm::HS256, &key));

    let (private, public) = openssl_key(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let rs = TokenVerifier::new(settings(
        Algorithm::RS256,
        KeySource::PublicKey(
            "bench.pem".into(),
            DecodingKey::from_rsa_pem(&public).expect("rsa public"),
        ),
    ));
    let key = EncodingKey::from_rsa_pem(&private).expect("rsa private");
    measure("RS256 (2048)", &rs, &make(Algorithm::RS256, &key));

    let (private, public) =
        openssl_key(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let es = TokenVerifier::new(settings(
        Algorithm::ES256,
        KeySource::PublicKey(
            "bench.pem".into(),
            DecodingKey::from_ec_pem(&public).expect("ec public"),
        ),
    ));
    let key = EncodingKey::from_ec_pem(&private).expect("ec private");
    measure("ES256 (P-256)", &es, &make(Algorithm::ES256, &key));
}
