//! `[admin]`: the admin listener's token and the default format of its status page — the file
//! shape and its validation into [`AdminSettings`].
//!
//! The admin listener shows every server, the switches and the traffic, and `/decide` answers
//! for any client: on an address other than loopback it must not be open to whoever reaches it,
//! so `-t` refuses a non-loopback `server.admin_listen` without a token.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{Secret, Validator};
use crate::status_page::Format;

/// Environment variable holding the admin token when the config file does not set `token`.
pub const TOKEN_ENV: &str = "GRAYSPLIT_ADMIN_TOKEN";

/// A shorter token is guessable over the network.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Deserialize)]
#[serde(default)]
pub struct AdminSection {
    /// Bearer token; a secret, so this type's `Debug` never shows it.
    pub token: Option<String>,
    /// The check module's `check_status <format>`.
    pub status_format: String,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            token: None,
            status_format: "html".into(),
        }
    }
}

impl std::fmt::Debug for AdminSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSection")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("status_format", &self.status_format)
            .finish()
    }
}

/// Validated `[admin]`.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// Required on every admin URL but `/healthz` and `/readyz` when set.
    pub token: Option<Secret>,
    /// `/upstream_status` and `/status` without (or with a bad) `?format=`.
    pub status_format: Format,
}

impl Validator<'_> {
    /// `listen` is `server.admin_listen` as written (checked on its own by the caller).
    pub(super) fn admin(&mut self, a: &AdminSection, listen: &str) -> AdminSettings {
        let status_format = Format::from_name(&a.status_format).unwrap_or_else(|| {
            self.error(
                "admin.status_format",
                &a.status_format,
                "must be one of \"html\", \"csv\", \"json\", \"prometheus\" (the check module's \
                 check_status formats)",
            );
            Format::Html
        });
        let token = self.admin_token(a.token.as_deref());
        let open_to_others = listen
            .parse::<SocketAddr>()
            .is_ok_and(|addr| !addr.ip().is_loopback());
        if open_to_others && token.is_none() {
            self.error(
                "server.admin_listen",
                listen,
                format!(
                    "is not a loopback address, so the admin listener needs a token: set \
                     admin.token or {TOKEN_ENV} (at least {MIN_TOKEN_LEN} characters, e.g. \
                     `openssl rand -hex 32`), or listen on 127.0.0.1"
                ),
            );
        }
        AdminSettings {
            token,
            status_format,
        }
    }

    /// The token from the file, else from the environment. Never echoed.
    fn admin_token(&mut self, from_file: Option<&str>) -> Option<Secret> {
        let (key, token) = match from_file.filter(|t| !t.is_empty()) {
            Some(t) => ("admin.token", t.to_string()),
            None => (TOKEN_ENV, (self.env)(TOKEN_ENV).filter(|t| !t.is_empty())?),
        };
        // It is compared with what clients send in `Authorization`, a header value.
        if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            self.error_no_value(
                key,
                format!(
                    "must be at least {MIN_TOKEN_LEN} printable ASCII characters without spaces, \
                     e.g. `openssl rand -hex 32` (the value is not shown: it is a secret)"
                ),
            );
            return None;
        }
        Some(Secret::new(token))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};
    use crate::status_page::Format;

    const POOLS: &str = "[pools.base]\nfile = \"base.conf\"\n";

    fn load(text: &str, env: Option<&str>) -> Result<Config, Vec<ConfigError>> {
        Config::from_toml_with_env(
            &format!("{POOLS}{text}\n"),
            Path::new("/etc/graysplit/graysplit.toml"),
            |n| {
                (n == super::TOKEN_ENV)
                    .then(|| env.map(str::to_string))
                    .flatten()
            },
        )
    }

    #[test]
    fn defaults_are_no_token_and_the_html_page() {
        let c = load("", None).unwrap();
        assert!(c.admin.token.is_none());
        assert_eq!(c.admin.status_format, Format::Html);
        let c = load("[admin]\nstatus_format = \"prometheus\"", None).unwrap();
        assert_eq!(c.admin.status_format, Format::Prometheus);
    }

    #[test]
    fn a_non_loopback_admin_address_needs_a_token() {
        let e = load("[server]\nadmin_listen = \"0.0.0.0:9901\"", None).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "server.admin_listen");
        assert_eq!(e[0].value.as_deref(), Some("0.0.0.0:9901"));
        assert!(e[0].rule.contains("needs a token"), "{}", e[0]);
        let c = load(
            "[server]\nadmin_listen = \"10.0.0.5:9901\"\n[admin]\ntoken = \"0123456789abcdef0123\"",
            None,
        )
        .unwrap();
        assert_eq!(c.admin.token.unwrap().expose(), "0123456789abcdef0123");
        let c = load(
            "[server]\nadmin_listen = \"[::]:9901\"",
            Some("fedcba9876543210fedc"),
        )
        .unwrap();
        assert_eq!(
            c.admin.token.unwrap().expose(),
            "fedcba9876543210fedc",
            "from the environment"
        );
        assert!(
            load("[server]\nadmin_listen = \"127.0.0.2:9901\"", None).is_ok(),
            "127/8 is loopback"
        );
        assert!(load("[server]\nadmin_listen = \"[::1]:9901\"", None).is_ok());
    }

    #[test]
    fn the_shipped_config_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/graysplit.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let shipped: crate::config::file::FileConfig = toml::from_str(&text).unwrap();
        assert!(text.contains("\n[admin]\n"));
        assert_eq!(
            format!("{:?}", shipped.admin),
            format!("{:?}", super::AdminSection::default())
        );
        assert_eq!(
            shipped.server.request_id_header,
            crate::config::file::ServerSection::default().request_id_header
        );
    }

    #[test]
    fn bad_values_are_reported_and_the_token_never_shown() {
        let e = load(
            "[admin]\ntoken = \"short secret\"\nstatus_format = \"xml\"",
            None,
        )
        .unwrap_err();
        let text: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with("admin.status_format = \"xml\": must be one of"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("admin.token: must be at least 16"),
            "{text:?}"
        );
        assert!(!text.iter().any(|t| t.contains("short secret")));
        let e = load("", Some("tiny")).unwrap_err();
        assert_eq!(e[0].key, super::TOKEN_ENV);
        let e = load("[admin]\ntoken = 42", None).unwrap_err();
        assert_eq!(e[0].key, "admin.token");
        assert!(!format!("{e:?}").contains("42"), "{e:?}");
        let c = load("[admin]\ntoken = \"0123456789abcdef0123\"", None).unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef0123"));
    }
}
