//! Page or asset? Pure functions over the request head.
//!
//! - A **page** is a top-level navigation: `Sec-Fetch-Dest: document`. Every current browser
//!   sends that header (Chrome 80+, Firefox 90+, Safari 16.4+). Frames (`iframe`, `frame`) are
//!   *assets* on purpose: an iframe inside a loaded page must follow that page's pin, not move it
//!   (moving it would send the parent page's next chunks to another build).
//! - Without the header (old browsers, curl), a GET or HEAD is a page when its `Accept` prefers
//!   `text/html`, or when its path does not match the asset patterns.
//! - Everything else is an asset (scripts, styles, images, fonts, fetch/XHR, workers, POSTs).
//!
//! Asset patterns are gitignore-like globs, checked in order, the last match winning; `!`
//! negates. A pattern without `/` is matched against the last path segment, one with `/` against
//! the whole path. `*` matches within a segment, `**` across segments, `?` one character, and
//! `[hash]` a content hash as bundlers write it: 8 or more letters, digits or `_`, with at least
//! one digit and one letter (`5bdff181`, `BdMf2Xk1`, `a1b2c3d4e5f6a7b8`).
//! Default: `["*.*", "!*.html"]` — a file extension other than `.html`.

use http::{HeaderMap, Method};

/// What a request is, for the pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A navigation: re-decides, and issues or moves the pin.
    Page,
    /// A subresource: follows a valid pin without any lookup.
    Asset,
}

/// The default asset patterns.
pub const DEFAULT_ASSET_PATTERNS: [&str; 2] = ["*.*", "!*.html"];

/// Compiled asset patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetPatterns {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    negated: bool,
    /// Contains '/': matched against the whole path.
    anchored: bool,
    glob: String,
    shape: Shape,
}

/// A pattern of the common shapes, matched without the glob machinery (every request is
/// classified, and the defaults are of these shapes: `*.*`, `*.html`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// `*lit` on a segment: the segment ends with `lit`.
    Suffix(String),
    /// `*lit*` on a segment: the segment contains `lit` (never empty: `*` alone is a suffix).
    Contains(String),
    /// Anything else: [`glob`], after a check that the subject has the pattern's literal bytes
    /// (up to [`NEEDS`] of them, each as often as the pattern has it): a path with fewer cannot
    /// match, and most paths fail here in one short scan (`*.[hash].*` on `index.html`).
    Glob(Vec<(u8, usize)>),
}

/// Literal bytes a [`Shape::Glob`] checks before matching.
const NEEDS: usize = 3;

/// The literal bytes of `glob` (not `*`, `?` or `[hash]`) with how often each occurs.
fn literal_needs(glob: &str) -> Vec<(u8, usize)> {
    let mut p = glob.as_bytes();
    let mut needs: Vec<(u8, usize)> = Vec::new();
    while let Some(&c) = p.first() {
        if p.starts_with(HASH_TOKEN) {
            p = &p[HASH_TOKEN.len()..];
            continue;
        }
        p = &p[1..];
        if c == b'*' || c == b'?' {
            continue;
        }
        if let Some(need) = needs.iter_mut().find(|(b, _)| *b == c) {
            need.1 += 1;
        } else if needs.len() < NEEDS {
            needs.push((c, 1));
        }
    }
    needs
}

impl Shape {
    fn of(glob: &str, anchored: bool) -> Shape {
        let plain = |t: &str| !t.is_empty() && !t.bytes().any(|b| matches!(b, b'*' | b'?' | b'['));
        // A segment pattern meets a subject without '/', where a single `*` is any text.
        let Some(rest) = glob.strip_prefix('*').filter(|_| !anchored) else {
            return Shape::Glob(literal_needs(glob));
        };
        if rest.is_empty() || plain(rest) {
            return Shape::Suffix(rest.to_string());
        }
        match rest.strip_suffix('*') {
            Some(mid) if plain(mid) => Shape::Contains(mid.to_string()),
            _ => Shape::Glob(literal_needs(glob)),
        }
    }

    fn matches(&self, glob_text: &str, subject: &str) -> bool {
        match self {
            Shape::Suffix(lit) => subject.ends_with(lit.as_str()),
            // A plain scan: the subject is one short segment, where `str::contains`'s searcher
            // costs more to set up than the search.
            Shape::Contains(lit) => subject
                .as_bytes()
                .windows(lit.len())
                .any(|w| w == lit.as_bytes()),
            Shape::Glob(needs) => {
                let s = subject.as_bytes();
                needs
                    .iter()
                    .all(|&(b, n)| s.iter().filter(|&&c| c == b).count() >= n)
                    && glob(glob_text.as_bytes(), s)
            }
        }
    }
}

