//! The rollout plan: the JSON an operator PUTs into Consul (`graysplit/rollout/plan`) or writes
//! to the plan file, and its validation. Pure: text in, [`Plan`] or every problem out.
//!
//! ```json
//! {
//!   "name": "2026.11.2",
//!   "steps": [1, 5, 25, 50, 100],
//!   "step_duration": "10m",
//!   "window": "1m",
//!   "failure_limit": 2,
//!   "hold_timeout": "30m",
//!   "mirror": {"percent": 10, "duration": "10m"},
//!   "analysis": {"min_requests": 100, "max_error_increase": 1, "confidence": 99,
//!                "p99_ratio": 1.5, "p99_floor": "100ms"}
//! }
//! ```
//!
//! Only `steps` is required. The value is read as a JSON tree and checked key by key, so an
//! unknown key, a value of the wrong type and a broken rule are all reported, together, with the
//! key, the value and the rule (serde would stop at the first and not name the key).

use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::{duration, ConfigError};

/// Defaults, with where they come from (docs/rollout.md explains each).
pub mod defaults {
    use std::time::Duration;

    /// Time a step must pass before the next one (Argo Rollouts' examples pause 10 minutes).
    pub const STEP_DURATION: Duration = Duration::from_secs(600);
    /// One analysis window (Flagger's default `interval`, Prometheus' usual rate window).
    pub const WINDOW: Duration = Duration::from_secs(60);
    /// Failed windows before the rollback (Argo's `failureLimit` allows this many minus one).
    pub const FAILURE_LIMIT: u32 = 2;
    /// How long a step may hold for lack of data before the plan fails.
    pub const HOLD_TIMEOUT: Duration = Duration::from_secs(1800);
    /// Gray requests (and base requests) a window needs to be judged at all.
    pub const MIN_REQUESTS: u64 = 100;
    /// Percentage points by which gray's error rate may exceed base's.
    pub const MAX_ERROR_INCREASE_PP: f64 = 1.0;
    /// One-sided confidence of the two-proportion test, in percent.
    pub const CONFIDENCE_PCT: f64 = 99.0;
    /// Gray's p99 may be this many times base's ...
    pub const P99_RATIO: f64 = 1.5;
    /// ... and is never a failure below this (a 2 ms page at 4 ms is no regression).
    pub const P99_FLOOR: Duration = Duration::from_millis(100);
}

/// The shortest window: instances publish their counters every second by default.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
pub const MAX_STEPS: usize = 50;

/// A validated plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: Option<String>,
    /// Gray's share per step, in basis points (1 % = 100), strictly increasing, 1..=10000.
    pub steps: Vec<u32>,
    pub step_duration: Duration,
    pub window: Duration,
    pub failure_limit: u32,
    pub hold_timeout: Duration,
    /// The optional stage 0: copies of base pages to gray, no user on gray yet.
    pub mirror: Option<MirrorStage>,
    pub analysis: Analysis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MirrorStage {
    /// Share of base page GETs copied to gray, in basis points.
    pub percent_bp: u32,
    pub duration: Duration,
}

/// The judge's settings (see [`super::judge`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub min_requests: u64,
    /// As a fraction (1 percentage point = 0.01).
    pub max_error_increase: f64,
    /// As a fraction (99 % = 0.99).
    pub confidence: f64,
    pub p99_ratio: f64,
    pub p99_floor: Duration,
}

impl Default for Analysis {
    fn default() -> Self {
        Self {
            min_requests: defaults::MIN_REQUESTS,
            max_error_increase: defaults::MAX_ERROR_INCREASE_PP / 100.0,
            confidence: defaults::CONFIDENCE_PCT / 100.0,
            p99_ratio: defaults::P99_RATIO,
            p99_floor: defaults::P99_FLOOR,
        }
    }
}

impl Plan {
    /// Windows a stage needs to pass before the plan moves on (at least one).
    pub fn passes_needed(&self, stage_duration: Duration) -> u32 {
        let w = self.window.as_millis().max(1);
        u32::try_from(stage_duration.as_millis().div_ceil(w))
            .unwrap_or(u32::MAX)
            .max(1)
    }

