//! The access log of the real binary (`[access_log]`): to a file, in each format, reopened on
//! `SIGUSR1` after logrotate moved it, rotated by size, nothing lost at a stop.

mod common;

use std::path::Path;
use std::time::Duration;

use common::proc::Graysplit;
use common::upstream::Upstream;
use common::{client, eventually};

fn start(access_log: &str, up: &Upstream) -> Graysplit {
    Graysplit::start(
        &format!(
            "[health]\nenabled = false\n[pools.base]\nfile = \"base.conf\"\n\
             [access_log]\n{access_log}\n"
        ),
        &[("base.conf", &format!("{}\n", up.line("")))],
    )
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

async fn get(g: &Graysplit, path: &str) -> u16 {
    let r = client()
        .get(g.url(path))
        .header("user-agent", "probe \"quoted\"")
        .header("referer", "http://shop.example/")
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    status
}

/// Waits until `path` holds `n` lines and returns them.
async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    eventually(
        Duration::from_secs(5),
        &format!("{n} lines in {path:?}"),
        || {
            let l = lines(path);
            async move { (l.len() >= n).then_some(l) }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_in_a_file_reopened_on_sigusr1() {
    let up = Upstream::start("base");
    let g = start("path = \"access.log\"\nformat = \"combined\"", &up);
    let log = g.path("access.log");
    assert_eq!(get(&g, "/index.html?q=1").await, 200);
    let l = wait_lines(&log, 1).await;
    // nginx's combined, byte for byte in its shape; `"` in a header is written as \x22.
    let re = regex_lite(&l[0]);
    assert!(re, "not nginx's combined: {}", l[0]);
    assert!(
        l[0].contains("\"GET /index.html?q=1 HTTP/1.1\" 200 "),
        "{}",
        l[0]
    );
    assert!(
        l[0].ends_with("\"http://shop.example/\" \"probe \\x22quoted\\x22\""),
        "{}",
        l[0]
    );
    assert!(!l[0].contains("pool="), "combined has no graysplit fields");

    // logrotate: move the file, then SIGUSR1; the next lines go to a new file of that name.
    let moved = g.path("access.log.1");
    std::fs::rename(&log, &moved).expect("rename");
    g.signal(libc::SIGUSR1);
    eventually(Duration::from_secs(5), "the log reopened", || {
        let reopened = log.exists();
        async move { reopened.then_some(()) }
    })
    .await;
    assert_eq!(get(&g, "/index.html?after").await, 200);
    let l = wait_lines(&log, 1).await;
    assert!(l[0].contains("\"GET /index.html?after HTTP/1.1\""), "{l:?}");
    assert_eq!(lines(&moved).len(), 1, "the moved file keeps its line only");
}

/// `ip - - [dd/Mon/yyyy:hh:mm:ss +0000] "..." status bytes "..." "..."`, checked by hand (no
/// regex crate for one pattern).
fn regex_lite(line: &str) -> bool {
    let Some((ip, rest)) = line.split_once(" - - [") else {
        return false;
    };
    let Some((time, rest)) = rest.split_once("] \"") else {
        return false;
    };
    let time_ok = time.len() == 26
        && time.ends_with(" +0000")
        && time.as_bytes()[2] == b'/'
        && time.as_bytes()[6] == b'/';
    let Some((_, rest)) = rest.split_once("\" ") else {
        return false;
    };
    let mut it = rest.splitn(3, ' ');
    let status_ok = it
        .next()
        .is_some_and(|s| s.len() == 3 && s.parse::<u16>().is_ok());
    let bytes_ok = it.next().is_some_and(|s| s.parse::<u64>().is_ok());
    ip.parse::<std::net::IpAddr>().is_ok() && time_ok && status_ok && bytes_ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_the_decision_and_size_rotation_loses_none() {
    let up = Upstream::start("base");
    // About 400 bytes a line: a rotation every few lines.
    let mut g = start(
        "path = \"access.json\"\nformat = \"json\"\nmax_size = \"1k\"\nkeep = 20",
        &up,
    );
    const N: usize = 30;
    for i in 0..N {
        assert_eq!(get(&g, &format!("/index.html?n={i}")).await, 200);
    }
    // After a stop every line is in the files (the writer flushes during the grace period, and
    // whatever is left at exit is written by the atexit handler).
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(20)).is_some(), "stopped");
    let base = g.path("access.json");
    let mut all = lines(&base);
    for n in 1..=20 {
        all.extend(lines(&g.path(&format!("access.json.{n}"))));
    }
    assert!(
        g.path("access.json.1").exists(),
        "max_size rotated the file"
    );
    let mut seen = std::collections::BTreeSet::new();
    for line in &all {
        let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
        assert_eq!(v["status"], 200);
        assert_eq!(v["pool"], "base");
        assert_eq!(v["reason"], "default");
        assert_eq!(v["server"], up.addr.to_string());
        assert_eq!(v["user_agent"], "probe \"quoted\"");
        assert!(v["request_id"].as_str().is_some_and(|id| id.len() == 32));
        seen.insert(v["uri"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(all.len(), N, "every request once: {all:?}");
    assert_eq!(seen.len(), N);
}
