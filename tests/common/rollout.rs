//! Helpers of the rollout tests: configs for graysplit instances sharing the Consul stand-in,
//! `/rollout` polling, plans, metrics.

use std::time::Duration;

use super::canary::CanaryUpstream;
use super::consul::ConsulStandIn;
use super::proc::Graysplit;
use super::upstream::Upstream;

/// One pin secret for the whole fleet (pins must verify on every instance).
pub const SECRET: &str = "rollout-tests-pin-secret-0123456789";
pub const BASE_BUILD: &str = "base-2026.11.1";
pub const GRAY_BUILD: &str = "gray-2026.11.2";
pub const PREFIX: &str = "graysplit/rollout/";
pub const PLAN_KEY: &str = "graysplit/rollout/plan";
pub const CONTROL_KEY: &str = "graysplit/rollout/control";
pub const STATE_KEY: &str = "graysplit/rollout/state";
pub const LOCK_KEY: &str = "graysplit/rollout/lock";
pub const PERCENT_KEY: &str = "graysplit/gray/percent";

/// Checks fast, `[gray]` with `gray_keys`, a header rule to send a request to either pool on
/// purpose (`x-canary: gray|base`), the pin secret.
pub fn common_toml(gray_keys: &str) -> String {
    format!(
        "[health]\ninterval = \"200ms\"\ntimeout = \"1s\"\n\
         [pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n\
         [gray]\n{gray_keys}\n\
         [[gray.rules]]\nheader = \"x-canary\"\nequals = \"gray\"\npool = \"gray\"\n\
         [[gray.rules]]\nheader = \"x-canary\"\nequals = \"base\"\npool = \"base\"\n\
         [pin]\nsecrets = [\"{SECRET}\"]\n"
    )
}

/// A fleet member: switches and rollout in Consul, short ticks and windows.
pub fn consul_toml(consul: &ConsulStandIn, instance: &str) -> String {
    format!(
        "{}[consul]\naddresses = [\"{}\"]\ninterval = \"50ms\"\nwait = \"10s\"\n\
         [rollout]\nconsul_prefix = \"{PREFIX}\"\ninstance = \"{instance}\"\ntick = \"100ms\"\n\
         publish_interval = \"200ms\"\nsession_ttl = \"10s\"\nlock_delay = \"1s\"\n\
         [rollout.mirror]\ntimeout = \"5s\"\n",
        common_toml("consul_prefix = \"graysplit/gray/\""),
        consul.url()
    )
}

/// Pools files for one base server and one gray server.
pub fn pools(base: &Upstream, gray: &CanaryUpstream) -> Vec<(&'static str, String)> {
    vec![
        (
            "base.conf",
            format!("server {} max_fails=0; # build={BASE_BUILD}\n", base.addr),
        ),
        ("gray.conf", gray.line(GRAY_BUILD)),
    ]
}

/// Starts graysplit with `toml` and the pools.
pub fn start(toml: &str, files: &[(&'static str, String)]) -> Graysplit {
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    Graysplit::start(toml, &files)
}

pub async fn rollout(g: &Graysplit) -> serde_json::Value {
    super::get_json(g.admin_url("/rollout")).await
}

/// Polls `/rollout` until `ok` holds; returns that document.
pub async fn wait(
    g: &Graysplit,
    within: Duration,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let v = rollout(g).await;
        if ok(&v) {
            return v;
        }
        if std::time::Instant::now() >= deadline {
            let log: String = g
                .log()
                .lines()
                .filter(|l| !l.contains("access]"))
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "timed out after {within:?} waiting for {what}; /rollout:\n{v:#}\nlog:\n{}",
                tail(&log, 60)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `n` lines of a log.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn status(v: &serde_json::Value) -> &str {
    v["state"]["status"].as_str().unwrap_or("-")
}

pub fn windows(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["windows"].as_array().cloned().unwrap_or_default()
}

pub fn verdicts(v: &serde_json::Value) -> Vec<String> {
    windows(v)
        .iter()
        .map(|w| w["verdict"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The gray percent the instance decides with now (its live switches).
pub async fn live_percent(g: &Graysplit) -> f64 {
    let v = super::get_json(g.admin_url("/decide?ip=192.0.2.1")).await;
    v["switches"]["percent"].as_f64().unwrap_or(-1.0)
}

/// One sample of `/metrics` (`name{labels}` exactly as rendered), 0 when absent.
pub async fn metric(g: &Graysplit, series: &str) -> f64 {
    let text = super::client()
        .get(g.admin_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    let samples = graysplit::metrics::text_format::parse(&text).expect("valid metrics text");
    samples
        .iter()
        .filter(|(name, _)| name == series)
        .map(|(_, v)| *v)
        .sum()
}

/// The sum of every sample of a family whose labels contain all of `labels`.
pub async fn metric_sum(g: &Graysplit, family: &str, labels: &[&str]) -> f64 {
    let text = super::client()
        .get(g.admin_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    let samples = graysplit::metrics::text_format::parse(&text).expect("valid metrics text");
    samples
        .iter()
        .filter(|(name, _)| {
            name.split('{').next() == Some(family) && labels.iter().all(|l| name.contains(l))
        })
        .map(|(_, v)| *v)
        .sum()
}

/// A page load as a browser makes it, optionally with a pin cookie; returns (status, pool
/// header, reason header, new pin, body).
pub async fn page(
    g: &Graysplit,
    ip: &str,
    pin: Option<&str>,
    dest: &str,
    path: &str,
) -> (u16, String, String, Option<String>, String) {
    let mut req = super::client()
        .get(g.url(path))
        .header("x-forwarded-for", ip)
        .header("sec-fetch-dest", dest);
    if dest == "document" {
        req = req.header("accept", "text/html");
    }
    if let Some(p) = pin {
        req = req.header("cookie", format!("graysplit={p}"));
    }
    let r = req.send().await.expect("request");
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let (status, pool, reason) = (
        r.status().as_u16(),
        h("x-graysplit-pool"),
        h("x-graysplit-reason"),
    );
    let new_pin = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            c.split(';')
                .next()?
                .strip_prefix("graysplit=")
                .map(str::to_string)
        });
    let body = r.text().await.unwrap_or_default();
    (status, pool, reason, new_pin, body)
}
