//! The floor graysplit builds on: a bare Pingora 0.9.1 HTTP proxy with the same Pingora features
//! and allocator as graysplit, round robin over fixed upstreams, and nothing else (no gray
//! decision, no pin, no health checks, no metrics, no access log, headers passed as they come).
//! `bench/run` measures graysplit against it on the same upstreams: whatever graysplit costs above
//! this is graysplit's own.
//!
//! ```text
//! cargo build --release --example bare_pingora
//! target/release/examples/bare_pingora --listen 127.0.0.1:6188 --threads 2 \
//!     --upstream 127.0.0.1:8081 --upstream 127.0.0.1:8082
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clap::Parser;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::listeners::ListenerConfig;
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::{Error, ErrorType, Result};

// The same allocator as graysplit (src/main.rs), so the comparison measures graysplit's code and
// not an allocator choice.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6188")]
    listen: String,
    /// An upstream `ip:port`; repeat for several (round robin).
    #[arg(long = "upstream", required = true)]
    upstreams: Vec<String>,
    /// Pingora worker threads of the proxy service.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Idle upstream connections kept, all threads together.
    #[arg(long, default_value_t = 1024)]
    keepalive_pool_size: usize,
    /// One single-threaded service per thread on shared sockets (graysplit's `src/per_core.rs`)
    /// instead of Pingora's one service on a `threads`-thread runtime.
    #[arg(long)]
    per_core: bool,
    /// Read client connections without Pingora's 64 KiB read buffer, as graysplit's plain
    /// listeners do (`L4BufferSettings` read 0): the floor for the same listener setting.
    #[arg(long)]
    unbuffered: bool,
    /// Set the timeouts graysplit ships with (and nginx has in some form): upstream connect 1 s,
    /// read and write 30 s, idle pooled connections 60 s, client keep-alive 65 s. Pingora arms a
    /// timer for each read and write that has one; without this flag the bare proxy has none.
    #[arg(long)]
    timeouts: bool,
}

/// The listening endpoint, with Pingora's default buffers or (`--unbuffered`) none for reads.
fn listen<A>(service: &mut pingora::services::listening::Service<A>, args: &Args) {
    if args.unbuffered {
        service.add_listener(
            ListenerConfig::tcp(args.listen.clone()).l4_buffer(L4BufferSettings::default().read(0)),
        );
    } else {
        service.add_tcp(&args.listen);
    }
}

struct Bare {
    lb: Arc<LoadBalancer<RoundRobin>>,
    timeouts: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<()> {
        if self.timeouts && session.get_keepalive().is_some() {
            session.set_keepalive(Some(65));
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let upstream = self
            .lb
            .select(b"", 256)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "no upstream"))?;
        let mut peer = HttpPeer::new(upstream, false, String::new());
        if self.timeouts {
            peer.options.connection_timeout = Some(Duration::from_secs(1));
            peer.options.read_timeout = Some(Duration::from_secs(30));
            peer.options.write_timeout = Some(Duration::from_secs(30));
            peer.options.idle_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }
}

fn main() {
    env_logger::init();
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.threads,
        // Pingora's connector keeps this many per thread of a service.
        upstream_keepalive_pool_size: args.keepalive_pool_size.div_ceil(args.threads.max(1)),
        // Per core: each service's runtime is one current-thread tokio runtime.
        work_stealing: !args.per_core,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let lb = match LoadBalancer::try_from_iter(args.upstreams.iter().map(String::as_str)) {
        Ok(lb) => lb,
        Err(e) => {
            eprintln!("bare_pingora: bad --upstream: {e}");
            std::process::exit(2);
        }
    };
    let lb = Arc::new(lb);
    if args.per_core {
        // As graysplit's `server.runtime = "per_thread"`: one single-threaded service per
        // thread, each with its own upstream pool, on private dups of one listening socket.
        let sockets = Arc::new(graysplit::per_core::SharedSockets::default());
        let spec = graysplit::per_core::SocketSpec {
            addr: args.listen.clone(),
            options: None,
        };
        let per_thread = Arc::new(ServerConf {
            threads: 1,
            upstream_keepalive_pool_size: args.keepalive_pool_size.div_ceil(args.threads.max(1)),
            ..ServerConf::default()
        });
        for i in 0..args.threads.max(1) {
            let mut proxy = pingora::proxy::http_proxy_service_with_name(
                &per_thread,
                Bare {
                    lb: lb.clone(),
                    timeouts: args.timeouts,
                },
                &format!("bare {i}"),
            );
            proxy.threads = Some(1);
            listen(&mut proxy, &args);
            server.add_service(graysplit::per_core::PerCore::new(
                proxy,
                vec![spec.clone()],
                sockets.clone(),
            ));
        }
    } else {
        let bare = Bare {
            lb,
            timeouts: args.timeouts,
        };
        let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, bare);
        listen(&mut proxy, &args);
        server.add_service(proxy);
    }
    server.run_forever();
}
