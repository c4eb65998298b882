//! Loading one certificate pair and checking it before anything uses it: both files readable, a
//! chain with the leaf first and each certificate issued by the next, a private key that rustls
//! can use and that belongs to the leaf, and a validity window around `now`. Every failure names
//! the file and the reason, so `graysplit -t` and the reload log say exactly what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::resolver::normalize_name;
use super::CertSource;

/// A checked pair, ready to serve.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// The names it is chosen for: the configured ones, else its own DNS names.
    pub names: Vec<String>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// The leaf's serial number, hex with ':' (as `openssl x509 -serial` prints it, with colons).
    pub serial: String,
}

/// What is wrong with one file of a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

fn fail<T>(path: &Path, reason: impl Into<String>) -> Result<T, CertError> {
    Err(CertError {
        path: path.to_path_buf(),
        reason: reason.into(),
    })
}

/// Both files of `src`, as bytes (read once, so a check and a load see the same content).
pub fn read(src: &CertSource) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| CertError {
            path: p.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })
    };
    Ok((read(&src.cert)?, read(&src.key)?))
}

/// Reads and checks `src` at `now` (Unix seconds).
pub fn load(src: &CertSource, now: i64) -> Result<Loaded, CertError> {
    let (cert, key) = read(src)?;
    parse(src, &cert, &key, now)
}

/// Checks the PEM contents of `src`'s two files at `now` (Unix seconds).
pub fn parse(
    src: &CertSource,
    cert_pem: &[u8],
    key_pem: &[u8],
    now: i64,
) -> Result<Loaded, CertError> {
    let chain = chain(&src.cert, cert_pem)?;
    let key = private_key(&src.key, key_pem)?;
    let leaf_info = check_chain(&src.cert, &chain, now)?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).or_else(|e| match e {
        rustls::Error::InconsistentKeys(_) => fail(
            &src.key,
            format!(
                "this private key does not belong to the first certificate in {} (is the leaf \
                 certificate first, and is this its key?)",
                src.cert.display()
            ),
        ),
        other => fail(&src.key, format!("unusable private key: {other}")),
    })?;
    let names = if src.names.is_empty() {
        leaf_info.names
    } else {
        src.names.clone()
    };
    Ok(Loaded {
        key: Arc::new(certified),
        names,
        not_after: leaf_info.not_after,
        serial: leaf_info.serial,
    })
}

fn chain(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let mut reader = pem;
    let mut out = Vec::new();
    for (i, item) in rustls_pemfile::certs(&mut reader).enumerate() {
        match item {
            Ok(c) => out.push(c),
            Err(e) => return fail(path, format!("certificate {} is not valid PEM: {e}", i + 1)),
        }
    }
    if out.is_empty() {
        return fail(
            path,
            "no certificate found (expected PEM blocks \"-----BEGIN CERTIFICATE-----\")",
        );
    }
    Ok(out)
}

fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertError> {
    let mut reader = pem;
    match rustls_pemfile::private_key(&mut reader) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => fail(
            path,
            "no private key found (expected a PEM block \"-----BEGIN PRIVATE KEY-----\", \
             \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")",
        ),
        Err(e) => fail(path, format!("the private key is not valid PEM: {e}")),
    }
}

struct LeafInfo {
    names: Vec<String>,
    not_after: i64,
    serial: String,
}

