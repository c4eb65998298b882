//! Consul mode: every instance publishes its window counters; one of them (the lock holder)
//! drives the plan. Keys under the rollout prefix (default `graysplit/rollout/`):
//!
//! | key | written by | holds |
//! | --- | --- | --- |
//! | `plan` | the operator | the plan (JSON, see [`super::plan`]); a new PUT starts a new rollout |
//! | `control` | the operator (or `POST /rollout/<command>`) | `pause`, `resume`, `abort` or `promote` |
//! | `state` | the driver (`?cas=`) | [`super::driver::RolloutState`] as JSON |
//! | `lock` | the driver (`?acquire=`) | the driver's instance name; its `Session` is the lock |
//!
//! and, in a sibling folder (`graysplit/rollout-windows/` for the prefix `graysplit/rollout/`),
//! `<instance>`: each instance's [`super::windows::Published`] counters, every
//! `publish_interval`. They live apart so that every instance can watch the rollout folder with a
//! blocking query that wakes only when the plan, a command, the state or the lock changes —
//! followers cost Consul one held query each, and react at once to a command or a lost lock —
//! while only the driver reads the counters.
//!
//! The step goes to `<gray.consul_prefix>percent`, the switch every instance already follows
//! within milliseconds; the mirror share goes with the state. Consul unreachable: nothing is
//! written, every instance keeps the percent it has.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};

use super::consul_api::{ConsulApi, Entry, Put};
use super::driver::{Command, RolloutState, Status};
use super::lock::{Lock, Role};
use super::plan::{self, Plan};
use super::tick::{self, Baseline, Written};
use super::windows::Published;
use super::{log_events, now_ms, Rollout, View};
use crate::config::ConfigError;
use crate::gray::GrayEngine;

/// The percent switch's value as written (`12.5`, `100`).
pub fn percent_text(bp: u32) -> String {
    format!("{}", f64::from(bp) / 100.0)
}

/// The folder of the instances' counters, next to the rollout folder.
pub fn windows_folder(prefix: &str) -> String {
    format!("{}-windows/", prefix.trim_end_matches('/'))
}

pub struct Fleet {
    rollout: Arc<Rollout>,
    gray: Arc<GrayEngine>,
    prefix: String,
    windows_prefix: String,
    /// Index of the next blocking query on the rollout folder.
    index: u64,
    switches_prefix: String,
    lock: Lock,
    last_publish: Option<Instant>,
    baseline: Option<Baseline>,
    /// `ModifyIndex` of the plan key last read, and what it held.
    plan_read: Option<(u64, Result<(), Vec<ConfigError>>)>,
    /// The plan the current state runs, parsed once per plan id.
    running_plan: Option<(String, Plan)>,
    /// A percent that must still be written (a final status the write of which failed).
    pending_percent: Option<u32>,
    driving: bool,
    /// The last problem of each kind, logged once until it clears.
    failing: BTreeMap<&'static str, String>,
}

impl Fleet {
    pub fn new(
        rollout: Arc<Rollout>,
        gray: Arc<GrayEngine>,
        prefix: String,
        switches_prefix: String,
    ) -> Fleet {
        let s = &rollout.settings;
        let lock = Lock::new(
            format!("{prefix}lock"),
            rollout.instance.clone(),
            s.session_ttl,
            s.lock_delay,
        );
        Fleet {
            rollout,
            gray,
            windows_prefix: windows_folder(&prefix),
            index: 0,
            prefix,
            switches_prefix,
            lock,
            last_publish: None,
            baseline: None,
            plan_read: None,
            running_plan: None,
            pending_percent: None,
            driving: false,
            failing: BTreeMap::new(),
        }
    }

    pub async fn run(mut self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some(api) = self.rollout.consul.clone() else {
            return;
        };
        info!(
            "rollout: instance {} follows Consul {}plan (tick {:?})",
            self.rollout.instance, self.prefix, self.rollout.settings.tick
        );
        // Each turn waits (a blocking query) at most one tick for a change of the rollout
        // folder; a change ends the wait at once, but turns are never closer than a fifth of a
        // tick, and after a Consul error one tick apart.
        let tick = self.rollout.settings.tick;
        loop {
            let started = tokio::time::Instant::now();
            let ok = tokio::select! {
                ok = self.tick(&api) => ok,
                _ = shutdown.changed() => break,
            };
            let gap = if ok { tick / 5 } else { tick };
            tokio::select! {
                _ = tokio::time::sleep_until(started + gap) => {}
                _ = shutdown.changed() => break,
            }
        }
        self.lock.give_up(&api, self.driving).await;
    }

