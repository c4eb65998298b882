//! Oversized and malformed requests, written byte by byte on raw TCP to the real binary in front of
//! real static upstreams: each gets a clean 4xx or a normal answer (never a 5xx, never a hang), and
//! the process keeps serving.
//!
//! What answers what. Before Pingora parses a head, graysplit's `large_client_header_buffers`
//! (default `4 8k`, `tests/limits.rs` covers it) answers a request line over a buffer with 414
//! and a header line or head too large with 431. These tests raise it to `4 256k`, its 1 MiB
//! maximum, to reach Pingora's own rules (Pingora 0.9.1, `pingora-core`
//! `protocols/http/v1/server.rs` and `pingora-proxy` `lib.rs`): every request-head parse
//! failure is `InvalidHTTPHeader`, which the proxy answers with `400` and a close. That covers
//! more than 256 header lines (`MAX_HEADERS`), a garbage request line, a URI the `http` crate
//! refuses (over 65,534 bytes), a header line without ':', an unparsable or conflicting
//! Content-Length, and a Transfer-Encoding whose last coding is not `chunked`. A 431 with
//! graysplit's decision headers comes from the upstream (hyper refuses more than 100 headers). A
//! head cut short by the client is a clean close without an answer (there is no request to answer).
//! Content-Length beside `Transfer-Encoding: chunked` is dropped and the connection closed after
//! the answer (RFC 9112 6.1), so nothing after the chunked body is read as another request.
//! Pipelined requests (pipelining is off by default in Pingora): the first is answered, then the
//! connection closes and the rest are dropped for the client to retry (RFC 9112 9.3.2).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::proc::Graysplit;
use common::upstream::Upstream;

/// A read that takes longer than this is a hang.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One response read off the wire.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Everything the server sent on one connection, until it closed it.
#[derive(Debug)]
struct Exchange {
    responses: Vec<Response>,
    /// Bytes after the last complete response (should be none).
    trailing: usize,
}

impl Exchange {
    fn statuses(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status).collect()
    }

    fn only(&self) -> &Response {
        assert_eq!(self.responses.len(), 1, "{self:?}");
        &self.responses[0]
    }
}

/// Writes `raw` (optionally closing our sending side), then reads until the server closes.
/// A read timeout fails the test: the server must answer or close, not keep us waiting.
fn exchange(g: &Graysplit, raw: &[u8], half_close: bool) -> Exchange {
    let mut s = TcpStream::connect(g.listen).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    // The server may answer 400 and close before it has read everything we send.
    let _ = s.write_all(raw);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "no answer and no close within {READ_TIMEOUT:?} (got {} bytes: {:?})",
                    got.len(),
                    String::from_utf8_lossy(&got[..got.len().min(300)])
                )
            }
            // A reset after the answer (we sent more than the server read) ends the exchange.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    parse_responses(&got)
}

