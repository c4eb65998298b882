//! Property tests of config loading (`cargo test --lib fuzz_`; `PROPTEST_CASES=1000000` for the
//! long run): arbitrary bytes through the file entry point `graysplit -t` uses, TOML-ish text, and
//! valid TOML with one key set to a value of any type.

use super::*;
use proptest::prelude::*;

/// Every known key, by table (`[[...]]` tables as they are written).
const KEYS: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "listen",
            "admin_listen",
            "threads",
            "pid_file",
            "upgrade_sock",
            "grace_period",
            "graceful_shutdown_timeout",
            "keepalive_timeout",
            "header_case",
            "access_log",
            "debug_headers",
            "request_id_header",
        ],
    ),
    (
        "upstream",
        &[
            "connect_timeout",
            "read_timeout",
            "write_timeout",
            "idle_timeout",
            "keepalive_pool_size",
            "tries",
            "host_header",
            "default_host",
            "fail_on_status",
            "retry_on_status",
        ],
    ),
    (
        "consul",
        &[
            "addresses",
            "token",
            "wait",
            "interval",
            "strong_dependency",
            "timeout",
            "max_backoff",
        ],
    ),
    ("health", HEALTH),
    (
        "pools.base",
        &[
            "file",
            "consul_prefix",
            "dump_path",
            "allow_empty",
            "health",
        ],
    ),
    ("pools.base.health", HEALTH),
    ("pools.gray", &["file", "allow_empty"]),
    (
        "gray",
        &[
            "enabled",
            "all",
            "percent",
            "trusted_proxies",
            "client_ip_header",
            "user_header",
            "user_cookie",
            "whitelist_file",
            "switches_file",
            "consul_prefix",
            "redis",
            "rules",
            "headers",
        ],
    ),
    (
        "gray.redis",
        &[
            "url",
            "ip_prefix",
            "cidr_set",
            "users_set",
            "user_prefix",
            "timeout",
            "cache_ttl",
            "cache_size",
            "breaker_failures",
            "breaker_open",
        ],
    ),
    (
        "[gray.rules]",
        &[
            "header", "cookie", "query", "equals", "prefix", "present", "pool",
        ],
    ),
    ("gray.headers.gray", &["a", "x-color"]),
    (
        "[routes]",
        &[
            "prefix",
            "pool",
            "connect_timeout",
            "read_timeout",
            "write_timeout",
        ],
    ),
    (
        "pin",
        &[
            "enabled",
            "name",
            "secrets",
            "secure",
            "max_age",
            "lifetime",
            "asset_patterns",
            "retry_missing_assets",
            "reject_html_assets",
        ],
    ),
    ("admin", &["token", "status_format"]),
];

const HEALTH: &[&str] = &[
    "enabled",
    "interval",
    "timeout",
    "rise",
    "fall",
    "path",
    "host",
    "method",
    "alive",
    "default_down",
];

/// Lines a table needs to be valid on its own (the mutated key replaces its own line).
fn required(table: &str) -> &'static [(&'static str, &'static str)] {
    match table {
        "pools.base" => &[("file", "\"pools/base.conf\"")],
        "pools.gray" => &[("file", "\"pools/gray.conf\"")],
        "[gray.rules]" => &[
            ("header", "\"a\""),
            ("equals", "\"1\""),
            ("pool", "\"gray\""),
        ],
        "[routes]" => &[("prefix", "\"/api/\""), ("pool", "\"gray\"")],
        "gray.redis" => &[("url", "\"redis://127.0.0.1:6379/0\"")],
        _ => &[],
    }
}

fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(toml::Value::Boolean),
        any::<i64>().prop_map(toml::Value::Integer),
        (-5i64..70_000).prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        ".{0,16}".prop_map(toml::Value::String),
        prop::sample::select(vec![
            "",
            "0s",
            "10s",
            "-1s",
            "1.5s",
            "500ms",
            "25h",
            "99999999999999999999d",
            "0.0.0.0:80",
            "127.0.0.1:9901",
            "[::1]:0",
            "x:y",
            "http://127.0.0.1:8500",
            "ftp://x",
            "http://u:p@h",
            "upstreams/base/",
            "/abs/",
            "a//b/",
            "x-forwarded-for",
            "x-real-ip",
            "via",
            "base",
            "gray",
            "nope",
            "10.0.0.0/8",
            "10.0.0.0/33",
            "2xx",
            "600",
            "HEAD",
            "/",
            "*.js",
            "(",
            "redis://:pw@127.0.0.1/0",
            "host",
            "http_host",
            "upstream",
        ])
        .prop_map(|s| toml::Value::String(s.to_string())),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

/// A value written as TOML (inline tables inline).
fn render(v: &toml::Value) -> String {
    match v {
        toml::Value::Table(t) => {
            let fields: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{k} = {}", render(v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        toml::Value::Array(a) => {
            format!("[{}]", a.iter().map(render).collect::<Vec<_>>().join(", "))
        }
        toml::Value::Float(f) if f.is_nan() => "nan".into(),
        toml::Value::Float(f) if f.is_infinite() => if *f > 0.0 { "inf" } else { "-inf" }.into(),
        other => other.to_string(),
    }
}

