//! Percent rollout through the real binary (issue 11): anonymous visitors keep their side of the
//! rollout when their IP changes (the visitor id cookie), and a new salt picks other users.
//! The 10,000-visitor statistics are a unit test (`gray::visitor`); here 500 visitors make real
//! requests.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::proc::Graysplit;
use common::upstream::Upstream;
use common::{client, eventually};
use graysplit::gray::salt::Salt;

const VISITORS: u32 = 500;

/// What a page answered: its pool and the visitor cookie it set, if any.
async fn page(g: &Graysplit, ip: &str, vid: Option<&str>) -> (String, Option<String>, String) {
    let mut req = client()
        .get(g.url("/"))
        .header("sec-fetch-dest", "document")
        .header("x-forwarded-for", ip);
    if let Some(v) = vid {
        req = req.header("cookie", format!("graysplit_vid={v}"));
    }
    let r = req.send().await.expect("request");
    assert_eq!(r.status(), 200);
    let pool = r.headers()["x-graysplit-pool"]
        .to_str()
        .unwrap()
        .to_string();
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let set_vid = cookies
        .iter()
        .find(|c| c.starts_with("graysplit_vid="))
        .cloned();
    let vary = r
        .headers()
        .get("vary")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (pool, set_vid, vary)
}

fn ip(net: u32, v: u32) -> String {
    format!("10.{net}.{}.{}", v >> 8, v & 255)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_keep_their_side_across_ips_and_a_new_salt_picks_others() {
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    let files = [
        ("base.conf", format!("{}\n", base.line(""))),
        ("gray.conf", format!("{}\n", gray.line(""))),
        (
            "switches.conf",
            "percent = 10\nsalt = \"rollout-1\"\n".to_string(),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(
        "[pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n\
         [gray]\nswitches_file = \"switches.conf\"\n\
         [pin]\nsecrets = [\"percent-test-secret-0123456789\"]\n",
        &refs,
    );
    let mut ids = Vec::new();
    let mut gray_before = BTreeSet::new();
    for v in 0..VISITORS {
        // First visit: decided by the IP; the answer carries a new visitor id.
        let (pool, set_vid, vary) = page(&g, &ip(1, v), None).await;
        assert!(
            vary.contains("Cookie"),
            "the page depends on the visitor cookie: {vary}"
        );
        let c = set_vid.unwrap_or_else(|| panic!("visitor {v}: no visitor id set"));
        assert!(
            c.ends_with("; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"),
            "{c}"
        );
        let id = c["graysplit_vid=".len()..c.find(';').unwrap()].to_string();
        assert_eq!(id.len(), 22, "{c}");
        // The next pages come from other networks (NAT, mobile, IPv6 privacy addresses).
        for other in [ip(2, v), format!("fd00::{v:x}")] {
            let (again, set_again, _) = page(&g, &other, Some(&id)).await;
            assert_eq!(
                again, pool,
                "visitor {v} moved from {pool} to {again} on a new IP"
            );
            assert_eq!(set_again, None, "the id is set once");
        }
        if pool == "gray" {
            gray_before.insert(v);
        }
        ids.push(id);
    }
    let n = gray_before.len();
    eprintln!("percent = 10: {n} of {VISITORS} visitors gray");
    assert!((25..=80).contains(&n), "about 10 %: {n}");

    // A client that keeps no cookies is still consistent: by its IP, as before.
    let (first, _, _) = page(&g, "10.9.0.1", None).await;
    for _ in 0..3 {
        assert_eq!(page(&g, "10.9.0.1", None).await.0, first);
    }

    // A new salt for the next rollout.
    g.write_file("switches.conf", "percent = 10\nsalt = \"rollout-2\"\n");
    let label = Salt::new("rollout-2").label();
    eventually(Duration::from_secs(5), "the new salt applied", || async {
        g.log().contains(&format!("salt={label}")).then_some(())
    })
    .await;
    let mut gray_after = BTreeSet::new();
    for (v, id) in ids.iter().enumerate() {
        let (pool, set_vid, _) = page(&g, &ip(3, v as u32), Some(id)).await;
        assert_eq!(set_vid, None);
        if pool == "gray" {
            gray_after.insert(v as u32);
        }
    }
    let both = gray_before.intersection(&gray_after).count();
    eprintln!(
        "new salt: {} gray, {both} of them gray before too",
        gray_after.len()
    );
    assert!(
        (25..=80).contains(&gray_after.len()),
        "{}",
        gray_after.len()
    );
    assert!(
        both * 3 < gray_after.len(),
        "a new salt picks mostly other users ({both} of {} kept)",
        gray_after.len()
    );
}