    /// Logs a problem once (until [`Fleet::cleared`]) and keeps it for `/rollout`.
    fn problem(&mut self, kind: &'static str, op: &str, text: String) {
        self.rollout.metrics.consul_error(op);
        if self.failing.get(kind) != Some(&text) {
            warn!("rollout: {text}");
            self.failing.insert(kind, text);
        }
    }

    fn cleared(&mut self, kind: &'static str) {
        if self.failing.remove(kind).is_some() {
            info!("rollout: {kind} works again");
        }
    }

    async fn publish(&mut self, api: &ConsulApi) {
        let every = self.rollout.settings.publish_interval;
        if self.last_publish.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_publish = Some(Instant::now());
        let key = format!("{}{}", self.windows_prefix, self.rollout.instance);
        let body = match serde_json::to_vec(&self.rollout.published()) {
            Ok(b) => b,
            Err(e) => return self.problem("publishing", "publish", format!("encoding: {e}")),
        };
        match api.put(&key, &body, Put::default()).await {
            Ok(_) => self.cleared("publishing"),
            Err(e) => self.problem(
                "publishing",
                "publish",
                format!("publishing window counters to {key}: {e}"),
            ),
        }
    }

    /// One turn; false after a Consul read error.
    async fn tick(&mut self, api: &ConsulApi) -> bool {
        self.publish(api).await;
        self.lock.keep_session(api).await;
        let wait = self.rollout.settings.tick;
        let entries = match api.watch(&self.prefix, self.index, wait).await {
            Ok((e, index)) => {
                self.cleared("reading");
                self.index = crate::upstream::consul::next_index(self.index, index);
                e
            }
            Err(e) => {
                // Consul's rule: after an error, start over with index 0.
                self.index = 0;
                self.problem(
                    "reading",
                    "read",
                    format!(
                        "reading {}: {e}; nothing changes until Consul answers",
                        self.prefix
                    ),
                );
                self.show(None, None, BTreeMap::new());
                return false;
            }
        };
        let key = |name: &str| format!("{}{name}", self.prefix);
        let find = |name: &str| entries.iter().find(|e| e.key == key(name));
        let (plan_e, control_e, state_e, lock_e) =
            (find("plan"), find("control"), find("state"), find("lock"));
        let fresh_plan = self.read_plan(plan_e);
        let state = state_e.and_then(|e| self.read_state(e));
        let role = self.lock.elect(api, lock_e).await;
        let driving = role == Role::Driver;
        if driving != self.driving {
            if !driving {
                info!("rollout: this instance no longer drives the plan");
            }
            self.driving = driving;
            self.baseline = None;
            self.rollout.metrics.driving(driving);
        }
        let holder = match (&role, lock_e) {
            (Role::Driver, _) => Some(self.rollout.instance.clone()),
            (Role::Follower { holder }, _) => Some(holder.clone()),
            (Role::Free, _) => None,
        };
        let mut records = BTreeMap::new();
        let state = if driving {
            match api.list(&self.windows_prefix).await {
                Ok(entries) => {
                    records = entries
                        .iter()
                        .filter_map(|e| serde_json::from_slice::<Published>(&e.value).ok())
                        .map(|p| (p.instance.clone(), p))
                        .collect();
                    self.cleared("counters");
                    self.drive(api, fresh_plan, state, state_e, control_e, &records)
                        .await
                }
                Err(e) => {
                    self.problem(
                        "counters",
                        "read",
                        format!(
                            "reading {}: {e}; no window is judged meanwhile",
                            self.windows_prefix
                        ),
                    );
                    state
                }
            }
        } else {
            state
        };
        self.follow(state.as_ref());
        self.show(state, holder, records);
        true
    }

