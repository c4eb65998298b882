//! TLS metrics, registered in the shared registry (`/metrics`).

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct TlsMetrics {
    expiry: IntGaugeVec,
    reloads: IntCounterVec,
    reload_errors: IntCounterVec,
    failing: IntGaugeVec,
}

impl std::fmt::Debug for TlsMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMetrics")
    }
}

impl TlsMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<TlsMetrics> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["certificate"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &["certificate"])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(TlsMetrics {
            expiry: gauge(
                "graysplit_tls_certificate_expiry_timestamp_seconds",
                "notAfter of the certificate in service, Unix seconds (alert on this minus time()).",
            )?,
            reloads: counter(
                "graysplit_tls_certificate_reloads_total",
                "Certificates replaced after their files changed (checked before the swap).",
            )?,
            reload_errors: counter(
                "graysplit_tls_certificate_reload_errors_total",
                "Changed certificate files that failed their checks; the previous certificate \
                 kept serving.",
            )?,
            failing: gauge(
                "graysplit_tls_certificate_reload_failing",
                "1 while the files on disk are unusable and the previous certificate is served.",
            )?,
        })
    }

    pub fn in_service(&self, label: &str, not_after: i64) {
        self.expiry.with_label_values(&[label]).set(not_after);
        self.failing.with_label_values(&[label]).set(0);
    }

    pub fn reloaded(&self, label: &str) {
        self.reloads.with_label_values(&[label]).inc();
    }

    pub fn reload_failed(&self, label: &str) {
        self.reload_errors.with_label_values(&[label]).inc();
        self.failing.with_label_values(&[label]).set(1);
    }
}
