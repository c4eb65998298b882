//! Validators that name their build (pure).
//!
//! A browser revalidates a page with the `ETag` / `Last-Modified` of the copy it holds. Two
//! builds of a frontend easily share them: nginx's ETag is mtime + size, and reproducible builds
//! give equal mtimes and sizes; a `Last-Modified`-only server (Go's `http.FileServer`, Python's
//! `http.server`, `serve-static` without ETags) answers `304` to any copy newer than its file.
//! When the client's decision has moved to another build, a `304` from that build keeps the old
//! build's page on screen. So graysplit makes validators build-specific:
//!
//! - **Responses**: an upstream `ETag` is tagged with the build of the server that produced it,
//!   `"65a1-243"` → `"65a1-243:gs=base-2026.11.1"` ([`tag`]); a response with only
//!   `Last-Modified` gets `W/"gs=<build>"` ([`synthesized`]).
//! - **Requests**, once the server (and so its build) is chosen ([`translate`]): a tag of the same
//!   build is turned back into the upstream's own ETag (a synthesized one is dropped and the
//!   `If-Modified-Since` beside it kept); a tag of another build is removed, and with it the
//!   `If-Modified-Since` of that same copy, so the server answers `200` with its build. A
//!   validator without a tag (cached before graysplit tagged, or from an untagged path) is
//!   believed only when the request's pin names this server's pool and build (`trusted`).
//! - `If-Range` and `If-Unmodified-Since` that cannot be believed are removed together with
//!   `Range`: a range of another build's bytes spliced onto a partial download would corrupt it;
//!   the full `200` cannot. `If-Match` entries of this build are translated; others are passed
//!   on and fail (`412`), which is the truth: the client's copy is not the current one.
//!
//! Why tags and not only the pin: the pin says which build served the client's *last page*, not
//! which build each cached URL came from (`/config.js` cached under the old build, a second page
//! of a multi-page site). A tag travels with the copy it describes.

/// Separates the upstream's opaque tag from the build: not a character build ids may hold.
const MARK: &str = ":gs=";

/// Prefix of the opaque tag synthesized for `Last-Modified`-only responses.
const SYNTH: &str = "gs=";

/// Entity-tags looked at in one list; a browser sends one. More → none is believed.
const MAX_TAGS: usize = 32;

/// `"opaque"` or `W/"opaque"`, the whole header value (one entity-tag).
fn split_tag(etag: &str) -> Option<(bool, &str)> {
    let (weak, rest) = match etag.strip_prefix("W/") {
        Some(r) => (true, r),
        None => (false, etag),
    };
    let opaque = rest.strip_prefix('"')?.strip_suffix('"')?;
    (!opaque.contains('"')).then_some((weak, opaque))
}

fn valid_build(b: &str) -> bool {
    crate::upstream::upsync_format::valid_build(b)
}

/// The upstream's `ETag` tagged with `build`; `None` for a value that is not an entity-tag
/// (left as it is, and then never believed across builds).
pub fn tag(etag: &str, build: &str) -> Option<String> {
    let (weak, opaque) = split_tag(etag.trim())?;
    // Pieces pushed, not `format!`: one per tagged response.
    let mut out = String::with_capacity(4 + opaque.len() + MARK.len() + build.len());
    if weak {
        out.push_str("W/");
    }
    out.push('"');
    out.push_str(opaque);
    out.push_str(MARK);
    out.push_str(build);
    out.push('"');
    Some(out)
}

/// The `ETag` given to a response that has only `Last-Modified`: weak, it stands for "the copy
/// of `build`" and lets the next request's `If-Modified-Since` be checked against the build.
pub fn synthesized(build: &str) -> String {
    let mut out = String::with_capacity(4 + SYNTH.len() + build.len());
    out.push_str("W/\"");
    out.push_str(SYNTH);
    out.push_str(build);
    out.push('"');
    out
}

/// One entity-tag of a request list, as graysplit reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tag<'a> {
    Any,
    /// Tagged by graysplit with `build`; `original` is the upstream's own tag (`None`: a
    /// synthesized one, there is none).
    Ours {
        build: &'a str,
        original: Option<String>,
    },
    /// Not tagged: the value as sent.
    Untagged(&'a str),
}