    /// The plan as `/rollout` shows it (percent as numbers, durations in milliseconds).
    pub fn to_json(&self) -> Value {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        serde_json::json!({
            "name": self.name,
            "steps": self.steps.iter().map(|bp| percent(*bp)).collect::<Vec<_>>(),
            "step_duration_ms": ms(self.step_duration),
            "window_ms": ms(self.window),
            "failure_limit": self.failure_limit,
            "hold_timeout_ms": ms(self.hold_timeout),
            "mirror": self.mirror.as_ref().map(|m| serde_json::json!({
                "percent": percent(m.percent_bp),
                "duration_ms": ms(m.duration),
            })),
            "analysis": {
                "min_requests": self.analysis.min_requests,
                "max_error_increase": self.analysis.max_error_increase * 100.0,
                "confidence": self.analysis.confidence * 100.0,
                "p99_ratio": self.analysis.p99_ratio,
                "p99_floor_ms": ms(self.analysis.p99_floor),
            },
        })
    }
}

/// Basis points as a percent number (`2500` → `25.0`).
pub fn percent(bp: u32) -> f64 {
    f64::from(bp) / 100.0
}

/// Parses and validates a plan. On failure, every problem found.
pub fn parse(text: &str) -> Result<Plan, Vec<ConfigError>> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        vec![ConfigError {
            key: String::new(),
            value: None,
            rule: format!("the plan is not valid JSON: {e}"),
        }]
    })?;
    let Value::Object(obj) = value else {
        return Err(vec![ConfigError {
            key: String::new(),
            value: Some(short(&value)),
            rule: "the plan must be a JSON object, e.g. {\"steps\": [1, 5, 25, 50, 100]}".into(),
        }]);
    };
    let mut c = Checker::default();
    let plan = c.plan(&obj);
    if c.errors.is_empty() {
        Ok(plan)
    } else {
        Err(c.errors)
    }
}

const TOP_KEYS: &[&str] = &[
    "name",
    "steps",
    "step_duration",
    "window",
    "failure_limit",
    "hold_timeout",
    "mirror",
    "analysis",
];
const MIRROR_KEYS: &[&str] = &["percent", "duration"];
const ANALYSIS_KEYS: &[&str] = &[
    "min_requests",
    "max_error_increase",
    "confidence",
    "p99_ratio",
    "p99_floor",
];

#[derive(Default)]
struct Checker {
    errors: Vec<ConfigError>,
}

/// A value as quoted in an error (bounded, so a huge value never floods the log).
fn short(v: &Value) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

