#![allow(dead_code)]
//! Test certificates made with Debian's `openssl` CLI, as an operator would make them (shared by
//! the integration tests and, through `#[path]`, the library's unit tests; std only).

use std::path::{Path, PathBuf};
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed P-256 certificate for `cn` and `*.cn`, valid for `days`, written to
/// `<dir>/<name>.crt` and `<dir>/<name>.key`. Returns both paths.
pub fn self_signed(dir: &Path, name: &str, cn: &str, days: u32) -> (PathBuf, PathBuf) {
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            &format!("subjectAltName=DNS:{cn},DNS:*.{cn}"),
            "-days",
            &days.max(1).to_string(),
            "-keyout",
            &key,
            "-out",
            &crt,
        ],
    );
    (dir.join(crt), dir.join(key))
}

/// A test CA (`<dir>/ca.crt`, `<dir>/ca.key`), for clients to trust (`curl --cacert`).
pub fn ca(dir: &Path) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=graysplit test CA",
            "-days",
            "30",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    dir.join("ca.crt")
}

/// A leaf for `cn` and `*.cn` issued by the CA in `dir` (see [`ca`]), with a random serial:
/// `<dir>/<name>.crt` holds the chain (leaf, then the CA), `<dir>/<name>.key` its key.
pub fn leaf(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.leaf"),
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        format!(
            "subjectAltName=DNS:{cn},DNS:*.{cn}
basicConstraints=CA:FALSE
"
        ),
    )
    .expect("ext file");
    openssl(
        dir,
        &[
            "x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key", "-days", "30",
            "-extfile", &ext, "-out", &pem,
        ],
    );
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(dir.join(&pem)).expect("leaf"),
        std::fs::read_to_string(dir.join("ca.crt")).expect("ca")
    );
    std::fs::write(dir.join(format!("{name}.crt")), chain).expect("chain");
    (dir.join(format!("{name}.crt")), dir.join(key))
}

/// A self-signed certificate for `cn` that was valid for one day in 2020 (`openssl ca` is the
/// CLI's way to set both dates).
pub fn expired(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let ca = dir.join(format!("{name}-ca"));
    std::fs::create_dir_all(&ca).expect("ca dir");
    std::fs::write(ca.join("index.txt"), "").expect("index");
    std::fs::write(ca.join("serial"), "01\n").expect("serial");
    std::fs::write(
        ca.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
         default_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n",
    )
    .expect("ca.cnf");
    openssl(
        &ca,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            "k.pem",
            "-out",
            "r.csr",
        ],
    );
    openssl(
        &ca,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            "k.pem",
            "-in",
            "r.csr",
            "-out",
            "c.pem",
            "-notext",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
        ],
    );
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::copy(ca.join("c.pem"), &crt).expect("copy cert");
    std::fs::copy(ca.join("k.pem"), &key).expect("copy key");
    (crt, key)
}

/// The serial number of a PEM certificate, as `openssl x509 -serial` prints it (hex, no colons).
pub fn serial(crt: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(crt)
        .output()
        .expect("run openssl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_uppercase()
}
