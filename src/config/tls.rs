//! `[tls]`: certificates, HTTP/2 limits, HSTS and the HTTP → HTTPS redirect's exemptions — the
//! file shape and its validation into [`TlsSettings`]. Whether the certificate files themselves
//! are good is checked by `graysplit -t` and at start (`crate::tls::certs`), not here: this is
//! only the shape of the config.

use std::path::Path;

use serde::Deserialize;

use super::{duration, Validator};
use crate::tls::{CertSource, H2Limits, TlsSettings};

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct TlsSection {
    pub certificates: Vec<CertificateSection>,
    pub reload_interval: String,
    pub http2_idle_timeout: String,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_header_list_size: u32,
    pub hsts: String,
    pub redirect_exempt: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CertificateSection {
    pub cert: String,
    pub key: String,
    /// Empty: the certificate's own DNS names (subjectAltName, else the CN).
    pub names: Vec<String>,
}

impl Default for TlsSection {
    fn default() -> Self {
        let h2 = H2Limits::default();
        Self {
            certificates: Vec::new(),
            reload_interval: "5s".into(),
            http2_idle_timeout: duration::format(h2.idle_timeout),
            http2_max_concurrent_streams: h2.max_concurrent_streams,
            http2_max_header_list_size: h2.max_header_list_size,
            hsts: String::new(),
            redirect_exempt: vec!["/.well-known/acme-challenge/".into()],
        }
    }
}

impl Validator<'_> {
    pub(super) fn tls(&mut self, t: &TlsSection, base_dir: &Path) -> TlsSettings {
        let mut certificates = Vec::with_capacity(t.certificates.len());
        for (i, c) in t.certificates.iter().enumerate() {
            let key = |k: &str| format!("tls.certificates[{i}].{k}");
            for (k, v) in [("cert", &c.cert), ("key", &c.key)] {
                if v.trim().is_empty() {
                    self.error_no_value(&key(k), "is required: the path of a PEM file");
                }
            }
            let mut names = Vec::with_capacity(c.names.len());
            for (j, n) in c.names.iter().enumerate() {
                match crate::tls::resolver::normalize_name(n) {
                    Some(n) => names.push(n),
                    None => self.error(
                        &format!("tls.certificates[{i}].names[{j}]"),
                        n,
                        "must be a DNS name such as \"example.com\" or \"*.example.com\"",
                    ),
                }
            }
            certificates.push(CertSource {
                label: c.cert.clone(),
                cert: base_dir.join(&c.cert),
                key: base_dir.join(&c.key),
                names,
            });
        }
        let reload_interval = self.positive_duration("tls.reload_interval", &t.reload_interval);
        let idle_timeout = self.positive_duration("tls.http2_idle_timeout", &t.http2_idle_timeout);
        if !(1..=1000).contains(&t.http2_max_concurrent_streams) {
            self.error(
                "tls.http2_max_concurrent_streams",
                t.http2_max_concurrent_streams,
                "must be between 1 and 1000 (nginx's http2_max_concurrent_streams is 128)",
            );
        }
        if !(4096..=1 << 20).contains(&t.http2_max_header_list_size) {
            self.error(
                "tls.http2_max_header_list_size",
                t.http2_max_header_list_size,
                "must be between 4096 and 1048576 bytes",
            );
        }
        let hsts = (!t.hsts.trim().is_empty()).then(|| t.hsts.trim().to_string());
        if let Some(h) = &hsts {
            if !valid_hsts(h) {
                self.error(
                    "tls.hsts",
                    h,
                    "must be a Strict-Transport-Security value starting with max-age=<seconds>, \
                     e.g. \"max-age=31536000; includeSubDomains\"",
                );
            }
        }
        for (i, p) in t.redirect_exempt.iter().enumerate() {
            if !p.starts_with('/') || p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                self.error(
                    &format!("tls.redirect_exempt[{i}]"),
                    p,
                    "must be a path prefix starting with '/', e.g. \"/.well-known/acme-challenge/\"",
                );
            }
        }
        TlsSettings {
            certificates,
            reload_interval,
            h2: H2Limits {
                idle_timeout,
                max_concurrent_streams: t.http2_max_concurrent_streams,
                max_header_list_size: t.http2_max_header_list_size,
            },
            hsts,
            redirect_exempt: t.redirect_exempt.clone(),
        }
    }
}

/// RFC 6797 §6.1: `max-age` is required; the rest are `; `-separated directives.
fn valid_hsts(v: &str) -> bool {
    let mut max_age = false;
    for d in v.split(';').map(str::trim) {
        let (name, value) = d.split_once('=').unwrap_or((d, ""));
        match name.to_ascii_lowercase().as_str() {
            "max-age" => max_age = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()),
            "includesubdomains" | "preload" if value.is_empty() => {}
            _ => return false,
        }
    }
    max_age && http::HeaderValue::from_str(v).is_ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    const POOLS: &str = "[pools.base]\nfile = \"base.conf\"\n";

    fn load(tls: &str) -> Result<Config, Vec<ConfigError>> {
        let text = format!("{POOLS}[tls]\n{tls}\n");
        Config::from_toml(&text, Path::new("/etc/graysplit/graysplit.toml"))
    }

    #[test]
    fn defaults() {
        let c = load("").unwrap();
        let t = &c.tls;
        assert!(t.certificates.is_empty());
        assert_eq!(t.reload_interval.as_secs(), 5);
        assert_eq!(t.h2.max_concurrent_streams, 128);
        assert_eq!(t.h2.max_header_list_size, 65536);
        assert_eq!(t.h2.idle_timeout.as_secs(), 65);
        assert_eq!(t.hsts, None);
        assert_eq!(t.redirect_exempt, ["/.well-known/acme-challenge/"]);
    }

    #[test]
    fn certificates_resolve_against_the_config_dir() {
        let c = load(
            "[[tls.certificates]]\ncert = \"certs/a.pem\"\nkey = \"/keys/a.key\"\n\
             names = [\"Example.COM\", \"*.example.com\"]",
        )
        .unwrap();
        let cert = &c.tls.certificates[0];
        assert_eq!(cert.cert, Path::new("/etc/graysplit/certs/a.pem"));
        assert_eq!(cert.key, Path::new("/keys/a.key"));
        assert_eq!(cert.names, ["example.com", "*.example.com"]);
        assert_eq!(cert.label, "certs/a.pem");
    }

    #[test]
    fn bad_values_name_key_value_and_rule() {
        let e = load(
            "reload_interval = \"0s\"\nhttp2_max_concurrent_streams = 0\n\
             http2_max_header_list_size = 10\nhsts = \"forever\"\nredirect_exempt = [\"acme\"]\n\
             [[tls.certificates]]\ncert = \"\"\nkey = \"k\"\nnames = [\"a b\"]",
        )
        .unwrap_err();
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tls.certificates[0].cert",
                "tls.certificates[0].names[0]",
                "tls.reload_interval",
                "tls.http2_max_concurrent_streams",
                "tls.http2_max_header_list_size",
                "tls.hsts",
                "tls.redirect_exempt[0]",
            ],
            "{e:#?}"
        );
        assert!(load("hsts = \"max-age=31536000; includeSubDomains; preload\"").is_ok());
        assert!(load("hsts = \"includeSubDomains\"").is_err());
    }

    #[test]
    fn the_shipped_config_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/graysplit.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let shipped: crate::config::file::FileConfig = toml::from_str(&text).unwrap();
        let (got, want) = (shipped.tls, super::TlsSection::default());
        assert!(
            text.contains("\n[tls]\n"),
            "conf/graysplit.toml has a [tls] section"
        );
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
    }
}
