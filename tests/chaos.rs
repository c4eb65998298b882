//! The chaos suite (issue 7): each scenario runs a steady browser-like load through the real
//! graysplit binary — 8 clients, each loading a page and its assets with its pin cookie, two of
//! them whitelisted for gray — while one part fails, and asserts that no request failed, that
//! every asset came from its page's build, that every client stayed on its pool, and that no
//! data (pool, whitelist, pin) was lost. Parts are real: static upstreams, a relay that turns a
//! server into a black hole / a slow one / a resetting one, the Consul stand-in with its fault
//! injection, a real redis-server paused with SIGSTOP and killed.
//!
//! `cargo test --test chaos -- --nocapture` prints one line of figures per scenario.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::consul::{ConsulStandIn, Fault};
use common::faulty::{FaultyUpstream, Mode};
use common::flaky::FlakyUpstream;
use common::load::{Load, LoadClient, Report};
use common::proc::Graysplit;
use common::redis::RedisServer;
use common::upstream::Upstream;
use common::{eventually, get_json};

const SECRET: &str = "chaos-suite-pin-secret-0123456789";
const BASE_BUILD: &str = "base-2026.11.1";
const GRAY_BUILD: &str = "gray-2026.11.2";
/// The whitelisted client (the seed's example address).
const GRAY_IP: &str = "192.168.93.182";
/// Time between two page loads of one client: steady, without starving a 2-core machine that
/// runs two scenarios at once.
const PACE: Duration = Duration::from_millis(10);

/// Active checks every 100 ms on /healthz (each given the shipped 3 s, so a machine busy with
/// other work does not fail them); `$read_timeout`: how long the proxy waits for a silent server.
macro_rules! fast {
    ($read_timeout:literal) => {
        concat!(
            "[health]\ninterval = \"100ms\"\ntimeout = \"3s\"\nrise = 2\nfall = 2\n",
            "path = \"/healthz\"\n",
            "[upstream]\nconnect_timeout = \"300ms\"\nread_timeout = \"",
            $read_timeout,
            "\"\n"
        )
    };
}

/// A silent server is given up after 3 s (the shipped 30 s would slow nothing down here, but a
/// short one makes a healthy answer on a machine busy with other work look like a silent server).
const FAST: &str = fast!("3s");
/// For the black hole: the proxy gives up on a silent server after 500 ms.
const FAST_IMPATIENT: &str = fast!("500ms");

fn pin_toml() -> String {
    format!("[pin]\nsecrets = [\"{SECRET}\"]\n")
}

/// Six clients on base and two (one address) whitelisted for gray.
fn clients() -> Vec<LoadClient> {
    let mut out: Vec<LoadClient> = (1..=6)
        .map(|i| LoadClient::at(&format!("10.0.0.{i}")).expecting("base"))
        .collect();
    for i in 0..2 {
        out.push(
            LoadClient::at(GRAY_IP)
                .named(&format!("gray-{i}"))
                .expecting("gray"),
        );
    }
    out
}

/// Clients with no expectation about their pool (the whitelist is legitimately changing).
fn clients_any_pool() -> Vec<LoadClient> {
    clients()
        .into_iter()
        .map(|mut c| {
            c.expect_pool = None;
            c
        })
        .collect()
}

/// A pools-file line. A passively ejected server stays out for `fail_timeout`: 3 s instead of
/// nginx's 10 s keeps "the repaired server takes traffic again" quick to observe.
fn file_line(addr: SocketAddr, build: &str) -> String {
    format!("server {addr} max_fails=2 fail_timeout=3s; # build={build}\n")
}

/// How long each fault lasts under load (at least; the Consul outage lasts 30 s).
const FAULT: Duration = Duration::from_secs(3);

/// The pools as `/upstream_list` shows them, without the health marks (which checks and passive
/// failures may move: a read timeout on a busy machine counts against a server).
async fn membership(g: &Graysplit) -> String {
    upstream_list(g)
        .await
        .replace(" unhealthy", "")
        .replace(" ejected", "")
}

async fn status(g: &Graysplit) -> serde_json::Value {
    get_json(g.admin_url("/status?format=json")).await
}

/// The `/status` health of `addr` ("up" / "down"), if listed.
async fn health_of(g: &Graysplit, addr: SocketAddr) -> Option<String> {
    let v = status(g).await;
    v["servers"]["server"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == addr.to_string().as_str())
        .and_then(|r| r["status"].as_str().map(str::to_string))
}

