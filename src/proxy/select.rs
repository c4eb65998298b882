//! Which server an attempt goes to, and the gray → base fallback.
//!
//! The pool was decided once per request; every attempt (first try and retries) picks a server of
//! that pool that this request has not tried yet. When the decided pool is not base and has no
//! such server — gray empty, all down, or its last server just failed — the request moves to
//! base with reason `gray_unavailable` (a page is better served by base than answered with an
//! error). A pass-through route's pool (e.g. `/api/` → gateway) never falls back to base: the
//! frontend servers cannot answer for it. When base has no server either, there is no pick and
//! the proxy answers 502 at once.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::upstream::pool::Pool;
use crate::upstream::server::Server;

/// Reason recorded when a request meant for another pool is served by base.
pub const GRAY_UNAVAILABLE: &str = "gray_unavailable";

/// The server for one attempt and the pool it came from.
#[derive(Debug)]
pub struct Pick {
    pub server: Arc<Server>,
    pub pool: Arc<Pool>,
    /// The decided pool had no usable server; `pool` is base.
    pub fell_back: bool,
}

/// Picks the next server: from `wanted`, else (if `may_fall_back` and `wanted` is not base) from
/// `base`; never one in `tried`. `None`: nothing usable anywhere.
pub fn pick(
    wanted: &Arc<Pool>,
    base: &Arc<Pool>,
    may_fall_back: bool,
    tried: &[SocketAddr],
) -> Option<Pick> {
    let untried = |s: &Server| !tried.contains(&s.spec.addr);
    if let Some(server) = wanted.select(untried) {
        return Some(Pick {
            server,
            pool: wanted.clone(),
            fell_back: false,
        });
    }
    if !may_fall_back || Arc::ptr_eq(wanted, base) {
        return None;
    }
    base.select(untried).map(|server| Pick {
        server,
        pool: base.clone(),
        fell_back: true,
    })
}

/// Would [`pick`] find a server? (Does not move the round robin.) Decides whether retrying is
/// worth more than passing the current answer on.
pub fn has_next(
    wanted: &Arc<Pool>,
    base: &Arc<Pool>,
    may_fall_back: bool,
    tried: &[SocketAddr],
) -> bool {
    let untried = |s: &Server| !tried.contains(&s.spec.addr);
    wanted.has_usable(untried)
        || (may_fall_back && !Arc::ptr_eq(wanted, base) && base.has_usable(untried))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::server::ServerSpec;
    use crate::upstream::Pools;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn pools(base: &[u16], gray: &[u16]) -> (Arc<Pool>, Arc<Pool>) {
        let p = Pools::new([("base", false), ("gray", true)]);
        let spec = |port: &u16| ServerSpec::new(addr(*port), addr(*port).to_string());
        let (b, g) = (
            p.get("base").unwrap().clone(),
            p.get("gray").unwrap().clone(),
        );
        b.replace(base.iter().map(spec).collect());
        g.replace(gray.iter().map(spec).collect());
        (b, g)
    }

    #[test]
    fn a_usable_gray_server_is_picked_from_gray() {
        let (base, gray) = pools(&[1], &[2]);
        let p = pick(&gray, &base, true, &[]).unwrap();
        assert_eq!((p.server.spec.addr, p.fell_back), (addr(2), false));
        assert_eq!(p.pool.name, "gray");
    }

    #[test]
    fn empty_gray_falls_back_to_base() {
        let (base, gray) = pools(&[1], &[]);
        let p = pick(&gray, &base, true, &[]).unwrap();
        assert_eq!((p.server.spec.addr, p.fell_back), (addr(1), true));
        assert_eq!(p.pool.name, "base");
        assert!(has_next(&gray, &base, true, &[]));
    }

    #[test]
    fn all_gray_down_falls_back_to_base() {
        let (base, gray) = pools(&[1], &[2, 3]);
        for s in &gray.snapshot().servers {
            s.health.set_up(false);
        }
        let p = pick(&gray, &base, true, &[]).unwrap();
        assert!(p.fell_back);
        assert_eq!(p.pool.name, "base");
    }

    #[test]
    fn a_retry_after_the_last_gray_server_failed_goes_to_base() {
        let (base, gray) = pools(&[1], &[2]);
        let p = pick(&gray, &base, true, &[addr(2)]).unwrap();
        assert_eq!((p.server.spec.addr, p.fell_back), (addr(1), true));
    }

    #[test]
    fn a_route_pool_never_falls_back() {
        let (base, gray) = pools(&[1], &[]);
        assert!(pick(&gray, &base, false, &[]).is_none());
        assert!(!has_next(&gray, &base, false, &[]));
    }

    #[test]
    fn base_all_down_or_all_tried_gives_nothing() {
        let (base, gray) = pools(&[1, 2], &[]);
        assert!(pick(&base, &base, true, &[addr(1), addr(2)]).is_none());
        for s in &base.snapshot().servers {
            s.health.set_up(false);
        }
        assert!(pick(&base, &base, true, &[]).is_none());
        assert!(
            pick(&gray, &base, true, &[]).is_none(),
            "gray empty and base down"
        );
        assert!(!has_next(&gray, &base, true, &[]));
    }

    #[test]
    fn retries_skip_tried_servers_in_the_same_pool_first() {
        let (base, _) = pools(&[1, 2], &[]);
        let p = pick(&base, &base, true, &[addr(1)]).unwrap();
        assert_eq!((p.server.spec.addr, p.fell_back), (addr(2), false));
    }
}
