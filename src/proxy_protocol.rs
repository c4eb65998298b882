//! The PROXY protocol (HAProxy's spec, v1 text and v2 binary) on a listener behind an L4 load
//! balancer: the header the balancer sends before anything else names the real client, which
//! then becomes the connection's peer address for everything above (the gray decision's IP
//! whitelist and percent bucket, `X-Forwarded-For` / `X-Real-IP` upstream, the access log).
//!
//! Reading takes exactly the header's bytes from the stream (v1: up to its CRLF, at most 107
//! bytes; v2: 16 bytes, then the length they announce), so the request that follows is untouched.
//! Parsing is the `ppp` crate's. `LOCAL` (v2) and `UNKNOWN` (v1) headers, which balancers send for
//! their own health checks, keep the socket's address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest v1 header, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;
/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Largest v2 address + TLV block we accept: addresses are at most 216 bytes; the rest is room
/// for the TLVs balancers add (AWS, GCP: well under 1 KiB).
const V2_MAX_LEN: usize = 4096;
/// How long a trusted balancer may take to send its header (nginx's proxy_protocol_timeout is
/// 30 s; balancers send it with the first segment).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// The real client's address.
    Client(SocketAddr),
    /// `LOCAL` / `UNKNOWN` (or a Unix-socket source): the connection is the balancer's own.
    Local,
}

/// Why a connection on a PROXY-protocol listener was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The peer is not in `trusted_proxies`: anyone else could claim any address.
    Untrusted(IpAddr),
    /// Not a PROXY header, a broken one, or the stream ended inside it.
    Malformed(String),
    Timeout,
}

impl Refused {
    /// For the metric's `reason` label.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Untrusted(_) => "untrusted",
            Refused::Malformed(_) => "malformed",
            Refused::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Untrusted(ip) => write!(
                f,
                "peer {ip} is not in gray.trusted_proxies, so its PROXY header is not believed"
            ),
            Refused::Malformed(why) => write!(f, "bad PROXY protocol header: {why}"),
            Refused::Timeout => write!(f, "no PROXY protocol header within {HEADER_TIMEOUT:?}"),
        }
    }
}

/// Reads one header from `s`, taking exactly its bytes.
pub async fn read<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> Result<Proxied, Refused> {
    match tokio::time::timeout(HEADER_TIMEOUT, read_header(s)).await {
        Ok(r) => r,
        Err(_) => Err(Refused::Timeout),
    }
}

async fn read_header<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> Result<Proxied, Refused> {
    let io =
        |e: std::io::Error| Refused::Malformed(format!("stream ended inside the header ({e})"));
    // 6 bytes tell the versions apart and are shorter than the shortest header
    // ("PROXY UNKNOWN\r\n" is 15), so nothing past a header is ever read here.
    let mut buf = vec![0u8; 6];
    s.read_exact(&mut buf).await.map_err(io)?;
    if buf.as_slice() == b"PROXY " {
        loop {
            if buf.len() >= V1_MAX {
                return Err(Refused::Malformed(format!(
                    "a v1 header longer than {V1_MAX} bytes"
                )));
            }
            let b = s.read_u8().await.map_err(io)?;
            buf.push(b);
            if b == b'\n' {
                break;
            }
        }
    } else if buf.as_slice() == &V2_SIGNATURE[..6] {
        buf.resize(16, 0);
        s.read_exact(&mut buf[6..]).await.map_err(io)?;
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > V2_MAX_LEN {
            return Err(Refused::Malformed(format!(
                "a v2 header announcing {len} bytes (at most {V2_MAX_LEN})"
            )));
        }
        buf.resize(16 + len, 0);
        s.read_exact(&mut buf[16..]).await.map_err(io)?;
    } else {
        return Err(Refused::Malformed(
            "the connection did not start with a PROXY protocol header".into(),
        ));
    }
    parse(&buf).map_err(Refused::Malformed)
}

