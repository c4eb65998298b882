//! Request ids (`server.request_id_header`, default `X-Request-Id`), as nginx users set them up
//! with `proxy_set_header X-Request-Id $request_id` and `add_header X-Request-Id $request_id`:
//! one id per request, sent upstream, returned to the client, written in the access line, so a
//! complaint ("request a1b2… failed") leads to the log lines of graysplit and of the upstream.
//!
//! The id a client sends is kept only from a peer in `gray.trusted_proxies` (a load balancer or
//! gateway in front that already made one) and only when it is short, visible ASCII; anyone else
//! gets a new id and their header never reaches the upstream — an id is something logs are
//! searched by, so a client must not be able to plant one.
//!
//! A new id is 32 hex digits like nginx's `$request_id`, without a syscall: a random 64-bit
//! prefix drawn once per process, then a per-process counter passed through a bijective mixer
//! (so ids are unique within the process and do not look sequential).

use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderName, HeaderValue};

/// Longest id accepted from a trusted peer (a UUID is 36, a W3C trace parent 55).
pub const MAX_LEN: usize = 128;

/// The request id source of one process.
#[derive(Debug)]
pub struct RequestIds {
    header: HeaderName,
    prefix: u64,
    key: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new(header: HeaderName) -> RequestIds {
        RequestIds {
            header,
            prefix: rand::random(),
            key: rand::random(),
            counter: AtomicU64::new(0),
        }
    }

    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// A new id: 32 lower-case hex digits, as the header value it is sent as (made once, then
    /// shared by the upstream request, the answer and the access line).
    pub fn generate(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // 32 lower-case hex digits (what `{:016x}{:016x}` writes), without the fmt machinery.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = [0u8; 32];
        for (i, half) in [self.prefix, mix(n ^ self.key)].into_iter().enumerate() {
            for shift in 0..16 {
                id[i * 16 + 15 - shift] = HEX[((half >> (shift * 4)) & 0xf) as usize];
            }
        }
        // Hex digits are always a valid value; the fallback only keeps this free of a panic.
        HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("-"))
    }

    /// The id of a request: the one it carries when it came from a trusted peer and is usable,
    /// otherwise a new one.
    pub fn for_request(&self, sent: Option<&HeaderValue>, trusted_peer: bool) -> HeaderValue {
        match sent {
            // The value as sent (a reference count on the read buffer, no copy).
            Some(v) if trusted_peer && acceptable(v.as_bytes()) => v.clone(),
            _ => self.generate(),
        }
    }
}

impl super::GraySplit {
    /// The id of this request (`None` when request ids are off).
    pub(super) fn request_id(
        &self,
        req: &pingora::http::RequestHeader,
        peer: Option<std::net::IpAddr>,
    ) -> Option<HeaderValue> {
        let ids = self.settings.request_ids.as_ref()?;
        let trusted = peer.is_some_and(|ip| {
            crate::gray::client_ip::is_trusted(ip, &self.gray.settings.trusted_proxies)
        });
        Some(ids.for_request(req.headers.get(ids.header()), trusted))
    }

    /// The request id header and this request's id, when there is one to send.
    pub(super) fn request_id_header<'c>(
        &'c self,
        ctx: &'c super::ctx::RequestCtx,
    ) -> Option<(&'c http::HeaderName, &'c HeaderValue)> {
        let ids = self.settings.request_ids.as_ref()?;
        Some((ids.header(), ctx.request_id.as_ref()?))
    }
}

/// 1 to [`MAX_LEN`] bytes of visible ASCII without `"` or `\`: it goes into log lines as is.
pub fn acceptable(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\')
}

/// SplitMix64's finaliser: a bijection on u64, so distinct counters give distinct ids.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn ids() -> RequestIds {
        RequestIds::new(HeaderName::from_static("x-request-id"))
    }

    fn text(v: HeaderValue) -> String {
        v.to_str().expect("visible ASCII").to_owned()
    }

    #[test]
    fn a_new_id_is_the_two_halves_in_hex() {
        let source = ids();
        let id = text(source.generate());
        let want = format!("{:016x}{:016x}", source.prefix, mix(source.key));
        assert_eq!(id, want, "the first id is counter 0, mixed");
    }

    #[test]
    fn new_ids_are_32_hex_digits_and_distinct() {
        let source = ids();
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = text(source.generate());
            assert_eq!(id.len(), 32);
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(seen.insert(id));
        }
        let (a, b) = (text(source.generate()), text(source.generate()));
        assert_eq!(a[..16], b[..16], "one prefix per process");
        assert_ne!(
            text(ids().generate())[..16],
            a[..16],
            "another process, another prefix"
        );
    }

    #[test]
    fn a_sent_id_is_kept_only_from_a_trusted_peer_and_only_if_usable() {
        let ids = ids();
        let sent = HeaderValue::from_static("lb-7f3a-0001");
        assert_eq!(text(ids.for_request(Some(&sent), true)), "lb-7f3a-0001");
        assert_ne!(text(ids.for_request(Some(&sent), false)), "lb-7f3a-0001");
        for bad in ["", "a b", "a\"b", "a\\b"] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert_eq!(ids.for_request(Some(&v), true).len(), 32, "{bad:?}");
        }
        let long = HeaderValue::from_str(&"a".repeat(MAX_LEN + 1)).unwrap();
        assert_eq!(ids.for_request(Some(&long), true).len(), 32);
        let utf8 = HeaderValue::from_bytes("é".as_bytes()).unwrap();
        assert_eq!(ids.for_request(Some(&utf8), true).len(), 32);
        assert_eq!(ids.for_request(None, true).len(), 32);
    }
}
