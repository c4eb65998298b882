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

/// Resolves the client address of one request from its headers. Nothing is copied: several
/// `X-Forwarded-For` headers are walked in place, as one list (RFC 9110 §5.3 allows splitting a
/// list across headers), and only when the peer is trusted.
pub fn resolve_headers(
    peer: IpAddr,
    headers: &http::HeaderMap,
    trusted: &[IpNet],
    header: ClientIpHeader,
) -> IpAddr {
    let forwarded_for = headers.get_all(&crate::header_names::X_FORWARDED_FOR);
    let xff = forwarded_for.iter().map(http::HeaderValue::as_bytes);
    resolve_from(
        peer,
        headers
            .get(&crate::header_names::X_REAL_IP)
            .map(http::HeaderValue::as_bytes),
        (forwarded_for.iter().next().is_some()).then_some(xff),
        trusted,
        header,
    )
}

/// Resolves the client address from one `X-Real-IP` and one `X-Forwarded-For` value.
pub fn resolve(
    peer: IpAddr,
    x_real_ip: Option<&[u8]>,
    x_forwarded_for: Option<&[u8]>,
    trusted: &[IpNet],
    header: ClientIpHeader,
) -> IpAddr {
    resolve_from(
        peer,
        x_real_ip,
        x_forwarded_for.map(std::iter::once),
        trusted,
        header,
    )
}

/// `x_forwarded_for`: the values of every XFF header, in order (`None`: no such header).
fn resolve_from<'a>(
    peer: IpAddr,
    x_real_ip: Option<&[u8]>,
    x_forwarded_for: Option<impl DoubleEndedIterator<Item = &'a [u8]>>,
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

/// `ip` is canonical, so an IPv4 address is also looked up in its IPv4-mapped form: an IPv6
/// network in `trusted_proxies` that holds `::ffff:10.0.0.1` (`::ffff:10.0.0.0/104`, `::/0`)
/// trusts that peer, which is `10.0.0.1` by then.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let mapped = match ip {
        IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
        IpAddr::V6(_) => None,
    };
    trusted
        .iter()
        .any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
}

