//! The gray decision end to end: real redis-server, real graysplit, real upstreams.

mod common;

use std::time::{Duration, Instant};

use common::proc::Graysplit;
use common::redis::RedisServer;
use common::upstream::{CaptureUpstream, Upstream};
use common::{client, eventually};

struct Setup {
    g: Graysplit,
    _base: Upstream,
    _gray: Upstream,
}

/// base and gray pools with one server each, plus `gray_toml` (a `[gray]` section etc.).
fn setup(gray_toml: &str, files: &[(&str, &str)]) -> Setup {
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    let mut all = vec![
        ("base.conf", format!("{}\n", base.line(""))),
        ("gray.conf", format!("{}\n", gray.line(""))),
    ];
    all.extend(files.iter().map(|(n, t)| (*n, t.to_string())));
    let refs: Vec<(&str, &str)> = all.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let toml = format!(
        "[pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n{gray_toml}\n"
    );
    Setup {
        g: Graysplit::start(&toml, &refs),
        _base: base,
        _gray: gray,
    }
}

/// One page request as client `xff` (the test client is on loopback, a trusted proxy by
/// default); returns (pool header, reason header, which build the body came from).
async fn page(g: &Graysplit, headers: &[(&str, &str)]) -> (String, String, &'static str) {
    let mut req = client().get(g.url("/"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    assert_eq!(r.status(), 200, "a page never fails because of gray inputs");
    let pool = r.headers()["x-graysplit-pool"]
        .to_str()
        .unwrap()
        .to_string();
    let reason = r.headers()["x-graysplit-reason"]
        .to_str()
        .unwrap()
        .to_string();
    let body = r.text().await.unwrap();
    let build = if body.contains("gray-2026.11.2") {
        "gray"
    } else {
        "base"
    };
    assert_eq!(
        pool, build,
        "the pool header matches the build that answered"
    );
    (pool, reason, build)
}

async fn until_pool(g: &Graysplit, headers: &[(&str, &str)], want: &str, within: Duration) {
    let what = format!("{headers:?} to be served by {want}");
    eventually(within, &what, || async {
        (page(g, headers).await.0 == want).then_some(())
    })
    .await;
}

/// `[gray]` with a user header plus `gray_extra`, and `[gray.redis]` with `redis_extra`.
fn redis_toml_with(redis: &RedisServer, gray_extra: &str, redis_extra: &str) -> String {
    format!(
        "[gray]\nuser_header = \"h-gray-userid\"\n{gray_extra}\n[gray.redis]\nurl = \"{}\"\n{redis_extra}\n",
        redis.url()
    )
}

fn redis_toml(redis: &RedisServer, gray_extra: &str) -> String {
    redis_toml_with(redis, gray_extra, "")
}

const CLIENT: (&str, &str) = ("x-forwarded-for", "192.168.93.182");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ip_whitelist_as_the_seed_sets_it() {
    let redis = RedisServer::start();
    let s = setup(&redis_toml(&redis, ""), &[]);
    assert_eq!(
        page(&s.g, &[CLIENT]).await,
        ("base".into(), "default".into(), "base")
    );
    assert_eq!(
        redis
            .cli(&["set", "192.168.93.182", "192.168.93.182"])
            .as_deref(),
        Some("OK")
    );
    until_pool(&s.g, &[CLIENT], "gray", Duration::from_secs(3)).await;
    assert_eq!(page(&s.g, &[CLIENT]).await.1, "ip");
    // Another client stays on base.
    assert_eq!(
        page(&s.g, &[("x-forwarded-for", "192.168.93.183")]).await.0,
        "base"
    );
    redis.cli(&["del", "192.168.93.182"]);
    until_pool(&s.g, &[CLIENT], "base", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cidr_set_and_user_set() {
    let redis = RedisServer::start();
    let s = setup(&redis_toml(&redis, ""), &[]);
    redis.cli(&["sadd", "graysplit:cidrs", "10.20.0.0/16", "not-a-cidr"]);
    let inside = [("x-forwarded-for", "10.20.3.4")];
    until_pool(&s.g, &inside, "gray", Duration::from_secs(3)).await;
    assert_eq!(page(&s.g, &inside).await.1, "cidr");
    assert_eq!(
        page(&s.g, &[("x-forwarded-for", "10.21.0.1")]).await.0,
        "base"
    );
    redis.cli(&["sadd", "graysplit:users", "alice"]);
    let alice = [CLIENT, ("h-gray-userid", "alice")];
    until_pool(&s.g, &alice, "gray", Duration::from_secs(3)).await;
    assert_eq!(page(&s.g, &alice).await.1, "user");
    assert_eq!(
        page(&s.g, &[CLIENT, ("h-gray-userid", "bob")]).await.0,
        "base"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let redis = RedisServer::start();
    redis.cli(&["set", "192.168.93.182", "192.168.93.182"]);
    // Loopback (the test client) is not trusted here: its XFF is ignored.
    let untrusted = setup(
        &redis_toml(&redis, "trusted_proxies = [\"10.99.0.0/16\"]"),
        &[],
    );
    for _ in 0..5 {
        assert_eq!(
            page(&untrusted.g, &[CLIENT, ("x-real-ip", "192.168.93.182")])
                .await
                .0,
            "base"
        );
    }
    let trusted = setup(&redis_toml(&redis, ""), &[]);
    until_pool(&trusted.g, &[CLIENT], "gray", Duration::from_secs(3)).await;
}

/// What a steady request loop of the whitelisted client saw.
#[derive(Debug, Default)]
struct LoopStats {
    requests: usize,
    failed: usize,
    gray: usize,
    /// Latencies, sorted.
    latencies: Vec<Duration>,
}

impl LoopStats {
    fn p99(&self) -> Duration {
        self.latencies[(self.latencies.len() * 99 / 100).min(self.latencies.len() - 1)]
    }
}

/// Sends page requests as the whitelisted client for `dur`.
async fn request_loop(g: &Graysplit, dur: Duration) -> LoopStats {
    let c = client();
    let mut s = LoopStats::default();
    let end = Instant::now() + dur;
    while Instant::now() < end {
        let t = Instant::now();
        match c.get(g.url("/")).header(CLIENT.0, CLIENT.1).send().await {
            Ok(r) if r.status() == 200 => {
                if r.headers()["x-graysplit-pool"] == "gray" {
                    s.gray += 1;
                }
            }
            _ => s.failed += 1,
        }
        s.latencies.push(t.elapsed());
        s.requests += 1;
    }
    s.latencies.sort();
    s
}

/// `gray.redis.timeout` (the default), and what "a few ms" above it may add on a loaded,
/// debug-built test machine (proxying itself takes about a millisecond).
const TIMEOUT: Duration = Duration::from_millis(20);
const SLACK: Duration = Duration::from_millis(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_or_killed_never_fails_or_stalls_and_recovers_without_restart() {
    let redis = RedisServer::start();
    let toml = redis_toml_with(
        &redis,
        "",
        // stale_if_error off: this test is about the answer once nothing may be trusted
        // (tests/chaos.rs covers the default, which keeps the last answer through the outage).
        "cache_ttl = \"200ms\"\nbreaker_open = \"500ms\"\nstale_if_error = \"0s\"",
    );
    let s = setup(&toml, &[]);
    redis.cli(&["set", "192.168.93.182", "192.168.93.182"]);
    until_pool(&s.g, &[CLIENT], "gray", Duration::from_secs(3)).await;

    // Paused (SIGSTOP): lookups time out after 20 ms, then the breaker stops asking.
    let pid = redis.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    // Once the cached answer is older than cache_ttl it is not trusted: the client gets base.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let paused = request_loop(&s.g, Duration::from_secs(2)).await;
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(paused.failed, 0, "{paused:?}");
    assert_eq!(
        paused.gray, 0,
        "without Redis the answer is base: {paused:?}"
    );
    assert!(
        paused.p99() < TIMEOUT + SLACK,
        "p99 {:?} with Redis paused",
        paused.p99()
    );
    // Back: whitelists work again without a restart.
    until_pool(&s.g, &[CLIENT], "gray", Duration::from_secs(5)).await;

    // Killed, then restarted empty on the same port: base meanwhile, then the new data applies.
    let port = redis.port;
    drop(redis);
    let down = request_loop(&s.g, Duration::from_secs(2)).await;
    assert_eq!(down.failed, 0, "{down:?}");
    assert!(
        down.p99() < TIMEOUT + SLACK,
        "p99 {:?} with Redis down",
        down.p99()
    );
    let redis = RedisServer::start_on(port);
    until_pool(&s.g, &[CLIENT], "base", Duration::from_secs(5)).await;
    redis.cli(&["set", "192.168.93.182", "1"]);
    until_pool(&s.g, &[CLIENT], "gray", Duration::from_secs(5)).await;
    let log = s.g.log();
    assert!(
        log.contains("failures in a row"),
        "the breaker opened and said so:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_switches_file_and_file_whitelist() {
    let toml = "[gray]\nswitches_file = \"switches.conf\"\nwhitelist_file = \"whitelist.txt\"\n\
                [[gray.rules]]\nheader = \"a\"\nequals = \"1\"\npool = \"gray\"\n\
                [[gray.rules]]\nheader = \"a\"\nequals = \"2\"\npool = \"base\"\n";
    let s = setup(
        toml,
        &[
            ("switches.conf", "percent = 0\n"),
            ("whitelist.txt", "# none yet\n"),
        ],
    );
    assert_eq!(
        page(&s.g, &[("a", "1")]).await,
        ("gray".into(), "rule".into(), "gray")
    );
    assert_eq!(page(&s.g, &[("a", "2")]).await.1, "rule");
    assert_eq!(page(&s.g, &[CLIENT]).await.0, "base");

    s.g.write_file("whitelist.txt", "192.168.93.182\nuser:carol\n");
    until_pool(&s.g, &[CLIENT], "gray", Duration::from_secs(2)).await;
    assert_eq!(page(&s.g, &[CLIENT]).await.1, "ip");

    s.g.write_file("switches.conf", "all = true\n");
    until_pool(
        &s.g,
        &[("x-forwarded-for", "1.2.3.4")],
        "gray",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        page(&s.g, &[("a", "2")]).await.1,
        "all_gray",
        "switches come before rules"
    );
    s.g.write_file("switches.conf", "enabled = false\n");
    until_pool(&s.g, &[CLIENT], "base", Duration::from_secs(2)).await;
    assert_eq!(page(&s.g, &[("a", "1")]).await.1, "switch_off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_headers_reach_upstreams_and_pass_through_routes() {
    let (base, gray, gateway) = (
        CaptureUpstream::start(),
        CaptureUpstream::start(),
        CaptureUpstream::start(),
    );
    let toml = "[pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n\
                [pools.gateway]\nfile = \"gateway.conf\"\n\
                [gray]\nwhitelist_file = \"whitelist.txt\"\n\
                [gray.headers.gray]\na = \"1\"\n[gray.headers.base]\na = \"2\"\n\
                [[routes]]\nprefix = \"/api/\"\npool = \"gateway\"\n";
    let g = Graysplit::start(
        toml,
        &[
            ("base.conf", &format!("server {};\n", base.addr)),
            ("gray.conf", &format!("server {};\n", gray.addr)),
            ("gateway.conf", &format!("server {};\n", gateway.addr)),
            ("whitelist.txt", "192.168.93.182\n"),
        ],
    );
    let c = client();
    // A base client trying to smuggle the gray header: the copy is replaced.
    c.get(g.url("/"))
        .header("a", "1")
        .header("x-forwarded-for", "1.2.3.4")
        .send()
        .await
        .unwrap();
    assert_eq!(base.last_header("a").as_deref(), Some("2"));
    c.get(g.url("/"))
        .header(CLIENT.0, CLIENT.1)
        .send()
        .await
        .unwrap();
    assert_eq!(gray.last_header("a").as_deref(), Some("1"));
    // The API call of a gray client goes to the gateway, carrying the gray decision.
    let r = c
        .get(g.url("/api/orders"))
        .header(CLIENT.0, CLIENT.1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-graysplit-pool"], "gateway");
    assert_eq!(gateway.last_header("a").as_deref(), Some("1"));
    c.get(g.url("/api/orders")).send().await.unwrap();
    assert_eq!(gateway.last_header("a").as_deref(), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_explains_without_sending_traffic() {
    let s = setup(
        "[gray]\nwhitelist_file = \"whitelist.txt\"\n",
        &[("whitelist.txt", "10.0.0.0/8\n")],
    );
    let c = client();
    let v = common::get_json(s.g.admin_url("/decide?ip=10.1.2.3&path=/index.html")).await;
    assert_eq!(v["decision"]["pool"], "gray");
    assert_eq!(v["decision"]["reason"], "cidr");
    let v = common::get_json(s.g.admin_url("/decide?ip=192.0.2.1")).await;
    assert_eq!(v["decision"]["reason"], "default");
    let r = c
        .get(s.g.admin_url("/decide?ip=banana"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // One proxied request after them: once its access line is out, a line of anything before
    // it would be too (the writer takes every thread's lines in each pass).
    c.get(s.g.url("/after-decide")).send().await.unwrap();
    let lines = common::eventually_sync(Duration::from_secs(5), "the access line", || {
        let lines = s.g.access_lines();
        (!lines.is_empty()).then_some(lines)
    });
    assert_eq!(
        lines.len(),
        1,
        "only the request after /decide was proxied: {lines:?}"
    );
    assert!(lines[0].contains("GET /after-decide "), "{lines:?}");
}

fn redis_gets(redis: &RedisServer) -> u64 {
    let stats = redis.cli(&["info", "commandstats"]).unwrap_or_default();
    stats
        .lines()
        .find(|l| l.starts_with("cmdstat_get:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_lookup_and_answers_are_cached() {
    let redis = RedisServer::start();
    let s = setup(&redis_toml_with(&redis, "", "cache_ttl = \"30s\""), &[]);
    // Warm the connection with another client so the burst below is not waiting for a connect.
    until_pool(
        &s.g,
        &[("x-forwarded-for", "198.51.100.1")],
        "base",
        Duration::from_secs(3),
    )
    .await;
    redis.cli(&["config", "resetstat"]);
    let c = client();
    let burst: Vec<_> = (0..50)
        .map(|_| {
            let req = c
                .get(s.g.url("/"))
                .header("x-forwarded-for", "198.51.100.77");
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.unwrap().unwrap(), 200);
    }
    let gets = redis_gets(&redis);
    assert!(
        (1..=2).contains(&gets),
        "50 concurrent requests of one client made {gets} GETs"
    );
    for _ in 0..20 {
        page(&s.g, &[("x-forwarded-for", "198.51.100.77")]).await;
    }
    assert_eq!(
        redis_gets(&redis),
        gets,
        "answers within cache_ttl come from the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switches_from_consul_apply_within_a_second() {
    let consul = common::consul::ConsulStandIn::start();
    let toml = format!(
        "[consul]\naddresses = [\"{}\"]\nwait = \"2s\"\ninterval = \"10ms\"\n\
         [gray]\nconsul_prefix = \"graysplit/gray/\"\n",
        consul.url()
    );
    let s = setup(&toml, &[]);
    let anyone = [("x-forwarded-for", "203.0.113.50")];
    assert_eq!(page(&s.g, &anyone).await.0, "base");
    consul.put("graysplit/gray/all", "true");
    until_pool(&s.g, &anyone, "gray", Duration::from_secs(1)).await;
    assert_eq!(page(&s.g, &anyone).await.1, "all_gray");
    consul.put("graysplit/gray/all", "sometimes");
    consul.put("graysplit/gray/enabled", "false");
    until_pool(&s.g, &anyone, "base", Duration::from_secs(1)).await;
    assert_eq!(page(&s.g, &anyone).await.1, "switch_off");
    assert!(
        s.g.log().contains("graysplit/gray/all = \"sometimes\""),
        "bad value logged"
    );
    consul.delete("graysplit/gray/enabled");
    consul.delete("graysplit/gray/all");
    let (_, reason, _) = eventually(Duration::from_secs(1), "defaults to return", || async {
        let p = page(&s.g, &anyone).await;
        (p.1 == "default").then_some(p)
    })
    .await;
    assert_eq!(reason, "default");
}
