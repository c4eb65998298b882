//! Metrics of the public edge: client limits and user identity (registered into the process's
//! [`super::Metrics`] registry).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `graysplit_client_connections` | gauge | — open client connections, all listeners |
//! | `graysplit_client_limit_hits_total` | counter | `limit` (`client_header_timeout`, `large_client_header_buffers`, `client_max_body_size`, `max_connections`, `max_connections_per_ip`) |
//! | `graysplit_user_header_ignored_total` | counter | — `gray.user_header` sent by a peer outside `trusted_proxies` (ignored and removed) |
//! | `graysplit_user_tokens_total` | counter | `result` (`verified`, `cached`, or why it was refused: [`TokenCheck`]) |
//!
//! Every handle is resolved once here, so counting on the request path is one atomic add.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::gray::jwt::TokenCheck;

/// Which limit a client hit (its config key is the label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    ClientHeaderTimeout,
    LargeClientHeaderBuffers,
    ClientMaxBodySize,
    MaxConnections,
    MaxConnectionsPerIp,
}

impl Limit {
    const ALL: [Limit; 5] = [
        Limit::ClientHeaderTimeout,
        Limit::LargeClientHeaderBuffers,
        Limit::ClientMaxBodySize,
        Limit::MaxConnections,
        Limit::MaxConnectionsPerIp,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Limit::ClientHeaderTimeout => "client_header_timeout",
            Limit::LargeClientHeaderBuffers => "large_client_header_buffers",
            Limit::ClientMaxBodySize => "client_max_body_size",
            Limit::MaxConnections => "max_connections",
            Limit::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

pub struct TrustMetrics {
    connections: IntGauge,
    limit_hits: [IntCounter; 5],
    user_header_ignored: IntCounter,
    tokens: Vec<IntCounter>,
}

impl std::fmt::Debug for TrustMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrustMetrics")
    }
}

impl TrustMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let connections = IntGauge::new(
            "graysplit_client_connections",
            "Open client connections, all listeners together.",
        )?;
        registry.register(Box::new(connections.clone()))?;
        let hits = IntCounterVec::new(
            Opts::new(
                "graysplit_client_limit_hits_total",
                "Clients stopped by a limit, by the limit's config key: client_header_timeout \
                 (head cut short, 408), client_max_body_size (413), max_connections and \
                 max_connections_per_ip (connection closed at once).",
            ),
            &["limit"],
        )?;
        registry.register(Box::new(hits.clone()))?;
        let user_header_ignored = IntCounter::new(
            "graysplit_user_header_ignored_total",
            "Requests whose gray.user_header came from a peer outside gray.trusted_proxies: \
             ignored for the decision and removed before proxying.",
        )?;
        registry.register(Box::new(user_header_ignored.clone()))?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "graysplit_user_tokens_total",
                "User tokens (JWT) seen, by result: verified, cached (verified before), or why \
                 it was refused (the request then has no user id).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(tokens.clone()))?;
        Ok(Self {
            connections,
            limit_hits: Limit::ALL.map(|l| hits.with_label_values(&[l.label()])),
            user_header_ignored,
            tokens: TokenCheck::ALL
                .iter()
                .map(|t| tokens.with_label_values(&[t.label()]))
                .collect(),
        })
    }

    /// A client connection passed the gate. Counted up and down (never set from a snapshot,
    /// which two accepts at once could write in the wrong order).
    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    pub fn limit_hit(&self, limit: Limit) {
        // `ALL` lists every variant in declaration order.
        self.limit_hits[limit as usize].inc();
    }

    pub fn user_header_ignored(&self) {
        self.user_header_ignored.inc();
    }

    pub fn token(&self, check: TokenCheck) {
        if let Some(c) = self.tokens.get(check as usize) {
            c.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_line_up_with_their_handles() {
        for (i, l) in Limit::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i);
        }
        for (i, t) in TokenCheck::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i);
        }
        let registry = Registry::new();
        let m = TrustMetrics::new(&registry).unwrap();
        m.limit_hit(Limit::MaxConnectionsPerIp);
        m.token(TokenCheck::Expired);
        for _ in 0..4 {
            m.connection_opened();
        }
        m.connection_closed();
        let text = {
            use prometheus::Encoder;
            let mut out = Vec::new();
            prometheus::TextEncoder::new()
                .encode(&registry.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        let samples = crate::metrics::text_format::parse(&text).unwrap();
        let get = |name: &str| samples.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(
            get("graysplit_client_limit_hits_total{limit=\"max_connections_per_ip\"}"),
            Some(1.0)
        );
        assert_eq!(
            get("graysplit_client_limit_hits_total{limit=\"client_header_timeout\"}"),
            Some(0.0),
            "every label is there from the start"
        );
        assert_eq!(
            get("graysplit_user_tokens_total{result=\"expired\"}"),
            Some(1.0)
        );
        assert_eq!(get("graysplit_client_connections"), Some(3.0));
    }
}
