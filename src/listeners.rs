//! The public listeners: from the validated `server.listen` list to Pingora endpoints, and, per
//! connection, which listener it came in on.
//!
//! - [`Edge`] holds what the listeners share (table, certificates, PROXY gate), built once.
//! - [`add_endpoints`] turns the list into endpoints of one Pingora [`Listeners`] set: TCP with
//!   `IPV6_V6ONLY` on IPv6 addresses (nginx's default, so `[::]:80` and `0.0.0.0:80` coexist),
//!   TLS through rustls with our SNI resolver (`crate::tls`) and ALPN `h2, http/1.1` (or
//!   `http/1.1` only), and the PROXY protocol gate before the TLS handshake. It takes a bare
//!   [`Listeners`] so that several services (one per core, later) can each be given the same set.
//! - [`Entrypoint`] wraps the HTTP app for plain listeners with the PROXY protocol, which Pingora
//!   has no hook for (its `PreTlsProcess` only runs on TLS endpoints).
//! - [`ListenerTable::find`] tells the request path which listener a connection's local address
//!   belongs to (https redirect, scheme).
//!
//! Every endpoint is an address string Pingora keys its upgrade hand-over (`-u`) on, so all of
//! them are passed to the new process.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use ipnet::IpNet;
use log::{debug, info, warn};
use pingora::apps::ServerApp;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{ListenerConfig, Listeners, PreTlsProcess, TcpSocketOptions};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::{L4BufferSettings, Stream as L4Stream};
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream, ALPN};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::config::Config;
use crate::gray::client_ip;
use crate::proxy::forwarded::canonical_ip;
use crate::proxy_protocol::{self, Proxied, Refused};
use crate::tls::metrics::TlsMetrics;
use crate::tls::reload::{CertReloader, CertStore};
use crate::tls::resolver::SniResolver;

/// One validated `server.listen` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub tls: bool,
    /// Offer HTTP/2 by ALPN (TLS listeners only).
    pub http2: bool,
    /// Expect a PROXY protocol header (v1 or v2) from a trusted balancer first.
    pub proxy_protocol: bool,
    /// Answer plain HTTP with a 308 to https on this port.
    pub https_redirect: Option<u16>,
    pub ipv6_only: bool,
}

/// The listeners, for looking up the one a connection arrived on.
#[derive(Debug, Clone, Default)]
pub struct ListenerTable {
    list: Vec<Listener>,
}

impl ListenerTable {
    pub fn new(list: Vec<Listener>) -> ListenerTable {
        ListenerTable { list }
    }

    pub fn all(&self) -> &[Listener] {
        &self.list
    }

    /// The listener whose socket accepted a connection with local address `local`: the one bound
    /// to exactly that address, else a wildcard on that port (an IPv6 wildcard also takes
    /// IPv4-mapped addresses unless it is `ipv6_only`).
    pub fn find(&self, local: SocketAddr) -> Option<&Listener> {
        let ip = local.ip();
        let port = local.port();
        let on_port = || self.list.iter().filter(move |l| l.addr.port() == port);
        on_port()
            .find(|l| l.addr.ip() == ip)
            .or_else(|| {
                on_port().find(|l| l.addr.ip().is_unspecified() && l.addr.is_ipv4() == ip.is_ipv4())
            })
            .or_else(|| {
                let mapped = matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
                on_port().find(|l| {
                    l.addr.ip().is_unspecified()
                        && l.addr.is_ipv6()
                        && !l.ipv6_only
                        && (ip.is_ipv4() || mapped)
                })
            })
    }

    fn wants_proxy_protocol(&self, local: Option<SocketAddr>) -> bool {
        local
            .and_then(|a| self.find(a))
            .is_some_and(|l| l.proxy_protocol)
    }
}

/// Everything the public listeners need, built from the config once: the listener table, the
/// certificates (loaded and checked now) and the PROXY protocol gate. A service per core (later)
/// can be given the same endpoints by calling [`Edge::add_endpoints`] on each.
pub struct Edge {
    pub table: Arc<ListenerTable>,
    pub certs: Option<Arc<CertStore>>,
    pub gate: Option<Arc<ProxyGate>>,
}

impl Edge {
    /// Loads every certificate when a listener has TLS: any bad pair is an error naming its file
    /// and the reason, one line each.
    pub fn new(config: &Config, registry: &Registry) -> Result<Edge, String> {
        let table = Arc::new(ListenerTable::new(config.server.listen.clone()));
        let certs = if table.all().iter().any(|l| l.tls) {
            let metrics =
                TlsMetrics::new(registry).map_err(|e| format!("cannot set up TLS metrics: {e}"))?;
            let now = crate::pin::unix_now() as i64;
            let store =
                CertStore::load(&config.tls.certificates, metrics, now).map_err(|errors| {
                    let lines: Vec<String> = errors.iter().map(|e| format!("tls: {e}")).collect();
                    lines.join("\n")
                })?;
            Some(Arc::new(store))
        } else {
            None
        };
        let gate = if table.all().iter().any(|l| l.proxy_protocol) {
            let gate = ProxyGate::new(table.clone(), config.gray.trusted_proxies.clone(), registry)
                .map_err(|e| format!("cannot set up PROXY protocol metrics: {e}"))?;
            Some(Arc::new(gate))
        } else {
            None
        };
        Ok(Edge { table, certs, gate })
    }

