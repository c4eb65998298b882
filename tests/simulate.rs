//! `graysplit simulate` and `/simulate`: synthetic page loads through a running instance's live
//! decision — its switches file, rules, file whitelist and Redis whitelist — with each pool's
//! share against the expected one (the seed's simulator: 500 samples, within 5 points).

mod common;

use std::time::Duration;

use common::canary::CanaryUpstream;
use common::proc::{run, Graysplit};
use common::redis::RedisServer;
use common::rollout as ro;
use common::upstream::Upstream;

fn simulate(g: &Graysplit, extra: &[&str]) -> (i32, String) {
    let admin = g.admin.to_string();
    let mut args = vec!["simulate", "--admin", admin.as_str()];
    args.extend_from_slice(extra);
    let out = run(&args);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn pool<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == name)
        .unwrap_or_else(|| panic!("no pool {name} in {v:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_follow_the_live_switches_rules_and_whitelists() {
    let redis = RedisServer::start();
    // A quarter of the synthetic addresses (198.18.0.0/15) is whitelisted in the file, another
    // quarter in Redis; the rest is decided by the 10 % switch.
    redis.cli(&["SADD", "graysplit:cidrs", "198.19.128.0/17"]);
    let base = Upstream::start("base");
    let gray = CanaryUpstream::start("gray");
    let mut files = ro::pools(&base, &gray);
    files.push(("whitelist.txt", "198.18.0.0/17\n".into()));
    files.push(("switches.conf", "percent = 10\n".into()));
    let toml = ro::common_toml(&format!(
        "whitelist_file = \"whitelist.txt\"\nswitches_file = \"switches.conf\"\n\
         [gray.redis]\nurl = \"{}\"\ntimeout = \"500ms\"",
        redis.url()
    ));
    let g = ro::start(&toml, &files);
    common::eventually(Duration::from_secs(10), "the Redis CIDRs", || async {
        let v = common::get_json(g.admin_url("/decide?ip=198.19.200.1")).await;
        (v["decision"]["reason"] == "cidr").then_some(())
    })
    .await;

    let (code, text) = simulate(&g, &["--samples", "500"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(
            "graysplit simulate: 500 samples; switches enabled=true all=false percent=10"
        ),
        "{text}"
    );
    assert!(text.contains("result: pass"), "{text}");
    let (code, json) = simulate(&g, &["--samples", "500", "--json", "--users"]);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let (gray_share, gray_expected) = (
        pool(&v, "gray")["share"].as_f64().unwrap(),
        pool(&v, "gray")["expected"].as_f64().unwrap(),
    );
    assert!((gray_share - gray_expected).abs() <= 5.0, "{v:#}");
    // Half the clients are whitelisted (file and Redis): gray expected near 50 + 5 %.
    let cidr = v["reasons"]["cidr"].as_u64().unwrap();
    assert!((175..=325).contains(&cidr), "{v:#}");
    assert!(v["reasons"]["percent"].as_u64().unwrap() > 0, "{v:#}");
    assert!((gray_expected - 55.0).abs() < 8.0, "{v:#}");
    assert_eq!(
        pool(&v, "gray")["count"].as_u64().unwrap() + pool(&v, "base")["count"].as_u64().unwrap(),
        500
    );

    // A rule forces every sample: expected and observed are both 100 % base.
    let (code, json) = simulate(&g, &["--header", "x-canary:base", "--json"]);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(pool(&v, "base")["share"], 100.0);
    assert_eq!(pool(&v, "base")["expected"], 100.0);
    assert_eq!(v["reasons"]["rule"], 500);

    // The live switches: gray off sends everyone to base.
    g.write_file("switches.conf", "enabled = false\n");
    common::eventually(Duration::from_secs(5), "the switch", || async {
        let v = common::get_json(g.admin_url("/decide?ip=198.18.0.1")).await;
        (v["switches"]["enabled"] == false).then_some(())
    })
    .await;
    let v = common::get_json(g.admin_url("/simulate?samples=200")).await;
    assert_eq!(v["reasons"]["switch_off"], 200, "{v:#}");
    assert_eq!(pool(&v, "gray")["share"], 0.0);
    assert_eq!(v["pass"], true);

    // Bad requests and unreachable instances.
    let r = common::client()
        .get(g.admin_url("/simulate?samples=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let out = run(&["simulate", "--admin", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
}
