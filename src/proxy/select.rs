//! Which server an attempt goes to, and the gray → base fallback.
//!
//! The pool was decided once per request; every attempt (first try and retries) picks a server of
//! that pool that this request has not tried yet. When the decided pool is not base and has no
//! such server — gray empty, all down, or its last server just failed — the request moves to
//! base with reason `gray_unavailable` (a page is better served by base than answered with an
//! error). A pass-through route's pool (e.g. `/api/` → gateway) never falls back to base: the
//! frontend servers cannot answer for it. When base has no server either, there is no pick and
//! the proxy answers 502 at once.
//!
//! An asset with a pin also names a build: only servers of that build are candidates (smooth WRR
//! among them, same weights). When none of them is usable the request takes any server of the
//! pool (`build_gone`) and the response re-pins. [`pick_elsewhere`] serves the asset-miss retry:
//! one server of any *other* build, in the pinned pool first, then in the other frontend pools.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::upstream::pool::Pool;
use crate::upstream::server::Server;

/// Reason recorded when a request meant for another pool is served by base.
pub const GRAY_UNAVAILABLE: &str = "gray_unavailable";

/// Reason recorded when a pinned asset's build has no usable server left in its pool.
pub const BUILD_GONE: &str = "build_gone";

/// Attempts a sticky asset may make on its build while waiting for it (pinning.rs), on top of
/// `upstream.tries`; Pingora's retry cap leaves room for them (app.rs).
pub const MAX_WAIT_ATTEMPTS: u32 = 8;

/// The build a server runs: its own `build`, else the pool's default build (the pool's name).
pub fn build_of<'a>(server: &'a Server, pool: &'a Pool) -> &'a str {
    server.spec.build.as_deref().unwrap_or(pool.name.as_str())
}

/// The server for one attempt and the pool it came from.
#[derive(Debug)]
pub struct Pick {
    pub server: Arc<Server>,
    pub pool: Arc<Pool>,
    /// The decided pool had no usable server; `pool` is base.
    pub fell_back: bool,
    /// A build was asked for and no server of it was usable: `server` runs another build.
    pub build_gone: bool,
}

/// A server of `build` in `pool`: usable ones by smooth WRR, else a drained one (the page that
/// pinned it is still open). Servers in `tried` are skipped unless `retry_tried` (a sticky asset
/// that waited for its build may try the same server again).
pub fn pick_build(
    pool: &Arc<Pool>,
    build: &str,
    tried: &[SocketAddr],
    retry_tried: bool,
) -> Option<Arc<Server>> {
    let same_build =
        |s: &Server| (retry_tried || !tried.contains(&s.spec.addr)) && build_of(s, pool) == build;
    pool.select(same_build)
        .or_else(|| pool.select_draining(same_build))
}

/// Is `build` still configured in `pool`: a server of it listed and not `down` (drained or
/// failing checks, it still counts)? A build that is not is really gone: no wait for it.
pub fn build_configured(pool: &Pool, build: &str) -> bool {
    pool.snapshot()
        .servers
        .iter()
        .any(|s| !s.spec.down && build_of(s, pool) == build)
}

/// Picks the next server: from `wanted` (of `build` first, when given), else (if `may_fall_back`
/// and `wanted` is not base) from `base`; never one in `tried`. `None`: nothing usable anywhere.
pub fn pick(
    wanted: &Arc<Pool>,
    base: &Arc<Pool>,
    may_fall_back: bool,
    build: Option<&str>,
    tried: &[SocketAddr],
) -> Option<Pick> {
    let untried = |s: &Server| !tried.contains(&s.spec.addr);
    if let Some(build) = build {
        if let Some(server) = pick_build(wanted, build, tried, false) {
            return Some(Pick {
                server,
                pool: wanted.clone(),
                fell_back: false,
                build_gone: false,
            });
        }
    }
    if let Some(server) = wanted.select(untried) {
        return Some(Pick {
            server,
            pool: wanted.clone(),
            fell_back: false,
            build_gone: build.is_some(),
        });
    }
    if !may_fall_back || Arc::ptr_eq(wanted, base) {
        return None;
    }
    base.select(untried).map(|server| Pick {
        server,
        pool: base.clone(),
        fell_back: true,
        build_gone: build.is_some(),
    })
}

