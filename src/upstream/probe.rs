//! One active health check: TCP connect, one request, read the status line, close.
//!
//! This is nginx_upstream_check_module's `type=http` check (`check_http_send`, one request per
//! connection, only the status line is parsed), with a `Host` header that the seed's
//! `HEAD / HTTP/1.0\r\n\r\n` lacked. HTTP/1.0 and `Connection: close` make the server close the
//! connection, so nothing has to be drained. The whole exchange runs under one deadline.

use std::fmt;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::health::HealthSettings;

/// The status line must arrive within this many bytes (a real one is about 20).
const MAX_STATUS_LINE: usize = 1024;

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    Connect(String),
    Timeout,
    Io(String),
    /// The server closed or sent something that is not an HTTP status line.
    BadResponse(String),
    /// A well-formed answer whose status is not in `alive`.
    Status(u16),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Connect(e) => write!(f, "connect: {e}"),
            ProbeError::Timeout => f.write_str("timed out"),
            ProbeError::Io(e) => write!(f, "i/o: {e}"),
            ProbeError::BadResponse(e) => write!(f, "bad response: {e}"),
            ProbeError::Status(s) => write!(f, "status {s}"),
        }
    }
}

/// The request bytes for one check. `default_host` is the server's address as written.
pub fn request(settings: &HealthSettings, default_host: &str) -> Vec<u8> {
    let host = settings.host.as_deref().unwrap_or(default_host);
    format!(
        "{} {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: graysplit-health-check\r\n\
         Connection: close\r\n\r\n",
        settings.method, settings.path
    )
    .into_bytes()
}

/// The status code of an `HTTP/1.x NNN ...` line, once the line is complete.
/// `Ok(None)`: more bytes are needed.
pub fn parse_status_line(buf: &[u8]) -> Result<Option<u16>, ProbeError> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_STATUS_LINE {
            return Err(ProbeError::BadResponse("status line too long".into()));
        }
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[..end]);
    let mut words = line.split_whitespace();
    let bad =
        || ProbeError::BadResponse(format!("{:?}", line.chars().take(60).collect::<String>()));
    let version = words.next().ok_or_else(bad)?;
    if !version.starts_with("HTTP/") {
        return Err(bad());
    }
    let code = words.next().ok_or_else(bad)?;
    match code.parse::<u16>() {
        Ok(c @ 100..=999) if code.len() == 3 => Ok(Some(c)),
        _ => Err(bad()),
    }
}

/// Runs one check against `addr`. `Ok(status)` only for an alive status.
pub async fn probe(
    addr: SocketAddr,
    request: &[u8],
    settings: &HealthSettings,
) -> Result<u16, ProbeError> {
    let status = tokio::time::timeout(settings.timeout, exchange(addr, request))
        .await
        .map_err(|_| ProbeError::Timeout)??;
    if settings.alive.is_alive(status) {
        Ok(status)
    } else {
        Err(ProbeError::Status(status))
    }
}

async fn exchange(addr: SocketAddr, request: &[u8]) -> Result<u16, ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect(e.kind().to_string()))?;
    // Small writes, one round trip: no need to wait for Nagle.
    let _ = stream.set_nodelay(true);
    stream
        .write_all(request)
        .await
        .map_err(|e| ProbeError::Io(e.to_string()))?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ProbeError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ProbeError::BadResponse(
                "connection closed before the status line".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(status) = parse_status_line(&buf)? {
            return Ok(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    const TEST_TIMEOUT: Duration = Duration::from_secs(2);

    fn settings() -> HealthSettings {
        HealthSettings {
            timeout: TEST_TIMEOUT,
            ..HealthSettings::default()
        }
    }

    #[test]
    fn request_is_a_head_with_host_and_close() {
        let r = String::from_utf8(request(&settings(), "10.0.0.1:8080")).unwrap();
        assert_eq!(
            r,
            "HEAD / HTTP/1.0\r\nHost: 10.0.0.1:8080\r\nUser-Agent: graysplit-health-check\r\n\
             Connection: close\r\n\r\n"
        );
        let mut s = settings();
        s.method = "GET".into();
        s.path = "/healthz".into();
        s.host = Some("www.example.com".into());
        let r = String::from_utf8(request(&s, "ignored")).unwrap();
        assert!(
            r.starts_with("GET /healthz HTTP/1.0\r\nHost: www.example.com\r\n"),
            "{r}"
        );
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Ok(Some(200)));
        assert_eq!(parse_status_line(b"HTTP/1.0 503\r\n"), Ok(Some(503)));
        assert_eq!(parse_status_line(b"HTTP/1.1 20"), Ok(None));
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"HTTP/1.1 abc\r\n",
            b"HTTP/1.1 2000 x\r\n",
            b"\r\n",
        ] {
            assert!(parse_status_line(bad).is_err(), "{bad:?}");
        }
        assert!(parse_status_line(&[b'x'; MAX_STATUS_LINE]).is_err());
    }

    /// A one-shot server answering every connection with `answer` (None: accept and stay silent).
    async fn server(answer: Option<&'static str>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf).await;
                    match answer {
                        Some(a) => {
                            let _ = s.write_all(a.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(5)).await,
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn alive_statuses_pass_and_others_fail() {
        let s = settings();
        let req = request(&s, "x");
        let ok = server(Some("HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n")).await;
        assert_eq!(probe(ok, &req, &s).await, Ok(302));
        let bad = server(Some("HTTP/1.1 503 Service Unavailable\r\n\r\n")).await;
        assert_eq!(probe(bad, &req, &s).await, Err(ProbeError::Status(503)));
        let closed = server(Some("")).await;
        assert!(matches!(
            probe(closed, &req, &s).await,
            Err(ProbeError::BadResponse(_))
        ));
    }

    #[tokio::test]
    async fn silence_times_out_and_a_closed_port_is_a_connect_error() {
        let mut s = settings();
        s.timeout = Duration::from_millis(100);
        let req = request(&s, "x");
        let silent = server(None).await;
        assert_eq!(probe(silent, &req, &s).await, Err(ProbeError::Timeout));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = l.local_addr().unwrap();
        drop(l);
        assert!(matches!(
            probe(closed, &req, &s).await,
            Err(ProbeError::Connect(_))
        ));
    }
}