impl Default for AssetPatterns {
    fn default() -> Self {
        Self::new(&DEFAULT_ASSET_PATTERNS).unwrap_or(Self { rules: Vec::new() })
    }
}

impl AssetPatterns {
    /// Compiles patterns; `Err` names the first bad one and the rule it breaks.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, (usize, &'static str)> {
        let mut rules = Vec::with_capacity(patterns.len());
        for (i, p) in patterns.iter().enumerate() {
            let p = p.as_ref();
            let (negated, glob) = match p.strip_prefix('!') {
                Some(g) => (true, g),
                None => (false, p),
            };
            if let Some(rule) = check(glob) {
                return Err((i, rule));
            }
            let anchored = glob.contains('/');
            rules.push(Rule {
                negated,
                anchored,
                glob: glob.to_string(),
                shape: Shape::of(glob, anchored),
            });
        }
        Ok(Self { rules })
    }

    /// Does `path` (the URL path, without the query) name an asset?
    pub fn matches(&self, path: &str) -> bool {
        let last = path.rsplit('/').next().unwrap_or(path);
        let mut hit = false;
        for r in &self.rules {
            let subject = if r.anchored { path } else { last };
            if r.shape.matches(&r.glob, subject) {
                hit = !r.negated;
            }
        }
        hit
    }
}

/// The rule a pattern breaks, if any.
fn check(glob: &str) -> Option<&'static str> {
    if glob.is_empty() {
        Some("must not be empty")
    } else if glob
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        Some("must not contain spaces or control characters")
    } else if glob.contains('/') && !glob.starts_with('/') {
        Some("a pattern with '/' is matched against the whole path and must start with '/'")
    } else {
        None
    }
}

/// Classifies one request.
pub fn classify(method: &Method, headers: &HeaderMap, path: &str, assets: &AssetPatterns) -> Kind {
    if let Some(dest) = headers.get(&crate::header_names::SEC_FETCH_DEST) {
        return if dest.as_bytes().eq_ignore_ascii_case(b"document") {
            Kind::Page
        } else {
            Kind::Asset
        };
    }
    let get = method == Method::GET || method == Method::HEAD;
    if get && (accept_prefers_html(headers) || !assets.matches(path)) {
        Kind::Page
    } else {
        Kind::Asset
    }
}

/// `Accept` lists `text/html` (or XHTML) with a non-zero quality no lower than any other type.
pub fn accept_prefers_html(headers: &HeaderMap) -> bool {
    let mut html: f32 = 0.0;
    let mut other: f32 = 0.0;
    for value in headers.get_all(http::header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if media.eq_ignore_ascii_case("text/html")
                || media.eq_ignore_ascii_case("application/xhtml+xml")
            {
                html = html.max(q);
            } else if !media.is_empty() {
                other = other.max(q);
            }
        }
    }
    html > 0.0 && html >= other
}

/// Destinations that can never use an HTML answer (`Sec-Fetch-Dest`).
const NON_HTML_DESTS: [&str; 13] = [
    "script",
    "style",
    "font",
    "image",
    "audio",
    "video",
    "track",
    "manifest",
    "worker",
    "sharedworker",
    "serviceworker",
    "audioworklet",
    "paintworklet",
];

/// Extensions whose answer is never HTML, for requests without `Sec-Fetch-Dest`.
const NON_HTML_EXTENSIONS: [&str; 5] = ["js", "mjs", "css", "map", "wasm"];

/// Would an HTML answer to this request be an SPA fallback's `index.html` served for a missing
/// file (the "expected expression, got '<'" error)? True for script, style, image, font, worker…
/// destinations, and, without `Sec-Fetch-Dest`, for `.js`/`.mjs`/`.css`/`.map`/`.wasm` paths.
/// fetch/XHR (`empty`) and frames may legitimately get HTML, so they are never judged.
pub fn html_is_never_right(headers: &HeaderMap, path: &str) -> bool {
    if let Some(dest) = headers.get(&crate::header_names::SEC_FETCH_DEST) {
        let dest = dest.as_bytes();
        return NON_HTML_DESTS
            .iter()
            .any(|d| d.as_bytes().eq_ignore_ascii_case(dest));
    }
    let last = path.rsplit('/').next().unwrap_or(path);
    last.rsplit_once('.').is_some_and(|(_, ext)| {
        NON_HTML_EXTENSIONS
            .iter()
            .any(|e| e.eq_ignore_ascii_case(ext))
    })
}