/// The entity-tags of an `If-None-Match` / `If-Match` value, each as written and as read;
/// `None` when it is not a list of entity-tags (or holds more than [`MAX_TAGS`]).
fn tags(list: &str) -> Option<Vec<(&str, Tag<'_>)>> {
    let mut out = Vec::new();
    let mut rest = list.trim_start_matches([' ', '\t', ',']);
    while !rest.is_empty() {
        if out.len() == MAX_TAGS {
            return None;
        }
        if let Some(r) = rest.strip_prefix('*') {
            out.push(("*", Tag::Any));
            rest = r;
        } else {
            let start = usize::from(rest.starts_with("W/")) * 2;
            let body = rest.get(start..)?.strip_prefix('"')?;
            let end = body.find('"')?;
            let whole = &rest[..start + 1 + end + 1];
            rest = &body[end + 1..];
            out.push((whole, read_tag(whole)));
        }
        rest = rest.trim_start_matches([' ', '\t']);
        match rest.strip_prefix(',') {
            Some(r) => rest = r.trim_start_matches([' ', '\t', ',']),
            None if rest.is_empty() => {}
            None => return None,
        }
    }
    Some(out)
}

fn read_tag(whole: &str) -> Tag<'_> {
    let Some((weak, opaque)) = split_tag(whole) else {
        return Tag::Untagged(whole);
    };
    if let Some(build) = opaque.strip_prefix(SYNTH).filter(|b| valid_build(b)) {
        return Tag::Ours {
            build,
            original: None,
        };
    }
    match rsplit_mark(opaque) {
        Some((orig, build)) if valid_build(build) => Tag::Ours {
            build,
            original: Some(format!("{}\"{orig}\"", if weak { "W/" } else { "" })),
        },
        _ => Tag::Untagged(whole),
    }
}

/// `opaque` split at its last [`MARK`]. A scan of the few bytes of a tag: `str::rsplit_once`'s
/// substring searcher costs more to set up than this search, and it runs on every response.
fn rsplit_mark(opaque: &str) -> Option<(&str, &str)> {
    let mark = MARK.as_bytes();
    let at = opaque
        .as_bytes()
        .windows(mark.len())
        .rposition(|w| w == mark)?;
    // MARK is ASCII, so both ends are character boundaries.
    Some((&opaque[..at], &opaque[at + mark.len()..]))
}

/// The conditional headers of a request (values as sent; dates only by presence).
#[derive(Debug, Clone, Copy, Default)]
pub struct Conditional<'a> {
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: bool,
    pub if_match: Option<&'a str>,
    pub if_unmodified_since: bool,
    pub if_range: Option<&'a str>,
    pub range: bool,
}

/// What to do with one header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    Keep,
    Remove,
    Set(String),
}

/// What to do with each conditional header (and `Range`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edits {
    pub if_none_match: Edit,
    pub if_modified_since: Edit,
    pub if_match: Edit,
    pub if_unmodified_since: Edit,
    pub if_range: Edit,
    pub range: Edit,
}

impl Edits {
    const KEEP: Edits = Edits {
        if_none_match: Edit::Keep,
        if_modified_since: Edit::Keep,
        if_match: Edit::Keep,
        if_unmodified_since: Edit::Keep,
        if_range: Edit::Keep,
        range: Edit::Keep,
    };

    /// Nothing to change.
    pub fn none(&self) -> bool {
        *self == Edits::KEEP
    }
}

fn keep_or_remove(keep: bool) -> Edit {
    if keep {
        Edit::Keep
    } else {
        Edit::Remove
    }
}

/// The edits for a request going to a server of `build`. `trusted`: the request's pin names
/// this server's pool and build, so validators without a tag describe a copy of this build.
pub fn translate(c: &Conditional<'_>, build: &str, trusted: bool) -> Edits {
    let mut e = Edits::KEEP;
    match c.if_none_match.map(tags) {
        None => e.if_modified_since = keep_or_remove(trusted || !c.if_modified_since),
        Some(None) => {
            // Not a list graysplit can read (or hostile): believed only with a matching pin.
            e.if_none_match = keep_or_remove(trusted);
            e.if_modified_since = keep_or_remove(trusted || !c.if_modified_since);
        }
        Some(Some(list)) => {
            let mut kept: Vec<String> = Vec::new();
            let mut changed = false;
            let mut ours_without_etag = false;
            for (_, t) in list {
                match t {
                    Tag::Ours { build: b, original } if b == build => match original {
                        Some(o) => {
                            kept.push(o);
                            changed = true;
                        }
                        None => {
                            ours_without_etag = true;
                            changed = true;
                        }
                    },
                    Tag::Ours { .. } => changed = true,
                    Tag::Any if trusted => kept.push("*".into()),
                    Tag::Untagged(v) if trusted => kept.push(v.to_string()),
                    Tag::Any | Tag::Untagged(_) => changed = true,
                }
            }
            if kept.is_empty() {
                e.if_none_match = Edit::Remove;
                // The If-Modified-Since of a copy of this build (its synthesized tag matched)
                // is the server's to judge; that of another build's copy must not reach it.
                e.if_modified_since = keep_or_remove(ours_without_etag || !c.if_modified_since);
            } else if changed {
                e.if_none_match = Edit::Set(kept.join(", "));
            }
        }
    }
    if let Some(list) = c.if_match.and_then(tags) {
        let mut changed = false;
        let out: Vec<String> = list
            .into_iter()
            .map(|(whole, t)| match t {
                Tag::Ours {
                    build: b,
                    original: Some(o),
                } if b == build => {
                    changed = true;
                    o
                }
                // Another build's copy (or a weak one): passed on as sent, it fails with 412.
                _ => whole.to_string(),
            })
            .collect();
        if changed {
            e.if_match = Edit::Set(out.join(", "));
        }
    }
    let mut drop_range = false;
    if c.if_unmodified_since && !trusted {
        e.if_unmodified_since = Edit::Remove;
        drop_range = true;
    }
    if let Some(v) = c.if_range {
        let v = v.trim();
        match read_tag(v) {
            Tag::Ours {
                build: b,
                original: Some(o),
            } if b == build => e.if_range = Edit::Set(o),
            Tag::Ours { .. } => {
                e.if_range = Edit::Remove;
                drop_range = true;
            }
            // An untagged tag or an HTTP date.
            _ if trusted => {}
            _ => {
                e.if_range = Edit::Remove;
                drop_range = true;
            }
        }
    }
    if drop_range && c.range {
        e.range = Edit::Remove;
    }
    e
}

