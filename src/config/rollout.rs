//! `[rollout]` and `[rollout.mirror]`: where the rollout plan comes from and how the driver,
//! the counters and the mirror behave — the file shape and its validation into
//! [`RolloutSettings`].

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, Validator};
use crate::rollout::{valid_instance_byte, RolloutSettings, Source};

/// Consul's session TTL range (api-docs/session: "between 10s and 86400s").
const MIN_TTL: Duration = Duration::from_secs(10);
const MAX_TTL: Duration = Duration::from_secs(86_400);
/// Consul's lock-delay range (docs: sessions, "between 0 and 60 seconds").
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RolloutSection {
    /// Consul KV folder of the plan, commands, state, lock and window counters.
    pub consul_prefix: String,
    /// Or: a plan file (a single instance without Consul).
    pub plan_file: String,
    /// The file mode's state; default: the plan file's name + `.state`.
    pub state_file: String,
    pub instance: String,
    pub tick: String,
    pub publish_interval: String,
    pub session_ttl: String,
    pub lock_delay: String,
    pub mirror: MirrorSection,
}

impl Default for RolloutSection {
    fn default() -> Self {
        Self {
            consul_prefix: String::new(),
            plan_file: String::new(),
            state_file: String::new(),
            instance: String::new(),
            tick: "1s".into(),
            publish_interval: "1s".into(),
            session_ttl: "10s".into(),
            lock_delay: "15s".into(),
            mirror: MirrorSection::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct MirrorSection {
    pub max_in_flight: usize,
    pub timeout: String,
}

impl Default for MirrorSection {
    fn default() -> Self {
        Self {
            max_in_flight: 32,
            timeout: "1s".into(),
        }
    }
}

/// What the rest of the config says that the rollout depends on.
pub(super) struct Context<'a> {
    pub base_dir: &'a Path,
    pub consul_listed: bool,
    /// `gray.consul_prefix`, if set.
    pub switches_prefix: Option<&'a str>,
    /// Every pool's `consul_prefix` (a rollout folder inside one would be read as servers).
    pub pool_prefixes: Vec<(String, String)>,
}

impl Validator<'_> {
    fn bounded(&mut self, key: &str, value: &str, min: Duration, max: Duration) -> Duration {
        let d = self.duration(key, value);
        if duration::parse(value).is_ok() && (d < min || d > max) {
            self.error(
                key,
                value,
                format!(
                    "must be from {} to {}",
                    duration::format(min),
                    duration::format(max)
                ),
            );
        }
        d.clamp(min, max)
    }

    pub(super) fn rollout(&mut self, r: &RolloutSection, ctx: &Context<'_>) -> RolloutSettings {
        let source = self.rollout_source(r, ctx);
        let instance = if r.instance.is_empty() {
            None
        } else if r.instance.len() <= 128 && r.instance.bytes().all(valid_instance_byte) {
            Some(r.instance.clone())
        } else {
            self.error(
                "rollout.instance",
                &r.instance,
                "must be 1-128 characters of a-z, A-Z, 0-9, '.', '_', '-' or ':' (it names a \
                 Consul key)",
            );
            None
        };
        let tick = self.bounded(
            "rollout.tick",
            &r.tick,
            Duration::from_millis(100),
            Duration::from_secs(10),
        );
        let publish_interval = self.bounded(
            "rollout.publish_interval",
            &r.publish_interval,
            Duration::from_millis(100),
            Duration::from_secs(60),
        );
        let session_ttl = self.bounded("rollout.session_ttl", &r.session_ttl, MIN_TTL, MAX_TTL);
        let lock_delay = self.bounded(
            "rollout.lock_delay",
            &r.lock_delay,
            Duration::ZERO,
            MAX_LOCK_DELAY,
        );
        let m = &r.mirror;
        if !(1..=10_000).contains(&m.max_in_flight) {
            self.error(
                "rollout.mirror.max_in_flight",
                m.max_in_flight,
                "must be from 1 to 10000",
            );
        }
        let mirror_timeout = self.bounded(
            "rollout.mirror.timeout",
            &m.timeout,
            Duration::from_millis(1),
            Duration::from_secs(60),
        );
        RolloutSettings {
            source,
            instance,
            tick,
            publish_interval,
            session_ttl,
            lock_delay,
            mirror_max_in_flight: m.max_in_flight.clamp(1, 10_000),
            mirror_timeout,
        }
    }

    fn rollout_source(&mut self, r: &RolloutSection, ctx: &Context<'_>) -> Source {
        let (prefix, file) = (r.consul_prefix.trim(), r.plan_file.trim());
        if !r.state_file.is_empty() && file.is_empty() {
            self.error(
                "rollout.state_file",
                &r.state_file,
                "only applies with plan_file (in Consul mode the state lives in Consul)",
            );
        }
        match (prefix.is_empty(), file.is_empty()) {
            (true, true) => Source::Off,
            (false, false) => {
                self.error(
                    "rollout.plan_file",
                    &r.plan_file,
                    "set either consul_prefix (a fleet sharing Consul) or plan_file (one \
                     instance), not both",
                );
                Source::Off
            }
            (false, true) => self.consul_rollout(prefix, ctx),
            (true, false) => {
                if let Some(sw) = ctx.switches_prefix {
                    self.error(
                        "rollout.plan_file",
                        &r.plan_file,
                        format!(
                            "a plan file sets the percent in memory, but gray.consul_prefix = \
                             {sw:?} makes Consul own it: use rollout.consul_prefix instead"
                        ),
                    );
                }
                let plan = ctx.base_dir.join(file);
                let state = if r.state_file.is_empty() {
                    let mut name = plan.as_os_str().to_owned();
                    name.push(".state");
                    name.into()
                } else {
                    ctx.base_dir.join(&r.state_file)
                };
                Source::File { plan, state }
            }
        }
    }

    fn consul_rollout(&mut self, prefix: &str, ctx: &Context<'_>) -> Source {
        const KEY: &str = "rollout.consul_prefix";
        let Some(prefix) = self.consul_prefix(KEY, prefix) else {
            return Source::Off;
        };
        if !ctx.consul_listed {
            self.error(
                KEY,
                &prefix,
                "needs Consul addresses: set `addresses` in [consul]",
            );
        }
        let Some(switches) = ctx.switches_prefix else {
            self.error(
                KEY,
                &prefix,
                "needs gray.consul_prefix (e.g. \"graysplit/gray/\"): the driver writes each \
                 step to <gray.consul_prefix>percent, the switch every instance follows",
            );
            return Source::Off;
        };
        // The rollout folder and, next to it, the instances' counters (`<prefix>-windows/`).
        let windows = crate::rollout::fleet::windows_folder(&prefix);
        for folder in [&prefix, &windows] {
            for (pool, p) in &ctx.pool_prefixes {
                if p.starts_with(folder.as_str()) || folder.starts_with(p.as_str()) {
                    self.error(
                        KEY,
                        &prefix,
                        format!(
                            "{folder:?} overlaps pools.{pool}.consul_prefix = {p:?}: the pool \
                             would read the rollout's keys as servers"
                        ),
                    );
                }
            }
            if switches.starts_with(folder.as_str()) || folder.starts_with(switches) {
                self.error(
                    KEY,
                    &prefix,
                    format!(
                        "{folder:?} overlaps gray.consul_prefix = {switches:?}: give the \
                         rollout its own folder"
                    ),
                );
            }
        }
        Source::Consul {
            prefix,
            switches_prefix: switches.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use crate::rollout::Source;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    const BASE: &str = "[pools.base]\nfile = \"pools/base.conf\"\n";
    const CONSUL: &str =
        "[consul]\naddresses = [\"http://127.0.0.1:8500\"]\n[gray]\nconsul_prefix = \"graysplit/gray/\"\n";

    fn load(text: &str) -> Result<Config, Vec<ConfigError>> {
        Config::from_toml(text, Path::new("/etc/graysplit/graysplit.toml"))
    }

    fn errors(text: &str) -> Vec<String> {
        load(text)
            .expect_err("refused")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn off_by_default_with_documented_defaults() {
        let r = load(BASE).unwrap().rollout;
        assert_eq!(r.source, Source::Off);
        assert_eq!(r.tick, Duration::from_secs(1));
        assert_eq!(r.publish_interval, Duration::from_secs(1));
        assert_eq!(r.session_ttl, Duration::from_secs(10));
        assert_eq!(r.lock_delay, Duration::from_secs(15));
        assert_eq!(r.mirror_max_in_flight, 32);
        assert_eq!(r.mirror_timeout, Duration::from_secs(1));
    }

    #[test]
    fn consul_mode_writes_the_step_to_the_gray_percent_switch() {
        let r = load(&format!(
            "{BASE}{CONSUL}[rollout]\nconsul_prefix = \"graysplit/rollout/\"\ninstance = \"web1:9901\"\n"
        ))
        .unwrap()
        .rollout;
        assert_eq!(
            r.source,
            Source::Consul {
                prefix: "graysplit/rollout/".into(),
                switches_prefix: "graysplit/gray/".into()
            }
        );
        assert_eq!(r.instance.as_deref(), Some("web1:9901"));
    }

    #[test]
    fn file_mode_keeps_its_state_next_to_the_plan() {
        let r = load(&format!("{BASE}[rollout]\nplan_file = \"rollout.json\"\n"))
            .unwrap()
            .rollout;
        assert_eq!(
            r.source,
            Source::File {
                plan: PathBuf::from("/etc/graysplit/rollout.json"),
                state: PathBuf::from("/etc/graysplit/rollout.json.state")
            }
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let e = errors(&format!(
            "{BASE}[pools.gray]\nconsul_prefix = \"graysplit/rollout/pools/\"\n\
             [rollout]\nconsul_prefix = \"graysplit/rollout/\"\nstate_file = \"s\"\n\
             instance = \"web 1\"\ntick = \"50ms\"\nsession_ttl = \"5s\"\nlock_delay = \"2m\"\n\
             colour = 1\n[rollout.mirror]\nmax_in_flight = 0\ntimeout = \"1\"\n"
        ));
        let has = |needle: &str| {
            assert!(
                e.iter().any(|t| t.contains(needle)),
                "{needle:?} not in {e:#?}"
            )
        };
        has("rollout.colour: unknown key");
        has("rollout.state_file = \"s\": only applies with plan_file");
        has("rollout.consul_prefix = \"graysplit/rollout/\": needs Consul addresses");
        has("rollout.consul_prefix = \"graysplit/rollout/\": needs gray.consul_prefix");
        has("rollout.instance = \"web 1\": must be 1-128 characters");
        has("rollout.tick = \"50ms\": must be from 100ms to 10s");
        has("rollout.session_ttl = \"5s\": must be from 10s to 86400s");
        has("rollout.lock_delay = \"2m\": must be from 0s to 60s");
        has("rollout.mirror.max_in_flight = \"0\": must be from 1 to 10000");
        has("rollout.mirror.timeout = \"1\": must be a number with a unit");
    }

    #[test]
    fn conflicting_sources_and_overlapping_folders() {
        let e = errors(&format!(
            "{BASE}{CONSUL}[rollout]\nconsul_prefix = \"graysplit/r/\"\nplan_file = \"p.json\"\n"
        ));
        assert!(e[0].contains("set either consul_prefix"), "{e:?}");
        let e = errors(&format!(
            "{BASE}{CONSUL}[rollout]\nplan_file = \"p.json\"\n"
        ));
        assert!(e[0].contains("makes Consul own it"), "{e:?}");
        let e = errors(&format!(
            "{BASE}{CONSUL}[rollout]\nconsul_prefix = \"graysplit/\"\n"
        ));
        assert!(e[0].contains("overlaps gray.consul_prefix"), "{e:?}");
        let e = errors(&format!(
            "{BASE}{CONSUL}[pools.gray]\nconsul_prefix = \"graysplit/rollout-windows/\"\n\
             [rollout]\nconsul_prefix = \"graysplit/rollout/\"\n"
        ));
        assert!(
            e.iter()
                .any(|t| t.contains("\"graysplit/rollout-windows/\" overlaps pools.gray")),
            "{e:?}"
        );
        let e = errors(&format!(
            "{BASE}{CONSUL}[pools.gray]\nconsul_prefix = \"graysplit/rollout/gray/\"\n\
             [rollout]\nconsul_prefix = \"graysplit/rollout/\"\n"
        ));
        assert!(
            e.iter()
                .any(|t| t.contains("overlaps pools.gray.consul_prefix")),
            "{e:?}"
        );
    }
}
