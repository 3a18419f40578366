//! Per-forward counters, kept in the forward table as plain atomics so that a
//! later status endpoint can read them without locking anything.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one forward.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Guest connections relaying now.
    pub active: AtomicU64,
    /// Guest connections accepted on the listener.
    pub total: AtomicU64,
    /// Connections closed before asking the host (too many waiting, shutdown).
    pub refused: AtomicU64,
    /// Connections the host refused, or that got no result in time.
    pub failed: AtomicU64,
    /// Bytes from guest processes to the host.
    pub bytes_to_host: AtomicU64,
    /// Bytes from the host to guest processes.
    pub bytes_to_guest: AtomicU64,
}

/// A copy of [`ForwardStats`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`ForwardStats::active`].
    pub active: u64,
    /// See [`ForwardStats::total`].
    pub total: u64,
    /// See [`ForwardStats::refused`].
    pub refused: u64,
    /// See [`ForwardStats::failed`].
    pub failed: u64,
    /// See [`ForwardStats::bytes_to_host`].
    pub bytes_to_host: u64,
    /// See [`ForwardStats::bytes_to_guest`].
    pub bytes_to_guest: u64,
}

impl ForwardStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bytes_to_host: self.bytes_to_host.load(Ordering::Relaxed),
            bytes_to_guest: self.bytes_to_guest.load(Ordering::Relaxed),
        }
    }

    /// Counts a relay as active until the guard drops.
    pub fn active_guard(&self) -> ActiveGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self)
    }
}

/// Decrements [`ForwardStats::active`] on drop.
pub struct ActiveGuard<'a>(&'a ForwardStats);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
