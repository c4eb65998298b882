//! Host names in pools files, dumps and Consul keys (`web1.internal:8080`) resolved without
//! ever holding up the caller past a deadline.
//!
//! The system resolver (`getaddrinfo`: `/etc/hosts`, NSS, DNS) blocks, and a DNS server that does
//! not answer holds a lookup for `timeout × attempts` of resolv.conf (10 s and more). So a lookup
//! never runs on an async worker thread: [`lookup`] runs each name on Tokio's blocking pool, all
//! at once, and gives up on each at a deadline ([`TIMEOUT`] for the watchers, [`STARTUP_BUDGET`]
//! for the first load, which the proxy waits for). A lookup still running at its deadline is left
//! to finish on its own and its answer is dropped. Nothing is looked up before the process has
//! taken its sockets and daemonized: the first loads run in the watchers' background services.
//!
//! A name that does not resolve keeps the address it had (the caller passes the previous list,
//! see [`parse_resolved`]); a new one is skipped until a later lookup finds it. Parsing is split
//! in two so that a file is judged on its syntax alone ([`names_and_syntax`]) before any lookup.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::spec::ServerSpec;
use super::upsync_format::{self, LineError, Parsed};

/// How long a watcher waits for one name.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long the first load of a pools file or dump waits for its names (the proxy waits for it).
pub const STARTUP_BUDGET: Duration = Duration::from_secs(1);

/// What each name (`host:port`) resolved to, or why not.
pub type Resolved = HashMap<String, Result<SocketAddr, String>>;

/// Is `name` an address literal (nothing to look up)?
pub fn is_literal(name: &str) -> bool {
    name.parse::<SocketAddr>().is_ok()
}

/// Looks up every name that is not a literal, at once, on the blocking pool; each within
/// `timeout`. Literals are answered directly.
pub async fn lookup(names: &[String], timeout: Duration) -> Resolved {
    lookup_with(names, timeout, upsync_format::resolve).await
}

/// [`lookup`] with the lookup given (tests use a slow one).
pub async fn lookup_with(
    names: &[String],
    timeout: Duration,
    resolve: fn(&str) -> Result<SocketAddr, String>,
) -> Resolved {
    let mut out = Resolved::new();
    let mut pending = tokio::task::JoinSet::new();
    for name in names {
        if out.contains_key(name) {
            continue;
        }
        if let Ok(addr) = name.parse::<SocketAddr>() {
            out.insert(name.clone(), Ok(addr));
            continue;
        }
        out.insert(
            name.clone(),
            Err(format!("resolving {name:?} did not finish")),
        );
        let name = name.clone();
        pending.spawn(async move {
            let owned = name.clone();
            let lookup = tokio::task::spawn_blocking(move || resolve(&owned));
            let result = match tokio::time::timeout(timeout, lookup).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "resolving {name:?} took longer than {}",
                    crate::config::duration::format(timeout)
                )),
            };
            (name, result)
        });
    }
    while let Some(done) = pending.join_next().await {
        if let Ok((name, result)) = done {
            out.insert(name, result);
        }
    }
    out
}

/// A file judged on its syntax alone.
#[derive(Debug, Default)]
pub struct Syntax {
    /// Host names to look up (`host:port`, each once).
    pub names: Vec<String>,
    pub errors: Vec<LineError>,
    /// Server lines that parse.
    pub servers: usize,
}

/// Parses `text` for its syntax alone, without looking anything up.
pub fn names_and_syntax(text: &str) -> Syntax {
    let names = RefCell::new(Vec::<String>::new());
    // Every name gets a stand-in address of its own (its position), so two different names
    // never look like duplicates before they are resolved, and a repeated name always does.
    let record = |host: &str, port: u16| {
        let mut names = names.borrow_mut();
        let name = format!("{host}:{port}");
        let at = match names.iter().position(|n| *n == name) {
            Some(at) => at,
            None => {
                names.push(name);
                names.len() - 1
            }
        };
        let n = u32::try_from(at + 1).unwrap_or(u32::MAX);
        Ok(SocketAddr::from((n.to_be_bytes(), 0)))
    };
    let parsed = upsync_format::parse_with(text, &record);
    Syntax {
        names: names.into_inner(),
        errors: parsed.errors,
        servers: parsed.servers.len(),
    }
}

/// What [`parse_resolved`] made of a file.
#[derive(Debug, Default)]
pub struct ResolvedParse {
    pub parsed: Parsed,
    /// Names that did not resolve but kept the address they had, with why.
    pub kept: Vec<String>,
    /// Names that did not resolve and have no address yet (their lines are in `parsed.errors`).
    pub unresolved: Vec<String>,
}

