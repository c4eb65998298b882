//! Header names the request path looks up that the `http` crate has no constant for.
//!
//! A lookup by `&str` parses and validates the name on every call; a `HeaderName` is parsed
//! once, here; the headers graysplit adds are inserted by these names too (`proxy::header_edit`).

use http::HeaderName;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_GRAYSPLIT_POOL: HeaderName = HeaderName::from_static("x-graysplit-pool");
pub static X_GRAYSPLIT_REASON: HeaderName = HeaderName::from_static("x-graysplit-reason");
pub static SEC_FETCH_DEST: HeaderName = HeaderName::from_static("sec-fetch-dest");