/// Right to left (the last header first): skip trusted hops; the first untrusted hop is the
/// client. If every hop is trusted, the leftmost is the best we know. Any garbage hop on the way
/// voids the header.
fn walk_forwarded_for<'a>(
    values: impl DoubleEndedIterator<Item = &'a [u8]>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let mut leftmost = None;
    for value in values.rev() {
        let text = std::str::from_utf8(value).ok()?;
        for hop in text.rsplit(',') {
            let ip = parse_ip(hop.as_bytes())?;
            if !is_trusted(ip, trusted) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
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
    fn several_forwarded_for_headers_are_one_list() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let mut h = http::HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1, 198.51.100.7".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
        h.insert("x-real-ip", "5.5.5.5".parse().unwrap());
        assert_eq!(
            resolve_headers(ip("127.0.0.1"), &h, &trusted, XFF),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve_headers(ip("203.0.113.1"), &h, &trusted, XFF),
            ip("203.0.113.1"),
            "an untrusted peer's headers are not read"
        );
        h.remove("x-forwarded-for");
        assert_eq!(
            resolve_headers(ip("127.0.0.1"), &h, &trusted, XFF),
            ip("5.5.5.5"),
            "no XFF: X-Real-IP"
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
    fn mapped_trusted_networks_trust_mapped_peers() {
        let trusted = nets(&["::ffff:10.0.0.0/104"]);
        let got = resolve(
            ip("::ffff:10.1.2.3"),
            Some(b"198.51.100.7"),
            None,
            &trusted,
            XFF,
        );
        assert_eq!(got, ip("198.51.100.7"));
        assert_eq!(
            resolve(ip("10.1.2.3"), Some(b"198.51.100.7"), None, &trusted, XFF),
            ip("198.51.100.7")
        );
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

/// Property tests (`cargo test --lib fuzz_`; `PROPTEST_CASES=1000000` for the long run).
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const XFF: ClientIpHeader = ClientIpHeader::XForwardedFor;

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<Ipv4Addr>().prop_map(IpAddr::V4),
            any::<Ipv6Addr>().prop_map(IpAddr::V6),
            // IPv4-mapped IPv6, which proxies on dual-stack sockets write.
            any::<Ipv4Addr>().prop_map(|v4| IpAddr::V6(v4.to_ipv6_mapped())),
        ]
    }

    /// Networks of every prefix length, normalised.
    fn net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<Ipv4Addr>(), 0u8..=32)
                .prop_map(|(a, l)| IpNet::new(IpAddr::V4(a), l).unwrap().trunc()),
            (any::<Ipv6Addr>(), 0u8..=128)
                .prop_map(|(a, l)| IpNet::new(IpAddr::V6(a), l).unwrap().trunc()),
            (8u8..=32).prop_map(|l| IpNet::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), l)
                .unwrap()
                .trunc()),
        ]
    }

    /// An address inside `net`.
    fn inside(net: IpNet, bits: u128) -> IpAddr {
        match net {
            IpNet::V4(n) => {
                let host = (bits as u32) & !u32::from(n.netmask());
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
            }
            IpNet::V6(n) => {
                let host = bits & !u128::from(n.netmask());
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
        }
    }

    /// One address in any way proxies write it.
    fn written(ip: IpAddr, style: u8, port: u16) -> String {
        let s = match (style % 5, ip) {
            (0, _) => ip.to_string(),
            (1, IpAddr::V4(v4)) => format!("{v4}:{port}"),
            (1, IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            (2, IpAddr::V6(v6)) => format!("[{v6}]"),
            (3, _) => format!("\"{ip}\""),
            (4, IpAddr::V4(v4)) => v4.to_ipv6_mapped().to_string(),
            _ => ip.to_string(),
        };
        match style / 5 % 4 {
            0 => s,
            1 => format!(" {s}"),
            2 => format!("{s} "),
            _ => format!("\t{s}  "),
        }
    }

    #[derive(Debug, Clone)]
    enum Hop {
        Addr(IpAddr, u8, u16),
        Garbage(String),
    }

    fn hop(trusted: Vec<IpNet>) -> impl Strategy<Value = Hop> {
        let pick = prop::sample::select(trusted);
        prop_oneof![
            3 => (ip(), any::<u8>(), any::<u16>()).prop_map(|(a, s, p)| Hop::Addr(a, s, p)),
            3 => (pick, any::<u128>(), any::<u8>(), any::<u16>())
                .prop_map(|(n, bits, s, p)| Hop::Addr(inside(n, bits), s, p)),
            1 => prop_oneof![
                Just("unknown".to_string()),
                Just(String::new()),
                "[a-z<>;]{1,10}",
                (any::<Ipv4Addr>()).prop_map(|a| format!("{a}.9")),
                (any::<Ipv4Addr>()).prop_map(|a| format!("{a}:99999")),
                "[0-9a-f:]{3,40}:[0-9a-f:]{1,9}::[0-9a-f:]{1,9}::",
            ].prop_map(Hop::Garbage),
        ]
    }

    fn scenario() -> impl Strategy<Value = (Vec<IpNet>, Vec<Hop>, IpAddr)> {
        proptest::collection::vec(net(), 1..4).prop_flat_map(|trusted| {
            let peer = (prop::sample::select(trusted.clone()), any::<u128>())
                .prop_map(|(n, bits)| inside(n, bits));
            (
                Just(trusted.clone()),
                proptest::collection::vec(hop(trusted), 0..8),
                peer,
            )
        })
    }

    /// A network trusts an address written either way (IPv4 or IPv4-mapped IPv6).
    fn trusts(trusted: &[IpNet], ip: IpAddr) -> bool {
        let forms = match ip {
            IpAddr::V4(v4) => vec![ip, IpAddr::V6(v4.to_ipv6_mapped())],
            IpAddr::V6(v6) => vec![ip, v6.to_ipv4_mapped().map_or(ip, IpAddr::V4)],
        };
        trusted.iter().any(|n| forms.iter().any(|f| n.contains(f)))
    }

    /// The reference: right to left, a garbage hop voids the header, the first untrusted hop is
    /// the client, all trusted gives the leftmost.
    fn model(hops: &[Hop], trusted: &[IpNet]) -> Option<IpAddr> {
        let mut leftmost = None;
        for h in hops.iter().rev() {
            let Hop::Addr(ip, _, _) = h else { return None };
            let ip = canonical_ip(*ip);
            if !trusts(trusted, ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
        leftmost
    }

    fn join(hops: &[Hop]) -> String {
        hops.iter()
            .map(|h| match h {
                Hop::Addr(ip, style, port) => written(*ip, *style, *port),
                Hop::Garbage(g) => g.clone(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    proptest! {
        /// Behind trusted proxies the client is exactly the rightmost untrusted hop (a hop to its
        /// left is never returned: the client may have written it), or the peer.
        #[test]
        fn fuzz_forwarded_for_gives_the_first_untrusted_hop_from_the_right(
            (trusted, hops, peer) in scenario(),
            real_ip in proptest::option::of(ip()),
        ) {
            let xff = join(&hops);
            let real = real_ip.map(|ip| ip.to_string());
            let got = resolve(peer, real.as_deref().map(str::as_bytes), Some(xff.as_bytes()), &trusted, XFF);
            let want = if hops.is_empty() { None } else { model(&hops, &trusted) };
            prop_assert_eq!(got, want.unwrap_or(canonical_ip(peer)), "XFF {:?}", xff);
        }

        /// A peer outside `trusted_proxies` is the client, whatever it sends.
        #[test]
        fn fuzz_untrusted_peer_is_always_the_client(
            trusted in proptest::collection::vec(net(), 0..4),
            peer in ip(),
            real_ip in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            xff in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..128)),
            real_only in any::<bool>(),
        ) {
            let peer_c = canonical_ip(peer);
            // Only networks that do not hold the peer.
            let trusted: Vec<IpNet> =
                trusted.into_iter().filter(|n| !trusts(&[*n], peer_c)).collect();
            let which = if real_only { ClientIpHeader::XRealIp } else { XFF };
            prop_assert_eq!(resolve(peer, real_ip.as_deref(), xff.as_deref(), &trusted, which), peer_c);
        }

        /// Arbitrary header bytes (invalid UTF-8 included): the answer is the peer or an address
        /// that the header itself holds, and always canonical.
        #[test]
        fn fuzz_header_bytes_give_the_peer_or_an_address_from_the_header(
            trusted in proptest::collection::vec(net(), 0..3),
            peer in ip(),
            real_ip in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            xff in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..128)),
            real_only in any::<bool>(),
        ) {
            let which = if real_only { ClientIpHeader::XRealIp } else { XFF };
            let mut everyone = trusted.clone();
            everyone.push("0.0.0.0/0".parse().unwrap());
            everyone.push("::/0".parse().unwrap());
            for nets in [&trusted, &everyone] {
                let got = resolve(peer, real_ip.as_deref(), xff.as_deref(), nets, which);
                prop_assert_eq!(got, canonical_ip(got));
                let from_header = |raw: &Option<Vec<u8>>| {
                    raw.as_deref()
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .is_some_and(|t| t.split(',').any(|h| parse_ip(h.as_bytes()) == Some(got)))
                };
                prop_assert!(
                    got == canonical_ip(peer) || from_header(&xff) || from_header(&real_ip),
                    "{:?} from peer {} real {:?} xff {:?}", got, peer, real_ip, xff
                );
            }
        }

        /// The same hops split across several X-Forwarded-For headers give the same client as
        /// one joined header.
        #[test]
        fn fuzz_split_forwarded_for_headers_equal_one_list(
            (trusted, hops, peer) in scenario(),
            cuts in proptest::collection::vec(any::<usize>(), 0..4),
        ) {
            if hops.is_empty() {
                return Ok(());
            }
            let mut bounds: Vec<usize> = cuts.iter().map(|c| 1 + c % hops.len()).collect();
            bounds.push(hops.len());
            bounds.sort();
            bounds.dedup();
            let mut h = http::HeaderMap::new();
            let mut from = 0;
            for to in bounds {
                if let Ok(v) = http::HeaderValue::from_str(&join(&hops[from..to])) {
                    h.append("x-forwarded-for", v);
                }
                from = to;
            }
            let joined: Vec<&[u8]> = h.get_all("x-forwarded-for").iter().map(|v| v.as_bytes()).collect();
            let joined = joined.join(&b", "[..]);
            prop_assert_eq!(
                resolve_headers(peer, &h, &trusted, XFF),
                resolve(peer, None, Some(&joined), &trusted, XFF)
            );
        }

        /// Every spelling of an address parses to the address (mapped IPv6 as IPv4).
        #[test]
        fn fuzz_written_addresses_parse_back(a in ip(), style in any::<u8>(), port in any::<u16>()) {
            prop_assert_eq!(parse_ip(written(a, style, port).as_bytes()), Some(canonical_ip(a)));
        }

        /// X-Real-IP mode reads X-Real-IP only.
        #[test]
        fn fuzz_real_ip_mode_ignores_forwarded_for(
            (trusted, hops, peer) in scenario(),
            real in ip(), style in any::<u8>(), port in any::<u16>(),
        ) {
            let xff = join(&hops);
            let text = written(real, style, port);
            let got = resolve(peer, Some(text.as_bytes()), Some(xff.as_bytes()), &trusted,
                              ClientIpHeader::XRealIp);
            prop_assert_eq!(got, canonical_ip(real));
        }
    }
}
