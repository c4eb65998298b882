//! The certificates in service and their hot reload.
//!
//! Each configured pair keeps the bytes last read from its two files. A check (every
//! `tls.reload_interval`, and at once on SIGHUP) re-reads them; when either file changed, the new
//! pair is parsed and checked in full (`certs::parse`). Only a pair that passes replaces the one in
//! service, and the SNI table is then rebuilt and swapped whole. A pair that fails keeps the old
//! certificate serving; when the same content still fails at the next check (so a pair caught
//! between its two files being replaced, or a file half written, is no alarm) it counts an error
//! and is logged, once per distinct content. Comparing content rather than mtimes sees
//! every kind of replacement (rename over, rewrite in place, a same-second edit, a symlink flip as
//! certbot and Kubernetes secrets do).

use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;

use super::certs::{self, CertError, Loaded};
use super::metrics::TlsMetrics;
use super::resolver::{CertTable, SniResolver};
use super::CertSource;

/// A certificate expiring sooner than this is warned about at every (re)load.
const EXPIRY_WARNING: i64 = 14 * 86_400;

struct Slot {
    source: CertSource,
    /// The (cert, key) bytes last acted on, good or bad; `None` after a read error.
    seen: Option<(Vec<u8>, Vec<u8>)>,
    /// Bytes that failed once: they fail for good if still the same at the next check.
    suspect: Option<(Vec<u8>, Vec<u8>)>,
    loaded: Loaded,
    /// The last failure logged, so each distinct failure is logged once.
    failing: Option<String>,
}

pub struct CertStore {
    slots: Mutex<Vec<Slot>>,
    resolver: Arc<SniResolver>,
    metrics: TlsMetrics,
}

