//! The headers nginx's seed config sets on proxied requests, as pure functions:
//!
//! ```nginx
//! proxy_set_header Host $host;
//! proxy_set_header X-Real-IP $remote_addr;
//! proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
//! ```

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use crate::config::HostHeader;

/// nginx's `$host`: the request's host name, lower-cased, without the port. `None` when the
/// request carries no usable host (nginx would then use `server_name`; we leave Host untouched).
/// Borrowed when the header already is that name (the usual case: nothing to allocate).
pub fn host_without_port(host_header: &str) -> Option<Cow<'_, str>> {
    let h = host_header.trim();
    if h.is_empty() {
        return None;
    }
    let name = if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port → [v6]
        let end = rest.find(']')?;
        &h[..end + 2]
    } else {
        match h.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => h,
        }
    };
    if name.is_empty() || name.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return None;
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(name))
    }
}

/// The `Host` to set on the proxied request; `None` leaves the client's untouched.
///
/// `client` is the client's `Host` header, `uri_host` the host of an absolute request target.
/// A request without either (an HTTP/1.0 probe: `HEAD / HTTP/1.0`) still gets one, because the
/// upstream request goes out as HTTP/1.1 and a strict server (nginx) answers 400 to HTTP/1.1
/// without `Host`: `upstream.default_host` (nginx's `server_name` behind `$host`), else the
/// server's address as written in the pool.
pub fn upstream_host<'a>(
    mode: HostHeader,
    client: Option<&'a str>,
    uri_host: Option<&'a str>,
    default_host: Option<&'a str>,
    server: &'a str,
) -> Option<Cow<'a, str>> {
    let fallback = || Cow::Borrowed(default_host.unwrap_or(server));
    let host = match mode {
        HostHeader::Host => Some(
            client
                .or(uri_host)
                .and_then(host_without_port)
                .unwrap_or_else(fallback),
        ),
        HostHeader::HttpHost => match client.filter(|h| !h.trim().is_empty()) {
            Some(_) => None,
            None => Some(uri_host.map_or_else(fallback, Cow::Borrowed)),
        },
        HostHeader::Upstream => Some(Cow::Borrowed(server)),
    };
    host.filter(|h| !h.is_empty())
}

/// The hops an `X-Forwarded-For` names before the peer: `None` when it is absent or blank (then
/// the upstream's list is the peer alone).
pub fn prior_hops(existing: Option<&str>) -> Option<&str> {
    existing.map(str::trim).filter(|s| !s.is_empty())
}

/// nginx's `$proxy_add_x_forwarded_for`: the client's `X-Forwarded-For` with the peer appended.
/// `None` for `existing` (or a blank one) gives just the peer.
pub fn append_forwarded_for(existing: Option<&str>, peer: IpAddr) -> Vec<u8> {
    let prev = prior_hops(existing);
    let mut out = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 39);
    if let Some(prev) = prev {
        out.extend_from_slice(prev.as_bytes());
        out.extend_from_slice(b", ");
    }
    crate::ip_text::write_ip(peer, &mut out);
    out
}

