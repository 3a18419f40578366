//! Per-forward counters, the same in both daemons: plain atomics that the
//! connection tasks update and `status` / `ListForwards` read without locking
//! anything, and a [`CounterSnapshot`] to report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters of one forward (or of requests naming no known forward).
#[derive(Debug, Default)]
pub struct ForwardCounters {
    /// Connections being set up or relayed now (see [`ForwardCounters::active_guard`]).
    pub active: AtomicU64,
    /// Connections seen: accepted on a listener, or requested by the peer.
    pub total: AtomicU64,
    /// Connections refused on purpose (a cap, too many waiting, shutdown).
    pub refused: AtomicU64,
    /// Connections that failed to set up (the far side unreachable, no result in time).
    pub failed: AtomicU64,
    /// Bytes relayed towards the guest (finished connections).
    pub bytes_to_guest: AtomicU64,
    /// Bytes relayed towards the host (finished connections).
    pub bytes_to_host: AtomicU64,
}

/// A copy of [`ForwardCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// See [`ForwardCounters::active`].
    pub active: u64,
    /// See [`ForwardCounters::total`].
    pub total: u64,
    /// See [`ForwardCounters::refused`].
    pub refused: u64,
    /// See [`ForwardCounters::failed`].
    pub failed: u64,
    /// See [`ForwardCounters::bytes_to_guest`].
    pub bytes_to_guest: u64,
    /// See [`ForwardCounters::bytes_to_host`].
    pub bytes_to_host: u64,
}

impl ForwardCounters {
    /// Adds one to `counter` (one of this struct's fields).
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a finished relay's byte counts.
    pub fn add_bytes(&self, to_guest: u64, to_host: u64) {
        self.bytes_to_guest.fetch_add(to_guest, Ordering::Relaxed);
        self.bytes_to_host.fetch_add(to_host, Ordering::Relaxed);
    }

    /// Counts one connection as active until the guard drops.
    pub fn active_guard(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(self))
    }

    /// Reads every counter (each on its own: consistent enough to report).
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bytes_to_guest: self.bytes_to_guest.load(Ordering::Relaxed),
            bytes_to_host: self.bytes_to_host.load(Ordering::Relaxed),
        }
    }
}

/// One active connection; [`ForwardCounters::active`] goes down when it drops.
#[derive(Debug)]
pub struct ActiveGuard(Arc<ForwardCounters>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_snapshots() {
        let c = Arc::new(ForwardCounters::default());
        ForwardCounters::bump(&c.total);
        ForwardCounters::bump(&c.total);
        ForwardCounters::bump(&c.failed);
        let a = c.active_guard();
        let b = c.active_guard();
        c.add_bytes(3, 5);
        assert_eq!(
            c.snapshot(),
            CounterSnapshot {
                active: 2,
                total: 2,
                refused: 0,
                failed: 1,
                bytes_to_guest: 3,
                bytes_to_host: 5
            }
        );
        drop((a, b));
        assert_eq!(c.snapshot().active, 0);
    }
}
