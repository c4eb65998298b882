//! Who the client is, end to end (issue 13 §1, §5): a peer outside `trusted_proxies` cannot name
//! a whitelisted client or user, and its claims do not reach the upstream; a verified token
//! (HS256 secret, ES256 JWKS with a rotation) names the user; debug headers go to listed clients
//! only. Real graysplit, upstreams that record what they receive, tokens from the crate's
//! encoder, keys from openssl.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::edge::{client_from, metric, TRUSTED, UNTRUSTED};
use common::eventually;
use common::proc::{Graysplit, ServerOptions};
use common::upstream::CaptureUpstream;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const WHITELISTED: &str = "192.168.93.182";

struct Setup {
    g: Graysplit,
    base: CaptureUpstream,
    gray: CaptureUpstream,
}

fn setup(opts: &ServerOptions, gray_toml: &str, files: &[(&str, String)]) -> Setup {
    let (base, gray) = (CaptureUpstream::start(), CaptureUpstream::start());
    let mut all = vec![
        ("base.conf", format!("server {};\n", base.addr)),
        ("gray.conf", format!("server {};\n", gray.addr)),
        ("whitelist.txt", format!("{WHITELISTED}\nuser:alice\n")),
    ];
    all.extend(files.iter().cloned());
    let refs: Vec<(&str, &str)> = all.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let toml = format!(
        "[pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n\
         [gray]\nwhitelist_file = \"whitelist.txt\"\nuser_header = \"h-gray-userid\"\n{gray_toml}\n"
    );
    Setup {
        g: Graysplit::start_with(opts, &toml, &refs),
        base,
        gray,
    }
}

/// A fresh path per request, so the request a capture recorded can be found again.
fn path() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("/probe/{}", N.fetch_add(1, Ordering::Relaxed))
}

/// The head one capture recorded for `path`.
fn recorded(up: &CaptureUpstream, path: &str) -> Option<String> {
    let want = format!("GET {path} ");
    up.requests
        .lock()
        .unwrap()
        .iter()
        .find(|h| h.starts_with(&want))
        .cloned()
}

