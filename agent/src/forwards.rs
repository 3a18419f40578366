//! The forward table: which remote forward listens at which path, with its
//! counters and the tokens that end its accept loop.
//!
//! Plain data under a lock; Bind and Unbind (`remote::bind`) decide what goes
//! in. Each update is a pair of map changes made under one lock, so a forward
//! ID and its path never disagree.

use sockfwd_proto::counters::{CounterSnapshot, ForwardCounters};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why the table refuses a forward.
#[derive(Debug, Error)]
pub enum TableError {
    /// The forward ID is bound at another path.
    #[error("forward ID {id:?} is already bound at {path}")]
    IdBoundElsewhere {
        /// The forward ID.
        id: String,
        /// Where it is bound.
        path: PathBuf,
    },
    /// The path is bound to another forward ID.
    #[error("the path is already bound to forward ID {0:?}")]
    PathTaken(String),
    /// The table was closed (shutdown).
    #[error("the agent is shutting down")]
    Closed,
}

/// What the table already holds for a forward asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Nothing: the forward may be created.
    Free,
    /// This forward ID at this very path: nothing to create.
    Same,
}

/// How a forward's accept loop is ended, and how it says it has ended.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Cancelled by Unbind (or shutdown): the accept loop ends and drops its
    /// listener, which removes the socket file.
    pub stop: CancellationToken,
    /// Cancelled by the accept loop once its listener is gone.
    pub done: CancellationToken,
}

struct Entry {
    path: PathBuf,
    stats: Arc<ForwardCounters>,
    tokens: Tokens,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<String, Entry>,
    by_path: HashMap<PathBuf, String>,
    closed: bool,
}

/// The forward table; see the module docs.
#[derive(Default)]
pub struct Forwards {
    table: Mutex<Table>,
    /// Held by a whole Bind or Unbind, so two calls cannot race for one path.
    serial: tokio::sync::Mutex<()>,
}

/// The open table, locked: forwards inserted through it are committed together.
pub struct Open<'a> {
    table: MutexGuard<'a, Table>,
}

/// A forward removed by Unbind.
#[derive(Debug)]
pub struct Removed {
    /// Where its socket was.
    pub path: PathBuf,
    /// Its accept loop's tokens.
    pub tokens: Tokens,
}

impl Forwards {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every update is done whole under the lock; a panic cannot split one.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the Bind or Unbind in progress; hold the guard for a whole call.
    pub async fn serialize(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.serial.lock().await
    }

    /// Whether `id` at `path` may be created, is already there, or clashes.
    pub fn check(&self, id: &str, path: &Path) -> Result<Existing, TableError> {
        let t = self.lock();
        if t.closed {
            return Err(TableError::Closed);
        }
        if let Some(e) = t.by_id.get(id) {
            return if e.path == path {
                Ok(Existing::Same)
            } else {
                Err(TableError::IdBoundElsewhere {
                    id: id.to_owned(),
                    path: e.path.clone(),
                })
            };
        }
        match t.by_path.get(path) {
            Some(other) => Err(TableError::PathTaken(other.clone())),
            None => Ok(Existing::Free),
        }
    }

    /// The table locked for inserting; refused once it is closed.
    pub fn open(&self) -> Result<Open<'_>, TableError> {
        let table = self.lock();
        if table.closed {
            return Err(TableError::Closed);
        }
        Ok(Open { table })
    }

    /// Takes `id` out of the table.
    pub fn remove(&self, id: &str) -> Option<Removed> {
        let mut t = self.lock();
        let e = t.by_id.remove(id)?;
        t.by_path.remove(&e.path);
        Some(Removed {
            path: e.path,
            tokens: e.tokens,
        })
    }

    /// Refuses further forwards (shutdown); the accept loops end with their tokens.
    pub fn close_all(&self) {
        self.lock().closed = true;
    }

    /// Every forward with its path and counters, by forward ID.
    pub fn snapshot(&self) -> Vec<(String, PathBuf, CounterSnapshot)> {
        let t = self.lock();
        let mut v: Vec<_> = t
            .by_id
            .iter()
            .map(|(id, e)| (id.clone(), e.path.clone(), e.stats.snapshot()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

impl Open<'_> {
    /// Commits `id` at `path`, its accept loop stopping with `parent`; returns
    /// its counters and tokens for the loop.
    pub fn insert(
        &mut self,
        id: &str,
        path: &Path,
        parent: &CancellationToken,
    ) -> (Arc<ForwardCounters>, Tokens) {
        let stats = Arc::new(ForwardCounters::default());
        let tokens = Tokens {
            stop: parent.child_token(),
            done: CancellationToken::new(),
        };
        self.table.by_path.insert(path.to_path_buf(), id.to_owned());
        self.table.by_id.insert(
            id.to_owned(),
            Entry {
                path: path.to_path_buf(),
                stats: stats.clone(),
                tokens: tokens.clone(),
            },
        );
        (stats, tokens)
    }
}
