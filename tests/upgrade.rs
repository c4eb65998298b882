//! graysplit itself under change (issue 7's chaos suite): a graceful upgrade (`-u` + `SIGQUIT`,
//! the old process handing its listening sockets over) under a steady request loop loses no
//! request, no pool and no pin; `SIGTERM` lets in-flight requests finish and then refuses new
//! connections. Real binary, real upstreams, real HTTP.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::consul::{ConsulStandIn, Fault};
use common::proc::{Graysplit, ServerOptions};
use common::upstream::Upstream;
use common::{eventually, static_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PIN_SECRET: &str = "upgrade-test-secret-0123456789abcdef";

/// One file the load asks for, and the exact bytes it must get back.
#[derive(Clone)]
struct Target {
    path: String,
    body: Arc<Vec<u8>>,
}

/// The base build's page and its assets, as served by the upstreams.
fn targets() -> Vec<Target> {
    let dir = static_dir("base");
    let mut out = vec![Target {
        path: "/".into(),
        body: Arc::new(std::fs::read(dir.join("index.html")).expect("index.html")),
    }];
    for entry in std::fs::read_dir(dir.join("assets")).expect("assets dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push(Target {
            path: format!("/assets/{name}"),
            body: Arc::new(std::fs::read(entry.path()).expect("asset")),
        });
    }
    assert!(out.len() >= 3, "a page and at least two assets");
    out
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Answers that said `Connection: close` (the draining process closing cleanly).
    closing: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// When the load started: failures and upgrade steps are timed from here.
    epoch: Mutex<Option<Instant>>,
}

impl Counts {
    fn since_start(&self) -> Duration {
        let mut e = self.epoch.lock().expect("lock");
        e.get_or_insert_with(Instant::now).elapsed()
    }

    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let at = self.since_start();
        let mut f = self.failures.lock().expect("lock");
        if f.len() < 20 {
            f.push(format!("at {at:?}: {what}"));
        }
    }
}

/// A steady request loop: `keepalive` clients reusing their connections and `fresh` clients
/// opening one per request, each looping over `targets` until `stop`. No client-side retries:
/// every error and every wrong status or body counts as a failure.
fn start_load(
    url: String,
    targets: Vec<Target>,
    keepalive: usize,
    fresh: usize,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..keepalive + fresh {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10));
        if i >= keepalive {
            builder = builder.pool_max_idle_per_host(0);
        }
        let client = builder.build().expect("client");
        let (url, targets, stop, counts) =
            (url.clone(), targets.clone(), stop.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = i;
            while !stop.load(Ordering::Relaxed) {
                let t = &targets[n % targets.len()];
                n += 1;
                let result = async {
                    let r = client.get(format!("{url}{}", t.path)).send().await?;
                    let status = r.status();
                    let closing = r
                        .headers()
                        .get("connection")
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                    let body = r.bytes().await?;
                    Ok::<_, reqwest::Error>((status, closing, body))
                }
                .await;
                match result {
                    Ok((status, closing, body)) if status == 200 && body[..] == t.body[..] => {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                        if closing {
                            counts.closing.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok((status, _, body)) => counts.fail(format!(
                        "GET {}: status {status}, {} bytes (want 200, {} bytes)",
                        t.path,
                        body.len(),
                        t.body.len()
                    )),
                    Err(e) => counts.fail(format!("GET {}: {e:?}", t.path)),
                }
            }
        }));
    }
    tasks
}

/// Requests answered by one process, from its own access log.
fn served(log: &str) -> usize {
    common::proc::access_lines(log).len()
}

fn pin_options() -> ServerOptions {
    ServerOptions {
        env: vec![("GRAYSPLIT_PIN_SECRETS", PIN_SECRET.to_string())],
        ..ServerOptions::default()
    }
}

/// Gets a page and returns its pin cookie (`name=value`).
async fn page_pin(g: &Graysplit) -> String {
    let r = common::client()
        .get(g.url("/"))
        .header("sec-fetch-dest", "document")
        .send()
        .await
        .expect("page");
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_string();
    cookie.split(';').next().expect("name=value").to_string()
}

/// An asset request carrying `pin`: `sticky` means the process accepted the pin.
async fn asset_reason(g: &Graysplit, asset: &str, pin: &str) -> String {
    let r = common::client()
        .get(g.url(asset))
        .header("sec-fetch-dest", "script")
        .header("cookie", pin)
        .send()
        .await
        .expect("asset");
    assert_eq!(r.status(), 200);
    r.headers()["x-graysplit-reason"]
        .to_str()
        .expect("ascii")
        .to_string()
}

