//! The public entrypoint (issue 14) with real clients: `curl --http1.1` / `--http2` over TLS
//! against certificates made here by Debian's `openssl`, certificate hot reload under a request
//! loop, the HTTP → HTTPS redirect, PROXY protocol v1/v2 from trusted and untrusted peers, a
//! graceful upgrade handing TLS and IPv6 sockets over, and `graysplit -t` on broken certificates.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::certs;
use common::proc::{Graysplit, ServerOptions};
use common::redis::RedisServer;
use common::upstream::{CaptureUpstream, Upstream};
use common::{eventually, free_addr};

const HOST: &str = "site.test";
const GRAY_BUILD: &str = "gray-2026.11.2";

/// A CA and a leaf for `site.test` in `dir`, named `site.crt` / `site.key` (the config's paths).
fn site_certs(dir: &Path) -> PathBuf {
    let ca = certs::ca(dir);
    certs::leaf(dir, "site", HOST);
    ca
}

fn tls_toml(extra: &str) -> String {
    format!("[tls]\nreload_interval = \"100ms\"\n{extra}\n[[tls.certificates]]\ncert = \"site.crt\"\nkey = \"site.key\"\n")
}

/// Starts graysplit and waits until every extra listener accepts too: the harness waits for the
/// first (plain) one, and Pingora binds a service's endpoints one after another.
fn start(
    opts: &ServerOptions,
    toml: &str,
    files: &[(&str, &str)],
    extra: &[SocketAddr],
) -> Graysplit {
    let g = Graysplit::start_with(opts, toml, files);
    for addr in extra {
        common::eventually_sync(
            Duration::from_secs(10),
            &format!("{addr} to listen"),
            || std::net::TcpStream::connect(addr).ok().map(|_| ()),
        );
    }
    g
}

/// One answer as curl saw it.
#[derive(Debug)]
struct Resp {
    status: u16,
    version: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `curl <args> <url>` trusting `ca`, with `site.test` (and `*.site.test`) resolved to `addr`.
fn curl(
    ca: &Path,
    addr: SocketAddr,
    url_path: &str,
    scheme: &str,
    host: &str,
    args: &[&str],
) -> Resp {
    let dir = tempfile::tempdir().expect("tempdir");
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{}:{}", addr.port(), addr.ip()))
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .arg(format!("{scheme}://{host}:{}{url_path}", addr.port()))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = String::from_utf8_lossy(&out.stdout).to_string();
    let (status, version) = w.split_once(' ').expect("status and version");
    let head = std::fs::read_to_string(head).unwrap_or_default();
    // With -L the head file holds every hop; keep the last.
    let last = head
        .rsplit("\r\n\r\n")
        .find(|h| !h.trim().is_empty())
        .unwrap_or("");
    let headers = last
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status: status.parse().expect("status"),
        version: version.to_string(),
        headers,
        body: std::fs::read_to_string(body).unwrap_or_default(),
    }
}

/// The pool and build a pin cookie names (`v1.<pool>.<build>.<issued>.<sig>`), and whether
/// the cookie is `Secure`.
fn pin_of(set_cookie: &str) -> (String, bool) {
    let value = set_cookie.split(';').next().unwrap_or("");
    let fields: Vec<&str> = value.split('.').collect();
    let secure = set_cookie.split(';').any(|a| a.trim() == "Secure");
    (fields[1..fields.len() - 2].join("."), secure)
}

fn build_of(r: &Resp) -> &'static str {
    if r.body.contains(GRAY_BUILD) {
        "gray"
    } else {
        "base"
    }
}