/// A valid config with one key (`table`, `key`) set to `value`.
fn with_one_value(table: &str, key: &str, value: &str) -> String {
    let mut text = String::new();
    let mut tables: Vec<&str> = vec!["pools.base", "pools.gray"];
    if !tables.contains(&table) {
        tables.push(table);
    }
    for t in tables {
        // `[gray.rules]` is written `[[gray.rules]]`: an array of tables.
        text.push_str(&format!("[{t}]\n"));
        for (k, v) in required(t) {
            if !(t == table && *k == key) {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        if t == table {
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    text
}

fn load(text: &str) -> Result<Config, Vec<ConfigError>> {
    Config::from_toml_with_env(text, Path::new("/etc/graysplit/graysplit.toml"), |_| None)
}

/// A key path as errors print it: `[[gray.rules]]` → `gray.rules[0]`.
fn key_path(table: &str, key: &str) -> String {
    match table.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(array) => format!("{array}[0].{key}"),
        None => format!("{table}.{key}"),
    }
}

/// Lines of TOML-ish text: headers, known and unknown keys with any values, junk.
fn tomlish_line() -> impl Strategy<Value = String> {
    let table = prop::sample::select(KEYS.iter().map(|(t, _)| *t).collect::<Vec<_>>());
    let key = prop::sample::select(
        KEYS.iter()
            .flat_map(|(_, ks)| ks.iter().copied())
            .collect::<Vec<_>>(),
    );
    prop_oneof![
        table.prop_map(|t| format!("[{t}]")),
        (key, toml_value()).prop_map(|(k, v)| format!("{k} = {}", render(&v))),
        ("[a-z_.]{1,12}", toml_value()).prop_map(|(k, v)| format!("{k} = {}", render(&v))),
        "[^\r\n]{0,30}",
        Just(String::new()),
    ]
}

/// What every answer must satisfy: an error list that is not empty, and every error names a key
/// unless the file could not be read or is not TOML at all.
fn check_errors(
    text: Option<&str>,
    r: &Result<Config, Vec<ConfigError>>,
) -> Result<(), TestCaseError> {
    let Err(errors) = r else { return Ok(()) };
    prop_assert!(!errors.is_empty());
    let valid_toml = text.is_some_and(|t| t.parse::<toml::Table>().is_ok());
    for e in errors {
        if valid_toml {
            prop_assert!(!e.key.is_empty(), "no key in {:?} for {:?}", e, text);
        } else {
            prop_assert!(
                !e.key.is_empty()
                    || e.rule.starts_with("invalid TOML")
                    || e.rule.starts_with("cannot read configuration file"),
                "{:?}",
                e
            );
        }
        prop_assert!(!e.rule.is_empty());
    }
    Ok(())
}

proptest! {
    /// Arbitrary bytes in the file, through the entry point `graysplit -t` uses (and its pools
    /// check when the config loads): no panic, every problem reported with its key.
    #[test]
    fn fuzz_config_file_bytes(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        proptest::collection::vec(tomlish_line(), 0..12)
            .prop_map(|l| l.join("\n").into_bytes()),
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("graysplit.toml");
        std::fs::write(&path, &bytes).unwrap();
        match Config::load(&path) {
            Ok(c) => {
                let _ = crate::app::check(&c);
            }
            Err(e) => {
                let text = std::str::from_utf8(&bytes).ok();
                check_errors(text, &Err(e.errors.clone()))?;
                if text.is_none() {
                    prop_assert!(e.errors[0].rule.starts_with("cannot read configuration file"));
                }
                prop_assert!(e.to_string().contains("test failed"));
            }
        }
    }

    /// TOML-ish text: known tables and keys with values of any type, unknown keys, junk.
    #[test]
    fn fuzz_config_tomlish_text(lines in proptest::collection::vec(tomlish_line(), 0..16)) {
        let text = lines.join("\n");
        check_errors(Some(&text), &load(&text))?;
    }

    /// Valid TOML, one key set to a value of any type: it loads, or the errors name keys and one
    /// of them is that key (or a neighbour it clashes with, in the same table).
    #[test]
    fn fuzz_config_wrong_value_names_its_key(
        (table, key) in prop::sample::select(
            KEYS.iter().flat_map(|(t, ks)| ks.iter().map(move |k| (*t, *k))).collect::<Vec<_>>()),
        value in toml_value(),
    ) {
        let text = with_one_value(table, key, &render(&value));
        let r = load(&text);
        check_errors(Some(&text), &r)?;
        if let Err(errors) = &r {
            let path = key_path(table, key);
            let section = path.split(['.', '[']).next().unwrap_or_default();
            prop_assert!(
                errors.iter().any(|e| e.key.starts_with(&path) || e.key.starts_with(section)),
                "{} -> {:?}", text, errors
            );
            // A secret is never echoed.
            if path == "consul.token" || path == "pin.secrets" || path == "admin.token" {
                if let toml::Value::String(s) = &value {
                    if s.len() > 3 {
                        prop_assert!(!errors.iter().any(|e| e.to_string().contains(s.as_str())), "{:?}", errors);
                    }
                }
            }
        }
    }
}

#[test]
fn fuzz_type_errors_name_their_key() {
    let e = load("[server]\nthreads = \"x\"\n[pools.base]\nfile = \"b\"\n").unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].key, "server.threads");
    assert_eq!(
        e[0].to_string(),
        "server.threads: invalid type: string \"x\", expected usize (line 2)"
    );
    let e = load("[pools.base]\nfile = \"b\"\n[[gray.rules]]\nheader = \"a\"\npool = \"base\"\n[[gray.rules]]\nheader = 1\n")
        .unwrap_err();
    assert_eq!(e[0].key, "gray.rules[1].header", "{e:?}");
    let e =
        load("[pin]\nsecrets = \"hunter2-long-secret\"\n[pools.base]\nfile = \"b\"\n").unwrap_err();
    assert_eq!(e[0].key, "pin.secrets");
    assert!(!e[0].to_string().contains("hunter2"), "{e:?}");
    let e = load("pools = 5\n").unwrap_err();
    assert_eq!(e[0].key, "pools", "{e:?}");
}
