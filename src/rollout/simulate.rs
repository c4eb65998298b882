//! The simulator: N synthetic page loads through the real decision — the live switches, rules,
//! file and Redis whitelists — and each pool's share against the expected one, like the seed's
//! Discovery simulator (500 samples, every route within 5 %).
//!
//! The expected share follows from the decision's own reasons: a request decided by a switch, a
//! rule or a whitelist is *forced* to its pool; the others were decided by the percent bucket,
//! of which `percent` % should be gray. So for each pool,
//! `expected = (forced to it + unforced × its percent share) / samples`, and the run passes when
//! every observed share is within `tolerance` percentage points of it. What this checks is the
//! part an operator cannot see from the config: that the buckets spread real-looking clients as
//! the percent says, with whatever the whitelists currently hold.
//!
//! `GET /simulate?samples=500&tolerance=5[&header=a:3][&cookie=n=v][&query=a=1][&users=1]
//! [&cidr=198.18.0.0/15][&seed=7]` on the admin listener, or `graysplit simulate`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{json, Value};

use crate::gray::decision::Target;
use crate::gray::rules::query_param;
use crate::gray::{Client, GrayEngine};

pub const DEFAULT_SAMPLES: usize = 500;
pub const MAX_SAMPLES: usize = 100_000;
/// The seed simulator's `testcase.gray.weight.offset`.
pub const DEFAULT_TOLERANCE_PP: f64 = 5.0;
/// RFC 2544's benchmarking network: addresses no real client or whitelist uses.
pub const DEFAULT_CIDR: &str = "198.18.0.0/15";

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Request {
    pub samples: usize,
    pub tolerance_pp: f64,
    /// Sent with every synthetic request (e.g. the seed's `xyz: 3`).
    pub headers: HeaderMap,
    pub query: Option<String>,
    /// Give every client a random user id (the percent bucket then hashes the user).
    pub users: bool,
    /// Client addresses are drawn from here.
    pub cidr: IpNet,
    pub seed: Option<u64>,
}

impl Request {
    /// From `/simulate`'s query string; `Err` is a message for a 400.
    pub fn parse(query: Option<&str>) -> Result<Request, String> {
        let q = query.unwrap_or("");
        let samples = match query_param(q, "samples") {
            None => DEFAULT_SAMPLES,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_SAMPLES).contains(n))
                .ok_or(format!("samples={v:?}: expected 1 to {MAX_SAMPLES}"))?,
        };
        let tolerance_pp = match query_param(q, "tolerance") {
            None => DEFAULT_TOLERANCE_PP,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|t| (0.0..=100.0).contains(t))
                .ok_or(format!(
                    "tolerance={v:?}: expected percentage points, 0 to 100"
                ))?,
        };
        let mut headers = HeaderMap::new();
        for pair in q.split('&') {
            let (k, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let v = query_param(pair, k).unwrap_or_else(|| raw.to_string());
            match k {
                "header" => {
                    let (name, value) = v
                        .split_once(':')
                        .ok_or(format!("header={v:?}: expected name:value"))?;
                    let name = HeaderName::from_bytes(name.trim().as_bytes())
                        .map_err(|_| format!("bad header name {name:?}"))?;
                    let value = HeaderValue::from_str(value.trim())
                        .map_err(|_| format!("bad header value {value:?}"))?;
                    headers.append(name, value);
                }
                "cookie" => {
                    let value =
                        HeaderValue::from_str(&v).map_err(|_| format!("bad cookie {v:?}"))?;
                    headers.append(http::header::COOKIE, value);
                }
                _ => {}
            }
        }
        let cidr = match query_param(q, "cidr") {
            None => DEFAULT_CIDR
                .parse()
                .map_err(|_| "bad default cidr".to_string())?,
            Some(v) => v
                .parse::<IpNet>()
                .map_err(|_| format!("cidr={v:?}: expected a network such as 198.18.0.0/15"))?,
        };
        let seed = match query_param(q, "seed") {
            None => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| format!("seed={v:?}: expected a whole number"))?,
            ),
        };
        Ok(Request {
            samples,
            tolerance_pp,
            headers,
            query: query_param(q, "query"),
            users: query_param(q, "users").is_some_and(|v| v == "1" || v == "true"),
            cidr,
            seed,
        })
    }
}

/// A random address inside `net`.
fn address_in(net: &IpNet, rng: &mut impl rand::Rng) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host_bits = 32 - u32::from(n.prefix_len());
            let base = u32::from(n.network());
            let offset = if host_bits == 0 {
                0
            } else {
                rng.gen::<u32>() & (u32::MAX >> (32 - host_bits))
            };
            IpAddr::V4(Ipv4Addr::from(base | offset))
        }
        IpNet::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix_len());
            let base = u128::from(n.network());
            let offset = if host_bits == 0 {
                0
            } else {
                rng.gen::<u128>() & (u128::MAX >> (128 - host_bits))
            };
            IpAddr::V6(Ipv6Addr::from(base | offset))
        }
    }
}

