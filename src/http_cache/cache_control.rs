//! `Cache-Control` and `Vary` for responses decided per client (pure).
//!
//! A page graysplit decided for *this* client (by IP, user, rule, percent, pin) must not be stored
//! by a cache that serves other clients: a CDN would hand one client's build — and its
//! `Set-Cookie` — to everyone. [`private`] merges `private` into whatever the upstream sent and
//! removes the directives that only speak to shared caches (`public`, `s-maxage`,
//! `proxy-revalidate`, a field-qualified `private="…"`, which lets shared caches keep the rest);
//! everything else (`max-age`, `no-cache`, `no-store`, `must-revalidate`, `immutable`,
//! extensions) is kept for the browser's own cache. [`vary`] adds the request headers the
//! decision read.

/// Directives that only a shared cache acts on, dropped from a private response.
const SHARED_ONLY: [&str; 3] = ["public", "s-maxage", "proxy-revalidate"];

/// Headers with which an upstream tells CDNs to cache regardless of `Cache-Control`
/// (RFC 9213's `CDN-Cache-Control`, Cloudflare's, Fastly's / Akamai's / Varnish's
/// `Surrogate-Control`, Akamai's `Edge-Control`): removed from private responses.
pub static CDN_HEADERS: [http::HeaderName; 4] = [
    http::HeaderName::from_static("cdn-cache-control"),
    http::HeaderName::from_static("cloudflare-cdn-cache-control"),
    http::HeaderName::from_static("surrogate-control"),
    http::HeaderName::from_static("edge-control"),
];

/// Splits a comma-separated header value into trimmed items, commas inside quoted strings
/// (`no-cache="Set-Cookie, X-Foo"`) included in their item.
fn items(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = value;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let item = rest[..end].trim();
        rest = rest.get(end + 1..).unwrap_or("");
        if !item.is_empty() {
            return Some(item);
        }
    })
}

/// The directive's name, lower-case comparison ready (`max-age=600` → `max-age`).
fn name(directive: &str) -> &str {
    directive.split('=').next().unwrap_or("").trim()
}

/// `Cache-Control` for a response decided per client: `private` first, then every directive of
/// `upstream` (all its header lines, in order) except the shared-cache ones.
pub fn private<'a>(upstream: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("private");
    for value in upstream {
        for d in items(value) {
            let n = name(d);
            if n.eq_ignore_ascii_case("private")
                || SHARED_ONLY.iter().any(|s| n.eq_ignore_ascii_case(s))
            {
                continue;
            }
            out.push_str(", ");
            out.push_str(d);
        }
    }
    out
}

/// `Vary` with every name of `add` present (case-insensitive), or `None` when nothing needs to
/// change (all present, or the upstream already varies on `*`).
pub fn vary<'a, A: AsRef<str>>(
    existing: impl IntoIterator<Item = &'a str>,
    add: &'a [A],
) -> Option<String> {
    let mut names: Vec<&str> = existing.into_iter().flat_map(items).collect();
    if names.contains(&"*") {
        return None;
    }
    let before = names.len();
    for a in add.iter().map(AsRef::as_ref) {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(a)) {
            names.push(a);
        }
    }
    (names.len() != before).then(|| names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_shared_directives_go_private_comes_first_the_rest_stays() {
        assert_eq!(private(["public, max-age=600"]), "private, max-age=600");
        assert_eq!(
            private(["max-age=60, s-maxage=3600, proxy-revalidate, must-revalidate"]),
            "private, max-age=60, must-revalidate"
        );
        assert_eq!(private(["no-cache"]), "private, no-cache");
        assert_eq!(private(["PUBLIC,Max-Age=5"]), "private, Max-Age=5");
        assert_eq!(private(["private"]), "private", "no duplicate");
        assert_eq!(
            private([r#"private="Set-Cookie", max-age=10"#]),
            "private, max-age=10",
            "a qualified private lets shared caches keep the rest: made plain"
        );
        assert_eq!(
            private([r#"no-cache="Set-Cookie, X-A", public"#]),
            r#"private, no-cache="Set-Cookie, X-A""#,
            "commas inside quotes stay in their directive"
        );
        assert_eq!(private(["public", "max-age=600"]), "private, max-age=600");
        assert_eq!(private([]), "private", "nothing said: still private");
        assert_eq!(private([" , ,"]), "private");
        assert_eq!(
            private(["no-store, immutable"]),
            "private, no-store, immutable"
        );
    }

    #[test]
    fn vary_adds_what_is_missing_once() {
        assert_eq!(vary([], &["Cookie"]), Some("Cookie".into()));
        assert_eq!(
            vary(["Accept-Encoding"], &["Cookie"]),
            Some("Accept-Encoding, Cookie".into())
        );
        assert_eq!(vary(["accept-encoding, cookie"], &["Cookie"]), None);
        assert_eq!(
            vary(["*"], &["Cookie"]),
            None,
            "already varies on everything"
        );
        assert_eq!(
            vary(["Accept-Encoding"], &["Cookie", "X-User"]),
            Some("Accept-Encoding, Cookie, X-User".into())
        );
        assert_eq!(vary(["Origin"], &[] as &[&str]), None);
    }
}
