use super::*;

fn load(text: &str) -> Result<Config, Vec<ConfigError>> {
    Config::from_toml(text, Path::new("/etc/graysplit/graysplit.toml"))
}

fn errors(text: &str) -> Vec<String> {
    load(text)
        .expect_err("config should be refused")
        .iter()
        .map(ToString::to_string)
        .collect()
}

const MINIMAL: &str = "[pools.base]\nfile = \"pools/base.conf\"\n";

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.server.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.server.admin_listen, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(c.server.keepalive_timeout, Duration::from_secs(65));
    assert_eq!(c.upstream.tries, 2);
    assert_eq!(c.upstream.host_header, HostHeader::Host);
    let base = &c.pools["base"];
    assert_eq!(
        base.file.as_deref(),
        Some(Path::new("/etc/graysplit/pools/base.conf"))
    );
    assert!(!base.allow_empty, "base must not empty by default");
}

#[test]
fn gray_allows_empty_by_default() {
    let c = load(&format!("{MINIMAL}[pools.gray]\nfile = \"g.conf\"\n")).unwrap();
    assert!(c.pools["gray"].allow_empty);
}

#[test]
fn bad_toml_is_reported_with_its_position() {
    let e = errors("[server\nlisten = 1");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("invalid TOML"), "{e:?}");
    assert!(e[0].contains("line 1"), "{e:?}");
}

#[test]
fn unknown_keys_are_all_reported_with_their_path() {
    let e = errors(&format!(
        "{MINIMAL}[server]\nlisen = \"x\"\n[upstream]\ntimeout = \"1s\"\n"
    ));
    assert!(
        e.contains(&"server.lisen: unknown key".to_string()),
        "{e:?}"
    );
    assert!(
        e.contains(&"upstream.timeout: unknown key".to_string()),
        "{e:?}"
    );
}

#[test]
fn bad_duration_names_key_value_and_rule() {
    let e = errors(&format!(
        "{MINIMAL}[upstream]\nconnect_timeout = \"10\"\nread_timeout = \"5 minutes\"\n"
    ));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("upstream.connect_timeout = \"10\": must be a number with a unit"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("upstream.read_timeout = \"5 minutes\""),
        "{e:?}"
    );
}

#[test]
fn unparsable_address_is_reported() {
    let e = errors(&format!("{MINIMAL}[server]\nlisten = \"localhost\"\n"));
    assert_eq!(
        e,
        vec!["server.listen = \"localhost\": must be an address with a port, e.g. \"0.0.0.0:8080\" or \"[::1]:8080\""]
    );
}

#[test]
fn empty_pool_name_is_reported() {
    let e = errors(&format!("{MINIMAL}[pools.\"\"]\nfile = \"x.conf\"\n"));
    assert!(
        e.iter()
            .any(|m| m.starts_with("pools = \"\": pool name must be 1-64 characters")),
        "{e:?}"
    );
}

#[test]
fn listen_port_clash_with_admin_is_reported() {
    let e = errors(&format!(
        "{MINIMAL}[server]\nlisten = \"0.0.0.0:9000\"\nadmin_listen = \"127.0.0.1:9000\"\n"
    ));
    assert_eq!(
        e,
        vec!["server.admin_listen = \"127.0.0.1:9000\": clashes with server.listen = \"0.0.0.0:9000\": the admin listener needs its own port"]
    );
    // Same port on two different specific addresses is fine.
    assert!(load(&format!(
        "{MINIMAL}[server]\nlisten = \"127.0.0.2:9000\"\nadmin_listen = \"127.0.0.1:9000\"\n"
    ))
    .is_ok());
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = errors(
        "[server]\nlisten = \"nope\"\nthreads = 0\nkeepalive_timeout = \"x\"\n\
         [upstream]\ntries = 0\nhost_header = \"weird\"\n\
         [pools.gray]\n",
    );
    let keys: Vec<&str> = e
        .iter()
        .map(|m| m.split([' ', ':']).next().unwrap())
        .collect();
    for k in [
        "server.listen",
        "server.threads",
        "server.keepalive_timeout",
        "upstream.tries",
        "upstream.host_header",
        "pools.gray",
        "pools.base",
    ] {
        assert!(keys.contains(&k), "missing {k} in {e:?}");
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let err = Config::load(Path::new("/nonexistent/graysplit.toml")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent/graysplit.toml: cannot read configuration file"),
        "{text}"
    );
    assert!(text.contains("test failed (1 error)"), "{text}");
}

#[test]
fn shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 1, "conf/ holds at least graysplit.toml");
}