fn parse_responses(mut buf: &[u8]) -> Exchange {
    let mut responses = Vec::new();
    while let Some(end) = find(buf, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {head:?}"));
        let r = Response { status, head };
        let mut body = &buf[end + 4..];
        if let Some(len) = r.header("content-length") {
            let len: usize = len.parse().expect("content-length");
            body = &body[len.min(body.len())..];
        } else if r
            .header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            loop {
                let line_end = find(body, b"\r\n").expect("chunk size line");
                let size = usize::from_str_radix(
                    std::str::from_utf8(&body[..line_end]).unwrap().trim(),
                    16,
                )
                .expect("chunk size");
                body = &body[(line_end + 2 + size + 2).min(body.len())..];
                if size == 0 {
                    break;
                }
            }
        } else {
            body = &[];
        }
        responses.push(r);
        buf = body;
    }
    Exchange {
        responses,
        trailing: buf.len(),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A GET with the given extra header lines (raw bytes, each without CRLF).
fn get(path: &str, headers: &[&[u8]]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: example.test\r\n").into_bytes();
    for h in headers {
        r.extend_from_slice(h);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"Connection: close\r\n\r\n");
    r
}

struct Setup {
    g: Graysplit,
    _base: Upstream,
    _gray: Upstream,
}

/// graysplit over one base and one gray static server, with a user header and cookie, a CIDR
/// and a user in the whitelist file, and a trusted loopback peer (so XFF and X-Real-IP count).
fn start() -> Setup {
    let base = Upstream::start("base");
    let gray = Upstream::start("gray");
    let conf = "[pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n\
                [gray]\nuser_header = \"h-gray-userid\"\nuser_cookie = \"uid\"\n\
                whitelist_file = \"whitelist.txt\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
                [limits]\nlarge_client_header_buffers = \"4 256k\"\n";
    let g = Graysplit::start(
        conf,
        &[
            ("base.conf", &base.line("")),
            ("gray.conf", &gray.line("")),
            ("whitelist.txt", "198.51.100.0/24\nuser:alice\n"),
        ],
    );
    Setup {
        g,
        _base: base,
        _gray: gray,
    }
}

impl Setup {
    fn send(&self, raw: &[u8]) -> Exchange {
        exchange(&self.g, raw, false)
    }

    /// The status of a single-response exchange.
    fn status(&self, raw: &[u8]) -> u16 {
        self.send(raw).only().status
    }

    /// The pool and reason graysplit chose for this GET.
    fn decided(&self, headers: &[&[u8]]) -> (u16, String, String) {
        let ex = self.send(&get("/", headers));
        let r = ex.only();
        let field = |n: &str| r.header(n).unwrap_or("-").to_string();
        (
            r.status,
            field("x-graysplit-pool"),
            field("x-graysplit-reason"),
        )
    }

    /// Still running, still serving a normal page, and nothing panicked.
    fn assert_healthy(&mut self) {
        let ex = self.send(&get("/", &[]));
        let r = ex.only();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.header("x-served-by").is_some(), "{r:?}");
        assert!(
            self.g.wait_exit(Duration::ZERO).is_none(),
            "graysplit exited:\n{}",
            self.g.log()
        );
        let log = self.g.log();
        assert!(!log.contains("panicked"), "{log}");
    }
}

fn header_line(name: &str, value_len: usize) -> Vec<u8> {
    let mut h = format!("{name}: ").into_bytes();
    h.resize(h.len() + value_len, b'a');
    h
}

#[test]
fn huge_and_many_headers() {
    let mut s = start();

    // One 64 KiB header: within a 256 KiB buffer, proxied as usual.
    let big = header_line("X-Big", 64 * 1024);
    assert_eq!(s.status(&get("/", &[&big])), 200);

    // A head over 1 MiB (17 headers of 64 KiB, still unfinished): refused as the byte past the
    // four buffers arrives, before Pingora's own 1 MiB limit (a 400) is reached.
    let mut raw = b"GET / HTTP/1.1\r\nHost: example.test\r\n".to_vec();
    for i in 0..17 {
        raw.extend_from_slice(&header_line(&format!("X-Big-{i}"), 64 * 1024));
        raw.extend_from_slice(b"\r\n");
    }
    let ex = exchange(&s.g, &raw, false);
    assert_eq!(ex.statuses(), vec![431], "{ex:?}");
    assert_eq!(
        ex.only().header("x-graysplit-pool"),
        None,
        "graysplit's own answer"
    );

    // More than 256 header lines: 400 from Pingora's parser.
    let many: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("X-H{i}: v").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    assert_eq!(s.status(&get("/", &refs)), 400);

    // 90 headers: proxied (the upstream, hyper, takes up to 100).
    assert_eq!(s.status(&get("/", &refs[..90])), 200);

    // 200 headers: graysplit passes them on; the upstream refuses with its own 431, which the
    // client gets as is (a 4xx, not a 502).
    let ex = s.send(&get("/", &refs[..200]));
    let r = ex.only();
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(r.header("x-graysplit-pool"), Some("base"), "{r:?}");

    s.assert_healthy();
}

