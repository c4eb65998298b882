//! What hostile input costs in memory (issue 13 §3): rules and user ids allocate nothing that
//! grows with the request. A counting allocator measures the bytes one call allocates on this
//! thread, for a normal request and for one with 64 KiB headers, cookie and query.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;

use graysplit::gray::decision::Target;
use graysplit::gray::rules::{self, Match, Source};
use graysplit::gray::{GrayEngine, GraySettings};
use http::{HeaderMap, HeaderName, HeaderValue};

struct Counting;

thread_local! {
    static BYTES: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// thread-local `Cell` with const initialisation, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = BYTES.try_with(|b| b.set(b.get() + layout.size()));
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = BYTES.try_with(|b| b.set(b.get() + new_size));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes `f` allocated on this thread.
fn allocated<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = BYTES.with(Cell::get);
    let out = f();
    (BYTES.with(Cell::get) - before, out)
}

fn name(s: &str) -> HeaderName {
    HeaderName::from_bytes(s.as_bytes()).unwrap()
}

fn engine() -> GrayEngine {
    let rules = vec![
        rules::rule(Source::Header(name("a")), Match::Equals("1".into()), "gray"),
        rules::rule(
            Source::Cookie("canary".into()),
            Match::Prefix("yes".into()),
            "gray",
        ),
        rules::rule(
            Source::Query("env".into()),
            Match::Equals("gray build".into()),
            "gray",
        ),
    ];
    GrayEngine::new(GraySettings {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        client_ip_header: Some(graysplit::gray::client_ip::ClientIpHeader::XForwardedFor),
        user_header: Some(name("h-gray-userid")),
        user_cookie: Some("uid".into()),
        rules,
        ..GraySettings::default()
    })
    .unwrap()
}

/// A normal request, and the same padded to 64 KiB in every place the decision reads.
fn requests() -> (HeaderMap, String, HeaderMap, String) {
    let mut normal = HeaderMap::new();
    normal.insert("cookie", HeaderValue::from_static("uid=u-1; canary=no"));
    normal.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
    normal.insert("h-gray-userid", HeaderValue::from_static("alice"));
    let normal_query = "page=1&env=base".to_string();

    let k64 = 64 * 1024;
    let cookies: String = (0..k64 / 16)
        .map(|i| format!("c{i:05}=xxxxxxxx; "))
        .collect();
    let hops: String = (0..k64 / 16)
        .map(|i| format!("10.0.{}.{}, ", i / 250, i % 250))
        .collect();
    let mut hostile = HeaderMap::new();
    hostile.insert(
        "cookie",
        HeaderValue::from_str(&format!("{cookies}uid=u-1")).unwrap(),
    );
    hostile.insert(
        "x-forwarded-for",
        HeaderValue::from_str(&format!("{hops}198.51.100.7")).unwrap(),
    );
    hostile.insert(
        "h-gray-userid",
        HeaderValue::from_str(&"a".repeat(k64)).unwrap(),
    );
    for i in 0..100 {
        hostile.append(
            name("a"),
            HeaderValue::from_str(&"2".repeat(600 + i)).unwrap(),
        );
    }
    let hostile_query: String = (0..k64 / 12)
        .map(|i| format!("%65nv{i:04}=%41&"))
        .collect::<String>()
        + "env=base";
    (normal, normal_query, hostile, hostile_query)
}

#[test]
fn rules_allocate_nothing_however_large_the_request() {
    let e = engine();
    let (normal, nq, hostile, hq) = requests();
    let rules = &e.settings.rules;
    let (bytes, hit) = allocated(|| rules::first_match(rules, &normal, Some(&nq)));
    assert_eq!((bytes, hit), (0, None), "a normal request");
    let (bytes, hit) = allocated(|| rules::first_match(rules, &hostile, Some(&hq)));
    assert_eq!(
        (bytes, hit),
        (0, None),
        "64 KiB of cookies, headers and query"
    );
    // And they still match where they should, decoding on the fly.
    let mut h = HeaderMap::new();
    h.insert("cookie", HeaderValue::from_static("x=1; canary=yes-please"));
    let (bytes, hit) = allocated(|| rules::first_match(rules, &h, Some("env=gray+build")).cloned());
    assert_eq!(hit, Some(Target::Gray));
    assert!(bytes <= 64, "only the cloned target: {bytes}");
    assert_eq!(
        rules::first_match(rules, &HeaderMap::new(), Some("%65nv=gray%20build")),
        Some(&Target::Gray)
    );
}

#[test]
fn the_client_and_its_user_id_cost_the_same_for_a_64_kib_request() {
    let e = engine();
    let (normal, _, hostile, _) = requests();
    let peers: [IpAddr; 2] = ["127.0.0.1".parse().unwrap(), "203.0.113.9".parse().unwrap()];
    for peer in peers {
        let (small, (c, _)) = allocated(|| e.identify(peer, &normal));
        let (large, (h, _)) = allocated(|| e.identify(peer, &hostile));
        assert_eq!(c.ip, h.ip, "the same client either way");
        // The user id itself (at most 128 bytes) is the only allocation; 64 KiB of input
        // never adds to it.
        assert!(small <= 256, "{peer}: {small} bytes for a normal request");
        assert!(
            large <= small,
            "{peer}: {large} bytes for 64 KiB against {small}"
        );
    }
    // Behind the trusted proxy the 64 KiB XFF is walked right to left, in place.
    let (_, (c, _)) = allocated(|| e.identify(peers[0], &hostile));
    assert_eq!(c.ip, "198.51.100.7".parse::<IpAddr>().unwrap());
}
