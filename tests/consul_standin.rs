//! Tests of the in-process Consul KV stand-in (`tests/common/consul.rs`) over real HTTP.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::consul::{ConsulStandIn, Fault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFIX: &str = "upstreams/base/";
const KEY: &str = "upstreams/base/127.0.0.1:8080";
const PROMPT: Duration = Duration::from_secs(1);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

fn consul_index(resp: &reqwest::Response) -> u64 {
    header(resp, "x-consul-index")
        .expect("X-Consul-Index header")
        .parse()
        .expect("numeric X-Consul-Index")
}

fn prefix_url(consul: &ConsulStandIn, extra: &str) -> String {
    format!("{}/v1/kv/{PREFIX}?recurse{extra}", consul.url())
}

async fn get_prefix(consul: &ConsulStandIn, extra: &str) -> reqwest::Response {
    client()
        .get(prefix_url(consul, extra))
        .header("X-Consul-Token", "test-token")
        .send()
        .await
        .expect("GET")
}

/// Spawn a GET on the current runtime so the test can act while it is parked.
fn spawn_get(url: String) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    tokio::spawn(async move { client().get(url).send().await })
}

async fn await_prompt(
    task: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) -> reqwest::Response {
    tokio::time::timeout(PROMPT, task)
        .await
        .expect("blocked query should return promptly")
        .expect("task")
        .expect("response")
}

fn decode(value: &serde_json::Value) -> String {
    let b64 = value.as_str().expect("base64 string Value");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("valid base64");
    String::from_utf8(raw).expect("utf-8")
}

#[tokio::test]
async fn http_put_then_recurse_get_returns_entries_and_index() {
    let consul = ConsulStandIn::start();
    let http = client();
    let put = http
        .put(format!("{}/v1/kv/{KEY}", consul.url()))
        .header("X-Consul-Token", "put-token")
        .body("weight=3")
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 200);
    assert_eq!(put.text().await.expect("body"), "true");
    assert_eq!(consul.last_token().as_deref(), Some("put-token"));
    assert_eq!(consul.get(KEY).as_deref(), Some("weight=3"));

    let put = http
        .put(format!(
            "{}/v1/kv/{PREFIX}127.0.0.1:7070?flags=42",
            consul.url()
        ))
        .body("")
        .send()
        .await
        .expect("PUT empty");
    assert_eq!(put.text().await.expect("body"), "true");
    assert_eq!(consul.last_token(), None);
    consul.put("upstreams/basement/x", "not under the prefix");

    let resp = get_prefix(&consul, "").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert_eq!(header(&resp, "x-consul-knownleader"), Some("true"));
    assert_eq!(header(&resp, "x-consul-lastcontact"), Some("0"));
    // The prefix index is the highest ModifyIndex under the prefix, not the global index.
    let index = consul_index(&resp);
    assert_eq!(index, consul.index() - 1);
    assert_eq!(consul.last_token().as_deref(), Some("test-token"));
    assert_eq!(consul.gets_served(), 1);

    let entries: Vec<serde_json::Value> = resp.json().await.expect("json");
    assert_eq!(entries.len(), 2, "{entries:?}");
    // Sorted by key; an empty value is null.
    assert_eq!(entries[0]["Key"], format!("{PREFIX}127.0.0.1:7070"));
    assert_eq!(entries[0]["Value"], serde_json::Value::Null);
    assert_eq!(entries[0]["Flags"], 42);
    assert_eq!(entries[0]["ModifyIndex"], index);
    assert_eq!(entries[1]["Key"], KEY);
    assert_eq!(decode(&entries[1]["Value"]), "weight=3");
    assert_eq!(entries[1]["Flags"], 0);
    assert_eq!(entries[1]["LockIndex"], 0);
    assert_eq!(entries[1]["CreateIndex"], entries[1]["ModifyIndex"]);
    assert!(entries[1]["ModifyIndex"].as_u64().expect("u64") < index);

    // Single-key GET: one entry; overwriting keeps CreateIndex and raises ModifyIndex.
    let create = entries[1]["CreateIndex"].clone();
    let new_index = consul.put(KEY, "weight=5");
    let resp = http
        .get(format!("{}/v1/kv/{KEY}", consul.url()))
        .send()
        .await
        .expect("GET key");
    assert_eq!(consul_index(&resp), new_index);
    let entries: Vec<serde_json::Value> = resp.json().await.expect("json");
    assert_eq!(entries.len(), 1);
    assert_eq!(decode(&entries[0]["Value"]), "weight=5");
    assert_eq!(entries[0]["CreateIndex"], create);
    assert_eq!(entries[0]["ModifyIndex"], new_index);
}