/// Parses every certificate; the leaf must be valid at `now`, and each certificate must be issued
/// by the next (a chain in the wrong order is what browsers reject and curl calls "unable to get
/// local issuer").
fn check_chain(path: &Path, chain: &[CertificateDer<'_>], now: i64) -> Result<LeafInfo, CertError> {
    let mut parsed = Vec::with_capacity(chain.len());
    for (i, der) in chain.iter().enumerate() {
        match X509Certificate::from_der(der.as_ref()) {
            Ok((_, c)) => parsed.push(c),
            Err(e) => return fail(path, format!("certificate {} cannot be parsed: {e}", i + 1)),
        }
    }
    let leaf = &parsed[0];
    let validity = leaf.validity();
    if validity.not_after.timestamp() <= now {
        return fail(
            path,
            format!("the certificate expired on {}", validity.not_after),
        );
    }
    if validity.not_before.timestamp() > now {
        return fail(
            path,
            format!(
                "the certificate is not valid before {}",
                validity.not_before
            ),
        );
    }
    for (i, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer().as_raw() != pair[1].subject().as_raw() {
            return fail(
                path,
                format!(
                    "certificate {} ({}) was not issued by certificate {} ({}): put the leaf \
                     first, then each issuer in order",
                    i + 1,
                    pair[0].subject(),
                    i + 2,
                    pair[1].subject()
                ),
            );
        }
    }
    Ok(LeafInfo {
        names: own_names(leaf),
        not_after: validity.not_after.timestamp(),
        serial: leaf.raw_serial_as_string(),
    })
}

/// The leaf's DNS names: subjectAltName, else the subject's CN (as old certificates have it).
fn own_names(leaf: &X509Certificate<'_>) -> Vec<String> {
    let mut names: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => normalize_name(d),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            leaf.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .filter_map(normalize_name),
        );
    }
    names.dedup();
    names
}

/// The integration tests' certificate maker (Debian's `openssl` CLI), shared with these tests.
#[cfg(test)]
#[path = "../../tests/common/certs.rs"]
pub(crate) mod test_certs;

#[cfg(test)]
mod tests {
    use super::test_certs::{expired, self_signed};
    use super::*;

    fn src(crt: &Path, key: &Path) -> CertSource {
        CertSource {
            label: "test".into(),
            cert: crt.to_path_buf(),
            key: key.to_path_buf(),
            names: Vec::new(),
        }
    }

    fn now() -> i64 {
        crate::pin::unix_now() as i64
    }

    #[test]
    fn a_good_pair_loads_with_its_names_serial_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = self_signed(dir.path(), "a", "example.test", 30);
        let l = load(&src(&crt, &key), now()).unwrap();
        assert_eq!(l.names, ["example.test", "*.example.test"]);
        let days = (l.not_after - now()) / 86_400;
        assert!((29..=30).contains(&days), "{days}");
        assert!(l.serial.contains(':'), "{}", l.serial);
    }

    #[test]
    fn every_broken_pair_names_its_file_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = self_signed(dir.path(), "a", "a.test", 30);
        let (_, other_key) = self_signed(dir.path(), "b", "b.test", 30);
        let (old_crt, old_key) = expired(dir.path(), "old", "old.test");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let cases = [
            (src(&missing, &key), &missing, "cannot read"),
            (src(&crt, &missing), &missing, "cannot read"),
            (src(&garbage, &key), &garbage, "no certificate found"),
            (src(&crt, &garbage), &garbage, "no private key found"),
            (
                src(&crt, &other_key),
                &other_key,
                "does not belong to the first certificate",
            ),
            (src(&key, &key), &key, "no certificate found"),
            (src(&old_crt, &old_key), &old_crt, "expired on"),
        ];
        for (s, path, reason) in cases {
            let e = load(&s, now()).unwrap_err();
            assert_eq!(&e.path, path, "{e}");
            assert!(e.reason.contains(reason), "{e} should say {reason:?}");
        }
        let (n_crt, n_key) = (crt.clone(), key.clone());
        let e = load(&src(&n_crt, &n_key), now() - 86_400 * 2).unwrap_err();
        assert!(e.reason.contains("not valid before"), "{e}");
    }

    #[test]
    fn a_chain_in_the_wrong_order_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, key) = self_signed(dir.path(), "a", "a.test", 30);
        let (b, _) = self_signed(dir.path(), "b", "b.test", 30);
        let both = dir.path().join("both.crt");
        let text = format!(
            "{}{}",
            std::fs::read_to_string(&a).unwrap(),
            std::fs::read_to_string(&b).unwrap()
        );
        std::fs::write(&both, text).unwrap();
        let e = load(&src(&both, &key), now()).unwrap_err();
        assert!(e.reason.contains("was not issued by certificate 2"), "{e}");
    }

    #[test]
    fn configured_names_win_over_the_certificate_names() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = self_signed(dir.path(), "a", "a.test", 30);
        let mut s = src(&crt, &key);
        s.names = vec!["shop.test".into()];
        assert_eq!(load(&s, now()).unwrap().names, ["shop.test"]);
    }
}