    /// The background service that reloads the certificates (when there are any).
    pub fn reloader(&self, interval: std::time::Duration) -> Option<CertReloader> {
        let store = self.certs.clone()?;
        Some(CertReloader { store, interval })
    }

    /// `app` behind the PROXY protocol gate of plain listeners.
    pub fn entrypoint<A>(&self, app: A) -> Entrypoint<A> {
        Entrypoint {
            app: Arc::new(app),
            gate: self.gate.clone(),
        }
    }

    pub fn add_endpoints(&self, endpoints: &mut Listeners) -> Result<(), String> {
        let resolver = self.certs.as_ref().map(|c| c.resolver());
        add_endpoints(endpoints, &self.table, resolver.as_ref(), self.gate.clone())
    }

    /// One line per listener (once per process, whatever the number of proxy services).
    pub fn log_listeners(&self) {
        for l in self.table.all() {
            info!(
                "listening on {}{}{}{}{}",
                l.addr,
                if l.tls { " tls" } else { "" },
                if l.http2 { " h2" } else { "" },
                if l.proxy_protocol {
                    " proxy_protocol"
                } else {
                    ""
                },
                match l.https_redirect {
                    Some(p) => format!(" (308 to https port {p})"),
                    None => String::new(),
                }
            );
        }
    }

    /// Every listening socket as [`crate::per_core`] binds it: the address as Pingora keys it
    /// (the same string [`add_endpoints`] gives), with the options that matter when binding.
    pub fn socket_specs(&self) -> Vec<crate::per_core::SocketSpec> {
        self.table
            .all()
            .iter()
            .map(|l| crate::per_core::SocketSpec {
                addr: l.addr.to_string(),
                options: socket_options(l),
            })
            .collect()
    }
}

/// A plain connection's buffers: no read buffer, Pingora's 1,460-byte write buffer.
///
/// Pingora gives every accepted connection a 64 KiB read buffer, zero-filled when it is
/// allocated (tokio's `BufReader`), in front of reads that are its own 4 KiB-and-growing head
/// buffer or a body chunk: 500 keep-alive connections hold 32 MiB of it for bytes that are
/// copied twice. Unbuffered, a read lands where Pingora wants it (tokio's `BufReader` passes a
/// read through when it has nothing buffered and a capacity of 0). TLS listeners keep Pingora's
/// default: there the TLS library reads records through it.
fn plain_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(0)
}

/// The socket options of a listener (IPv6: `IPV6_V6ONLY` as configured).
fn socket_options(l: &Listener) -> Option<TcpSocketOptions> {
    l.addr.is_ipv6().then(|| {
        let mut opts = TcpSocketOptions::default();
        opts.ipv6_only = Some(l.ipv6_only);
        opts
    })
}

/// Adds every listener of `table` to `endpoints`. `resolver` is required when a listener has TLS.
pub fn add_endpoints(
    endpoints: &mut Listeners,
    table: &ListenerTable,
    resolver: Option<&Arc<SniResolver>>,
    gate: Option<Arc<ProxyGate>>,
) -> Result<(), String> {
    for l in table.all() {
        let mut config = ListenerConfig::tcp(l.addr.to_string());
        if !l.tls {
            config = config.l4_buffer(plain_buffers());
        }
        if let Some(opts) = socket_options(l) {
            config = config.tcp_socket_options(opts);
        }
        if l.tls {
            let resolver = resolver.ok_or_else(|| {
                format!(
                    "listener {}: tls = true but no certificate is loaded",
                    l.addr
                )
            })?;
            // The paths are never read: with a resolver set, Pingora's build() uses only it.
            let mut tls = TlsSettings::intermediate("", "")
                .map_err(|e| format!("listener {}: {e}", l.addr))?;
            tls.set_cert_resolver(resolver.clone());
            tls.set_alpn(if l.http2 { ALPN::H2H1 } else { ALPN::H1 });
            config = config.tls(tls);
        }
        endpoints.add_listener(config);
    }
    if let Some(gate) = gate {
        // Runs on every TLS endpoint; the gate itself skips those without proxy_protocol.
        endpoints.set_pre_tls_callback(gate);
    }
    Ok(())
}

/// Reads the PROXY protocol header on the listeners that expect one, from trusted peers only.
pub struct ProxyGate {
    table: Arc<ListenerTable>,
    trusted: Vec<IpNet>,
    refused: IntCounterVec,
    /// Reasons already logged at warn: the first refusal of each kind is worth a log line (a
    /// balancer missing from trusted_proxies refuses everything), the rest only count.
    warned: parking_lot::Mutex<Vec<&'static str>>,
}

