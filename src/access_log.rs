//! The access log: one line per request, formatted on the worker thread into a small buffer and
//! written by a background thread, so a slow disk or a full pipe never stalls a request.
//!
//! - **Formats** ([`Format`]): nginx's `combined`, the same plus graysplit's fields (`graysplit`,
//!   the default: pool, build, server, reason, pin event, tries, request time, request id), or one
//!   JSON object per line (`json`). Bytes outside printable ASCII, `"` and `\` are written as
//!   `\xHH`, as nginx does, so a hostile header cannot forge a line.
//! - **Bounded**: each thread formats into a buffer of its own holding at most its share of
//!   `queue` lines; when it is full (the writer cannot keep up) the line is dropped and counted ([`AccessLog::dropped`], `graysplit_access_log_dropped_total`)
//!   rather than blocking the request.
//! - **Files**: appended to `path` (or standard error when none is set, where journald collects
//!   it); reopened on `SIGUSR1` (nginx's `-s reopen`, what logrotate's `postrotate` sends) and, with
//!   `max_size`, rotated by the writer itself (`path` → `path.1` → … `path.<keep>`).
//!
//! The writer batches: every [`FLUSH_EVERY`] (or as soon as a buffer is half full) it takes each
//! thread's buffer and writes it in one `write`; at exit (`atexit`, Pingora ends with `process::exit`) the rest is written too.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ip_text::write_ip;

/// The most time a written line waits in the writer's buffer before it reaches the file.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A thread's buffer this large wakes the writer before its tick (measured: `bench/access-log`).
const WAKE_AT: usize = 64 * 1024;

/// Line layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// nginx's `combined`: `$remote_addr - - [$time_local] "$request" $status $body_bytes_sent
    /// "$http_referer" "$http_user_agent"`.
    Combined,
    /// `combined` followed by graysplit's fields as `key=value`.
    Graysplit,
    /// One JSON object per line.
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "combined" => Some(Format::Combined),
            "graysplit" => Some(Format::Graysplit),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Validated access-log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub enabled: bool,
    /// `None`: standard error.
    pub path: Option<PathBuf>,
    pub format: Format,
    /// Lines queued for the writer before new ones are dropped.
    pub queue: usize,
    /// Rotate when the file grows past this many bytes (`None`: never; logrotate does it).
    pub max_size: Option<u64>,
    /// Rotated files kept (`path.1` … `path.<keep>`).
    pub keep: u32,
}

impl Default for AccessLogSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            format: Format::Graysplit,
            queue: 65_536,
            max_size: None,
            keep: 5,
        }
    }
}

/// What one line says. Borrowed from the request; nothing here is allocated for the log.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The client as the decision saw it (trusted proxies honoured), else the peer.
    pub client: Option<IpAddr>,
    pub time: SystemTime,
    /// An HTTP token (`http::Method` holds nothing else): written as is.
    pub method: &'a str,
    /// Path and query as requested.
    pub uri: &'a str,
    /// One of graysplit's own texts (`HTTP/1.1`, …): written as is.
    pub version: &'static str,
    /// 0 when no response was sent (the client left).
    pub status: u16,
    pub body_bytes: usize,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    pub pool: &'a str,
    pub build: &'a str,
    pub server: &'a str,
    /// Graysplit's own words (decision reasons, pin events): written as is.
    pub reason: &'static str,
    pub pin: &'static str,
    pub tries: usize,
    pub request_time: Duration,
    /// Checked plain (`proxy::request_id::acceptable`) or made of hex digits: written as is.
    pub request_id: Option<&'a [u8]>,
}

