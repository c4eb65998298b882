//! One window's judgement, shared by the fleet and the single-instance driver (pure): the counts
//! of every instance between the window's start and now, gray against base (mirrored copies
//! against base in the mirror stage), the verdict applied to the state.

use std::collections::BTreeMap;

use super::driver::{Command, Event, RolloutState, Status};
use super::judge::{self, Verdict};
use super::plan::Plan;
use super::windows::{self, Published, WindowTotals};

/// What closing a window did.
#[derive(Debug)]
pub struct Closed {
    pub verdict: Verdict,
    /// The first failed check, if the window failed.
    pub failed_check: Option<&'static str>,
    pub events: Vec<Event>,
}

/// The counts of the open window so far, as `/rollout` shows them.
pub fn open_window(
    state: &RolloutState,
    start: &BTreeMap<String, Published>,
    now: &BTreeMap<String, Published>,
) -> serde_json::Value {
    let totals = windows::window_delta(start, now, state.window_started_ms);
    let (base, gray) = sides(state, &totals);
    serde_json::json!({
        "number": state.window,
        "started_unix_ms": state.window_started_ms,
        "base": {"requests": base.requests, "failed": base.failed},
        "gray": {"requests": gray.requests, "failed": gray.failed},
        "instances": totals.instances.len(),
    })
}

/// Base's real traffic, and gray's real traffic or (in the mirror stage) its mirrored copies.
fn sides(state: &RolloutState, totals: &WindowTotals) -> (judge::Side, judge::Side) {
    let base = windows::side(&totals.real, crate::config::BASE_POOL);
    let gray = if state.mirroring {
        windows::side(&totals.mirror, "gray")
    } else {
        windows::side(&totals.real, "gray")
    };
    (base, gray)
}

/// Judges the window that ends at `now_ms` and feeds the verdict to the state.
pub fn close_window(
    state: &mut RolloutState,
    plan: &Plan,
    start: &BTreeMap<String, Published>,
    now: &BTreeMap<String, Published>,
    now_ms: u64,
) -> Closed {
    let totals = windows::window_delta(start, now, state.window_started_ms);
    let (base, gray) = sides(state, &totals);
    let j = judge::judge(&base, &gray, &plan.analysis);
    let rec = state.record(plan, &totals, &base, &gray, &j, now_ms);
    let failed_check = j.failed.first().map(|c| c.label());
    let events = state.on_window(plan, rec, j.verdict, failed_check, now_ms);
    Closed {
        verdict: j.verdict,
        failed_check,
        events,
    }
}

/// The records at the start of the open window, and which window that is.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub plan_id: String,
    pub window: u64,
    pub records: BTreeMap<String, Published>,
}

/// An operator command as read: parsed (or not), its raw text, its index.
#[derive(Debug, Clone)]
pub struct Written {
    pub command: Option<Command>,
    pub raw: String,
    pub index: u64,
}

/// What one tick did.
#[derive(Debug, Default)]
pub struct Advanced {
    pub events: Vec<Event>,
    pub verdict: Option<Verdict>,
    /// The check behind a rollback decided in this tick.
    pub rollback: Option<String>,
    pub commands: Vec<Command>,
}

