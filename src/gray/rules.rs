//! Explicit routing rules on header / cookie / query parameter (seed 000/004's blue/green
//! conditions: header `a` = `1` → gray, `2` → base), evaluated in order; the first match wins.

use std::sync::Arc;

use http::HeaderMap;

use super::decision::Target;

/// Where a rule looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
}

/// How it compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Equals(String),
    Prefix(String),
    Present,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub source: Source,
    pub matcher: Match,
    pub target: Target,
}

impl Rule {
    fn matches(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        let value = match &self.source {
            Source::Header(name) => headers
                .get_all(name)
                .iter()
                .find_map(|v| v.to_str().ok())
                .map(|s| s.trim().to_string()),
            Source::Cookie(name) => cookie(headers, name),
            Source::Query(name) => query.and_then(|q| query_param(q, name)),
        };
        match (&self.matcher, value) {
            (_, None) => false,
            (Match::Present, Some(_)) => true,
            (Match::Equals(want), Some(v)) => v == *want,
            (Match::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
        }
    }
}

/// The target of the first matching rule.
pub fn first_match<'r>(
    rules: &'r [Rule],
    headers: &HeaderMap,
    query: Option<&str>,
) -> Option<&'r Target> {
    rules
        .iter()
        .find(|r| r.matches(headers, query))
        .map(|r| &r.target)
}

/// A cookie's value from every `Cookie` header (RFC 6265 `name=value; name2=value2`).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
}

/// A query parameter's value, percent-decoded (`+` is a space, as browsers send forms).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| percent_decode(k) == name)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], escaped) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Convenience for building rules in code and tests.
pub fn rule(source: Source, matcher: Match, pool: &str) -> Rule {
    let target = match pool {
        "base" => Target::Base,
        "gray" => Target::Gray,
        other => Target::Named(Arc::from(other)),
    };
    Rule {
        source,
        matcher,
        target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn seed_rules() -> Vec<Rule> {
        let a = || Source::Header(http::HeaderName::from_static("a"));
        vec![
            rule(a(), Match::Equals("1".into()), "gray"),
            rule(a(), Match::Equals("2".into()), "base"),
        ]
    }

    #[test]
    fn seed_blue_green_header_rules() {
        let rules = seed_rules();
        assert_eq!(
            first_match(&rules, &headers(&[("a", "1")]), None),
            Some(&Target::Gray)
        );
        assert_eq!(
            first_match(&rules, &headers(&[("a", "2")]), None),
            Some(&Target::Base)
        );
        assert_eq!(first_match(&rules, &headers(&[("a", "3")]), None), None);
        assert_eq!(first_match(&rules, &headers(&[]), None), None);
    }

    #[test]
    fn cookie_query_prefix_and_presence() {
        let rules = vec![
            rule(Source::Cookie("canary".into()), Match::Present, "gray"),
            rule(
                Source::Query("env".into()),
                Match::Prefix("gr".into()),
                "gray",
            ),
            rule(
                Source::Query("pool".into()),
                Match::Equals("gate way".into()),
                "gateway",
            ),
        ];
        let h = headers(&[("cookie", "a=b; canary=; x=y")]);
        assert_eq!(first_match(&rules, &h, None), Some(&Target::Gray));
        assert_eq!(
            first_match(&rules, &headers(&[]), Some("x=1&env=gray2")),
            Some(&Target::Gray)
        );
        assert_eq!(
            first_match(&rules, &headers(&[]), Some("pool=gate%20way")),
            Some(&Target::Named("gateway".into()))
        );
        assert_eq!(
            first_match(&rules, &headers(&[]), Some("pool=gate+way")),
            Some(&Target::Named("gateway".into()))
        );
        assert_eq!(first_match(&rules, &headers(&[]), Some("env=base")), None);
    }

    #[test]
    fn cookies_across_several_headers() {
        let h = headers(&[("cookie", "a=1"), ("cookie", "uid=\"u-7\"")]);
        assert_eq!(cookie(&h, "uid").as_deref(), Some("u-7"));
        assert_eq!(cookie(&h, "nope"), None);
    }

    #[test]
    fn broken_percent_escapes_are_kept_verbatim() {
        assert_eq!(query_param("a=%zz%4", "a").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("a=%41%", "a").as_deref(), Some("A%"));
    }
}
