//! `[[routes]]`: path prefixes with their own pool and/or their own upstream timeouts (pure data).
//!
//! nginx users set `proxy_read_timeout` per `location` (an hour for `/ws/`, a minute for a
//! long-poll API) and send `/api/` to another upstream; a route does both:
//!
//! ```toml
//! [[routes]]
//! prefix = "/ws/"
//! read_timeout = "1h"     # the decided pool (base or gray) with an idle allowance of an hour
//! [[routes]]
//! prefix = "/api/"
//! pool = "gateway"        # a pass-through pool: never pinned, never falls back to base
//! ```
//!
//! Routes are tried in the order written; the first whose prefix starts the path applies.

use std::sync::Arc;
use std::time::Duration;

/// Upstream timeouts a route sets; `None` keeps `[upstream]`'s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteTimeouts {
    pub connect: Option<Duration>,
    /// Also the idle allowance of the client side, so an upgraded (WebSocket) connection is
    /// held as long in both directions.
    pub read: Option<Duration>,
    pub write: Option<Duration>,
}

impl RouteTimeouts {
    pub fn is_empty(&self) -> bool {
        *self == RouteTimeouts::default()
    }
}

/// One `[[routes]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    /// A pass-through pool; `None`: the pool the gray decision picks.
    pub pool: Option<Arc<str>>,
    pub timeouts: RouteTimeouts,
}

/// The first route whose prefix starts `path`.
pub fn matching<'r>(routes: &'r [Route], path: &str) -> Option<&'r Route> {
    routes.iter().find(|r| path.starts_with(r.prefix.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, pool: Option<&str>, read: Option<u64>) -> Route {
        Route {
            prefix: prefix.into(),
            pool: pool.map(Arc::from),
            timeouts: RouteTimeouts {
                read: read.map(Duration::from_secs),
                ..RouteTimeouts::default()
            },
        }
    }

    #[test]
    fn the_first_matching_prefix_wins() {
        let routes = [
            route("/api/ws/", Some("gateway"), Some(3600)),
            route("/api/", Some("gateway"), None),
            route("/ws/", None, Some(3600)),
        ];
        assert_eq!(matching(&routes, "/api/ws/chat"), Some(&routes[0]));
        assert_eq!(matching(&routes, "/api/users"), Some(&routes[1]));
        assert_eq!(
            matching(&routes, "/ws/x").map(|r| r.pool.clone()),
            Some(None)
        );
        assert_eq!(matching(&routes, "/"), None);
        assert!(routes[1].timeouts.is_empty() && !routes[2].timeouts.is_empty());
    }
}
