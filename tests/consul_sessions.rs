//! The Consul stand-in's sessions and locks, over real HTTP, against Consul's documented
//! behaviour (api-docs/session, api-docs/kv, docs/dynamic-app-config/sessions): what the
//! rollout's one-driver-per-fleet lock relies on.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::consul::ConsulStandIn;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

async fn put(c: &ConsulStandIn, path: &str, body: &str) -> (u16, String) {
    let r = http()
        .put(format!("{}{path}", c.url()))
        .body(body.to_string())
        .send()
        .await
        .expect("PUT");
    (r.status().as_u16(), r.text().await.expect("body"))
}

async fn get(c: &ConsulStandIn, path: &str) -> (u16, serde_json::Value) {
    let r = http()
        .get(format!("{}{path}", c.url()))
        .send()
        .await
        .expect("GET");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

async fn session(c: &ConsulStandIn, body: &str) -> String {
    let (status, text) = put(c, "/v1/session/create", body).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    v["ID"].as_str().expect("ID").to_string()
}

const KEY: &str = "graysplit/rollout/lock";

#[tokio::test]
async fn create_info_renew_destroy_and_ttl_bounds() {
    let c = ConsulStandIn::start();
    let id = session(&c, r#"{"Name": "a", "TTL": "10s", "LockDelay": "1s"}"#).await;
    let (_, info) = get(&c, &format!("/v1/session/info/{id}")).await;
    assert_eq!(info[0]["Name"], "a");
    assert_eq!(info[0]["TTL"], "10s");
    assert_eq!(info[0]["LockDelay"], 1_000_000_000u64);
    assert_eq!(info[0]["Behavior"], "release");
    let (status, body) = put(&c, &format!("/v1/session/renew/{id}"), "").await;
    assert_eq!(status, 200, "{body}");
    // Out of Consul's 10s..86400s range.
    let (status, body) = put(&c, "/v1/session/create", r#"{"TTL": "5s"}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("Invalid Session TTL '5s'"), "{body}");
    assert_eq!(
        put(&c, "/v1/session/create", r#"{"TTL": "25h"}"#).await.0,
        400
    );
    // Defaults: no TTL, a 15 s lock-delay.
    let plain = session(&c, "").await;
    let (_, info) = get(&c, &format!("/v1/session/info/{plain}")).await;
    assert_eq!(info[0]["LockDelay"], 15_000_000_000u64);
    assert_eq!(info[0]["TTL"], "");
    assert_eq!(
        put(&c, &format!("/v1/session/destroy/{id}"), "").await,
        (200, "true".into())
    );
    // Destroy is idempotent; renewing or reading a gone session says so.
    assert_eq!(
        put(&c, &format!("/v1/session/destroy/{id}"), "").await,
        (200, "true".into())
    );
    assert_eq!(put(&c, &format!("/v1/session/renew/{id}"), "").await.0, 404);
    assert_eq!(
        get(&c, &format!("/v1/session/info/{id}")).await.1,
        serde_json::json!([])
    );
    let (_, list) = get(&c, "/v1/session/list").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn acquire_release_and_the_lock_index() {
    let c = ConsulStandIn::start();
    let a = session(&c, r#"{"TTL": "30s", "LockDelay": "0s"}"#).await;
    let b = session(&c, r#"{"TTL": "30s", "LockDelay": "0s"}"#).await;
    let url = |op: &str, s: &str| format!("/v1/kv/{KEY}?{op}={s}");
    assert_eq!(
        put(&c, &url("acquire", &a), "web1").await,
        (200, "true".into())
    );
    assert_eq!(c.lock_holder(KEY), Some(a.clone()));
    assert_eq!(c.lock_index(KEY), 1);
    // Held: another session cannot take it; the holder re-acquires without a new LockIndex.
    assert_eq!(put(&c, &url("acquire", &b), "web2").await.1, "false");
    assert_eq!(put(&c, &url("acquire", &a), "web1 again").await.1, "true");
    assert_eq!(c.lock_index(KEY), 1);
    // A plain write proceeds and keeps the lock.
    assert_eq!(put(&c, &format!("/v1/kv/{KEY}"), "edited").await.1, "true");
    assert_eq!(c.lock_holder(KEY), Some(a.clone()));
    // The GET shows the holder.
    let (_, entries) = get(&c, &format!("/v1/kv/{KEY}")).await;
    assert_eq!(entries[0]["Session"], a.as_str());
    assert_eq!(entries[0]["LockIndex"], 1);
    // Only the holder releases; release keeps LockIndex and clears Session.
    assert_eq!(put(&c, &url("release", &b), "x").await.1, "false");
    assert_eq!(put(&c, &url("release", &a), "bye").await.1, "true");
    let (_, entries) = get(&c, &format!("/v1/kv/{KEY}")).await;
    assert!(entries[0].get("Session").is_none(), "{entries}");
    assert_eq!(entries[0]["LockIndex"], 1);
    let value = base64::engine::general_purpose::STANDARD
        .decode(entries[0]["Value"].as_str().unwrap())
        .unwrap();
    assert_eq!(value, b"bye");
    // An explicit release has no lock-delay: b takes it at once.
    assert_eq!(put(&c, &url("acquire", &b), "web2").await.1, "true");
    assert_eq!(c.lock_index(KEY), 2);
    // An unknown session is an error.
    let (status, body) = put(
        &c,
        &url("acquire", "5e551040-0000-4000-8000-ffffffffffff"),
        "x",
    )
    .await;
    assert_eq!(status, 500, "{body}");
}

#[tokio::test]
async fn an_invalidated_session_releases_its_lock_after_which_the_lock_delay_holds() {
    let c = ConsulStandIn::start();
    let a = session(&c, r#"{"TTL": "10s", "LockDelay": "1s"}"#).await;
    let b = session(&c, r#"{"TTL": "10s", "LockDelay": "1s"}"#).await;
    assert_eq!(
        put(&c, &format!("/v1/kv/{KEY}?acquire={a}"), "web1")
            .await
            .1,
        "true"
    );
    let before = c.modify_index(KEY).unwrap();
    let destroyed = Instant::now();
    put(&c, &format!("/v1/session/destroy/{a}"), "").await;
    assert_eq!(
        c.lock_holder(KEY),
        None,
        "release behaviour: Session cleared"
    );
    assert!(
        c.modify_index(KEY).unwrap() > before,
        "and the ModifyIndex moved"
    );
    // Within the lock-delay nobody gets it; after it, b does.
    let first = put(&c, &format!("/v1/kv/{KEY}?acquire={b}"), "web2")
        .await
        .1;
    if destroyed.elapsed() < Duration::from_millis(900) {
        assert_eq!(first, "false");
    }
    common::eventually(
        Duration::from_secs(5),
        "b acquires after the lock-delay",
        || async {
            (put(&c, &format!("/v1/kv/{KEY}?acquire={b}"), "web2")
                .await
                .1
                == "true")
                .then_some(())
        },
    )
    .await;
    assert!(
        destroyed.elapsed() >= Duration::from_secs(1),
        "not before the lock-delay"
    );
    // The delete behaviour removes the key instead.
    let d = session(&c, r#"{"Behavior": "delete", "LockDelay": "0s"}"#).await;
    assert_eq!(
        put(&c, &format!("/v1/kv/ephemeral?acquire={d}"), "x")
            .await
            .1,
        "true"
    );
    put(&c, &format!("/v1/session/destroy/{d}"), "").await;
    assert_eq!(c.get("ephemeral"), None);
}

#[tokio::test]
async fn a_ttl_that_is_not_renewed_expires_and_wakes_a_blocking_query() {
    let c = ConsulStandIn::start();
    let a = session(&c, r#"{"TTL": "10s", "LockDelay": "0s"}"#).await;
    assert_eq!(
        put(&c, &format!("/v1/kv/{KEY}?acquire={a}"), "web1")
            .await
            .1,
        "true"
    );
    let index = c.modify_index(KEY).unwrap();
    // A follower watches the lock key with a blocking query, as the leader-election guide says.
    let url = format!("{}/v1/kv/{KEY}?index={index}&wait=30s", c.url());
    let started = Instant::now();
    let watched = tokio::spawn(async move { http().get(url).send().await });
    let resp = tokio::time::timeout(Duration::from_secs(25), watched)
        .await
        .expect("the query returns when the session expires")
        .expect("task")
        .expect("response");
    let waited = started.elapsed();
    let entries: serde_json::Value = resp.json().await.expect("JSON");
    assert!(entries[0].get("Session").is_none(), "{entries}");
    assert!(
        waited >= Duration::from_secs(9),
        "not before the TTL: {waited:?}"
    );
    assert!(c.sessions().is_empty());
    assert_eq!(put(&c, &format!("/v1/session/renew/{a}"), "").await.0, 404);
}
