//! Plan files on disk, for `graysplit -t`: the file mode's plan named in the config, and any
//! plan given with `-t --plan FILE` (e.g. before it is PUT into Consul). Every problem is
//! reported as `-t` reports a config's, with the key, the value and the rule.

use std::path::Path;

use super::plan;
use super::Source;
use crate::config::{ConfigError, ConfigErrors};

/// A plan's problems as config errors under `key` (`rollout.plan_file (…) steps[1] = …`).
pub fn under(key: &str, problems: Vec<ConfigError>) -> Vec<ConfigError> {
    problems
        .into_iter()
        .map(|e| ConfigError {
            key: if e.key.is_empty() {
                key.to_string()
            } else {
                format!("{key} {}", e.key)
            },
            ..e
        })
        .collect()
}

/// File mode: the plan file, if it exists, must be a valid plan (the running driver would refuse
/// it). Problems go to `errors`; returns a note for `-t`'s summary line.
pub fn check_config(source: &Source, errors: &mut Vec<ConfigError>) -> String {
    let Source::File { plan, .. } = source else {
        return String::new();
    };
    match std::fs::read_to_string(plan) {
        Ok(text) => match plan::parse(&text) {
            Ok(p) => format!(", rollout plan with {} step(s)", p.steps.len()),
            Err(problems) => {
                errors.extend(under(
                    &format!("rollout.plan_file ({})", plan.display()),
                    problems,
                ));
                String::new()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!(", no rollout plan at {} yet", plan.display())
        }
        Err(e) => {
            errors.push(ConfigError {
                key: "rollout.plan_file".into(),
                value: Some(plan.display().to_string()),
                rule: format!("cannot read the plan: {e}"),
            });
            String::new()
        }
    }
}

/// `-t --plan FILE`: "rollout plan OK (…)" or every problem of the file.
pub fn check(path: &Path) -> Result<String, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        path: path.to_path_buf(),
        errors,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(vec![ConfigError {
            key: String::new(),
            value: None,
            rule: format!("cannot read the plan: {e}"),
        }])
    })?;
    let p = plan::parse(&text).map_err(fail)?;
    Ok(format!(
        "rollout plan OK ({}: {} step(s){})",
        path.display(),
        p.steps.len(),
        if p.mirror.is_some() {
            ", a mirror stage"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_named_under_the_file_key() {
        let e = under(
            "rollout.plan_file (p.json)",
            plan::parse(r#"{"steps": [0]}"#).unwrap_err(),
        );
        assert_eq!(
            e[0].to_string(),
            "rollout.plan_file (p.json) steps[0] = \"0\": must be greater than 0 (a step at 0 % \
             sends nobody to gray)"
        );
        let mut errors = Vec::new();
        let missing = Source::File {
            plan: "/nonexistent/rollout.json".into(),
            state: "/nonexistent/rollout.json.state".into(),
        };
        assert!(check_config(&missing, &mut errors).contains("no rollout plan at"));
        assert!(errors.is_empty());
        assert_eq!(check_config(&Source::Off, &mut errors), "");
    }
}