impl CertStore {
    /// Loads every pair; at start any failure is fatal (every one is returned).
    pub fn load(
        sources: &[CertSource],
        metrics: TlsMetrics,
        now: i64,
    ) -> Result<CertStore, Vec<CertError>> {
        let mut slots = Vec::with_capacity(sources.len());
        let mut errors = Vec::new();
        for s in sources {
            match certs::read(s).and_then(|(c, k)| Ok((certs::parse(s, &c, &k, now)?, (c, k)))) {
                Ok((loaded, seen)) => slots.push(Slot {
                    source: s.clone(),
                    seen: Some(seen),
                    suspect: None,
                    loaded,
                    failing: None,
                }),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let Some(table) = table(&slots) else {
            return Err(vec![CertError {
                path: "[tls]".into(),
                reason: "no certificate configured (add [[tls.certificates]])".into(),
            }]);
        };
        for s in &slots {
            in_service(&metrics, s, now, "loaded");
        }
        Ok(CertStore {
            slots: Mutex::new(slots),
            resolver: Arc::new(SniResolver::new(table)),
            metrics,
        })
    }

    pub fn resolver(&self) -> Arc<SniResolver> {
        self.resolver.clone()
    }

    /// The serial of the certificate in service for each configured pair, in order.
    pub fn serials(&self) -> Vec<String> {
        self.slots
            .lock()
            .iter()
            .map(|s| s.loaded.serial.clone())
            .collect()
    }

    /// One check of every pair's files at `now`. Returns how many pairs were replaced.
    pub fn check(&self, now: i64) -> usize {
        let mut slots = self.slots.lock();
        let mut replaced = 0;
        for slot in slots.iter_mut() {
            let label = slot.source.label.clone();
            let result = match certs::read(&slot.source) {
                Ok(bytes) if slot.seen.as_ref() == Some(&bytes) => continue,
                Ok(bytes) => match certs::parse(&slot.source, &bytes.0, &bytes.1, now) {
                    Ok(loaded) => {
                        slot.seen = Some(bytes);
                        slot.suspect = None;
                        Ok(loaded)
                    }
                    Err(e) if slot.suspect.as_ref() == Some(&bytes) => {
                        slot.seen = Some(bytes);
                        slot.suspect = None;
                        Err(e)
                    }
                    Err(_) => {
                        // Perhaps caught mid-replacement: look again at the next check.
                        slot.suspect = Some(bytes);
                        continue;
                    }
                },
                Err(e) => {
                    slot.seen = None;
                    Err(e)
                }
            };
            match result {
                Ok(loaded) => {
                    slot.loaded = loaded;
                    slot.failing = None;
                    replaced += 1;
                    self.metrics.reloaded(&label);
                    in_service(&self.metrics, slot, now, "reloaded");
                }
                Err(e) => {
                    let text = e.to_string();
                    if slot.failing.as_deref() != Some(text.as_str()) {
                        self.metrics.reload_failed(&label);
                        error!(
                            "tls: certificate {label}: {text}; still serving the previous one \
                             (serial {})",
                            slot.loaded.serial
                        );
                        slot.failing = Some(text);
                    }
                }
            }
        }
        if replaced > 0 {
            if let Some(t) = table(&slots) {
                self.resolver.swap(t);
            }
        }
        replaced
    }
}

fn in_service(metrics: &TlsMetrics, slot: &Slot, now: i64, what: &str) {
    let l = &slot.loaded;
    metrics.in_service(&slot.source.label, l.not_after);
    let days = (l.not_after - now) / 86_400;
    info!(
        "tls: certificate {} {what}: serial {}, names {:?}, expires in {days} day(s)",
        slot.source.label, l.serial, l.names
    );
    if l.not_after - now < EXPIRY_WARNING {
        warn!(
            "tls: certificate {} expires in {days} day(s): renew it",
            slot.source.label
        );
    }
}

/// The SNI table of the pairs in service; the first is the default.
fn table(slots: &[Slot]) -> Option<CertTable> {
    let default = slots.first()?.loaded.key.clone();
    Some(CertTable::new(
        default,
        slots
            .iter()
            .map(|s| (s.loaded.names.as_slice(), s.loaded.key.clone())),
    ))
}

/// Background service: checks the files every `interval` and on SIGHUP.
pub struct CertReloader {
    pub store: Arc<CertStore>,
    pub interval: Duration,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for CertReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("tls: cannot listen for SIGHUP ({e}); certificates are still checked every {:?}", self.interval);
                None
            }
        };
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    info!("tls: SIGHUP: checking the certificate files");
                }
                _ = shutdown.changed() => return,
            }
            let store = self.store.clone();
            let now = crate::pin::unix_now() as i64;
            // File reads and signature checks off the async threads.
            if let Err(e) = tokio::task::spawn_blocking(move || store.check(now)).await {
                error!("tls: certificate check failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::test_certs::self_signed;

    fn now() -> i64 {
        crate::pin::unix_now() as i64
    }

    fn metrics() -> (prometheus::Registry, TlsMetrics) {
        let r = prometheus::Registry::new();
        let m = TlsMetrics::new(&r).unwrap();
        (r, m)
    }

    fn value(r: &prometheus::Registry, name: &str) -> Option<f64> {
        let text = {
            let mut out = Vec::new();
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        crate::metrics::text_format::parse(&text)
            .unwrap()
            .into_iter()
            .find(|(k, _)| k.starts_with(name))
            .map(|(_, v)| v)
    }

    #[test]
    fn a_good_replacement_is_swapped_and_a_broken_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = self_signed(dir.path(), "site", "site.test", 30);
        let src = CertSource {
            label: "site.crt".into(),
            cert: crt.clone(),
            key: key.clone(),
            names: Vec::new(),
        };
        let (reg, m) = metrics();
        let store = CertStore::load(std::slice::from_ref(&src), m, now()).unwrap();
        let first = store.serials();
        let resolver = store.resolver();
        let served = |r: &SniResolver| r.pick(Some("site.test")).cert[0].as_ref().to_vec();
        let before = served(&resolver);
        assert_eq!(store.check(now()), 0, "unchanged files: nothing to do");

        // A new pair (written over the old paths): checked, then swapped.
        let other = tempfile::tempdir().unwrap();
        let (crt2, key2) = self_signed(other.path(), "site", "site.test", 60);
        std::fs::copy(&crt2, &crt).unwrap();
        std::fs::copy(&key2, &key).unwrap();
        assert_eq!(store.check(now()), 1);
        assert_ne!(store.serials(), first);
        assert_ne!(
            served(&resolver),
            before,
            "the resolver hands out the new certificate"
        );
        assert_eq!(
            value(&reg, "graysplit_tls_certificate_reloads_total"),
            Some(1.0)
        );

        // The key replaced before its certificate: caught in between, no alarm yet.
        let third = tempfile::tempdir().unwrap();
        let (crt3, key3) = self_signed(third.path(), "site", "site.test", 90);
        std::fs::copy(&key3, &key).unwrap();
        assert_eq!(store.check(now()), 0);
        assert_eq!(
            value(&reg, "graysplit_tls_certificate_reload_errors_total"),
            None
        );
        std::fs::copy(&crt3, &crt).unwrap();
        assert_eq!(store.check(now()), 1, "both files replaced: swapped");

        // A broken key: the new certificate stays, the failure is counted once.
        let good = served(&resolver);
        let serial = store.serials();
        std::fs::write(&key, "not a key\n").unwrap();
        assert_eq!(store.check(now()), 0);
        assert_eq!(
            value(&reg, "graysplit_tls_certificate_reload_errors_total"),
            None
        );
        assert_eq!(store.check(now()), 0);
        assert_eq!(store.check(now()), 0);
        assert_eq!(served(&resolver), good);
        assert_eq!(store.serials(), serial);
        assert_eq!(
            value(&reg, "graysplit_tls_certificate_reload_errors_total"),
            Some(1.0)
        );
        assert_eq!(
            value(&reg, "graysplit_tls_certificate_reload_failing"),
            Some(1.0)
        );

        // The key put back: in service again, no longer failing.
        std::fs::copy(&key3, &key).unwrap();
        assert_eq!(store.check(now()), 1);
        assert_eq!(
            value(&reg, "graysplit_tls_certificate_reload_failing"),
            Some(0.0)
        );
    }

    #[test]
    fn at_start_every_broken_pair_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, _) = self_signed(dir.path(), "a", "a.test", 30);
        let srcs: Vec<CertSource> = ["x.key", "y.key"]
            .iter()
            .map(|k| CertSource {
                label: (*k).into(),
                cert: crt.clone(),
                key: dir.path().join(k),
                names: Vec::new(),
            })
            .collect();
        let e = CertStore::load(&srcs, metrics().1, now()).err().unwrap();
        assert_eq!(e.len(), 2);
        assert!(e[1].to_string().contains("y.key: cannot read"), "{}", e[1]);
    }
}