impl Checker {
    fn error(&mut self, key: &str, value: Option<&Value>, rule: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.to_string(),
            value: value.map(short),
            rule: rule.into(),
        });
    }

    fn unknown_keys(&mut self, prefix: &str, obj: &Map<String, Value>, known: &[&str]) {
        for k in obj.keys().filter(|k| !known.contains(&k.as_str())) {
            self.error(
                &format!("{prefix}{k}"),
                None,
                format!("unknown key; expected one of {}", known.join(", ")),
            );
        }
    }

    fn plan(&mut self, obj: &Map<String, Value>) -> Plan {
        self.unknown_keys("", obj, TOP_KEYS);
        let name = match obj.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if (1..=100).contains(&s.chars().count()) => Some(s.clone()),
            Some(v) => {
                self.error("name", Some(v), "must be a string of 1 to 100 characters");
                None
            }
        };
        let steps = self.steps(obj.get("steps"));
        let step_duration = self.duration(obj, "step_duration", defaults::STEP_DURATION);
        let window = self.duration(obj, "window", defaults::WINDOW);
        if window < MIN_WINDOW {
            self.error(
                "window",
                obj.get("window"),
                "must be at least 1s (instances publish their counters every second)",
            );
        }
        if window > step_duration {
            self.error(
                "window",
                obj.get("window"),
                format!(
                    "must not be longer than step_duration ({}): a step is judged in whole windows",
                    duration::format(step_duration)
                ),
            );
        }
        let failure_limit = match obj.get("failure_limit") {
            None => defaults::FAILURE_LIMIT,
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n @ 1..=100) => n,
                _ => {
                    self.error(
                        "failure_limit",
                        Some(v),
                        "must be a whole number from 1 to 100 (failed windows before the rollback)",
                    );
                    defaults::FAILURE_LIMIT
                }
            },
        };
        let hold_timeout = self.duration(obj, "hold_timeout", defaults::HOLD_TIMEOUT);
        if hold_timeout < window {
            self.error(
                "hold_timeout",
                obj.get("hold_timeout"),
                format!("must be at least one window ({})", duration::format(window)),
            );
        }
        let mirror = self.mirror(obj.get("mirror"), window);
        let analysis = self.analysis(obj.get("analysis"));
        Plan {
            name,
            steps,
            step_duration,
            window,
            failure_limit,
            hold_timeout,
            mirror,
            analysis,
        }
    }

    fn steps(&mut self, v: Option<&Value>) -> Vec<u32> {
        const RULE: &str = "must be a list of 1 to 50 percentages, e.g. [1, 5, 25, 50, 100]";
        let Some(v) = v else {
            self.error("steps", None, format!("is required: {RULE}"));
            return Vec::new();
        };
        let Some(list) = v.as_array().filter(|l| (1..=MAX_STEPS).contains(&l.len())) else {
            self.error("steps", Some(v), RULE);
            return Vec::new();
        };
        let mut steps: Vec<u32> = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let key = format!("steps[{i}]");
            let Some(bp) = self.percent(&key, item) else {
                continue;
            };
            if bp == 0 {
                self.error(
                    &key,
                    Some(item),
                    "must be greater than 0 (a step at 0 % sends nobody to gray)",
                );
                continue;
            }
            if let Some(&before) = steps.last() {
                if bp <= before {
                    self.error(
                        &key,
                        Some(item),
                        format!(
                            "must be greater than the step before ({}): steps only go up",
                            percent(before)
                        ),
                    );
                    continue;
                }
            }
            steps.push(bp);
        }
        steps
    }

    /// A percentage 0..=100 with at most two decimals, as basis points.
    fn percent(&mut self, key: &str, v: &Value) -> Option<u32> {
        let bp = v.as_f64().and_then(|p| {
            let bp = p * 100.0;
            ((0.0..=100.0).contains(&p) && (bp - bp.round()).abs() < 1e-6)
                .then(|| bp.round() as u32)
        });
        if bp.is_none() {
            self.error(
                key,
                Some(v),
                "must be a number from 0 to 100 with at most two decimals",
            );
        }
        bp
    }

    fn duration(&mut self, obj: &Map<String, Value>, key: &str, default: Duration) -> Duration {
        self.duration_at(key, obj.get(key), default)
    }

    fn duration_at(&mut self, key: &str, v: Option<&Value>, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        let parsed = v.as_str().ok_or(
            "must be a string with a unit: ms, s, m, h or d (e.g. \"500ms\", \"10s\", \"5m\")",
        );
        match parsed.and_then(duration::parse) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.error(key, Some(v), "must be greater than zero");
                default
            }
            Err(rule) => {
                self.error(key, Some(v), rule);
                default
            }
        }
    }

    fn mirror(&mut self, v: Option<&Value>, window: Duration) -> Option<MirrorStage> {
        let v = v.filter(|v| !v.is_null())?;
        let Some(obj) = v.as_object() else {
            self.error(
                "mirror",
                Some(v),
                "must be an object, e.g. {\"percent\": 10, \"duration\": \"10m\"}",
            );
            return None;
        };
        self.unknown_keys("mirror.", obj, MIRROR_KEYS);
        let percent_bp = match obj.get("percent") {
            None => {
                self.error(
                    "mirror.percent",
                    None,
                    "is required: the share of base page loads copied to gray",
                );
                0
            }
            Some(p) => match self.percent("mirror.percent", p) {
                Some(0) => {
                    self.error(
                        "mirror.percent",
                        Some(p),
                        "must be greater than 0 (leave `mirror` out for no mirror stage)",
                    );
                    0
                }
                Some(bp) => bp,
                None => 0,
            },
        };
        let duration = self.duration_at(
            "mirror.duration",
            obj.get("duration"),
            window.max(defaults::STEP_DURATION),
        );
        if duration < window {
            self.error(
                "mirror.duration",
                obj.get("duration"),
                format!("must be at least one window ({})", duration::format(window)),
            );
        }
        Some(MirrorStage {
            percent_bp,
            duration,
        })
    }

    fn analysis(&mut self, v: Option<&Value>) -> Analysis {
        let mut a = Analysis::default();
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return a;
        };
        let Some(obj) = v.as_object() else {
            self.error("analysis", Some(v), "must be an object");
            return a;
        };
        self.unknown_keys("analysis.", obj, ANALYSIS_KEYS);
        if let Some(v) = obj.get("min_requests") {
            match v.as_u64() {
                Some(n @ 1..=1_000_000_000) => a.min_requests = n,
                _ => self.error(
                    "analysis.min_requests",
                    Some(v),
                    "must be a whole number from 1 to 1000000000",
                ),
            }
        }
        if let Some(v) = obj.get("max_error_increase") {
            match v.as_f64() {
                Some(pp) if (0.0..100.0).contains(&pp) => a.max_error_increase = pp / 100.0,
                _ => self.error(
                    "analysis.max_error_increase",
                    Some(v),
                    "must be a number of percentage points, at least 0 and below 100",
                ),
            }
        }
        if let Some(v) = obj.get("confidence") {
            match v.as_f64() {
                Some(c) if c > 50.0 && c <= 99.99 => a.confidence = c / 100.0,
                _ => self.error(
                    "analysis.confidence",
                    Some(v),
                    "must be a percentage above 50 and at most 99.99 (e.g. 99)",
                ),
            }
        }
        if let Some(v) = obj.get("p99_ratio") {
            match v.as_f64() {
                Some(r) if (1.0..=100.0).contains(&r) => a.p99_ratio = r,
                _ => self.error(
                    "analysis.p99_ratio",
                    Some(v),
                    "must be a number from 1 to 100 (gray's p99 may be this many times base's)",
                ),
            }
        }
        if let Some(v) = obj.get("p99_floor") {
            let parsed = v
                .as_str()
                .ok_or("must be a string with a unit, e.g. \"100ms\"")
                .and_then(duration::parse);
            match parsed {
                Ok(d) => a.p99_floor = d,
                Err(rule) => self.error("analysis.p99_floor", Some(v), rule),
            }
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_plan_takes_every_default() {
        let p = parse(r#"{"steps": [1, 5, 25, 50, 100]}"#).unwrap();
        assert_eq!(p.steps, vec![100, 500, 2500, 5000, 10_000]);
        assert_eq!(p.step_duration, Duration::from_secs(600));
        assert_eq!(p.window, Duration::from_secs(60));
        assert_eq!(p.failure_limit, 2);
        assert_eq!(p.hold_timeout, Duration::from_secs(1800));
        assert_eq!(p.mirror, None);
        assert_eq!(p.analysis, Analysis::default());
        assert_eq!(p.passes_needed(p.step_duration), 10);
    }

    #[test]
    fn a_full_plan_reads_every_key() {
        let p = parse(
            r#"{"name": "2026.11.2", "steps": [0.5, 12.25, 100], "step_duration": "2s",
                "window": "1s", "failure_limit": 3, "hold_timeout": "1m",
                "mirror": {"percent": 10, "duration": "3s"},
                "analysis": {"min_requests": 20, "max_error_increase": 0.5, "confidence": 95,
                             "p99_ratio": 2, "p99_floor": "50ms"}}"#,
        )
        .unwrap();
        assert_eq!(p.name.as_deref(), Some("2026.11.2"));
        assert_eq!(p.steps, vec![50, 1225, 10_000]);
        assert_eq!(p.passes_needed(p.step_duration), 2);
        assert_eq!(
            p.mirror,
            Some(MirrorStage {
                percent_bp: 1000,
                duration: Duration::from_secs(3)
            })
        );
        assert_eq!(p.passes_needed(Duration::from_secs(3)), 3);
        assert_eq!(p.analysis.min_requests, 20);
        assert!((p.analysis.max_error_increase - 0.005).abs() < 1e-12);
        assert!((p.analysis.confidence - 0.95).abs() < 1e-12);
        assert_eq!(p.analysis.p99_floor, Duration::from_millis(50));
        assert_eq!(p.to_json()["steps"], serde_json::json!([0.5, 12.25, 100.0]));
    }

    #[test]
    fn every_problem_is_reported_with_its_key_value_and_rule() {
        let errors = parse(
            r#"{"steps": [5, 0, 3, 101, "x"], "window": "10", "step_duration": "0s",
                "failure_limit": 0, "colour": "red", "mirror": {"percent": 0, "speed": 1},
                "analysis": {"confidence": 100, "p99_ratio": 0.5, "min_requests": -1}}"#,
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let has = |needle: &str| {
            assert!(
                text.iter().any(|t| t.contains(needle)),
                "no {needle:?} in {text:#?}"
            )
        };
        has("colour: unknown key");
        has("steps[1] = \"0\": must be greater than 0");
        has("steps[2] = \"3\": must be greater than the step before (5)");
        has("steps[3] = \"101\": must be a number from 0 to 100");
        has("steps[4] = \"x\": must be a number");
        has("window = \"10\": must be a number with a unit");
        has("step_duration = \"0s\": must be greater than zero");
        has("failure_limit = \"0\": must be a whole number from 1 to 100");
        has("mirror.speed: unknown key");
        has("mirror.percent = \"0\": must be greater than 0");
        has("analysis.confidence = \"100\"");
        has("analysis.p99_ratio = \"0.5\"");
        has("analysis.min_requests = \"-1\"");
        assert_eq!(errors.len(), 13, "{text:#?}");
    }

    #[test]
    fn cross_key_rules() {
        let text: Vec<String> = parse(
            r#"{"steps": [10], "step_duration": "30s", "window": "1m", "hold_timeout": "10s"}"#,
        )
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
        assert!(text[0].contains("window = \"1m\": must not be longer than step_duration (30s)"));
        assert!(text[1].contains("hold_timeout = \"10s\": must be at least one window (60s)"));
        let e = parse(r#"{"steps": [10], "window": "500ms", "step_duration": "1s"}"#).unwrap_err();
        assert!(e[0].to_string().contains("must be at least 1s"), "{e:?}");
    }

    #[test]
    fn not_json_or_not_an_object_or_no_steps() {
        assert!(parse("steps: [1]").unwrap_err()[0]
            .rule
            .starts_with("the plan is not valid JSON"));
        assert!(parse("[1, 5]").unwrap_err()[0]
            .rule
            .contains("must be a JSON object"));
        assert_eq!(
            parse("{}").unwrap_err()[0].to_string(),
            "steps: is required: must be a list of 1 to 50 percentages, e.g. [1, 5, 25, 50, 100]"
        );
        assert!(parse(r#"{"steps": []}"#).is_err());
    }
}

/// Property tests (`cargo test --lib fuzz_`; `PROPTEST_CASES=1000000` for the long run): a plan
/// is outside input (a Consul value or a file).
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use proptest::prelude::*;

    /// A valid plan as (its JSON text, the plan it must parse to).
    fn valid_plan() -> impl Strategy<Value = (String, Plan)> {
        (
            proptest::collection::btree_set(1u32..=10_000, 1..8),
            1u64..=30,
            1u64..=10,
            1u32..=100,
            proptest::option::of((1u32..=10_000, 1u64..=5)),
            1u64..=100_000,
            0u32..=500,
            5_001u32..=9_999,
        )
            .prop_map(
                |(steps, window_s, k, limit, mirror, min, margin_cpp, conf_cpct)| {
                    let steps: Vec<u32> = steps.into_iter().collect();
                    let window = Duration::from_secs(window_s);
                    let step_duration = window * u32::try_from(k).unwrap_or(1);
                    let mirror = mirror.map(|(bp, m)| MirrorStage {
                        percent_bp: bp,
                        duration: window * u32::try_from(m).unwrap_or(1),
                    });
                    let text = serde_json::json!({
                        "steps": steps.iter().map(|bp| f64::from(*bp) / 100.0).collect::<Vec<_>>(),
                        "window": format!("{window_s}s"),
                        "step_duration": format!("{}s", window_s * k),
                        "failure_limit": limit,
                        "hold_timeout": format!("{window_s}s"),
                        "mirror": mirror.as_ref().map(|m| serde_json::json!({
                            "percent": f64::from(m.percent_bp) / 100.0,
                            "duration": format!("{}s", m.duration.as_secs()),
                        })),
                        "analysis": {
                            "min_requests": min,
                            "max_error_increase": f64::from(margin_cpp) / 100.0,
                            "confidence": f64::from(conf_cpct) / 100.0,
                        },
                    })
                    .to_string();
                    let plan = Plan {
                        name: None,
                        steps,
                        step_duration,
                        window,
                        failure_limit: limit,
                        hold_timeout: window,
                        mirror,
                        analysis: Analysis {
                            min_requests: min,
                            max_error_increase: f64::from(margin_cpp) / 10_000.0,
                            confidence: f64::from(conf_cpct) / 10_000.0,
                            ..Analysis::default()
                        },
                    };
                    (text, plan)
                },
            )
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    proptest! {
        /// Any text: a plan or a list of problems, each with a rule; never a panic.
        #[test]
        fn fuzz_plan_text_of_any_shape_never_panics(text in ".{0,200}") {
            if let Err(errors) = parse(&text) {
                prop_assert!(!errors.is_empty());
                prop_assert!(errors.iter().all(|e| !e.rule.is_empty()));
            }
        }

        /// Any JSON object with plan keys holding arbitrary JSON values: never a panic, and
        /// every problem names a key of the plan.
        #[test]
        fn fuzz_plan_keys_with_any_values_never_panic(
            values in proptest::collection::vec(
                (prop::sample::select(TOP_KEYS.to_vec()),
                 prop_oneof![
                     Just(serde_json::json!(null)), any::<i64>().prop_map(|n| serde_json::json!(n)),
                     any::<f64>().prop_map(|f| serde_json::json!(f)), ".{0,12}".prop_map(|s| serde_json::json!(s)),
                     Just(serde_json::json!([1, 2, 3])), Just(serde_json::json!({"percent": "x"})),
                     Just(serde_json::json!([-1.5, 1e300, "7"])),
                 ]),
                0..10),
        ) {
            let obj: serde_json::Map<String, Value> =
                values.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            if let Err(errors) = parse(&Value::Object(obj).to_string()) {
                for e in errors {
                    let root = e.key.split(['.', '[']).next().unwrap_or("");
                    prop_assert!(TOP_KEYS.contains(&root), "{}", e);
                }
            }
        }

        /// A generated valid plan parses to exactly what it says.
        #[test]
        fn fuzz_valid_plans_parse_to_what_they_say((text, want) in valid_plan()) {
            let got = parse(&text).map_err(|e| format!("{e:?}"));
            prop_assert!(got.is_ok(), "{} -> {:?}", text, got);
            let got = got.unwrap_or_else(|_| want.clone());
            prop_assert_eq!(&got.steps, &want.steps);
            prop_assert_eq!(got.window, want.window);
            prop_assert_eq!(got.step_duration, want.step_duration);
            prop_assert_eq!(got.failure_limit, want.failure_limit);
            prop_assert_eq!(&got.mirror, &want.mirror);
            prop_assert_eq!(got.analysis.min_requests, want.analysis.min_requests);
            prop_assert!(close(got.analysis.max_error_increase, want.analysis.max_error_increase));
            prop_assert!(close(got.analysis.confidence, want.analysis.confidence));
        }

        /// One broken value in a valid plan is reported under its own key.
        #[test]
        fn fuzz_a_broken_value_is_reported_under_its_key(
            (text, _) in valid_plan(),
            key in prop::sample::select(vec!["steps", "window", "step_duration", "failure_limit", "hold_timeout"]),
            bad in prop_oneof![Just(serde_json::json!("soon")), Just(serde_json::json!(-3)),
                               Just(serde_json::json!([]))],
        ) {
            let mut v: Value = serde_json::from_str(&text).unwrap_or_default();
            v[key] = bad;
            let errors = parse(&v.to_string()).err().unwrap_or_default();
            prop_assert!(errors.iter().any(|e| e.key == key), "{:?}", errors);
        }
    }
}