/// The `[hash]` token of a pattern.
const HASH_TOKEN: &[u8] = b"[hash]";

/// Shortest content hash `[hash]` matches (Vite and webpack write 8 or more characters).
const MIN_HASH_LEN: usize = 8;

/// Does `h` look like a content hash: letters, digits and `_`, at least one digit and one letter?
/// (A date such as `20261101` or a word such as `vendors` is not one.)
fn is_hash(h: &[u8]) -> bool {
    h.len() >= MIN_HASH_LEN
        && h.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        && h.iter().any(u8::is_ascii_digit)
        && h.iter().any(u8::is_ascii_alphabetic)
}

/// Can `p` match at the start of `s`, judged by its first byte alone? False only when `p`
/// starts with a literal byte that `s` does not start with: a `*` then tries only the positions
/// of that byte (`*.*` on `index.html` one position, not eleven), on every request's path.
fn can_start(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None | Some(b'*' | b'?') => true,
        Some(b'[') if p.starts_with(HASH_TOKEN) => true,
        Some(c) => s.first() == Some(c),
    }
}

/// Glob match: `*` within a segment, `**` across segments, `?` one non-'/' byte, `[hash]` a
/// content hash ([`is_hash`]).
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'[') if p.starts_with(HASH_TOKEN) => {
            let rest = &p[HASH_TOKEN.len()..];
            let run = s
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
            (MIN_HASH_LEN..=run)
                .rev()
                .any(|n| is_hash(&s[..n]) && glob(rest, &s[n..]))
        }
        Some(b'*') if p.get(1) == Some(&b'*') => {
            let rest = &p[2..];
            (0..=s.len()).any(|i| can_start(rest, &s[i..]) && glob(rest, &s[i..]))
        }
        Some(b'*') => {
            let rest = &p[1..];
            let seg = s.iter().position(|&b| b == b'/').unwrap_or(s.len());
            (0..=seg).any(|i| can_start(rest, &s[i..]) && glob(rest, &s[i..]))
        }
        Some(b'?') => s.first().is_some_and(|&b| b != b'/') && glob(&p[1..], &s[1..]),
        Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    type Headers = &'static [(&'static str, &'static str)];

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    // Header sets as Chrome 156 / Firefox / Safari send them (Accept, Sec-Fetch-*).
    const CHROME_NAV: &[(&str, &str)] = &[
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "none"),
    ];
    const CHROME_SCRIPT: &[(&str, &str)] = &[
        ("accept", "*/*"),
        ("sec-fetch-dest", "script"),
        ("sec-fetch-mode", "no-cors"),
    ];
    const CHROME_MODULE: &[(&str, &str)] = &[
        ("accept", "*/*"),
        ("sec-fetch-dest", "script"),
        ("sec-fetch-mode", "cors"),
    ];
    const CHROME_STYLE: &[(&str, &str)] = &[
        ("accept", "text/css,*/*;q=0.1"),
        ("sec-fetch-dest", "style"),
    ];
    const CHROME_IMAGE: &[(&str, &str)] = &[
        (
            "accept",
            "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
        ),
        ("sec-fetch-dest", "image"),
    ];
    const CHROME_FETCH: &[(&str, &str)] = &[("accept", "*/*"), ("sec-fetch-dest", "empty")];
    const CHROME_IFRAME: &[(&str, &str)] = &[
        ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
        ("sec-fetch-dest", "iframe"),
    ];
    const FIREFOX_NAV: &[(&str, &str)] = &[
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("sec-fetch-dest", "document"),
    ];
    const FIREFOX_STYLE: &[(&str, &str)] = &[
        ("accept", "text/css,*/*;q=0.1"),
        ("sec-fetch-dest", "style"),
    ];
    const OLD_SAFARI_NAV: &[(&str, &str)] = &[(
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    )];
    const OLD_SAFARI_SCRIPT: &[(&str, &str)] = &[("accept", "*/*")];
    const OLD_SAFARI_IMAGE: &[(&str, &str)] = &[(
        "accept",
        "image/webp,image/avif,video/*;q=0.8,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    )];
    const CURL: &[(&str, &str)] = &[("accept", "*/*")];

    #[test]
    fn classification_table() {
        let a = AssetPatterns::default();
        let get = Method::GET;
        let cases: &[(&Method, Headers, &str, Kind)] = &[
            (&get, CHROME_NAV, "/", Kind::Page),
            (&get, CHROME_NAV, "/orders/42", Kind::Page),
            // A navigation to a file is still a navigation.
            (&get, CHROME_NAV, "/report.pdf", Kind::Page),
            (&get, CHROME_SCRIPT, "/assets/app.5bdff181.js", Kind::Asset),
            (&get, CHROME_MODULE, "/assets/chunk-x.js", Kind::Asset),
            (&get, CHROME_STYLE, "/assets/app.643cbc8e.css", Kind::Asset),
            (&get, CHROME_IMAGE, "/favicon.ico", Kind::Asset),
            (&get, CHROME_FETCH, "/api/user", Kind::Asset),
            (&get, CHROME_IFRAME, "/embed.html", Kind::Asset),
            (&Method::POST, CHROME_NAV, "/login", Kind::Page),
            (&get, FIREFOX_NAV, "/", Kind::Page),
            (&get, FIREFOX_STYLE, "/assets/a.css", Kind::Asset),
            (&get, OLD_SAFARI_NAV, "/", Kind::Page),
            (&get, OLD_SAFARI_NAV, "/index.html", Kind::Page),
            (&get, OLD_SAFARI_SCRIPT, "/assets/app.js", Kind::Asset),
            (&get, OLD_SAFARI_IMAGE, "/img/logo.png", Kind::Asset),
            // No Sec-Fetch-Dest, no HTML in Accept: the path decides.
            (&get, CURL, "/", Kind::Page),
            (&get, CURL, "/about", Kind::Page),
            (&get, CURL, "/index.html", Kind::Page),
            (&get, CURL, "/assets/app.js", Kind::Asset),
            (&Method::HEAD, CURL, "/", Kind::Page),
            (&Method::POST, CURL, "/api/orders", Kind::Asset),
            (&get, &[], "/", Kind::Page),
            (&get, &[], "/v1.2/", Kind::Page),
        ];
        for (method, h, path, want) in cases {
            let got = classify(method, &headers(h), path, &a);
            assert_eq!(got, *want, "{method} {path} {h:?}");
        }
    }

    #[test]
    fn accept_preference() {
        assert!(accept_prefers_html(&headers(OLD_SAFARI_NAV)));
        assert!(accept_prefers_html(&headers(&[("accept", "TEXT/HTML")])));
        assert!(!accept_prefers_html(&headers(CURL)));
        assert!(!accept_prefers_html(&headers(&[])));
        assert!(!accept_prefers_html(&headers(&[(
            "accept",
            "application/json, text/html;q=0.5"
        )])));
        assert!(!accept_prefers_html(&headers(&[(
            "accept",
            "text/html;q=0"
        )])));
    }

    #[test]
    fn patterns_last_match_wins_and_anchor_on_slash() {
        let a =
            AssetPatterns::new(&["*.*", "!*.html", "/static/**", "!/static/app/*.json"]).unwrap();
        assert!(a.matches("/assets/app.js"));
        assert!(!a.matches("/index.html"));
        assert!(
            !a.matches("/v1.2/users"),
            "a dot in a folder is no extension"
        );
        assert!(a.matches("/static/fonts/x"));
        assert!(!a.matches("/static/app/config.json"));
        assert!(
            a.matches("/static/app/deep/config.json"),
            "* stays in a segment"
        );
        let q = AssetPatterns::new(&["app.??.js"]).unwrap();
        assert!(q.matches("/x/app.12.js") && !q.matches("/x/app.123.js"));
        assert!(!AssetPatterns::new::<&str>(&[]).unwrap().matches("/a.js"));
    }

    #[test]
    fn hash_matches_bundler_content_hashes_only() {
        let a = AssetPatterns::new(&["*.[hash].*", "*-[hash].*"]).unwrap();
        for hashed in [
            "/assets/app.5bdff181.js",           // Vite 2, webpack [contenthash:8]
            "/assets/index-BdMf2Xk1.js",         // Vite 3+ (base64url-like)
            "/js/chunk-vendors.3f2a1b9c.js",     // Vue CLI
            "/static/js/main.8e130b62.chunk.js", // Create React App
            "/_next/static/chunks/app-a1b2c3d4e5f6a7b8.js", // Next.js
            "/assets/logo.9abd1b9d.svg",
        ] {
            assert!(a.matches(hashed), "{hashed}");
        }
        for plain in [
            "/config.js",
            "/favicon.ico",
            "/assets/app.js",
            "/jquery-3.6.0.min.js",
            "/fonts/roboto-v30-latin-regular.woff2",
            "/img/banner-20261101.png", // a date, not a hash
            "/polyfills-es2015.js",
            "/chunk-vendors.js",
            "/index.html",
        ] {
            assert!(!a.matches(plain), "{plain}");
        }
    }

    /// A `*` tries only the positions where the literal after it occurs: a later occurrence
    /// still matches when an earlier one does not (and a `*` never crosses a '/').
    #[test]
    fn a_star_tries_every_occurrence_of_the_literal_after_it() {
        let js = AssetPatterns::new(&["*.js"]).unwrap();
        assert!(js.matches("/a.b.c.js"), "the last of three dots");
        assert!(!js.matches("/a.js.map"));
        let min = AssetPatterns::new(&["*.min.js"]).unwrap();
        assert!(min.matches("/x.min.min.js") && min.matches("/.min.js"));
        assert!(!min.matches("/x.min.jsx"));
        let hashed = AssetPatterns::new(&["*.[hash].*"]).unwrap();
        assert!(
            hashed.matches("/chunk.vendors.3f2a1b9c.js"),
            "the hash after the second dot"
        );
        let deep = AssetPatterns::new(&["/static/**.map"]).unwrap();
        assert!(deep.matches("/static/a.b/c.map") && !deep.matches("/static/a.map/c"));
        let seg = AssetPatterns::new(&["/a/*x"]).unwrap();
        assert!(seg.matches("/a/bxx") && !seg.matches("/a/x/b"));
    }

    #[test]
    fn bad_patterns_are_named() {
        assert_eq!(
            AssetPatterns::new(&["*.js", ""]).unwrap_err(),
            (1, "must not be empty")
        );
        assert!(AssetPatterns::new(&["!"]).is_err());
        assert!(AssetPatterns::new(&["a b"]).is_err());
        assert!(AssetPatterns::new(&["assets/*.js"]).is_err());
    }

    #[test]
    fn html_is_wrong_for_scripts_styles_and_images_only() {
        assert!(html_is_never_right(&headers(CHROME_SCRIPT), "/a"));
        assert!(html_is_never_right(&headers(CHROME_STYLE), "/a.css"));
        assert!(html_is_never_right(&headers(CHROME_IMAGE), "/favicon.ico"));
        assert!(!html_is_never_right(&headers(CHROME_FETCH), "/x.js"));
        assert!(!html_is_never_right(&headers(CHROME_IFRAME), "/x.js"));
        assert!(!html_is_never_right(&headers(CHROME_NAV), "/x.js"));
        assert!(html_is_never_right(&headers(CURL), "/assets/app.JS"));
        assert!(html_is_never_right(&headers(CURL), "/assets/app.css"));
        assert!(!html_is_never_right(&headers(CURL), "/partial.php"));
        assert!(!html_is_never_right(&headers(CURL), "/"));
    }

    #[test]
    fn common_shapes_skip_the_glob_and_agree_with_it() {
        assert_eq!(Shape::of("*.*", false), Shape::Contains(".".into()));
        assert_eq!(Shape::of("*.html", false), Shape::Suffix(".html".into()));
        assert_eq!(Shape::of("*", false), Shape::Suffix(String::new()));
        assert_eq!(Shape::of("*.[hash].*", false), Shape::Glob(vec![(b'.', 2)]));
        assert_eq!(
            Shape::of("/static/*", true),
            Shape::Glob(vec![(b'/', 2), (b's', 1), (b't', 2)])
        );
        assert_eq!(Shape::of("a*", false), Shape::Glob(vec![(b'a', 1)]));
        // Every pattern shape against every subject: the shapes and the needs never change what
        // the glob alone says.
        let patterns = [
            "*",
            "*.*",
            "*.html",
            "*.js",
            "*-*",
            "*.min.*",
            "*html",
            "*.[hash].*",
            "*-[hash].*",
            "**.js",
            "*.j?",
            "a*",
            "*a*b*",
            "[hash]",
            "app.*",
            "?*.css",
        ];
        let subjects = [
            "",
            "a",
            ".",
            "a.",
            ".a",
            "index.html",
            "x.htmlx",
            "app.5bdff181.js",
            "a.b.c",
            "html",
            "no-dot",
            "..",
            "app-BdMf2Xk1.css",
            "a.min.js",
            "ab",
            "ba",
            "x.css",
            "5bdff181",
        ];
        for pattern in patterns {
            let shape = Shape::of(pattern, false);
            for s in subjects {
                assert_eq!(
                    shape.matches(pattern, s),
                    glob(pattern.as_bytes(), s.as_bytes()),
                    "{pattern} on {s:?}"
                );
            }
        }
        let defaults = AssetPatterns::default();
        assert!(defaults.matches("/assets/app.js"));
        assert!(!defaults.matches("/index.html"));
        assert!(!defaults.matches("/dir.v2/page"));
        assert!(defaults.matches("/dir/a.html.gz"));
    }
}