#[test]
fn curl_over_tls_http1_and_http2_decide_and_pin_as_plain_http() {
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    let tls = free_addr();
    let opts = ServerOptions {
        extra_listeners: vec![format!("{{ addr = \"{tls}\", tls = true }}")],
        ..ServerOptions::default()
    };
    let pools = format!(
        "[pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n\
         [[gray.rules]]\nheader = \"x-canary\"\nequals = \"1\"\npool = \"gray\"\n\
         [[gray.rules]]\nheader = \"host\"\nprefix = \"beta.\"\npool = \"gray\"\n{}",
        tls_toml("")
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = site_certs(dir.path());
    let files = [
        ("base.conf", format!("{}\n", base.line(""))),
        ("gray.conf", format!("{}\n", gray.line(""))),
        (
            "site.crt",
            std::fs::read_to_string(dir.path().join("site.crt")).unwrap(),
        ),
        (
            "site.key",
            std::fs::read_to_string(dir.path().join("site.key")).unwrap(),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = start(&opts, &pools, &refs, &[tls]);

    let page = ["-H", "sec-fetch-dest: document"];
    let canary = ["-H", "sec-fetch-dest: document", "-H", "x-canary: 1"];
    let ways: [(&str, SocketAddr, &[&str], &str); 3] = [
        ("http", g.listen, &["--http1.1"], "1.1"),
        ("https", tls, &["--http1.1"], "1.1"),
        ("https", tls, &["--http2"], "2"),
    ];
    let mut pins = Vec::new();
    for (scheme, addr, proto, version) in ways {
        let with = |extra: &[&'static str]| -> Vec<&'static str> { [proto, extra].concat() };
        let plain = curl(&ca, addr, "/", scheme, HOST, &with(&page));
        let gray_by_header = curl(&ca, addr, "/", scheme, HOST, &with(&canary));
        // The Host rule: over HTTP/2 the name arrives as :authority, not as a Host header.
        let gray_by_host = curl(
            &ca,
            addr,
            "/",
            scheme,
            &format!("beta.{HOST}"),
            &with(&page),
        );
        for (r, want) in [
            (&plain, "base"),
            (&gray_by_header, "gray"),
            (&gray_by_host, "gray"),
        ] {
            assert_eq!(
                (r.status, r.version.as_str()),
                (200, version),
                "{scheme} {proto:?}: {r:?}"
            );
            assert_eq!(build_of(r), want, "{scheme} {proto:?}: {r:?}");
            assert_eq!(r.header("x-graysplit-pool"), Some(want));
        }
        let (pin, secure) = pin_of(gray_by_header.header("set-cookie").expect("a pin"));
        assert_eq!(secure, scheme == "https", "Secure exactly on TLS");
        assert_eq!(
            gray_by_header.header("strict-transport-security"),
            None,
            "no HSTS unless configured"
        );
        pins.push(pin);
    }
    assert!(pins.iter().all(|p| *p == pins[0]), "{pins:?}");
    assert_eq!(
        pins[0],
        format!("gray.gray"),
        "pool gray, build gray (the pool's name)"
    );

    // A pin issued over plain HTTP is followed over HTTP/2: the asset stays on gray.
    let r = curl(&ca, g.listen, "/", "http", HOST, &canary);
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let asset = curl(
        &ca,
        tls,
        "/assets/app.9abd1b9d.js",
        "https",
        HOST,
        &[
            "--http2",
            "-H",
            "sec-fetch-dest: script",
            "-H",
            &format!("cookie: {cookie}"),
        ],
    );
    assert_eq!(
        (asset.status, asset.header("x-graysplit-reason")),
        (200, Some("sticky"))
    );
    assert_eq!(asset.header("x-graysplit-pool"), Some("gray"));
}

#[test]
fn upstreams_get_the_host_from_authority_and_x_forwarded_proto() {
    let up = CaptureUpstream::start();
    let tls = free_addr();
    let opts = ServerOptions {
        extra_listeners: vec![format!("{{ addr = \"{tls}\", tls = true }}")],
        ..ServerOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = site_certs(dir.path());
    let files = [
        ("base.conf", format!("server {};\n", up.addr)),
        (
            "site.crt",
            std::fs::read_to_string(dir.path().join("site.crt")).unwrap(),
        ),
        (
            "site.key",
            std::fs::read_to_string(dir.path().join("site.key")).unwrap(),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = start(
        &opts,
        &format!("[pools.base]\nfile = \"base.conf\"\n{}", tls_toml("")),
        &refs,
        &[tls],
    );
    let head = |path: &str| {
        up.requests
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|h| h.starts_with(&format!("GET {path} ")))
            .cloned()
            .unwrap_or_else(|| panic!("no request for {path}"))
    };
    let header = |head: &str, name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    curl(&ca, tls, "/h2", "https", HOST, &["--http2"]);
    let h = head("/h2");
    assert_eq!(header(&h, "host").as_deref(), Some(HOST), "{h}");
    assert_eq!(
        header(&h, "x-forwarded-proto").as_deref(),
        Some("https"),
        "{h}"
    );
    assert!(
        h.ends_with("HTTP/1.1\r\n") || h.contains(" HTTP/1.1"),
        "an origin-form HTTP/1.1 request: {h}"
    );

    curl(
        &ca,
        g.listen,
        "/h1",
        "http",
        HOST,
        &["-H", "x-forwarded-proto: https"],
    );
    let h = head("/h1");
    assert_eq!(
        header(&h, "x-forwarded-proto").as_deref(),
        Some("https"),
        "a trusted proxy's (loopback) value is kept: {h}"
    );
    curl(
        &ca,
        g.listen,
        "/untrusted",
        "http",
        HOST,
        &["--interface", "127.0.0.2", "-H", "x-forwarded-proto: https"],
    );
    let h = head("/untrusted");
    assert_eq!(
        header(&h, "x-forwarded-proto").as_deref(),
        Some("http"),
        "ours: {h}"
    );
}

/// Serials (hex, no colons or leading zeros) of the certificates handshakes presented.
fn norm_serial(s: &str) -> String {
    s.replace(':', "")
        .trim_start_matches('0')
        .to_ascii_uppercase()
}

fn tls_client(ca: &Path, addr: SocketAddr) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve(HOST, addr)
        .tls_info(true)
        // A new connection, so a new handshake, for every request.
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn served_serial(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let r = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let der = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .ok_or("no peer certificate")?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    Ok(norm_serial(&cert.raw_serial_as_string()))
}

async fn metric(g: &Graysplit, name: &str) -> Option<f64> {
    let text = common::client()
        .get(g.admin_url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    graysplit::metrics::text_format::parse(&text)
        .ok()?
        .into_iter()
        .find(|(k, _)| k.starts_with(name))
        .map(|(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_serves_at_once_and_a_broken_one_keeps_the_old() {
    let base = Upstream::start("base");
    let tls = free_addr();
    let opts = ServerOptions {
        extra_listeners: vec![format!("{{ addr = \"{tls}\", tls = true }}")],
        ..ServerOptions::default()
    };
    let certs_dir = tempfile::tempdir().unwrap();
    let ca = site_certs(certs_dir.path());
    let first = norm_serial(&certs::serial(&certs_dir.path().join("site.leaf")));
    let files = [
        ("base.conf", format!("{}\n", base.line(""))),
        (
            "site.crt",
            std::fs::read_to_string(certs_dir.path().join("site.crt")).unwrap(),
        ),
        (
            "site.key",
            std::fs::read_to_string(certs_dir.path().join("site.key")).unwrap(),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = start(
        &opts,
        &format!("[pools.base]\nfile = \"base.conf\"\n{}", tls_toml("")),
        &refs,
        &[tls],
    );

    // A request loop, one handshake per request; every answer's serial is recorded in order.
    let url = format!("https://{HOST}:{}/", tls.port());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (ca, url, stop, ok, failed, seen, errors) = (
            ca.clone(),
            url.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            seen.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // A client per request: a fresh TLS session each time (a resumed one shows the
                // certificate of the session it resumes, not the one in service now).
                match served_serial(&tls_client(&ca, tls), &url).await {
                    Ok(s) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        seen.lock().unwrap().push(s);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(e);
                    }
                }
            }
        }));
    }
    let latest = || seen.lock().unwrap().last().cloned();
    eventually(Duration::from_secs(10), "the first certificate", || {
        let hit = latest().as_deref() == Some(first.as_str());
        async move { hit.then_some(()) }
    })
    .await;

    // A new pair, written as a deploy tool would (each file renamed into place, key first).
    let next = tempfile::tempdir().unwrap();
    std::fs::copy(certs_dir.path().join("ca.crt"), next.path().join("ca.crt")).unwrap();
    std::fs::copy(certs_dir.path().join("ca.key"), next.path().join("ca.key")).unwrap();
    certs::leaf(next.path(), "site", HOST);
    let second = norm_serial(&certs::serial(&next.path().join("site.leaf")));
    assert_ne!(first, second);
    g.write_file(
        "site.key",
        &std::fs::read_to_string(next.path().join("site.key")).unwrap(),
    );
    g.write_file(
        "site.crt",
        &std::fs::read_to_string(next.path().join("site.crt")).unwrap(),
    );
    let switched_at = eventually(
        Duration::from_secs(10),
        "handshakes with the new serial",
        || {
            let s = seen.lock().unwrap();
            let at = s.iter().position(|x| *x == second);
            async move { at }
        },
    )
    .await;
    {
        let s = seen.lock().unwrap();
        let after: Vec<&String> = s[switched_at..].iter().filter(|x| **x != second).collect();
        // Two loops: at most the one handshake the other loop had in flight at the swap.
        assert!(
            after.len() <= 1,
            "the old serial after the new one: {after:?}"
        );
    }

    // A broken replacement: the old (second) certificate keeps serving, the metric says so.
    g.write_file(
        "site.crt",
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    eventually(
        Duration::from_secs(10),
        "the reload failure metric",
        || async {
            (metric(&g, "graysplit_tls_certificate_reload_failing").await == Some(1.0))
                .then_some(())
        },
    )
    .await;
    let mark = seen.lock().unwrap().len();
    eventually(
        Duration::from_secs(10),
        "more handshakes after the broken file",
        || {
            let n = seen.lock().unwrap().len();
            async move { (n >= mark + 20).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let after_broken: Vec<String> = seen.lock().unwrap()[mark..].to_vec();
    assert!(
        after_broken.iter().all(|x| *x == second),
        "still the second certificate"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{:?}",
        errors.lock().unwrap()
    );
    assert!(ok.load(Ordering::Relaxed) > 40);
    assert!(metric(&g, "graysplit_tls_certificate_reload_errors_total").await >= Some(1.0));
    assert!(
        g.log().contains("still serving the previous one"),
        "{}",
        g.log()
    );
    println!(
        "{} handshakes, 0 failed, switched at #{switched_at}",
        ok.load(Ordering::Relaxed)
    );
}

#[test]
fn sighup_reloads_at_once() {
    let base = Upstream::start("base");
    let tls = free_addr();
    let opts = ServerOptions {
        extra_listeners: vec![format!("{{ addr = \"{tls}\", tls = true }}")],
        ..ServerOptions::default()
    };
    let certs_dir = tempfile::tempdir().unwrap();
    let ca = site_certs(certs_dir.path());
    let files = [
        ("base.conf", format!("{}\n", base.line(""))),
        (
            "site.crt",
            std::fs::read_to_string(certs_dir.path().join("site.crt")).unwrap(),
        ),
        (
            "site.key",
            std::fs::read_to_string(certs_dir.path().join("site.key")).unwrap(),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let toml = "[pools.base]\nfile = \"base.conf\"\n[tls]\nreload_interval = \"1h\"\n\
                [[tls.certificates]]\ncert = \"site.crt\"\nkey = \"site.key\"\n";
    let g = start(&opts, toml, &refs, &[tls]);
    certs::leaf(certs_dir.path(), "next", HOST);
    let want = norm_serial(&certs::serial(&certs_dir.path().join("next.leaf")));
    g.write_file(
        "site.key",
        &std::fs::read_to_string(certs_dir.path().join("next.key")).unwrap(),
    );
    g.write_file(
        "site.crt",
        &std::fs::read_to_string(certs_dir.path().join("next.crt")).unwrap(),
    );
    g.signal(libc::SIGHUP);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!("https://{HOST}:{}/", tls.port());
        eventually(
            Duration::from_secs(10),
            "the new serial after SIGHUP",
            || async {
                // A fresh client each time: no resumed TLS session.
                (served_serial(&tls_client(&ca, tls), &url).await.ok() == Some(want.clone()))
                    .then_some(())
            },
        )
        .await;
    });
    assert!(g.log().contains("SIGHUP"), "{}", g.log());
}

#[test]
fn plain_http_is_redirected_to_https_except_acme_and_hsts_rides_on_tls() {
    let base = Upstream::start("base");
    let (tls, redirect) = (free_addr(), free_addr());
    let opts = ServerOptions {
        extra_listeners: vec![
            format!("{{ addr = \"{tls}\", tls = true }}"),
            format!(
                "{{ addr = \"{redirect}\", https_redirect = true, https_port = {} }}",
                tls.port()
            ),
        ],
        ..ServerOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = site_certs(dir.path());
    let files = [
        ("base.conf", format!("{}\n", base.line(""))),
        (
            "site.crt",
            std::fs::read_to_string(dir.path().join("site.crt")).unwrap(),
        ),
        (
            "site.key",
            std::fs::read_to_string(dir.path().join("site.key")).unwrap(),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let toml = format!(
        "[pools.base]\nfile = \"base.conf\"\n{}",
        tls_toml("hsts = \"max-age=600\"")
    );
    let g = start(&opts, &toml, &refs, &[tls, redirect]);

    let r = curl(&ca, redirect, "/a/b.html?x=1&y=%20z", "http", HOST, &[]);
    assert_eq!(r.status, 308, "{r:?}");
    let want = format!("https://{HOST}:{}/a/b.html?x=1&y=%20z", tls.port());
    assert_eq!(r.header("location"), Some(want.as_str()));
    assert_eq!(
        r.header("strict-transport-security"),
        None,
        "never over plain HTTP"
    );
    let head = curl(&ca, redirect, "/p?q", "http", HOST, &["-I"]);
    assert_eq!(head.status, 308);
    assert!(
        !head.body.contains("Permanent Redirect:"),
        "no body for HEAD: {head:?}"
    );

    // Followed by curl: HTTP/2 over TLS, with HSTS.
    let resolve_tls = format!("{HOST}:{}:{}", tls.port(), tls.ip());
    let followed = curl(
        &ca,
        redirect,
        "/?from=http",
        "http",
        HOST,
        &[
            "-L",
            "--resolve",
            &resolve_tls,
            "-H",
            "sec-fetch-dest: document",
        ],
    );
    assert_eq!(
        (followed.status, followed.version.as_str()),
        (200, "2"),
        "{followed:?}"
    );
    assert_eq!(
        followed.header("strict-transport-security"),
        Some("max-age=600")
    );

    // The ACME HTTP-01 path is proxied over plain HTTP (the fixture has no such file: 404).
    let acme = curl(
        &ca,
        redirect,
        "/.well-known/acme-challenge/token-1",
        "http",
        HOST,
        &[],
    );
    assert_ne!(acme.status, 308, "{acme:?}");
    assert_eq!(acme.header("x-graysplit-pool"), Some("base"));

    // A listener without https_redirect is untouched.
    let plain = curl(&ca, g.listen, "/", "http", HOST, &[]);
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("strict-transport-security"), None);
}

/// Sends `preface` then a GET for `path` on a plain connection from `bind`; returns what came
/// back (empty when the connection was closed without an answer).
fn raw_exchange(bind: &str, to: SocketAddr, preface: &[u8], path: &str) -> String {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&bind.parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&to.into()).unwrap();
    let mut s: std::net::TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(preface);
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The same over TLS (rustls, trusting `ca`), the PROXY header sent before the handshake.
fn tls_exchange(bind: &str, to: SocketAddr, preface: &[u8], path: &str, ca: &Path) -> String {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&bind.parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&to.into()).unwrap();
    let mut tcp: std::net::TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if tcp.write_all(preface).is_err() {
        return String::new();
    }
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), HOST.try_into().unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn v2_header(src: &str, dst: SocketAddr, local: bool) -> Vec<u8> {
    use ppp::v2;
    let src: SocketAddr = src.parse().unwrap();
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        unreachable!()
    };
    let command = if local {
        v2::Command::Local
    } else {
        v2::Command::Proxy
    };
    v2::Builder::with_addresses(
        v2::Version::Two | command,
        v2::Protocol::Stream,
        v2::IPv4::new(*s.ip(), *d.ip(), s.port(), d.port()),
    )
    .write_tlv(v2::Type::NoOp, b"padding")
    .unwrap()
    .build()
    .unwrap()
}

fn header_line<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

#[test]
fn proxy_protocol_names_the_client_for_trusted_peers_only() {
    let redis = RedisServer::start();
    // The seed's whitelist: `redis-cli set <ip> <ip>`.
    redis.cli(&["set", "203.0.113.7", "203.0.113.7"]);
    let base = Upstream::start("base");
    let gray = CaptureUpstream::start();
    let (plain_pp, tls_pp) = (free_addr(), free_addr());
    let opts = ServerOptions {
        extra_listeners: vec![
            format!("{{ addr = \"{plain_pp}\", proxy_protocol = true }}"),
            format!("{{ addr = \"{tls_pp}\", tls = true, proxy_protocol = true }}"),
        ],
        ..ServerOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = site_certs(dir.path());
    let files = [
        ("base.conf", format!("{}\n", base.line(""))),
        ("gray.conf", format!("server {};\n", gray.addr)),
        (
            "site.crt",
            std::fs::read_to_string(dir.path().join("site.crt")).unwrap(),
        ),
        (
            "site.key",
            std::fs::read_to_string(dir.path().join("site.key")).unwrap(),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let toml = format!(
        "[pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n\
         [gray]\n[gray.redis]\nurl = \"{}\"\ntimeout = \"2s\"\n{}",
        redis.url(),
        tls_toml("")
    );
    let g = start(&opts, &toml, &refs, &[plain_pp, tls_pp]);
    let gray_head = |path: &str| {
        gray.requests
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|h| h.starts_with(&format!("GET {path} ")))
            .cloned()
            .unwrap_or_else(|| panic!("gray got no {path}"))
    };

    // From loopback (trusted): v1 and v2 on the plain listener, v2 before the TLS handshake.
    let v1 = format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 50000 {}\r\n",
        plain_pp.port()
    );
    let answers = [
        (
            "/v1",
            raw_exchange("127.0.0.1:0", plain_pp, v1.as_bytes(), "/v1"),
        ),
        (
            "/v2",
            raw_exchange(
                "127.0.0.1:0",
                plain_pp,
                &v2_header("203.0.113.7:50001", plain_pp, false),
                "/v2",
            ),
        ),
        (
            "/v2-tls",
            tls_exchange(
                "127.0.0.1:0",
                tls_pp,
                &v2_header("203.0.113.7:50002", tls_pp, false),
                "/v2-tls",
                &ca,
            ),
        ),
    ];
    for (path, a) in &answers {
        assert!(a.starts_with("HTTP/1.1 200"), "{path}: {a}");
        assert_eq!(
            header_line(a, "x-graysplit-pool"),
            Some("gray"),
            "{path}: the whitelisted client: {a}"
        );
        let h = gray_head(path);
        assert_eq!(header_line(&h, "x-real-ip"), Some("203.0.113.7"), "{h}");
        assert_eq!(
            header_line(&h, "x-forwarded-for"),
            Some("203.0.113.7"),
            "{h}"
        );
    }
    assert_eq!(
        header_line(&gray_head("/v2-tls"), "x-forwarded-proto"),
        Some("https")
    );

    // LOCAL (a balancer's own health check): the socket's address, not whitelisted.
    let local = raw_exchange(
        "127.0.0.1:0",
        plain_pp,
        &v2_header("203.0.113.7:1", plain_pp, true),
        "/local",
    );
    assert_eq!(
        header_line(&local, "x-graysplit-pool"),
        Some("base"),
        "{local}"
    );
    // A trusted peer that sends no header: closed.
    assert_eq!(raw_exchange("127.0.0.1:0", plain_pp, b"", "/none"), "");

    // From 127.0.0.2 (not in trusted_proxies): closed, whatever the header says.
    assert_eq!(
        raw_exchange("127.0.0.2:0", plain_pp, v1.as_bytes(), "/untrusted"),
        ""
    );
    let v2 = v2_header("203.0.113.7:50003", tls_pp, false);
    assert_eq!(
        tls_exchange("127.0.0.2:0", tls_pp, &v2, "/untrusted-tls", &ca),
        ""
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(async {
        eventually(Duration::from_secs(5), "the refusals counted", || async {
            metric(
                &g,
                "graysplit_proxy_protocol_refused_total{reason=\"untrusted\"}",
            )
            .await
            .filter(|n| *n >= 2.0)
        })
        .await
    });
    assert_eq!(refused, 2.0);
    assert_eq!(
        g.log()
            .matches("only counted: graysplit_proxy_protocol_refused_total{reason=\"untrusted\"}")
            .count(),
        1,
        "graysplit logs the first refusal, then only counts (Pingora itself logs every failed \
         TLS handshake): {}",
        g.log()
    );
    assert!(!gray
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|h| h.contains("/untrusted")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_hands_over_tls_and_ipv6_listeners() {
    let base = Upstream::start("base");
    let tls4 = free_addr();
    let tls6 = {
        let l = std::net::TcpListener::bind("[::1]:0").expect("IPv6 loopback");
        l.local_addr().unwrap()
    };
    let opts = ServerOptions {
        extra_listeners: vec![
            format!("{{ addr = \"{tls4}\", tls = true }}"),
            format!("{{ addr = \"{tls6}\", tls = true }}"),
        ],
        ..ServerOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = site_certs(dir.path());
    let files = [
        ("base.conf", format!("{}\n", base.line(""))),
        (
            "site.crt",
            std::fs::read_to_string(dir.path().join("site.crt")).unwrap(),
        ),
        (
            "site.key",
            std::fs::read_to_string(dir.path().join("site.key")).unwrap(),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let toml = format!("[pools.base]\nfile = \"base.conf\"\n{}", tls_toml(""));
    let mut g = start(&opts, &toml, &refs, &[tls4, tls6]);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    let targets = [
        (format!("http://{}/", g.listen), None),
        (format!("https://{HOST}:{}/", tls4.port()), Some(tls4)),
        (format!("https://{HOST}:{}/", tls6.port()), Some(tls6)),
    ];
    for (url, tls) in targets {
        for keepalive in [true, false] {
            let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10));
            if let Some(addr) = tls {
                let pem = std::fs::read(&ca).unwrap();
                b = b
                    .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                    .resolve(HOST, addr);
            }
            if !keepalive {
                b = b.pool_max_idle_per_host(0);
            }
            let (client, url, stop, ok, failed, errors) = (
                b.build().unwrap(),
                url.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                errors.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let result = async {
                        let r = client
                            .get(&url)
                            .send()
                            .await
                            .map_err(|e| format!("{e:?}"))?;
                        let status = r.status();
                        r.bytes().await.map_err(|e| format!("{e:?}"))?;
                        if status == 200 {
                            Ok(())
                        } else {
                            Err(format!("status {status}"))
                        }
                    }
                    .await;
                    match result {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(format!("{url}: {e}"));
                        }
                    }
                }
            }));
        }
    }
    eventually(Duration::from_secs(10), "the load to run", || {
        let n = ok.load(Ordering::Relaxed);
        async move { (n >= 100).then_some(()) }
    })
    .await;
    let next = tokio::task::block_in_place(|| g.spawn_upgrade("upgrade-1", &opts));
    g.signal(libc::SIGQUIT);
    let mut old = g.adopt(next);
    let status = eventually(Duration::from_secs(30), "the old process to exit", || {
        let s = old.exited();
        async move { s }
    })
    .await;
    assert!(status.success(), "{}", old.log());
    assert!(old.log().contains("listener sockets sent"), "{}", old.log());
    // The new process alone, on every listener.
    let at_exit = ok.load(Ordering::Relaxed);
    eventually(Duration::from_secs(10), "the new process to serve", || {
        let n = ok.load(Ordering::Relaxed);
        async move { (n >= at_exit + 300).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let new_log = g.log();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{:#?}\n--- old process:\n{}\n--- new process:\n{new_log}",
        errors.lock().unwrap().iter().take(5).collect::<Vec<_>>(),
        old.log()
    );
    for addr in [tls4, tls6] {
        let hits = std::process::Command::new("curl")
            .args([
                "-sS",
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                "--cacert",
            ])
            .arg(&ca)
            .arg("--resolve")
            .arg(format!("{HOST}:{}:{}", addr.port(), addr.ip()))
            .arg(format!("https://{HOST}:{}/", addr.port()))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&hits.stdout),
            "200 2",
            "{addr} after the upgrade"
        );
    }
    assert!(
        new_log.contains(&format!("listening on {tls6} tls h2")),
        "{new_log}"
    );
    println!(
        "{} requests across the upgrade, 0 failed",
        ok.load(Ordering::Relaxed)
    );
}

#[test]
fn graysplit_t_names_every_bad_certificate_with_its_path_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs::self_signed(d, "good", HOST, 30);
    certs::self_signed(d, "other", "other.test", 30);
    certs::expired(d, "old", "old.test");
    std::fs::create_dir(d.join("adir")).unwrap();
    std::fs::write(d.join("base.conf"), "server 127.0.0.1:1;\n").unwrap();
    let conf = "[server]\nlisten = [\"127.0.0.1:0\", { addr = \"127.0.0.1:1\", tls = true }]\n\
         [pools.base]\nfile = \"base.conf\"\n\
         [[tls.certificates]]\ncert = \"good.crt\"\nkey = \"good.key\"\n\
         [[tls.certificates]]\ncert = \"missing.crt\"\nkey = \"good.key\"\n\
         [[tls.certificates]]\ncert = \"adir\"\nkey = \"good.key\"\n\
         [[tls.certificates]]\ncert = \"good.crt\"\nkey = \"other.key\"\n\
         [[tls.certificates]]\ncert = \"old.crt\"\nkey = \"old.key\"\n";
    std::fs::write(d.join("graysplit.toml"), conf).unwrap();
    let out = common::proc::run(&["-t", "-c", d.join("graysplit.toml").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let p = |n: &str| {
        std::fs::canonicalize(d)
            .unwrap()
            .join(n)
            .display()
            .to_string()
    };
    for (key, path, reason) in [
        ("tls.certificates[1].cert", p("missing.crt"), "cannot read"),
        ("tls.certificates[2].cert", p("adir"), "cannot read"),
        (
            "tls.certificates[3].key",
            p("other.key"),
            "does not belong to the first certificate",
        ),
        ("tls.certificates[4].cert", p("old.crt"), "expired on"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("{key} = \"{path}\"")))
            .unwrap_or_else(|| panic!("no line for {key} {path}:\n{err}"));
        assert!(line.contains(reason), "{line}");
    }
    assert!(err.contains("test failed (4 errors)"), "{err}");
    assert!(
        !err.contains("tls.certificates[0]"),
        "the good pair passes: {err}"
    );
}

#[test]
fn http2_limits_are_announced_and_an_idle_connection_is_closed() {
    let base = Upstream::start("base");
    let tls = free_addr();
    let opts = ServerOptions {
        extra_listeners: vec![format!("{{ addr = \"{tls}\", tls = true }}")],
        ..ServerOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = site_certs(dir.path());
    let files = [
        ("base.conf", format!("{}\n", base.line(""))),
        (
            "site.crt",
            std::fs::read_to_string(dir.path().join("site.crt")).unwrap(),
        ),
        (
            "site.key",
            std::fs::read_to_string(dir.path().join("site.key")).unwrap(),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let toml = format!(
        "[pools.base]\nfile = \"base.conf\"\n{}",
        tls_toml(
            "http2_idle_timeout = \"1s\"\nhttp2_max_concurrent_streams = 64\n\
             http2_max_header_list_size = 32768"
        )
    );
    let _g = start(&opts, &toml, &refs, &[tls]);

    // nghttp (Debian nghttp2-client) prints the server's SETTINGS: the configured limits.
    let out = Command::new("nghttp")
        .args(["-v", "-n", &format!("https://127.0.0.1:{}/", tls.port())])
        .output()
        .expect("run nghttp (Debian package nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let settings = text.split("recv SETTINGS frame").nth(1).unwrap_or("");
    assert!(
        settings.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):64")
            && settings.contains("SETTINGS_MAX_HEADER_LIST_SIZE(0x06):32768"),
        "{text}"
    );
    assert!(text.contains(":status: 200"), "{text}");

    // An HTTP/2 connection that goes quiet after its SETTINGS is closed by the server (Pingora
    // closes it without a GOAWAY). Without an idle timeout it would stay open past the 30 s read
    // bound below (checked by hand: with 6 s it closed after 6 s).
    let mut tcp = std::net::TcpStream::connect(tls).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&ca).unwrap();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), HOST.try_into().unwrap()).unwrap();
    let mut s = rustls::Stream::new(&mut conn, &mut tcp);
    // The client preface and an empty SETTINGS frame, then nothing.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    s.flush().unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"h2"[..]));
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(e) => panic!("no close within 30 s of idling: {e} (frames {frames:?})"),
        }
        // HTTP/2 frames: 3 bytes length, 1 type, 1 flags, 4 stream id, payload.
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            frames.push(buf[3]);
            buf.drain(..9 + len);
        }
    };
    assert!(closed);
    assert!(frames.contains(&0x04), "the server's SETTINGS: {frames:?}");
}
