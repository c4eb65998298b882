//! Pools from Consul KV: the real binary against the in-process Consul stand-in, real static
//! upstreams and real HTTP. Changes must apply within a second with no failed request, and no
//! Consul failure may cost a pool.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::consul::{ConsulStandIn, Fault};
use common::proc::{Graysplit, BIN};
use common::upstream::Upstream;
use common::{client, eventually, free_addr};

const BASE: &str = "upstreams/base/";
const GRAY: &str = "upstreams/gray/";
const SECOND: Duration = Duration::from_secs(1);
/// The operator's value from the seed's runbook.
const CURL_VALUE: &str = r#"{"weight":1, "max_fails":2, "fail_timeout":10}"#;

/// `[consul]` plus a Consul `base` pool with a dump. `wait` is short so hang tests end quickly.
fn config(addresses: &[String], wait: &str, extra_consul: &str) -> String {
    let list: Vec<String> = addresses.iter().map(|a| format!("{a:?}")).collect();
    // No active health checks: these tests time pool changes and count hits exactly, which
    // default_down's `rise` passes and the checks' own requests would blur (tests/health.rs
    // covers checks, including servers arriving from a pool source).
    format!(
        "[health]\nenabled = false\n\
         [consul]\naddresses = [{}]\nwait = \"{wait}\"\ninterval = \"100ms\"\n{extra_consul}\n\
         [pools.base]\nconsul_prefix = \"{BASE}\"\ndump_path = \"base.dump\"\n",
        list.join(", ")
    )
}

fn key(prefix: &str, up: &Upstream) -> String {
    format!("{prefix}{}", up.addr)
}

/// Starts graysplit on `consul` and waits until `base` lists `n` servers and the watcher is
/// parked in a blocking query.
async fn start(consul: &ConsulStandIn, extra_consul: &str, n: usize) -> Graysplit {
    let g = Graysplit::start(&config(&[consul.url()], "2s", extra_consul), &[]);
    wait_servers(&g, "base", n).await;
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(5))
            .await
    );
    g
}

async fn status(g: &Graysplit) -> serde_json::Value {
    let r = client()
        .get(g.admin_url("/status?format=json"))
        .send()
        .await
        .expect("GET /status");
    assert_eq!(r.status(), 200);
    r.json().await.expect("/status is JSON")
}

async fn servers(g: &Graysplit, pool: &str) -> Vec<serde_json::Value> {
    status(g).await["pools"][pool]["servers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn wait_servers(g: &Graysplit, pool: &str, n: usize) {
    eventually(
        Duration::from_secs(5),
        &format!("{n} server(s) in {pool}"),
        || async { (servers(g, pool).await.len() == n).then_some(()) },
    )
    .await;
}

async fn upstream_list(g: &Graysplit, pool: &str) -> String {
    client()
        .get(g.admin_url(&format!("/upstream_list?{pool}")))
        .send()
        .await
        .expect("GET /upstream_list")
        .text()
        .await
        .expect("body")
}

/// The upstream that answered one GET /, or why the request failed.
async fn served_by(c: &reqwest::Client, url: &str) -> Result<String, String> {
    let r = c.get(url).send().await.map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let by = r
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    r.bytes().await.map_err(|e| e.to_string())?;
    Ok(by)
}

#[derive(Debug, Default)]
struct Stats {
    ok: u64,
    failed: Vec<String>,
    by: HashMap<String, u64>,
}

/// A steady stream of requests in the background, counting failures.
struct RequestLoop {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
    task: tokio::task::JoinHandle<()>,
}

impl RequestLoop {
    fn start(g: &Graysplit) -> RequestLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let (url, stopping, counts) = (g.url("/"), stop.clone(), stats.clone());
        let task = tokio::spawn(async move {
            let c = client();
            while !stopping.load(Ordering::Relaxed) {
                let result = served_by(&c, &url).await;
                let mut s = counts.lock().unwrap();
                match result {
                    Ok(by) => {
                        s.ok += 1;
                        *s.by.entry(by).or_default() += 1;
                    }
                    Err(e) => s.failed.push(e),
                }
            }
        });
        RequestLoop { stop, stats, task }
    }

    /// Stops the loop (once it served at least 10 requests, so that it says something on a
    /// machine busy with other work) and asserts that no request failed.
    async fn finish(self) -> Stats {
        let stats = self.stats.clone();
        eventually(
            Duration::from_secs(10),
            "10 requests from the loop",
            || async { (stats.lock().unwrap().ok >= 10).then_some(()) },
        )
        .await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("request loop");
        let stats = std::mem::take(&mut *self.stats.lock().unwrap());
        assert!(stats.ok >= 10, "the request loop barely ran: {stats:?}");
        assert!(
            stats.failed.is_empty(),
            "failed requests: {:?}",
            stats.failed
        );
        stats
    }
}

