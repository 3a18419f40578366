//! The relay's own table of remote forwards: the only place a
//! `ConnectRequest.forward_id` is resolved (the guest never supplies a path),
//! with each forward's counters and its own caps. Built from the configuration;
//! the admin socket adds and removes forwards while the relay runs.

use crate::limits::ForwardLimiter;
use crate::remote_spec::Forward;
use sockfwd_proto::counters::ForwardCounters;
use sockfwd_proto::rpc::{BindRequest, Socket};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use thiserror::Error;

/// One forward with its live state.
#[derive(Debug)]
pub struct ForwardEntry {
    /// The configured forward.
    pub forward: Forward,
    /// Its counters, shared with its connections' tasks.
    pub counters: Arc<ForwardCounters>,
    /// Its own concurrency and rate caps.
    pub(crate) limiter: ForwardLimiter,
}

/// Why a forward could not be added at runtime.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InsertError {
    /// Another forward listens on the same guest path.
    #[error("guest path {path:?} is already forward {id:?}")]
    GuestPathTaken {
        /// The guest path.
        path: String,
        /// The forward that has it.
        id: String,
    },
    /// The ID is taken.
    #[error("forward ID {0:?} is already in use")]
    IdTaken(String),
}

/// Forwards by ID.
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
        let table = ForwardTable {
            by_id: RwLock::new(HashMap::new()),
            rate_per_forward,
            unknown: AtomicU64::new(0),
        };
        {
            let mut t = table.write();
            for f in forwards {
                t.insert(f.id.clone(), table.entry(f.clone()));
            }
        }
        table
    }

    fn entry(&self, forward: Forward) -> Arc<ForwardEntry> {
        Arc::new(ForwardEntry {
            forward,
            counters: Arc::default(),
            limiter: ForwardLimiter::new(self.rate_per_forward),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<ForwardEntry>>> {
        // Every update is one insert or remove: a poisoned lock is still consistent.
        self.by_id.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<ForwardEntry>>> {
        self.by_id.write().unwrap_or_else(PoisonError::into_inner)
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
    pub fn insert(&self, forward: Forward) -> Result<Arc<ForwardEntry>, InsertError> {
        let mut t = self.write();
        if let Some(e) = t
            .values()
            .find(|e| e.forward.guest_path == forward.guest_path)
        {
            return Err(InsertError::GuestPathTaken {
                path: forward.guest_path,
                id: e.forward.id.clone(),
            });
        }
        if t.contains_key(&forward.id) {
            return Err(InsertError::IdTaken(forward.id));
        }
        let entry = self.entry(forward);
        t.insert(entry.forward.id.clone(), Arc::clone(&entry));
        Ok(entry)
    }

    /// Removes a forward at runtime; its open connections keep their entry.
    pub fn remove(&self, id: &str) -> Option<Arc<ForwardEntry>> {
        self.write().remove(id)
    }

    /// The `Bind` request that creates every listener of the table.
    pub fn bind_request(&self) -> BindRequest {
        let mut req = BindRequest::new();
        // A stable order makes the agent's logs and errors reproducible.
        req.sockets = self.entries().iter().map(|e| socket(&e.forward)).collect();
        req
    }
}

/// The `Bind` entry of one forward.
pub fn socket(f: &Forward) -> Socket {
    let mut s = Socket::new();
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

    #[test]
    fn runtime_inserts_refuse_a_taken_id_or_guest_path() {
        let t = ForwardTable::new(&[Forward::from_spec("a=/g/a.sock:/h/a").unwrap()], 0);
        assert_eq!(
            t.insert(Forward::from_spec("b=/g/a.sock:/h/b").unwrap())
                .unwrap_err(),
            InsertError::GuestPathTaken {
                path: "/g/a.sock".into(),
                id: "a".into()
            }
        );
        assert_eq!(
            t.insert(Forward::from_spec("a=/g/c.sock:/h/c").unwrap())
                .unwrap_err()
                .to_string(),
            r#"forward ID "a" is already in use"#
        );
        t.insert(Forward::from_spec("b=/g/b.sock:/h/b").unwrap())
            .unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.remove("a").is_some());
        assert_eq!(t.entries()[0].forward.id, "b");
    }
}
