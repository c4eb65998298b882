//! `graysplit demo`: the embedded default. Serves the two builds compiled from `static-test/` on
//! loopback ports, writes pools files for them, and runs the proxy and admin listener on them —
//! no Consul, no Redis, nothing to install.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService};

use crate::app::{self, RunOptions};
use crate::config::Config;
use crate::static_site::{self, SiteFiles, StaticSite};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Where the demo writes its config and pools files.
    pub dir: PathBuf,
}

/// The build id a frontend build announces in its `index.html`.
pub fn build_id(files: &SiteFiles) -> Option<String> {
    let html = String::from_utf8_lossy(files.get("/index.html")?).into_owned();
    let start = html.find("name=\"graysplit-build\" content=\"")? + 32;
    let len = html[start..].find('"')?;
    Some(html[start..start + len].to_string())
}

/// Loopback upstreams serving the embedded builds.
struct DemoSites {
    sites: parking_lot::Mutex<Vec<(TcpListener, Arc<StaticSite>)>>,
}

#[async_trait]
impl BackgroundService for DemoSites {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let sites = std::mem::take(&mut *self.sites.lock());
        let mut tasks = Vec::new();
        for (listener, site) in sites {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => tasks.push(tokio::spawn(static_site::serve(l, site))),
                Err(e) => log::error!("demo upstream {}: {e}", site.name),
            }
        }
        let _ = shutdown.changed().await;
        tasks.iter().for_each(|t| t.abort());
    }
}

fn bind_site(
    build: &str,
    files: &SiteFiles,
) -> Result<(TcpListener, Arc<StaticSite>, String), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string();
    let site = Arc::new(StaticSite::new(files.clone(), format!("{build}@{addr}")));
    Ok((listener, site, addr))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Starts the demo; returns only on error (the server runs until interrupted).
pub fn run(opts: DemoOptions) -> Result<(), String> {
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| format!("cannot create {}: {e}", opts.dir.display()))?;
    let mut sites = Vec::new();
    let mut pools_text = Vec::new();
    for (build, count) in [("base", 2), ("gray", 1)] {
        let files = SiteFiles::embedded(build).ok_or(format!("build {build} is not embedded"))?;
        let id = build_id(&files).unwrap_or_else(|| build.to_string());
        let mut lines = format!(
            "# pool {build}: written by `graysplit demo`; edit me, changes apply within a second\n"
        );
        for _ in 0..count {
            let (listener, site, addr) = bind_site(build, &files)?;
            lines.push_str(&format!(
                "server {addr} weight=1 max_fails=2 fail_timeout=10s; # build={id}\n"
            ));
            sites.push((listener, site));
        }
        write(&opts.dir.join(format!("{build}.conf")), &lines)?;
        pools_text.push((build, lines));
    }
    let dir = opts.dir.display();
    let conf_path = opts.dir.join("graysplit.toml");
    write(
        &conf_path,
        &format!(
            "# Written by `graysplit demo`.\n\
             [server]\nlisten = \"{}\"\nadmin_listen = \"{}\"\nthreads = 2\n\
             pid_file = \"{dir}/graysplit.pid\"\nupgrade_sock = \"{dir}/upgrade.sock\"\n\
             grace_period = \"1s\"\ngraceful_shutdown_timeout = \"1s\"\n\n\
             [pools.base]\nfile = \"base.conf\"\n\n[pools.gray]\nfile = \"gray.conf\"\n\n\
             [gray]\nwhitelist_file = \"whitelist.txt\"\nswitches_file = \"switches.conf\"\n\n\
             [rollout]\nplan_file = \"rollout.json\"\n",
            opts.listen, opts.admin
        ),
    )?;
    // A rollout starts when its plan file is written; none from an earlier demo run.
    for stale in ["rollout.json", "rollout.json.state"] {
        let _ = std::fs::remove_file(opts.dir.join(stale));
    }
    write(
        &opts.dir.join("whitelist.txt"),
        "# One IP, CIDR or user:<id> per line; these clients get the gray build.\n# 127.0.0.1\n",
    )?;
    write(
        &opts.dir.join("switches.conf"),
        "# Runtime switches: enabled = true|false, all = true|false, percent = 0..100\nenabled = true\n",
    )?;
    let config = Config::load(&conf_path).map_err(|e| e.to_string())?;
    let mut app = app::build(&config, RunOptions::default())?;
    app.server.add_service(background_service(
        "demo upstreams",
        DemoSites {
            sites: parking_lot::Mutex::new(sites),
        },
    ));
    print_banner(&opts, &pools_text);
    app.server.bootstrap();
    app.server.run_forever();
}

fn print_banner(opts: &DemoOptions, pools: &[(&str, String)]) {
    let dir = opts.dir.display();
    println!("graysplit demo");
    println!("  proxy  http://{}/", opts.listen);
    println!(
        "  admin  http://{}/ (dashboard), /upstream_list, /upstream_status",
        opts.admin
    );
    println!("  files  {dir}/graysplit.toml, base.conf, gray.conf, whitelist.txt, switches.conf\n");
    for (name, text) in pools {
        println!("pool {name}:");
        for l in text.lines().filter(|l| l.starts_with("server")) {
            println!("  {l}");
        }
    }
    println!(
        "\nTry:\n\
         \x20 curl -si http://{l}/ | grep -iE 'x-served-by|x-graysplit|<title>'   # alternates between the two base servers\n\
         \x20 curl -s http://{a}/upstream_list                                   # pools in upsync's format\n\
         \x20 edit {dir}/base.conf: add `down` before the ';' of one server       # traffic moves within a second\n\
         \x20 echo 127.0.0.1 >> {dir}/whitelist.txt                            # you are whitelisted: the page turns orange (gray)\n\
         \x20 curl -s 'http://{a}/decide?ip=127.0.0.1'                          # why: the decision and its reason\n\
         \x20 echo 'all = true' > {dir}/switches.conf                           # everyone gets gray\n\
         \x20 echo '{{\"steps\": [10, 50, 100], \"window\": \"10s\", \"step_duration\": \"30s\", \"analysis\": {{\"min_requests\": 5}}}}' > {dir}/rollout.json\n\
         \x20 curl -s http://{a}/rollout                                        # the plan drives the percent; where it is\n\
         \x20 graysplit -t -c {dir}/graysplit.toml                               # validate a config\n\
         Stop with Ctrl-C.",
        l = opts.listen,
        a = opts.admin
    );
}
