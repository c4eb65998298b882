//! What a valid pin proves, and for how long (pure).
//!
//! A pin is a bearer token for a pool and build, signed when a *page* was decided. It is honoured
//! in three ways, depending on the request and on how long ago that decision was taken:
//!
//! - **A page** never follows its pin: it is decided afresh (switches, rules, whitelists,
//!   percent). The pin only tells what the browser holds (validators) and whether the answer
//!   changed (a new pin).
//! - **An asset within `grace`** of the pin's page decision follows the pin with no lookup at
//!   all: the page that loads it was decided with every input, and re-deciding its scripts would
//!   split one page load across builds. This keeps the promise "a switch never splits an already
//!   loaded page" — for `grace`.
//! - **Past `grace`**, an asset whose *path* matches `asset_patterns` is decided afresh and keeps
//!   the pin's build only if the decision still names the pin's pool (a tester removed from the
//!   whitelist, a switch turned off, percent lowered, a rollback: the old gray pin stops working
//!   once the grace is over). Any other request (`/index.html` fetched with `Sec-Fetch-Dest:
//!   empty`, an API path) is never served from a pin past the grace.
//!
//! Pages refresh the pin's `issued` time (see [`super::Pinner::refresh_due`]), so an open page
//! that is in use keeps its assets inside the grace.

use std::time::Duration;

use super::classify::Kind;

/// How one request may use its (valid) pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Follow the pin's pool and build without any lookup (an asset within the grace).
    Follow,
    /// Decide afresh; keep the pin's build only if the decision names the pin's pool (an asset
    /// path past the grace).
    IfStillDecided,
    /// Decide afresh, as without a pin (a page; a non-asset path past the grace).
    Ignore,
}

/// The scope of a pin issued `age` seconds ago for a request of `kind`; `asset_path` tells
/// whether the path matches the asset patterns.
pub fn scope(kind: Kind, asset_path: bool, age: u64, grace: Duration) -> Scope {
    match kind {
        Kind::Page => Scope::Ignore,
        Kind::Asset if age <= grace.as_secs() => Scope::Follow,
        Kind::Asset if asset_path => Scope::IfStillDecided,
        Kind::Asset => Scope::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(300);

    #[test]
    fn pages_never_follow_a_pin() {
        for (asset_path, age) in [(false, 0), (true, 0), (false, 10_000)] {
            assert_eq!(scope(Kind::Page, asset_path, age, GRACE), Scope::Ignore);
        }
    }

    #[test]
    fn assets_follow_within_the_grace_whatever_their_path() {
        assert_eq!(scope(Kind::Asset, true, 0, GRACE), Scope::Follow);
        assert_eq!(
            scope(Kind::Asset, true, 300, GRACE),
            Scope::Follow,
            "inclusive"
        );
        // fetch('/index.html') from an open page: still that page's build.
        assert_eq!(scope(Kind::Asset, false, 299, GRACE), Scope::Follow);
    }

    #[test]
    fn past_the_grace_asset_paths_are_re_decided_and_others_ignore_the_pin() {
        assert_eq!(scope(Kind::Asset, true, 301, GRACE), Scope::IfStillDecided);
        assert_eq!(scope(Kind::Asset, false, 301, GRACE), Scope::Ignore);
        assert_eq!(
            scope(Kind::Asset, true, 1, Duration::ZERO),
            Scope::IfStillDecided,
            "grace 0: every asset is checked"
        );
    }
}
