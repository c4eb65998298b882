//! Command line entry: parse, load config (exit 2 on any problem), run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use graysplit::app::{self, RunOptions};
use graysplit::config::Config;
use graysplit::demo::{self, DemoOptions};

// See Cargo.toml: measured, not assumed (bench/README.md, "Profile"). The `system-alloc`
// feature builds with the C library's malloc instead, so heap profilers (heaptrack) see it.
#[cfg(not(feature = "system-alloc"))]
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
    /// With -t: also check this rollout plan (JSON), e.g. before PUTting it into Consul.
    #[arg(long = "plan", requires = "test")]
    plan: Option<PathBuf>,
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
    /// Run N synthetic page loads through a running instance's live decision (switches, rules,
    /// whitelists) and print each pool's share against the expected one. Exit 0 when every
    /// share is within the tolerance, 1 when not, 2 when the instance cannot be asked.
    Simulate {
        /// The admin listener to ask (default: server.admin_listen of the config, -c).
        #[arg(long)]
        admin: Option<String>,
        #[arg(long, default_value_t = 500)]
        samples: usize,
        /// Allowed difference from the expected share, in percentage points.
        #[arg(long, default_value_t = 5.0)]
        tolerance: f64,
        /// A header every sample sends, `name:value` (repeatable), e.g. `--header xyz:3`.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Give every sample a random user id (the percent then hashes users, not addresses).
        #[arg(long)]
        users: bool,
        /// Draw client addresses from this network (default 198.18.0.0/15).
        #[arg(long)]
        cidr: Option<String>,
        /// Print the JSON answer instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// `graysplit simulate`: asks `/simulate` and prints the answer.
fn simulate(cli: &Cli) -> ExitCode {
    let Some(Command::Simulate {
        admin,
        samples,
        tolerance,
        headers,
        users,
        cidr,
        json,
    }) = &cli.command
    else {
        return ExitCode::from(2);
    };
    let admin = match admin {
        Some(a) => a.clone(),
        None => match Config::load(&cli.conf) {
            Ok(c) => c.server.admin_listen.to_string(),
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(2);
            }
        },
    };
    let mut params = vec![
        ("samples", samples.to_string()),
        ("tolerance", tolerance.to_string()),
    ];
    params.extend(headers.iter().map(|h| ("header", h.clone())));
    if *users {
        params.push(("users", "1".into()));
    }
    if let Some(c) = cidr {
        params.push(("cidr", c.clone()));
    }
    let value = match graysplit::rollout::simulate::ask(&admin, &params) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("graysplit simulate: {e}");
            return ExitCode::from(2);
        }
    };
    if *json {
        println!("{value:#}");
    } else {
        print!("{}", graysplit::rollout::simulate::render_text(&value));
    }
    if value["pass"].as_bool() == Some(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
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
    if matches!(cli.command, Some(Command::Simulate { .. })) {
        return simulate(&cli);
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
                match cli
                    .plan
                    .as_deref()
                    .map(graysplit::rollout::plan_file::check)
                {
                    Some(Ok(line)) => println!("{line}"),
                    Some(Err(errors)) => {
                        eprintln!("{errors}");
                        return ExitCode::from(2);
                    }
                    None => {}
                }
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