#[tokio::test]
async fn empty_prefix_is_404_with_index() {
    let consul = ConsulStandIn::start();
    consul.put("elsewhere/a", "1");
    let resp = get_prefix(&consul, "").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(header(&resp, "x-consul-knownleader"), Some("true"));
    assert_eq!(header(&resp, "x-consul-lastcontact"), Some("0"));
    let index = consul_index(&resp);
    assert!(index >= 1);
    assert_eq!(index, consul.index());
    assert!(resp.bytes().await.expect("body").is_empty());

    let missing = client()
        .get(format!("{}/v1/kv/{KEY}", consul.url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);
    assert!(consul_index(&missing) >= 1);
}

#[tokio::test]
async fn blocking_get_returns_promptly_after_put() {
    let consul = ConsulStandIn::start();
    let index = consul.put(KEY, "v1");
    let task = spawn_get(prefix_url(&consul, &format!("&index={index}&wait=5m")));
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(2))
            .await
    );
    // Parked, not answered: a write elsewhere does not wake it up with a result.
    consul.put("other/key", "x");
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(2))
            .await
    );
    assert!(!task.is_finished());

    let started = Instant::now();
    let new_index = consul.put(format!("{PREFIX}127.0.0.1:9090").as_str(), "v2");
    let resp = await_prompt(task).await;
    assert!(started.elapsed() < PROMPT);
    assert_eq!(resp.status(), 200);
    assert_eq!(consul_index(&resp), new_index);
    assert!(new_index > index);
    let entries: Vec<serde_json::Value> = resp.json().await.expect("json");
    assert_eq!(entries.len(), 2);
    assert_eq!(consul.blocked_queries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_wait_for_blocked_queries_works_on_multi_thread_runtime() {
    let consul = ConsulStandIn::start();
    let index = consul.put(KEY, "v1");
    let a = spawn_get(prefix_url(&consul, &format!("&index={index}")));
    let b = spawn_get(format!("{}/v1/kv/{KEY}?index={index}", consul.url()));
    assert!(consul.wait_for_blocked_queries(2, Duration::from_secs(2)));
    assert!(!consul.wait_for_blocked_queries(3, Duration::from_millis(50)));
    let new_index = consul.put(KEY, "v2");
    assert_eq!(consul_index(&await_prompt(a).await), new_index);
    assert_eq!(consul_index(&await_prompt(b).await), new_index);
}

#[tokio::test]
async fn blocking_get_without_change_returns_after_wait_with_same_index() {
    let consul = ConsulStandIn::start();
    let index = consul.put(KEY, "v1");
    let started = Instant::now();
    let resp = get_prefix(&consul, &format!("&index={index}&wait=200ms")).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(195), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(900), "{elapsed:?}");
    assert_eq!(resp.status(), 200);
    assert_eq!(consul_index(&resp), index);
    let entries: Vec<serde_json::Value> = resp.json().await.expect("json");
    assert_eq!(decode(&entries[0]["Value"]), "v1");
}

#[tokio::test]
async fn delete_wakes_blocked_query_then_prefix_is_404_with_higher_index() {
    let consul = ConsulStandIn::start();
    consul.put(KEY, "v1");
    let index = consul.put(format!("{PREFIX}127.0.0.1:9090").as_str(), "v2");
    let task = spawn_get(prefix_url(&consul, &format!("&index={index}")));
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(2))
            .await
    );

    // Deleting one key wakes the query; the rest is still there.
    let after_first = consul.delete(KEY);
    let resp = await_prompt(task).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(consul_index(&resp), after_first);
    let entries: Vec<serde_json::Value> = resp.json().await.expect("json");
    assert_eq!(entries.len(), 1);

    // Deleting the rest over HTTP (recurse) wakes the next one, which gets a 404.
    let task = spawn_get(prefix_url(&consul, &format!("&index={after_first}")));
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(2))
            .await
    );
    let del = client()
        .delete(format!("{}/v1/kv/{PREFIX}?recurse", consul.url()))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(del.status(), 200);
    assert_eq!(del.text().await.expect("body"), "true");
    let tombstone = consul.index();
    let resp = await_prompt(task).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(consul_index(&resp), tombstone);
    assert!(tombstone > after_first);

    let resp = get_prefix(&consul, "").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(consul_index(&resp), tombstone);

    // The tombstone pins the prefix index: unrelated writes do not move it.
    consul.put("other/key", "x");
    let resp = get_prefix(&consul, &format!("&index={tombstone}&wait=100ms")).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(consul_index(&resp), tombstone);
    assert!(consul.index() > tombstone);
    assert_eq!(consul.get(KEY), None);
}

