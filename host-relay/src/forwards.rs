//! The relay's own forward table: the only place a `ConnectRequest.forward_id` is
//! resolved (the guest never supplies a path), with each forward's counters.
//!
//! Counters are plain atomics, updated by the connection tasks and read by
//! whoever holds the table (a later issue exposes them).

use crate::limits::{RateLimiter, SlotCounter};
use crate::spec::Forward;
use sockfwd_proto::relay::RelayStats;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Counters of one forward (or of requests naming no known forward).
#[derive(Debug, Default)]
pub struct ForwardCounters {
    /// Connections being set up or relayed right now (also the per-forward cap's count).
    pub active: SlotCounter,
    /// Requests received for this forward.
    pub total: AtomicU64,
    /// Requests refused by a concurrency or rate cap.
    pub refused: AtomicU64,
    /// Requests that failed: host socket or stream could not be opened, result not delivered.
    pub failed: AtomicU64,
    /// Bytes relayed from the host socket to the guest (completed relays).
    pub bytes_to_guest: AtomicU64,
    /// Bytes relayed from the guest to the host socket (completed relays).
    pub bytes_to_host: AtomicU64,
}

impl ForwardCounters {
    /// Adds a finished relay's byte counts (`a` is the host side, `b` the stream).
    pub fn add_bytes(&self, stats: RelayStats) {
        self.bytes_to_guest
            .fetch_add(stats.a_to_b, Ordering::Relaxed);
        self.bytes_to_host
            .fetch_add(stats.b_to_a, Ordering::Relaxed);
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            active: self.active.current(),
            total: self.total.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bytes_to_guest: self.bytes_to_guest.load(Ordering::Relaxed),
            bytes_to_host: self.bytes_to_host.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of [`ForwardCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// See [`ForwardCounters::active`].
    pub active: usize,
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

/// One forward with its live state.
#[derive(Debug)]
pub struct ForwardEntry {
    /// The configured forward.
    pub forward: Forward,
    /// Its counters.
    pub counters: ForwardCounters,
    /// Its own new-connection rate cap.
    pub(crate) rate: RateLimiter,
}

/// Forwards by ID, built from the configuration; the admin socket adds and
/// removes forwards at runtime.
#[derive(Debug)]
pub struct ForwardTable {
    by_id: RwLock<HashMap<String, Arc<ForwardEntry>>>,
    rate_per_forward: u32,
    /// Requests naming a forward ID not in the table.
    pub unknown: AtomicU64,
}

impl ForwardTable {
    /// Builds the table; `rate_per_forward` is new connections per second (0: no cap).
    /// IDs are assumed unique (the configuration checks it).
    pub fn new(forwards: &[Forward], rate_per_forward: u32) -> ForwardTable {
        let by_id = forwards
            .iter()
            .map(|f| {
                let entry = ForwardEntry {
                    forward: f.clone(),
                    counters: ForwardCounters::default(),
                    rate: RateLimiter::new(rate_per_forward),
                };
                (f.id.clone(), Arc::new(entry))
            })
            .collect();
        ForwardTable {
            by_id: RwLock::new(by_id),
            rate_per_forward,
            unknown: AtomicU64::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<ForwardEntry>>> {
        // Every update is one insert or remove: a poisoned lock is still consistent.
        self.by_id.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves an ID the guest sent.
    pub fn get(&self, id: &str) -> Option<Arc<ForwardEntry>> {
        self.read().get(id).cloned()
    }

    /// Number of forwards.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the table has no forwards.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Every forward, sorted by ID.
    pub fn entries(&self) -> Vec<Arc<ForwardEntry>> {
        let mut v: Vec<_> = self.read().values().cloned().collect();
        v.sort_by(|a, b| a.forward.id.cmp(&b.forward.id));
        v
    }

    /// Adds a forward at runtime; refuses an ID or guest path already there.
    pub fn insert(&self, forward: Forward) -> Result<Arc<ForwardEntry>, String> {
        let mut t = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = t
            .values()
            .find(|e| e.forward.guest_path == forward.guest_path)
        {
            return Err(format!(
                "guest path {:?} is already forward {:?}",
                forward.guest_path, e.forward.id
            ));
        }
        if t.contains_key(&forward.id) {
            return Err(format!("forward ID {:?} is already in use", forward.id));
        }
        let entry = Arc::new(ForwardEntry {
            forward: forward.clone(),
            counters: ForwardCounters::default(),
            rate: RateLimiter::new(self.rate_per_forward),
        });
        t.insert(forward.id, entry.clone());
        Ok(entry)
    }

    /// Removes a forward at runtime; its open connections keep their entry.
    pub fn remove(&self, id: &str) -> Option<Arc<ForwardEntry>> {
        self.by_id
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
    }

    /// The `Bind` request that creates every listener of the table.
    pub fn bind_request(&self) -> sockfwd_proto::rpc::BindRequest {
        let mut req = sockfwd_proto::rpc::BindRequest::new();
        // A stable order makes the agent's logs and errors reproducible.
        req.sockets = self.entries().iter().map(|e| socket(&e.forward)).collect();
        req
    }
}

/// The `Bind` entry of one forward.
pub fn socket(f: &Forward) -> sockfwd_proto::rpc::Socket {
    let mut s = sockfwd_proto::rpc::Socket::new();
    s.forward_id = f.id.clone();
    s.socket_path = f.guest_path.clone();
    s.mode = f.mode;
    s.uid = f.uid;
    s.gid = f.gid;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn resolves_only_configured_ids_and_builds_bind() {
        let f = Forward {
            id: "a".into(),
            guest_path: "/g/a.sock".into(),
            host_path: PathBuf::from("/h/a.sock"),
            mode: Some(0o660),
            uid: None,
            gid: Some(5),
        };
        let t = ForwardTable::new(&[f], 0);
        assert!(t.get("a").is_some());
        assert!(t.get("/h/a.sock").is_none());
        let req = t.bind_request();
        assert_eq!(req.sockets.len(), 1);
        assert_eq!(req.sockets[0].socket_path, "/g/a.sock");
        assert_eq!(req.sockets[0].mode, Some(0o660));
        assert_eq!(req.sockets[0].uid, None);
        assert_eq!(req.sockets[0].gid, Some(5));
    }
}
