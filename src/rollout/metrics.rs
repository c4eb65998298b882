//! The rollout's and the mirror's metric families, registered in the process registry
//! ([`crate::metrics::Metrics::registry`]) so they appear on `/metrics` with the others.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `graysplit_rollout_percent` | gauge | — the gray share the plan asks for now |
//! | `graysplit_rollout_step` | gauge | — current step, 1-based; 0 in the mirror stage; -1 without a plan |
//! | `graysplit_rollout_status` | gauge | `status` — 1 for the plan's status (`running`, `paused`, `completed`, `promoted`, `rolled_back`, `aborted`) |
//! | `graysplit_rollout_driver` | gauge | — 1 on the instance that drives the plan |
//! | `graysplit_rollout_windows_total` | counter | `verdict` (`pass`, `fail`, `no_data`) — windows this instance judged |
//! | `graysplit_rollout_rollbacks_total` | counter | `reason` (`errors`, `latency`, `no_data`) |
//! | `graysplit_rollout_commands_total` | counter | `command` (`pause`, `resume`, `abort`, `promote`) — commands applied |
//! | `graysplit_rollout_consul_errors_total` | counter | `op` (`publish`, `read`, `write`) |
//! | `graysplit_mirror_requests_total` | counter | `result` (`2xx`…`5xx`, `error`, `timeout`) |
//! | `graysplit_mirror_dropped_total` | counter | `why` (`in_flight`, `no_server`) |
//! | `graysplit_mirror_in_flight` | gauge | — copies outstanding |
//! | `graysplit_mirror_response_seconds` | histogram | — copy sent to its body read |

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::driver::Status;

const MIRROR_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct RolloutMetrics {
    percent: prometheus::Gauge,
    step: IntGauge,
    status: IntGaugeVec,
    driver: IntGauge,
    windows: IntCounterVec,
    rollbacks: IntCounterVec,
    commands: IntCounterVec,
    consul_errors: IntCounterVec,
    mirror_requests: IntCounterVec,
    mirror_dropped: IntCounterVec,
    mirror_in_flight: IntGauge,
    mirror_seconds: Histogram,
}

impl std::fmt::Debug for RolloutMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RolloutMetrics")
    }
}

impl RolloutMetrics {
    /// The families, not yet registered (see [`RolloutMetrics::register`]).
    pub fn new() -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label])
        };
        Ok(Self {
            percent: prometheus::Gauge::new(
                "graysplit_rollout_percent",
                "Gray share the rollout plan asks for now (percent).",
            )?,
            step: IntGauge::new(
                "graysplit_rollout_step",
                "Current rollout step, 1-based; 0 in the mirror stage; -1 without a plan.",
            )?,
            status: IntGaugeVec::new(
                Opts::new(
                    "graysplit_rollout_status",
                    "1 for the rollout plan's current status.",
                ),
                &["status"],
            )?,
            driver: IntGauge::new(
                "graysplit_rollout_driver",
                "1 on the instance that drives the rollout plan.",
            )?,
            windows: counter(
                "graysplit_rollout_windows_total",
                "Analysis windows judged by this instance, by verdict.",
                "verdict",
            )?,
            rollbacks: counter(
                "graysplit_rollout_rollbacks_total",
                "Rollbacks decided by this instance, by the check that failed.",
                "reason",
            )?,
            commands: counter(
                "graysplit_rollout_commands_total",
                "Operator commands applied by this instance's driver.",
                "command",
            )?,
            consul_errors: counter(
                "graysplit_rollout_consul_errors_total",
                "Failed Consul calls of the rollout, by operation.",
                "op",
            )?,
            mirror_requests: counter(
                "graysplit_mirror_requests_total",
                "Mirrored copies of base page loads sent to gray, by result.",
                "result",
            )?,
            mirror_dropped: counter(
                "graysplit_mirror_dropped_total",
                "Copies not sent: the in-flight cap was reached, or gray had no usable server.",
                "why",
            )?,
            mirror_in_flight: IntGauge::new(
                "graysplit_mirror_in_flight",
                "Mirrored copies outstanding.",
            )?,
            mirror_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "graysplit_mirror_response_seconds",
                    "Time from sending a copy to reading its whole answer.",
                )
                .buckets(MIRROR_BUCKETS.to_vec()),
            )?,
        })
    }

    pub fn register(&self, r: &Registry) -> prometheus::Result<()> {
        r.register(Box::new(self.percent.clone()))?;
        r.register(Box::new(self.step.clone()))?;
        r.register(Box::new(self.status.clone()))?;
        r.register(Box::new(self.driver.clone()))?;
        r.register(Box::new(self.windows.clone()))?;
        r.register(Box::new(self.rollbacks.clone()))?;
        r.register(Box::new(self.commands.clone()))?;
        r.register(Box::new(self.consul_errors.clone()))?;
        r.register(Box::new(self.mirror_requests.clone()))?;
        r.register(Box::new(self.mirror_dropped.clone()))?;
        r.register(Box::new(self.mirror_in_flight.clone()))?;
        r.register(Box::new(self.mirror_seconds.clone()))?;
        Ok(())
    }

    /// The plan's position, on every instance (from the state it reads).
    pub fn position(&self, state: Option<(Status, u32, i64)>) {
        for s in Status::ALL {
            let on = state.is_some_and(|(status, _, _)| status == s);
            self.status
                .with_label_values(&[s.label()])
                .set(i64::from(on));
        }
        match state {
            Some((_, bp, step)) => {
                self.percent.set(f64::from(bp) / 100.0);
                self.step.set(step);
            }
            None => {
                self.percent.set(0.0);
                self.step.set(-1);
            }
        }
    }

    pub fn driving(&self, yes: bool) {
        self.driver.set(i64::from(yes));
    }

    pub fn window(&self, verdict: &str) {
        self.windows.with_label_values(&[verdict]).inc();
    }

    pub fn rollback(&self, reason: &str) {
        self.rollbacks.with_label_values(&[reason]).inc();
    }

    pub fn command(&self, command: &str) {
        self.commands.with_label_values(&[command]).inc();
    }

    pub fn consul_error(&self, op: &str) {
        self.consul_errors.with_label_values(&[op]).inc();
    }

    pub fn mirror_result(&self, result: &str, elapsed: Option<Duration>) {
        self.mirror_requests.with_label_values(&[result]).inc();
        if let Some(d) = elapsed {
            self.mirror_seconds.observe(d.as_secs_f64());
        }
    }

    pub fn mirror_dropped(&self, why: &str) {
        self.mirror_dropped.with_label_values(&[why]).inc();
    }

    pub fn set_mirror_in_flight(&self, n: usize) {
        self.mirror_in_flight
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
