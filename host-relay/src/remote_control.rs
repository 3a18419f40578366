//! Remote forwards added and removed while the relay runs: the one code path
//! behind the admin socket's `add forward`, `add remote` and `remove`, and the
//! library's [`RemoteControl`] (from [`crate::Relay::remote`]).
//!
//! Adding puts the forward in the relay's table first (so a session that
//! starts meanwhile binds it too), then, when a session is up, binds it in
//! the guest and, for a guest TCP listener, asks `ListForwards` for the
//! address it got; any failure takes it out again, so a forward is either
//! added and bound or not there at all. Without a session the forward waits
//! in the table, and the next session binds it with the others. A guest TCP
//! listener is refused at once by an agent without the `tcp-listen`
//! extension ([`NO_TCP_LISTEN`]).

use crate::local::guest_handle::Guest;
use crate::local::listener_table::announce;
use crate::remote_spec::{Forward, SpecError};
use crate::remote_table::{socket, ForwardEntry, ForwardTable, InsertError, NO_TCP_LISTEN};
use crate::rpc::{call, context, CallError, Peer};
use sockfwd_proto::counters::CounterSnapshot;
use sockfwd_proto::info::TCP_LISTEN;
use sockfwd_proto::log_text::{escape, escape_clipped};
use sockfwd_proto::rpc::{BindRequest, UnbindRequest};
use sockfwd_proto::transport::ListenAt;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Why a remote forward could not be added or removed.
#[derive(Debug, Error)]
pub enum RemoteError {
    /// An `-R` spec that does not parse.
    #[error("invalid -R {spec:?}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        #[source]
        source: SpecError,
    },
    /// A forward (built by a caller) that breaks a rule.
    #[error("invalid forward {id:?}")]
    Forward {
        /// Its ID.
        id: String,
        /// What is wrong with it.
        #[source]
        source: SpecError,
    },
    /// Its ID or its guest listener is already in use.
    #[error(transparent)]
    Insert(#[from] InsertError),
    /// A guest TCP listener, and the agent does not list `tcp-listen`.
    #[error("-R {}: {NO_TCP_LISTEN}", escape(.spec))]
    NoTcpListen {
        /// The forward as an `-R` spec writes it.
        spec: String,
    },
    /// The agent refused to bind it.
    #[error("Bind of forward {id:?} failed")]
    Bind {
        /// The forward.
        id: String,
        /// The agent's answer.
        #[source]
        source: CallError,
    },
    /// The agent did not say where it bound it.
    #[error("ListForwards after the Bind of forward {id:?} failed")]
    List {
        /// The forward.
        id: String,
        /// The agent's answer.
        #[source]
        source: CallError,
    },
    /// The agent refused to unbind it.
    #[error("Unbind of forward {id:?} failed")]
    Unbind {
        /// The forward.
        id: String,
        /// The agent's answer.
        #[source]
        source: CallError,
    },
    /// No such forward.
    #[error("no forward {0:?}")]
    NotFound(String),
}

/// Adds, finds and removes the remote forwards of a running relay. Cheap to clone.
#[derive(Clone)]
pub struct RemoteControl {
    table: Arc<ForwardTable>,
    guest: Guest,
    bind_timeout: Duration,
}

/// A handle on one remote forward of a running relay: its guest address (the
/// bound port for a guest TCP listener), its counters, and `close()`.
#[derive(Clone)]
pub struct RemoteForward {
    entry: Arc<ForwardEntry>,
    control: RemoteControl,
}

impl RemoteControl {
    /// Control over `table`, reaching the agent through `guest`'s sessions;
    /// each call to the agent within `bind_timeout`.
    pub(crate) fn new(
        table: Arc<ForwardTable>,
        guest: Guest,
        bind_timeout: Duration,
    ) -> RemoteControl {
        RemoteControl {
            table,
            guest,
            bind_timeout,
        }
    }

    /// Adds the forward of an `-R` spec; see [`RemoteControl::add`].
    pub async fn add_spec(&self, spec: &str) -> Result<RemoteForward, RemoteError> {
        let forward = Forward::from_remote_spec(spec).map_err(|source| RemoteError::Spec {
            spec: spec.to_owned(),
            source,
        })?;
        self.add(forward).await
    }

    /// Adds `forward` and, when a session is up (waiting up to the stream
    /// deadline for one), binds it in the guest and learns its bound address;
    /// all or nothing (see the module docs).
    pub async fn add(&self, forward: Forward) -> Result<RemoteForward, RemoteError> {
        forward.check().map_err(|source| RemoteError::Forward {
            id: forward.id.clone(),
            source,
        })?;
        let entry = self.table.insert(forward)?;
        let handle = RemoteForward {
            entry: Arc::clone(&entry),
            control: self.clone(),
        };
        let f = &entry.forward;
        let Ok(peer) = self.guest.peer().await else {
            tracing::info!(forward_id = %f.id, spec = %escape(&f.spec_text()),
                "forward added; it is bound when the agent connects");
            return Ok(handle);
        };
        if let Err(e) = self.bind(&peer, &entry).await {
            self.table.remove(&f.id);
            return Err(e);
        }
        tracing::info!(forward_id = %f.id, spec = %escape(&f.spec_text()), "forward added");
        Ok(handle)
    }