impl ProxyGate {
    pub fn new(
        table: Arc<ListenerTable>,
        trusted: Vec<IpNet>,
        registry: &Registry,
    ) -> prometheus::Result<ProxyGate> {
        let refused = IntCounterVec::new(
            Opts::new(
                "graysplit_proxy_protocol_refused_total",
                "Connections closed on a proxy_protocol listener (untrusted peer, bad header, timeout).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        Ok(ProxyGate {
            table,
            trusted,
            refused,
            warned: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// On a listener with `proxy_protocol`: checks the peer, reads the header, and makes its
    /// source the connection's peer address. Elsewhere: nothing.
    async fn admit<S>(&self, stream: &mut S, fd: i32) -> Result<(), Refused>
    where
        S: tokio::io::AsyncRead + GetSocketDigest + Unpin + Send + ?Sized,
    {
        let digest = stream.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr())
            .and_then(PingoraAddr::as_inet)
            .copied();
        if !self.table.wants_proxy_protocol(local) {
            return Ok(());
        }
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr())
            .and_then(PingoraAddr::as_inet)
            .map(|a| canonical_ip(a.ip()));
        let result = match peer {
            Some(ip) if client_ip::is_trusted(ip, &self.trusted) => {
                proxy_protocol::read(stream).await
            }
            Some(ip) => Err(Refused::Untrusted(ip)),
            None => Err(Refused::Malformed("the peer has no IP address".into())),
        };
        match result {
            Ok(Proxied::Client(client)) => {
                // A fresh digest: its peer is the client, its local address stays the socket's
                // (so the listener lookup still finds this listener).
                let d = SocketDigest::from_raw_fd(fd);
                let _ = d.peer_addr.set(Some(PingoraAddr::Inet(client)));
                stream.set_socket_digest(d);
                Ok(())
            }
            Ok(Proxied::Local) => Ok(()),
            Err(e) => {
                self.refused.with_label_values(&[e.label()]).inc();
                let first = {
                    let mut w = self.warned.lock();
                    let first = !w.contains(&e.label());
                    if first {
                        w.push(e.label());
                    }
                    first
                };
                if first {
                    warn!(
                        "proxy_protocol: closing a connection: {e} (further ones are only \
                         counted: graysplit_proxy_protocol_refused_total{{reason=\"{}\"}})",
                        e.label()
                    );
                } else {
                    debug!("proxy_protocol: closing a connection: {e}");
                }
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait]
impl PreTlsProcess for ProxyGate {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let fd = stream.as_raw_fd();
        self.admit(stream, fd)
            .await
            .map_err(|e| pingora::Error::explain(pingora::ErrorType::AcceptError, e.to_string()))
    }
}

/// The HTTP app behind the public listeners: on a plain listener with `proxy_protocol`, the
/// header is read before the app sees the connection (TLS listeners read it in [`ProxyGate`],
/// before the handshake).
pub struct Entrypoint<A> {
    pub app: Arc<A>,
    pub gate: Option<Arc<ProxyGate>>,
}

#[async_trait::async_trait]
impl<A> ServerApp for Entrypoint<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if let Some(gate) = self
            .gate
            .as_ref()
            .filter(|_| stream.get_ssl_digest().is_none())
        {
            let fd = stream
                .as_any()
                .downcast_ref::<L4Stream>()
                .map(AsRawFd::as_raw_fd)?;
            gate.admit(&mut *stream, fd).await.ok()?;
        }
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(addr: &str) -> Listener {
        let addr: SocketAddr = addr.parse().unwrap();
        Listener {
            addr,
            tls: false,
            http2: false,
            proxy_protocol: false,
            https_redirect: None,
            ipv6_only: addr.is_ipv6(),
        }
    }

    #[test]
    fn a_connection_finds_its_listener() {
        let mut dual = l("[::]:8080");
        dual.ipv6_only = false;
        let t = ListenerTable::new(vec![
            l("0.0.0.0:80"),
            l("127.0.0.1:80"),
            l("[::]:80"),
            l("[::1]:443"),
            dual,
        ]);
        let find = |a: &str| t.find(a.parse().unwrap()).map(|l| l.addr.to_string());
        assert_eq!(
            find("127.0.0.1:80").as_deref(),
            Some("127.0.0.1:80"),
            "exact first"
        );
        assert_eq!(find("10.1.2.3:80").as_deref(), Some("0.0.0.0:80"));
        assert_eq!(find("[2001:db8::1]:80").as_deref(), Some("[::]:80"));
        assert_eq!(find("[::1]:443").as_deref(), Some("[::1]:443"));
        assert_eq!(find("127.0.0.1:443"), None);
        assert_eq!(
            find("[::ffff:10.0.0.1]:8080").as_deref(),
            Some("[::]:8080"),
            "dual-stack"
        );
        assert_eq!(find("10.0.0.1:8080").as_deref(), Some("[::]:8080"));
        assert_eq!(find("10.0.0.1:81"), None);
    }
}