/// Parses one complete header (v1 or v2).
pub fn parse(header: &[u8]) -> Result<Proxied, String> {
    use ppp::{v1, v2, HeaderResult};
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => {
                Proxied::Client(SocketAddr::from((a.source_address, a.source_port)))
            }
            v1::Addresses::Tcp6(a) => {
                Proxied::Client(SocketAddr::from((a.source_address, a.source_port)))
            }
            v1::Addresses::Unknown => Proxied::Local,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (v2::Command::Local, _) => Proxied::Local,
            (_, v2::Addresses::IPv4(a)) => {
                Proxied::Client(SocketAddr::from((a.source_address, a.source_port)))
            }
            (_, v2::Addresses::IPv6(a)) => {
                Proxied::Client(SocketAddr::from((a.source_address, a.source_port)))
            }
            (_, v2::Addresses::Unix(_) | v2::Addresses::Unspecified) => Proxied::Local,
        }),
        HeaderResult::V1(Err(e)) => Err(format!("v1: {e}")),
        HeaderResult::V2(Err(e)) => Err(format!("v2: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2;

    fn v2_header(command: v2::Command, src: SocketAddr, dst: SocketAddr, tlv: bool) -> Vec<u8> {
        let addresses: v2::Addresses = match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                v2::IPv4::new(*s.ip(), *d.ip(), s.port(), d.port()).into()
            }
            (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                v2::IPv6::new(*s.ip(), *d.ip(), s.port(), d.port()).into()
            }
            _ => unreachable!(),
        };
        let vc = v2::Version::Two | command;
        let mut b = v2::Builder::with_addresses(vc, v2::Protocol::Stream, addresses);
        if tlv {
            b = b.write_tlv(v2::Type::Authority, b"example.com").unwrap();
        }
        b.build().unwrap()
    }

    async fn read_all(bytes: &[u8]) -> (Result<Proxied, Refused>, Vec<u8>) {
        let mut s = bytes;
        let r = read(&mut s).await;
        (r, s.to_vec())
    }

    #[tokio::test]
    async fn v1_and_v2_name_the_client_and_leave_the_request() {
        let src: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let mut input = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n".to_vec();
        let (r, rest) = read_all(&input).await;
        assert_eq!(r, Ok(Proxied::Client(src)));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        input = v2_header(v2::Command::Proxy, src, dst, true);
        input.extend_from_slice(b"\x16\x03\x01");
        let (r, rest) = read_all(&input).await;
        assert_eq!(r, Ok(Proxied::Client(src)));
        assert_eq!(
            rest, b"\x16\x03\x01",
            "the TLS ClientHello that follows is untouched"
        );

        let v6: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let dst6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let (r, _) = read_all(&v2_header(v2::Command::Proxy, v6, dst6, false)).await;
        assert_eq!(r, Ok(Proxied::Client(v6)));
        let (r, _) = read_all(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n").await;
        assert_eq!(r, Ok(Proxied::Client(v6)));
    }

    #[tokio::test]
    async fn local_and_unknown_keep_the_socket_address() {
        let a: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let (r, rest) = read_all(b"PROXY UNKNOWN\r\nGET").await;
        assert_eq!((r, rest.as_slice()), (Ok(Proxied::Local), &b"GET"[..]));
        let (r, _) = read_all(&v2_header(v2::Command::Local, a, a, false)).await;
        assert_eq!(r, Ok(Proxied::Local));
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
            b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x01\x02",
            b"\x16\x03\x01\x02\x00\x01",
            b"PRO",
        ] {
            let (r, _) = read_all(bad).await;
            assert!(matches!(r, Err(Refused::Malformed(_))), "{bad:?}: {r:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out() {
        let (_keep, mut rx) = tokio::io::duplex(64);
        assert_eq!(read(&mut rx).await, Err(Refused::Timeout));
    }
}

/// Property tests (`cargo test --lib fuzz_`; `PROPTEST_CASES=1000000` for the long run).
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes: no panic, never more than a header consumed, and whatever follows a
        /// header that parsed is left exactly as it was.
        #[test]
        fn fuzz_any_bytes_never_overread(
            head in prop_oneof![
                Just(b"PROXY ".to_vec()),
                Just(b"\r\n\r\n\0\r\nQUIT\n".to_vec()),
                Just(Vec::new()),
            ],
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let input = [head, body].concat();
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let mut s = input.as_slice();
            let r = rt.block_on(read(&mut s));
            let consumed = input.len() - s.len();
            if r.is_ok() {
                prop_assert!(consumed <= 16 + V2_MAX_LEN);
                prop_assert!(input[..consumed].ends_with(b"\n") || input.starts_with(b"\r\n\r\n\0\r\nQUIT\n"));
            }
        }

        /// Every v1 TCP4 header as a balancer writes it names its source.
        #[test]
        fn fuzz_v1_tcp4_roundtrip(src in any::<std::net::Ipv4Addr>(), dst in any::<std::net::Ipv4Addr>(), sp in 1u16.., dp in 1u16.., rest in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut input = format!("PROXY TCP4 {src} {dst} {sp} {dp}\r\n").into_bytes();
            input.extend_from_slice(&rest);
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let mut s = input.as_slice();
            let r = rt.block_on(read(&mut s));
            prop_assert_eq!(r, Ok(Proxied::Client(SocketAddr::from((src, sp)))));
            prop_assert_eq!(s, rest.as_slice());
        }
    }
}
