//! The pin's `Set-Cookie` values as recently issued, per thread.
//!
//! A pin names a pool, a build and the second it was issued, and nothing about the client: every
//! page served by the same build in the same second gets the same cookie. Signing it (an HMAC)
//! and formatting it for each page is most of what issuing a pin costs, so each thread keeps the
//! values it issued last and hands out a copy (a reference count, no bytes copied) while the
//! second lasts. Values are kept per [`Pinner`](super::Pinner) (its `id`): a reload with new
//! secrets never hands out a cookie signed with the old ones.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

/// Values a thread keeps: base and gray, over plain and TLS listeners.
const KEPT: usize = 4;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// An id no other pinner of this process has.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// What a value was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct For<'a> {
    pub pinner: u64,
    pub pool: &'a str,
    pub build: &'a str,
    pub issued: u64,
    pub tls: bool,
}

struct Kept {
    pinner: u64,
    pool: Box<str>,
    build: Box<str>,
    issued: u64,
    tls: bool,
    value: HeaderValue,
}

impl Kept {
    fn is(&self, f: &For<'_>) -> bool {
        self.issued == f.issued
            && self.pinner == f.pinner
            && self.tls == f.tls
            && *self.pool == *f.pool
            && *self.build == *f.build
    }
}

thread_local! {
    static KEPT_VALUES: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
}

/// The value issued for `f` on this thread, or `make`'s (then kept in place of the oldest).
pub fn get_or_make<E>(
    f: For<'_>,
    make: impl FnOnce() -> Result<HeaderValue, E>,
) -> Result<HeaderValue, E> {
    if let Some(v) =
        KEPT_VALUES.with_borrow(|kept| kept.iter().find(|k| k.is(&f)).map(|k| k.value.clone()))
    {
        return Ok(v);
    }
    let value = make()?;
    KEPT_VALUES.with_borrow_mut(|kept| {
        let entry = Kept {
            pinner: f.pinner,
            pool: f.pool.into(),
            build: f.build.into(),
            issued: f.issued,
            tls: f.tls,
            value: value.clone(),
        };
        if kept.len() < KEPT {
            kept.push(entry);
        } else if let Some(oldest) = kept.iter_mut().min_by_key(|k| k.issued) {
            *oldest = entry;
        }
    });
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn f(pinner: u64, pool: &'static str, issued: u64, tls: bool) -> For<'static> {
        For {
            pinner,
            pool,
            build: "b1",
            issued,
            tls,
        }
    }

    #[test]
    fn a_value_is_made_once_per_second_pool_transport_and_pinner() {
        let made = Cell::new(0);
        let get = |f: For<'static>| {
            get_or_make(f, || {
                made.set(made.get() + 1);
                HeaderValue::from_str(&format!("{}-{}-{}-{}", f.pinner, f.pool, f.issued, f.tls))
            })
            .unwrap()
        };
        let id = next_id();
        assert_eq!(
            get(f(id, "base", 100, false)),
            format!("{id}-base-100-false").as_str()
        );
        assert_eq!(made.take(), 1);
        let a = get(f(id, "base", 100, false));
        let b = get(f(id, "base", 100, false));
        assert_eq!(a, b);
        assert_eq!(made.get(), 0, "the same second: the kept value");
        get(f(id, "base", 101, false));
        assert_eq!(made.get(), 1, "a new second signs again");
        get(f(id, "base", 101, true));
        get(f(id, "gray", 101, false));
        assert_eq!(made.get(), 3, "TLS and another pool are other values");
        let other = next_id();
        get(f(other, "base", 101, false));
        assert_eq!(
            made.get(),
            4,
            "another pinner (a reload) never gets this one's"
        );
        get(f(id, "base", 101, false));
        assert_eq!(made.get(), 4, "four values are kept");
    }
}
