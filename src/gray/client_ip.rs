//! Who is the client? The direct peer, unless the peer is a trusted proxy; then the address its
//! forwarding headers name.
//!
//! The seed's Lua believed any `X-Real-IP` a browser sent, so anyone could pick the gray build
//! by sending one header. Here headers count only when the direct peer is inside
//! `trusted_proxies`, and `X-Forwarded-For` is walked right to left past trusted hops (nginx's
//! `real_ip_recursive on`): the first untrusted hop is the client, because every hop to its right
//! was appended by a proxy we trust. Anything unparsable means "no usable header": the peer
//! address is used, never an error.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::proxy::forwarded::canonical_ip;

/// Which header names the client when the peer is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For`, walked right to left; `X-Real-IP` only when there is no XFF.
    XForwardedFor,
    /// `X-Real-IP` only (for a front proxy that overwrites it with `$remote_addr`).
    XRealIp,
}

/// Resolves the client address of one request.
pub fn resolve(
    peer: IpAddr,
    x_real_ip: Option<&[u8]>,
    x_forwarded_for: Option<&[u8]>,
    trusted: &[IpNet],
    header: ClientIpHeader,
) -> IpAddr {
    let peer = canonical_ip(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let from_real_ip = || x_real_ip.and_then(parse_ip);
    let found = match header {
        ClientIpHeader::XRealIp => from_real_ip(),
        ClientIpHeader::XForwardedFor => match x_forwarded_for {
            Some(xff) => walk_forwarded_for(xff, trusted),
            None => from_real_ip(),
        },
    };
    found.unwrap_or(peer)
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// Right to left: skip trusted hops; the first untrusted hop is the client. If every hop is
/// trusted, the leftmost is the best we know. Any garbage hop on the way voids the header.
fn walk_forwarded_for(xff: &[u8], trusted: &[IpNet]) -> Option<IpAddr> {
    let text = std::str::from_utf8(xff).ok()?;
    let mut leftmost = None;
    for hop in text.rsplit(',') {
        let ip = parse_ip(hop.as_bytes())?;
        if !is_trusted(ip, trusted) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

/// One address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`,
/// optionally quoted. IPv4-mapped IPv6 becomes IPv4.
pub fn parse_ip(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw).ok()?.trim().trim_matches('"');
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            text.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|v6| v6.parse().ok())
        })?;
    Some(canonical_ip(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const XFF: ClientIpHeader = ClientIpHeader::XForwardedFor;

    #[test]
    fn untrusted_peer_cannot_choose_its_address() {
        let trusted = nets(&["127.0.0.0/8"]);
        let got = resolve(
            ip("203.0.113.9"),
            Some(b"10.1.1.1"),
            Some(b"10.1.1.1"),
            &trusted,
            XFF,
        );
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn trusted_peer_forwarded_for_is_walked_right_to_left() {
        let trusted = nets(&["127.0.0.0/8", "10.0.0.0/8"]);
        // client spoofs 1.1.1.1 at the left; 198.51.100.7 is who reached our trusted LB.
        let got = resolve(
            ip("127.0.0.1"),
            None,
            Some(b"1.1.1.1, 198.51.100.7, 10.0.0.2"),
            &trusted,
            XFF,
        );
        assert_eq!(got, ip("198.51.100.7"));
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        let got = resolve(
            ip("127.0.0.1"),
            None,
            Some(b"10.0.0.5, 10.0.0.6"),
            &trusted,
            XFF,
        );
        assert_eq!(got, ip("10.0.0.5"));
    }

    #[test]
    fn real_ip_is_used_without_forwarded_for_or_when_chosen() {
        let trusted = nets(&["127.0.0.1/32"]);
        assert_eq!(
            resolve(
                ip("127.0.0.1"),
                Some(b"192.168.93.182"),
                None,
                &trusted,
                XFF
            ),
            ip("192.168.93.182")
        );
        let real = ClientIpHeader::XRealIp;
        assert_eq!(
            resolve(
                ip("127.0.0.1"),
                Some(b"192.168.93.182"),
                Some(b"5.5.5.5"),
                &trusted,
                real
            ),
            ip("192.168.93.182")
        );
    }

    #[test]
    fn garbage_falls_back_to_the_peer() {
        let trusted = nets(&["127.0.0.1/32"]);
        let peer = ip("127.0.0.1");
        for xff in [
            &b"unknown"[..],
            b"1.2.3.4, nope",
            b"",
            b"\xff\xfe",
            b"1.2.3.4.5",
            b",,",
        ] {
            assert_eq!(
                resolve(peer, None, Some(xff), &trusted, XFF),
                peer,
                "{xff:?}"
            );
        }
        assert_eq!(resolve(peer, Some(b"<script>"), None, &trusted, XFF), peer);
    }

    #[test]
    fn addresses_are_normalised() {
        assert_eq!(
            parse_ip(b"::ffff:192.168.93.182"),
            Some(ip("192.168.93.182"))
        );
        assert_eq!(parse_ip(b"1.2.3.4:5678"), Some(ip("1.2.3.4")));
        assert_eq!(parse_ip(b"[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_ip(b"[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_ip(b"\"2001:DB8::1\""), Some(ip("2001:db8::1")));
        let trusted = nets(&["::1/128"]);
        assert_eq!(
            resolve(
                ip("::ffff:127.0.0.1"),
                None,
                None,
                &nets(&["127.0.0.0/8"]),
                XFF
            ),
            ip("127.0.0.1")
        );
        assert_eq!(
            resolve(ip("::1"), None, Some(b"2001:db8::7"), &trusted, XFF),
            ip("2001:db8::7")
        );
    }
}
