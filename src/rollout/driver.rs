//! The driver's state machine: stages, windows, verdicts, operator commands, rollback. Pure: the
//! caller passes the time and the judged windows, and applies what [`RolloutState::targets`]
//! asks for (the percent switch, the mirror share). The state serialises to JSON: it is what the
//! driver stores in Consul (or the state file), so a restart or another driver resumes it.
//!
//! ```text
//! begin → [mirror] → step 1 → step 2 → … → last step ─► completed (a step at 100 % completes
//!          │            │ each stage: `passes_needed` passing windows       at once: nothing
//!          │            │ a failing window: failures += 1                    is left to compare)
//!          │            │ failures = failure_limit ─► rolled_back (percent 0, mirror 0)
//!          │            │ no data for hold_timeout ─► rolled_back
//!   pause ⇄ resume (windows are not judged while paused)   abort ─► aborted   promote ─► promoted
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::judge::{Judgement, Verdict};
use super::plan::{percent, Plan};
use super::windows::WindowTotals;

/// Windows and events kept in the state (and shown on `/rollout`).
pub const HISTORY: usize = 30;
pub const EVENTS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Paused,
    /// The last step was reached (and passed, unless it is 100 %).
    Completed,
    /// An operator sent everyone to gray.
    Promoted,
    RolledBack,
    Aborted,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::Promoted => "promoted",
            Status::RolledBack => "rolled_back",
            Status::Aborted => "aborted",
        }
    }

    pub const ALL: [Status; 6] = [
        Status::Running,
        Status::Paused,
        Status::Completed,
        Status::Promoted,
        Status::RolledBack,
        Status::Aborted,
    ];

    /// The plan is over; only a new plan starts anything again.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Running | Status::Paused)
    }
}

/// An operator command (the value of `<prefix>control`, or an admin POST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Abort,
    Promote,
}

impl Command {
    pub fn parse(text: &str) -> Option<Command> {
        match text.trim().trim_matches('"').to_ascii_lowercase().as_str() {
            "pause" => Some(Command::Pause),
            "resume" => Some(Command::Resume),
            "abort" => Some(Command::Abort),
            "promote" => Some(Command::Promote),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
            Command::Promote => "promote",
        }
    }
}

/// One side of a judged window, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SideSummary {
    pub requests: u64,
    pub failed: u64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
}

/// A judged window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    pub number: u64,
    /// `mirror` or `step`.
    pub stage: String,
    /// 1-based step number (0 in the mirror stage).
    pub step: usize,
    /// Gray's share during the window (the mirror share in the mirror stage).
    pub percent: f64,
    pub started_ms: u64,
    pub ended_ms: u64,
    /// `pass`, `fail` or `no_data`.
    pub verdict: String,
    /// Failed checks: `errors`, `latency`.
    pub failed_checks: Vec<String>,
    pub reason: String,
    pub base: SideSummary,
    /// Gray's real traffic, or its mirrored copies in the mirror stage.
    pub gray: SideSummary,
    pub z: Option<f64>,
    pub allowed_p99_ms: Option<f64>,
    /// Instance → {"base": n, "gray": n} real requests it served in the window.
    pub instances: BTreeMap<String, BTreeMap<String, u64>>,
}

/// A line of the rollout's story (also logged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    /// `start`, `step`, `verdict`, `pause`, `resume`, `abort`, `promote`, `rollback`,
    /// `complete`, `ignored`.
    pub kind: String,
    pub message: String,
}

