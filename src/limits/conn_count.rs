//! Open client connections, all listeners together and per client address, with a guard per
//! connection that gives its place back when the connection ends (however it ends).
//!
//! Why not Pingora's `connection_filter`: it decides at accept time from the address alone and
//! never hears of the close, so it cannot count *concurrent* connections. The gate
//! ([`super::gate`]) holds a [`ConnGuard`] for the life of the connection instead.
//!
//! The per-address table is sharded so that accepts on different threads rarely meet on one
//! lock, and an address leaves the table when its last connection ends: the table holds the
//! addresses that have a connection open, never a history.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

const SHARDS: usize = 16;

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections`: all listeners together are full.
    Total,
    /// `max_connections_per_ip`: this address has its share open.
    PerIp,
}

/// The counts. `max_total` / `max_per_ip` of 0 mean no limit.
#[derive(Debug)]
pub struct ConnCounter {
    max_total: usize,
    max_per_ip: u32,
    total: AtomicUsize,
    per_ip: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

/// One open connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnGuard {
    counter: Arc<ConnCounter>,
    /// Set when the connection was counted per address.
    ip: Option<IpAddr>,
}

impl ConnCounter {
    pub fn new(max_total: usize, max_per_ip: u32) -> Self {
        Self {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: Default::default(),
        }
    }

    /// Takes a place for a connection from `ip`; `exempt` addresses (trusted proxies, which carry
    /// many clients each) are not counted per address, only in the total.
    pub fn try_acquire(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        exempt: bool,
    ) -> Result<ConnGuard, Refused> {
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        // From here on the guard owns the increment: an early return drops it and undoes it.
        let mut guard = ConnGuard {
            counter: self.clone(),
            ip: None,
        };
        if self.max_total > 0 && before >= self.max_total {
            return Err(Refused::Total);
        }
        let Some(ip) = ip.filter(|_| self.max_per_ip > 0 && !exempt) else {
            return Ok(guard);
        };
        let mut shard = self.shard(ip).lock();
        let n = shard.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            if *n == 0 {
                shard.remove(&ip);
            }
            return Err(Refused::PerIp);
        }
        *n += 1;
        guard.ip = Some(ip);
        Ok(guard)
    }

    /// Open connections, all listeners together.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Addresses with at least one counted connection (bounded by the open connections).
    pub fn addresses(&self) -> usize {
        self.per_ip.iter().map(|s| s.lock().len()).sum()
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        // The modulo keeps the index below SHARDS, so the cast cannot truncate a valid index.
        &self.per_ip[(self.hasher.hash_one(ip) % SHARDS as u64) as usize]
    }

    fn release(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            let mut shard = self.shard(ip).lock();
            if let Some(n) = shard.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    shard.remove(&ip);
                }
            }
        }
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.counter.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_total_is_shared_and_given_back_on_drop() {
        let c = Arc::new(ConnCounter::new(2, 0));
        let a = c.try_acquire(ip("10.0.0.1"), false).unwrap();
        let b = c.try_acquire(ip("10.0.0.2"), false).unwrap();
        assert_eq!(
            c.try_acquire(ip("10.0.0.3"), false).unwrap_err(),
            Refused::Total
        );
        assert_eq!(c.open(), 2, "a refused connection holds no place");
        drop(a);
        let _c = c.try_acquire(ip("10.0.0.3"), false).unwrap();
        drop(b);
        assert_eq!(c.open(), 1);
    }

    #[test]
    fn per_address_limit_counts_each_address_and_spares_the_exempt() {
        let c = Arc::new(ConnCounter::new(0, 2));
        let held: Vec<_> = (0..2)
            .map(|_| c.try_acquire(ip("203.0.113.9"), false).unwrap())
            .collect();
        assert_eq!(
            c.try_acquire(ip("203.0.113.9"), false).unwrap_err(),
            Refused::PerIp
        );
        // Other addresses, and a trusted proxy carrying many clients, are not held back.
        let _other = c.try_acquire(ip("203.0.113.10"), false).unwrap();
        let proxies: Vec<_> = (0..5)
            .map(|_| c.try_acquire(ip("127.0.0.1"), true).unwrap())
            .collect();
        assert_eq!(c.open(), 8);
        assert_eq!(c.addresses(), 2, "exempt peers are not in the table");
        drop(held);
        drop(proxies);
        assert_eq!(
            c.addresses(),
            1,
            "an address leaves with its last connection"
        );
        assert!(c.try_acquire(ip("203.0.113.9"), false).is_ok());
    }

    #[test]
    fn no_limits_count_only() {
        let c = Arc::new(ConnCounter::new(0, 0));
        let all: Vec<_> = (0..100)
            .map(|_| c.try_acquire(ip("10.0.0.1"), false).unwrap())
            .collect();
        assert_eq!((c.open(), c.addresses()), (100, 0));
        drop(all);
        assert_eq!(c.open(), 0);
    }

    #[test]
    fn concurrent_accepts_never_exceed_the_limits() {
        // 8 threads each keep up to 6 connections from 10 addresses open, churning (48 wanted, 20
        // allowed, 3 per address); an outside tally of the connections held never passes a limit.
        let c = Arc::new(ConnCounter::new(20, 3));
        let held_per_ip: Arc<Vec<AtomicUsize>> =
            Arc::new((0..10).map(|_| AtomicUsize::new(0)).collect());
        let held_total = Arc::new(AtomicUsize::new(0));
        let worst = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let (c, per_ip, total, worst) = (
                    c.clone(),
                    held_per_ip.clone(),
                    held_total.clone(),
                    worst.clone(),
                );
                std::thread::spawn(move || {
                    let mut mine: Vec<(usize, ConnGuard)> = Vec::new();
                    for i in 0..3000u32 {
                        if mine.len() == 6 || (i + t) % 3 == 0 {
                            if let Some((k, g)) = mine.pop() {
                                per_ip[k].fetch_sub(1, Ordering::SeqCst);
                                total.fetch_sub(1, Ordering::SeqCst);
                                drop(g);
                            }
                            continue;
                        }
                        let k = ((i * 7 + t) % 10) as usize;
                        if let Ok(g) = c.try_acquire(Some(IpAddr::from([10, 0, 0, k as u8])), false)
                        {
                            let n = per_ip[k].fetch_add(1, Ordering::SeqCst) + 1;
                            let all = total.fetch_add(1, Ordering::SeqCst) + 1;
                            worst.0.fetch_max(n, Ordering::SeqCst);
                            worst.1.fetch_max(all, Ordering::SeqCst);
                            mine.push((k, g));
                        }
                    }
                    for (k, g) in mine {
                        per_ip[k].fetch_sub(1, Ordering::SeqCst);
                        total.fetch_sub(1, Ordering::SeqCst);
                        drop(g);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((c.open(), c.addresses()), (0, 0), "every place given back");
        assert!(
            worst.0.load(Ordering::SeqCst) <= 3,
            "per address: {worst:?}"
        );
        assert!(worst.1.load(Ordering::SeqCst) <= 20, "total: {worst:?}");
    }
}
