//! The relay's local forwards while it runs: `-L` listeners from the command
//! line and the admin socket, and auto-forwards from guest port events. Each
//! has an ID (`local-N`, `auto-PORT`) for `status` and `remove`; each one
//! opened is announced on stdout (`announce`) for scripts.

use crate::local::forward::LocalForward;
use crate::local_spec::LocalSpec;
use sockfwd_proto::counters::CounterSnapshot;
use sockfwd_proto::transport::ListenAt;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Prints one line on stdout (listener reports meant for scripts), flushed.
pub(crate) fn announce(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    // A closed stdout is no reason to fail; the log has the line too.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Where a host listener came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `-L SPEC` (flag or admin `add`), as given.
    Spec(String),
    /// An auto-forward of a guest listener.
    Auto {
        /// The guest's bind address.
        address: String,
        /// The guest port.
        port: u16,
    },
}

struct Entry {
    origin: Origin,
    forward: LocalForward,
}

/// One row of `status` for a local forward.
#[derive(Debug, Clone)]
pub struct LocalRow {
    /// `local-N` or `auto-PORT`.
    pub id: String,
    /// The bound address.
    pub local: ListenAt,
    /// The guest target.
    pub remote: String,
    /// Its counters.
    pub counters: CounterSnapshot,
}

#[derive(Default)]
struct Inner {
    next: u64,
    by_id: BTreeMap<String, Entry>,
}

/// The table of local forwards.
#[derive(Default)]
pub struct ListenerTable {
    inner: Mutex<Inner>,
}

impl ListenerTable {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `forward`; returns its ID.
    pub fn add(&self, origin: Origin, forward: LocalForward) -> String {
        let mut t = self.lock();
        let id = match &origin {
            Origin::Spec(_) => {
                t.next += 1;
                format!("local-{}", t.next)
            }
            Origin::Auto { port, .. } => format!("auto-{port}"),
        };
        t.by_id.insert(id.clone(), Entry { origin, forward });
        id
    }

    /// Closes and forgets the listener named by its ID or its spec as given.
    pub fn remove(&self, id_or_spec: &str) -> Option<String> {
        let mut t = self.lock();
        let id = if t.by_id.contains_key(id_or_spec) {
            id_or_spec.to_owned()
        } else {
            let canonical = id_or_spec.parse::<LocalSpec>().ok();
            t.by_id
                .iter()
                .find(|(_, e)| {
                    e.origin == Origin::Spec(id_or_spec.to_owned())
                        || canonical.as_ref() == Some(e.forward.spec())
                })
                .map(|(id, _)| id.clone())?
        };
        let e = t.by_id.remove(&id)?;
        e.forward.close();
        Some(id)
    }

    /// Whether an auto-forward exists for guest `port`.
    pub fn has_auto(&self, port: u16) -> bool {
        self.lock().by_id.contains_key(&format!("auto-{port}"))
    }

    /// How many auto-forwards are open.
    pub fn auto_count(&self) -> usize {
        self.lock()
            .by_id
            .values()
            .filter(|e| matches!(e.origin, Origin::Auto { .. }))
            .count()
    }

    /// Closes the auto-forward of guest `address:port`, if that is the one forwarded.
    pub fn remove_auto(&self, address: &str, port: u16) -> Option<ListenAt> {
        let mut t = self.lock();
        let id = format!("auto-{port}");
        let matches = matches!(t.by_id.get(&id), Some(e)
            if e.origin == Origin::Auto { address: address.to_owned(), port });
        if !matches {
            return None;
        }
        let e = t.by_id.remove(&id)?;
        e.forward.close();
        Some(e.forward.local_addr().clone())
    }

    /// Closes every auto-forward (the session that reported them ended).
    pub fn close_auto(&self) {
        let mut t = self.lock();
        t.by_id.retain(|_, e| {
            let auto = matches!(e.origin, Origin::Auto { .. });
            if auto {
                e.forward.close();
            }
            !auto
        });
    }

    /// Every listener with its counters, by ID.
    pub fn rows(&self) -> Vec<LocalRow> {
        self.lock()
            .by_id
            .iter()
            .map(|(id, e)| LocalRow {
                id: id.clone(),
                local: e.forward.local_addr().clone(),
                remote: e.forward.spec().remote_text(),
                counters: e.forward.counters(),
            })
            .collect()
    }
}
