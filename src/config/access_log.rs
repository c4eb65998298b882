//! `[access_log]`: where the access log goes and how it looks (whether there is one at all is
//! `server.access_log`, as before) — the file shape and its validation into
//! [`AccessLogSettings`].

use serde::Deserialize;

use super::{size, Validator};
use crate::access_log::{AccessLogSettings, Format};

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct AccessLogSection {
    /// "" = standard error.
    pub path: String,
    pub format: String,
    pub queue: usize,
    /// "" = never rotate by size.
    pub max_size: String,
    pub keep: u32,
}

impl Default for AccessLogSection {
    fn default() -> Self {
        let d = AccessLogSettings::default();
        Self {
            path: String::new(),
            format: "graysplit".into(),
            queue: d.queue,
            max_size: String::new(),
            keep: d.keep,
        }
    }
}

impl Validator<'_> {
    pub(super) fn access_log(
        &mut self,
        a: &AccessLogSection,
        enabled: bool,
        base_dir: &std::path::Path,
    ) -> AccessLogSettings {
        let format = Format::parse(&a.format).unwrap_or_else(|| {
            self.error(
                "access_log.format",
                &a.format,
                "must be \"graysplit\", \"combined\" or \"json\"",
            );
            Format::Graysplit
        });
        if a.queue == 0 || a.queue > 1 << 24 {
            self.error(
                "access_log.queue",
                a.queue,
                "must be between 1 and 16777216",
            );
        }
        let max_size = (!a.max_size.is_empty()).then(|| match size::parse(&a.max_size) {
            Ok(0) => {
                self.error(
                    "access_log.max_size",
                    &a.max_size,
                    "must be more than 0 (\"\" = never)",
                );
                0
            }
            Ok(n) => n,
            Err(rule) => {
                self.error("access_log.max_size", &a.max_size, rule);
                0
            }
        });
        if a.keep > 1000 {
            self.error("access_log.keep", a.keep, "must be at most 1000");
        }
        if max_size.is_some() && a.path.is_empty() {
            self.error(
                "access_log.max_size",
                &a.max_size,
                "needs access_log.path (standard error is not rotated)",
            );
        }
        AccessLogSettings {
            enabled,
            path: (!a.path.is_empty()).then(|| base_dir.join(&a.path)),
            format,
            queue: a.queue.max(1),
            max_size,
            keep: a.keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::access_log::Format;
    use crate::config::Config;

    fn load(section: &str) -> Result<crate::access_log::AccessLogSettings, Vec<String>> {
        Config::from_toml(
            &format!("{section}\n[pools.base]\nfile = \"b.conf\"\n"),
            Path::new("/etc/graysplit/g.toml"),
        )
        .map(|c| c.access_log)
        .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults_are_graysplit_lines_on_standard_error() {
        let a = load("").unwrap();
        assert!(a.enabled);
        assert_eq!(
            (a.path, a.format, a.max_size),
            (None, Format::Graysplit, None)
        );
        let off = load("[server]\naccess_log = false").unwrap();
        assert!(!off.enabled);
    }

    #[test]
    fn a_file_with_rotation_relative_to_the_config() {
        let a = load("[access_log]\npath = \"log/access.log\"\nformat = \"json\"\nmax_size = \"100m\"\nkeep = 3")
            .unwrap();
        assert_eq!(
            a.path.as_deref(),
            Some(Path::new("/etc/graysplit/log/access.log"))
        );
        assert_eq!(
            (a.format, a.max_size, a.keep),
            (Format::Json, Some(100 << 20), 3)
        );
    }

    #[test]
    fn every_bad_value_is_named() {
        let e = load("[access_log]\nformat = \"main\"\nqueue = 0\nmax_size = \"1x\"\nkeep = 5000")
            .unwrap_err();
        let all = e.join("\n");
        for key in [
            "access_log.format = \"main\"",
            "access_log.queue = \"0\"",
            "access_log.max_size = \"1x\"",
            "access_log.keep = \"5000\"",
        ] {
            assert!(all.contains(key), "{key} in:\n{all}");
        }
        let e = load("[access_log]\nmax_size = \"1m\"").unwrap_err();
        assert!(e[0].contains("needs access_log.path"), "{e:?}");
    }
}