async fn wait_health(g: &Graysplit, addr: SocketAddr, want: &str, within: Duration) -> Duration {
    let t = Instant::now();
    eventually(within, &format!("{addr} to be {want}"), || async {
        (health_of(g, addr).await.as_deref() == Some(want)).then_some(())
    })
    .await;
    t.elapsed()
}

async fn upstream_list(g: &Graysplit) -> String {
    common::client()
        .get(g.admin_url("/upstream_list"))
        .send()
        .await
        .expect("GET /upstream_list")
        .text()
        .await
        .expect("body")
}

async fn metrics(g: &Graysplit) -> String {
    common::client()
        .get(g.admin_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body")
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// What `/decide` says for the whitelisted client (no traffic sent).
async fn decided_pool(g: &Graysplit) -> String {
    let v = get_json(g.admin_url(&format!("/decide?ip={GRAY_IP}"))).await;
    v["decision"]["pool"].as_str().unwrap_or("?").to_string()
}

// ---------------------------------------------------------------------------------------------
// Frontend servers failing

/// Two healthy base servers, one base server that can be made to misbehave, one gray server, a
/// file whitelist holding the gray client.
struct Servers {
    g: Graysplit,
    healthy: Vec<Upstream>,
    faulty: FaultyUpstream,
    _gray: Upstream,
}

fn servers() -> Servers {
    servers_with(FAST)
}

/// [`servers`] with other `[health]` and `[upstream]` settings.
fn servers_with(checks_and_timeouts: &str) -> Servers {
    let healthy = vec![Upstream::start("base"), Upstream::start("base")];
    let faulty = FaultyUpstream::start("base", Mode::Normal);
    let gray = Upstream::start("gray");
    let mut base_conf: String = healthy
        .iter()
        .map(|u| file_line(u.addr, BASE_BUILD))
        .collect();
    base_conf.push_str(&file_line(faulty.addr, BASE_BUILD));
    let toml = format!(
        "{checks_and_timeouts}{}[gray]\nwhitelist_file = \"whitelist.txt\"\n\
         [pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n",
        pin_toml()
    );
    let g = Graysplit::start(
        &toml,
        &[
            ("base.conf", &base_conf),
            ("gray.conf", &file_line(gray.addr, GRAY_BUILD)),
            ("whitelist.txt", &format!("{GRAY_IP}\n")),
        ],
    );
    Servers {
        g,
        healthy,
        faulty,
        _gray: gray,
    }
}

/// The shared shape of the black-hole / reset / slow scenarios: the third base server goes bad
/// while it takes traffic; `effect` waits for what must follow; the server is then repaired.
/// Returns the setup (for its counters) and the report.
async fn misbehaving_server(mode: Mode, name: &str) -> (Servers, Report) {
    let s = servers_with(if mode == Mode::BlackHole {
        FAST_IMPATIENT
    } else {
        FAST
    });
    let before = membership(&s.g).await;
    let load = Load::start(&s.g, clients(), PACE);
    load.wait_ok(100).await;
    assert!(
        load.snapshot().served_by(&s.faulty.addr.to_string()) > 0,
        "the server to break takes traffic first"
    );
    s.faulty.set_mode(mode);
    let broke = Instant::now();
    if mode == Mode::BlackHole || mode == Mode::Reset {
        let took = wait_health(&s.g, s.faulty.addr, "down", Duration::from_secs(10)).await;
        println!("chaos {name}: server down after {took:?}");
    }
    while broke.elapsed() < FAULT {
        load.wait_ok(50).await;
    }
    s.faulty.set_mode(Mode::Normal);
    wait_health(&s.g, s.faulty.addr, "up", Duration::from_secs(10)).await;
    let back = load.snapshot().served_by(&s.faulty.addr.to_string());
    eventually(
        Duration::from_secs(15),
        "the repaired server to take traffic again",
        || async { (load.snapshot().served_by(&s.faulty.addr.to_string()) > back).then_some(()) },
    )
    .await;
    let report = load.finish().await;
    report.assert_clean(name);
    assert_eq!(membership(&s.g).await, before, "{name}: pools unchanged");
    assert!(s.healthy.iter().all(|u| u.hits() > 0));
    (s, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_and_never_answers_fails_no_request() {
    let (s, report) = misbehaving_server(Mode::BlackHole, "black hole").await;
    let held = s
        .faulty
        .stats
        .held
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(held >= 1, "requests really went into the hole");
    let m = metrics(&s.g).await;
    let retries = sample(
        &m,
        "graysplit_upstream_retries_total{cause=\"error\",pool=\"base\"}",
    );
    assert!(retries >= 1.0, "a read timeout was retried: {m}");
    let log = s.g.log();
    assert!(log.contains("ReadTimedout"), "timeouts happened:\n{log}");
    // Each request waited at most one read_timeout (500 ms) before the retry answered.
    assert!(report.max() < Duration::from_secs(2), "{:?}", report.max());
    println!("chaos black hole: {held} request(s) swallowed, {retries} retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_resets_connections_fails_no_request() {
    let (s, _) = misbehaving_server(Mode::Reset, "reset").await;
    let resets = s
        .faulty
        .stats
        .resets
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(resets >= 1, "connections were reset");
    let m = metrics(&s.g).await;
    let failures = sample(
        &m,
        &format!("graysplit_passive_failures_total{{build=\"{BASE_BUILD}\",kind=\"error\",pool=\"base\"}}"),
    );
    let retries = sample(
        &m,
        "graysplit_upstream_retries_total{cause=\"error\",pool=\"base\"}",
    );
    assert!(retries >= 1.0, "a reset was retried: {m}");
    println!(
        "chaos reset: {resets} connection(s) reset, {failures} passive failure(s), {retries} retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_is_waited_for_and_fails_no_request() {
    let (s, report) =
        misbehaving_server(Mode::Slow(Duration::from_millis(300)), "slow (300 ms)").await;
    let delayed = s
        .faulty
        .stats
        .delayed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(delayed >= 10, "the slow server answered slowly ({delayed})");
    assert!(
        report.max() >= Duration::from_millis(300),
        "{:?}",
        report.max()
    );
    let m = metrics(&s.g).await;
    assert_eq!(
        sample(
            &m,
            "graysplit_upstream_retries_total{cause=\"error\",pool=\"base\"}"
        ),
        0.0,
        "slow but within read_timeout: never retried: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_server_killed_and_restarted_fails_no_request() {
    let mut s = servers();
    let load = Load::start(&s.g, clients(), PACE);
    load.wait_ok(100).await;
    let victim = s.healthy.remove(0);
    let addr = victim.addr;
    assert!(load.snapshot().served_by(&addr.to_string()) > 0);
    drop(victim);
    let killed = Instant::now();
    let took = wait_health(&s.g, addr, "down", Duration::from_secs(10)).await;
    println!("chaos kill: killed server down after {took:?}");
    while killed.elapsed() < FAULT {
        load.wait_ok(50).await;
    }
    let restarted = Upstream::start_on("base", addr).expect("rebind the killed server's port");
    wait_health(&s.g, addr, "up", Duration::from_secs(10)).await;
    let at_restart = load.snapshot().served_by(&addr.to_string());
    eventually(
        Duration::from_secs(10),
        "pages from the restarted server",
        || async { (load.snapshot().served_by(&addr.to_string()) > at_restart).then_some(()) },
    )
    .await;
    load.finish().await.assert_clean("kill + restart");
    assert!(restarted.hits() > 0);
}

// ---------------------------------------------------------------------------------------------
// Hiccups (issue 12): a moment of 503s, a server that fails every other request, a server
// enabled again while broken, a pools file rewritten in place. Where a hiccup must count as a
// failure, `fail_on_status = [503]` (the default counts only errors and timeouts).

/// graysplit over the given base lines and one gray server; `upstream` goes into `[upstream]`.
fn hiccup_setup(upstream: &str, base_conf: &str, gray: &Upstream) -> Graysplit {
    let toml = format!(
        "{FAST}{upstream}\n{}[gray]\nwhitelist_file = \"whitelist.txt\"\n\
         [pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n",
        pin_toml()
    );
    Graysplit::start(
        &toml,
        &[
            ("base.conf", base_conf),
            ("gray.conf", &file_line(gray.addr, GRAY_BUILD)),
            ("whitelist.txt", &format!("{GRAY_IP}\n")),
        ],
    )
}

fn flaky_line(u: &FlakyUpstream, extra: &str) -> String {
    format!("server {} {extra}; # build={BASE_BUILD}\n", u.addr)
}

/// Waits until `u` gave `n` failure answers, the load running on.
async fn until_failed(load: &Load, u: &FlakyUpstream, n: u64) {
    eventually(Duration::from_secs(15), "the hiccup to happen", || async {
        (u.failed() >= n).then_some(())
    })
    .await;
    load.wait_ok(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_base_server_hiccuping_costs_no_502() {
    let (a, gray) = (FlakyUpstream::start("base"), Upstream::start("gray"));
    let g = hiccup_setup(
        "fail_on_status = [503]",
        &flaky_line(&a, "max_fails=2 fail_timeout=10s"),
        &gray,
    );
    let load = Load::start(&g, clients(), PACE);
    load.wait_ok(100).await;
    a.fail_next(3, 503);
    until_failed(&load, &a, 3).await;
    // nginx's single-server rule: never ejected, so nothing but its own three 503s.
    load.finish()
        .await
        .assert_only_upstream_failures("lone server, 3 x 503", 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_base_servers_hiccuping_together_cost_no_502() {
    let (a, b, gray) = (
        FlakyUpstream::start("base"),
        FlakyUpstream::start("base"),
        Upstream::start("gray"),
    );
    let lines = flaky_line(&a, "max_fails=2 fail_timeout=10s")
        + &flaky_line(&b, "max_fails=2 fail_timeout=10s");
    let g = hiccup_setup("fail_on_status = [503]", &lines, &gray);
    let load = Load::start(&g, clients(), PACE);
    load.wait_ok(100).await;
    a.fail_next(2, 503);
    b.fail_next(2, 503);
    until_failed(&load, &a, 2).await;
    until_failed(&load, &b, 2).await;
    // Both ejected at once: panic mode tries them again instead of answering 502.
    load.finish()
        .await
        .assert_only_upstream_failures("two servers, 2 x 503 each", 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_every_other_request_is_ejected_under_load() {
    let (a, gray) = (FlakyUpstream::start("base"), Upstream::start("gray"));
    let healthy = [Upstream::start("base"), Upstream::start("base")];
    let mut lines = flaky_line(&a, "max_fails=2 fail_timeout=30s");
    for u in &healthy {
        lines.push_str(&file_line(u.addr, BASE_BUILD));
    }
    let g = hiccup_setup("fail_on_status = [503]", &lines, &gray);
    let load = Load::start(&g, clients(), PACE);
    load.wait_ok(100).await;
    a.fail_every_other(true, 503);
    wait_health(&g, a.addr, "down", Duration::from_secs(10)).await;
    let after_ejection = a.gets();
    load.wait_ok(300).await;
    let report = load.finish().await;
    // Its successes in between did not wipe the count (nginx's `accessed < checked`).
    assert_eq!(a.gets(), after_ejection, "no request after the ejection");
    report.assert_only_upstream_failures("every other request fails", a.failed());
    assert!(
        healthy.iter().all(|u| u.hits() > 0),
        "the other two carried the load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_enabled_again_while_broken_fails_no_request() {
    let (c, gray) = (FlakyUpstream::start("base"), Upstream::start("gray"));
    let healthy = [Upstream::start("base"), Upstream::start("base")];
    let lines = |c_extra: &str| {
        let mut l: String = healthy
            .iter()
            .map(|u| file_line(u.addr, BASE_BUILD))
            .collect();
        l.push_str(&flaky_line(&c, c_extra));
        l
    };
    let g = hiccup_setup("", &lines(""), &gray);
    let load = Load::start(&g, clients(), PACE);
    load.wait_ok(100).await;
    g.write_file("base.conf", &lines("down"));
    eventually(Duration::from_secs(5), "c marked down", || async {
        upstream_list(&g)
            .await
            .contains(&format!(
                "{} weight=1 max_fails=2 fail_timeout=10s down;",
                c.addr
            ))
            .then_some(())
    })
    .await;
    // Broken while down (pages and checks answer 503), then enabled again.
    c.set_broken(true);
    let gets_when_broken = c.gets();
    g.write_file("base.conf", &lines(""));
    eventually(
        Duration::from_secs(10),
        "c checked and held down",
        || async {
            let v = status(&g).await;
            let row = v["servers"]["server"]
                .as_array()?
                .iter()
                .find(|r| r["name"] == c.addr.to_string().as_str())?
                .clone();
            (row["fall"].as_u64() >= Some(2)).then_some(())
        },
    )
    .await;
    load.wait_ok(100).await;
    assert_eq!(c.gets(), gets_when_broken, "no page or asset reached it");
    c.set_broken(false);
    wait_health(&g, c.addr, "up", Duration::from_secs(10)).await;
    let back = c.gets();
    eventually(Duration::from_secs(10), "c to serve again", || async {
        (c.gets() > back).then_some(())
    })
    .await;
    load.finish()
        .await
        .assert_clean("enabled again while broken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_file_rewritten_in_place_never_loses_a_server() {
    use std::io::Write as _;
    let s = servers();
    let before = membership(&s.g).await;
    let text = std::fs::read_to_string(s.g.path("base.conf")).expect("base.conf");
    let (first, rest) = text.split_at(text.find('\n').expect("a line") + 1);
    let load = Load::start(&s.g, clients(), PACE);
    load.wait_ok(100).await;
    // An editor rewriting the file in place: truncate, write the first line, then (50 ms
    // later, long enough for a poll to see it) the rest. Twenty times, the same content, about
    // once per poll (250 ms), so polls can fall into the half-written moment again and again.
    let path = s.g.path("base.conf");
    let (head, tail) = (first.to_string(), rest.to_string());
    let writer = tokio::task::spawn_blocking(move || {
        for _ in 0..20 {
            // Stops quietly if the test already failed and its directory is gone.
            let Ok(mut f) = std::fs::File::create(&path) else {
                return;
            };
            let _ = f.write_all(head.as_bytes()).and_then(|()| f.sync_data());
            std::thread::sleep(Duration::from_millis(50));
            let _ = f.write_all(tail.as_bytes()).and_then(|()| f.sync_data());
            drop(f);
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut samples = 0;
    while !writer.is_finished() {
        assert_eq!(
            membership(&s.g).await,
            before,
            "a half-written file was applied"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.await.expect("writer");
    let report = load.finish().await;
    report.assert_clean("pools file rewritten in place");
    assert!(
        samples > 20,
        "the pools were watched throughout ({samples})"
    );
    let log = s.g.log();
    assert!(
        !log.contains("removed [127."),
        "no server was ever dropped:\n{log}"
    );
    assert_eq!(membership(&s.g).await, before);
}

// ---------------------------------------------------------------------------------------------
// Consul failing

const BASE_PREFIX: &str = "upstreams/base/";
const GRAY_PREFIX: &str = "upstreams/gray/";

struct ConsulSetup {
    g: Graysplit,
    consul: Option<ConsulStandIn>,
    base: Vec<Upstream>,
    gray: Upstream,
    /// A server not in Consul yet: "the next change" after the fault.
    spare: Upstream,
}

fn put_all(consul: &ConsulStandIn, base: &[Upstream], gray: &Upstream) {
    for u in base {
        consul.put(
            &format!("{BASE_PREFIX}{}", u.addr),
            &format!(r#"{{"weight":1,"fail_timeout":3,"build":"{BASE_BUILD}"}}"#),
        );
    }
    consul.put(
        &format!("{GRAY_PREFIX}{}", gray.addr),
        &format!(r#"{{"build":"{GRAY_BUILD}"}}"#),
    );
}

async fn consul_setup(wait: &str) -> ConsulSetup {
    let consul = ConsulStandIn::start();
    let base = vec![Upstream::start("base"), Upstream::start("base")];
    let gray = Upstream::start("gray");
    let spare = Upstream::start("base");
    put_all(&consul, &base, &gray);
    let toml = format!(
        "{FAST}{}[gray]\nwhitelist_file = \"whitelist.txt\"\n\
         [consul]\naddresses = [\"{}\"]\nwait = \"{wait}\"\ninterval = \"100ms\"\n\
         [pools.base]\nconsul_prefix = \"{BASE_PREFIX}\"\ndump_path = \"base.dump\"\n\
         [pools.gray]\nconsul_prefix = \"{GRAY_PREFIX}\"\ndump_path = \"gray.dump\"\n",
        pin_toml(),
        consul.url()
    );
    let g = Graysplit::start(&toml, &[("whitelist.txt", &format!("{GRAY_IP}\n"))]);
    let listed = |text: &str| {
        base.iter()
            .chain([&gray])
            .all(|u| text.contains(&u.addr.to_string()))
    };
    eventually(Duration::from_secs(10), "pools from Consul", || async {
        listed(&upstream_list(&g).await).then_some(())
    })
    .await;
    // Servers from Consul start down (default_down) until they pass `rise` checks.
    for u in base.iter().chain([&gray]) {
        wait_health(&g, u.addr, "up", Duration::from_secs(10)).await;
    }
    // Both watchers parked in a blocking query: the fault hits a running watcher.
    assert!(
        consul
            .wait_for_blocked_queries_async(2, Duration::from_secs(5))
            .await
    );
    ConsulSetup {
        g,
        consul: Some(consul),
        base,
        gray,
        spare,
    }
}

/// After the fault: the pools still hold what they held, the dumps too.
async fn pools_kept(c: &ConsulSetup, before: &str, scenario: &str) {
    assert_eq!(
        membership(&c.g).await,
        before,
        "{scenario}: pools unchanged"
    );
    for (dump, ups) in [
        ("base.dump", &c.base[..]),
        ("gray.dump", std::slice::from_ref(&c.gray)),
    ] {
        let text = std::fs::read_to_string(c.g.path(dump)).expect("dump file");
        for u in ups {
            assert!(
                text.contains(&format!("server {} ", u.addr)),
                "{scenario}: {dump} lost {}:\n{text}",
                u.addr
            );
        }
    }
}

/// The next Consul change after the fault is followed: the spare server joins base.
async fn next_change_followed(
    c: &ConsulSetup,
    consul: &ConsulStandIn,
    within: Duration,
) -> Duration {
    let t = Instant::now();
    consul.put(
        &format!("{BASE_PREFIX}{}", c.spare.addr),
        &format!(r#"{{"build":"{BASE_BUILD}"}}"#),
    );
    eventually(within, "the next Consul change to apply", || async {
        upstream_list(&c.g)
            .await
            .contains(&c.spare.addr.to_string())
            .then_some(())
    })
    .await;
    t.elapsed()
}

async fn consul_errors(g: &Graysplit) -> u64 {
    status(g).await["consul"]["base"]["errors"]
        .as_u64()
        .unwrap_or(0)
}

/// 500 / garbage / hang: the fault stays until `min_errors` polls failed (and the load ran on),
/// then Consul is healthy again and the next change must apply.
async fn consul_fault(fault: Fault, wait: &str, min_errors: u64, name: &str) {
    let c = consul_setup(wait).await;
    let consul = c.consul.as_ref().expect("consul");
    let before = membership(&c.g).await;
    let load = Load::start(&c.g, clients(), PACE);
    load.wait_ok(100).await;
    let t = Instant::now();
    consul.set_fault(fault);
    eventually(
        Duration::from_secs(15),
        &format!("{min_errors} failed poll(s) under {fault:?}"),
        || async { (consul_errors(&c.g).await >= min_errors).then_some(()) },
    )
    .await;
    while t.elapsed() < FAULT {
        load.wait_ok(50).await;
    }
    pools_kept(&c, &before, name).await;
    assert_eq!(status(&c.g).await["consul"]["base"]["reachable"], false);
    consul.set_fault(Fault::None);
    let fault_lasted = t.elapsed();
    let took = next_change_followed(&c, consul, Duration::from_secs(10)).await;
    let report = load.finish().await;
    report.assert_clean(name);
    println!(
        "chaos {name}: fault lasted {fault_lasted:?}; next change applied {took:?} after the fix"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_answering_500_loses_no_pool_and_fails_no_request() {
    consul_fault(Fault::Status500, "2s", 3, "consul 500").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_answering_garbage_loses_no_pool_and_fails_no_request() {
    consul_fault(Fault::Garbage, "2s", 3, "consul garbage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_hanging_loses_no_pool_and_fails_no_request() {
    // wait 1s: a hung poll is given up after 1s + 1s/16 + 3s.
    consul_fault(Fault::Hang, "1s", 1, "consul hang").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_index_rewind_loses_no_pool_and_fails_no_request() {
    let c = consul_setup("30s").await;
    let consul = c.consul.as_ref().expect("consul");
    let before = membership(&c.g).await;
    let load = Load::start(&c.g, clients(), PACE);
    load.wait_ok(100).await;
    let t = Instant::now();
    consul.rewind_index(1);
    eventually(
        Duration::from_secs(5),
        "the watcher to restart from index 1",
        || async { (status(&c.g).await["consul"]["base"]["index"] == 1).then_some(()) },
    )
    .await;
    while t.elapsed() < FAULT {
        load.wait_ok(50).await;
    }
    pools_kept(&c, &before, "consul rewind").await;
    // The long wait (30 s) would hide the change without the reset.
    let took = next_change_followed(&c, consul, Duration::from_secs(2)).await;
    load.finish().await.assert_clean("consul index rewind");
    println!("chaos consul index rewind: next change applied in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_down_for_30s_loses_no_pool_and_fails_no_request() {
    const OUTAGE: Duration = Duration::from_secs(30);
    let mut c = consul_setup("2s").await;
    let before = membership(&c.g).await;
    let load = Load::start(&c.g, clients(), PACE);
    load.wait_ok(100).await;
    let consul = c.consul.take().expect("consul");
    let addr = consul.addr();
    drop(consul);
    let down = Instant::now();
    eventually(Duration::from_secs(10), "a failed poll", || async {
        (consul_errors(&c.g).await >= 1).then_some(())
    })
    .await;
    // The outage itself: the pools are checked every second while Consul is gone.
    while down.elapsed() < OUTAGE {
        pools_kept(&c, &before, "consul down").await;
        assert_eq!(load.failed(), 0, "{:#?}", load.snapshot().failures);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let failed_polls = consul_errors(&c.g).await;
    assert!(failed_polls >= 2, "the watcher kept trying: {failed_polls}");
    // Consul comes back (a fresh stand-in on the same address, restored with the same keys).
    let consul = ConsulStandIn::start_on(addr).expect("rebind Consul's port");
    put_all(&consul, &c.base, &c.gray);
    // The watcher backs off at most consul.max_backoff (2 s) between rounds of failed polls,
    // so the next change follows within about that once Consul answers (a generous deadline
    // here; the figure is printed, and bench/consul-timing measures it).
    let took = next_change_followed(&c, &consul, Duration::from_secs(10)).await;
    let report = load.finish().await;
    report.assert_clean("consul down 30 s");
    let after = upstream_list(&c.g).await;
    for u in c.base.iter().chain([&c.gray]) {
        assert!(after.contains(&u.addr.to_string()), "{after}");
    }
    println!(
        "chaos consul down 30 s: {failed_polls} failed poll(s); next change applied {took:?} \
         after Consul returned"
    );
    c.consul = Some(consul);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consul_server_takes_traffic_after_back_to_back_checks() {
    // The shipped checks (interval 1 s, rise 2): a new server's first checks run 100 ms apart.
    let consul = ConsulStandIn::start();
    let base = [Upstream::start("base"), Upstream::start("base")];
    let gray = Upstream::start("gray");
    put_all(&consul, &base, &gray);
    let toml = format!(
        "[health]\npath = \"/healthz\"\n[upstream]\nread_timeout = \"3s\"\n{}\
         [gray]\nwhitelist_file = \"whitelist.txt\"\n\
         [consul]\naddresses = [\"{}\"]\nwait = \"30s\"\n\
         [pools.base]\nconsul_prefix = \"{BASE_PREFIX}\"\n\
         [pools.gray]\nconsul_prefix = \"{GRAY_PREFIX}\"\n",
        pin_toml(),
        consul.url()
    );
    let g = Graysplit::start(&toml, &[("whitelist.txt", &format!("{GRAY_IP}\n"))]);
    for u in base.iter().chain([&gray]) {
        wait_health(&g, u.addr, "up", Duration::from_secs(10)).await;
    }
    let load = Load::start(&g, clients(), PACE);
    load.wait_ok(100).await;
    let new = FlakyUpstream::start("base");
    let put = Instant::now();
    consul.put(
        &format!("{BASE_PREFIX}{}", new.addr),
        &format!(r#"{{"build":"{BASE_BUILD}"}}"#),
    );
    let took = eventually(
        Duration::from_secs(10),
        "the new server's first page",
        || async { (load.snapshot().served_by(&new.addr.to_string()) > 0).then(|| put.elapsed()) },
    )
    .await;
    let checks = new
        .behaviour
        .heads
        .load(std::sync::atomic::Ordering::Relaxed);
    load.wait_ok(100).await;
    load.finish().await.assert_clean("new Consul server");
    // default_down: traffic only after rise = 2 passing checks, and no more were needed.
    assert_eq!(checks, 2, "taken into rotation after exactly rise checks");
    println!("chaos new Consul server: PUT -> its first request {took:?} (rise 2, interval 1s)");
}

// ---------------------------------------------------------------------------------------------
// Redis failing

struct RedisSetup {
    g: Graysplit,
    _base: Upstream,
    _gray: Upstream,
}

fn redis_setup(redis: &RedisServer) -> RedisSetup {
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    // Defaults otherwise: timeout 20ms, cache_ttl 1s, stale_if_error 10m, breaker 5 / 5s.
    let toml = format!(
        "{FAST}{}[gray.redis]\nurl = \"{}\"\n\
         [pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n",
        pin_toml(),
        redis.url()
    );
    let g = Graysplit::start(
        &toml,
        &[
            ("base.conf", &file_line(base.addr, BASE_BUILD)),
            ("gray.conf", &file_line(gray.addr, GRAY_BUILD)),
        ],
    );
    RedisSetup {
        g,
        _base: base,
        _gray: gray,
    }
}

async fn until_decided(g: &Graysplit, want: &str, within: Duration) -> Duration {
    let t = Instant::now();
    eventually(within, &format!("{GRAY_IP} decided {want}"), || async {
        (decided_pool(g).await == want).then_some(())
    })
    .await;
    t.elapsed()
}

fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid");
    // SAFETY: plain kill(2) to the one process this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Bounds what a Redis fault may add to a request: the 20 ms lookup timeout, then the breaker.
fn assert_no_stall(report: &Report, scenario: &str) {
    assert!(
        report.p99() < Duration::from_millis(500),
        "{scenario}: p99 {:?}",
        report.p99()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_5s_loses_no_whitelist_and_fails_no_request() {
    let redis = RedisServer::start();
    let s = redis_setup(&redis);
    redis.cli(&["set", GRAY_IP, GRAY_IP]);
    until_decided(&s.g, "gray", Duration::from_secs(5)).await;
    let load = Load::start(&s.g, clients(), PACE);
    load.wait_ok(100).await;
    signal(redis.pid(), libc::SIGSTOP);
    let paused = Instant::now();
    // The pause itself (5 s, five times cache_ttl): the whitelisted clients must stay on gray.
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal(redis.pid(), libc::SIGCONT);
    let pause = paused.elapsed();
    load.wait_ok(100).await;
    let report = load.finish().await;
    report.assert_clean("redis paused 5 s");
    assert_no_stall(&report, "redis paused");
    assert!(
        s.g.log().contains("failures in a row"),
        "Redis really failed (the breaker opened):\n{}",
        s.g.log()
    );
    // Redis answers again: a DEL applies without a restart.
    redis.cli(&["del", GRAY_IP]);
    let took = until_decided(&s.g, "base", Duration::from_secs(10)).await;
    println!("chaos redis paused: paused {pause:?}; a DEL after the pause applied in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_empty_loses_no_whitelist_and_fails_no_request() {
    let redis = RedisServer::start();
    let port = redis.port;
    let s = redis_setup(&redis);
    redis.cli(&["set", GRAY_IP, GRAY_IP]);
    until_decided(&s.g, "gray", Duration::from_secs(5)).await;

    // Killed: the whitelisted clients stay on gray on the last answer Redis gave.
    let load = Load::start(&s.g, clients(), PACE);
    load.wait_ok(100).await;
    signal(redis.pid(), libc::SIGKILL);
    drop(redis);
    let killed = Instant::now();
    eventually(Duration::from_secs(10), "the breaker to open", || async {
        s.g.log().contains("failures in a row").then_some(())
    })
    .await;
    // Well past cache_ttl (1 s): only stale_if_error can keep the answer now.
    while killed.elapsed() < Duration::from_secs(3) {
        load.wait_ok(50).await;
    }
    let report = load.finish().await;
    report.assert_clean("redis killed");
    assert_no_stall(&report, "redis killed");
    assert_eq!(
        decided_pool(&s.g).await,
        "gray",
        "whitelist kept while Redis is away"
    );

    // Restarted empty: once it answers, "not whitelisted" is the truth; SET again → gray again,
    // without restarting graysplit. Pages never fail and pins hold meanwhile.
    let load = Load::start(&s.g, clients_any_pool(), PACE);
    load.wait_ok(50).await;
    let redis = RedisServer::start_on(port);
    let to_base = until_decided(&s.g, "base", Duration::from_secs(15)).await;
    redis.cli(&["set", GRAY_IP, GRAY_IP]);
    let to_gray = until_decided(&s.g, "gray", Duration::from_secs(10)).await;
    // The whitelisted clients' pages follow.
    let gray_pages = load
        .snapshot()
        .pages_by_pool
        .get("gray")
        .copied()
        .unwrap_or(0);
    eventually(Duration::from_secs(10), "gray pages again", || async {
        (load
            .snapshot()
            .pages_by_pool
            .get("gray")
            .copied()
            .unwrap_or(0)
            > gray_pages)
            .then_some(())
    })
    .await;
    let report = load.finish().await;
    report.assert_clean("redis restarted empty, then SET again");
    println!(
        "chaos redis restarted empty: not whitelisted {to_base:?} after the restart; \
         gray again {to_gray:?} after the SET"
    );
}