/// One untried server of a build other than `build`: from `pools` in order (the pinned pool
/// first). For the asset-miss retry: the page that asked may come from there.
pub fn pick_elsewhere(pools: &[&Arc<Pool>], build: &str, tried: &[SocketAddr]) -> Option<Pick> {
    pools.iter().find_map(|pool| {
        let other = |s: &Server| !tried.contains(&s.spec.addr) && build_of(s, pool) != build;
        pool.select(other).map(|server| Pick {
            server,
            pool: Arc::clone(pool),
            fell_back: false,
            build_gone: false,
        })
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
        let p = pick(&gray, &base, true, None, &[]).unwrap();
        assert_eq!((p.server.spec.addr, p.fell_back), (addr(2), false));
        assert_eq!(p.pool.name, "gray");
    }

    #[test]
    fn empty_gray_falls_back_to_base() {
        let (base, gray) = pools(&[1], &[]);
        let p = pick(&gray, &base, true, None, &[]).unwrap();
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
        let p = pick(&gray, &base, true, None, &[]).unwrap();
        assert!(p.fell_back);
        assert_eq!(p.pool.name, "base");
    }

    #[test]
    fn a_retry_after_the_last_gray_server_failed_goes_to_base() {
        let (base, gray) = pools(&[1], &[2]);
        let p = pick(&gray, &base, true, None, &[addr(2)]).unwrap();
        assert_eq!((p.server.spec.addr, p.fell_back), (addr(1), true));
    }

    #[test]
    fn a_route_pool_never_falls_back() {
        let (base, gray) = pools(&[1], &[]);
        assert!(pick(&gray, &base, false, None, &[]).is_none());
        assert!(!has_next(&gray, &base, false, &[]));
    }

    #[test]
    fn base_all_down_or_all_tried_gives_nothing() {
        let (base, gray) = pools(&[1, 2], &[]);
        assert!(pick(&base, &base, true, None, &[addr(1), addr(2)]).is_none());
        for s in &base.snapshot().servers {
            s.health.set_up(false);
        }
        assert!(pick(&base, &base, true, None, &[]).is_none());
        assert!(
            pick(&gray, &base, true, None, &[]).is_none(),
            "gray empty and base down"
        );
        assert!(!has_next(&gray, &base, true, &[]));
    }

    /// base with servers on `ports`, each running `builds[i]` (`None`: the pool's default).
    fn builds(ports: &[u16], builds: &[Option<&str>]) -> Arc<Pool> {
        let p = Pools::new([("base", false)]);
        let b = p.get("base").unwrap().clone();
        b.replace(
            ports
                .iter()
                .zip(builds)
                .map(|(port, build)| {
                    let mut s = ServerSpec::new(addr(*port), addr(*port).to_string());
                    s.build = build.map(str::to_string);
                    s
                })
                .collect(),
        );
        b
    }

    #[test]
    fn a_pinned_build_gets_only_its_servers_in_wrr_order() {
        let base = builds(&[1, 2, 3], &[Some("old"), Some("new"), Some("new")]);
        let got: Vec<u16> = (0..4)
            .map(|_| {
                let p = pick(&base, &base, true, Some("new"), &[]).unwrap();
                assert!(!p.build_gone);
                p.server.spec.addr.port()
            })
            .collect();
        assert_eq!(got, [2, 3, 2, 3]);
        let p = pick(&base, &base, true, Some("old"), &[]).unwrap();
        assert_eq!(p.server.spec.addr, addr(1));
        let p = pick(&base, &base, true, Some("new"), &[addr(2)]).unwrap();
        assert_eq!(p.server.spec.addr, addr(3), "a retry stays on the build");
    }

    #[test]
    fn a_drained_build_still_serves_its_pinned_assets_but_no_one_else() {
        let base = builds(&[1, 2], &[Some("old"), Some("new")]);
        let mut specs = base.snapshot().specs();
        specs[0].weight = 0;
        base.replace(specs);
        let p = pick(&base, &base, true, Some("old"), &[]).unwrap();
        assert_eq!((p.server.spec.addr, p.build_gone), (addr(1), false));
        for _ in 0..3 {
            let p = pick(&base, &base, true, None, &[]).unwrap();
            assert_eq!(
                p.server.spec.addr,
                addr(2),
                "no new pages on a drained server"
            );
        }
        let mut specs = base.snapshot().specs();
        specs[0].down = true;
        base.replace(specs);
        let p = pick(&base, &base, true, Some("old"), &[]).unwrap();
        assert_eq!(
            (p.server.spec.addr, p.build_gone),
            (addr(2), true),
            "down: gone"
        );
    }

    #[test]
    fn no_default_build_means_the_pool_name() {
        let base = builds(&[1, 2], &[None, Some("v2")]);
        let p = pick(&base, &base, true, Some("base"), &[]).unwrap();
        assert_eq!((p.server.spec.addr, p.build_gone), (addr(1), false));
        assert_eq!(build_of(&p.server, &base), "base");
    }

    #[test]
    fn a_drained_or_down_build_is_gone_and_any_server_answers() {
        let base = builds(&[1, 2], &[Some("old"), Some("new")]);
        base.snapshot().servers[0].health.set_up(false);
        let p = pick(&base, &base, true, Some("old"), &[]).unwrap();
        assert_eq!((p.server.spec.addr, p.build_gone), (addr(2), true));
        let p = pick(&base, &base, true, Some("vanished"), &[]).unwrap();
        assert!(p.build_gone);
        let (base2, gray) = pools(&[1], &[]);
        let p = pick(&gray, &base2, true, Some("gray"), &[]).unwrap();
        assert!(
            p.fell_back && p.build_gone,
            "gray gone entirely: base, re-pinned"
        );
    }

    #[test]
    fn a_build_is_configured_while_a_server_of_it_is_listed_and_not_down() {
        let base = builds(&[1, 2], &[Some("old"), Some("new")]);
        base.snapshot().servers[0].health.set_up(false);
        assert!(
            build_configured(&base, "old"),
            "failing checks: still configured"
        );
        assert!(pick_build(&base, "old", &[], false).is_none());
        let mut specs = base.snapshot().specs();
        specs[0].weight = 0;
        base.replace(specs);
        assert!(build_configured(&base, "old"), "drained: still configured");
        let mut specs = base.snapshot().specs();
        specs[0].down = true;
        base.replace(specs);
        assert!(!build_configured(&base, "old"), "down: gone");
        assert!(!build_configured(&base, "vanished"));
    }

    #[test]
    fn a_tried_server_of_the_build_is_picked_again_only_when_asked() {
        let base = builds(&[1, 2], &[Some("old"), Some("new")]);
        assert!(pick_build(&base, "old", &[addr(1)], false).is_none());
        let again = pick_build(&base, "old", &[addr(1)], true).unwrap();
        assert_eq!(again.spec.addr, addr(1));
    }

    #[test]
    fn elsewhere_means_another_build_pinned_pool_first() {
        let base = builds(&[1, 2], &[Some("a"), Some("b")]);
        let p = pick_elsewhere(&[&base], "a", &[addr(1)]).unwrap();
        assert_eq!(p.server.spec.addr, addr(2));
        assert!(pick_elsewhere(&[&base], "a", &[addr(2)]).is_none());
        let (b, g) = pools(&[7], &[8]);
        let p = pick_elsewhere(&[&g, &b], "gray", &[addr(8)]).unwrap();
        assert_eq!(
            p.server.spec.addr,
            addr(7),
            "gray pin: base may hold the asset"
        );
    }

    #[test]
    fn retries_skip_tried_servers_in_the_same_pool_first() {
        let (base, _) = pools(&[1, 2], &[]);
        let p = pick(&base, &base, true, None, &[addr(1)]).unwrap();
        assert_eq!((p.server.spec.addr, p.fell_back), (addr(2), false));
    }
}
