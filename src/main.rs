//! Command line entry: parse, load config (exit 2 on any problem), run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use graysplit::app::{self, RunOptions};
use graysplit::config::Config;
use graysplit::demo::{self, DemoOptions};

// See Cargo.toml: measured, not assumed (bench/README.md, "Profile").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "graysplit",
    version,
    about = "Gray (canary) release proxy for web frontends"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "conf",
        default_value = "/etc/graysplit/graysplit.toml"
    )]
    conf: PathBuf,
    /// Test the configuration (and the pools files it names), print every problem, and exit.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background (Pingora daemon mode).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take over the listening sockets of a running graysplit (graceful upgrade): after loading
    /// the config, wait (about 5 s) for them on `server.upgrade_sock`; the running process sends
    /// them when it gets SIGQUIT.
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the embedded demo: two frontend builds on loopback behind the proxy.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Directory for the demo's config and pools files.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Demo { listen, admin, dir }) = cli.command {
        init_logging();
        let dir = dir.unwrap_or_else(|| std::env::temp_dir().join("graysplit-demo"));
        let result = demo::run(DemoOptions { listen, admin, dir });
        if let Err(e) = result {
            eprintln!("graysplit demo: {e}");
        }
        return ExitCode::from(1);
    }
    let config = match Config::load(&cli.conf) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    if cli.test {
        // Things that work on one instance and break a fleet: said loudly, but not an error.
        for w in graysplit::config::pin::warnings(&config) {
            eprintln!("graysplit: [warn] {}: {w}", cli.conf.display());
        }
        return match app::check(&config) {
            Ok(summary) => {
                println!("configuration OK ({}: {summary})", cli.conf.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
        };
    }
    init_logging();
    let run = RunOptions {
        daemon: cli.daemon,
        upgrade: cli.upgrade,
    };
    match app::build(&config, run) {
        Ok(mut app) => {
            app.server.bootstrap();
            app.server.run_forever();
        }
        Err(e) => {
            eprintln!("graysplit: {e}");
            ExitCode::from(1)
        }
    }
}
