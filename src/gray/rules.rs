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
    /// Allocation-free: values are compared where they lie in the request (a query value
    /// percent-decoded on the fly), so a huge header, cookie or query costs a scan, never a copy.
    fn matches(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        match &self.source {
            Source::Header(name) => headers
                .get_all(name)
                .iter()
                .find_map(|v| v.to_str().ok())
                .is_some_and(|v| self.matcher.accepts(v.trim().bytes())),
            Source::Cookie(name) => {
                cookie(headers, name).is_some_and(|v| self.matcher.accepts(v.bytes()))
            }
            Source::Query(name) => query
                .and_then(|q| query_value(q, name))
                .is_some_and(|raw| self.matcher.accepts(Decoded::new(raw))),
        }
    }
}

impl Match {
    fn accepts(&self, value: impl Iterator<Item = u8>) -> bool {
        match self {
            Match::Present => true,
            Match::Equals(want) => value.eq(want.bytes()),
            Match::Prefix(p) => starts_with(value, p.as_bytes()),
        }
    }
}

fn starts_with(mut value: impl Iterator<Item = u8>, prefix: &[u8]) -> bool {
    prefix.iter().all(|b| value.next() == Some(*b))
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

/// A cookie's value from every `Cookie` header (RFC 6265 `name=value; name2=value2`), borrowed
/// from the request; the first cookie of that name wins.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// The raw (still percent-encoded) value of the first query parameter whose decoded name is
/// `name`; a parameter without `=` has an empty value.
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| Decoded::new(k).eq(name.bytes()))
        .map(|(_, v)| v)
}

/// A query parameter's value, percent-decoded (`+` is a space, as browsers send forms). For the
/// admin `/decide` endpoint; the request path compares with [`Decoded`] instead.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    let raw = query_value(query, name)?;
    Some(String::from_utf8_lossy(&Decoded::new(raw).collect::<Vec<u8>>()).into_owned())
}

/// The bytes of a percent-encoded query component, decoded as they are read: `%41` is `A`, `+`
/// a space, and a broken escape (`%zz`, a trailing `%4`) stays as written.
#[derive(Debug, Clone)]
struct Decoded<'a> {
    rest: &'a [u8],
}

impl<'a> Decoded<'a> {
    fn new(s: &'a str) -> Self {
        Self { rest: s.as_bytes() }
    }
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&b, tail) = self.rest.split_first()?;
        let hex = |c: u8| char::from(c).to_digit(16);
        if b == b'%' {
            if let [h, l, after @ ..] = tail {
                if let (Some(h), Some(l)) = (hex(*h), hex(*l)) {
                    self.rest = after;
                    // Two hex digits are at most 0xff.
                    return Some((h * 16 + l) as u8);
                }
            }
        }
        self.rest = tail;
        Some(if b == b'+' { b' ' } else { b })
    }
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
        assert_eq!(cookie(&h, "uid"), Some("u-7"));
        assert_eq!(cookie(&h, "nope"), None);
    }

    #[test]
    fn broken_percent_escapes_are_kept_verbatim() {
        assert_eq!(query_param("a=%zz%4", "a").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("a=%41%", "a").as_deref(), Some("A%"));
    }
}
