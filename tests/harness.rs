//! The shared test helpers themselves: real Redis, real upstreams, cleanup on drop.

mod common;

use common::redis::RedisServer;
use common::upstream::Upstream;

#[test]
fn redis_helper_runs_a_real_server_and_stops_it_on_drop() {
    let redis = RedisServer::start();
    // The operator's whitelist command from the seed, unchanged.
    assert_eq!(
        redis
            .cli(&["set", "192.168.93.182", "192.168.93.182"])
            .as_deref(),
        Some("OK")
    );
    assert_eq!(
        redis.cli(&["get", "192.168.93.182"]).as_deref(),
        Some("192.168.93.182")
    );
    let port = redis.port;
    drop(redis);
    common::eventually_sync(std::time::Duration::from_secs(5), "redis to stop", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_helper_serves_static_test_and_dies_on_drop() {
    let up = Upstream::start("gray");
    let r = common::client()
        .get(format!("http://{}/", up.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("gray-2026.11.2"));
    let url = format!("http://{}/", up.addr);
    let site = up.site.clone();
    let served = site.hits.load(std::sync::atomic::Ordering::Relaxed);
    drop(up);
    // A parallel test may have been handed the freed port, so the question is not "does anything
    // answer there" but "did our server answer": its own counter must not move.
    let _ = common::client().get(url).send().await;
    let after = site.hits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after, served, "the upstream still serves after drop");
}