/// The `ETag` a response of `build` should carry: the upstream's tagged, or a synthesized one
/// when there is none but a `Last-Modified` (or it is a `304`, which describes such a copy).
/// `None`: leave the response as it is.
pub fn response_etag(
    etag: Option<&str>,
    has_last_modified: bool,
    not_modified: bool,
    build: &str,
) -> Option<String> {
    match etag {
        Some(e) if read_tag(e.trim()) != Tag::Untagged(e.trim()) => None, // already ours
        Some(e) => tag(e, build),
        None if has_last_modified || not_modified => Some(synthesized(build)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "base-2026.11.1";
    const G: &str = "gray-2026.11.2";

    fn inm(v: &str) -> Conditional<'_> {
        Conditional {
            if_none_match: Some(v),
            if_modified_since: true,
            ..Conditional::default()
        }
    }

    #[test]
    fn the_mark_is_found_where_rsplit_once_finds_it() {
        for t in [
            "",
            ":gs=",
            "a:gs=b",
            "a:gs=b:gs=c",
            "abc",
            ":gs",
            "gs=:gs=x",
            "é:gs=ü",
        ] {
            assert_eq!(rsplit_mark(t), t.rsplit_once(MARK), "{t:?}");
        }
    }

    #[test]
    fn response_tags_name_the_build_and_read_back() {
        assert_eq!(
            tag("\"65a1-243\"", B).unwrap(),
            "\"65a1-243:gs=base-2026.11.1\""
        );
        assert_eq!(tag("W/\"x\"", G).unwrap(), "W/\"x:gs=gray-2026.11.2\"");
        assert_eq!(tag("no-quotes", B), None);
        assert_eq!(synthesized(B), "W/\"gs=base-2026.11.1\"");
        assert_eq!(
            read_tag("\"65a1-243:gs=base-2026.11.1\""),
            Tag::Ours {
                build: B,
                original: Some("\"65a1-243\"".into())
            }
        );
        assert_eq!(
            read_tag("W/\"gs=gray\""),
            Tag::Ours {
                build: "gray",
                original: None
            }
        );
        assert_eq!(
            read_tag("\"a:gs=bad/build\""),
            Tag::Untagged("\"a:gs=bad/build\"")
        );
        assert_eq!(
            response_etag(Some("\"e\""), true, false, B).unwrap(),
            "\"e:gs=base-2026.11.1\""
        );
        assert_eq!(response_etag(None, true, false, B).unwrap(), synthesized(B));
        assert_eq!(response_etag(None, false, true, B).unwrap(), synthesized(B));
        assert_eq!(response_etag(None, false, false, B), None);
        assert_eq!(
            response_etag(Some("\"e:gs=x\""), true, false, B),
            None,
            "never tagged twice"
        );
    }

    #[test]
    fn the_same_builds_tag_goes_back_to_the_upstreams_own() {
        let e = translate(&inm("\"65a1-243:gs=base-2026.11.1\""), B, false);
        assert_eq!(e.if_none_match, Edit::Set("\"65a1-243\"".into()));
        assert_eq!(e.if_modified_since, Edit::Keep);
    }

    #[test]
    fn another_builds_tag_is_removed_with_its_date() {
        // nginx: equal mtimes and sizes give equal ETags in both builds.
        let e = translate(&inm("\"65a1-243:gs=gray-2026.11.2\""), B, true);
        assert_eq!(e.if_none_match, Edit::Remove);
        assert_eq!(
            e.if_modified_since,
            Edit::Remove,
            "the date belongs to the gray copy: never to base"
        );
    }

    #[test]
    fn last_modified_only_copies_keep_their_date_on_their_own_build() {
        let e = translate(&inm("W/\"gs=base-2026.11.1\""), B, false);
        assert_eq!(e.if_none_match, Edit::Remove, "the upstream has no ETag");
        assert_eq!(
            e.if_modified_since,
            Edit::Keep,
            "so it judges the date (304)"
        );
        let e = translate(&inm("W/\"gs=gray-2026.11.2\""), B, true);
        assert_eq!(
            (e.if_none_match, e.if_modified_since),
            (Edit::Remove, Edit::Remove)
        );
    }

    #[test]
    fn untagged_validators_are_believed_only_with_a_matching_pin() {
        let e = translate(&inm("\"65a1-243\""), B, true);
        assert!(e.none(), "{e:?}");
        let e = translate(&inm("\"65a1-243\""), B, false);
        assert_eq!(
            (e.if_none_match, e.if_modified_since),
            (Edit::Remove, Edit::Remove)
        );
        let ims_only = Conditional {
            if_modified_since: true,
            ..Conditional::default()
        };
        assert!(translate(&ims_only, B, true).none());
        assert_eq!(
            translate(&ims_only, B, false).if_modified_since,
            Edit::Remove
        );
        assert!(
            translate(&Conditional::default(), B, false).none(),
            "no validators"
        );
        let e = translate(&inm("*"), B, false);
        assert_eq!(e.if_none_match, Edit::Remove);
    }

    #[test]
    fn lists_keep_only_what_this_build_can_judge() {
        let e = translate(
            &inm("\"a:gs=gray-2026.11.2\", W/\"b:gs=base-2026.11.1\", \"c\""),
            B,
            false,
        );
        assert_eq!(e.if_none_match, Edit::Set("W/\"b\"".into()));
        assert_eq!(e.if_modified_since, Edit::Keep);
        let e = translate(&inm("\"a:gs=gray-2026.11.2\", \"c\""), B, true);
        assert_eq!(e.if_none_match, Edit::Set("\"c\"".into()));
        // Garbage or a flood of tags: believed only with a matching pin.
        let flood = vec!["\"x\""; 40].join(", ");
        assert_eq!(
            translate(&inm(&flood), B, false).if_none_match,
            Edit::Remove
        );
        assert!(translate(&inm(&flood), B, true).none());
        assert_eq!(
            translate(&inm("garbage"), B, false).if_none_match,
            Edit::Remove
        );
        let read: Vec<Tag> = tags("\"a,b\" , W/\"c\"")
            .unwrap()
            .into_iter()
            .map(|t| t.1)
            .collect();
        assert_eq!(
            read,
            vec![Tag::Untagged("\"a,b\""), Tag::Untagged("W/\"c\"")]
        );
    }

    #[test]
    fn ranges_of_another_build_become_full_answers() {
        let c = Conditional {
            if_range: Some("\"65a1-243:gs=gray-2026.11.2\""),
            range: true,
            ..Conditional::default()
        };
        let e = translate(&c, B, true);
        assert_eq!((e.if_range, e.range), (Edit::Remove, Edit::Remove));
        let c = Conditional {
            if_range: Some("\"65a1-243:gs=base-2026.11.1\""),
            range: true,
            ..Conditional::default()
        };
        let e = translate(&c, B, false);
        assert_eq!(e.if_range, Edit::Set("\"65a1-243\"".into()));
        assert_eq!(e.range, Edit::Keep);
        let date = Conditional {
            if_range: Some("Sat, 01 Nov 2026 10:00:00 GMT"),
            range: true,
            ..Conditional::default()
        };
        assert!(translate(&date, B, true).none());
        assert_eq!(translate(&date, B, false).range, Edit::Remove);
        let ius = Conditional {
            if_unmodified_since: true,
            range: true,
            ..Conditional::default()
        };
        let e = translate(&ius, B, false);
        assert_eq!(
            (e.if_unmodified_since, e.range),
            (Edit::Remove, Edit::Remove)
        );
        assert!(translate(&ius, B, true).none());
    }

    #[test]
    fn if_match_translates_this_build_and_lets_others_fail() {
        let c = Conditional {
            if_match: Some("\"a:gs=base-2026.11.1\""),
            ..Conditional::default()
        };
        assert_eq!(translate(&c, B, false).if_match, Edit::Set("\"a\"".into()));
        let c = Conditional {
            if_match: Some("\"a:gs=gray-2026.11.2\""),
            ..Conditional::default()
        };
        assert_eq!(
            translate(&c, B, false).if_match,
            Edit::Keep,
            "fails with 412"
        );
    }
}
