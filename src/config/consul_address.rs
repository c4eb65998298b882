//! `consul.addresses`: one Consul agent each, as a URL or as upsync writes it.
//!
//! nginx-upsync-module takes its Consul as `upsync 192.168.59.105:8510/v1/kv/upstreams/base/`,
//! host and port without a scheme, and so does Consul's own `CONSUL_HTTP_ADDR`
//! (`export CONSUL_HTTP_ADDR=127.0.0.1:8500`, "an address with optional scheme";
//! <https://developer.hashicorp.com/consul/commands#consul_http_addr>). An address without a
//! scheme is therefore plain HTTP, exactly as there; `https://` must be written out. The KV path
//! (`/v1/kv/upstreams/base/`) is per pool here (`pools.<name>.consul_prefix`), so an upsync line
//! pasted whole is refused with that hint rather than silently misread.

/// Why an address cannot be used; [`AddressError::Credential`] must not be echoed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// Not an address of a Consul agent; the rule to show.
    Invalid(&'static str),
    /// A path under `/v1/kv/`: the upsync line's prefix, which belongs to the pool.
    KvPath(String),
    /// A user or password in the URL (the value holds a secret).
    Credential,
}

pub const RULE: &str = "must be the address of a Consul agent: \"10.0.0.5:8500\" (plain HTTP, as \
                        upsync writes it) or a URL such as \"http://10.0.0.5:8500\" or \
                        \"https://consul.example.com\"";

/// The base URL to put `/v1/kv/...` after: `http(s)://host[:port]`, without a trailing '/'.
pub fn normalise(value: &str) -> Result<String, AddressError> {
    let written = value.trim();
    if written.is_empty() || written.chars().any(char::is_whitespace) {
        return Err(AddressError::Invalid(RULE));
    }
    // A scheme is letters followed by "://"; anything else (`10.0.0.5:8500`, `consul:8500`,
    // `[::1]:8500`) is host[:port] as upsync writes it. `consul:8500` must not become the URL
    // scheme `consul` with the path `8500`.
    let with_scheme = match written.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphabetic()) =>
        {
            written.to_string()
        }
        Some(_) => return Err(AddressError::Invalid(RULE)),
        None => format!("http://{written}"),
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|_| AddressError::Invalid(RULE))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(AddressError::Credential);
    }
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(AddressError::Invalid(RULE));
    }
    if url.path().starts_with("/v1/kv") {
        let prefix = url
            .path()
            .trim_start_matches("/v1/kv")
            .trim_start_matches('/');
        return Err(AddressError::KvPath(prefix.to_string()));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(AddressError::Invalid(RULE));
    }
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsync_style_addresses_are_plain_http() {
        for (written, url) in [
            ("192.168.59.105:8510", "http://192.168.59.105:8510"),
            ("127.0.0.1:8500", "http://127.0.0.1:8500"),
            ("consul.service.dc1:8500", "http://consul.service.dc1:8500"),
            ("localhost:8500", "http://localhost:8500"),
            ("[::1]:8500", "http://[::1]:8500"),
            ("10.0.0.5", "http://10.0.0.5"),
            (" 10.0.0.5:8500/ ", "http://10.0.0.5:8500"),
        ] {
            assert_eq!(normalise(written).as_deref(), Ok(url), "{written}");
        }
    }

    #[test]
    fn urls_keep_their_scheme() {
        assert_eq!(
            normalise("http://10.0.0.1:8500/").as_deref(),
            Ok("http://10.0.0.1:8500")
        );
        assert_eq!(
            normalise("https://consul.example.com").as_deref(),
            Ok("https://consul.example.com")
        );
        assert_eq!(normalise("HTTP://H:1").as_deref(), Ok("http://h:1"));
    }

    #[test]
    fn a_pasted_upsync_line_names_the_prefix() {
        assert_eq!(
            normalise("192.168.59.105:8510/v1/kv/upstreams/base/"),
            Err(AddressError::KvPath("upstreams/base/".into()))
        );
    }

    #[test]
    fn the_rest_is_refused() {
        for bad in [
            "",
            "ftp://x",
            "http://h:1/v1/agent",
            "h:1?x=1",
            "h :1",
            "://h",
            "1a://h",
            "h:99999",
        ] {
            assert!(
                matches!(normalise(bad), Err(AddressError::Invalid(_))),
                "{bad:?}: {:?}",
                normalise(bad)
            );
        }
        assert_eq!(normalise("http://u:p@h:1"), Err(AddressError::Credential));
        assert_eq!(normalise("u:p@h:1"), Err(AddressError::Credential));
    }
}