/// A client address in its canonical form: IPv4-mapped IPv6 (`::ffff:1.2.3.4`) becomes IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// A network in the form that matches canonical addresses: an IPv4-mapped IPv6 network
/// (`::ffff:10.0.0.0/104`) becomes the IPv4 network it maps (`10.0.0.0/8`), since
/// [`canonical_ip`] turns a mapped peer into IPv4 before any lookup.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => n
            .network()
            .to_ipv4_mapped()
            .and_then(|v4| Ipv4Net::new(v4, n.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        _ => net,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_host_still_sends_one_upstream() {
        use HostHeader::*;
        let server = "10.0.0.1:8080";
        let host = |mode, client, uri, default| upstream_host(mode, client, uri, default, server);
        assert_eq!(
            host(Host, Some("Shop.example:81"), None, None).as_deref(),
            Some("shop.example")
        );
        assert_eq!(
            host(Host, None, Some("a.example"), None).as_deref(),
            Some("a.example")
        );
        assert_eq!(
            host(Host, None, None, None).as_deref(),
            Some(server),
            "HTTP/1.0 probe"
        );
        assert_eq!(host(Host, Some("  "), None, None).as_deref(), Some(server));
        assert_eq!(
            host(Host, None, None, Some("www.example.com")).as_deref(),
            Some("www.example.com"),
            "like nginx's server_name"
        );
        assert_eq!(
            host(HttpHost, Some("A.example:81"), None, None),
            None,
            "passed as sent"
        );
        assert_eq!(
            host(HttpHost, None, None, Some("d.example")).as_deref(),
            Some("d.example")
        );
        assert_eq!(
            host(Upstream, Some("a.example"), None, None).as_deref(),
            Some(server)
        );
    }

    #[test]
    fn host_drops_port_and_case_like_nginx() {
        assert_eq!(
            host_without_port("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            host_without_port("example.com").as_deref(),
            Some("example.com")
        );
        assert_eq!(host_without_port("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(
            host_without_port("10.0.0.1:80").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(host_without_port(""), None);
        assert_eq!(host_without_port("[::1"), None);
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(append_forwarded_for(None, peer), b"10.0.0.9");
        assert_eq!(append_forwarded_for(Some("  "), peer), b"10.0.0.9");
        assert_eq!(
            append_forwarded_for(Some("1.2.3.4, 5.6.7.8"), peer),
            b"1.2.3.4, 5.6.7.8, 10.0.0.9"
        );
    }

    #[test]
    fn mapped_v6_becomes_v4() {
        let ip: IpAddr = "::ffff:192.168.93.182".parse().unwrap();
        assert_eq!(
            canonical_ip(ip),
            "192.168.93.182".parse::<IpAddr>().unwrap()
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
    }
}

/// Property tests (`cargo test --lib fuzz_`; `PROPTEST_CASES=1000000` for the long run).
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    proptest! {
        /// Any Host header (the request path gets it as visible ASCII, but any text must do):
        /// no panic, and a result is a non-empty, lower-case, space- and control-free prefix
        /// of the header.
        #[test]
        fn fuzz_host_header_of_any_text(h in prop_oneof![".{0,40}", "[ -~]{0,40}", "\\[[0-9a-f:\\]\\[]{0,12}(:[0-9]{0,6})?"]) {
            if let Some(name) = host_without_port(&h) {
                prop_assert!(!name.is_empty());
                prop_assert_eq!(&name, &name.to_ascii_lowercase());
                prop_assert!(!name.bytes().any(|b| b.is_ascii_control() || b == b' '));
                prop_assert!(h.trim().to_ascii_lowercase().starts_with(&*name), "{:?} -> {:?}", h, name);
            }
        }

        /// `$host`: a name or address with or without a port is the name, lower-cased.
        #[test]
        fn fuzz_host_without_port_like_nginx(
            host in prop_oneof![
                "[a-zA-Z0-9]([a-zA-Z0-9.-]{0,30}[a-zA-Z0-9])?",
                any::<Ipv4Addr>().prop_map(|a| a.to_string()),
                any::<Ipv6Addr>().prop_map(|a| format!("[{a}]")),
            ],
            port in proptest::option::of(any::<u16>()),
        ) {
            let header = match port {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            let (got, want) = (host_without_port(&header), host.to_ascii_lowercase());
            prop_assert_eq!(got.as_deref(), Some(want.as_str()));
        }

        #[test]
        fn fuzz_forwarded_for_appends_exactly_the_peer(existing in proptest::option::of("[ -~\t]{0,60}"), peer in any::<IpAddr>()) {
            let got = String::from_utf8(append_forwarded_for(existing.as_deref(), peer)).unwrap();
            let want = match existing.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                Some(prev) => format!("{prev}, {peer}"),
                None => peer.to_string(),
            };
            prop_assert_eq!(got, want);
        }

        #[test]
        fn fuzz_canonical_ip_and_net_agree(a in any::<Ipv4Addr>(), n in any::<Ipv4Addr>(), len in 0u8..=32, v6 in any::<Ipv6Addr>()) {
            let mapped = IpAddr::V6(a.to_ipv6_mapped());
            prop_assert_eq!(canonical_ip(mapped), IpAddr::V4(a));
            prop_assert_eq!(canonical_ip(canonical_ip(IpAddr::V6(v6))), canonical_ip(IpAddr::V6(v6)));
            let net4 = Ipv4Net::new(n, len).unwrap().trunc();
            let net6 = IpNet::new(IpAddr::V6(n.to_ipv6_mapped()), len + 96).unwrap().trunc();
            prop_assert_eq!(canonical_net(net6), IpNet::V4(net4));
            prop_assert_eq!(canonical_net(net6).contains(&canonical_ip(mapped)), net4.contains(&a));
            prop_assert_eq!(canonical_net(IpNet::V4(net4)), IpNet::V4(net4));
        }
    }
}
