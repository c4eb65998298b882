//! File mode, for a single instance without Consul: the plan is a file (re-read within a tick
//! when it changes; a new content starts a new rollout), the state is a file next to it
//! (written atomically after every change, read at start so a restart resumes), commands come
//! from the admin listener (`POST /rollout/pause` …), and the step is set on the in-memory gray
//! switches.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{info, warn};

use super::driver::{RolloutState, Status};
use super::plan::{self, Plan};
use super::tick::{self, Baseline, Written};
use super::windows::Published;
use super::{log_events, now_ms, Rollout, View};
use crate::config::ConfigError;
use crate::gray::GrayEngine;
use crate::watched_file::WatchedFile;

/// A plan's id in file mode: a hash of its text (64-bit FNV-1a), so an edit is a new plan and
/// a restart with the same file is the same one.
pub fn plan_id(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("file:{h:016x}")
}

/// Writes `text` to `path` atomically: a temp file in the same directory, fsync, rename.
pub fn write_atomically(path: &Path, text: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

pub struct Local {
    rollout: Arc<Rollout>,
    gray: Arc<GrayEngine>,
    plan_file: WatchedFile,
    state_path: PathBuf,
    state: Option<RolloutState>,
    plan: Option<Plan>,
    plan_errors: Vec<ConfigError>,
    baseline: Option<Baseline>,
    state_error: Option<String>,
}

impl Local {
    pub fn new(
        rollout: Arc<Rollout>,
        gray: Arc<GrayEngine>,
        plan_path: PathBuf,
        state_path: PathBuf,
    ) -> Local {
        Local {
            rollout,
            gray,
            plan_file: WatchedFile::new(plan_path, "rollout plan"),
            state_path,
            state: None,
            plan: None,
            plan_errors: Vec::new(),
            baseline: None,
            state_error: None,
        }
    }

    fn load_state(&mut self) {
        let text = match std::fs::read(&self.state_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                warn!(
                    "rollout: cannot read the state {}: {e}",
                    self.state_path.display()
                );
                return;
            }
        };
        match serde_json::from_slice::<RolloutState>(&text) {
            Ok(s) => {
                match plan::parse(&s.plan_text) {
                    Ok(p) => self.plan = Some(p),
                    Err(_) => warn!(
                        "rollout: the state {} holds an invalid plan; not resuming it",
                        self.state_path.display()
                    ),
                }
                info!(
                    "rollout: state {} read: plan {} is {}",
                    self.state_path.display(),
                    s.plan_id,
                    s.status.label()
                );
                self.state = Some(s);
            }
            Err(e) => warn!(
                "rollout: {} is not a rollout state ({e}); the plan file starts afresh",
                self.state_path.display()
            ),
        }
    }

    pub async fn run(mut self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some(mut commands) = self.rollout.command_rx.lock().take() else {
            return;
        };
        self.load_state();
        info!(
            "rollout: plan file {}, state file {}",
            self.plan_file.path().display(),
            self.state_path.display()
        );
        let mut tick = tokio::time::interval(self.rollout.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let mut cmds = Vec::new();
            while let Ok(c) = commands.try_recv() {
                cmds.push(c);
            }
            self.tick(&cmds);
        }
    }

    fn read_plan(&mut self, now: u64) -> Vec<super::driver::Event> {
        let Some(text) = self.plan_file.changed() else {
            return Vec::new();
        };
        match plan::parse(&text) {
            Err(errors) => {
                for e in &errors {
                    warn!("rollout: plan {}: {e}", self.plan_file.path().display());
                }
                warn!(
                    "rollout: plan {} refused ({} problem(s)); a running plan continues",
                    self.plan_file.path().display(),
                    errors.len()
                );
                self.plan_errors = errors;
                Vec::new()
            }
            Ok(p) => {
                self.plan_errors.clear();
                let id = plan_id(&text);
                if self.state.as_ref().is_some_and(|s| s.plan_id == id) {
                    return Vec::new();
                }
                let (s, events) =
                    RolloutState::begin(id, &p, &text, now, 0, &self.rollout.instance);
                self.state = Some(s);
                self.plan = Some(p);
                self.baseline = None;
                events
            }
        }
    }

    fn tick(&mut self, commands: &[super::driver::Command]) {
        let now = now_ms();
        let mut events = self.read_plan(now);
        let records: BTreeMap<String, Published> =
            BTreeMap::from([(self.rollout.instance.clone(), self.rollout.published())]);
        if let (Some(s), Some(p)) = (self.state.as_mut(), self.plan.as_ref()) {
            let before = s.clone();
            let written: Vec<Written> = commands
                .iter()
                .enumerate()
                .map(|(i, c)| Written {
                    command: Some(*c),
                    raw: c.label().to_string(),
                    index: before.control_index + 1 + i as u64,
                })
                .collect();
            let out = tick::advance(s, p, &mut self.baseline, &records, &written, now);
            events.extend(out.events);
            if let Some(v) = out.verdict {
                self.rollout.metrics.window(v.label());
            }
            if let Some(check) = &out.rollback {
                self.rollout.metrics.rollback(check);
            }
            for c in &out.commands {
                self.rollout.metrics.command(c.label());
            }
            let ended_now = s.status.is_final() && before.status != s.status;
            if *s != before || !events.is_empty() {
                s.updated_ms = now;
                let result = serde_json::to_vec_pretty(&*s)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        write_atomically(&self.state_path, &b).map_err(|e| e.to_string())
                    });
                match result {
                    Ok(()) => self.state_error = None,
                    Err(e) => {
                        if self.state_error.is_none() {
                            warn!(
                                "rollout: cannot write the state {}: {e}; a restart would not \
                                 resume from here",
                                self.state_path.display()
                            );
                        }
                        self.state_error = Some(format!("state file: {e}"));
                    }
                }
            }
            // The step is set in memory; a switches-file edit is put back while the plan runs.
            if s.status == Status::Running || ended_now {
                let sw = self.gray.switches();
                if sw.percent_bp != s.percent_bp {
                    self.gray.set_switches(
                        crate::gray::decision::Switches {
                            percent_bp: s.percent_bp,
                            ..sw
                        },
                        "rollout plan",
                    );
                }
            }
        }
        log_events(&events);
        self.show(&records);
    }

    fn show(&self, records: &BTreeMap<String, Published>) {
        let s = self.state.as_ref();
        let share = s
            .filter(|s| !s.status.is_final())
            .map_or(0, |s| s.mirror_bp);
        self.rollout.gate.set_share(share);
        self.rollout.metrics.driving(s.is_some());
        self.rollout.metrics.position(s.map(|s| {
            let (_, step) = s.stage();
            (s.status, s.percent_bp, i64::try_from(step).unwrap_or(0))
        }));
        let open_window = match (s, &self.baseline) {
            (Some(s), Some(b)) if s.status == Status::Running => {
                Some(tick::open_window(s, &b.records, records))
            }
            _ => None,
        };
        self.rollout.set_view(View {
            plan: self.plan.clone().zip(
                s.map(|s| format!("file {} ({})", self.plan_file.path().display(), s.plan_id)),
            ),
            plan_errors: self.plan_errors.clone(),
            state: self.state.clone(),
            driving: true,
            holder: Some(self.rollout.instance.clone()),
            open_window,
            instances: records
                .values()
                .map(|p| (p.instance.clone(), p.at_ms))
                .collect(),
            last_error: self.state_error.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_ids_follow_the_text() {
        assert_eq!(plan_id("{}"), plan_id("{}"));
        assert_ne!(plan_id(r#"{"steps":[1]}"#), plan_id(r#"{"steps":[2]}"#));
        assert!(plan_id("x").starts_with("file:"));
    }

    #[test]
    fn state_files_are_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rollout.state");
        write_atomically(&p, b"one").unwrap();
        write_atomically(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert!(!p.with_extension("tmp").exists());
    }
}