/// Appends `e` as one line (with its `\n`) to `out`.
pub fn format(e: &Entry<'_>, fmt: Format, out: &mut Vec<u8>) {
    match fmt {
        Format::Combined | Format::Graysplit => {
            match e.client {
                Some(ip) => write_ip(ip, out),
                None => out.push(b'-'),
            }
            out.extend_from_slice(b" - - [");
            clf_time(e.time, out);
            out.extend_from_slice(b"] \"");
            // A method is an HTTP token (the `http` crate refuses anything else) and the version
            // one of graysplit's own texts: nothing in them needs escaping.
            out.extend_from_slice(e.method.as_bytes());
            out.push(b' ');
            escaped(e.uri.as_bytes(), out);
            out.push(b' ');
            out.extend_from_slice(e.version.as_bytes());
            out.extend_from_slice(b"\" ");
            number(u64::from(e.status), out);
            out.push(b' ');
            number(e.body_bytes as u64, out);
            out.extend_from_slice(b" \"");
            escaped(e.referer.unwrap_or(b"-"), out);
            out.extend_from_slice(b"\" \"");
            escaped(e.user_agent.unwrap_or(b"-"), out);
            out.push(b'"');
            if fmt == Format::Graysplit {
                // Names from the configuration and Consul are escaped; the reason and the pin
                // event are graysplit's own words, and a request id is checked to be plain
                // (`proxy::request_id::acceptable`), so those are copied as they are.
                for (k, v) in [
                    (" pool=", e.pool),
                    (" build=", e.build),
                    (" server=", e.server),
                ] {
                    out.extend_from_slice(k.as_bytes());
                    escaped(v.as_bytes(), out);
                }
                out.extend_from_slice(b" reason=");
                out.extend_from_slice(e.reason.as_bytes());
                out.extend_from_slice(b" pin=");
                out.extend_from_slice(e.pin.as_bytes());
                out.extend_from_slice(b" tries=");
                number(e.tries as u64, out);
                out.extend_from_slice(b" rt=");
                seconds(e.request_time, out);
                out.extend_from_slice(b" id=");
                out.extend_from_slice(e.request_id.unwrap_or(b"-"));
            }
        }
        Format::Json => {
            out.extend_from_slice(b"{\"time\":\"");
            iso_time(e.time, out);
            out.extend_from_slice(b"\",\"client\":");
            match e.client {
                Some(ip) => {
                    out.push(b'"');
                    write_ip(ip, out);
                    out.push(b'"');
                }
                None => out.extend_from_slice(b"null"),
            }
            for (k, v) in [
                ("method", Some(e.method.as_bytes())),
                ("uri", Some(e.uri.as_bytes())),
                ("protocol", Some(e.version.as_bytes())),
            ] {
                json_field(k, v, out);
            }
            out.extend_from_slice(b",\"status\":");
            number(u64::from(e.status), out);
            out.extend_from_slice(b",\"body_bytes\":");
            number(e.body_bytes as u64, out);
            json_field("referer", e.referer, out);
            json_field("user_agent", e.user_agent, out);
            for (k, v) in [
                ("pool", e.pool),
                ("build", e.build),
                ("server", e.server),
                ("reason", e.reason),
                ("pin", e.pin),
            ] {
                json_field(k, Some(v.as_bytes()), out);
            }
            out.extend_from_slice(b",\"tries\":");
            number(e.tries as u64, out);
            out.extend_from_slice(b",\"request_time\":");
            seconds(e.request_time, out);
            json_field("request_id", e.request_id, out);
            out.push(b'}');
        }
    }
    out.push(b'\n');
}

fn number(n: u64, out: &mut Vec<u8>) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(n).as_bytes());
}

