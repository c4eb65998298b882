//! A fleet keeps the promise (issue 11): two graysplit instances behind one "load balancer"
//! share the Consul stand-in (pools), a real redis-server (whitelist) and the pin secret. A
//! browser-like client whose requests alternate between the two instances, while its whitelist
//! entry flips between every request, never gets a page mixed across builds. Without a shared
//! secret the same walk mixes pages — the reason `graysplit -t` warns about it, also tested here.

mod common;

use std::process::Command;
use std::time::Duration;

use common::consul::ConsulStandIn;
use common::load::{assets_in, build_in};
use common::proc::{Graysplit, ServerOptions, BIN};
use common::redis::RedisServer;
use common::upstream::Upstream;
use common::{client, eventually, get_json};

const BASE_BUILD: &str = "base-2026.11.1";
const GRAY_BUILD: &str = "gray-2026.11.2";
const SECRET: &str = "fleet-shared-secret-0123456789abcdef";
const IP: &str = "192.168.93.182";
const PAGES: usize = 60;

fn config(consul: &ConsulStandIn, redis: &RedisServer) -> String {
    format!(
        "[health]\nenabled = false\n\
         [consul]\naddresses = [\"{}\"]\nwait = \"2s\"\ninterval = \"100ms\"\n\
         [pools.base]\nconsul_prefix = \"upstreams/base/\"\n\
         [pools.gray]\nconsul_prefix = \"upstreams/gray/\"\n\
         [gray.redis]\nurl = \"{}\"\ncache_ttl = \"0s\"\ntimeout = \"200ms\"\n",
        consul.url(),
        redis.url()
    )
}

/// An instance; `secret`: the shared secret in `GRAYSPLIT_PIN_SECRETS`, or none at all.
fn instance(consul: &ConsulStandIn, redis: &RedisServer, secret: Option<&str>) -> Graysplit {
    let opts = ServerOptions {
        env: secret
            .map(|s| vec![("GRAYSPLIT_PIN_SECRETS", s.to_string())])
            .unwrap_or_default(),
        ..ServerOptions::default()
    };
    Graysplit::start_with(&opts, &config(consul, redis), &[])
}

async fn wait_pools(g: &Graysplit) {
    eventually(
        Duration::from_secs(10),
        "both pools from Consul",
        || async {
            let v = get_json(g.admin_url("/status?format=json")).await;
            let rows = v["servers"]["server"].as_array()?.clone();
            let has = |pool: &str| rows.iter().any(|r| r["upstream"] == pool);
            (has("base") && has("gray")).then_some(())
        },
    )
    .await;
}

/// One request to `g` as the browser makes it; returns the status and body, keeps the pin.
async fn get(g: &Graysplit, path: &str, dest: &str, pin: &mut Option<String>) -> (u16, String) {
    let mut req = client()
        .get(g.url(path))
        .header("sec-fetch-dest", dest)
        .header("x-forwarded-for", IP);
    if let Some(p) = pin.as_deref() {
        req = req.header("cookie", format!("graysplit={p}"));
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let set = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.split(';').next()?.strip_prefix("graysplit="))
        .map(str::to_string);
    if let Some(p) = set {
        *pin = Some(p);
    }
    (status, r.text().await.expect("body"))
}

