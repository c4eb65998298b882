//! `graysplit demo`, the embedded default, works as the README says.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{client, eventually, free_addr};

struct Demo {
    child: Child,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_both_builds_and_follows_pools_file_edits() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let _demo = Demo {
        child: Command::new(common::proc::BIN)
            .args([
                "demo",
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let c = client();
    let page = format!("http://{listen}/");
    eventually(
        Duration::from_secs(15),
        "the demo to serve its page",
        || {
            let (c, page) = (c.clone(), page.clone());
            async move { c.get(page).send().await.ok().filter(|r| r.status() == 200) }
        },
    )
    .await;

    // Two base servers take turns.
    let mut servers = std::collections::HashSet::new();
    for _ in 0..4 {
        let r = c.get(&page).send().await.unwrap();
        servers.insert(r.headers()["x-served-by"].to_str().unwrap().to_string());
        assert!(r.text().await.unwrap().contains("base-2026.11.1"));
    }
    assert_eq!(servers.len(), 2, "{servers:?}");

    // The admin listener shows the pools in upsync's format.
    let list = c
        .get(format!("http://{admin}/upstream_list"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        list.contains("Upstream name: base; Backend server count: 2"),
        "{list}"
    );
    assert!(
        list.contains("Upstream name: gray; Backend server count: 1"),
        "{list}"
    );

    // As the banner suggests: whitelist yourself; the page turns gray.
    std::fs::write(dir.path().join("whitelist.txt"), "127.0.0.1\n").unwrap();
    eventually(
        Duration::from_secs(2),
        "the whitelisted client to get gray",
        || {
            let (c, page) = (c.clone(), page.clone());
            async move {
                let r = c.get(page).send().await.ok()?;
                (r.headers().get("x-graysplit-reason")?.to_str().ok()? == "ip").then_some(())
            }
        },
    )
    .await;
    std::fs::write(dir.path().join("whitelist.txt"), "").unwrap();

    // Put the gray server into base; the page turns gray for everyone.
    let gray = std::fs::read_to_string(dir.path().join("gray.conf")).unwrap();
    common::proc::write_atomically(&dir.path().join("base.conf"), &gray);
    eventually(
        Duration::from_secs(2),
        "the gray build to be served",
        || {
            let (c, page) = (c.clone(), page.clone());
            async move {
                let html = c.get(page).send().await.ok()?.text().await.ok()?;
                html.contains("gray-2026.11.2").then_some(())
            }
        },
    )
    .await;
}