#[test]
fn many_cookies() {
    let mut s = start();

    // Hundreds of Cookie headers: over 256 lines is Pingora's 400 ...
    let lines: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("Cookie: c{i}=v{i}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    assert_eq!(s.status(&get("/", &refs)), 400);
    // ... and 90 of them, one carrying the user id, are read like one header.
    let mut some = refs[..89].to_vec();
    some.push(b"Cookie: uid=alice");
    let (status, pool, reason) = s.decided(&some);
    assert_eq!(
        (status, pool.as_str(), reason.as_str()),
        (200, "gray", "user")
    );

    // One Cookie header with 5,000 pairs, the user id last.
    let mut cookie = String::from("Cookie: ");
    for i in 0..5000 {
        cookie.push_str(&format!("k{i}=v{i}; "));
    }
    cookie.push_str("uid=alice");
    let (status, pool, reason) = s.decided(&[cookie.as_bytes()]);
    assert_eq!(
        (status, pool.as_str(), reason.as_str()),
        (200, "gray", "user")
    );

    // 2,000 forged pins in one header: each is checked (and refused), the page is served.
    let sig = "A".repeat(43);
    let mut cookie = String::from("Cookie: ");
    for i in 0..2000 {
        cookie.push_str(&format!("graysplit=v1.gray.g-{i}.1700000000.{sig}; "));
    }
    let (status, pool, reason) = s.decided(&[cookie.trim_end_matches("; ").as_bytes()]);
    assert_eq!(
        (status, pool.as_str(), reason.as_str()),
        (200, "base", "default")
    );

    s.assert_healthy();
}

#[test]
fn invalid_utf8_in_cookie_forwarded_for_real_ip_and_user_header() {
    let mut s = start();
    let expect =
        |status: u16, pool: &str, reason: &str| (status, pool.to_string(), reason.to_string());

    // Each header is read (the control), and the same header with bytes that are not UTF-8 is
    // ignored: the request is served and decided as if it were absent.
    assert_eq!(
        s.decided(&[b"Cookie: uid=alice"]),
        expect(200, "gray", "user")
    );
    assert_eq!(
        s.decided(&[b"Cookie: uid=alice\xff; graysplit=\xc3\x28"]),
        expect(200, "base", "default")
    );
    assert_eq!(
        s.decided(&[b"Cookie: \xff\xfe\xfd", b"Cookie: uid=alice"]),
        expect(200, "gray", "user"),
        "a bad Cookie header does not hide a good one"
    );

    assert_eq!(
        s.decided(&[b"X-Forwarded-For: 198.51.100.7"]),
        expect(200, "gray", "cidr")
    );
    assert_eq!(
        s.decided(&[b"X-Forwarded-For: 198.51.100.7\xff"]),
        expect(200, "base", "default")
    );
    assert_eq!(
        s.decided(&[b"X-Forwarded-For: \xc3\x28, 198.51.100.7"]),
        expect(200, "base", "default"),
        "a garbage hop voids the header: the peer is the client"
    );

    assert_eq!(
        s.decided(&[b"X-Real-IP: 198.51.100.7"]),
        expect(200, "gray", "cidr")
    );
    assert_eq!(
        s.decided(&[b"X-Real-IP: \xff198.51.100.7"]),
        expect(200, "base", "default")
    );

    assert_eq!(
        s.decided(&[b"h-gray-userid: alice"]),
        expect(200, "gray", "user")
    );
    assert_eq!(
        s.decided(&[b"h-gray-userid: alice\xff"]),
        expect(200, "base", "default")
    );
    assert_eq!(
        s.decided(&[
            b"h-gray-userid: \x80\x81",
            b"X-Real-IP: \xfe",
            b"Cookie: \xff"
        ]),
        expect(200, "base", "default")
    );

    s.assert_healthy();
}

#[test]
fn broken_framing() {
    let mut s = start();

    // Garbage request lines.
    for raw in [
        &b"\x00\x01\x02GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"NOT A REQUEST AT ALL\r\n\r\n",
        b"GET\r\n\r\n",
        b"\xff\xfe / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let ex = s.send(raw);
        assert_eq!(ex.statuses(), vec![400], "{raw:?}: {ex:?}");
    }

    // An oversized URI: 60,000 bytes is still a URI (the upstream answers 404), 70,000 is over
    // what the http crate takes (65,534): 400.
    let path = format!("/{}", "a".repeat(60_000));
    assert_eq!(s.status(&get(&path, &[])), 404);
    let path = format!("/{}", "a".repeat(70_000));
    assert_eq!(s.status(&get(&path, &[])), 400);

    // A head cut short by the client: a clean close, no answer, no wait.
    let ex = exchange(&s.g, b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ", true);
    assert!(ex.responses.is_empty() && ex.trailing == 0, "{ex:?}");
    // A body cut short: nothing to answer (the client is gone; graysplit's error_status sends
    // nothing for a downstream read error) — unless the upstream answered before it needed the
    // body (the static server refuses POST at once: 405). Either way never a 5xx.
    let ex = exchange(
        &s.g,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
        true,
    );
    assert!(
        ex.responses.iter().all(|r| r.status == 405) && ex.responses.len() <= 1,
        "{ex:?}"
    );
    assert_eq!(ex.trailing, 0, "{ex:?}");
    // A client that goes away mid-request is not a proxy failure: logged at info, as nginx does
    // ("client prematurely closed connection"), not as Pingora's final "Fail to proxy ... tries:"
    // error. (A head cut short is logged by Pingora itself at error before any graysplit code
    // runs; that one we cannot demote.)
    let log = s.g.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && l.contains("Downstream") && l.contains("tries:")),
        "{log}"
    );

    // Pipelined requests: Pingora's default (pipelining off) answers the first completely, then
    // closes; the others are dropped unanswered, which RFC 9112 9.3.2 allows (the client retries
    // them on a new connection). Never a mixed-up or partial answer.
    let ex = s.send(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(ex.statuses(), vec![200], "{ex:?}");
    assert_eq!(ex.responses[0].header("x-graysplit-pool"), Some("base"));
    assert_eq!(ex.trailing, 0, "{ex:?}");
    // The retries, one per connection, are answered.
    assert_eq!(s.status(&get("/healthz", &[])), 200);
    assert_eq!(s.status(&get("/nope", &[])), 404);

    // A header line without a colon.
    assert_eq!(
        s.status(b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n"),
        400
    );

    // Bad Content-Length: not a number, negative, two different values.
    for cl in [
        &b"Content-Length: abc\r\n"[..],
        b"Content-Length: -1\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: 99999999999999999999999\r\n",
    ] {
        let mut raw = b"POST / HTTP/1.1\r\nHost: x\r\n".to_vec();
        raw.extend_from_slice(cl);
        raw.extend_from_slice(b"\r\nhello");
        let ex = s.send(&raw);
        assert_eq!(
            ex.statuses(),
            vec![400],
            "{:?}: {ex:?}",
            String::from_utf8_lossy(cl)
        );
    }

    // Content-Length and Transfer-Encoding together: chunked wins, Content-Length is dropped,
    // and the connection closes after the answer, so what follows the chunked body is never
    // read as a second request (no smuggling).
    let ex = s.send(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    // The upstream's answer to a POST (405 from the static server), once.
    let r = ex.only();
    assert_eq!(r.status, 405, "{r:?}");
    assert!(r.header("x-served-by").is_some(), "{r:?}");
    assert_eq!(ex.trailing, 0);
    // A final coding other than chunked, and Transfer-Encoding in HTTP/1.0, are refused.
    assert_eq!(
        s.status(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
        400
    );
    assert_eq!(
        s.status(b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        400
    );

    s.assert_healthy();
}
