//! Reading one cookie from a request's `Cookie` headers, at a cost bounded by what is read.
//!
//! Shared by the pin (`pin`) and the visitor id (`gray::visitor`). Lazy over bytes: a huge
//! `Cookie` header (64 KiB of junk, 2,000 forged pins) is only scanned as far as the caller takes
//! values, and never past [`MAX_PAIRS`] pairs; `;` is found with `memchr`; nothing is allocated;
//! there is no up-front check of the whole header, and a pair that is not text is skipped on its
//! own.

use http::HeaderMap;

/// Cookie pairs looked at per request. Browsers send at most about 180 cookies for a site
/// (Chrome's per-domain limit); a request with more is hostile, and the rest is not read.
pub const MAX_PAIRS: usize = 256;

/// The `;`-separated pairs of one header value.
fn pairs(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b';', v).chain(std::iter::once(v.len()));
    std::iter::from_fn(move || {
        let end = ends.next()?;
        let pair = v.get(start..end)?;
        start = end + 1;
        Some(pair)
    })
}

/// Every value of cookie `name` in the request's `Cookie` headers, in order (surrounding
/// whitespace and double quotes removed), among the first [`MAX_PAIRS`] pairs.
pub fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| pairs(v.as_bytes()))
        .take(MAX_PAIRS)
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (k, v) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
            if k != name.as_bytes() {
                return None;
            }
            let v = std::str::from_utf8(v).ok()?;
            Some(v.trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn every_value_of_the_name_in_order_across_headers() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1; b=2;b = \"3\" ; c"));
        h.append("cookie", HeaderValue::from_bytes(b"b=\xff; b=4").unwrap());
        let got: Vec<&str> = values(&h, "b").collect();
        assert_eq!(got, ["2", "3", "4"], "the non-text pair alone is skipped");
        assert_eq!(values(&h, "c").count(), 0, "no '=': no value");
        assert_eq!(values(&HeaderMap::new(), "b").count(), 0);
    }

    #[test]
    fn pairs_split_on_semicolons_and_the_scan_stops_after_max_pairs() {
        let got: Vec<&[u8]> = pairs(b"a=1;b=2;;c").collect();
        assert_eq!(got, [&b"a=1"[..], b"b=2", b"", b"c"]);
        assert_eq!(pairs(b"").count(), 1);
        let mut v = "x=1; ".repeat(MAX_PAIRS - 1);
        v.push_str("b=found; b=too-late");
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_str(&v).unwrap());
        let got: Vec<&str> = values(&h, "b").collect();
        assert_eq!(got, ["found"], "the 257th pair is not read");
    }
}
