//! Gray switches from Consul KV, long-polled with the same blocking-query rules as the pools:
//!
//! ```sh
//! curl -X PUT -d false http://<consul>:8500/v1/kv/graysplit/gray/enabled   # gray off for everyone
//! curl -X PUT -d true  http://<consul>:8500/v1/kv/graysplit/gray/all       # gray for everyone
//! curl -X PUT -d 12.5  http://<consul>:8500/v1/kv/graysplit/gray/percent   # 12.5 % rollout
//! curl -X PUT -d r-2   http://<consul>:8500/v1/kv/graysplit/gray/salt      # other users for it
//! curl -X DELETE       http://<consul>:8500/v1/kv/graysplit/gray/all       # back to the config default
//! ```
//!
//! A key that is absent means the config default. A bad value is logged and that switch keeps its
//! previous value. Consul down: the switches stay as they are.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use log::{info, warn};

use super::decision::Switches;
use super::salt::{self, Salt};
use super::switches::{parse_bool, percent_to_bp};
use super::GrayEngine;
use crate::upstream::consul::{next_index, Backoff, ConsulClient};
use crate::upstream::kv_value::KvEntry;

/// Applies the entries under `prefix` to `current`, starting from the config `defaults` for
/// absent keys. Returns the new switches and a message per bad value.
pub fn apply(
    prefix: &str,
    entries: &[KvEntry],
    current: Switches,
    defaults: Switches,
) -> (Switches, Vec<String>) {
    let mut sw = defaults;
    let mut problems = Vec::new();
    let value = |name: &str| {
        entries
            .iter()
            .find(|e| e.key.strip_prefix(prefix) == Some(name))
            .map(|e| {
                let raw = e.value.as_deref().unwrap_or("");
                base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .map(|b| {
                        String::from_utf8_lossy(&b)
                            .trim()
                            .trim_matches('"')
                            .to_string()
                    })
                    .unwrap_or_default()
            })
    };
    if let Some(v) = value("enabled") {
        match parse_bool(&v) {
            Some(b) => sw.enabled = b,
            None => {
                problems.push(format!("{prefix}enabled = {v:?}: expected true or false"));
                sw.enabled = current.enabled;
            }
        }
    }
    if let Some(v) = value("all") {
        match parse_bool(&v) {
            Some(b) => sw.all = b,
            None => {
                problems.push(format!("{prefix}all = {v:?}: expected true or false"));
                sw.all = current.all;
            }
        }
    }
    if let Some(v) = value("percent") {
        match v.parse::<f64>().ok().and_then(percent_to_bp) {
            Some(bp) => sw.percent_bp = bp,
            None => {
                problems.push(format!(
                    "{prefix}percent = {v:?}: expected a number from 0 to 100"
                ));
                sw.percent_bp = current.percent_bp;
            }
        }
    }
    if let Some(v) = value("salt") {
        match salt::check(&v) {
            None => sw.salt = Salt::new(&v),
            Some(rule) => {
                problems.push(format!("{prefix}salt = {v:?}: {rule}"));
                sw.salt = current.salt;
            }
        }
    }
    (sw, problems)
}

/// The watcher; run it inside a background service.
pub struct ConsulSwitches {
    pub engine: Arc<GrayEngine>,
    pub client: Arc<ConsulClient>,
    pub prefix: String,
    pub interval: Duration,
    pub timeout: Duration,
}