    /// Parses the plan key when it changed; logs every problem once. Returns the plan and its
    /// text when it is valid.
    fn read_plan(&mut self, e: Option<&Entry>) -> Option<(String, Plan, String)> {
        let e = e?;
        let text = e.text();
        let parsed = plan::parse(&text);
        if self.plan_read.as_ref().map(|(i, _)| *i) != Some(e.modify_index) {
            match &parsed {
                Ok(_) => info!(
                    "rollout: plan {}plan (index {}) is valid",
                    self.prefix, e.modify_index
                ),
                Err(errors) => {
                    for err in errors {
                        warn!("rollout: plan {}plan: {err}", self.prefix);
                    }
                    warn!(
                        "rollout: plan {}plan (index {}) refused ({} problem(s)); a running \
                         plan continues",
                        self.prefix,
                        e.modify_index,
                        errors.len()
                    );
                }
            }
            self.plan_read = Some((
                e.modify_index,
                parsed.as_ref().map(|_| ()).map_err(Clone::clone),
            ));
        }
        parsed
            .ok()
            .map(|p| (format!("consul:{}", e.modify_index), p, text))
    }

    fn read_state(&mut self, e: &Entry) -> Option<RolloutState> {
        match serde_json::from_slice::<RolloutState>(&e.value) {
            Ok(s) => Some(s),
            Err(err) => {
                let text = format!(
                    "{} is not a rollout state ({err}); a new plan PUT starts afresh",
                    e.key
                );
                if self.failing.get("state") != Some(&text) {
                    warn!("rollout: {text}");
                    self.failing.insert("state", text);
                }
                None
            }
        }
    }

    /// The plan a state runs (from its own copy of the plan text).
    fn plan_of(&mut self, s: &RolloutState) -> Option<Plan> {
        if let Some((id, p)) = &self.running_plan {
            if *id == s.plan_id {
                return Some(p.clone());
            }
        }
        match plan::parse(&s.plan_text) {
            Ok(p) => {
                self.running_plan = Some((s.plan_id.clone(), p.clone()));
                Some(p)
            }
            Err(errors) => {
                warn!(
                    "rollout: the state's copy of plan {} is invalid ({}); not driving it",
                    s.plan_id,
                    errors.first().map(ToString::to_string).unwrap_or_default()
                );
                None
            }
        }
    }

    async fn drive(
        &mut self,
        api: &ConsulApi,
        fresh_plan: Option<(String, Plan, String)>,
        state: Option<RolloutState>,
        state_e: Option<&Entry>,
        control_e: Option<&Entry>,
        records: &BTreeMap<String, Published>,
    ) -> Option<RolloutState> {
        let now = now_ms();
        let read = state.clone();
        let mut events = Vec::new();
        let mut state = state;
        if let Some((id, p, text)) = fresh_plan {
            if state.as_ref().is_none_or(|s| s.plan_id != id) {
                let control_index = control_e.map_or(0, |e| e.modify_index);
                let (s, ev) =
                    RolloutState::begin(id, &p, &text, now, control_index, &self.rollout.instance);
                events.extend(ev);
                self.baseline = None;
                state = Some(s);
            }
        }
        let mut s = state?;
        let Some(p) = self.plan_of(&s) else {
            return Some(s);
        };
        let commands: Vec<Written> = control_e
            .map(|e| Written {
                command: Command::parse(&e.text()),
                raw: e.text(),
                index: e.modify_index,
            })
            .into_iter()
            .collect();
        let before = s.status;
        let out = tick::advance(&mut s, &p, &mut self.baseline, records, &commands, now);
        events.extend(out.events);
        s.driver = self.rollout.instance.clone();
        if read.as_ref() != Some(&s) {
            s.updated_ms = now;
            let body = match serde_json::to_vec(&s) {
                Ok(b) => b,
                Err(e) => {
                    warn!("rollout: cannot encode the state: {e}");
                    return read;
                }
            };
            let cas = Put {
                cas: Some(state_e.map_or(0, |e| e.modify_index)),
                ..Put::default()
            };
            match api.put(&format!("{}state", self.prefix), &body, cas).await {
                Ok(true) => self.cleared("writing"),
                Ok(false) => {
                    warn!(
                        "rollout: {}state changed under this driver (another driver?); \
                         reading it again",
                        self.prefix
                    );
                    self.baseline = None;
                    return read;
                }
                Err(e) => {
                    self.problem(
                        "writing",
                        "write",
                        format!("writing {}state: {e}", self.prefix),
                    );
                    self.baseline = None;
                    return read;
                }
            }
        }
        // Logged and counted once the state that holds them is stored.
        log_events(&events);
        if let Some(v) = out.verdict {
            self.rollout.metrics.window(v.label());
        }
        if let Some(check) = &out.rollback {
            self.rollout.metrics.rollback(check);
        }
        for c in &out.commands {
            self.rollout.metrics.command(c.label());
        }
        // A plan that ended in this tick (or began and ended at once) writes its final percent
        // once, and retries until that write succeeds.
        let was = read
            .as_ref()
            .filter(|r| r.plan_id == s.plan_id)
            .map(|r| r.status);
        if s.status.is_final() && (was != Some(s.status) || before != s.status) {
            self.pending_percent = Some(s.percent_bp);
        }
        self.write_percent(api, &s).await;
        Some(s)
    }