/// One tick of a driver (pure): applies new commands, keeps the window's baseline (a driver that
/// has none — it just started or took over — starts a fresh window now, as it cannot know what
/// the previous one counted), and judges the window when it is due.
pub fn advance(
    state: &mut RolloutState,
    plan: &Plan,
    baseline: &mut Option<Baseline>,
    records: &BTreeMap<String, Published>,
    commands: &[Written],
    now_ms: u64,
) -> Advanced {
    let mut out = Advanced::default();
    let status_before = state.status;
    for w in commands {
        if w.index <= state.control_index {
            continue;
        }
        match w.command {
            Some(cmd) => {
                if let Some(e) = state.on_control(plan, cmd, w.index, now_ms) {
                    if e.kind == cmd.label() {
                        out.commands.push(cmd);
                    }
                    out.events.push(e);
                }
            }
            None => {
                state.control_index = w.index;
                out.events.push(state.note(
                    now_ms,
                    "ignored",
                    format!(
                        "command {:?} ignored: expected pause, resume, abort or promote",
                        w.raw.chars().take(40).collect::<String>()
                    ),
                ));
            }
        }
    }
    let current = baseline
        .as_ref()
        .is_some_and(|b| b.plan_id == state.plan_id && b.window == state.window);
    if !current {
        let took_over = baseline.is_none() && state.started_ms != now_ms;
        if took_over && !state.status.is_final() {
            let (stage, step) = state.stage();
            let msg = format!(
                "resuming plan {} ({}) at {} {step}/{}: {}/{} passes, {}/{} failures; a fresh \
                 window starts now",
                state.plan_id,
                state.status.label(),
                stage,
                state.steps,
                state.passes,
                state.passes_needed,
                state.failures,
                state.failure_limit
            );
            out.events.push(state.note(now_ms, "resume", msg));
        }
        if !state.status.is_final() {
            state.window_started_ms = now_ms;
        }
        *baseline = Some(Baseline {
            plan_id: state.plan_id.clone(),
            window: state.window,
            records: records.clone(),
        });
    }
    if state.window_due(plan, now_ms) {
        if let Some(b) = baseline.as_ref() {
            let closed = close_window(state, plan, &b.records, records, now_ms);
            out.verdict = Some(closed.verdict);
            out.events.extend(closed.events);
        }
        *baseline = Some(Baseline {
            plan_id: state.plan_id.clone(),
            window: state.window,
            records: records.clone(),
        });
    }
    if state.status == Status::RolledBack && status_before != Status::RolledBack {
        out.rollback = state.rollback_check.clone();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::judge::BUCKETS;
    use crate::rollout::plan;
    use crate::rollout::windows::{Snapshot, Totals};

    fn record(instance: &str, base: u64, gray: u64, gray_failed: u64, mirror: u64) -> Published {
        let t = |requests, failed| Totals {
            requests,
            failed,
            latency: {
                let mut l = vec![0; BUCKETS];
                l[1] = requests;
                l
            },
            ..Totals::default()
        };
        let mut real = Snapshot::new();
        real.entry("base".into())
            .or_default()
            .insert("b".into(), t(base, 0));
        real.entry("gray".into())
            .or_default()
            .insert("g".into(), t(gray, gray_failed));
        let mut mirrored = Snapshot::new();
        mirrored
            .entry("gray".into())
            .or_default()
            .insert("g".into(), t(mirror, 0));
        Published {
            v: 1,
            instance: instance.into(),
            boot: "1".into(),
            started_ms: 0,
            at_ms: 0,
            real,
            mirror: mirrored,
        }
    }

    fn fleet(list: Vec<Published>) -> BTreeMap<String, Published> {
        list.into_iter().map(|p| (p.instance.clone(), p)).collect()
    }

    #[test]
    fn the_fleet_window_is_the_sum_of_instances_that_alone_would_hold() {
        let p = plan::parse(
            r#"{"steps": [20, 100], "step_duration": "1s", "window": "1s",
                "analysis": {"min_requests": 50}}"#,
        )
        .unwrap();
        let (mut s, _) = RolloutState::begin("consul:1".into(), &p, "{}", 1_000, 0, "a");
        let start = fleet(vec![record("a", 0, 0, 0, 0), record("b", 0, 0, 0, 0)]);
        let now = fleet(vec![record("a", 100, 30, 0, 0), record("b", 100, 30, 0, 0)]);
        let closed = close_window(&mut s, &p, &start, &now, 2_000);
        assert_eq!(closed.verdict, Verdict::Pass);
        let w = &s.history[0];
        assert_eq!((w.gray.requests, w.base.requests), (60, 200));
        assert_eq!(w.instances["a"]["gray"], 30);
        assert_eq!(w.instances["b"]["gray"], 30);
        assert_eq!(s.percent_bp, 10_000, "passed the only judged step");
    }

    #[test]
    fn the_mirror_stage_judges_the_copies() {
        let p = plan::parse(
            r#"{"steps": [20], "step_duration": "1s", "window": "1s",
                "mirror": {"percent": 50, "duration": "1s"}, "analysis": {"min_requests": 10}}"#,
        )
        .unwrap();
        let (mut s, _) = RolloutState::begin("consul:1".into(), &p, "{}", 1_000, 0, "a");
        let start = fleet(vec![record("a", 0, 0, 0, 0)]);
        // No real gray traffic at all, 40 copies: judged on the copies.
        let now = fleet(vec![record("a", 100, 0, 0, 40)]);
        assert_eq!(open_window(&s, &start, &now)["gray"]["requests"], 40);
        let closed = close_window(&mut s, &p, &start, &now, 2_000);
        assert_eq!(closed.verdict, Verdict::Pass);
        assert_eq!(s.history[0].gray.requests, 40);
        assert_eq!(s.history[0].stage, "mirror");
        assert!(!s.mirroring);
    }

    #[test]
    fn a_new_driver_resumes_the_step_with_a_fresh_window() {
        let p = plan::parse(
            r#"{"steps": [20, 50, 100], "step_duration": "3s", "window": "1s",
                "analysis": {"min_requests": 10}}"#,
        )
        .unwrap();
        let (mut s, _) = RolloutState::begin("consul:1".into(), &p, "{}", 1_000, 0, "a");
        let mut base = None;
        let r0 = fleet(vec![record("a", 0, 0, 0, 0)]);
        let out = advance(&mut s, &p, &mut base, &r0, &[], 1_000);
        assert!(out.events.is_empty(), "just begun: no resume note");
        let r1 = fleet(vec![record("a", 100, 30, 0, 0)]);
        let out = advance(&mut s, &p, &mut base, &r1, &[], 2_000);
        assert_eq!(out.verdict, Some(Verdict::Pass));
        assert_eq!((s.step_index, s.passes), (0, 1));
        // Another driver takes over with what is in the state, and no baseline.
        let mut s2: RolloutState =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        let mut base2 = None;
        let r2 = fleet(vec![record("a", 500, 200, 100, 0)]);
        let out = advance(&mut s2, &p, &mut base2, &r2, &[], 9_000);
        assert_eq!(out.events[0].kind, "resume");
        assert_eq!(
            out.verdict, None,
            "the counts before the takeover are not judged"
        );
        assert_eq!(
            (s2.step_index, s2.passes, s2.window_started_ms),
            (0, 1, 9_000)
        );
        let r3 = fleet(vec![record("a", 600, 230, 100, 0)]);
        let out = advance(&mut s2, &p, &mut base2, &r3, &[], 10_000);
        assert_eq!(out.verdict, Some(Verdict::Pass));
        assert_eq!((s2.step_index, s2.passes), (0, 2));
        assert_eq!(s2.history.last().unwrap().gray.requests, 30);
    }

    #[test]
    fn commands_are_applied_once_and_unknown_ones_are_noted() {
        let p = plan::parse(r#"{"steps": [20], "step_duration": "1s", "window": "1s"}"#).unwrap();
        let (mut s, _) = RolloutState::begin("consul:1".into(), &p, "{}", 1_000, 5, "a");
        let mut base = None;
        let r = fleet(vec![record("a", 0, 0, 0, 0)]);
        let cmds = [
            Written {
                command: Some(Command::Abort),
                raw: "abort".into(),
                index: 5,
            },
            Written {
                command: None,
                raw: "stop!".into(),
                index: 6,
            },
            Written {
                command: Some(Command::Pause),
                raw: "pause".into(),
                index: 7,
            },
        ];
        let out = advance(&mut s, &p, &mut base, &r, &cmds, 1_000);
        assert_eq!(out.commands, vec![Command::Pause]);
        assert_eq!(s.status, Status::Paused);
        assert!(
            out.events[0].message.contains("\"stop!\" ignored"),
            "{:?}",
            out.events
        );
        let out = advance(&mut s, &p, &mut base, &r, &cmds, 1_500);
        assert!(out.events.is_empty() && out.commands.is_empty());
    }

    #[test]
    fn a_failing_window_names_its_check() {
        let p = plan::parse(
            r#"{"steps": [20], "step_duration": "1s", "window": "1s", "failure_limit": 1,
                "analysis": {"min_requests": 50}}"#,
        )
        .unwrap();
        let (mut s, _) = RolloutState::begin("consul:1".into(), &p, "{}", 1_000, 0, "a");
        let start = fleet(vec![record("a", 0, 0, 0, 0)]);
        let now = fleet(vec![record("a", 400, 100, 10, 0)]);
        let closed = close_window(&mut s, &p, &start, &now, 2_000);
        assert_eq!(
            (closed.verdict, closed.failed_check),
            (Verdict::Fail, Some("errors"))
        );
        assert_eq!(s.status, crate::rollout::driver::Status::RolledBack);
    }
}
