//! `GET /decide?ip=..&user=..&path=..&header=name:value&cookie=name=value&query=a=1`: the gray
//! decision for a described request, with its reason, as JSON — a dry run that sends no traffic.
//! `ip` is taken as the client address (as if already resolved from trusted proxies).
//! `asset=1&pin=<pool>` describes an asset whose (valid) pin cookie names that pool.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use super::decision::Target;
use super::rules::query_param;
use super::{Client, GrayEngine};

/// Answers `/decide`; `Err` is a message for a 400.
pub async fn decide(engine: &GrayEngine, query: Option<&str>) -> Result<Value, String> {
    let q = query.unwrap_or("");
    let ip: IpAddr = match query_param(q, "ip") {
        Some(v) => super::client_ip::parse_ip(v.as_bytes())
            .ok_or(format!("ip={v:?} is not an IP address"))?,
        None => return Err("ip=<client address> is required".into()),
    };
    let mut headers = HeaderMap::new();
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = query_param(pair, k).unwrap_or_else(|| v.to_string());
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
                let value = HeaderValue::from_str(&v).map_err(|_| format!("bad cookie {v:?}"))?;
                headers.append(http::header::COOKIE, value);
            }
            _ => {}
        }
    }
    let user = query_param(q, "user").filter(|u| super::whitelist::valid_user(u));
    let path = query_param(q, "path").unwrap_or_else(|| "/".into());
    let request_query = query_param(q, "query");
    let client = Client { ip, user };
    let is_asset = query_param(q, "asset").is_some_and(|v| v == "1" || v == "true");
    let pin = query_param(q, "pin").map(|p| match p.as_str() {
        "base" => Target::Base,
        "gray" => Target::Gray,
        other => Target::Named(other.into()),
    });
    let d = engine
        .decide(
            &client,
            &headers,
            request_query.as_deref(),
            is_asset,
            pin.as_ref(),
        )
        .await;
    let decided = match &d.target {
        Target::Base => "base".to_string(),
        Target::Gray => "gray".to_string(),
        Target::Named(n) => n.to_string(),
    };
    let routed = engine.route(&path).map(|p| p.to_string());
    let sent: serde_json::Map<String, Value> = engine
        .headers_for(&decided)
        .iter()
        .map(|(n, v)| (n.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    let sw = engine.switches();
    Ok(json!({
        "client": {"ip": client.ip.to_string(), "user": client.user},
        "path": path,
        "decision": {"pool": decided, "reason": d.reason},
        "proxied_to": routed.clone().unwrap_or_else(|| decided.clone()),
        "route": routed,
        "upstream_headers": sent,
        "switches": {"enabled": sw.enabled, "all": sw.all, "percent": f64::from(sw.percent_bp) / 100.0},
        "asset": is_asset,
        "note": "pages are decided like this; an asset with a valid pin cookie follows its pin \
                 within pin.grace of its page (describe one with asset=1&pin=<pool>); past the \
                 grace it is decided like this and keeps the pin's build only for the same pool",
    }))
}