/// Where a plan is, stored as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// Which plan this is the state of (`consul:<ModifyIndex>` or `file:<hash>`).
    pub plan_id: String,
    pub plan_name: Option<String>,
    /// The plan itself, as written: whoever drives next resumes it even if the plan key or
    /// file has been replaced by something invalid meanwhile.
    pub plan_text: String,
    pub status: Status,
    /// In the mirror stage (before the first step).
    pub mirroring: bool,
    /// Index of the current step (meaningless while `mirroring`).
    pub step_index: usize,
    pub steps: usize,
    /// What every instance should do now (derived from the above; stored for followers).
    pub percent_bp: u32,
    pub mirror_bp: u32,
    pub passes: u32,
    pub passes_needed: u32,
    pub failures: u32,
    pub failure_limit: u32,
    /// Start of the current run of no-data windows.
    pub no_data_since_ms: Option<u64>,
    pub started_ms: u64,
    pub stage_started_ms: u64,
    pub window: u64,
    pub window_started_ms: u64,
    /// `ModifyIndex` of the last operator command handled.
    pub control_index: u64,
    pub reason: Option<String>,
    /// The check behind a rollback: `errors`, `latency` or `no_data`.
    pub rollback_check: Option<String>,
    pub updated_ms: u64,
    /// The instance that wrote this state.
    pub driver: String,
    pub history: Vec<WindowRecord>,
    pub events: Vec<Event>,
}

impl RolloutState {
    /// A new plan starts: the mirror stage if it has one, else the first step.
    pub fn begin(
        plan_id: String,
        plan: &Plan,
        plan_text: &str,
        now_ms: u64,
        control_index: u64,
        driver: &str,
    ) -> (RolloutState, Vec<Event>) {
        let mut s = RolloutState {
            plan_id,
            plan_name: plan.name.clone(),
            plan_text: plan_text.to_string(),
            status: Status::Running,
            mirroring: plan.mirror.is_some(),
            step_index: 0,
            steps: plan.steps.len(),
            percent_bp: 0,
            mirror_bp: 0,
            passes: 0,
            passes_needed: 1,
            failures: 0,
            failure_limit: plan.failure_limit,
            no_data_since_ms: None,
            started_ms: now_ms,
            stage_started_ms: now_ms,
            window: 1,
            window_started_ms: now_ms,
            control_index,
            reason: None,
            rollback_check: None,
            updated_ms: now_ms,
            driver: driver.to_string(),
            history: Vec::new(),
            events: Vec::new(),
        };
        let mut events = vec![s.note(
            now_ms,
            "start",
            format!(
                "plan {} started: steps {:?} %",
                s.plan_label(),
                plan.steps.iter().map(|bp| percent(*bp)).collect::<Vec<_>>()
            ),
        )];
        events.extend(s.enter_stage(plan, now_ms));
        (s, events)
    }

    fn plan_label(&self) -> String {
        match &self.plan_name {
            Some(n) => format!("{n:?} ({})", self.plan_id),
            None => self.plan_id.clone(),
        }
    }

    /// The percent switch and mirror share every instance should follow.
    pub fn targets(&self, plan: &Plan) -> (u32, u32) {
        let step = plan.steps.get(self.step_index).copied().unwrap_or(0);
        match self.status {
            Status::Running | Status::Paused if self.mirroring => {
                (0, plan.mirror.as_ref().map_or(0, |m| m.percent_bp))
            }
            Status::Running | Status::Paused | Status::Completed => (step, 0),
            Status::Promoted => (10_000, 0),
            Status::RolledBack | Status::Aborted => (0, 0),
        }
    }

