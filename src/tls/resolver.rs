//! Picking the certificate for a handshake by SNI: exact name, then a one-label wildcard
//! (`*.example.com` covers `a.example.com`, not `a.b.example.com`, as browsers check it), else the
//! default (the first configured certificate). The table is immutable and swapped whole, so a
//! handshake sees either the old or the new set, never half of a reload.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A DNS name as matched: lower case, no trailing dot; `*.` only as the whole first label.
/// `None` for anything else (spaces, empty labels, a `*` elsewhere).
pub fn normalize_name(name: &str) -> Option<String> {
    let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let rest = n.strip_prefix("*.").unwrap_or(&n);
    let ok = !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(n)
}

/// Certificates by name; built once per (re)load.
#[derive(Debug, Clone)]
pub struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertTable {
    /// `certs` in configuration order (the first is the default); an earlier certificate keeps a
    /// name a later one also claims, as nginx's first matching `server` block would.
    pub fn new<'a>(
        default: Arc<CertifiedKey>,
        certs: impl IntoIterator<Item = (&'a [String], Arc<CertifiedKey>)>,
    ) -> CertTable {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (names, key) in certs {
            for n in names {
                let map = match n.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()),
                    None => exact.entry(n.clone()),
                };
                map.or_insert_with(|| key.clone());
            }
        }
        CertTable {
            exact,
            wildcard,
            default,
        }
    }

    /// The certificate for `sni` (any case, as sent); `None` or an unknown name: the default.
    pub fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) else {
            return &self.default;
        };
        if let Some(k) = self.exact.get(&name) {
            return k;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

/// What rustls asks during every handshake.
#[derive(Debug)]
pub struct SniResolver {
    table: ArcSwap<CertTable>,
}

impl SniResolver {
    pub fn new(table: CertTable) -> SniResolver {
        SniResolver {
            table: ArcSwap::from_pointee(table),
        }
    }

    /// Replaces the whole table (only ever with fully checked certificates).
    pub fn swap(&self, table: CertTable) {
        self.table.store(Arc::new(table));
    }

    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        self.table.load().pick(sni).clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct certified keys need real keys; a chain of one fake DER per name is enough to
    /// tell them apart here (the resolver never looks inside).
    fn key(tag: u8) -> Arc<CertifiedKey> {
        let pem = fixed_key();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(pem.into());
        let signer = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        Arc::new(CertifiedKey::new(
            vec![rustls::pki_types::CertificateDer::from(vec![tag])],
            signer,
        ))
    }

    /// A fixed P-256 PKCS#8 key (made once with `openssl genpkey`; test data only).
    fn fixed_key() -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(
                "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgercK7z4+QqxluJBmt3xsLhNfmuLGIOS6U6uABtVjVA2hRANCAATxsSm9BJkIuYS8GlspeUN4+U/G4IIjwlJWI9xU/dNz1dRF7BjFdSohkgRTzlkwCWJ4qZwtUNBzgtl0CKV+0MKG",
            )
            .unwrap()
    }

    fn tag(k: &CertifiedKey) -> u8 {
        k.cert[0].as_ref()[0]
    }

    #[test]
    fn exact_then_one_label_wildcard_then_default() {
        let names_a = vec!["example.com".to_string(), "*.example.com".to_string()];
        let names_b = vec!["shop.example.com".to_string()];
        let names_c = vec!["example.com".to_string(), "other.org".to_string()];
        let t = CertTable::new(
            key(0),
            [
                (names_a.as_slice(), key(1)),
                (names_b.as_slice(), key(2)),
                (names_c.as_slice(), key(3)),
            ],
        );
        let pick = |sni: Option<&str>| tag(t.pick(sni));
        assert_eq!(pick(Some("example.com")), 1);
        assert_eq!(pick(Some("EXAMPLE.com.")), 1, "case and a trailing dot");
        assert_eq!(pick(Some("shop.example.com")), 2, "exact beats wildcard");
        assert_eq!(pick(Some("www.example.com")), 1, "wildcard");
        assert_eq!(
            pick(Some("a.b.example.com")),
            0,
            "a wildcard covers one label only"
        );
        assert_eq!(pick(Some("other.org")), 3);
        assert_eq!(pick(Some("unknown.net")), 0);
        assert_eq!(pick(None), 0, "no SNI: the default");
    }

    #[test]
    fn a_swap_is_seen_by_the_next_pick() {
        let r = SniResolver::new(CertTable::new(key(1), []));
        assert_eq!(tag(&r.pick(Some("x"))), 1);
        r.swap(CertTable::new(key(2), []));
        assert_eq!(tag(&r.pick(Some("x"))), 2);
    }

    #[test]
    fn names_are_normalized_or_refused() {
        assert_eq!(
            normalize_name("Example.COM.").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_name("*.Example.com").as_deref(),
            Some("*.example.com")
        );
        for bad in [
            "",
            "*",
            "a b.com",
            "a..com",
            "*.*.com",
            "a.*.com",
            "exa$mple.com",
        ] {
            assert_eq!(normalize_name(bad), None, "{bad:?}");
        }
    }
}