/// Parses `text` with the addresses in `resolved`; a name that did not resolve keeps its address
/// from `previous` (the list in force), else its line is skipped.
pub fn parse_resolved(text: &str, resolved: &Resolved, previous: &[ServerSpec]) -> ResolvedParse {
    let kept = RefCell::new(Vec::new());
    let unresolved = RefCell::new(Vec::new());
    let find = |host: &str, port: u16| {
        let name = format!("{host}:{port}");
        let why = match resolved.get(&name) {
            Some(Ok(addr)) => return Ok(*addr),
            Some(Err(e)) => e.clone(),
            None => format!("{name:?} was not looked up"),
        };
        if let Some(p) = previous.iter().find(|p| p.name == name) {
            kept.borrow_mut()
                .push(format!("{why}; keeping its last address {}", p.addr));
            return Ok(p.addr);
        }
        unresolved.borrow_mut().push(name);
        Err(format!("{why}; skipped until it resolves"))
    };
    let parsed = upsync_format::parse_with(text, &find);
    ResolvedParse {
        parsed,
        kept: kept.into_inner(),
        unresolved: unresolved.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "server 127.0.0.1:1;\nserver web1.internal:80 weight=2;\n\
                        server web2.internal:80;\nserver web1.internal:80;\n";

    #[test]
    fn syntax_is_judged_without_any_lookup() {
        let s = names_and_syntax(FILE);
        assert_eq!(s.names, vec!["web1.internal:80", "web2.internal:80"]);
        assert_eq!(s.errors.len(), 1, "a repeated name: {:?}", s.errors);
        assert!(s.errors[0].reason.contains("duplicate") && s.errors[0].line == 4);
        assert_eq!(s.servers, 3);
        let s = names_and_syntax("server 127.0.0.1:1;\nserver web1.internal:80");
        assert_eq!(s.errors.len(), 1, "a cut-off line");
        assert_eq!(s.errors[0].line, 2);
    }

    #[test]
    fn an_unresolved_name_keeps_its_last_address_or_waits() {
        let mut resolved = Resolved::new();
        resolved.insert("web1.internal:80".into(), Err("NXDOMAIN".into()));
        resolved.insert(
            "web2.internal:80".into(),
            Ok("10.0.0.2:80".parse().unwrap()),
        );
        let mut old = ServerSpec::new("10.0.0.1:80".parse().unwrap(), "web1.internal:80");
        old.weight = 9;
        let r = parse_resolved(FILE, &resolved, std::slice::from_ref(&old));
        let got: Vec<(String, SocketAddr, u32)> = r
            .parsed
            .servers
            .iter()
            .map(|s| (s.name.clone(), s.addr, s.weight))
            .collect();
        assert_eq!(
            got,
            vec![
                ("127.0.0.1:1".into(), "127.0.0.1:1".parse().unwrap(), 1),
                ("web1.internal:80".into(), old.addr, 2),
                ("web2.internal:80".into(), "10.0.0.2:80".parse().unwrap(), 1),
            ],
            "the last address, with the settings now written"
        );
        assert_eq!(r.kept.len(), 2, "{:?}", r.kept);
        assert_eq!(
            r.parsed.errors.len(),
            1,
            "the repeated line: {:?}",
            r.parsed.errors
        );
        let fresh = parse_resolved(FILE, &resolved, &[]);
        assert_eq!(
            fresh.unresolved,
            vec!["web1.internal:80", "web1.internal:80"]
        );
        assert_eq!(fresh.parsed.servers.len(), 2);
    }

    static SLOW_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// A resolver whose `slow…` names hang for a while (a DNS server that does not answer).
    fn slow(name: &str) -> Result<SocketAddr, String> {
        if name.starts_with("slow") {
            std::thread::sleep(Duration::from_secs(2));
            SLOW_DONE.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok("10.9.9.9:80".parse().unwrap())
    }

    #[tokio::test]
    async fn lookups_end_at_their_deadline_and_keep_what_answered() {
        let names: Vec<String> = ["slow.internal:80", "fast.internal:80", "127.0.0.1:5"]
            .map(String::from)
            .into();
        let r = lookup_with(&names, Duration::from_millis(200), slow).await;
        // Back before the hanging lookup finished: it was given up at its deadline.
        assert!(!SLOW_DONE.load(std::sync::atomic::Ordering::SeqCst));
        assert!(r["slow.internal:80"]
            .as_ref()
            .is_err_and(|e| e.contains("took longer")));
        assert_eq!(r["fast.internal:80"], Ok("10.9.9.9:80".parse().unwrap()));
        assert_eq!(r["127.0.0.1:5"], Ok("127.0.0.1:5".parse().unwrap()));
    }

    #[tokio::test]
    async fn watcher_lookups_answer_literals_and_report_failures() {
        let names = vec!["127.0.0.1:7".to_string(), "localhost:80".to_string()];
        let r = lookup(&names, TIMEOUT).await;
        assert_eq!(r["127.0.0.1:7"], Ok("127.0.0.1:7".parse().unwrap()));
        assert!(r["localhost:80"]
            .as_ref()
            .is_ok_and(|a| a.ip().is_loopback()));
        let r = lookup(&["nonexistent.invalid:80".to_string()], TIMEOUT).await;
        assert!(r["nonexistent.invalid:80"].is_err());
    }
}
