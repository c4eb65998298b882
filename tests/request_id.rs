//! Request ids (issue 16, point 6): `X-Request-Id` kept from a trusted peer or generated, sent
//! upstream, returned to the client and written in the access line — and never planted by a
//! client outside `gray.trusted_proxies` (the test client binds 127.0.0.2 for that; the shipped
//! default trusts only 127.0.0.1 and ::1).

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::proc::{Graysplit, ServerOptions};
use common::upstream::CaptureUpstream;
use common::{eventually_sync, free_addr};

fn config(base_line: &str) -> (String, String) {
    (
        "[health]\nenabled = false\n[pools.base]\nfile = \"base.conf\"\n".to_string(),
        format!("{base_line}\n"),
    )
}

fn start(opts: &ServerOptions, up: &CaptureUpstream) -> Graysplit {
    let (toml, pools) = config(&format!("server {};", up.addr));
    Graysplit::start_with(opts, &toml, &[("base.conf", &pools)])
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().ok())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// GET `/` with `headers`; the status and the answer's `name` header.
async fn get(
    c: &reqwest::Client,
    g: &Graysplit,
    headers: &[(&str, &str)],
    name: &str,
) -> (u16, Option<String>) {
    let mut req = c.get(g.url("/"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    let id = r
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    (status, id)
}

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_is_kept_from_a_trusted_peer_generated_otherwise_and_sent_logged_and_returned() {
    let up = CaptureUpstream::start();
    let g = start(&ServerOptions::default(), &up);

    // A trusted peer (the load balancer in front) sent one: kept end to end.
    let trusted = client_from("127.0.0.1");
    let (status, id) = get(
        &trusted,
        &g,
        &[("x-request-id", "lb-7f3a-0001")],
        "x-request-id",
    )
    .await;
    assert_eq!((status, id.as_deref()), (200, Some("lb-7f3a-0001")));
    assert_eq!(
        up.last_header("x-request-id").as_deref(),
        Some("lb-7f3a-0001")
    );

    // Anyone else cannot plant an id: a new one, the same upstream and back.
    let outsider = client_from("127.0.0.2");
    let (_, id) = get(
        &outsider,
        &g,
        &[("x-request-id", "planted")],
        "x-request-id",
    )
    .await;
    let id = id.expect("an id");
    assert!(is_generated(&id), "{id}");
    assert_eq!(up.last_header("x-request-id").as_deref(), Some(id.as_str()));
    let copies = up
        .requests
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .matches("planted")
        .count();
    assert_eq!(copies, 0, "the client's header never reaches the upstream");

    // No header, or an unusable one from a trusted peer: a new id each time.
    let (_, first) = get(&trusted, &g, &[], "x-request-id").await;
    let (_, second) = get(
        &trusted,
        &g,
        &[("x-request-id", "has space")],
        "x-request-id",
    )
    .await;
    let (first, second) = (first.unwrap(), second.unwrap());
    assert!(is_generated(&first) && is_generated(&second) && first != second);
    assert_eq!(first[..16], second[..16], "one process, one prefix");

    // The access line carries it.
    eventually_sync(Duration::from_secs(5), "the access lines", || {
        let lines = g.access_lines();
        let line = |id: &str| lines.iter().any(|l| l.ends_with(&format!(" id={id}")));
        (line("lb-7f3a-0001") && line(&first) && line(&second)).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_502_page_carries_the_id_and_the_header_name_is_configurable() {
    // No server answers: graysplit's own 502 page, with the id to quote in a report.
    let (toml, pools) = config(&format!("server {};", free_addr()));
    let g = Graysplit::start(&toml, &[("base.conf", &pools)]);
    let c = client_from("127.0.0.1");
    let (status, id) = get(&c, &g, &[("x-request-id", "lb-502")], "x-request-id").await;
    assert_eq!((status, id.as_deref()), (502, Some("lb-502")));

    let up = CaptureUpstream::start();
    let opts = ServerOptions {
        server_extra: "request_id_header = \"X-Trace-Id\"".into(),
        ..ServerOptions::default()
    };
    let g = start(&opts, &up);
    let (_, id) = get(&c, &g, &[("x-trace-id", "t-1")], "x-trace-id").await;
    assert_eq!(id.as_deref(), Some("t-1"));
    assert_eq!(up.last_header("x-trace-id").as_deref(), Some("t-1"));
    drop(g);

    // "" turns request ids off: nothing added, the client's header passes as it was.
    let off = ServerOptions {
        server_extra: "request_id_header = \"\"".into(),
        ..ServerOptions::default()
    };
    let g = start(&off, &up);
    let (_, id) = get(&c, &g, &[], "x-request-id").await;
    assert_eq!(id, None);
    let (_, _) = get(&c, &g, &[("x-request-id", "as-sent")], "x-request-id").await;
    assert_eq!(up.last_header("x-request-id").as_deref(), Some("as-sent"));
}