    /// The driver owns the percent switch while the plan runs (an edit by hand is put back);
    /// when the plan ends it writes the final value once and leaves the switch alone.
    async fn write_percent(&mut self, api: &ConsulApi, s: &RolloutState) {
        let want = match (s.status, self.pending_percent) {
            (Status::Running, _) => s.percent_bp,
            (_, Some(p)) => p,
            _ => return,
        };
        if self.gray.switches().percent_bp == want && self.pending_percent.is_none() {
            return;
        }
        let key = format!("{}percent", self.switches_prefix);
        match api
            .put(&key, percent_text(want).as_bytes(), Put::default())
            .await
        {
            Ok(_) => {
                self.pending_percent = None;
                self.cleared("percent");
            }
            Err(e) => self.problem("percent", "write", format!("writing {key}: {e}")),
        }
    }

    /// Every instance: the mirror share and the metrics follow the state.
    fn follow(&self, s: Option<&RolloutState>) {
        let share = s
            .filter(|s| !s.status.is_final())
            .map_or(0, |s| s.mirror_bp);
        self.rollout.gate.set_share(share);
        self.rollout.metrics.position(s.map(|s| {
            let (_, step) = s.stage();
            (s.status, s.percent_bp, i64::try_from(step).unwrap_or(0))
        }));
    }

    fn show(
        &mut self,
        state: Option<RolloutState>,
        holder: Option<String>,
        records: BTreeMap<String, Published>,
    ) {
        let old = self.rollout.view();
        let state = state.or_else(|| old.state.clone());
        let plan = match &state {
            Some(s) => self
                .plan_of(s)
                .map(|p| (p, format!("Consul {}plan ({})", self.prefix, s.plan_id))),
            None => None,
        };
        let plan_errors = match &self.plan_read {
            Some((_, Err(errors))) => errors.clone(),
            _ => Vec::new(),
        };
        let open_window = match (&state, &self.baseline, self.driving) {
            (Some(s), Some(b), true) if s.status == Status::Running => {
                Some(tick::open_window(s, &b.records, &records))
            }
            _ => None,
        };
        let instances = if self.driving {
            records
                .values()
                .map(|p| (p.instance.clone(), p.at_ms))
                .collect()
        } else {
            Vec::new()
        };
        self.rollout.set_view(View {
            plan,
            plan_errors,
            state,
            driving: self.driving,
            holder: holder.or_else(|| old.holder.clone()),
            open_window,
            instances,
            last_error: self.failing.values().next_back().cloned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_live_next_to_the_rollout_folder() {
        assert_eq!(
            windows_folder("graysplit/rollout/"),
            "graysplit/rollout-windows/"
        );
    }

    #[test]
    fn the_percent_switch_is_written_as_operators_write_it() {
        assert_eq!(percent_text(2_500), "25");
        assert_eq!(percent_text(1_250), "12.5");
        assert_eq!(percent_text(1), "0.01");
        assert_eq!(percent_text(10_000), "100");
        assert_eq!(percent_text(0), "0");
    }
}