    /// Binds `entry` through `peer`; for a guest TCP listener, learns where.
    async fn bind(&self, peer: &Peer, entry: &ForwardEntry) -> Result<(), RemoteError> {
        let f = &entry.forward;
        if f.listens_on_tcp() && !peer.supports(TCP_LISTEN) {
            return Err(RemoteError::NoTcpListen {
                spec: f.spec_text(),
            });
        }
        let limit = self.bind_timeout;
        let mut req = BindRequest::new();
        req.sockets = vec![socket(f)];
        call(limit, peer.client.bind(context(limit), &req))
            .await
            .map_err(|source| RemoteError::Bind {
                id: f.id.clone(),
                source,
            })?;
        let changed = match self
            .table
            .learn_bound(&peer.client, &peer.info, limit)
            .await
        {
            Ok(changed) => changed,
            Err(source) => {
                // Half an add is none: the agent keeps no listener we cannot name.
                let _ = self.unbind(peer, &f.id).await;
                return Err(RemoteError::List {
                    id: f.id.clone(),
                    source,
                });
            }
        };
        for e in changed {
            let line = e.remote_line();
            announce(&line);
            tracing::info!(forward_id = %e.forward.id, "{}", escape_clipped(&line, 512));
        }
        Ok(())
    }

    async fn unbind(&self, peer: &Peer, id: &str) -> Result<(), RemoteError> {
        let limit = self.bind_timeout;
        let mut req = UnbindRequest::new();
        req.forward_id = id.to_owned();
        call(limit, peer.client.unbind(context(limit), &req))
            .await
            .map(drop)
            .map_err(|source| RemoteError::Unbind {
                id: id.to_owned(),
                source,
            })
    }

    /// The forward with ID `id`.
    pub fn get(&self, id: &str) -> Option<RemoteForward> {
        self.table.get(id).map(|entry| RemoteForward {
            entry,
            control: self.clone(),
        })
    }

    /// The ID of the forward named by `id_or_spec`: its ID, or the
    /// `--forward` or `-R` spec it was added with (the whole of it: an `-L`
    /// spec of the same text names a local forward, not this one).
    pub fn find(&self, id_or_spec: &str) -> Option<String> {
        if self.table.get(id_or_spec).is_some() {
            return Some(id_or_spec.to_owned());
        }
        [
            Forward::from_spec(id_or_spec),
            Forward::from_remote_spec(id_or_spec),
        ]
        .into_iter()
        .flatten()
        .find(|f| {
            self.table
                .get(&f.id)
                .is_some_and(|e| (&e.forward.listen, &e.forward.target) == (&f.listen, &f.target))
        })
        .map(|f| f.id)
    }

    /// Removes forward `id`: the agent closes its listener (`Unbind`; its
    /// open connections run to their end), then the relay forgets it. Without
    /// a session it is only forgotten.
    pub async fn remove(&self, id: &str) -> Result<(), RemoteError> {
        let Some(entry) = self.table.get(id) else {
            return Err(RemoteError::NotFound(id.to_owned()));
        };
        if let Ok(peer) = self.guest.peer().await {
            // A guest TCP listener was never sent to an agent without tcp-listen.
            if !entry.forward.listens_on_tcp() || peer.supports(TCP_LISTEN) {
                self.unbind(&peer, id).await?;
            }
        }
        self.table.remove(id);
        tracing::info!(forward_id = %id, "forward removed");
        Ok(())
    }
}

impl RemoteForward {
    /// Its forward ID.
    pub fn id(&self) -> &str {
        &self.entry.forward.id
    }

    /// The forward: where it listens in the guest and what it reaches.
    pub fn forward(&self) -> &Forward {
        &self.entry.forward
    }

    /// Where it listens in the guest now: its socket file, or its TCP address
    /// with the port the agent picked for port 0 (`None` until bound, and
    /// again after a new agent's session until it is bound there).
    pub fn guest_addr(&self) -> Option<ListenAt> {
        self.entry.guest_addr()
    }

    /// The relay's counters for it.
    pub fn counters(&self) -> CounterSnapshot {
        self.entry.counters.snapshot()
    }

    /// Closes it in the guest and removes it from the relay; see
    /// [`RemoteControl::remove`].
    pub async fn close(&self) -> Result<(), RemoteError> {
        self.control.remove(self.id()).await
    }
}

impl std::fmt::Debug for RemoteForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RemoteForward({} {} -> {})",
            self.id(),
            self.entry.guest_text(),
            self.entry.forward.target
        )
    }
}
