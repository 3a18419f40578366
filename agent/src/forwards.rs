//! The forward table: which remote forward listens where (a socket path or a
//! TCP address, [`ListenAt`]), with its counters and the tokens that end its
//! accept loop.
//!
//! Plain data under a lock; Bind and Unbind (`remote::bind`) decide what goes
//! in. Each update is a pair of map changes made under one lock, so a forward
//! ID and its listener never disagree.

use sockfwd_proto::counters::{CounterSnapshot, ForwardCounters};
pub use sockfwd_proto::transport::ListenAt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why the table refuses a forward.
#[derive(Debug, Error)]
pub enum TableError {
    /// The forward ID is bound elsewhere.
    #[error("forward ID {id:?} is already bound at {at}")]
    IdBoundElsewhere {
        /// The forward ID.
        id: String,
        /// Where it is bound.
        at: ListenAt,
    },
    /// The path or address is bound to another forward ID.
    #[error("the {} is already bound to forward ID {id:?}", kind(.at))]
    PathTaken {
        /// Where.
        at: ListenAt,
        /// The forward bound there.
        id: String,
    },
    /// The table was closed (shutdown).
    #[error("the agent is shutting down")]
    Closed,
}

/// What the table already holds for a forward asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Nothing: the forward may be created.
    Free,
    /// This forward ID at this very place: nothing to create.
    Same,
}

fn kind(at: &ListenAt) -> &'static str {
    match at {
        ListenAt::Unix(_) => "path",
        ListenAt::Tcp(_) => "address",
    }
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
    at: ListenAt,
    /// A TCP listener's socket inode: the guest's port list leaves it out.
    inode: Option<u64>,
    stats: Arc<ForwardCounters>,
    tokens: Tokens,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<String, Entry>,
    by_place: HashMap<ListenAt, String>,
    closed: bool,
}

/// The forward table; see the module docs.
#[derive(Default)]
pub struct Forwards {
    table: Mutex<Table>,
    /// Held by a whole Bind or Unbind, so two calls cannot race for one place.
    serial: tokio::sync::Mutex<()>,
}

/// The open table, locked: forwards inserted through it are committed together.
pub struct Open<'a> {
    table: MutexGuard<'a, Table>,
}

/// A forward removed by Unbind.
#[derive(Debug)]
pub struct Removed {
    /// Where it listened.
    pub at: ListenAt,
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

    /// Whether `id` at `asked` may be created, is already there, or clashes.
    pub fn check(&self, id: &str, asked: &ListenAt) -> Result<Existing, TableError> {
        let t = self.lock();
        if t.closed {
            return Err(TableError::Closed);
        }
        if let Some(e) = t.by_id.get(id) {
            return if e.at.answers(asked) {
                Ok(Existing::Same)
            } else {
                Err(TableError::IdBoundElsewhere {
                    id: id.to_owned(),
                    at: e.at.clone(),
                })
            };
        }
        // Port 0 never clashes here: the kernel picks a free one.
        match t.by_place.get(asked) {
            Some(other) => Err(TableError::PathTaken {
                at: asked.clone(),
                id: other.clone(),
            }),
            None => Ok(Existing::Free),
        }
    }

    /// The socket inodes of the agent's own TCP listeners.
    pub fn tcp_inodes(&self) -> HashSet<u64> {
        self.lock().by_id.values().filter_map(|e| e.inode).collect()
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
        t.by_place.remove(&e.at);
        Some(Removed {
            at: e.at,
            tokens: e.tokens,
        })
    }

    /// Refuses further forwards (shutdown); the accept loops end with their tokens.
    pub fn close_all(&self) {
        self.lock().closed = true;
    }

    /// Every forward with where it listens and its counters, by forward ID.
    pub fn snapshot(&self) -> Vec<(String, ListenAt, CounterSnapshot)> {
        let t = self.lock();
        let mut v: Vec<_> = t
            .by_id
            .iter()
            .map(|(id, e)| (id.clone(), e.at.clone(), e.stats.snapshot()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

impl Open<'_> {
    /// Commits `id` at `at` (a TCP listener with its socket `inode`), its
    /// accept loop stopping with `parent`; returns its counters and tokens for
    /// the loop.
    pub fn insert(
        &mut self,
        id: &str,
        at: &ListenAt,
        inode: Option<u64>,
        parent: &CancellationToken,
    ) -> (Arc<ForwardCounters>, Tokens) {
        let stats = Arc::new(ForwardCounters::default());
        let tokens = Tokens {
            stop: parent.child_token(),
            done: CancellationToken::new(),
        };
        self.table.by_place.insert(at.clone(), id.to_owned());
        self.table.by_id.insert(
            id.to_owned(),
            Entry {
                at: at.clone(),
                inode,
                stats: stats.clone(),
                tokens: tokens.clone(),
            },
        );
        (stats, tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_answered_by_the_forward_bound_on_that_address() {
        let tcp = |s: &str| ListenAt::Tcp(s.parse().unwrap());
        let bound = tcp("127.0.0.1:41233");

        let f = Forwards::default();
        let stop = CancellationToken::new();
        f.open().unwrap().insert("db", &bound, Some(7), &stop);
        assert_eq!(f.check("db", &tcp("127.0.0.1:0")).unwrap(), Existing::Same);
        let err = f.check("db", &tcp("[::1]:0")).unwrap_err().to_string();
        assert_eq!(
            err,
            r#"forward ID "db" is already bound at 127.0.0.1:41233"#
        );
        let err = f.check("other", &bound).unwrap_err().to_string();
        assert_eq!(err, r#"the address is already bound to forward ID "db""#);
        assert_eq!(
            f.check("other", &tcp("127.0.0.1:0")).unwrap(),
            Existing::Free
        );
        assert_eq!(f.tcp_inodes(), [7].into());
        assert_eq!(f.remove("db").unwrap().at, bound);
        assert!(f.tcp_inodes().is_empty());
    }
}
