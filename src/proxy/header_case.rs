//! Headers without Pingora's case map (`server.header_case = "normalize"`, the default).
//!
//! Pingora keeps the case of every HTTP/1 header name it read in a second map beside the
//! `http::HeaderMap`. Every header graysplit adds or removes then touches both maps, and the copy
//! of the request sent upstream clones both. Dropping the map on the client's request and on the
//! upstream's answer, before graysplit adds its headers, cut 8.6k of 122k instructions per page
//! request (callgrind, bench/README.md "Header case").
//!
//! Header names are case-insensitive (RFC 9110 §5.1) and HTTP/2 has lowercase names only. Without
//! the map Pingora writes an HTTP/1 name as it writes one that came over HTTP/2: a dozen common
//! names in their usual case (`Host`, `Content-Type`, `Set-Cookie`), the rest in lowercase
//! (`etag`, `x-forwarded-for`). `server.header_case = "preserve"` keeps the map, as nginx does.

use pingora::http::RequestHeader;

use super::header_edit;

/// Drops `req`'s case map. Kept as it is: a request whose target does not round-trip through
/// its URI (absolute-form, CONNECT, a path that is not UTF-8), which the conversion would lose.
/// (The upstream's answer loses its map where graysplit edits it: `header_edit::on_response_map`.)
pub(super) fn forget_request_case(req: &mut RequestHeader) {
    if req.has_case() && header_edit::target_round_trips(req) {
        header_edit::on_request_map(req, |_| ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &[u8], headers: &[&str]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", target, None).expect("request");
        for h in headers {
            let (name, value) = h.split_once(": ").expect("header");
            req.append_header(name.to_string(), value).expect("header");
        }
        req
    }

    fn request_wire(req: &RequestHeader) -> String {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).expect("text")
    }

    #[test]
    fn request_headers_values_order_and_target_survive() {
        let mut req = request(
            b"/app/index.html?x=1",
            &[
                "HOST: shop.example",
                "X-Custom: a",
                "x-custom: b",
                "Cookie: gs=1",
            ],
        );
        forget_request_case(&mut req);
        assert!(!req.has_case());
        assert_eq!(req.raw_path(), b"/app/index.html?x=1");
        assert_eq!(
            request_wire(&req),
            "Host: shop.example\r\nx-custom: a\r\nx-custom: b\r\ncookie: gs=1\r\n"
        );
        // A header added afterwards is written like the rest.
        req.insert_header("x-real-ip", "10.0.0.1").expect("insert");
        assert!(request_wire(&req).ends_with("x-real-ip: 10.0.0.1\r\n"));
    }

    #[test]
    fn a_target_the_uri_cannot_carry_keeps_its_case_map() {
        let mut absolute = request(b"http://shop.example/a", &["Host: shop.example"]);
        forget_request_case(&mut absolute);
        assert!(absolute.has_case());
        assert_eq!(absolute.raw_path(), b"http://shop.example/a");

        let mut lossy = request(b"/caf\xe9", &["X-A: 1"]);
        forget_request_case(&mut lossy);
        assert!(lossy.has_case());
        assert_eq!(lossy.raw_path(), b"/caf\xe9");
    }
}