#[tokio::test]
async fn rewind_makes_the_returned_index_smaller() {
    let consul = ConsulStandIn::start();
    for port in 1..=5 {
        consul.put(&format!("{PREFIX}127.0.0.1:{port}"), "v");
    }
    let index = consul.index();
    let resp = get_prefix(&consul, "").await;
    assert_eq!(consul_index(&resp), index);

    let task = spawn_get(prefix_url(&consul, &format!("&index={index}")));
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(2))
            .await
    );
    consul.rewind_index(3);
    let resp = await_prompt(task).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(consul_index(&resp), 3);
    let entries: Vec<serde_json::Value> = resp.json().await.expect("json");
    assert_eq!(entries.len(), 5);
    assert!(entries
        .iter()
        .all(|e| e["ModifyIndex"].as_u64().expect("u64") <= 3));

    assert_eq!(consul.index(), 3);
    assert_eq!(consul_index(&get_prefix(&consul, "").await), 3);
    assert_eq!(consul.put(KEY, "v"), 4);
}

#[tokio::test]
async fn bump_without_change_wakes_with_same_content_and_higher_index() {
    let consul = ConsulStandIn::start();
    let index = consul.put(KEY, "v1");
    let task = spawn_get(prefix_url(&consul, &format!("&index={index}")));
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(2))
            .await
    );
    let bumped = consul.bump_index_without_change();
    assert!(bumped > index);
    let resp = await_prompt(task).await;
    assert_eq!(consul_index(&resp), bumped);
    let entries: Vec<serde_json::Value> = resp.json().await.expect("json");
    assert_eq!(entries.len(), 1);
    assert_eq!(decode(&entries[0]["Value"]), "v1");
    assert_eq!(entries[0]["ModifyIndex"], index);
}

#[tokio::test]
async fn fault_status500_and_garbage() {
    let consul = ConsulStandIn::start();
    let index = consul.put(KEY, "v1");

    consul.set_fault(Fault::Status500);
    let resp = get_prefix(&consul, "").await;
    assert_eq!(resp.status(), 500);

    consul.set_fault(Fault::Garbage);
    let resp = get_prefix(&consul, "").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(consul_index(&resp), index);
    assert_eq!(resp.text().await.expect("body"), "not json {{{");

    // A fault set while a query is parked applies to it.
    consul.set_fault(Fault::None);
    let task = spawn_get(prefix_url(&consul, &format!("&index={index}")));
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(2))
            .await
    );
    consul.set_fault(Fault::Status500);
    assert_eq!(await_prompt(task).await.status(), 500);

    consul.set_fault(Fault::None);
    let resp = get_prefix(&consul, "").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(consul.gets_served(), 4);
}