impl ConsulSwitches {
    pub async fn run(&self) {
        let addresses = self.client.addresses().to_vec();
        if addresses.is_empty() {
            return;
        }
        let (mut index, mut turn, mut backoff, mut failing) =
            (0u64, 0usize, Backoff::new(self.client.max_backoff()), false);
        loop {
            let address = &addresses[turn % addresses.len()];
            let started = tokio::time::Instant::now();
            match self
                .client
                .fetch(address, &self.prefix, index, self.timeout)
                .await
            {
                Ok(answer) => {
                    if failing {
                        info!("gray switches: Consul {address} answers again");
                        failing = false;
                    }
                    backoff.reset();
                    index = next_index(index, answer.index);
                    let defaults = self.engine.settings.defaults;
                    let (sw, problems) = apply(
                        &self.prefix,
                        &answer.entries,
                        self.engine.switches(),
                        defaults,
                    );
                    for p in problems {
                        warn!("gray switches: {p}; that switch is unchanged");
                    }
                    self.engine.set_switches(sw, "Consul");
                    tokio::time::sleep_until(started + self.interval).await;
                }
                Err(e) => {
                    if !failing {
                        warn!("gray switches: Consul {address}: {e}; switches stay as they are");
                        failing = true;
                    }
                    // Consul's rule: after an error, start over with index 0 (on the next address).
                    index = 0;
                    turn += 1;
                    tokio::time::sleep(backoff.next_delay().max(self.interval)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str) -> KvEntry {
        KvEntry {
            key: key.into(),
            value: Some(base64::engine::general_purpose::STANDARD.encode(value)),
        }
    }

    const P: &str = "graysplit/gray/";

    #[test]
    fn keys_override_defaults_and_absent_keys_fall_back() {
        let d = Switches::default();
        let (sw, p) = apply(
            P,
            &[
                entry("graysplit/gray/all", "true"),
                entry("graysplit/gray/percent", "2.5"),
            ],
            d,
            d,
        );
        assert!(p.is_empty());
        assert_eq!(
            sw,
            Switches {
                enabled: true,
                all: true,
                percent_bp: 250,
                salt: Salt::NONE,
            }
        );
        let (sw, p) = apply(P, &[entry("graysplit/gray/salt", "r-2")], d, d);
        assert!(p.is_empty());
        assert_eq!(sw.salt, Salt::new("r-2"), "a new salt from Consul");
        let (sw, _) = apply(P, &[], sw, d);
        assert_eq!(sw, d, "deleting the keys restores the config defaults");
    }

    #[test]
    fn a_bad_value_keeps_that_switch_and_is_reported() {
        let current = Switches {
            enabled: false,
            all: false,
            percent_bp: 700,
            salt: Salt::new("kept"),
        };
        let (sw, p) = apply(
            P,
            &[
                entry("graysplit/gray/enabled", "perhaps"),
                entry("graysplit/gray/percent", "150"),
                entry("graysplit/gray/salt", "tab\there"),
            ],
            current,
            Switches::default(),
        );
        assert_eq!(sw, current);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("graysplit/gray/enabled = \"perhaps\""));
    }
}

/// Property tests (`cargo test --lib fuzz_`; `PROPTEST_CASES=1000000` for the long run).
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use proptest::prelude::*;

    const P: &str = "graysplit/gray/";
    const NAMES: [&str; 3] = ["enabled", "all", "percent"];

    #[derive(Debug, Clone)]
    enum Val {
        /// A valid spelling and what it means (a bool, or basis points).
        Good(String, u32),
        /// Bytes no switch accepts ('@' or invalid UTF-8 survives trimming).
        Bad(Vec<u8>),
        /// A Consul `Value` that is not base64 at all.
        NotBase64(String),
        /// The key exists without a value.
        Empty,
    }

    fn switches() -> impl Strategy<Value = Switches> {
        (any::<bool>(), any::<bool>(), 0u32..=10_000).prop_map(|(enabled, all, percent_bp)| {
            Switches {
                enabled,
                all,
                percent_bp,
                salt: Salt::NONE,
            }
        })
    }

    fn quoted(s: String, style: u8) -> String {
        match style % 4 {
            0 => s,
            1 => format!("\"{s}\""),
            2 => format!(" {s}\n"),
            _ => format!("\t\"{s}\" "),
        }
    }

    fn bool_value() -> impl Strategy<Value = Val> {
        (
            any::<bool>(),
            prop::sample::select(vec![
                ("true", "false"),
                ("1", "0"),
                ("on", "off"),
                ("yes", "no"),
                ("TRUE", "False"),
            ]),
            any::<u8>(),
        )
            .prop_map(|(b, (t, f), style)| {
                Val::Good(
                    quoted(if b { t } else { f }.to_string(), style),
                    u32::from(b),
                )
            })
    }

    fn percent_value() -> impl Strategy<Value = Val> {
        (0u32..=10_000, any::<u8>()).prop_map(|(bp, style)| {
            let text = match style % 3 {
                0 => format!("{}", f64::from(bp) / 100.0),
                1 => format!("{:.2}", f64::from(bp) / 100.0),
                _ => format!("{}e-2", bp),
            };
            Val::Good(quoted(text, style / 3), bp)
        })
    }

    fn bad_value() -> impl Strategy<Value = Val> {
        (
            proptest::collection::vec(any::<u8>(), 0..12),
            prop::sample::select(vec![&b"@"[..], b"\xff", b"\xc3", b"1@", b"@true"]),
            proptest::collection::vec(any::<u8>(), 0..12),
        )
            .prop_map(|(a, mid, b)| Val::Bad([a, mid.to_vec(), b].concat()))
    }

    fn value_for(name: &'static str) -> BoxedStrategy<Val> {
        let good = if name == "percent" {
            percent_value().boxed()
        } else {
            bool_value().boxed()
        };
        prop_oneof![
            4 => good,
            2 => bad_value(),
            1 => "[!*@]{1,8}".prop_map(Val::NotBase64),
            1 => Just(Val::Empty),
        ]
        .boxed()
    }

    fn entry(name: &str, v: &Val) -> KvEntry {
        let b64 = |raw: &[u8]| base64::engine::general_purpose::STANDARD.encode(raw);
        KvEntry {
            key: format!("{P}{name}"),
            value: match v {
                Val::Good(text, _) => Some(b64(text.as_bytes())),
                Val::Bad(raw) => Some(b64(raw)),
                Val::NotBase64(text) => Some(text.clone()),
                Val::Empty => None,
            },
        }
    }

    proptest! {
        /// Each switch: absent → the config default, a valid value → that value, anything else →
        /// the current value plus a message naming the key; whatever the other keys hold.
        #[test]
        fn fuzz_switch_values_apply_or_keep_the_current_one(
            enabled in proptest::option::of(value_for("enabled")),
            all in proptest::option::of(value_for("all")),
            percent in proptest::option::of(value_for("percent")),
            noise in proptest::collection::vec(
                (prop_oneof!["[a-z/]{0,20}", Just(P.to_string()), Just(format!("{P}Enabled")),
                             Just(format!("{P}percent/x")), Just("graysplit/gray2/all".to_string())],
                 proptest::option::of(".{0,12}")),
                0..4),
            current in switches(),
            defaults in switches(),
            order in any::<u64>(),
        ) {
            let vals = [enabled, all, percent];
            let mut entries: Vec<KvEntry> = noise
                .into_iter()
                .map(|(key, value)| KvEntry { key, value })
                .collect();
            for (name, v) in NAMES.iter().zip(&vals) {
                if let Some(v) = v {
                    let at = (order as usize) % (entries.len() + 1);
                    entries.insert(at, entry(name, v));
                }
            }
            let (sw, problems) = apply(P, &entries, current, defaults);
            let pick = |i: usize, default: u32, now: u32| match &vals[i] {
                None => default,
                Some(Val::Good(_, want)) => *want,
                Some(_) => now,
            };
            prop_assert_eq!(u32::from(sw.enabled), pick(0, u32::from(defaults.enabled), u32::from(current.enabled)));
            prop_assert_eq!(u32::from(sw.all), pick(1, u32::from(defaults.all), u32::from(current.all)));
            prop_assert_eq!(sw.percent_bp, pick(2, defaults.percent_bp, current.percent_bp));
            let bad: Vec<&str> = NAMES
                .iter()
                .zip(&vals)
                .filter(|(_, v)| matches!(v, Some(v) if !matches!(v, Val::Good(..))))
                .map(|(n, _)| *n)
                .collect();
            prop_assert_eq!(problems.len(), bad.len(), "{:?}", problems);
            for (p, name) in problems.iter().zip(bad) {
                prop_assert!(p.starts_with(&format!("{P}{name} = ")), "{}", p);
            }
        }

        #[test]
        fn fuzz_switch_entries_of_any_shape_never_panic(
            entries in proptest::collection::vec(
                (prop_oneof![".{0,24}", "graysplit/gray/(enabled|all|percent)"],
                 proptest::option::of(prop_oneof![".{0,16}",
                     proptest::collection::vec(any::<u8>(), 0..16)
                         .prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b))])),
                0..8),
            current in switches(),
            defaults in switches(),
        ) {
            let entries: Vec<KvEntry> =
                entries.into_iter().map(|(key, value)| KvEntry { key, value }).collect();
            let (sw, problems) = apply(P, &entries, current, defaults);
            prop_assert!(sw.percent_bp <= 10_000);
            prop_assert!(problems.len() <= 3);
        }
    }
}
