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
    assert_eq!(c.server.listen.len(), 1);
    assert_eq!(c.server.listen[0].addr, "0.0.0.0:8080".parse().unwrap());
    assert!(!c.server.listen[0].tls);
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

const CONSUL: &str = "[consul]\naddresses = [\"http://127.0.0.1:8500\"]\n\
                      [pools.base]\nconsul_prefix = \"upstreams/base/\"\n";

fn load_env(text: &str, token_env: Option<&str>) -> Result<Config, Vec<ConfigError>> {
    Config::from_toml_with_env(text, Path::new("/etc/graysplit/graysplit.toml"), |name| {
        (name == CONSUL_TOKEN_ENV)
            .then(|| token_env.map(str::to_string))
            .flatten()
    })
}

#[test]
fn consul_pool_gets_documented_defaults() {
    let c = load_env(&format!("{CONSUL}dump_path = \"dumps/base.conf\"\n"), None).unwrap();
    let k = &c.consul;
    assert_eq!(k.addresses, vec!["http://127.0.0.1:8500"]);
    assert_eq!(k.wait, Duration::from_secs(300));
    assert_eq!(k.interval, Duration::from_millis(500));
    assert!(!k.strong_dependency);
    assert_eq!(k.timeout, Duration::from_millis(300_000 + 18_750 + 3_000));
    assert!(k.token.is_none());
    let base = &c.pools["base"];
    assert_eq!(base.consul_prefix.as_deref(), Some("upstreams/base/"));
    assert_eq!(base.file, None);
    assert_eq!(
        base.dump_path.as_deref(),
        Some(Path::new("/etc/graysplit/dumps/base.conf"))
    );
    assert!(!base.allow_empty);
}

#[test]
fn consul_addresses_are_normalised_and_https_is_accepted() {
    let c = load_env(
        "[consul]\naddresses = [\"http://10.0.0.1:8500/\", \"https://consul.example.com\"]\n\
         [pools.base]\nconsul_prefix = \"upstreams/base/\"\n",
        None,
    )
    .unwrap();
    assert_eq!(
        c.consul.addresses,
        vec!["http://10.0.0.1:8500", "https://consul.example.com"]
    );
}

#[test]
fn consul_addresses_as_upsync_writes_them_are_plain_http() {
    let c = load_env(
        "[consul]\naddresses = [\"192.168.59.105:8510\", \"consul.internal:8500\"]\n\
         [pools.base]\nconsul_prefix = \"upstreams/base/\"\n",
        None,
    )
    .unwrap();
    assert_eq!(
        c.consul.addresses,
        vec!["http://192.168.59.105:8510", "http://consul.internal:8500"]
    );
    let e = errors(
        "[consul]\naddresses = [\"192.168.59.105:8510/v1/kv/upstreams/base/\"]\n\
         [pools.base]\nconsul_prefix = \"upstreams/base/\"\n",
    );
    assert_eq!(
        e,
        vec![
            "consul.addresses[0] = \"192.168.59.105:8510/v1/kv/upstreams/base/\": is an upsync \
             line: the address is the part before /v1/kv, and the KV folder goes in the pool, \
             e.g. consul_prefix = \"upstreams/base/\""
        ]
    );
}

#[test]
fn consul_prefix_must_end_with_a_slash() {
    let e = errors(
        "[consul]\naddresses = [\"http://127.0.0.1:8500\"]\n\
                    [pools.base]\nconsul_prefix = \"upstreams/base\"\n",
    );
    assert_eq!(
        e,
        vec![
            "pools.base.consul_prefix = \"upstreams/base\": must end with '/': Consul matches \
              prefixes as plain strings, so \"upstreams/base\" would also read \
              \"upstreams/base2/...\""
        ]
    );
}

