//! Gray switches from Consul KV, long-polled with the same blocking-query rules as the pools:
//!
//! ```sh
//! curl -X PUT -d false http://<consul>:8500/v1/kv/graysplit/gray/enabled   # gray off for everyone
//! curl -X PUT -d true  http://<consul>:8500/v1/kv/graysplit/gray/all       # gray for everyone
//! curl -X PUT -d 12.5  http://<consul>:8500/v1/kv/graysplit/gray/percent   # 12.5 % rollout
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
            (0u64, 0usize, Backoff::default(), false);
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
                percent_bp: 250
            }
        );
        let (sw, _) = apply(P, &[], sw, d);
        assert_eq!(sw, d, "deleting the keys restores the config defaults");
    }

    #[test]
    fn a_bad_value_keeps_that_switch_and_is_reported() {
        let current = Switches {
            enabled: false,
            all: false,
            percent_bp: 700,
        };
        let (sw, p) = apply(
            P,
            &[
                entry("graysplit/gray/enabled", "perhaps"),
                entry("graysplit/gray/percent", "150"),
            ],
            current,
            Switches::default(),
        );
        assert_eq!(sw, current);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("graysplit/gray/enabled = \"perhaps\""));
    }
}