    /// A window is due for judging.
    pub fn window_due(&self, plan: &Plan, now_ms: u64) -> bool {
        self.status == Status::Running
            && now_ms.saturating_sub(self.window_started_ms)
                >= u64::try_from(plan.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// The stage label and 1-based step of the current stage.
    pub fn stage(&self) -> (&'static str, usize) {
        if self.mirroring {
            ("mirror", 0)
        } else {
            ("step", self.step_index + 1)
        }
    }

    /// Adds a line to the story (kept in the state, shown on `/rollout`) and returns it for the log.
    pub fn note(&mut self, at_ms: u64, kind: &str, message: String) -> Event {
        let e = Event {
            at_ms,
            kind: kind.to_string(),
            message,
        };
        self.events.push(e.clone());
        if self.events.len() > EVENTS {
            let extra = self.events.len() - EVENTS;
            self.events.drain(..extra);
        }
        self.updated_ms = self.updated_ms.max(at_ms);
        e
    }

    fn new_window(&mut self, now_ms: u64) {
        self.window += 1;
        self.window_started_ms = now_ms;
    }

    /// Starts the current stage (`mirroring` / `step_index` already set).
    fn enter_stage(&mut self, plan: &Plan, now_ms: u64) -> Vec<Event> {
        self.stage_started_ms = now_ms;
        self.passes = 0;
        self.no_data_since_ms = None;
        self.window_started_ms = now_ms;
        let mut events = Vec::new();
        if self.mirroring {
            let m = plan.mirror.as_ref();
            self.passes_needed = m.map_or(1, |m| plan.passes_needed(m.duration));
            events.push(self.note(
                now_ms,
                "step",
                format!(
                    "mirror stage: {} % of base page loads copied to gray, no user on gray; \
                     {} passing window(s) needed",
                    percent(m.map_or(0, |m| m.percent_bp)),
                    self.passes_needed
                ),
            ));
        } else {
            let bp = plan.steps.get(self.step_index).copied().unwrap_or(0);
            self.passes_needed = plan.passes_needed(plan.step_duration);
            if bp >= 10_000 {
                self.status = Status::Completed;
                events.push(self.note(
                    now_ms,
                    "complete",
                    format!(
                        "step {}/{}: gray at 100 %; plan {} completed",
                        self.step_index + 1,
                        self.steps,
                        self.plan_label()
                    ),
                ));
            } else {
                events.push(self.note(
                    now_ms,
                    "step",
                    format!(
                        "step {}/{}: gray at {} %; {} passing window(s) needed",
                        self.step_index + 1,
                        self.steps,
                        percent(bp),
                        self.passes_needed
                    ),
                ));
            }
        }
        let (p, m) = self.targets(plan);
        self.percent_bp = p;
        self.mirror_bp = m;
        events
    }

    /// The next stage after enough passing windows.
    fn advance(&mut self, plan: &Plan, now_ms: u64) -> Vec<Event> {
        if self.mirroring {
            self.mirroring = false;
            self.step_index = 0;
            return self.enter_stage(plan, now_ms);
        }
        if self.step_index + 1 < plan.steps.len() {
            self.step_index += 1;
            return self.enter_stage(plan, now_ms);
        }
        self.status = Status::Completed;
        let (p, m) = self.targets(plan);
        self.percent_bp = p;
        self.mirror_bp = m;
        let message = format!(
            "plan {} completed at its last step ({} %)",
            self.plan_label(),
            percent(p)
        );
        vec![self.note(now_ms, "complete", message)]
    }

    fn roll_back(&mut self, plan: &Plan, now_ms: u64, check: &str, why: String) -> Event {
        self.status = Status::RolledBack;
        self.rollback_check = Some(check.to_string());
        self.reason = Some(why.clone());
        let (p, m) = self.targets(plan);
        self.percent_bp = p;
        self.mirror_bp = m;
        self.note(
            now_ms,
            "rollback",
            format!("rolled back: {why}; gray at 0 %"),
        )
    }

    /// Builds the record of the window that ends now.
    pub fn record(
        &self,
        plan: &Plan,
        totals: &WindowTotals,
        base: &super::judge::Side,
        gray: &super::judge::Side,
        j: &Judgement,
        now_ms: u64,
    ) -> WindowRecord {
        let summary = |s: &super::judge::Side| SideSummary {
            requests: s.requests,
            failed: s.failed,
            error_rate: s.error_rate(),
            p99_ms: s.p99_ms(),
        };
        let (stage, step) = self.stage();
        let (p, m) = self.targets(plan);
        WindowRecord {
            number: self.window,
            stage: stage.to_string(),
            step,
            percent: percent(if self.mirroring { m } else { p }),
            started_ms: self.window_started_ms,
            ended_ms: now_ms,
            verdict: j.verdict.label().to_string(),
            failed_checks: j.failed.iter().map(|c| c.label().to_string()).collect(),
            reason: j.reason.clone(),
            base: summary(base),
            gray: summary(gray),
            z: j.z.filter(|z| z.is_finite()),
            allowed_p99_ms: j.allowed_p99_ms,
            instances: totals
                .instances
                .iter()
                .map(|(name, (b, g))| {
                    (
                        name.clone(),
                        BTreeMap::from([("base".to_string(), *b), ("gray".to_string(), *g)]),
                    )
                })
                .collect(),
        }
    }

    /// A judged window: counts it, and moves on, holds or rolls back.
    pub fn on_window(
        &mut self,
        plan: &Plan,
        rec: WindowRecord,
        verdict: Verdict,
        failed_check: Option<&str>,
        now_ms: u64,
    ) -> Vec<Event> {
        if self.status != Status::Running {
            return Vec::new();
        }
        let (stage, step) = self.stage();
        let where_ = if stage == "mirror" {
            "mirror stage".to_string()
        } else {
            format!("step {step}/{}", self.steps)
        };
        let started = rec.started_ms;
        let ended = rec.ended_ms;
        let reason = rec.reason.clone();
        let number = rec.number;
        self.history.push(rec);
        if self.history.len() > HISTORY {
            let extra = self.history.len() - HISTORY;
            self.history.drain(..extra);
        }
        self.new_window(now_ms);
        let mut events = Vec::new();
        match verdict {
            Verdict::Pass => {
                self.passes += 1;
                self.no_data_since_ms = None;
                let msg = format!(
                    "window {number} ({where_}): pass {}/{}: {reason}",
                    self.passes, self.passes_needed
                );
                events.push(self.note(now_ms, "verdict", msg));
                if self.passes >= self.passes_needed {
                    events.extend(self.advance(plan, now_ms));
                }
            }
            Verdict::Fail => {
                self.failures += 1;
                self.no_data_since_ms = None;
                let msg = format!(
                    "window {number} ({where_}): FAIL {}/{}: {reason}",
                    self.failures, self.failure_limit
                );
                events.push(self.note(now_ms, "verdict", msg));
                if self.failures >= self.failure_limit {
                    let why = format!(
                        "{} failed window(s) (failure_limit {}) at {where_}; last: {reason}",
                        self.failures, self.failure_limit
                    );
                    let check = failed_check.unwrap_or("errors");
                    events.push(self.roll_back(plan, now_ms, check, why));
                }
            }
            Verdict::NoData => {
                let since = *self.no_data_since_ms.get_or_insert(started);
                let held = ended.saturating_sub(since);
                let limit = u64::try_from(plan.hold_timeout.as_millis()).unwrap_or(u64::MAX);
                let msg = format!(
                    "window {number} ({where_}): no data, holding for {} s: {reason}",
                    held / 1000
                );
                events.push(self.note(now_ms, "verdict", msg));
                if held >= limit {
                    let why = format!(
                        "no data for {} s at {where_} (hold_timeout {}); last: {reason}",
                        held / 1000,
                        crate::config::duration::format(plan.hold_timeout)
                    );
                    events.push(self.roll_back(plan, now_ms, "no_data", why));
                }
            }
        }
        events
    }

    /// An operator command with the `ModifyIndex` it was written at (older ones are ignored:
    /// they were handled, or were written before this plan began).
    pub fn on_control(
        &mut self,
        plan: &Plan,
        cmd: Command,
        index: u64,
        now_ms: u64,
    ) -> Option<Event> {
        if index <= self.control_index {
            return None;
        }
        self.control_index = index;
        let before = self.status;
        match (cmd, before) {
            (Command::Pause, Status::Running) => {
                self.status = Status::Paused;
            }
            (Command::Resume, Status::Paused) => {
                self.status = Status::Running;
                self.no_data_since_ms = None;
                self.new_window(now_ms);
            }
            (Command::Abort, Status::Running | Status::Paused) => {
                self.status = Status::Aborted;
                self.reason = Some("aborted by the operator".into());
            }
            (Command::Promote, Status::Running | Status::Paused) => {
                self.status = Status::Promoted;
                self.reason = Some("promoted by the operator".into());
            }
            _ => {
                let msg = format!("{} ignored: the plan is {}", cmd.label(), before.label());
                return Some(self.note(now_ms, "ignored", msg));
            }
        }
        let (p, m) = self.targets(plan);
        self.percent_bp = p;
        self.mirror_bp = m;
        let msg = format!(
            "{} by the operator: {} → {}; gray at {} %",
            cmd.label(),
            before.label(),
            self.status.label(),
            percent(p)
        );
        Some(self.note(now_ms, cmd.label(), msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::judge::{judge, Side, BUCKETS};
    use crate::rollout::plan;

    fn plan(text: &str) -> Plan {
        plan::parse(text).unwrap()
    }

    fn side(requests: u64, failed: u64) -> Side {
        let mut latency = vec![0; BUCKETS];
        latency[2] = requests;
        Side {
            requests,
            failed,
            latency,
        }
    }

    /// Judges a window with these counts and feeds it to the state, `ms` after the window began.
    fn window(s: &mut RolloutState, p: &Plan, base: Side, gray: Side, ms: u64) -> Vec<Event> {
        let now = s.window_started_ms + ms;
        let j = judge(&base, &gray, &p.analysis);
        let rec = s.record(p, &WindowTotals::default(), &base, &gray, &j, now);
        let check = j.failed.first().map(|c| c.label());
        s.on_window(p, rec, j.verdict, check, now)
    }

    const P: &str = r#"{"steps": [10, 50, 100], "step_duration": "2s", "window": "1s",
        "failure_limit": 2, "hold_timeout": "3s", "analysis": {"min_requests": 50}}"#;

    #[test]
    fn healthy_windows_walk_every_step_to_completion() {
        let p = plan(P);
        let (mut s, events) = RolloutState::begin("consul:7".into(), &p, "{}", 1_000, 3, "a");
        assert_eq!(events.len(), 2);
        assert_eq!((s.percent_bp, s.passes_needed), (1_000, 2));
        let mut percents = vec![s.percent_bp];
        for _ in 0..4 {
            window(&mut s, &p, side(500, 0), side(100, 0), 1_000);
            if percents.last() != Some(&s.percent_bp) {
                percents.push(s.percent_bp);
            }
        }
        assert_eq!(percents, vec![1_000, 5_000, 10_000]);
        assert_eq!(s.status, Status::Completed);
        assert_eq!(s.history.len(), 4);
        assert!(s.history.iter().all(|w| w.verdict == "pass"));
        assert_eq!(s.targets(&p), (10_000, 0));
        // Nothing moves any more.
        assert!(window(&mut s, &p, side(500, 0), side(100, 50), 1_000).is_empty());
        assert!(!s.window_due(&p, u64::MAX));
    }

    #[test]
    fn failure_limit_failed_windows_roll_back_to_zero() {
        let p = plan(P);
        let (mut s, _) = RolloutState::begin("consul:7".into(), &p, "{}", 0, 0, "a");
        window(&mut s, &p, side(500, 0), side(100, 0), 1_000);
        let e = window(&mut s, &p, side(500, 0), side(100, 5), 1_000);
        assert_eq!((s.status, s.failures, s.passes), (Status::Running, 1, 1));
        assert!(e[0].message.contains("FAIL 1/2"), "{e:?}");
        let e = window(&mut s, &p, side(500, 0), side(100, 6), 1_000);
        assert_eq!(s.status, Status::RolledBack);
        assert_eq!(s.targets(&p), (0, 0));
        assert_eq!((s.percent_bp, s.mirror_bp), (0, 0));
        assert_eq!(s.rollback_check.as_deref(), Some("errors"));
        assert_eq!(e.last().unwrap().kind, "rollback");
        assert!(s.reason.as_deref().unwrap().contains("2 failed window(s)"));
        assert_eq!(s.step_index, 0, "never advanced");
    }

    #[test]
    fn no_data_holds_and_then_times_out() {
        let p = plan(P);
        let (mut s, _) = RolloutState::begin("consul:7".into(), &p, "{}", 0, 0, "a");
        for _ in 0..2 {
            window(&mut s, &p, side(500, 0), side(10, 10), 1_000);
            assert_eq!((s.status, s.failures, s.passes), (Status::Running, 0, 0));
        }
        // A pass in between resets the hold.
        window(&mut s, &p, side(500, 0), side(100, 0), 1_000);
        assert_eq!(s.no_data_since_ms, None);
        window(&mut s, &p, side(500, 0), side(10, 0), 1_000);
        window(&mut s, &p, side(500, 0), side(10, 0), 1_000);
        assert_eq!(s.status, Status::Running);
        window(&mut s, &p, side(500, 0), side(10, 0), 1_000);
        assert_eq!(s.status, Status::RolledBack);
        assert_eq!(s.rollback_check.as_deref(), Some("no_data"));
        assert_eq!(s.failures, 0, "holding is no failure");
    }

    #[test]
    fn the_mirror_stage_comes_first_and_sends_no_user_to_gray() {
        let p = plan(
            r#"{"steps": [20, 100], "step_duration": "1s", "window": "1s",
                "mirror": {"percent": 50, "duration": "2s"}, "analysis": {"min_requests": 1}}"#,
        );
        let (mut s, _) = RolloutState::begin("file:x".into(), &p, "{}", 0, 0, "a");
        assert_eq!((s.stage(), s.targets(&p)), (("mirror", 0), (0, 5_000)));
        window(&mut s, &p, side(10, 0), side(10, 0), 1_000);
        assert!(s.mirroring);
        window(&mut s, &p, side(10, 0), side(10, 0), 1_000);
        assert_eq!((s.stage(), s.targets(&p)), (("step", 1), (2_000, 0)));
        assert_eq!(s.history[0].stage, "mirror");
        assert_eq!(s.history[0].percent, 50.0);
    }

    #[test]
    fn commands_pause_resume_abort_promote_once_each() {
        let p = plan(P);
        let (mut s, _) = RolloutState::begin("consul:7".into(), &p, "{}", 0, 10, "a");
        assert!(
            s.on_control(&p, Command::Abort, 10, 5).is_none(),
            "a command written before the plan began is not for it"
        );
        let e = s.on_control(&p, Command::Pause, 11, 5).unwrap();
        assert_eq!((s.status, e.kind.as_str()), (Status::Paused, "pause"));
        assert!(!s.window_due(&p, 1_000_000), "no windows while paused");
        assert!(
            s.on_control(&p, Command::Pause, 11, 6).is_none(),
            "handled once"
        );
        s.on_control(&p, Command::Resume, 12, 7_000).unwrap();
        assert_eq!((s.status, s.window_started_ms), (Status::Running, 7_000));
        s.on_control(&p, Command::Promote, 13, 8_000).unwrap();
        assert_eq!((s.status, s.targets(&p)), (Status::Promoted, (10_000, 0)));
        let e = s.on_control(&p, Command::Abort, 14, 9_000).unwrap();
        assert_eq!((s.status, e.kind.as_str()), (Status::Promoted, "ignored"));
        let (mut s, _) = RolloutState::begin("consul:8".into(), &p, "{}", 0, 0, "a");
        s.on_control(&p, Command::Abort, 1, 1).unwrap();
        assert_eq!((s.status, s.targets(&p)), (Status::Aborted, (0, 0)));
    }

    #[test]
    fn the_state_round_trips_as_json() {
        let p = plan(P);
        let (mut s, _) = RolloutState::begin("consul:7".into(), &p, "{}", 0, 0, "web1:9901");
        window(&mut s, &p, side(500, 0), side(100, 0), 1_000);
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"status\":\"running\""), "{text}");
        assert_eq!(serde_json::from_str::<RolloutState>(&text).unwrap(), s);
        assert_eq!(Command::parse(" Abort\n"), Some(Command::Abort));
        assert_eq!(Command::parse("\"pause\""), Some(Command::Pause));
        assert_eq!(Command::parse("stop"), None);
    }
}
