//! Bind and Unbind: one Unix listener per remote forward, each with its own
//! accept loop that hands the clients it accepts to [`crate::remote::client`].
//!
//! Bind is all or nothing: every socket of a request is validated and created
//! before any is committed to the forward table ([`crate::forwards`]), and when
//! one fails the listeners this call created are dropped (which unlinks their
//! files). Binding the same forward ID to the same path again is a no-op that
//! moves ownership to the calling control connection (a restarted relay binds
//! again); any other reuse of an ID or a path is refused. Binds run one at a time.

use crate::dispatch::ConnId;
use crate::forwards::{Existing, TableError, Tokens};
use crate::remote::client;
use crate::remote::paths::{self, PathError};
use crate::state::AgentState;
use sockfwd_proto::accept::accept_next;
use sockfwd_proto::backoff::Backoff;
use sockfwd_proto::counters::ForwardCounters;
use sockfwd_proto::forward_id::{self, ForwardIdError};
use sockfwd_proto::log_text::escape;
use sockfwd_proto::rpc::Socket;
use sockfwd_proto::transport::{Listener, ListenerError, SocketFileError, SocketFileOptions};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;

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
    /// The forward ID breaks the forward-ID rule.
    #[error(transparent)]
    ForwardId(#[from] ForwardIdError),
    /// The path failed a check, or its directories could not be made.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The forward table refuses it: the ID or the path is taken, or the agent
    /// is shutting down.
    #[error(transparent)]
    Table(#[from] TableError),
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
    /// Creating the socket failed: bind/listen, its mode or owner.
    #[error(transparent)]
    Socket(SocketFileError),
}

impl From<ListenerError> for BindCause {
    fn from(e: ListenerError) -> BindCause {
        match e {
            ListenerError::NotASocket { .. } => BindCause::Path(PathError::NotASocket),
            ListenerError::InUse { .. } => BindCause::Path(PathError::LiveSocket),
            ListenerError::File { source, .. } => BindCause::Socket(source),
            ListenerError::Bind { source, .. } => BindCause::Socket(SocketFileError::Bind(source)),
            other @ ListenerError::NotListenable(_) => {
                BindCause::Socket(SocketFileError::Bind(io::Error::other(other)))
            }
        }
    }
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

/// A listener created by the current Bind, not yet committed.
struct Created {
    forward_id: String,
    path: PathBuf,
    listener: Listener,
}

/// Checks and creates one socket; a no-op for a forward already bound there.
fn bind_one(state: &AgentState, s: &Socket, created: &mut Vec<Created>) -> Result<(), BindCause> {
    forward_id::check(&s.forward_id)?;
    let checked = paths::check_path(&s.socket_path, &state.config.allow_dirs)?;
    if state.forwards.check(&s.forward_id, &checked.path)? == Existing::Same {
        return Ok(());
    }
    // The same checks against what this request already created.
    for c in created.iter() {
        match (c.forward_id == s.forward_id, c.path == checked.path) {
            (true, true) => return Ok(()),
            (true, false) => {
                return Err(BindCause::Table(TableError::IdBoundElsewhere {
                    id: c.forward_id.clone(),
                    path: c.path.clone(),
                }))
            }
            (false, true) => {
                return Err(BindCause::Table(TableError::PathTaken(
                    c.forward_id.clone(),
                )))
            }
            (false, false) => {}
        }
    }
    let mode = s.mode.unwrap_or(state.config.socket_mode);
    if mode > 0o7777 {
        return Err(BindCause::Mode(mode));
    }
    paths::prepare_parent(&checked)?;
    // Unset owner: the configured default, else the agent's own (no chown).
    let options = SocketFileOptions {
        mode: Some(mode),
        uid: s.uid.or(state.config.socket_uid),
        gid: s.gid.or(state.config.socket_gid),
    };
    let listener = Listener::bind_unix(&checked.path, &options).map_err(BindCause::from)?;
    created.push(Created {
        forward_id: s.forward_id.clone(),
        path: checked.path,
        listener,
    });
    Ok(())
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
    let _serial = state.forwards.serialize().await;
    let mut created = Vec::new();
    for s in sockets {
        if let Err(cause) = bind_one(state, s, &mut created) {
            // Dropping the listeners made so far removes their files.
            drop(created);
            return Err(BindError {
                path: s.socket_path.clone(),
                cause,
            });
        }
    }
    {
        // Committed and started under one lock: shutdown's close either comes
        // first (nothing is committed) or finds every loop running.
        let mut open = state.forwards.open().map_err(|e| BindError {
            path: first.socket_path.clone(),
            cause: e.into(),
        })?;
        for c in created {
            let (stats, tokens) = open.insert(&c.forward_id, &c.path, &state.shutdown.stop);
            tracing::info!(forward_id = %c.forward_id, path = %escape(&c.path.to_string_lossy()), "forward listening");
            state.listeners.spawn(accept(
                state.clone(),
                c.forward_id,
                c.listener,
                stats,
                tokens,
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
async fn accept(
    state: Arc<AgentState>,
    forward_id: String,
    listener: Listener,
    stats: Arc<ForwardCounters>,
    tokens: Tokens,
) {
    let mut backoff = Backoff::accept();
    while let Some((conn, _peer)) = accept_next(&listener, &mut backoff, &tokens.stop).await {
        ForwardCounters::bump(&stats.total);
        let Ok(slot) = state.client_slots.clone().try_acquire_owned() else {
            ForwardCounters::bump(&stats.refused);
            tracing::warn!(
                %forward_id,
                "open-file limit reached: guest connection refused (raise LimitNOFILE)"
            );
            drop(conn);
            continue;
        };
        let serve = client::serve(state.clone(), conn, forward_id.clone(), stats.clone());
        state.connections.spawn(async move {
            serve.await;
            drop(slot);
        });
    }
    let listener_text = listener.address().to_string();
    tracing::debug!(%forward_id, listener = %escape(&listener_text), "forward listener closed");
    drop(listener);
    tokens.done.cancel();
}

/// Unbind: closes `forward_id`'s listener and removes its socket file (once the
/// accept loop has dropped it); connections already accepted run to their end.
/// Returns the path that was unbound.
pub async fn unbind(state: &AgentState, forward_id: &str) -> Result<PathBuf, UnbindError> {
    let _serial = state.forwards.serialize().await;
    let Some(removed) = state.forwards.remove(forward_id) else {
        return Err(UnbindError::Unknown(forward_id.to_owned()));
    };
    removed.tokens.stop.cancel();
    if tokio::time::timeout(UNBIND_WAIT, removed.tokens.done.cancelled())
        .await
        .is_err()
    {
        tracing::warn!(%forward_id, "listener still closing; answering Unbind anyway");
    }
    tracing::info!(%forward_id, path = %escape(&removed.path.to_string_lossy()), "forward unbound");
    Ok(removed.path)
}
