//! The visitor id: what keeps an anonymous browser on its side of a percent rollout.
//!
//! Without a user id, the bucket used to be the client IP, and NAT, mobile networks and IPv6
//! privacy addresses moved users between builds from one page load to the next. Now a browser
//! gets a random visitor id in a cookie (`[visitor] cookie`, default `graysplit_vid`) the first
//! time its decision reaches the percent step, and from then on its bucket is the salted hash of
//! that id, whatever its IP.
//!
//! - **Not signed, on purpose.** The id only chooses a bucket. A client that wants another bucket
//!   can always drop the cookie and draw again — signed or not — so a signature would protect
//!   nothing, while it would tie every instance of a fleet to one secret. With a salt set, the
//!   bucket of an id cannot be computed without the salt, so a client cannot pick an id that
//!   lands in gray either; it can only redraw. Percent is a sampling tool: gate anything that must
//!   stay secret with the whitelist or a rule on a verified identity.
//! - **The first page is decided as before** (by the IP), and the new id is drawn on the same
//!   side of the current rollout ([`mint`]): no one changes build between the first and the
//!   second page, and clients that refuse cookies stay as consistent as they were.
//! - A malformed value (not 22 base64url characters) is ignored and replaced.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderMap;

use super::salt::Salt;

/// Length of an id: 16 random bytes, base64url without padding.
pub const ID_LEN: usize = 22;

/// Values of the cookie looked at per request (a browser sends one).
const MAX_CANDIDATES: usize = 4;

/// Draws before [`mint`] gives up matching the side: a side of share p takes 1/p draws on
/// average, so below a 0.1 % rollout some of its (few) gray first visits get an id of the base
/// side — their second page is base. At most about a millisecond of hashing, for those only.
const MAX_DRAWS: usize = 4096;

/// Validated `[visitor]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitorSettings {
    /// Cookie name; `None`: no visitor id (anonymous clients are bucketed by IP).
    pub cookie: Option<String>,
    /// `Max-Age` of the cookie.
    pub max_age: Duration,
    /// Add `Secure` (follows `pin.secure`).
    pub secure: bool,
}

/// Default cookie name.
pub const DEFAULT_COOKIE: &str = "graysplit_vid";

impl Default for VisitorSettings {
    fn default() -> Self {
        Self {
            cookie: Some(DEFAULT_COOKIE.into()),
            max_age: Duration::from_secs(365 * 86_400),
            secure: false,
        }
    }
}

fn well_formed(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The request's visitor id, if it has a well-formed one.
pub fn read<'h>(headers: &'h HeaderMap, cookie: &'h str) -> Option<&'h str> {
    crate::cookies::values(headers, cookie)
        .take(MAX_CANDIDATES)
        .find(|v| well_formed(v))
}

/// Is `bucket` on the gray side of a `percent_bp` rollout?
fn gray_side(bucket: u32, percent_bp: u32) -> bool {
    bucket < percent_bp
}

/// A new random id whose bucket (under `salt`) is on the gray side of `percent_bp` exactly when
/// `gray` is: the client's next page is decided by the id as this one was by its IP. About two
/// draws on average (a side of share p takes 1/p draws, and is met with probability p).
pub fn mint(salt: &Salt, gray: bool, percent_bp: u32) -> String {
    let mut id = draw();
    for _ in 1..MAX_DRAWS {
        if gray_side(salt.bucket(id.as_bytes()), percent_bp) == gray {
            break;
        }
        id = draw();
    }
    id
}

fn draw() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// The `Set-Cookie` value for a new id.
pub fn set_cookie(settings: &VisitorSettings, id: &str) -> Option<String> {
    let name = settings.cookie.as_deref()?;
    Some(format!(
        "{name}={id}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
        settings.max_age.as_secs(),
        if settings.secure { "; Secure" } else { "" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn reads_only_well_formed_ids() {
        let id = draw();
        assert_eq!(id.len(), ID_LEN);
        let h = with_cookie(&format!("graysplit_vid=short; a=1; graysplit_vid={id}"));
        assert_eq!(read(&h, DEFAULT_COOKIE), Some(id.as_str()));
        assert_eq!(
            read(
                &with_cookie("graysplit_vid=../../etc/passwd+++++"),
                DEFAULT_COOKIE
            ),
            None
        );
        assert_eq!(read(&HeaderMap::new(), DEFAULT_COOKIE), None);
    }

    #[test]
    fn a_minted_id_lands_on_the_side_of_its_first_page() {
        for salt in [Salt::NONE, Salt::new("r1")] {
            for percent_bp in [1, 100, 1_000, 5_000, 9_900] {
                for gray in [true, false] {
                    let id = mint(&salt, gray, percent_bp);
                    // At 0.01 % a gray draw may (rarely) miss within MAX_DRAWS; 1 % never does here.
                    if percent_bp >= 100 {
                        assert_eq!(
                            gray_side(salt.bucket(id.as_bytes()), percent_bp),
                            gray,
                            "{salt:?} {percent_bp} {gray}"
                        );
                    }
                }
            }
        }
    }

    /// Issue 11: 10,000 visitors whose IP changes keep their bucket; a new salt moves a different
    /// ~percent of them.
    #[test]
    fn ten_thousand_visitors_keep_their_bucket_across_ips_and_a_new_salt_reshuffles() {
        let percent_bp = 1_000; // 10 %
        let (s1, s2) = (Salt::new("rollout-1"), Salt::new("rollout-2"));
        let mut first_gray = 0;
        let mut overlap = 0;
        let mut new_gray = 0;
        for v in 0..10_000u32 {
            // First visit: decided by the IP, the id drawn on the same side.
            let ip = format!("10.{}.{}.{}", v >> 16, (v >> 8) & 255, v & 255);
            let by_ip = gray_side(s1.bucket(ip.as_bytes()), percent_bp);
            let id = mint(&s1, by_ip, percent_bp);
            let side = gray_side(s1.bucket(id.as_bytes()), percent_bp);
            assert_eq!(
                side, by_ip,
                "visitor {v}: the second page keeps the first page's side"
            );
            // Later visits from other IPs: the id decides, so the side never changes.
            for _ in 0..3 {
                assert_eq!(gray_side(s1.bucket(id.as_bytes()), percent_bp), side);
            }
            first_gray += usize::from(side);
            let moved = gray_side(s2.bucket(id.as_bytes()), percent_bp);
            new_gray += usize::from(moved);
            overlap += usize::from(side && moved);
        }
        assert!((850..=1_150).contains(&first_gray), "{first_gray}");
        assert!((850..=1_150).contains(&new_gray), "{new_gray}");
        assert!(
            (40..=180).contains(&overlap),
            "a new salt picks other users: {overlap}"
        );
    }

    #[test]
    fn set_cookie_has_the_attributes() {
        let s = VisitorSettings {
            secure: true,
            ..VisitorSettings::default()
        };
        assert_eq!(
            set_cookie(&s, "abc").unwrap(),
            "graysplit_vid=abc; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax; Secure"
        );
        let off = VisitorSettings {
            cookie: None,
            ..VisitorSettings::default()
        };
        assert_eq!(set_cookie(&off, "abc"), None);
    }
}
