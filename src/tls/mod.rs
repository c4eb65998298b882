//! TLS termination: certificates loaded and checked by us ([`certs`]), chosen by SNI from a table
//! that is swapped whole ([`resolver`]), reloaded when their files change or on SIGHUP
//! ([`reload`]), with their own metrics ([`metrics`]). Pingora's rustls listener only gets the
//! resolver (`crate::listeners`), so a bad file is an error message, never a panic in Pingora's
//! loader, and never replaces a good certificate.

pub mod certs;
pub mod metrics;
pub mod reload;
pub mod resolver;

use std::path::PathBuf;
use std::time::Duration;

/// One certificate as configured (`[[tls.certificates]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSource {
    /// The `cert` path as written: names the certificate in logs and metric labels.
    pub label: String,
    /// PEM: the leaf first, then its intermediates (nginx's `ssl_certificate`).
    pub cert: PathBuf,
    /// PEM: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key (nginx's `ssl_certificate_key`).
    pub key: PathBuf,
    /// Names this certificate answers for (lower case, `*.` wildcards); empty: its own names.
    pub names: Vec<String>,
}

/// HTTP/2 limits on the TLS listeners. Without an idle timeout Pingora keeps an idle HTTP/2
/// connection (and its buffers) forever (Pingora issue 563); the h2 crate's own header-list limit
/// is 16 MiB, far beyond anything a browser sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Limits {
    pub idle_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
}

impl Default for H2Limits {
    fn default() -> Self {
        Self {
            // The same as `server.keepalive_timeout`'s default, for HTTP/1.1.
            idle_timeout: Duration::from_secs(65),
            // nginx's http2_max_concurrent_streams.
            max_concurrent_streams: 128,
            max_header_list_size: 64 * 1024,
        }
    }
}

impl H2Limits {
    /// The HTTP/2 settings announced to clients: set deliberately rather than the h2 crate's
    /// defaults (a 16 MiB header list).
    pub fn h2_options(&self) -> pingora::protocols::http::v2::server::H2Options {
        let mut o = pingora::protocols::http::v2::server::H2Options::new();
        o.max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size);
        o
    }

    /// Closes an HTTP/2 connection idle that long (Pingora keeps them forever otherwise).
    pub fn server_options(&self) -> pingora::apps::HttpServerOptions {
        let mut o = pingora::apps::HttpServerOptions::default();
        o.h2_idle_timeout = Some(self.idle_timeout);
        o
    }
}

/// Validated `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The first one is the default (for clients without SNI or with an unknown name), as
    /// nginx's first `server` block.
    pub certificates: Vec<CertSource>,
    /// How often the certificate files are checked for changes.
    pub reload_interval: Duration,
    pub h2: H2Limits,
    /// `Strict-Transport-Security` value sent on TLS responses; `None`: not sent.
    pub hsts: Option<String>,
    /// Path prefixes a plain listener with `https_redirect` still serves over HTTP.
    pub redirect_exempt: Vec<String>,
}
