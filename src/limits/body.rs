//! `client_max_body_size`: a request body larger than the limit gets `413 Content Too Large`.
//!
//! As nginx: a declared `Content-Length` above the limit is refused before anything is proxied;
//! a body without one (chunked) is counted as it streams through and refused the moment it
//! passes the limit. A limit of 0 means no limit.

use http::HeaderMap;

/// Whether the declared `Content-Length` is above `limit`. An unparsable one is Pingora's to
/// refuse (400), not ours.
pub fn declared_too_large(headers: &HeaderMap, limit: u64) -> bool {
    limit > 0
        && headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > limit)
}

/// Bytes of a streamed body seen so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct BodyCount(u64);

impl BodyCount {
    /// Adds a chunk; `true` once the body is larger than `limit`.
    pub fn add(&mut self, chunk: usize, limit: u64) -> bool {
        self.0 = self
            .0
            .saturating_add(u64::try_from(chunk).unwrap_or(u64::MAX));
        limit > 0 && self.0 > limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_length(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_LENGTH, v.parse().unwrap());
        h
    }

    #[test]
    fn declared_lengths() {
        assert!(declared_too_large(&with_length("1048577"), 1 << 20));
        assert!(!declared_too_large(&with_length("1048576"), 1 << 20));
        assert!(
            !declared_too_large(&with_length("99999999999"), 0),
            "0 = no limit"
        );
        assert!(!declared_too_large(&HeaderMap::new(), 10));
        assert!(!declared_too_large(&with_length("ten"), 10));
    }

    #[test]
    fn streamed_bodies_are_counted_across_chunks() {
        let mut c = BodyCount::default();
        assert!(!c.add(600, 1000));
        assert!(!c.add(400, 1000), "exactly the limit fits");
        assert!(c.add(1, 1000));
        let mut unlimited = BodyCount::default();
        assert!(!unlimited.add(usize::MAX, 0));
        assert!(!unlimited.add(usize::MAX, 0), "saturates, never wraps");
    }
}
