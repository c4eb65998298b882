//! The dump stays includable by nginx for every value graysplit accepts (issue 16, point 3): a
//! rollback is `include /var/lib/graysplit/base.conf;` inside an `upstream {}` block, and it must
//! work exactly when a drain is in progress. Checked with Debian's real `nginx -t` (and a real
//! nginx proxying through the dump), then read back by graysplit: a drained server comes back
//! drained — not down — while nginx, which cannot drain, keeps it out as `down`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::consul::ConsulStandIn;
use common::nginx::{self, Nginx};
use common::proc::Graysplit;
use common::upstream::Upstream;
use common::{client, eventually, free_addr};
use graysplit::upstream::server::ServerSpec;
use graysplit::upstream::{dump, upsync_format};

/// `nginx -t` on `http_body`; panics with nginx's reasons unless it passes.
fn assert_nginx_accepts(http_body: &str) {
    let out = nginx::test_config(http_body);
    assert!(
        out.status.success(),
        "nginx -t refused it:\n{}\n--- config:\n{http_body}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every combination of the values graysplit accepts (pools file, Consul), on distinct ports,
/// with every kind of address.
fn every_value() -> Vec<ServerSpec> {
    let weights = [0, 1, 2, 100, u32::MAX];
    let max_fails = [0, 1, 2, u32::MAX];
    let fail_timeouts =
        [0, 1, 999, 1000, 1500, 10_000, 90_000, 86_400_000].map(Duration::from_millis);
    let builds = [None, Some("2026.11.2-rc_1")];
    let mut out = Vec::new();
    let mut port = 1000u16;
    for weight in weights {
        for mf in max_fails {
            for ft in fail_timeouts {
                for (down, backup) in [(false, false), (true, false), (false, true), (true, true)] {
                    for build in builds {
                        port += 1;
                        let name = match port % 3 {
                            0 => format!("127.0.0.1:{port}"),
                            1 => format!("[::1]:{port}"),
                            _ => format!("localhost:{port}"),
                        };
                        let addr = upsync_format::resolve(&name).expect("resolves");
                        out.push(ServerSpec {
                            addr,
                            name,
                            weight,
                            max_fails: mf,
                            fail_timeout: ft,
                            down,
                            backup,
                            build: build.map(str::to_string),
                        });
                    }
                }
            }
        }
    }
    out
}

fn write_dump(dir: &Path, name: &str, servers: &[ServerSpec]) -> String {
    let path = dir.join(name);
    dump::write_atomically(&path, &dump::render(name, "upstreams/x/", servers)).expect("dump");
    path.display().to_string()
}

#[test]
fn every_value_graysplit_accepts_makes_a_dump_nginx_includes_and_graysplit_reads_back() {
    let specs = every_value();
    assert_eq!(specs.len(), 1280);
    let dir = tempfile::tempdir().unwrap();
    let one = |s: &ServerSpec| {
        let mut s = s.clone();
        s.backup = false;
        s
    };
    let drained = one(&specs.iter().find(|s| s.weight == 0).unwrap().clone());
    let pools: Vec<(&str, Vec<ServerSpec>)> = vec![
        ("all", specs.clone()),
        ("empty", vec![]),
        (
            "backups_only",
            specs.iter().filter(|s| s.backup).take(3).cloned().collect(),
        ),
        (
            "down_only",
            specs
                .iter()
                .filter(|s| s.down && !s.backup)
                .take(3)
                .cloned()
                .collect(),
        ),
        ("one_drained", vec![drained]),
    ];
    let mut body = String::new();
    for (name, servers) in &pools {
        let path = write_dump(dir.path(), name, servers);
        body.push_str(&format!("upstream {name} {{\n  include {path};\n}}\n"));
    }
    assert_nginx_accepts(&body);
    for (name, servers) in &pools {
        let parsed = dump::load(&dir.path().join(name)).unwrap().unwrap();
        assert!(parsed.errors.is_empty(), "{name}: {:?}", parsed.errors);
        assert_eq!(&parsed.servers, servers, "{name} reads back exactly");
    }
    // What the dump used to write, and why it had to change.
    let old = nginx::test_config("upstream u { server 127.0.0.1:1 weight=0; }");
    assert!(String::from_utf8_lossy(&old.stderr).contains("invalid parameter \"weight=0\""));
    let old = nginx::test_config("upstream u { server 127.0.0.1:1 fail_timeout=1500ms; }");
    assert!(!old.status.success(), "nginx takes fail_timeout in seconds");
}

/// The Consul keys of the drain scenario: `a` serves, `b` is being drained, `c` is a down backup.
fn put_pool(consul: &ConsulStandIn, a: SocketAddr, b: SocketAddr, c: SocketAddr) {
    consul.put(
        &format!("upstreams/base/{a}"),
        r#"{"weight":2,"build":"v1"}"#,
    );
    consul.put(
        &format!("upstreams/base/{b}"),
        r#"{"weight":0,"build":"v2","fail_timeout":"1500ms"}"#,
    );
    consul.put(
        &format!("upstreams/base/{c}"),
        r#"{"down":1,"backup":1,"max_fails":0}"#,
    );
}

fn consul_config(address: &str) -> String {
    // `address` as upsync writes it, without a scheme (issue 16, point 4).
    format!(
        "[health]\nenabled = false\n\
         [consul]\naddresses = [\"{address}\"]\nwait = \"2s\"\ninterval = \"100ms\"\n\
         [pools.base]\nconsul_prefix = \"upstreams/base/\"\ndump_path = \"base.dump\"\n\
         [pools.gray]\nconsul_prefix = \"upstreams/gray/\"\ndump_path = \"gray.dump\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_taken_during_a_drain_rolls_back_to_nginx_and_reloads_drained() {
    let consul = ConsulStandIn::start();
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    let c = free_addr();
    put_pool(&consul, a.addr, b.addr, c);
    let g = Graysplit::start(&consul_config(&consul.addr().to_string()), &[]);
    let (base_dump, gray_dump) = eventually(Duration::from_secs(5), "both dumps", || async {
        let base = std::fs::read_to_string(g.path("base.dump")).ok()?;
        let gray = std::fs::read_to_string(g.path("gray.dump")).ok()?;
        (upsync_format::parse(&base).servers.len() == 3).then_some((base, gray))
    })
    .await;
    assert!(
        base_dump.contains(&format!(
            "server {} weight=1 max_fails=2 fail_timeout=2s down; # build=v2 graysplit: weight=0 fail_timeout=1500ms",
            b.addr
        )),
        "{base_dump}"
    );
    assert!(gray_dump.contains("graysplit: placeholder"), "{gray_dump}");

    // The rollback: a real nginx includes both dumps and proxies to base. It cannot drain, so
    // the drained server gets nothing; the down backup neither.
    let (base_path, gray_path) = (g.path("base.dump"), g.path("gray.dump"));
    assert_nginx_accepts(&format!(
        "upstream base {{ include {}; }}\nupstream gray {{ include {}; }}\n",
        base_path.display(),
        gray_path.display()
    ));
    let proxy = Nginx::start(|port| {
        format!(
            "  upstream base {{ include {}; }}\n  upstream gray {{ include {}; }}\n  \
             server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://base; }}\n  }}\n",
            base_path.display(),
            gray_path.display()
        )
    });
    let http = client();
    let (a_before, b_before) = (a.hits(), b.hits());
    for _ in 0..10 {
        let r = http
            .get(format!("http://{}/", proxy.addr))
            .send()
            .await
            .expect("through nginx");
        assert_eq!(r.status(), 200, "{}", proxy.error_log());
    }
    assert_eq!(
        a.hits() - a_before,
        10,
        "nginx sends everything to the live server"
    );
    assert_eq!(
        b.hits() - b_before,
        0,
        "the drained server is down for nginx"
    );

    // graysplit restarted from the dump while Consul is gone: the drain is still a drain.
    let dumps = [
        ("base.dump", base_dump.as_str()),
        ("gray.dump", gray_dump.as_str()),
    ];
    let dead_consul = free_addr();
    drop(g);
    drop(consul);
    let g = Graysplit::start(&consul_config(&dead_consul.to_string()), &dumps);
    let s = common::get_json(g.admin_url("/status?format=json")).await;
    let servers = s["pools"]["base"]["servers"].as_array().cloned().unwrap();
    let by_name = |addr: SocketAddr| {
        servers
            .iter()
            .find(|v| v["name"] == addr.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("{addr} in {s}"))
    };
    let drained = by_name(b.addr);
    assert_eq!(
        (
            &drained["weight"],
            &drained["down"],
            &drained["draining"],
            &drained["fail_timeout"]
        ),
        (
            &serde_json::json!(0),
            &serde_json::json!(false),
            &serde_json::json!(true),
            &serde_json::json!("1500ms")
        ),
        "{drained}"
    );
    assert_eq!(drained["build"], "v2");
    let backup = by_name(c);
    assert_eq!(
        (&backup["down"], &backup["backup"], &backup["max_fails"]),
        (
            &serde_json::json!(true),
            &serde_json::json!(true),
            &serde_json::json!(0)
        )
    );
    assert_eq!(
        s["pools"]["gray"]["servers"],
        serde_json::json!([]),
        "the placeholder is no server"
    );
    assert_eq!(s["consul"]["base"]["servers_from"], "dump");
    // Pages go to a only; the drained server takes no new page.
    for _ in 0..6 {
        let r = http
            .get(g.url("/"))
            .send()
            .await
            .expect("through graysplit");
        assert_eq!(r.headers()["x-served-by"], a.addr.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_addresses_without_a_scheme_are_followed_as_http() {
    let consul = ConsulStandIn::start();
    let a = Upstream::start("base");
    consul.put(&format!("upstreams/base/{}", a.addr), "");
    let g = Graysplit::start(&consul_config(&consul.addr().to_string()), &[]);
    let s = eventually(Duration::from_secs(5), "the pool from Consul", || async {
        let s = common::get_json(g.admin_url("/status?format=json")).await;
        (s["pools"]["base"]["servers"].as_array()?.len() == 1).then_some(s)
    })
    .await;
    assert_eq!(
        s["consul"]["base"]["address"],
        format!("http://{}", consul.addr()),
        "{s}"
    );
    assert!(consul.gets_served() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_left_by_an_older_version_is_rewritten_in_the_form_nginx_accepts() {
    let consul = ConsulStandIn::start();
    let a = Upstream::start("base");
    let drained = free_addr();
    consul.put(&format!("upstreams/base/{}", a.addr), "");
    consul.put(&format!("upstreams/base/{drained}"), r#"{"weight":0}"#);
    // What graysplit wrote before: the same servers, with a weight nginx refuses.
    let old = format!(
        "server {} weight=1 max_fails=2 fail_timeout=10s;\nserver {drained} weight=0 max_fails=2 fail_timeout=10s;\n",
        a.addr
    );
    let g = Graysplit::start(
        &consul_config(&consul.addr().to_string()),
        &[("base.dump", &old)],
    );
    let path = g.path("base.dump");
    eventually(Duration::from_secs(5), "the dump rewritten", || async {
        let text = std::fs::read_to_string(&path).ok()?;
        text.contains("graysplit: weight=0").then_some(())
    })
    .await;
    assert_nginx_accepts(&format!("upstream base {{ include {}; }}", path.display()));
}
