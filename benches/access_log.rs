//! What the access log costs the worker thread per request: formatting one line into this
//! thread's buffer (the writer thread writes it later), for each format, with the writer running
//! and appending to a file as in production.
//!
//!   cargo bench --bench access_log      (or bench/access-log)
//!
//! Prints nanoseconds per line on the calling thread, and the lines dropped (0 unless the disk
//! cannot keep up). Timings belong here, not in tests: run it on a quiet machine.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use graysplit::access_log::{AccessLog, AccessLogSettings, Entry, Format};

const LINES: usize = 200_000;

fn entry(now: SystemTime, i: usize) -> Entry<'static> {
    Entry {
        client: Some(IpAddr::from([10, 1, (i >> 8) as u8, i as u8])),
        time: now,
        method: "GET",
        uri: "/index.html",
        version: "HTTP/1.1",
        status: 200,
        body_bytes: 579 + (i & 7),
        referer: Some(b"https://shop.example.com/"),
        user_agent: Some(b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0"),
        pool: "gray",
        build: "gray-2026.11.2",
        server: "10.0.0.2:8080",
        reason: "sticky",
        pin: "-",
        tries: 1,
        request_time: Duration::from_micros(900),
        request_id: Some(b"5f1c0a3e9b2d4c7a93e0c4d1b6f2a8e5"),
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("graysplit-access-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!(
        "access log: ns per line on the worker thread ({LINES} lines, writer appending to a file)"
    );
    for (name, format) in [
        ("graysplit", Format::Graysplit),
        ("combined", Format::Combined),
        ("json", Format::Json),
    ] {
        let path = dir.join(format!("{name}.log"));
        let log = AccessLog::start(AccessLogSettings {
            path: Some(path.clone()),
            format,
            ..AccessLogSettings::default()
        })
        .expect("access log");
        let now = SystemTime::now();
        // Bursts of 64 lines, timed alone; between them the rest of those requests' work lets the
        // writer take the buffers, as in production. Without it this loop outruns any disk and
        // measures drops.
        let mut busy = Duration::ZERO;
        for burst in 0..LINES / 64 {
            let t = Instant::now();
            for i in 0..64 {
                log.log(&entry(now, burst * 64 + i));
            }
            busy += t.elapsed();
            // The rest of 64 requests' work (about 40 µs each on this machine, spun rather than
            // slept: a sleeping core loses its caches and its clock, a serving one does not).
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_micros(64 * 40) {
                std::hint::spin_loop();
            }
        }
        let ns = busy.as_nanos() as f64 / LINES as f64;
        let dropped = log.dropped();
        drop(log);
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        println!(
            "  {name:<10} {ns:>6.0} ns/line  {:>4} bytes/line  dropped {dropped}",
            bytes / (LINES as u64 - dropped).max(1)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Formatting alone, into one reused buffer: what the line itself costs.
    let now = SystemTime::now();
    let mut buf = Vec::with_capacity(1 << 20);
    for (name, format) in [
        ("graysplit", Format::Graysplit),
        ("combined", Format::Combined),
        ("json", Format::Json),
    ] {
        let t = Instant::now();
        for i in 0..LINES {
            graysplit::access_log::format(&entry(now, i), format, &mut buf);
            if buf.len() > 1 << 19 {
                buf.clear();
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / LINES as f64;
        println!("  {name:<10} {ns:>6.0} ns/line formatting alone");
    }
}