#[test]
fn consul_prefix_other_rules() {
    for (prefix, rule) in [
        ("/upstreams/base/", "must not start with '/'"),
        ("/", "must name a Consul KV folder"),
        ("", "must name a Consul KV folder"),
        ("up streams/", "must be made of a-z"),
        ("up//base/", "must be made of a-z"),
        ("up?x=1/", "must be made of a-z"),
    ] {
        let e = errors(&format!(
            "[consul]\naddresses = [\"http://127.0.0.1:8500\"]\n\
             [pools.base]\nconsul_prefix = \"{prefix}\"\n"
        ));
        assert_eq!(e.len(), 1, "{prefix:?}: {e:?}");
        assert!(
            e[0].starts_with(&format!("pools.base.consul_prefix = {prefix:?}: {rule}")),
            "{prefix:?}: {e:?}"
        );
    }
}

#[test]
fn a_pool_needs_exactly_one_source() {
    let e = errors("[pools.base]\nallow_empty = false\n");
    assert_eq!(
        e,
        vec![
            "pools.base: needs a server source: set `file` (a pools file in upsync's dump \
              format) or `consul_prefix` (a Consul KV folder such as \"upstreams/base/\")"
        ]
    );
    let e = errors(&format!("{CONSUL}file = \"base.conf\"\n"));
    assert_eq!(
        e,
        vec!["pools.base: has both `file` and `consul_prefix`: set exactly one server source"]
    );
}

#[test]
fn consul_prefix_without_addresses_is_an_error() {
    let e = errors("[pools.base]\nconsul_prefix = \"upstreams/base/\"\n");
    assert_eq!(
        e,
        vec![
            "pools.base.consul_prefix = \"upstreams/base/\": needs Consul addresses: set \
              `addresses` in [consul], e.g. addresses = [\"http://127.0.0.1:8500\"]"
        ]
    );
}

#[test]
fn bad_consul_values_are_all_reported() {
    let e = errors(
        "[consul]\naddresses = [\"127.0.0.1:85x0\", \"ftp://x\", \"http://h:1/v1/agent\", \
         \"http://user:hunter2@h:1\"]\nwait = \"11m\"\ninterval = \"0s\"\ntimeout = \"10s\"\n\
         [pools.base]\nconsul_prefix = \"upstreams/base/\"\n",
    );
    let rule = crate::config::consul_address::RULE;
    assert_eq!(
        e,
        vec![
            format!("consul.addresses[0] = \"127.0.0.1:85x0\": {rule}"),
            format!("consul.addresses[1] = \"ftp://x\": {rule}"),
            format!("consul.addresses[2] = \"http://h:1/v1/agent\": {rule}"),
            "consul.addresses[3]: must not contain a user or password (use `token` for Consul ACLs)"
                .to_string(),
            "consul.wait = \"11m\": must be at most 10m (Consul caps blocking queries at 10 minutes)"
                .to_string(),
            "consul.interval = \"0s\": must be greater than zero".to_string(),
            "consul.timeout = \"10s\": must be at least wait + wait/16 + 3s = 704250ms (Consul may \
             hold a blocking query for wait + wait/16); leave it out to get that"
                .to_string(),
        ]
    );
    assert!(
        !e.iter().any(|m| m.contains("hunter2")),
        "password echoed: {e:?}"
    );
}

#[test]
fn consul_timeout_may_be_longer_than_the_minimum() {
    let c = load_env(
        "[consul]\naddresses = [\"http://127.0.0.1:8500\"]\nwait = \"16s\"\ntimeout = \"1m\"\n\
         [pools.base]\nconsul_prefix = \"upstreams/base/\"\n",
        None,
    )
    .unwrap();
    assert_eq!(c.consul.timeout, Duration::from_secs(60));
    let e = errors(
        "[consul]\naddresses = [\"http://127.0.0.1:8500\"]\nwait = \"16s\"\ntimeout = \"19s\"\n\
         [pools.base]\nconsul_prefix = \"upstreams/base/\"\n",
    );
    assert!(e[0].contains("= 20s"), "16s + 1s + 3s: {e:?}");
}