/// Sends `n` requests and returns how many each upstream served (by hit counters, so the
/// background loop's requests count too and the split is exact).
async fn hits_over(g: &Graysplit, ups: &[&Upstream], n: usize) -> Vec<u64> {
    let before: Vec<u64> = ups.iter().map(|u| u.hits()).collect();
    let c = client();
    for _ in 0..n {
        served_by(&c, &g.url("/")).await.expect("request");
    }
    ups.iter().zip(before).map(|(u, b)| u.hits() - b).collect()
}

/// Polls with GETs as fast as possible until `who` answers; returns the time it took.
async fn time_until_served_by(g: &Graysplit, who: SocketAddr, since: Instant) -> Duration {
    let c = client();
    let who = who.to_string();
    loop {
        if served_by(&c, &g.url("/")).await.as_deref() == Ok(who.as_str()) {
            return since.elapsed();
        }
        assert!(since.elapsed() < SECOND, "{who} took no traffic within 1 s");
    }
}

/// `curl -X PUT -d <value> http://<consul>/v1/kv/<key>`, as operators do.
async fn http_put(consul: &ConsulStandIn, key: &str, value: &str) {
    let r = client()
        .put(format!("{}/v1/kv/{key}", consul.url()))
        .body(value.to_string())
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.text().await.unwrap(), "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_server_takes_traffic_within_a_second() {
    let consul = ConsulStandIn::start();
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    consul.put(&key(BASE, &a), CURL_VALUE);
    let g = start(&consul, "", 1).await;
    let requests = RequestLoop::start(&g);
    let put = Instant::now();
    http_put(&consul, &key(BASE, &b), CURL_VALUE).await;
    let took = time_until_served_by(&g, b.addr, put).await;
    eprintln!("PUT to first request served by the new server: {took:?}");
    let split = hits_over(&g, &[&a, &b], 40).await;
    assert!(
        split[0].abs_diff(split[1]) <= 2,
        "1:1 after the PUT: {split:?}"
    );
    let stats = requests.finish().await;
    assert!(stats.by.contains_key(&b.addr.to_string()), "{stats:?}");
    let list = upstream_list(&g, "base").await;
    assert!(
        list.contains(&format!(
            "server {} weight=1 max_fails=2 fail_timeout=10s;",
            b.addr
        )),
        "{list}"
    );
    assert!(
        g.log().contains(&format!("added [{}]", b.addr)),
        "{}",
        g.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_server_stops_taking_traffic_within_a_second() {
    let consul = ConsulStandIn::start();
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    consul.put(&key(BASE, &a), "");
    consul.put(&key(BASE, &b), "");
    let g = start(&consul, "", 2).await;
    let requests = RequestLoop::start(&g);
    let deleted = Instant::now();
    consul.delete(&key(BASE, &b));
    eventually(SECOND, "the deleted server to leave the pool", || async {
        (!upstream_list(&g, "base")
            .await
            .contains(&b.addr.to_string()))
        .then_some(())
    })
    .await;
    eprintln!("DELETE to pool without the server: {:?}", deleted.elapsed());
    hits_over(&g, &[], 5).await; // let requests picked before the change finish
    assert_eq!(
        hits_over(&g, &[&a, &b], 50).await[1],
        0,
        "no traffic after DELETE"
    );
    requests.finish().await;
    assert!(g.log().contains(&format!("removed [{}]", b.addr)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_changes_the_split_within_a_second() {
    let consul = ConsulStandIn::start();
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    consul.put(&key(BASE, &a), r#"{"weight":1}"#);
    consul.put(&key(BASE, &b), r#"{"weight":1}"#);
    let g = start(&consul, "", 2).await;
    let requests = RequestLoop::start(&g);
    let even = hits_over(&g, &[&a, &b], 200).await;
    let share = even[1] as f64 / (even[0] + even[1]) as f64;
    assert!((share - 0.5).abs() <= 0.05, "1:1 gave {even:?}");
    consul.put(&key(BASE, &b), r#"{"Weight":"3"}"#);
    eventually(SECOND, "weight 3 in the pool", || async {
        upstream_list(&g, "base")
            .await
            .contains(&format!("server {} weight=3 ", b.addr))
            .then_some(())
    })
    .await;
    let split = hits_over(&g, &[&a, &b], 400).await;
    let share = split[1] as f64 / (split[0] + split[1]) as f64;
    assert!((share - 0.75).abs() <= 0.05, "1:3 gave {split:?}");
    requests.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_and_weight_zero_take_a_server_out_of_rotation() {
    let consul = ConsulStandIn::start();
    let (a, b, c) = (
        Upstream::start("base"),
        Upstream::start("base"),
        Upstream::start("base"),
    );
    for up in [&a, &b, &c] {
        consul.put(&key(BASE, up), "");
    }
    let g = start(&consul, "", 3).await;
    let requests = RequestLoop::start(&g);
    consul.put(&key(BASE, &b), r#"{"down":1}"#);
    consul.put(&key(BASE, &c), r#"{"weight":0}"#);
    eventually(SECOND, "down and drained in the pool", || async {
        let list = upstream_list(&g, "base").await;
        (list.contains(&format!(
            "server {} weight=1 max_fails=2 fail_timeout=10s down;",
            b.addr
        )) && list.contains(&format!(
            // nginx refuses weight=0; graysplit reads the comment back as a drain.
            "server {} weight=1 max_fails=2 fail_timeout=10s down; # graysplit: weight=0",
            c.addr
        )))
        .then_some(())
    })
    .await;
    hits_over(&g, &[], 5).await; // let requests picked before the change finish
    let hits = hits_over(&g, &[&a, &b, &c], 50).await;
    assert_eq!(
        &hits[1..],
        &[0, 0],
        "down and weight 0 get nothing: {hits:?}"
    );
    requests.finish().await;
}

/// Runs `fault` against a parked watcher with requests flowing: the pool must not change, no
/// request may fail, and the watcher must pick up the next change once the fault is gone.
async fn fault_keeps_the_pool(fault: Fault, wait: &str, min_errors: u64) {
    let consul = ConsulStandIn::start();
    let (a, b, c) = (
        Upstream::start("base"),
        Upstream::start("base"),
        Upstream::start("base"),
    );
    consul.put(&key(BASE, &a), "");
    consul.put(&key(BASE, &b), r#"{"weight":2}"#);
    let g = Graysplit::start(&config(&[consul.url()], wait, ""), &[]);
    wait_servers(&g, "base", 2).await;
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(5))
            .await
    );
    let before = upstream_list(&g, "base").await;
    let requests = RequestLoop::start(&g);
    consul.set_fault(fault);
    eventually(
        Duration::from_secs(10),
        &format!("{min_errors} failed poll(s) under {fault:?}"),
        || async {
            let s = status(&g).await;
            (s["consul"]["base"]["errors"].as_u64()? >= min_errors).then_some(())
        },
    )
    .await;
    assert_eq!(
        upstream_list(&g, "base").await,
        before,
        "pool unchanged under {fault:?}"
    );
    let hits = hits_over(&g, &[&a, &b], 60).await;
    let share = hits[1] as f64 / (hits[0] + hits[1]) as f64;
    assert!(
        (share - 2.0 / 3.0).abs() <= 0.05,
        "1:2 split kept: {hits:?}"
    );
    let s = status(&g).await;
    assert_eq!(s["consul"]["base"]["reachable"], false, "{s}");
    assert!(s["consul"]["base"]["last_error"].is_string(), "{s}");

    consul.set_fault(Fault::None);
    consul.put(&key(BASE, &c), "");
    eventually(
        Duration::from_secs(10),
        "recovery after the fault",
        || async {
            upstream_list(&g, "base")
                .await
                .contains(&c.addr.to_string())
                .then_some(())
        },
    )
    .await;
    requests.finish().await;
    let log = g.log();
    assert_eq!(
        log.matches("Consul poll failed").count(),
        1,
        "warned once:\n{log}"
    );
    assert_eq!(
        log.matches("answers again").count(),
        1,
        "recovery logged once:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_500_keeps_the_pool() {
    fault_keeps_the_pool(Fault::Status500, "2s", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_body_keeps_the_pool() {
    fault_keeps_the_pool(Fault::Garbage, "2s", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_keeps_the_pool() {
    fault_keeps_the_pool(Fault::DropConnection, "2s", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_consul_keeps_the_pool_and_times_out() {
    // wait 1s: the client gives up after 1s + 1s/16 + 3s, so one timeout takes about 4 s.
    fault_keeps_the_pool(Fault::Hang, "1s", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_folder_keeps_base_but_empties_gray() {
    let consul = ConsulStandIn::start();
    let (a, gray) = (Upstream::start("base"), Upstream::start("gray"));
    consul.put(&key(BASE, &a), "");
    consul.put(&key(GRAY, &gray), "");
    let toml = format!(
        "{}\n[pools.gray]\nconsul_prefix = \"{GRAY}\"\ndump_path = \"gray.dump\"\n",
        config(&[consul.url()], "2s", "")
    );
    let g = Graysplit::start(&toml, &[]);
    wait_servers(&g, "base", 1).await;
    wait_servers(&g, "gray", 1).await;
    let requests = RequestLoop::start(&g);
    consul.delete_prefix(BASE);
    eventually(SECOND, "the refusal to empty base", || async {
        g.log()
            .contains("Consul upstreams/base/ lists no usable server; keeping the last 1")
            .then_some(())
    })
    .await;
    assert!(upstream_list(&g, "base")
        .await
        .contains(&a.addr.to_string()));
    consul.delete_prefix(GRAY);
    wait_servers(&g, "gray", 0).await;
    let stats = requests.finish().await;
    assert_eq!(
        stats.by.keys().collect::<Vec<_>>(),
        vec![&a.addr.to_string()]
    );
    // The dump follows the pool: gray's is empty, base's still lists its server.
    eventually(SECOND, "gray's dump to empty", || async {
        let text = std::fs::read_to_string(g.path("gray.dump")).ok()?;
        // Only the placeholder line nginx needs in an upstream block, which reads as no server.
        let servers = graysplit::upstream::upsync_format::parse(&text).servers;
        (text.starts_with("# graysplit") && servers.is_empty()).then_some(())
    })
    .await;
    let base_dump = std::fs::read_to_string(g.path("base.dump")).unwrap();
    assert!(
        base_dump.contains(&format!("server {} ", a.addr)),
        "{base_dump}"
    );
    // A server for base again: applied as usual.
    consul.put(&key(BASE, &a), r#"{"weight":5}"#);
    eventually(SECOND, "base back from Consul", || async {
        upstream_list(&g, "base")
            .await
            .contains("weight=5")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_rewind_resets_and_the_next_change_applies() {
    let consul = ConsulStandIn::start();
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    for _ in 0..5 {
        consul.put(&key(BASE, &a), ""); // push the index up
    }
    // A long wait: without the reset the watcher would sleep through the next change.
    let g = Graysplit::start(&config(&[consul.url()], "30s", ""), &[]);
    wait_servers(&g, "base", 1).await;
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(5))
            .await
    );
    let requests = RequestLoop::start(&g);
    consul.rewind_index(1);
    eventually(
        Duration::from_secs(2),
        "the watcher to restart from index 1",
        || async { (status(&g).await["consul"]["base"]["index"] == 1).then_some(()) },
    )
    .await;
    assert!(
        g.log().contains("Consul index went backwards"),
        "{}",
        g.log()
    );
    let put = Instant::now();
    consul.put(&key(BASE, &b), "");
    eventually(SECOND, "the change after the rewind", || async {
        upstream_list(&g, "base")
            .await
            .contains(&b.addr.to_string())
            .then_some(())
    })
    .await;
    eprintln!("change after rewind applied in {:?}", put.elapsed());
    requests.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_error_the_index_restarts_so_a_restored_consul_is_followed() {
    let consul = ConsulStandIn::start();
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    for _ in 0..5 {
        consul.put(&key(BASE, &a), "");
    }
    let g = Graysplit::start(&config(&[consul.url()], "30s", ""), &[]);
    wait_servers(&g, "base", 1).await;
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(5))
            .await
    );
    let requests = RequestLoop::start(&g);
    // Consul is restored from an older snapshot while the watcher cannot reach it.
    consul.set_fault(Fault::DropConnection);
    eventually(Duration::from_secs(5), "a failed poll", || async {
        (status(&g).await["consul"]["base"]["errors"].as_u64()? >= 1).then_some(())
    })
    .await;
    consul.rewind_index(1);
    consul.set_fault(Fault::None);
    // Parked again; with the old index it would sleep through the change for the whole wait.
    assert!(
        consul
            .wait_for_blocked_queries_async(1, Duration::from_secs(5))
            .await
    );
    consul.put(&key(BASE, &b), "");
    eventually(SECOND, "the change after the restore", || async {
        upstream_list(&g, "base")
            .await
            .contains(&b.addr.to_string())
            .then_some(())
    })
    .await;
    requests.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_consul_down_serves_from_the_dump() {
    let consul = ConsulStandIn::start();
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    consul.put(&key(BASE, &a), r#"{"weight":2,"build":"b-1"}"#);
    let dump = {
        let g = start(&consul, "", 1).await;
        let line = format!(
            "server {} weight=2 max_fails=2 fail_timeout=10s; # build=b-1",
            a.addr
        );
        eventually(Duration::from_secs(2), "the dump", || async {
            let text = std::fs::read_to_string(g.path("base.dump")).ok()?;
            text.contains(&line).then_some(text)
        })
        .await
    };
    let consul_addr = consul.addr();
    drop(consul);

    let g = Graysplit::start(
        &config(&[format!("http://{consul_addr}")], "2s", ""),
        &[("base.dump", &dump)],
    );
    // No waiting: the dump was loaded before the listener opened.
    let c = client();
    assert_eq!(served_by(&c, &g.url("/")).await, Ok(a.addr.to_string()));
    let requests = RequestLoop::start(&g);
    eventually(Duration::from_secs(5), "Consul reported down", || async {
        let s = status(&g).await;
        (s["consul"]["base"]["reachable"] == false).then_some(())
    })
    .await;
    let s = status(&g).await;
    assert_eq!(s["consul"]["base"]["servers_from"], "dump", "{s}");
    assert_eq!(s["pools"]["base"]["servers"][0]["build"], "b-1", "{s}");

    // Consul comes back (empty, index 1, like a restored cluster) and gets the new list.
    let consul = ConsulStandIn::start_on(consul_addr).expect("restart the stand-in");
    consul.put(&key(BASE, &b), "");
    eventually(
        Duration::from_secs(20),
        "the list from the returned Consul",
        || async {
            let list = upstream_list(&g, "base").await;
            (list.contains(&b.addr.to_string()) && !list.contains(&a.addr.to_string()))
                .then_some(())
        },
    )
    .await;
    requests.finish().await;
    assert!(g.log().contains("answers again"), "{}", g.log());
}

/// Spawns the binary on `conf` and waits (bounded) for it to exit.
fn run_until_exit(conf: &std::path::Path, limit: Duration) -> (Option<i32>, String, Duration) {
    use std::process::{Command, Stdio};
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn graysplit");
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read stderr");
            return (status.code(), err, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("graysplit still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn strong_dependency_refuses_to_start_without_consul() {
    let dir = tempfile::tempdir().unwrap();
    let (dead1, dead2) = (
        format!("http://{}", free_addr()),
        format!("http://{}", free_addr()),
    );
    let d = dir.path().display();
    let conf = format!(
        "[server]\nlisten = \"{}\"\nadmin_listen = \"{}\"\npid_file = \"{d}/g.pid\"\n\
         upgrade_sock = \"{d}/g.sock\"\n\n{}",
        free_addr(),
        free_addr(),
        config(
            &[dead1.clone(), dead2.clone()],
            "2s",
            "strong_dependency = true"
        )
    );
    std::fs::write(dir.path().join("graysplit.toml"), conf).unwrap();
    // Even a good dump does not make Consul optional when strong_dependency is set.
    std::fs::write(dir.path().join("base.dump"), "server 127.0.0.1:1;\n").unwrap();
    let (code, err, took) =
        run_until_exit(&dir.path().join("graysplit.toml"), Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("graysplit: Consul did not answer for pool base (prefix upstreams/base/)"),
        "{err}"
    );
    for needle in [
        dead1.as_str(),
        dead2.as_str(),
        "strong_dependency = true",
        "Connection refused",
    ] {
        assert!(last.contains(needle), "{needle:?} missing in {last}");
    }
    eprintln!("refused to start after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_dependency_serves_consuls_list_from_the_first_request() {
    let consul = ConsulStandIn::start();
    let a = Upstream::start("base");
    consul.put(&key(BASE, &a), CURL_VALUE);
    let g = Graysplit::start(
        &config(&[consul.url()], "2s", "strong_dependency = true"),
        &[],
    );
    // No polling: the first answer was applied before the listener opened.
    assert_eq!(
        served_by(&client(), &g.url("/")).await,
        Ok(a.addr.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_address_is_used_when_the_first_is_dead() {
    let consul = ConsulStandIn::start();
    let a = Upstream::start("base");
    consul.put(&key(BASE, &a), "");
    let dead = format!("http://{}", free_addr());
    let g = Graysplit::start(&config(&[dead.clone(), consul.url()], "2s", ""), &[]);
    wait_servers(&g, "base", 1).await;
    let s = status(&g).await;
    assert_eq!(s["consul"]["base"]["address"], consul.url(), "{s}");
    assert_eq!(s["consul"]["base"]["reachable"], true, "{s}");
    let log = g.log();
    assert!(
        log.contains(&format!("Consul poll failed: {dead}")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_and_never_shown() {
    let consul = ConsulStandIn::start();
    consul.require_token(Some("s3cret-token-42"));
    let a = Upstream::start("base");
    consul.put(&key(BASE, &a), "");
    let g = Graysplit::start(
        &config(&[consul.url()], "2s", "token = \"s3cret-token-42\""),
        &[],
    );
    wait_servers(&g, "base", 1).await;
    assert_eq!(consul.last_token().as_deref(), Some("s3cret-token-42"));
    let s = status(&g).await.to_string();
    assert!(!s.contains("s3cret"), "{s}");
    assert!(!g.log().contains("s3cret"), "{}", g.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_value_keeps_the_servers_settings_and_names_the_key() {
    let consul = ConsulStandIn::start();
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    consul.put(&key(BASE, &a), r#"{"weight":2,"down":1}"#);
    consul.put(&key(BASE, &b), "");
    let g = start(&consul, "", 2).await;
    consul.put(&key(BASE, &a), "weight=3"); // upsync would reset it to defaults (and undo down)
    eventually(SECOND, "the warning naming the key", || async {
        g.log()
            .contains(&format!("key \"{}\": value is not JSON", key(BASE, &a)))
            .then_some(())
    })
    .await;
    let list = upstream_list(&g, "base").await;
    assert!(
        list.contains(&format!(
            "server {} weight=2 max_fails=2 fail_timeout=10s down;",
            a.addr
        )),
        "{list}"
    );
}

/// Not a test: `cargo test --release --test consul_pools -- --ignored --nocapture bench`.
/// Time from an operator's PUT returning to the first request served by the new server, with
/// the default `wait` and `interval`, over 100 changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_put_to_first_request() {
    let consul = ConsulStandIn::start();
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    consul.put(&key(BASE, &a), "");
    let toml = format!(
        "[health]\nenabled = false\n[consul]\naddresses = [\"{}\"]\n\
         [pools.base]\nconsul_prefix = \"{BASE}\"\n",
        consul.url()
    );
    let g = Graysplit::start(&toml, &[]);
    wait_servers(&g, "base", 1).await;
    let mut took = Vec::new();
    for _ in 0..100 {
        assert!(
            consul
                .wait_for_blocked_queries_async(1, Duration::from_secs(5))
                .await
        );
        let put = Instant::now();
        http_put(&consul, &key(BASE, &b), "").await;
        took.push(time_until_served_by(&g, b.addr, put).await);
        consul.delete(&key(BASE, &b));
        wait_servers(&g, "base", 1).await;
    }
    took.sort();
    eprintln!(
        "PUT -> first request on the new server over {} changes: p50 {:?}, p99 {:?}, max {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 99 / 100],
        took[took.len() - 1]
    );
}

/// Polls with GETs until `who` answers (at most `within`); returns the time since `since`.
async fn until_served_by(
    g: &Graysplit,
    who: SocketAddr,
    since: Instant,
    within: Duration,
) -> Duration {
    let c = client();
    let who = who.to_string();
    eventually(within, &format!("{who} to take traffic"), || {
        let (c, who, url) = (c.clone(), who.clone(), g.url("/"));
        async move {
            (served_by(&c, &url).await.as_deref() == Ok(who.as_str())).then(|| since.elapsed())
        }
    })
    .await
}

/// `[consul]` + a Consul base pool with active checks (`[health]` given), no dump.
fn checked_config(consul: &ConsulStandIn, health: &str, wait: &str) -> String {
    format!(
        "[health]\n{health}\n[consul]\naddresses = [\"{}\"]\nwait = \"{wait}\"\n\
         interval = \"100ms\"\n[pools.base]\nconsul_prefix = \"{BASE}\"\n",
        consul.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_rises_on_back_to_back_checks_not_one_interval_apart() {
    // An hour between checks: only the new server's back-to-back first checks can bring it
    // into rotation within this test, after exactly `rise` passes.
    let consul = ConsulStandIn::start();
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    consul.put(&key(BASE, &a), "");
    let g = Graysplit::start(
        &checked_config(&consul, "interval = \"1h\"\nrise = 3\n", "30s"),
        &[],
    );
    wait_servers(&g, "base", 1).await;
    // `a` rises on back-to-back checks too. Until it is up the pool has no usable server, and
    // a server that passes into an empty pool is up after one pass (by design): `b` must come
    // after `a` is up, or a loaded machine turns this into a test of that other rule.
    let a_name = a.addr.to_string();
    eventually(Duration::from_secs(10), "a up", || {
        let a_name = a_name.clone();
        let g = &g;
        async move {
            let rows = status(g).await["servers"]["server"].clone();
            rows.as_array()?
                .iter()
                .any(|r| r["name"] == a_name.as_str() && r["status"] == "up")
                .then_some(())
        }
    })
    .await;
    let put = Instant::now();
    http_put(&consul, &key(BASE, &b), "").await;
    let took = until_served_by(&g, b.addr, put, Duration::from_secs(10)).await;
    let row = status(&g).await["servers"]["server"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["name"] == b.addr.to_string().as_str())
                .cloned()
        })
        .expect("b on /status");
    assert_eq!(row["rise"], 3, "up after exactly rise = 3 passes: {row}");
    println!("PUT -> first request on the new server with interval 1h, rise 3: {took:?}");
}

/// Not a test: `bench/consul-timing` (`cargo test --release --test consul_pools -- --ignored
/// --nocapture bench_`). PUT returning → first request served by the new server with the
/// shipped checks (interval 1 s, rise 2, default_down), over 20 changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_put_to_traffic_with_the_shipped_checks() {
    let consul = ConsulStandIn::start();
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    consul.put(&key(BASE, &a), "");
    let g = Graysplit::start(&checked_config(&consul, "", "5m"), &[]);
    wait_servers(&g, "base", 1).await;
    let mut took = Vec::new();
    for _ in 0..20 {
        assert!(
            consul
                .wait_for_blocked_queries_async(1, Duration::from_secs(5))
                .await
        );
        let put = Instant::now();
        http_put(&consul, &key(BASE, &b), "").await;
        took.push(until_served_by(&g, b.addr, put, Duration::from_secs(10)).await);
        consul.delete(&key(BASE, &b));
        wait_servers(&g, "base", 1).await;
        // Its health state is dropped with it: the next PUT is a new server again.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    took.sort();
    println!(
        "bench PUT -> traffic (rise 2, interval 1s) over {} changes: p50 {:?}, max {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() - 1]
    );
}

/// Not a test (see above). After each kind of Consul fault has lasted long enough for the
/// backoff to reach its cap, the time from the fault's end (Consul answering again) to the next
/// change being applied; 5 rounds per fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_recovery_after_consul_faults() {
    let mut consul = ConsulStandIn::start();
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    consul.put(&key(BASE, &a), "");
    let g = Graysplit::start(&config(&[consul.url()], "5m", ""), &[]);
    wait_servers(&g, "base", 1).await;
    let errors = |v: &serde_json::Value| v["consul"]["base"]["errors"].as_u64().unwrap_or(0);
    for fault in ["500", "garbage", "hang", "down"] {
        let mut took = Vec::new();
        for _ in 0..5 {
            let before = errors(&status(&g).await);
            let addr = consul.addr();
            match fault {
                "500" => consul.set_fault(Fault::Status500),
                "garbage" => consul.set_fault(Fault::Garbage),
                "hang" => consul.set_fault(Fault::Hang),
                _ => drop(std::mem::replace(&mut consul, ConsulStandIn::start())),
            }
            if fault == "hang" {
                // A parked poll is answered when the hang ends: wait for one to be parked.
                tokio::time::sleep(Duration::from_secs(2)).await;
            } else {
                // Enough failed polls for the backoff to reach its cap (2 s).
                eventually(Duration::from_secs(60), "failed polls", || async {
                    (errors(&status(&g).await) >= before + 5).then_some(())
                })
                .await;
            }
            if fault == "down" {
                // The stand-in started meanwhile is elsewhere; Consul comes back on its address.
                consul = ConsulStandIn::start_on(addr).expect("rebind Consul's port");
                consul.put(&key(BASE, &a), "");
            }
            consul.set_fault(Fault::None);
            let back = Instant::now();
            consul.put(&key(BASE, &b), "");
            eventually(Duration::from_secs(30), "the next change", || async {
                upstream_list(&g, "base")
                    .await
                    .contains(&b.addr.to_string())
                    .then_some(())
            })
            .await;
            took.push(back.elapsed());
            consul.delete(&key(BASE, &b));
            wait_servers(&g, "base", 1).await;
        }
        took.sort();
        println!(
            "bench next change after Consul {fault}: p50 {:?}, max {:?} (5 rounds)",
            took[took.len() / 2],
            took[took.len() - 1]
        );
    }
}
