//! `graysplit -t`: exit 0 with `configuration OK`, or exit 2 with every problem.

mod common;

use common::proc::run;

fn check(conf: &str, files: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let path = dir.path().join("graysplit.toml");
    std::fs::write(&path, conf).unwrap();
    let out = run(&["-t", "-c", path.to_str().unwrap()]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BASE: &str = "[pools.base]\nfile = \"base.conf\"\n";

#[test]
fn valid_config_prints_configuration_ok() {
    let (code, out, _) = check(BASE, &[("base.conf", "server 127.0.0.1:1;\n")]);
    assert_eq!(code, 0);
    assert!(out.starts_with("configuration OK"), "{out}");
}

#[test]
fn shipped_config_is_ok() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/graysplit.toml");
    let out = run(&["-t", "-c", conf]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn missing_file_exits_2() {
    let out = run(&["-t", "-c", "/nonexistent/graysplit.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/graysplit.toml: cannot read configuration file"),
        "{err}"
    );
}

#[test]
fn bad_toml_exits_2_with_position() {
    let (code, _, err) = check("[server\n", &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid TOML") && err.contains("line 1"),
        "{err}"
    );
}

#[test]
fn every_problem_is_listed_with_key_value_and_rule() {
    let conf = format!(
        "{BASE}[server]\nlisten = \"0.0.0.0:9000\"\nadmin_listen = \"127.0.0.1:9000\"\ngrace_period = \"5\"\n\
         [upstream]\nconnect_timeout = \"1 second\"\n[pools.\"\"]\nfile = \"x.conf\"\n[pools.gray]\nfile = \"g.conf\"\ncolour = \"grey\"\n"
    );
    let (code, _, err) = check(&conf, &[("base.conf", "")]);
    assert_eq!(code, 2);
    for needle in [
        "server.admin_listen = \"127.0.0.1:9000\": clashes with server.listen",
        "server.grace_period = \"5\": must be a number with a unit",
        "upstream.connect_timeout = \"1 second\": must be a number with a unit",
        "pools = \"\": pool name must be",
        "pools.gray.colour: unknown key",
        "test failed (5 errors)",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn unparsable_address_and_cidr_like_values_are_refused() {
    let (code, _, err) = check(
        &format!("{BASE}[server]\nlisten = \"10.0.0.0/8\"\n"),
        &[("base.conf", "")],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("server.listen = \"10.0.0.0/8\": must be an address with a port"),
        "{err}"
    );
}

#[test]
fn pools_file_problems_fail_the_test_with_line_numbers() {
    let (code, _, err) = check(
        BASE,
        &[(
            "base.conf",
            "server 127.0.0.1:1;\nserver 127.0.0.1:2 wieght=1;\n",
        )],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("line 2") && err.contains("unknown parameter \"wieght=1\""),
        "{err}"
    );
    let (code, _, err) = check(BASE, &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("pools.base.file") && err.contains("cannot read pools file"),
        "{err}"
    );
}