struct Round {
    requests: u64,
    closing: u64,
    to_exit: Duration,
    old_served: usize,
    new_served: usize,
}

/// One graceful upgrade while the load runs: start `graysplit -u` on the same config, `SIGQUIT`
/// the old process, wait for it to exit, then for the new one to serve on its own.
async fn upgrade(g: &mut Graysplit, n: usize, counts: &Counts) -> Round {
    let (before_ok, before_closing) = (
        counts.ok.load(Ordering::Relaxed),
        counts.closing.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    let next =
        tokio::task::block_in_place(|| g.spawn_upgrade(&format!("upgrade-{n}"), &pin_options()));
    let ready = started.elapsed();
    let old_pid = g.pid();
    g.signal(libc::SIGQUIT);
    let quit_at = Instant::now();
    println!("upgrade {n}: SIGQUIT at {:?}", counts.since_start());
    let mut old = g.adopt(next);
    let status = eventually(Duration::from_secs(30), "the old process to exit", || {
        let s = old.exited();
        async move { s }
    })
    .await;
    let to_exit = quit_at.elapsed();
    println!("upgrade {n}: old exited at {:?}", counts.since_start());
    assert!(
        status.success(),
        "old pid {old_pid} exited with {status}:\n{}",
        old.log()
    );
    let old_log = old.log();
    assert!(old_log.contains("listener sockets sent"), "{old_log}");
    // The new process alone now: it must keep serving.
    let at_exit = served(&g.log());
    eventually(
        Duration::from_secs(10),
        "the new process to serve after the old exited",
        || {
            let more = served(&g.log()) >= at_exit + 200;
            async move { more.then_some(()) }
        },
    )
    .await;
    assert!(g.log().contains("Bootstrap done"), "{}", g.log());
    let round = Round {
        requests: counts.ok.load(Ordering::Relaxed) - before_ok,
        closing: counts.closing.load(Ordering::Relaxed) - before_closing,
        to_exit,
        old_served: served(&old_log),
        new_served: served(&g.log()),
    };
    println!(
        "upgrade {n}: pid {old_pid} -> {}: new process waiting for sockets after {ready:?}; \
         SIGQUIT to old exit {to_exit:?}; {} requests during the round ({} answered with \
         Connection: close); old process served {} in its life, new {} so far; failed so far {}",
        g.pid(),
        round.requests,
        round.closing,
        round.old_served,
        round.new_served,
        counts.failed.load(Ordering::Relaxed)
    );
    round
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_upgrade_under_load_loses_nothing() {
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    let base = format!(
        "{} # build=base-1\n{} # build=base-1\n",
        a.line(""),
        b.line("")
    );
    let gray = Upstream::start("gray");
    let pools = "[pools.base]\nfile = \"base.conf\"\n\n[pools.gray]\nfile = \"gray.conf\"\n";
    let mut g = Graysplit::start_with(
        &pin_options(),
        pools,
        &[
            ("base.conf", &base),
            ("gray.conf", &format!("{}\n", gray.line(""))),
        ],
    );
    let pools_before = common::client()
        .get(g.admin_url("/upstream_list"))
        .send()
        .await
        .expect("upstream_list")
        .text()
        .await
        .expect("text");
    assert!(pools_before.contains(&a.addr.to_string()), "{pools_before}");
    let pin = page_pin(&g).await;
    let asset = targets()[1].path.clone();
    assert_eq!(asset_reason(&g, &asset, &pin).await, "sticky");

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    counts.since_start();
    let load = start_load(g.url(""), targets(), 8, 2, stop.clone(), counts.clone());
    eventually(Duration::from_secs(10), "the load to get going", || {
        let n = counts.ok.load(Ordering::Relaxed);
        async move { (n >= 200).then_some(()) }
    })
    .await;

    let first = upgrade(&mut g, 1, &counts).await;
    let second = upgrade(&mut g, 2, &counts).await;

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    let (ok, failed) = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    println!(
        "load: {ok} ok, {failed} failed, {} answered with Connection: close",
        counts.closing.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed,
        0,
        "failed requests: {:#?}",
        counts.failures.lock().expect("lock")
    );
    for round in [&first, &second] {
        assert!(round.old_served > 0 && round.new_served > 0);
        assert!(
            round.requests > 100,
            "the load kept going during the upgrade"
        );
        assert!(
            round.closing > 0,
            "the old process closed busy keep-alive connections cleanly while draining"
        );
        // Pingora: fds sent at once, 5 s CLOSE_TIMEOUT, then grace_period (1 s) and the
        // runtimes' shutdown.
        assert!(
            round.to_exit < Duration::from_secs(15),
            "{:?}",
            round.to_exit
        );
    }

    // Nothing lost: the same pools, and a pin issued by the first process still holds.
    let pools_after = common::client()
        .get(g.admin_url("/upstream_list"))
        .send()
        .await
        .expect("upstream_list")
        .text()
        .await
        .expect("text");
    assert_eq!(pools_after, pools_before);
    assert_eq!(asset_reason(&g, &asset, &pin).await, "sticky");
    assert!(a.hits() > 0 && b.hits() > 0);
}

/// Runs `rounds` upgrades of `g` under the load of [`start_load`] and asserts no request
/// failed; returns the requests answered.
async fn upgrades_under_load(g: &mut Graysplit, rounds: usize, what: &str) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    counts.since_start();
    let load = start_load(g.url(""), targets(), 6, 2, stop.clone(), counts.clone());
    eventually(Duration::from_secs(10), "the load to get going", || {
        let n = counts.ok.load(Ordering::Relaxed);
        async move { (n >= 200).then_some(()) }
    })
    .await;
    for n in 1..=rounds {
        let round = upgrade(g, n, &counts).await;
        assert!(round.old_served > 0 && round.new_served > 0);
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    let (ok, failed) = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    println!("{what}: {ok} requests, {failed} failed");
    assert_eq!(
        failed,
        0,
        "{what}: failed requests: {:#?}",
        counts.failures.lock().expect("lock")
    );
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_while_consul_hangs_loses_nothing() {
    let consul = ConsulStandIn::start();
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    for u in [&a, &b] {
        consul.put(
            &format!("upstreams/base/{}", u.addr),
            r#"{"build":"base-1"}"#,
        );
    }
    // strong_dependency: without -u the process refuses to start unless Consul answers; under
    // -u it must not wait for Consul at all (the sockets are handed over meanwhile).
    let toml = format!(
        "[consul]\naddresses = [\"{}\"]\nwait = \"2s\"\nstrong_dependency = true\n\
         [pools.base]\nconsul_prefix = \"upstreams/base/\"\ndump_path = \"base.dump\"\n",
        consul.url()
    );
    let mut g = Graysplit::start_with(&pin_options(), &toml, &[]);
    eventually(Duration::from_secs(10), "the dump to be written", || {
        let dumped = std::fs::read_to_string(g.path("base.dump")).unwrap_or_default();
        let both = dumped.contains(&a.addr.to_string()) && dumped.contains(&b.addr.to_string());
        async move { both.then_some(()) }
    })
    .await;
    consul.set_fault(Fault::Hang);
    upgrades_under_load(&mut g, 1, "upgrade while Consul hangs").await;
    assert!(
        g.log()
            .contains("strong_dependency is not waited for on an upgrade"),
        "{}",
        g.log()
    );
    // Consul answers again: the new process follows it.
    consul.set_fault(Fault::None);
    let c = Upstream::start("base");
    consul.put(
        &format!("upstreams/base/{}", c.addr),
        r#"{"build":"base-1"}"#,
    );
    eventually(
        Duration::from_secs(10),
        "the next Consul change",
        || async {
            let list = common::client()
                .get(g.admin_url("/upstream_list"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            list.contains(&c.addr.to_string()).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_while_a_pools_file_hostname_does_not_resolve_loses_nothing() {
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    // `.invalid` never resolves (RFC 6761); the other two servers must serve throughout.
    let base = format!(
        "{}\nserver frontend-3.invalid:8080;\n{}\n",
        a.line(""),
        b.line("")
    );
    let mut g = Graysplit::start_with(
        &pin_options(),
        "[pools.base]\nfile = \"base.conf\"\n",
        &[("base.conf", &base)],
    );
    upgrades_under_load(&mut g, 1, "upgrade with an unresolvable pools-file name").await;
    let log = g.log();
    assert!(
        log.contains("frontend-3.invalid:8080") && log.contains("skipped until it resolves"),
        "{log}"
    );
    assert!(a.hits() > 0 && b.hits() > 0);
}

/// An upstream that answers GETs slowly: the head and half the body after `delay`, the rest
/// after another `delay`. HEAD (health checks) is answered at once. Counts GETs received.
struct SlowUpstream {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    body: Arc<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowUpstream {
    async fn start(delay: Duration) -> SlowUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(AtomicU64::new(0));
        let body: Arc<Vec<u8>> = Arc::new((0..200_000u32).map(|i| (i % 251) as u8).collect());
        let (count, served) = (received.clone(), body.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (count, body) = (count.clone(), served.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let head_end = loop {
                            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break p + 4;
                            }
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head: Vec<u8> = buf.drain(..head_end).collect();
                        let is_get = head.starts_with(b"GET ");
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\
                             Content-Type: application/octet-stream\r\n\r\n",
                            body.len()
                        );
                        if is_get {
                            count.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(delay).await;
                            let half = body.len() / 2;
                            if s.write_all(reply.as_bytes()).await.is_err()
                                || s.write_all(&body[..half]).await.is_err()
                            {
                                return;
                            }
                            tokio::time::sleep(delay).await;
                            if s.write_all(&body[half..]).await.is_err() {
                                return;
                            }
                        } else if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SlowUpstream {
            addr,
            received,
            body,
            task,
        }
    }
}

impl Drop for SlowUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_in_flight_requests_finish_then_refuses() {
    const IN_FLIGHT: usize = 6;
    let delay = Duration::from_millis(700);
    let slow = SlowUpstream::start(delay).await;
    let opts = ServerOptions {
        grace_period: "3s",
        graceful_shutdown_timeout: "2s",
        ..ServerOptions::default()
    };
    let pools = "[pools.base]\nfile = \"base.conf\"\n";
    let mut g = Graysplit::start_with(
        &opts,
        pools,
        &[("base.conf", &format!("server {};\n", slow.addr))],
    );

    // An idle keep-alive connection, opened before the signal.
    let idle = reqwest::Client::new();
    let r = idle.get(g.url("/idle")).send().await.expect("idle request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["connection"], "keep-alive");
    r.bytes().await.expect("body");

    let before = slow.received.load(Ordering::Relaxed);
    let mut requests = Vec::new();
    for i in 0..IN_FLIGHT {
        let url = g.url(&format!("/slow/{i}"));
        requests.push(tokio::spawn(async move {
            let r = common::client().get(url).send().await?;
            let status = r.status();
            let connection = r.headers().get("connection").cloned();
            let body = r.bytes().await?;
            Ok::<_, reqwest::Error>((status, connection, body))
        }));
    }
    // All of them reached the upstream: they are in flight.
    eventually(
        Duration::from_secs(5),
        "the requests to reach the upstream",
        || {
            let n = slow.received.load(Ordering::Relaxed) - before;
            async move { (n >= IN_FLIGHT as u64).then_some(()) }
        },
    )
    .await;
    g.signal(libc::SIGTERM);
    let term_at = Instant::now();

    // New connections are refused while the old ones are still being answered.
    let listen = g.listen;
    eventually(
        Duration::from_secs(2),
        "new connections to be refused",
        || async move {
            match tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(listen),
            )
            .await
            {
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
                _ => None,
            }
        },
    )
    .await;
    let refused_after = term_at.elapsed();

    // A keep-alive connection that was idle when the signal came is not cut under a request
    // sent on it now (within the linger, half of grace_period): it is answered, and closed.
    let late = idle.get(g.url("/late")).send().await.unwrap_or_else(|e| {
        panic!(
            "request on the idle connection after SIGTERM: {e:?}\n{}",
            g.log()
        )
    });
    assert_eq!(late.status(), 200);
    assert_eq!(late.headers()["connection"], "close");
    assert_eq!(late.bytes().await.expect("body").len(), slow.body.len());

    for (i, r) in requests.into_iter().enumerate() {
        let (status, connection, body) = r
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("in-flight request {i} failed: {e:?}\n{}", g.log()));
        assert_eq!(status, 200, "request {i}");
        assert_eq!(body.len(), slow.body.len(), "request {i}: full body");
        assert!(body[..] == slow.body[..], "request {i}: body intact");
        assert_eq!(
            connection.as_ref().map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "request {i}: answered during shutdown, so the connection is closed cleanly"
        );
    }
    let finished = term_at.elapsed();
    assert!(
        finished < delay * 2 + Duration::from_secs(1),
        "in-flight requests finished promptly: {finished:?}"
    );

    // Pingora: grace_period (3 s) after the signal, then at most graceful_shutdown_timeout (2 s).
    let status = tokio::task::block_in_place(|| g.wait_exit(Duration::from_secs(10)))
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", g.log()));
    let exited = term_at.elapsed();
    assert!(status.success(), "exit status {status}:\n{}", g.log());
    assert!(
        exited >= Duration::from_secs(3) - Duration::from_millis(100)
            && exited < Duration::from_secs(3 + 2 + 2),
        "exit after {exited:?}"
    );
    println!(
        "SIGTERM: {IN_FLIGHT} in-flight requests of {:?} all complete ({} bytes each) {finished:?} \
         after the signal; new connections refused after {refused_after:?}; process exited after \
         {exited:?} (grace_period 3s, graceful_shutdown_timeout 2s)",
        delay * 2,
        slow.body.len()
    );
}
