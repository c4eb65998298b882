//! HTTP caching of responses graysplit decided per client: what browsers and shared caches (CDNs,
//! corporate proxies) may keep, and validators that name their build. See docs/pin.md,
//! "Caches and validators".
//!
//! - [`cache_control`]: `private` merged into the upstream's `Cache-Control`, `Vary` (pure).
//! - [`validators`]: build-tagged `ETag`s and the translation of conditional requests (pure).
//! - [`CachePolicy`]: the settings, which paths are hashed immutable assets, and which request
//!   headers the decision reads (for `Vary`). The proxy applies it (`proxy/caching.rs`).

pub mod cache_control;
pub mod validators;

use crate::gray::rules::Source;
use crate::gray::GraySettings;
use crate::pin::classify::AssetPatterns;

/// Default `[cache] immutable`: a file name with a content hash, as Vite, webpack, Rollup,
/// Create React App, Vue CLI, Angular and Next.js write them (`app.5bdff181.js`,
/// `index-BdMf2Xk1.js`).
pub const DEFAULT_IMMUTABLE: [&str; 2] = ["*.[hash].*", "*-[hash].*"];

/// What graysplit does to `Cache-Control` on responses whose content depends on the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// `private` merged in, shared-cache directives and CDN cache headers removed (default).
    Private,
    /// The upstream's headers as they are (a cache in front that keys on the pin cookie, or
    /// none at all). A response carrying graysplit's `Set-Cookie` is made private regardless.
    Unchanged,
}

/// Validated `[cache]` settings.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub decided: Decided,
    /// Paths of content-hashed (immutable) files: their caching is left as the upstream set it.
    pub immutable: AssetPatterns,
    /// Tag `ETag`s with the build and translate conditional requests (validators.rs).
    pub tag_validators: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            decided: Decided::Private,
            immutable: AssetPatterns::new(&DEFAULT_IMMUTABLE).unwrap_or_default(),
            tag_validators: true,
        }
    }
}

/// The settings plus what the gray decision reads, made once at start.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    pub settings: CacheSettings,
    /// `Vary` for pages: the request headers the decision reads (`Cookie` for cookie rules, the
    /// user cookie and the visitor id; the user header; header rules).
    pub vary_pages: Vec<String>,
    /// `Vary` for assets: as pages, plus `Cookie` (they follow the pin cookie).
    pub vary_assets: Vec<String>,
}

impl CachePolicy {
    pub fn new(settings: CacheSettings, gray: &GraySettings) -> CachePolicy {
        let mut pages: Vec<String> = Vec::new();
        let mut add = |name: &str| {
            if !pages.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                pages.push(name.to_string());
            }
        };
        if gray.user_cookie.is_some() || gray.visitor.cookie.is_some() {
            add("Cookie");
        }
        if let Some(h) = &gray.user_header {
            add(h.as_str());
        }
        for rule in &gray.rules {
            match &rule.source {
                Source::Header(h) => add(h.as_str()),
                Source::Cookie(_) => add("Cookie"),
                // The query is part of the URL, which every cache keys on already.
                Source::Query(_) => {}
            }
        }
        let mut assets = pages.clone();
        if !assets.iter().any(|n| n.eq_ignore_ascii_case("Cookie")) {
            assets.push("Cookie".into());
        }
        CachePolicy {
            settings,
            vary_pages: pages,
            vary_assets: assets,
        }
    }

    /// Is `path` a content-hashed (immutable) file, whose caching is left alone?
    pub fn immutable(&self, path: &str) -> bool {
        self.settings.immutable.matches(path)
    }
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy::new(CacheSettings::default(), &GraySettings::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gray::decision::Target;
    use crate::gray::rules::{rule, Match};

    #[test]
    fn vary_names_what_the_decision_reads() {
        let p = CachePolicy::default();
        assert_eq!(
            p.vary_pages,
            ["Cookie"],
            "the visitor id cookie picks the percent bucket"
        );
        assert_eq!(p.vary_assets, ["Cookie"], "assets follow the pin cookie");
        let ip_only = GraySettings {
            visitor: crate::gray::visitor::VisitorSettings {
                cookie: None,
                ..Default::default()
            },
            ..GraySettings::default()
        };
        let p = CachePolicy::new(CacheSettings::default(), &ip_only);
        assert_eq!(
            p.vary_pages,
            Vec::<String>::new(),
            "IP only: private says it all"
        );
        assert_eq!(p.vary_assets, ["Cookie"]);
        let gray = GraySettings {
            user_header: Some(http::HeaderName::from_static("x-user")),
            rules: vec![
                rule(
                    Source::Header(http::HeaderName::from_static("a")),
                    Match::Present,
                    "gray",
                ),
                rule(Source::Cookie("beta".into()), Match::Present, "gray"),
                rule(Source::Query("q".into()), Match::Present, "gray"),
            ],
            ..GraySettings::default()
        };
        let p = CachePolicy::new(CacheSettings::default(), &gray);
        assert_eq!(p.vary_pages, ["Cookie", "x-user", "a"]);
        assert_eq!(p.vary_assets, ["Cookie", "x-user", "a"]);
        let _ = Target::Base;
    }

    #[test]
    fn hashed_files_are_immutable_by_default() {
        let p = CachePolicy::default();
        assert!(p.immutable("/assets/app.5bdff181.js"));
        assert!(!p.immutable("/config.js"));
        assert!(!p.immutable("/"));
    }
}
