//! Header names the request path looks up that the `http` crate has no constant for.
//!
//! A lookup by `&str` parses and validates the name on every call; a `HeaderName` is parsed
//! once, here. (Inserting into Pingora's headers takes the `&'static str` instead: Pingora
//! parses the name again either way, and a `HeaderName` would first be copied.)

use http::HeaderName;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static SEC_FETCH_DEST: HeaderName = HeaderName::from_static("sec-fetch-dest");