#[tokio::test]
async fn fault_hang_times_out_client_until_cleared() {
    let consul = ConsulStandIn::start();
    consul.put(KEY, "v1");
    consul.set_fault(Fault::Hang);

    let started = Instant::now();
    let err = client()
        .get(prefix_url(&consul, ""))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .expect_err("hang must not answer");
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A hung request is answered normally once the fault is cleared.
    let task = spawn_get(prefix_url(&consul, ""));
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(2))
            .await
    );
    assert!(!task.is_finished());
    consul.set_fault(Fault::None);
    let resp = await_prompt(task).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn fault_drop_connection_gives_connection_error_not_response() {
    let consul = ConsulStandIn::start();
    consul.put(KEY, "v1");
    consul.set_fault(Fault::DropConnection);

    let err = client()
        .get(prefix_url(&consul, ""))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect_err("dropped connection must not answer");
    assert!(!err.is_timeout(), "{err:?}");
    assert!(err.status().is_none(), "{err:?}");
    assert!(err.is_request() || err.is_connect(), "{err:?}");

    // At the TCP level: the request is read, then the connection closes with zero bytes.
    let mut tcp = tokio::net::TcpStream::connect(consul.addr())
        .await
        .expect("connect");
    tcp.write_all(b"GET /v1/kv/upstreams/base/?recurse HTTP/1.1\r\nHost: consul\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(PROMPT, tcp.read_to_end(&mut buf))
        .await
        .expect("connection should close promptly");
    assert!(read.is_err() || buf.is_empty(), "got {buf:?}");
    assert_eq!(consul.gets_served(), 2);

    consul.set_fault(Fault::None);
    assert_eq!(get_prefix(&consul, "").await.status(), 200);
}

#[tokio::test]
async fn require_token_rejects_missing_and_wrong_tokens() {
    let consul = ConsulStandIn::start();
    consul.put(KEY, "v1");
    consul.require_token(Some("secret"));
    let http = client();
    let url = prefix_url(&consul, "");

    let resp = http.get(&url).send().await.expect("GET");
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.text().await.expect("body"), "Permission denied");
    assert_eq!(consul.last_token(), None);

    let resp = http
        .get(&url)
        .header("X-Consul-Token", "wrong")
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 403);
    assert_eq!(consul.last_token().as_deref(), Some("wrong"));

    let resp = http
        .get(&url)
        .header("X-Consul-Token", "secret")
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(consul.last_token().as_deref(), Some("secret"));

    let resp = http
        .put(format!("{}/v1/kv/{KEY}", consul.url()))
        .body("v2")
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 403);
    assert_eq!(consul.get(KEY).as_deref(), Some("v1"));

    consul.require_token(None);
    let resp = http.get(&url).send().await.expect("GET");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn bad_query_parameters_are_400() {
    let consul = ConsulStandIn::start();
    let resp = get_prefix(&consul, "&index=1&wait=soon").await;
    assert_eq!(resp.status(), 400);
    let resp = get_prefix(&consul, "&index=abc").await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn drop_closes_held_connections_and_port_can_be_rebound() {
    let consul = ConsulStandIn::start();
    let addr = consul.addr();
    let index = consul.put(KEY, "v1");
    let task = spawn_get(prefix_url(&consul, &format!("&index={index}")));
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(2))
            .await
    );
    drop(consul);
    let outcome = tokio::time::timeout(PROMPT, task)
        .await
        .expect("held request should end when the stand-in is dropped")
        .expect("task");
    assert!(outcome.is_err(), "{outcome:?}");

    // "Consul came back" on the same port, with fresh state.
    let consul = ConsulStandIn::start_on(addr).expect("rebind");
    assert_eq!(consul.addr(), addr);
    assert_eq!(consul.url(), format!("http://{addr}"));
    let resp = get_prefix(&consul, "").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(consul_index(&resp), 1);
}

#[test]
fn sync_api_without_any_runtime() {
    let consul = ConsulStandIn::start();
    let start = consul.index();
    assert!(start >= 1);
    assert_eq!(consul.put("a/1", "x"), start + 1);
    assert_eq!(consul.put("a/2", "y"), start + 2);
    assert_eq!(consul.put("b/1", "z"), start + 3);
    assert_eq!(consul.get("a/1").as_deref(), Some("x"));
    assert_eq!(consul.delete("a/1"), start + 4);
    assert_eq!(consul.get("a/1"), None);
    // Deleting a missing key still moves the index.
    assert_eq!(consul.delete("a/missing"), start + 5);
    assert_eq!(consul.delete_prefix("a/"), start + 6);
    assert_eq!(consul.get("a/2"), None);
    assert_eq!(consul.get("b/1").as_deref(), Some("z"));
    assert_eq!(consul.bump_index_without_change(), start + 7);
    assert_eq!(consul.index(), start + 7);
    consul.rewind_index(2);
    assert_eq!(consul.index(), 2);
    assert_eq!(consul.get("b/1").as_deref(), Some("z"));
    assert_eq!(consul.gets_served(), 0);
    assert_eq!(consul.last_token(), None);
    assert_eq!(consul.blocked_queries(), 0);
    assert!(!consul.wait_for_blocked_queries(1, Duration::from_millis(20)));
}

#[test]
fn consul_duration_syntax() {
    use common::consul::parse_consul_duration as parse;
    assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse("250us"), Some(Duration::from_micros(250)));
    assert_eq!(parse("0"), Some(Duration::ZERO));
    assert_eq!(parse("-5s"), Some(Duration::ZERO));
    assert_eq!(parse("5"), None);
    assert_eq!(parse(""), None);
    assert_eq!(parse("soon"), None);
    assert_eq!(parse("5x"), None);
}