/// The walk: `PAGES` pages, each request to the other instance than the one before, the
/// whitelist entry flipped before every request. Returns (mixed pages, pages per build).
async fn alternate(fleet: [&Graysplit; 2], redis: &RedisServer) -> (usize, [usize; 2]) {
    let mut pin = None;
    let mut listed = false;
    let mut turn = 0usize;
    let mut flip_and_pick = || {
        listed = !listed;
        let out = if listed {
            redis.cli(&["set", IP, IP])
        } else {
            redis.cli(&["del", IP])
        };
        assert!(out.is_some(), "redis-cli");
        turn += 1;
        fleet[turn % 2]
    };
    let (mut mixed, mut per_build) = (0, [0usize; 2]);
    for _ in 0..PAGES {
        let (status, page) = get(flip_and_pick(), "/", "document", &mut pin).await;
        assert_eq!(status, 200, "a page");
        let build = build_in(&page).expect("a build");
        per_build[usize::from(build == GRAY_BUILD)] += 1;
        let mut page_mixed = false;
        for path in assets_in(&page) {
            let dest = if path.ends_with(".css") {
                "style"
            } else {
                "script"
            };
            // Another build's asset, or none at all (the other build lacks this hashed file).
            let (status, body) = get(flip_and_pick(), &path, dest, &mut pin).await;
            page_mixed |= status != 200 || build_in(&body) != Some(build);
        }
        mixed += usize::from(page_mixed);
    }
    (mixed, per_build)
}

struct Fleet {
    consul: ConsulStandIn,
    redis: RedisServer,
    _upstreams: [Upstream; 2],
}

fn fleet() -> Fleet {
    let consul = ConsulStandIn::start();
    let redis = RedisServer::start();
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    consul.put(
        &format!("upstreams/base/{}", base.addr),
        &format!(r#"{{"build":"{BASE_BUILD}"}}"#),
    );
    consul.put(
        &format!("upstreams/gray/{}", gray.addr),
        &format!(r#"{{"build":"{GRAY_BUILD}"}}"#),
    );
    Fleet {
        consul,
        redis,
        _upstreams: [base, gray],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_a_shared_secret_never_mix_a_page() {
    let f = fleet();
    let a = instance(&f.consul, &f.redis, Some(SECRET));
    let b = instance(&f.consul, &f.redis, Some(SECRET));
    wait_pools(&a).await;
    wait_pools(&b).await;
    let (mixed, per_build) = alternate([&a, &b], &f.redis).await;
    eprintln!("shared secret: {PAGES} pages across two instances, {mixed} mixed, {per_build:?}");
    assert_eq!(mixed, 0, "pages mixed across builds");
    assert!(
        per_build[0] >= 10 && per_build[1] >= 10,
        "both builds served: {per_build:?}"
    );
    for g in [&a, &b] {
        assert!(
            !g.log().contains("no secret set"),
            "no warning with a secret"
        );
    }
}

/// The control: each instance signs with its own random secret and rejects the other's pins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_shared_secret_the_same_walk_mixes_pages() {
    let f = fleet();
    let a = instance(&f.consul, &f.redis, None);
    let b = instance(&f.consul, &f.redis, None);
    wait_pools(&a).await;
    wait_pools(&b).await;
    let (mixed, per_build) = alternate([&a, &b], &f.redis).await;
    eprintln!("random secrets: {PAGES} pages across two instances, {mixed} mixed, {per_build:?}");
    assert!(mixed > 0, "pins rejected by the other instance: pages mix");
    for g in [&a, &b] {
        assert!(
            g.log().contains("pin.secrets: no secret set"),
            "{}",
            g.log()
        );
    }
}

#[test]
fn check_warns_loudly_when_pools_come_from_consul_without_a_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("graysplit.toml");
    std::fs::write(
        &conf,
        "[consul]\naddresses = [\"http://127.0.0.1:8500\"]\n\
         [pools.base]\nconsul_prefix = \"upstreams/base/\"\n",
    )
    .expect("write config");
    let run = |secret: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.arg("-t")
            .arg("-c")
            .arg(&conf)
            .env_remove("GRAYSPLIT_PIN_SECRETS");
        if let Some(s) = secret {
            cmd.env("GRAYSPLIT_PIN_SECRETS", s);
        }
        cmd.output().expect("run graysplit -t")
    };
    let out = run(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning, not an error: {stderr}");
    assert!(
        stderr.contains("[warn]") && stderr.contains("pin.secrets: no secret set"),
        "{stderr}"
    );
    assert!(stderr.contains("pages mix builds"), "{stderr}");
    let out = run(Some(SECRET));
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("[warn]"),
        "a shared secret: nothing to warn about"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET));
}