/// Seconds with millisecond resolution, as nginx's `$request_time` (`0.003`).
fn seconds(d: Duration, out: &mut Vec<u8>) {
    let ms = d.as_millis();
    number((ms / 1000) as u64, out);
    out.push(b'.');
    let frac = (ms % 1000) as u16;
    out.extend_from_slice(&[
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Bytes nginx writes as they are in a log variable: printable ASCII except `"` and `\`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// nginx's escaping for log variables: plain bytes ([`PLAIN`]) as is, the rest `\xHH`. Runs of
/// plain bytes are copied at once (a header is almost always all plain).
fn escaped(mut bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    while !bytes.is_empty() {
        let run = bytes
            .iter()
            .position(|&b| !PLAIN[usize::from(b)])
            .unwrap_or(bytes.len());
        out.extend_from_slice(&bytes[..run]);
        let Some(&b) = bytes.get(run) else { break };
        out.extend_from_slice(&[
            b'\\',
            b'x',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 15)],
        ]);
        bytes = &bytes[run + 1..];
    }
}

/// `,"key":"value"` with JSON escaping (bytes outside printable ASCII as `\u00HH`), or
/// `,"key":null`.
fn json_field(key: &str, value: Option<&[u8]>, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    let Some(value) = value else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'"');
    for &b in value {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(b),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]),
        }
    }
    out.push(b'"');
}

/// Civil date (UTC) of a Unix time: (year, month 1-12, day, hour, minute, second).
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-from-civil inverse (public domain algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

fn two(n: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&[b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]);
}

/// `01/Dec/2026:19:14:22 +0000` (nginx's `$time_local`, in UTC: no time zone lookup per line).
fn clf_time(t: SystemTime, out: &mut Vec<u8>) {
    // The same second on most lines: formatted once per second per thread.
    thread_local! {
        static LAST: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((u64::MAX, Vec::new())) };
    }
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST.with(|last| {
        let Ok(mut last) = last.try_borrow_mut() else {
            return clf_time_uncached(t, out);
        };
        if last.0 != secs {
            last.1.clear();
            clf_time_uncached(t, &mut last.1);
            last.0 = secs;
        }
        out.extend_from_slice(&last.1);
    })
}

fn clf_time_uncached(t: SystemTime, out: &mut Vec<u8>) {
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let (y, mo, d, h, mi, s) = civil(t);
    two(d, out);
    out.push(b'/');
    out.extend_from_slice(MONTHS[(mo as usize).saturating_sub(1).min(11)]);
    out.push(b'/');
    number(y.max(0) as u64, out);
    out.push(b':');
    two(h, out);
    out.push(b':');
    two(mi, out);
    out.push(b':');
    two(s, out);
    out.extend_from_slice(b" +0000");
}

/// `2026-12-01T19:14:22.123Z`.
fn iso_time(t: SystemTime, out: &mut Vec<u8>) {
    let (y, mo, d, h, mi, s) = civil(t);
    number(y.max(0) as u64, out);
    out.push(b'-');
    two(mo, out);
    out.push(b'-');
    two(d, out);
    out.push(b'T');
    two(h, out);
    out.push(b':');
    two(mi, out);
    out.push(b':');
    two(s, out);
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis());
    out.push(b'.');
    out.extend_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
    ]);
    out.push(b'Z');
}

/// The access log as the request path sees it: format a line into this thread's buffer, never
/// wait, never wake anyone.
///
/// Why shards and not a channel: a channel wakes the writer for every line (three context
/// switches per request, measured in `bench/`), and one shared buffer makes the worker threads
/// contend. Each thread formats into a buffer of its own (an uncontended lock); the writer swaps
/// the buffers out every [`FLUSH_EVERY`] and writes them, so a request pays for formatting only.
pub struct AccessLog {
    pub settings: AccessLogSettings,
    shards: Box<[parking_lot::Mutex<Shard>]>,
    /// Lines one shard holds before new ones are dropped (`queue` spread over the shards).
    shard_lines: usize,
    /// Where the lines go; `None` until the writer starts (after `-d` forks).
    sink: parking_lot::Mutex<Option<Output>>,
    dropped: AtomicU64,
    /// `graysplit_access_log_dropped_total`, when registered.
    dropped_metric: Option<prometheus::IntCounter>,
    reopen: AtomicBool,
    /// The writer, woken early when a buffer is half full (a burst), else every [`FLUSH_EVERY`].
    writer: std::sync::OnceLock<std::thread::Thread>,
}

/// The writer's side: the destination, and the buffer it swaps in for the one it takes (kept
/// with its capacity, so a worker never regrows its buffer from nothing after a flush).
struct Output {
    sink: Sink,
    spare: Vec<u8>,
}

/// One thread's unwritten lines.
#[derive(Default)]
struct Shard {
    buf: Vec<u8>,
    lines: usize,
    /// The writer was woken for this buffer already.
    woken: bool,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("settings", &self.settings)
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// Starts the writing: opens the destination and flushes on a thread of its own.
pub struct Writer {
    log: Weak<AccessLog>,
}

/// The shard of the calling thread: threads take the shards in turn as they first log.
fn shard_index(shards: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    MINE.with(|i| *i % shards)
}

impl AccessLog {
    /// The handle and its writer, not started: [`Writer::spawn`] starts it (after `-d` forks, in
    /// [`AccessLogService`]: a thread started before the fork would not exist in the daemon).
    /// With `registry`, drops are also counted in `graysplit_access_log_dropped_total`.
    pub fn new(
        settings: AccessLogSettings,
        registry: Option<&prometheus::Registry>,
    ) -> Result<(Arc<AccessLog>, Writer), prometheus::Error> {
        let dropped_metric = match registry {
            Some(r) => {
                let c = prometheus::IntCounter::new(
                    "graysplit_access_log_dropped_total",
                    "Access-log lines dropped because the writer could not keep up",
                )?;
                r.register(Box::new(c.clone()))?;
                Some(c)
            }
            None => None,
        };
        // More shards than threads that log (the workers, the admin runtime): two threads share
        // one only when there are many more threads than cores.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let count = (cores * 4).clamp(8, 256);
        let shard_lines = settings.queue.max(1).div_ceil(count);
        let log = Arc::new(AccessLog {
            settings,
            shards: (0..count).map(|_| Default::default()).collect(),
            shard_lines,
            sink: parking_lot::Mutex::new(None),
            dropped: AtomicU64::new(0),
            dropped_metric,
            reopen: AtomicBool::new(false),
            writer: std::sync::OnceLock::new(),
        });
        let writer = Writer {
            log: Arc::downgrade(&log),
        };
        Ok((log, writer))
    }

    /// [`AccessLog::new`] with the writer already running (tests, tools).
    pub fn start(settings: AccessLogSettings) -> io::Result<Arc<AccessLog>> {
        let (log, writer) = AccessLog::new(settings, None).map_err(io::Error::other)?;
        writer.spawn()?;
        Ok(log)
    }

    /// Formats `e` into this thread's buffer; never blocks on I/O (a full buffer drops the line
    /// and counts it).
    pub fn log(&self, e: &Entry<'_>) {
        let Some(shard) = self.shards.get(shard_index(self.shards.len())) else {
            return;
        };
        let mut shard = shard.lock();
        if shard.lines >= self.shard_lines {
            drop(shard);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &self.dropped_metric {
                m.inc();
            }
            return;
        }
        format(e, self.settings.format, &mut shard.buf);
        shard.lines += 1;
        // Past WAKE_AT bytes: wake the writer now rather than at its next tick, once per buffer.
        // Small buffers stay in the core's cache, which costs the worker less than the writer's
        // wake-ups (one per ~200 lines) do.
        if shard.buf.len() >= WAKE_AT && !shard.woken {
            shard.woken = true;
            drop(shard);
            if let Some(writer) = self.writer.get() {
                writer.unpark();
            }
        }
    }

    /// Writes every line logged so far (the writer's tick, the end of the process).
    pub fn flush(&self) {
        let mut out = self.sink.lock();
        let Some(Output { sink, spare }) = out.as_mut() else {
            return;
        };
        if self.reopen.swap(false, Ordering::Relaxed) {
            sink.reopen();
        }
        for shard in self.shards.iter() {
            {
                // Swapped, not copied: the worker waits for a pointer swap at most.
                let mut shard = shard.lock();
                if shard.lines == 0 {
                    continue;
                }
                std::mem::swap(&mut shard.buf, spare);
                shard.lines = 0;
                shard.woken = false;
            }
            sink.write(spare);
            spare.clear();
        }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Asks the writer to reopen the file (after logrotate moved it): `SIGUSR1`.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The log the process writes at exit (Pingora ends with `std::process::exit`, which runs
/// `atexit` handlers but no destructors): the lines of the last [`FLUSH_EVERY`] are not lost.
static AT_EXIT: std::sync::Mutex<Option<Weak<AccessLog>>> = std::sync::Mutex::new(None);

extern "C" fn flush_at_exit() {
    let log = AT_EXIT
        .lock()
        .ok()
        .and_then(|l| l.as_ref().and_then(Weak::upgrade));
    if let Some(log) = log {
        log.flush();
    }
}

impl Writer {
    /// Opens the destination and writes the logged lines every [`FLUSH_EVERY`], on a thread of
    /// its own, until the [`AccessLog`] is gone; and once more when the process exits.
    pub fn spawn(self) -> io::Result<std::thread::JoinHandle<()>> {
        let Some(log) = self.log.upgrade() else {
            return Err(io::Error::other("the access log is gone"));
        };
        *log.sink.lock() = Some(Output {
            sink: Sink::open(&log.settings)?,
            spare: Vec::new(),
        });
        drop(log);
        if let Ok(mut at_exit) = AT_EXIT.lock() {
            let first = at_exit.is_none();
            *at_exit = Some(self.log.clone());
            if first {
                // SAFETY: registers a plain `extern "C" fn` that takes no arguments.
                unsafe { libc::atexit(flush_at_exit) };
            }
        }
        let log = self.log.clone();
        let handle = std::thread::Builder::new()
            .name("access log".into())
            .spawn(move || loop {
                std::thread::park_timeout(FLUSH_EVERY);
                match self.log.upgrade() {
                    Some(log) => log.flush(),
                    None => return,
                }
            })?;
        if let Some(log) = log.upgrade() {
            let _ = log.writer.set(handle.thread().clone());
        }
        Ok(handle)
    }
}

/// Checks that the destination can be opened for appending (at start, before `-d` forks, so a
/// bad path is an error on the terminal rather than a line in a log nobody reads).
pub fn check(settings: &AccessLogSettings) -> io::Result<()> {
    match &settings.path {
        Some(path) if settings.enabled => open_append(path).map(drop),
        _ => Ok(()),
    }
}

/// Starts the writer once Pingora runs the services (after `-d`), and reopens the file on
/// `SIGUSR1` (logrotate's `postrotate`, nginx's `-s reopen`).
pub struct AccessLogService {
    pub log: Arc<AccessLog>,
    pub writer: parking_lot::Mutex<Option<Writer>>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for AccessLogService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        if let Some(w) = self.writer.lock().take() {
            if let Err(e) = w.spawn() {
                log::error!("access log: cannot open it, no access lines will be written: {e}");
                return;
            }
        }
        let mut usr1 =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("access log: no SIGUSR1 handler, reopen by restart only: {e}");
                    return;
                }
            };
        loop {
            tokio::select! {
                _ = usr1.recv() => {
                    log::info!("SIGUSR1: reopening the access log");
                    self.log.reopen();
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Where lines go.
enum Sink {
    Stderr,
    File {
        file: File,
        path: PathBuf,
        size: u64,
        max_size: Option<u64>,
        keep: u32,
    },
}

impl Sink {
    fn open(s: &AccessLogSettings) -> io::Result<Sink> {
        let Some(path) = &s.path else {
            return Ok(Sink::Stderr);
        };
        let file = open_append(path)?;
        let size = file.metadata().map_or(0, |m| m.len());
        Ok(Sink::File {
            file,
            path: path.clone(),
            size,
            max_size: s.max_size,
            keep: s.keep,
        })
    }

    fn write(&mut self, bytes: &[u8]) {
        let result = match self {
            Sink::Stderr => io::stderr().lock().write_all(bytes),
            Sink::File {
                file,
                size,
                max_size,
                ..
            } => {
                let r = file.write_all(bytes);
                *size += bytes.len() as u64;
                if max_size.is_some_and(|max| *size >= max) {
                    self.rotate();
                }
                r
            }
        };
        if let Err(e) = result {
            log::warn!("access log: write failed: {e}");
        }
    }

    /// Moves `path` to `path.1` (and older ones up to `keep`), then opens a new `path`.
    fn rotate(&mut self) {
        let Sink::File { path, keep, .. } = self else {
            return;
        };
        let numbered = |n: u32| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if *keep == 0 {
            let _ = std::fs::remove_file(&*path);
        } else {
            for n in (1..*keep).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            let _ = std::fs::rename(&*path, numbered(1));
        }
        self.reopen();
    }

    fn reopen(&mut self) {
        let Sink::File {
            file, path, size, ..
        } = self
        else {
            return;
        };
        match open_append(path) {
            Ok(f) => {
                *size = f.metadata().map_or(0, |m| m.len());
                *file = f;
            }
            Err(e) => log::warn!("access log: cannot reopen {}: {e}", path.display()),
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            client: Some(IpAddr::from([10, 1, 2, 3])),
            // 2026-12-01T19:14:22.123Z
            time: UNIX_EPOCH + Duration::from_millis(1_796_152_462_123),
            method: "GET",
            uri: "/assets/app.js?v=1",
            version: "HTTP/1.1",
            status: 200,
            body_bytes: 579,
            referer: Some(b"http://example.com/"),
            user_agent: Some(b"Mozilla/5.0 \"evil\"\n"),
            pool: "gray",
            build: "gray-2026.11.2",
            server: "10.0.0.2:8080",
            reason: "sticky",
            pin: "-",
            tries: 1,
            request_time: Duration::from_millis(3),
            request_id: Some(b"abc"),
        }
    }

    #[test]
    fn combined_is_nginx_combined_with_nginx_escaping() {
        let mut out = Vec::new();
        format(&entry(), Format::Combined, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.1.2.3 - - [01/Dec/2026:19:14:22 +0000] \"GET /assets/app.js?v=1 HTTP/1.1\" 200 \
             579 \"http://example.com/\" \"Mozilla/5.0 \\x22evil\\x22\\x0A\"\n"
        );
    }

    #[test]
    fn graysplit_format_adds_the_decision() {
        let mut out = Vec::new();
        format(&entry(), Format::Graysplit, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.ends_with(
                "\" pool=gray build=gray-2026.11.2 server=10.0.0.2:8080 reason=sticky pin=- \
                 tries=1 rt=0.003 id=abc\n"
            ),
            "{line}"
        );
    }

    #[test]
    fn a_method_cannot_hold_what_the_log_would_escape() {
        // The combined line writes the method unescaped because `http::Method` is a token.
        for bad in [
            &b"GE\"T"[..],
            b"GE\\T",
            b"GE T",
            b"GE\nT",
            b"GE\x7fT",
            "GÉT".as_bytes(),
        ] {
            assert!(http::Method::from_bytes(bad).is_err(), "{bad:?}");
        }
        assert!(http::Method::from_bytes(b"PURGE").is_ok());
    }

    #[test]
    fn json_is_one_valid_object_per_line() {
        let mut out = Vec::new();
        let mut e = entry();
        e.referer = None;
        format(&e, Format::Json, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2026-12-01T19:14:22.123Z");
        assert_eq!(v["client"], "10.1.2.3");
        assert_eq!(v["status"], 200);
        assert_eq!(v["referer"], serde_json::Value::Null);
        assert_eq!(v["user_agent"], "Mozilla/5.0 \"evil\"\n");
        assert_eq!(v["request_time"], 0.003);
    }

    #[test]
    fn civil_dates_across_leap_years_and_epoch() {
        let at = |s: u64| civil(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), (1970, 1, 1, 0, 0, 0));
        // 2024-02-29T12:00:00Z and 2000-03-01T00:00:00Z
        assert_eq!(at(1_709_208_000), (2024, 2, 29, 12, 0, 0));
        assert_eq!(at(951_868_800), (2000, 3, 1, 0, 0, 0));
    }

    #[test]
    fn the_writer_appends_and_rotates_without_losing_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        // A line is about 250 bytes: a file holds at most 8 before it is rotated, so 30 lines
        // make at most 4 rotations, which `keep = 5` holds without dropping any.
        let log = AccessLog::start(AccessLogSettings {
            path: Some(path.clone()),
            max_size: Some(2_000),
            keep: 5,
            ..AccessLogSettings::default()
        })
        .unwrap();
        for _ in 0..30 {
            log.log(&entry());
        }
        let files: Vec<PathBuf> = std::iter::once(path.clone())
            .chain((1..=5).map(|n| path.with_extension(format!("log.{n}"))))
            .collect();
        let lines = || -> usize {
            files
                .iter()
                .map(|p| std::fs::read_to_string(p).map_or(0, |s| s.lines().count()))
                .sum()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lines() < 30 {
            assert!(std::time::Instant::now() < deadline, "lines never written");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(lines(), 30, "every line written once");
        assert!(files[1].exists(), "max_size rotated the file");
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn lines_from_many_threads_are_written_whole_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(AccessLogSettings {
            path: Some(path.clone()),
            ..AccessLogSettings::default()
        })
        .unwrap();
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let mut e = entry();
                        e.status = 200 + t;
                        e.body_bytes = i;
                        log.log(&e);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // The last handle gone: whatever the writer had not taken yet is written (by this
        // thread, or by the writer's tick if it held the last reference at that moment: then
        // the file is complete a moment later, hence the wait for whole lines).
        drop(log);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() >= 2000 && text.ends_with('\n') {
                break text;
            }
            assert!(std::time::Instant::now() < deadline, "lines never written");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            assert!(line.ends_with(" id=abc"), "a whole line: {line}");
            assert!(seen.insert((fields[8], fields[9])), "written once: {line}");
        }
        assert_eq!(seen.len(), 2000);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let registry = prometheus::Registry::new();
        let settings = AccessLogSettings {
            queue: 1,
            ..AccessLogSettings::default()
        };
        // The writer is never started: the queue holds one line.
        let (log, _writer) = AccessLog::new(settings, Some(&registry)).unwrap();
        for _ in 0..5 {
            log.log(&entry());
        }
        assert_eq!(log.dropped(), 4, "one line fits, four are dropped");
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("graysplit_access_log_dropped_total 4"),
            "{text}"
        );
    }
}
