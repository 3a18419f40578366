//! The forward table and Bind: one Unix listener per forward, each with its own
//! accept loop that hands guest connections to [`crate::guest`].
//!
//! Bind is all or nothing: every socket of a request is validated and created
//! before any is committed, and when one fails the listeners this call created
//! are dropped (which unlinks their files). Binding the same forward ID to the
//! same path again is a no-op that moves ownership to the calling control
//! connection (a restarted relay binds again); any other reuse of an ID or a
//! path is refused. Binds run one at a time.

use crate::backoff::{accept_next, Backoff};
use crate::dispatch::ConnId;
use crate::state::AgentState;
use crate::stats::{ForwardStats, StatsSnapshot};
use crate::validate::{self, PathError};
use nix::unistd::{fchownat, Gid, Uid};
use sockfwd_proto::rpc::Socket;
use sockfwd_proto::transport::{Address, Listener, ListenerError};
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// A failed Bind; its text with the cause chain is the contract's
/// `binding socket forward listener at <path>: <cause>`.
#[derive(Debug, Error)]
#[error("binding socket forward listener at {path}")]
pub struct BindError {
    /// The socket path as the request gave it.
    pub path: String,
    /// What went wrong.
    #[source]
    pub cause: BindCause,
}

/// What went wrong binding one socket.
#[derive(Debug, Error)]
pub enum BindCause {
    /// The forward ID is empty or too long.
    #[error("{0}")]
    ForwardId(String),
    /// The path failed a check, or its directories could not be made.
    #[error(transparent)]
    Path(#[from] PathError),
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
    /// More sockets than `--max-sockets-per-bind`.
    #[error("{count} sockets in one request; the limit is {max}")]
    TooMany {
        /// Sockets in the request.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// `Socket.mode` has bits beyond 0o7777.
    #[error("mode {0:#o} is not a file mode")]
    Mode(u32),
    /// bind/listen failed.
    #[error("creating the socket")]
    Listen(#[source] io::Error),
    /// chmod failed.
    #[error("setting mode {mode:#o}")]
    Chmod {
        /// The mode asked for.
        mode: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// lchown failed.
    #[error("setting owner uid {uid:?} gid {gid:?}")]
    Chown {
        /// The owner asked for.
        uid: Option<u32>,
        /// The group asked for.
        gid: Option<u32>,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// Bind after Shutdown.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

struct Forward {
    path: PathBuf,
    stats: Arc<ForwardStats>,
    /// Cancelled by Unbind: the accept loop ends and drops the listener.
    stop: CancellationToken,
    /// Cancelled by the accept loop once its listener (and file) is gone.
    done: CancellationToken,
}

/// A failed Unbind.
#[derive(Debug, Error)]
pub enum UnbindError {
    /// No forward with this ID is bound.
    #[error("no forward {0:?} is bound")]
    Unknown(String),
}

/// Longest Unbind waits for the accept loop to drop its listener.
const UNBIND_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Default)]
struct Table {
    by_id: HashMap<String, Forward>,
    by_path: HashMap<PathBuf, String>,
    closed: bool,
}

/// The forward table: which forward listens where, and its counters.
#[derive(Default)]
pub struct Forwards {
    table: Mutex<Table>,
    /// Serializes Binds, so two calls cannot race for one path.
    bind_lock: tokio::sync::Mutex<()>,
}

/// A listener created by the current Bind, not yet committed.
struct Created {
    forward_id: String,
    path: PathBuf,
    listener: Listener,
}

impl Forwards {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Each update is a pair of inserts done together; a panic cannot split them.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses further Binds (shutdown); the listeners end with the stop token.
    pub fn close_all(&self) {
        self.lock().closed = true;
    }

    /// Every forward with its path and counters.
    pub fn snapshot(&self) -> Vec<(String, PathBuf, StatsSnapshot)> {
        let t = self.lock();
        let mut v: Vec<_> = t
            .by_id
            .iter()
            .map(|(id, f)| (id.clone(), f.path.clone(), f.stats.snapshot()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Checks and creates one socket; a no-op for a forward already bound there.
    fn bind_one(
        &self,
        state: &AgentState,
        s: &Socket,
        created: &mut Vec<Created>,
    ) -> Result<(), BindCause> {
        validate::check_forward_id(&s.forward_id).map_err(BindCause::ForwardId)?;
        let checked = validate::check_path(&s.socket_path, &state.config.allow_dirs)?;
        {
            let t = self.lock();
            if t.closed {
                return Err(BindCause::ShuttingDown);
            }
            if let Some(f) = t.by_id.get(&s.forward_id) {
                return if f.path == checked.path {
                    Ok(())
                } else {
                    Err(BindCause::IdBoundElsewhere {
                        id: s.forward_id.clone(),
                        path: f.path.clone(),
                    })
                };
            }
            if let Some(other) = t.by_path.get(&checked.path) {
                return Err(BindCause::PathTaken(other.clone()));
            }
        }
        // The same checks against what this request already created.
        for c in created.iter() {
            match (c.forward_id == s.forward_id, c.path == checked.path) {
                (true, true) => return Ok(()),
                (true, false) => {
                    return Err(BindCause::IdBoundElsewhere {
                        id: c.forward_id.clone(),
                        path: c.path.clone(),
                    })
                }
                (false, true) => return Err(BindCause::PathTaken(c.forward_id.clone())),
                (false, false) => {}
            }
        }
        let mode = s.mode.unwrap_or(state.config.socket_mode);
        if mode > 0o7777 {
            return Err(BindCause::Mode(mode));
        }
        validate::prepare_parent(&checked)?;
        validate::check_target(&checked.path)?;
        let listener =
            Listener::bind(&Address::Unix(checked.path.clone())).map_err(|e| match e {
                ListenerError::NotASocket { .. } => BindCause::Path(PathError::NotASocket),
                ListenerError::Bind { source, .. } => BindCause::Listen(source),
                other @ ListenerError::NotListenable(_) => {
                    BindCause::Listen(io::Error::other(other))
                }
            })?;
        // From here on, dropping `listener` on an error unlinks the socket.
        std::fs::set_permissions(&checked.path, std::fs::Permissions::from_mode(mode))
            .map_err(|source| BindCause::Chmod { mode, source })?;
        // Unset: the configured default, else the agent's own (no chown).
        let uid = s.uid.or(state.config.socket_uid);
        let gid = s.gid.or(state.config.socket_gid);
        if uid.is_some() || gid.is_some() {
            fchownat(
                None,
                &checked.path,
                uid.map(Uid::from_raw),
                gid.map(Gid::from_raw),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|source| BindCause::Chown { uid, gid, source })?;
        }
        created.push(Created {
            forward_id: s.forward_id.clone(),
            path: checked.path,
            listener,
        });
        Ok(())
    }
}

/// Bind: creates every listener of `sockets` or none; see the module docs.
/// `owner` is the calling control connection (`None`: boot configuration).
pub async fn bind(
    state: &Arc<AgentState>,
    owner: Option<ConnId>,
    sockets: &[Socket],
) -> Result<(), BindError> {
    let Some(first) = sockets.first() else {
        return Ok(()); // an empty Bind is the host's liveness ping
    };
    let max = state.config.max_sockets_per_bind;
    if sockets.len() > max {
        return Err(BindError {
            path: first.socket_path.clone(),
            cause: BindCause::TooMany {
                count: sockets.len(),
                max,
            },
        });
    }
    let forwards = &state.forwards;
    let _serial = forwards.bind_lock.lock().await;
    let mut created = Vec::new();
    for s in sockets {
        if let Err(cause) = forwards.bind_one(state, s, &mut created) {
            // Dropping the listeners made so far removes their files.
            drop(created);
            return Err(BindError {
                path: s.socket_path.clone(),
                cause,
            });
        }
    }
    {
        let mut t = forwards.lock();
        if t.closed {
            drop(created);
            return Err(BindError {
                path: first.socket_path.clone(),
                cause: BindCause::ShuttingDown,
            });
        }
        for c in created {
            let stats = Arc::new(ForwardStats::default());
            let stop = state.shutdown.stop.child_token();
            let done = CancellationToken::new();
            t.by_path.insert(c.path.clone(), c.forward_id.clone());
            t.by_id.insert(
                c.forward_id.clone(),
                Forward {
                    path: c.path.clone(),
                    stats: stats.clone(),
                    stop: stop.clone(),
                    done: done.clone(),
                },
            );
            tracing::info!(forward_id = %c.forward_id, path = %c.path.display(), "forward listening");
            state.listeners.spawn(serve_forward(
                state.clone(),
                c.forward_id,
                c.listener,
                stats,
                (stop, done),
            ));
        }
    }
    let mut router = state.dispatcher.lock();
    for s in sockets {
        router.set_owner(&s.forward_id, owner);
    }
    Ok(())
}

/// One forward's accept loop; the listener (and its file) goes when it ends.
async fn serve_forward(
    state: Arc<AgentState>,
    forward_id: String,
    listener: Listener,
    stats: Arc<ForwardStats>,
    (stop, done): (CancellationToken, CancellationToken),
) {
    let mut backoff = Backoff::accept();
    while let Some((conn, _peer)) = accept_next(&listener, &mut backoff, &stop).await {
        ForwardStats::bump(&stats.total);
        let Ok(slot) = state.guest_slots.clone().try_acquire_owned() else {
            ForwardStats::bump(&stats.refused);
            tracing::warn!(
                %forward_id,
                "open-file limit reached: guest connection refused (raise LimitNOFILE)"
            );
            drop(conn);
            continue;
        };
        let serve = crate::guest::serve(state.clone(), conn, forward_id.clone(), stats.clone());
        state.guests.spawn(async move {
            serve.await;
            drop(slot);
        });
    }
    tracing::debug!(%forward_id, listener = %listener.address(), "forward listener closed");
    drop(listener);
    done.cancel();
}

/// Unbind: closes `forward_id`'s listener and removes its socket file (once the
/// accept loop has dropped it); connections already accepted run to their end.
/// Returns the path that was unbound.
pub async fn unbind(state: &AgentState, forward_id: &str) -> Result<PathBuf, UnbindError> {
    let forwards = &state.forwards;
    let _serial = forwards.bind_lock.lock().await;
    let removed = {
        let mut t = forwards.lock();
        let f = t.by_id.remove(forward_id);
        if let Some(f) = &f {
            t.by_path.remove(&f.path);
        }
        f
    };
    let Some(f) = removed else {
        return Err(UnbindError::Unknown(forward_id.to_owned()));
    };
    f.stop.cancel();
    if tokio::time::timeout(UNBIND_WAIT, f.done.cancelled())
        .await
        .is_err()
    {
        tracing::warn!(%forward_id, "listener still closing; answering Unbind anyway");
    }
    tracing::info!(%forward_id, path = %f.path.display(), "forward unbound");
    Ok(f.path)
}
