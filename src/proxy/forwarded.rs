//! The headers nginx's seed config sets on proxied requests, as pure functions:
//!
//! ```nginx
//! proxy_set_header Host $host;
//! proxy_set_header X-Real-IP $remote_addr;
//! proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
//! ```

use std::net::IpAddr;

/// nginx's `$host`: the request's host name, lower-cased, without the port. `None` when the
/// request carries no usable host (nginx would then use `server_name`; we leave Host untouched).
pub fn host_without_port(host_header: &str) -> Option<String> {
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
    Some(name.to_ascii_lowercase())
}

/// nginx's `$proxy_add_x_forwarded_for`: the client's `X-Forwarded-For` with the peer appended.
pub fn append_forwarded_for(existing: Option<&str>, peer: IpAddr) -> String {
    match existing.map(str::trim).filter(|s| !s.is_empty()) {
        Some(prev) => format!("{prev}, {peer}"),
        None => peer.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(append_forwarded_for(None, peer), "10.0.0.9");
        assert_eq!(append_forwarded_for(Some("  "), peer), "10.0.0.9");
        assert_eq!(
            append_forwarded_for(Some("1.2.3.4, 5.6.7.8"), peer),
            "1.2.3.4, 5.6.7.8, 10.0.0.9"
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