/// Reasons that come from the percent bucket (the rest were forced by a switch, rule or list).
fn from_bucket(reason: &str) -> bool {
    matches!(reason, "percent" | "default")
}

/// One pool's line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub pool: String,
    pub count: usize,
    pub observed_pct: f64,
    pub expected_pct: f64,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub samples: usize,
    pub tolerance_pp: f64,
    pub percent: f64,
    pub enabled: bool,
    pub all: bool,
    pub shares: Vec<Share>,
    pub reasons: BTreeMap<String, usize>,
    pub pass: bool,
}

/// The shares from per-sample (pool, reason) outcomes (pure).
pub fn tally(
    outcomes: &[(String, &'static str)],
    percent_bp: u32,
    tolerance_pp: f64,
) -> (Vec<Share>, BTreeMap<String, usize>, bool) {
    let n = outcomes.len().max(1) as f64;
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    let mut forced: BTreeMap<String, usize> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut unforced = 0usize;
    for (pool, reason) in outcomes {
        *count.entry(pool.clone()).or_default() += 1;
        *reasons.entry((*reason).to_string()).or_default() += 1;
        if from_bucket(reason) {
            unforced += 1;
        } else {
            *forced.entry(pool.clone()).or_default() += 1;
        }
    }
    // Base and gray are always reported, even when no sample went there.
    for pool in ["base", "gray"] {
        count.entry(pool.to_string()).or_default();
    }
    let gray_share = f64::from(percent_bp) / 10_000.0;
    let shares: Vec<Share> = count
        .iter()
        .map(|(pool, &c)| {
            let bucket = match pool.as_str() {
                "gray" => gray_share,
                "base" => 1.0 - gray_share,
                _ => 0.0,
            };
            let expected =
                (forced.get(pool).copied().unwrap_or(0) as f64 + unforced as f64 * bucket) / n
                    * 100.0;
            let observed = c as f64 / n * 100.0;
            Share {
                pool: pool.clone(),
                count: c,
                observed_pct: observed,
                expected_pct: expected,
                ok: (observed - expected).abs() <= tolerance_pp + 1e-9,
            }
        })
        .collect();
    let pass = shares.iter().all(|s| s.ok);
    (shares, reasons, pass)
}

/// Runs the simulation against the live engine (Redis is asked as for real page loads).
pub async fn run(engine: &GrayEngine, req: &Request) -> Report {
    let mut rng = match req.seed {
        Some(s) => rand::rngs::StdRng::seed_from_u64(s),
        None => rand::rngs::StdRng::from_entropy(),
    };
    let sw = engine.switches();
    let mut outcomes = Vec::with_capacity(req.samples);
    for _ in 0..req.samples {
        let client = Client {
            ip: address_in(&req.cidr, &mut rng),
            user: req.users.then(|| format!("sim-{:016x}", rng.gen::<u64>())),
        };
        let d = engine
            .decide(&client, &req.headers, req.query.as_deref(), false, None)
            .await;
        let pool = match d.target {
            Target::Base => "base".to_string(),
            Target::Gray => "gray".to_string(),
            Target::Named(n) => n.to_string(),
        };
        outcomes.push((pool, d.reason));
    }
    let (shares, reasons, pass) = tally(&outcomes, sw.percent_bp, req.tolerance_pp);
    Report {
        samples: req.samples,
        tolerance_pp: req.tolerance_pp,
        percent: f64::from(sw.percent_bp) / 100.0,
        enabled: sw.enabled,
        all: sw.all,
        shares,
        reasons,
        pass,
    }
}

impl Report {
    pub fn to_json(&self) -> Value {
        json!({
            "samples": self.samples,
            "tolerance": self.tolerance_pp,
            "switches": {"enabled": self.enabled, "all": self.all, "percent": self.percent},
            "pools": self.shares.iter().map(|s| json!({
                "pool": s.pool,
                "count": s.count,
                "share": round2(s.observed_pct),
                "expected": round2(s.expected_pct),
                "ok": s.ok,
            })).collect::<Vec<_>>(),
            "reasons": self.reasons,
            "pass": self.pass,
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `graysplit simulate`: asks a running instance's admin listener (`host:port` or a URL) for
/// `/simulate` with these query parameters; the answer's JSON, or what went wrong.
pub fn ask(admin: &str, params: &[(&str, String)]) -> Result<Value, String> {
    let base = if admin.contains("://") {
        admin.to_string()
    } else {
        format!("http://{admin}")
    };
    let mut url = reqwest::Url::parse(&format!("{base}/simulate"))
        .map_err(|e| format!("--admin {base:?}: {e}"))?;
    url.query_pairs_mut()
        .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
    let get = async {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(120))
            .build()?
            .get(url.clone())
            .send()
            .await?;
        let status = resp.status();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    };
    let (status, text) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(get)
        .map_err(|e| format!("{url}: {e}"))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if status.is_success() => Ok(v),
        _ => Err(format!("{url}: {status}: {}", text.trim())),
    }
}

/// The report as `graysplit simulate` prints it, from `/simulate`'s JSON.
pub fn render_text(v: &Value) -> String {
    let mut out = format!(
        "graysplit simulate: {} samples; switches enabled={} all={} percent={}\n",
        v["samples"], v["switches"]["enabled"], v["switches"]["all"], v["switches"]["percent"]
    );
    for p in v["pools"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  pool {:<8} {:>6} hits  {:>6.2} %   expected {:>6.2} %   {}\n",
            p["pool"].as_str().unwrap_or("?"),
            p["count"],
            p["share"].as_f64().unwrap_or(0.0),
            p["expected"].as_f64().unwrap_or(0.0),
            if p["ok"].as_bool() == Some(true) {
                "ok"
            } else {
                "OFF"
            }
        ));
    }
    let reasons: Vec<String> = v["reasons"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    out.push_str(&format!("  reasons: {}\n", reasons.join(" ")));
    out.push_str(&format!(
        "result: {} (each share within {} points of the expected one)\n",
        if v["pass"].as_bool() == Some(true) {
            "pass"
        } else {
            "FAIL"
        },
        v["tolerance"]
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(list: &[(&str, &'static str, usize)]) -> Vec<(String, &'static str)> {
        list.iter()
            .flat_map(|(p, r, n)| std::iter::repeat_n((p.to_string(), *r), *n))
            .collect()
    }

    #[test]
    fn the_seed_example_90_10_passes_within_5_points() {
        // The seed's run: 448 / 52 of 500 at 10 %.
        let o = outcomes(&[("base", "default", 448), ("gray", "percent", 52)]);
        let (shares, reasons, pass) = tally(&o, 1_000, 5.0);
        assert!(pass);
        assert_eq!(shares[0].pool, "base");
        assert!((shares[0].observed_pct - 89.6).abs() < 1e-9);
        assert!((shares[0].expected_pct - 90.0).abs() < 1e-9);
        assert!((shares[1].observed_pct - 10.4).abs() < 1e-9);
        assert_eq!(reasons["percent"], 52);
    }

    #[test]
    fn forced_samples_shift_the_expectation_and_a_skew_fails() {
        // 100 whitelisted (forced gray) + 400 by bucket at 25 %: expected gray 40 %.
        let o = outcomes(&[
            ("gray", "ip", 100),
            ("gray", "percent", 100),
            ("base", "default", 300),
        ]);
        let (shares, _, pass) = tally(&o, 2_500, 5.0);
        assert!(pass, "{shares:?}");
        assert!((shares[1].expected_pct - 40.0).abs() < 1e-9);
        // The same counts at 10 %: gray expected 100+40 = 28 %, observed 40 %: off by 12.
        let (shares, _, pass) = tally(&o, 1_000, 5.0);
        assert!(!pass);
        assert!(!shares[1].ok);
        // A rule's own pool is expected exactly where the rule sends it.
        let o = outcomes(&[("gateway", "rule", 10), ("base", "default", 10)]);
        let (shares, _, pass) = tally(&o, 0, 5.0);
        assert!(pass, "{shares:?}");
        assert_eq!(
            shares.iter().map(|s| s.pool.as_str()).collect::<Vec<_>>(),
            ["base", "gateway", "gray"]
        );
    }

    #[test]
    fn query_parsing_and_errors() {
        let r =
            Request::parse(Some("samples=100&tolerance=2&header=xyz:3&users=1&seed=7")).unwrap();
        assert_eq!(
            (r.samples, r.tolerance_pp, r.users, r.seed),
            (100, 2.0, true, Some(7))
        );
        assert_eq!(r.headers["xyz"], "3");
        assert_eq!(r.cidr.to_string(), DEFAULT_CIDR);
        assert!(Request::parse(Some("samples=0")).is_err());
        assert!(Request::parse(Some("samples=1000001")).is_err());
        assert!(Request::parse(Some("header=nocolon")).is_err());
        assert!(Request::parse(Some("cidr=10.0.0.0/33")).is_err());
    }

    #[test]
    fn addresses_stay_inside_the_network() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let net: IpNet = "10.20.0.0/16".parse().unwrap();
        assert!((0..1_000).all(|_| net.contains(&address_in(&net, &mut rng))));
        let net6: IpNet = "2001:db8::/64".parse().unwrap();
        assert!((0..100).all(|_| net6.contains(&address_in(&net6, &mut rng))));
        let one: IpNet = "192.0.2.7/32".parse().unwrap();
        assert_eq!(address_in(&one, &mut rng).to_string(), "192.0.2.7");
    }
}
