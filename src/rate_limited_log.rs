//! Log lines about hostile or broken input, at most one per [`PERIOD`] per call site: a flood of
//! forged tokens or refused connections must not become a flood of log lines. Each line says how
//! many events it stands for; metrics count every one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// At most one line per this long.
pub const PERIOD: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct RateLimitedLog {
    /// When the next line may be written, in ms since [`epoch`]; 0 = at once.
    next_ms: AtomicU64,
    /// Events since the last line.
    pending: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl RateLimitedLog {
    pub const fn new() -> Self {
        Self {
            next_ms: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Records one event; calls `emit(n)` (n = events since the last line, this one included)
    /// when a line is due.
    pub fn note(&self, emit: impl FnOnce(u64)) {
        self.note_at(epoch().elapsed(), emit)
    }

    fn note_at(&self, now: Duration, emit: impl FnOnce(u64)) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms < next {
            return;
        }
        let period = u64::try_from(PERIOD.as_millis()).unwrap_or(u64::MAX);
        // One winner per period, however many threads get here at once.
        if self
            .next_ms
            .compare_exchange(
                next,
                now_ms.saturating_add(period),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            emit(self.pending.swap(0, Ordering::Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_counting_what_it_stands_for() {
        let log = RateLimitedLog::new();
        let mut lines = Vec::new();
        let s = Duration::from_secs(1);
        for t in 0..25u32 {
            log.note_at(s * t, |n| lines.push((t, n)));
        }
        // Lines at 0 s, 10 s and 20 s; each counts the events since the previous one.
        assert_eq!(lines, vec![(0, 1), (10, 10), (20, 10)]);
    }
}