#[test]
fn consul_token_comes_from_the_file_else_the_environment_and_is_never_shown() {
    let with_file = CONSUL.replace("[consul]\n", "[consul]\ntoken = \"s3cret-file\"\n");
    let c = load_env(&with_file, Some("from-env")).unwrap();
    assert_eq!(
        c.consul.token.as_ref().map(Secret::expose),
        Some("s3cret-file")
    );
    let c = load_env(CONSUL, Some("from-env")).unwrap();
    assert_eq!(
        c.consul.token.as_ref().map(Secret::expose),
        Some("from-env")
    );
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("from-env") && debug.contains("<redacted>"),
        "{debug}"
    );
    let e = load_env(CONSUL, Some("bad token\n")).unwrap_err();
    let e: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert_eq!(
        e,
        vec![
            "GRAYSPLIT_CONSUL_TOKEN: must be printable ASCII without spaces (the value is not \
              shown: it is a secret)"
        ]
    );
    // A TOML syntax error on the token line does not quote the token.
    let e = errors("[consul]\ntoken = \"s3cret-typo\n");
    assert!(!e[0].contains("s3cret-typo"), "{e:?}");
}

#[test]
fn dump_path_rules() {
    let e = errors(&format!("{MINIMAL}dump_path = \"base.dump\"\n"));
    assert_eq!(
        e,
        vec![
            "pools.base.dump_path = \"base.dump\": only applies to a pool with `consul_prefix` \
              (a `file` pool is its own dump)"
        ]
    );
    let e = errors(&format!(
        "{CONSUL}dump_path = \"d.conf\"\n[pools.gray]\nconsul_prefix = \"upstreams/gray/\"\n\
         dump_path = \"d.conf\"\n"
    ));
    assert_eq!(
        e,
        vec![
            "pools.gray.dump_path = \"d.conf\": is also the dump_path of pool \"base\": each \
              pool needs its own"
        ]
    );
}

#[test]
fn documented_consul_keys_are_valid_and_are_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/graysplit.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text
        .find("#[consul]\n")
        .expect("a documented [consul] section");
    // The commented-out keys (`#key = value`), without the prose (`# ...`).
    let section: String = text[start..]
        .lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with('#') && !l.starts_with("# "))
        .map(|l| format!("{}\n", &l[1..]))
        .collect();
    let documented = load_env(
        &format!("{section}[pools.base]\nconsul_prefix = \"upstreams/base/\"\n"),
        None,
    )
    .unwrap_or_else(|e| panic!("{e:?} in\n{section}"));
    let defaults = load_env(CONSUL, None).unwrap();
    let (d, k) = (&documented.consul, &defaults.consul);
    assert_eq!(d.addresses, k.addresses);
    assert_eq!(
        (
            d.wait,
            d.interval,
            d.timeout,
            d.strong_dependency,
            d.max_backoff
        ),
        (
            k.wait,
            k.interval,
            k.timeout,
            k.strong_dependency,
            k.max_backoff
        ),
        "conf/graysplit.toml documents the defaults"
    );
    assert!(d.token.is_none());
}

#[test]
fn failure_semantics_keys_have_their_defaults_and_rules() {
    let c = load_env(CONSUL, None).unwrap();
    assert_eq!(c.consul.max_backoff, Duration::from_secs(2));
    assert_eq!(c.upstream.default_host, None);
    assert!(c.upstream.fail_on_status.is_empty());
    let c = load(&format!(
        "{MINIMAL}[upstream]\ndefault_host = \"www.example.com:8080\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.upstream.default_host.as_deref(),
        Some("www.example.com:8080")
    );
    let e = errors(&format!(
        "{MINIMAL}[upstream]\ndefault_host = \"a b\"\n[consul]\nmax_backoff = \"0s\"\n"
    ));
    for want in [
        "upstream.default_host = \"a b\": must be a host name",
        "consul.max_backoff = \"0s\": must be greater than zero",
    ] {
        assert!(e.iter().any(|m| m.starts_with(want)), "{want:?} in {e:#?}");
    }
    let e = errors(&format!("{MINIMAL}[consul]\nmax_backoff = \"10m\"\n"));
    assert!(
        e.iter()
            .any(|m| m.starts_with("consul.max_backoff = \"10m\": must be at most 5m")),
        "{e:#?}"
    );
}