fn header_in(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Sends GET from `from` with `headers`; returns which pool's server got it and its head.
async fn via(s: &Setup, from: [u8; 4], headers: &[(&str, &str)]) -> (&'static str, String) {
    let p = path();
    let mut req = client_from(from).get(s.g.url(&p));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    assert_eq!(r.status(), 200, "never an error because of identity inputs");
    match (recorded(&s.base, &p), recorded(&s.gray, &p)) {
        (Some(head), None) => ("base", head),
        (None, Some(head)) => ("gray", head),
        other => panic!("{p} reached {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_name_a_whitelisted_client_or_user() {
    let s = setup(&ServerOptions::default(), "", &[]);
    let claims: [&[(&str, &str)]; 4] = [
        &[("x-forwarded-for", WHITELISTED)],
        &[("x-real-ip", WHITELISTED)],
        &[("h-gray-userid", "alice")],
        &[
            ("x-forwarded-for", WHITELISTED),
            ("x-real-ip", WHITELISTED),
            ("h-gray-userid", "alice"),
        ],
    ];
    for headers in claims {
        let (pool, head) = via(&s, UNTRUSTED, headers).await;
        assert_eq!(pool, "base", "{headers:?} from 127.0.0.2");
        // What the upstream hears is the peer, never the claim.
        assert_eq!(header_in(&head, "h-gray-userid"), None, "{head}");
        assert_eq!(header_in(&head, "x-real-ip").as_deref(), Some("127.0.0.2"));
        assert_eq!(
            header_in(&head, "x-forwarded-for").as_deref(),
            Some("127.0.0.2"),
            "{head}"
        );
    }
    assert_eq!(
        metric(&s.g, "graysplit_user_header_ignored_total").await,
        2.0
    );

    // The same claims from a trusted proxy (loopback, the shipped default) choose gray.
    let (pool, head) = via(&s, TRUSTED, &[("x-forwarded-for", WHITELISTED)]).await;
    assert_eq!(pool, "gray");
    assert_eq!(
        header_in(&head, "x-forwarded-for").as_deref(),
        Some("192.168.93.182, 127.0.0.1"),
        "a trusted proxy's chain is passed on"
    );
    assert_eq!(header_in(&head, "x-real-ip").as_deref(), Some(WHITELISTED));
    let (pool, _) = via(&s, TRUSTED, &[("x-real-ip", WHITELISTED)]).await;
    assert_eq!(pool, "gray");
    let (pool, head) = via(&s, TRUSTED, &[("h-gray-userid", "alice")]).await;
    assert_eq!(pool, "gray");
    assert_eq!(
        header_in(&head, "h-gray-userid").as_deref(),
        Some("alice"),
        "the gateway's user header reaches the backend"
    );
    let r = client_from(TRUSTED)
        .get(s.g.url("/"))
        .header("h-gray-userid", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-graysplit-reason"], "user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_headers_go_to_local_clients_by_default_or_to_the_listed_ones() {
    let shipped = ServerOptions {
        debug_headers: None,
        ..ServerOptions::default()
    };
    let s = setup(&shipped, "", &[]);
    let has = |r: &reqwest::Response| {
        (
            r.headers().contains_key("x-graysplit-pool"),
            r.headers().contains_key("x-graysplit-reason"),
        )
    };
    let local = client_from(TRUSTED).get(s.g.url("/")).send().await.unwrap();
    assert_eq!(has(&local), (true, true), "a client on this machine");
    let remote = client_from(UNTRUSTED)
        .get(s.g.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(has(&remote), (false, false), "a client elsewhere");
    // Through a local proxy (trusted), the client is the one it names: not shown either.
    let proxied = client_from(TRUSTED)
        .get(s.g.url("/"))
        .header("x-forwarded-for", WHITELISTED)
        .send()
        .await
        .unwrap();
    assert_eq!(has(&proxied), (false, false), "a proxied remote client");
    drop(s);

    let listed = ServerOptions {
        debug_headers: Some("[\"127.0.0.2/32\", \"192.168.93.0/24\"]"),
        ..ServerOptions::default()
    };
    let s = setup(&listed, "", &[]);
    let r = client_from(UNTRUSTED)
        .get(s.g.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(has(&r), (true, true), "127.0.0.2 is listed");
    let r = client_from(TRUSTED)
        .get(s.g.url("/"))
        .header("x-forwarded-for", WHITELISTED)
        .send()
        .await
        .unwrap();
    assert_eq!(has(&r), (true, true), "the forwarded tester is listed");
    assert_eq!(r.headers()["x-graysplit-reason"], "ip");
    let r = client_from(TRUSTED).get(s.g.url("/")).send().await.unwrap();
    assert_eq!(has(&r), (false, false), "loopback is not listed here");
}

const SECRET: &str = "graysplit-test-jwt-secret-0123456789abcdef";

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs256(secret: &str, sub: &str, exp_in: i64) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": unix_now() + exp_in}),
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn b64(v: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_token_names_the_user_and_a_bad_one_names_no_one() {
    let opts = ServerOptions {
        env: vec![("GRAYSPLIT_JWT_SECRET", SECRET.to_string())],
        ..ServerOptions::default()
    };
    let jwt = "[gray.jwt]\ncookie = \"access_token\"\nheader = \"authorization\"\n\
               algorithms = [\"HS256\"]\n";
    let s = setup(&opts, jwt, &[]);
    let valid = hs256(SECRET, "alice", 600);
    let cookie = format!("access_token={valid}");

    // graysplit as the first hop: the peer is untrusted, the token is the proof.
    let (pool, head) = via(&s, UNTRUSTED, &[("cookie", &cookie)]).await;
    assert_eq!(pool, "gray", "alice is whitelisted");
    assert_eq!(
        header_in(&head, "h-gray-userid").as_deref(),
        Some("alice"),
        "the verified id is sent upstream"
    );
    let bearer = format!("Bearer {valid}");
    let (pool, _) = via(&s, UNTRUSTED, &[("authorization", &bearer)]).await;
    assert_eq!(pool, "gray");
    // A claimed header next to a token is replaced by the token's id.
    let (pool, head) = via(
        &s,
        UNTRUSTED,
        &[("cookie", &cookie), ("h-gray-userid", "mallory")],
    )
    .await;
    assert_eq!(pool, "gray");
    assert_eq!(header_in(&head, "h-gray-userid").as_deref(), Some("alice"));

    let claims = json!({"sub": "alice", "exp": unix_now() + 600});
    let refused = [
        ("expired", hs256(SECRET, "alice", -3600)),
        (
            "signature",
            hs256("another-secret-another-secret-000000", "alice", 600),
        ),
        (
            "algorithm",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims)
            ),
        ),
        ("malformed", "not-a-token".to_string()),
    ];
    for (why, token) in &refused {
        let c = format!("access_token={token}");
        let (pool, head) = via(&s, UNTRUSTED, &[("cookie", &c), ("h-gray-userid", "alice")]).await;
        assert_eq!(pool, "base", "{why}: no user id");
        assert_eq!(header_in(&head, "h-gray-userid"), None, "{why}");
        let series = format!("graysplit_user_tokens_total{{result=\"{why}\"}}");
        assert_eq!(metric(&s.g, &series).await, 1.0, "{series}");
    }
    assert_eq!(
        metric(&s.g, "graysplit_user_tokens_total{result=\"verified\"}").await,
        1.0,
        "one verification"
    );
    assert_eq!(
        metric(&s.g, "graysplit_user_tokens_total{result=\"cached\"}").await,
        2.0,
        "then the cache"
    );
    let log = s.g.log();
    assert!(log.contains("gray.jwt: refused a user token"), "{log}");
    for (_, token) in refused.iter().chain([("valid", valid)].iter()) {
        assert!(!log.contains(token.as_str()), "a token in the log:\n{log}");
    }
    assert!(!log.contains(SECRET));
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is not installed: run scripts/test, which installs it");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A P-256 private key (PKCS#8 PEM), made by openssl.
fn ec_key(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    let p = path.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        p,
    ]);
    std::fs::read(&path).unwrap()
}

fn jwks(keys: &[(&[u8], &str)]) -> String {
    let keys: Vec<_> = keys
        .iter()
        .map(|(pem, kid)| {
            let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
                &EncodingKey::from_ec_pem(pem).unwrap(),
                Algorithm::ES256,
            )
            .unwrap();
            jwk.common.key_id = Some(kid.to_string());
            jwk
        })
        .collect();
    serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys }).unwrap()
}

fn es256(pem: &[u8], kid: &str, sub: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        &json!({"sub": sub, "exp": unix_now() + 600}),
        &EncodingKey::from_ec_pem(pem).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_rotation_applies_without_a_restart() {
    let keys = tempfile::tempdir().unwrap();
    let (old, new) = (
        ec_key(keys.path(), "old.pem"),
        ec_key(keys.path(), "new.pem"),
    );
    let jwt = "[gray.jwt]\nheader = \"authorization\"\nalgorithms = [\"ES256\"]\n\
               jwks_file = \"jwks.json\"\n";
    let s = setup(
        &ServerOptions::default(),
        jwt,
        &[("jwks.json", jwks(&[(&old, "2026-11")]))],
    );
    let bearer = |t: String| format!("Bearer {t}");
    let by_old = bearer(es256(&old, "2026-11", "alice"));
    let by_new = bearer(es256(&new, "2026-12", "alice"));
    assert_eq!(
        via(&s, UNTRUSTED, &[("authorization", &by_old)]).await.0,
        "gray"
    );
    assert_eq!(
        via(&s, UNTRUSTED, &[("authorization", &by_new)]).await.0,
        "base"
    );

    // The IdP rotates: both keys published, then the old one withdrawn.
    s.g.write_file("jwks.json", &jwks(&[(&old, "2026-11"), (&new, "2026-12")]));
    eventually(
        Duration::from_secs(5),
        "the new key to be in use",
        || async {
            (via(&s, UNTRUSTED, &[("authorization", &by_new)]).await.0 == "gray").then_some(())
        },
    )
    .await;
    assert_eq!(
        via(&s, UNTRUSTED, &[("authorization", &by_old)]).await.0,
        "gray"
    );
    s.g.write_file("jwks.json", &jwks(&[(&new, "2026-12")]));
    eventually(
        Duration::from_secs(5),
        "the old key to be withdrawn",
        || async {
            (via(&s, UNTRUSTED, &[("authorization", &by_old)]).await.0 == "base").then_some(())
        },
    )
    .await;
    assert_eq!(
        via(&s, UNTRUSTED, &[("authorization", &by_new)]).await.0,
        "gray"
    );

    // A broken rewrite keeps the keys in use.
    s.g.write_file("jwks.json", "{\"keys\": [{\"kty\": ");
    eventually(
        Duration::from_secs(5),
        "the broken file to be noticed",
        || async {
            s.g.log()
                .contains("gray.jwt.jwks_file: not a JWKS document")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        via(&s, UNTRUSTED, &[("authorization", &by_new)]).await.0,
        "gray"
    );
    assert!(metric(&s.g, "graysplit_user_tokens_total{result=\"unknown_key\"}").await >= 2.0);
}
