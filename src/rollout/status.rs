//! `GET /rollout`: the plan, where it is, the windows with their numbers and verdicts, and who
//! drives it, as one JSON document with a stable shape (docs/rollout.md lists every field; the
//! dashboard's rollout section reads it).

use serde_json::{json, Value};

use super::driver::{Command, RolloutState};
use super::plan::percent;
use super::{now_ms, Rollout, Source};

/// Shape version of the document; bumped only when a field changes meaning or goes away.
pub const VERSION: u32 = 1;

fn state_json(s: &RolloutState) -> Value {
    let (stage, step) = s.stage();
    json!({
        "plan_id": s.plan_id,
        "name": s.plan_name,
        "status": s.status.label(),
        "stage": stage,
        "step": step,
        "steps": s.steps,
        "percent": percent(s.percent_bp),
        "mirror_percent": percent(s.mirror_bp),
        "passes": s.passes,
        "passes_needed": s.passes_needed,
        "failures": s.failures,
        "failure_limit": s.failure_limit,
        "no_data_since_unix_ms": s.no_data_since_ms,
        "reason": s.reason,
        "rollback_check": s.rollback_check,
        "started_unix_ms": s.started_ms,
        "stage_started_unix_ms": s.stage_started_ms,
        "window": {"number": s.window, "started_unix_ms": s.window_started_ms},
        "updated_unix_ms": s.updated_ms,
        "driver": s.driver,
    })
}

/// The whole `/rollout` document.
pub fn to_json(r: &Rollout) -> Value {
    let v = r.view();
    let now = now_ms();
    let (mode, prefix) = match &r.settings.source {
        Source::Off => ("off", None),
        Source::Consul { prefix, .. } => ("consul", Some(prefix.clone())),
        Source::File { .. } => ("file", None),
    };
    let stale_after = u64::try_from(r.settings.publish_interval.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(10);
    json!({
        "version": VERSION,
        "mode": mode,
        "instance": r.instance,
        "driver": {
            "this_instance": v.driving,
            "holder": v.holder,
            "lock_key": prefix.as_ref().map(|p| format!("{p}lock")),
        },
        "plan": v.plan.as_ref().map(|(p, source)| {
            let mut j = p.to_json();
            j["source"] = json!(source);
            j
        }),
        "plan_errors": v.plan_errors.iter().map(|e| json!({
            "key": e.key, "value": e.value, "rule": e.rule, "text": e.to_string(),
        })).collect::<Vec<_>>(),
        "state": v.state.as_ref().map(state_json),
        "open_window": v.open_window,
        "windows": v.state.as_ref().map_or_else(Vec::new, |s| s.history.iter().map(|w| json!({
            "number": w.number,
            "stage": w.stage,
            "step": w.step,
            "percent": w.percent,
            "started_unix_ms": w.started_ms,
            "ended_unix_ms": w.ended_ms,
            "verdict": w.verdict,
            "failed_checks": w.failed_checks,
            "reason": w.reason,
            "base": w.base,
            "gray": w.gray,
            "z": w.z,
            "allowed_p99_ms": w.allowed_p99_ms,
            "instances": w.instances,
        })).collect()),
        "events": v.state.as_ref().map_or_else(Vec::new, |s| s.events.iter().map(|e| json!({
            "at_unix_ms": e.at_ms, "kind": e.kind, "message": e.message,
        })).collect()),
        "instances": v.instances.iter().map(|(name, at)| json!({
            "instance": name,
            "published_unix_ms": at,
            "age_ms": now.saturating_sub(*at),
            "stale": now.saturating_sub(*at) > stale_after,
        })).collect::<Vec<_>>(),
        "local": {
            "real": r.real.snapshot(),
            "mirror": r.mirrored.snapshot(),
        },
        "mirror": {
            "percent": percent(r.gate.share()),
            "in_flight": r.gate.in_flight(),
            "max_in_flight": r.gate.max_in_flight(),
        },
        "last_error": v.last_error,
    })
}

/// The admin listener's rollout routes: `GET /rollout`, `POST /rollout/<command>`,
/// `GET /simulate`. `None` for any other path.
pub async fn serve(
    r: &Rollout,
    gray: &crate::gray::GrayEngine,
    method: &http::Method,
    path: &str,
    query: Option<&str>,
) -> Option<(u16, Value)> {
    let get = method == http::Method::GET || method == http::Method::HEAD;
    match path {
        "/rollout" if get => Some((200, to_json(r))),
        "/rollout" => Some((
            405,
            json!({"error": "GET /rollout; commands are POST /rollout/<command>"}),
        )),
        "/simulate" if get => Some(match super::simulate::Request::parse(query) {
            Ok(req) => (200, super::simulate::run(gray, &req).await.to_json()),
            Err(e) => (400, json!({"error": e})),
        }),
        _ => {
            let name = path.strip_prefix("/rollout/")?;
            let Some(cmd) = Command::parse(name) else {
                return Some((
                    404,
                    json!({"error": format!(
                        "unknown command {name:?}: POST /rollout/pause, resume, abort or promote"
                    )}),
                ));
            };
            if method != http::Method::POST {
                return Some((
                    405,
                    json!({"error": format!("POST /rollout/{}", cmd.label())}),
                ));
            }
            Some(match r.command(cmd).await {
                Ok(message) => (
                    200,
                    json!({"ok": true, "command": cmd.label(), "message": message}),
                ),
                Err(e) => (
                    409,
                    json!({"ok": false, "command": cmd.label(), "error": e}),
                ),
            })
        }
    }
}
