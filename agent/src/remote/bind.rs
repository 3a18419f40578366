//! Bind and Unbind: one listener per remote forward, a Unix socket file or a
//! TCP address ([`crate::remote::listener`]), each with its own accept loop
//! that hands the clients it accepts to [`crate::remote::client`].
//!
//! Bind is all or nothing: every socket of a request is validated and created
//! before any is committed to the forward table ([`crate::forwards`]), and when
//! one fails the listeners this call created are dropped (which unlinks their
//! files and closes their ports). Binding the same forward ID to the same place
//! again (for TCP port 0: the same address, whatever port it got) is a no-op
//! that moves ownership to the calling control connection (a restarted relay
//! binds again); any other reuse of an ID, a path or an address is refused.
//! Binds run one at a time.

use crate::dispatch::ConnId;
use crate::forwards::{Existing, ListenAt, TableError, Tokens};
use crate::remote::client;
use crate::remote::listener::{self, TcpListenError};
use crate::remote::paths::{self, PathError};
use crate::state::AgentState;
use sockfwd_proto::accept::{accept_next, Accept as _};
use sockfwd_proto::backoff::Backoff;
use sockfwd_proto::counters::ForwardCounters;
use sockfwd_proto::forward_id::{self, ForwardIdError};
use sockfwd_proto::log_text::escape;
use sockfwd_proto::rpc::Socket;
use sockfwd_proto::transport::{
    ClientListener, Listener, ListenerError, SocketFileError, SocketFileOptions,
};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;

/// A failed Bind; its text with the cause chain is the contract's
/// `binding socket forward listener at <path>: <cause>` (for a TCP listener,
/// its address in place of the path).
#[derive(Debug, Error)]
#[error("binding socket forward listener at {path}")]
pub struct BindError {
    /// The socket path (or TCP address) as the request gave it.
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
    /// The TCP address was refused, or could not be listened on.
    #[error(transparent)]
    Tcp(#[from] TcpListenError),
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
    at: ListenAt,
    /// A TCP listener's socket inode.
    inode: Option<u64>,
    listener: ClientListener,
}

/// What one socket of the request asks for, checked.
enum Asked {
    /// A socket file at this path.
    Unix(paths::CheckedPath),
    /// A TCP listener at this address (port 0: any).
    Tcp(SocketAddr),
}

impl Asked {
    fn at(&self) -> ListenAt {
        match self {
            Asked::Unix(checked) => ListenAt::Unix(checked.path.clone()),
            Asked::Tcp(addr) => ListenAt::Tcp(*addr),
        }
    }
}

/// Checks where a socket of the request asks to listen.
fn asked(state: &AgentState, s: &Socket) -> Result<Asked, BindCause> {
    if s.tcp_listen.is_empty() {
        let checked = paths::check_path(&s.socket_path, &state.config.allow_dirs)?;
        return Ok(Asked::Unix(checked));
    }
    if !s.socket_path.is_empty() {
        return Err(TcpListenError::Both.into());
    }
    if s.mode.is_some() || s.uid.is_some() || s.gid.is_some() {
        return Err(TcpListenError::Owner.into());
    }
    let addr = listener::parse(&s.tcp_listen)?;
    if !listener::allowed(addr, &state.config.allow_listen) {
        return Err(TcpListenError::NotAllowed(addr).into());
    }
    Ok(Asked::Tcp(addr))
}

/// Checks and creates one socket; a no-op for a forward already bound there.
fn bind_one(state: &AgentState, s: &Socket, created: &mut Vec<Created>) -> Result<(), BindCause> {
    forward_id::check(&s.forward_id)?;
    let asked = asked(state, s)?;
    let at = asked.at();
    if state.forwards.check(&s.forward_id, &at)? == Existing::Same {
        return Ok(());
    }
    // The same checks against what this request already created.
    for c in created.iter() {
        match (c.forward_id == s.forward_id, c.at.answers(&at)) {
            (true, true) => return Ok(()),
            (true, false) => {
                return Err(BindCause::Table(TableError::IdBoundElsewhere {
                    id: c.forward_id.clone(),
                    at: c.at.clone(),
                }))
            }
            // Port 0 asked again by another forward gets a port of its own.
            (false, true) if c.at == at => {
                return Err(BindCause::Table(TableError::PathTaken {
                    at,
                    id: c.forward_id.clone(),
                }))
            }
            _ => {}
        }
    }
    let made = match asked {
        Asked::Tcp(addr) => {
            let bound = listener::bind(addr)?;
            Created {
                forward_id: s.forward_id.clone(),
                at: bound.listener.at().clone(),
                inode: Some(bound.inode),
                listener: bound.listener,
            }
        }
        Asked::Unix(checked) => Created {
            forward_id: s.forward_id.clone(),
            listener: ClientListener::unix(bind_file(state, s, &checked)?, checked.path.clone()),
            at,
            inode: None,
        },
    };
    created.push(made);
    Ok(())
}

/// Creates a socket file with its mode and owner.
fn bind_file(
    state: &AgentState,
    s: &Socket,
    checked: &paths::CheckedPath,
) -> Result<Listener, BindCause> {
    let mode = s.mode.unwrap_or(state.config.socket_mode);
    if mode > 0o7777 {
        return Err(BindCause::Mode(mode));
    }
    // The directory as walked: the socket is bound by name in it, so a
    // directory swapped on the path meanwhile cannot redirect it.
    let (dir, name) = paths::open_parent(checked)?;
    // Unset owner: the configured default, else the agent's own (no chown).
    let options = SocketFileOptions {
        mode: Some(mode),
        uid: s.uid.or(state.config.socket_uid),
        gid: s.gid.or(state.config.socket_gid),
    };
    let addr = sockfwd_proto::transport::Address::Unix(checked.path.clone());
    Listener::bind_in(dir, &name, addr, &options).map_err(BindCause::from)
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
            path: place_text(first).to_owned(),
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
                path: place_text(s).to_owned(),
                cause,
            });
        }
    }
    {
        // Committed and started under one lock: shutdown's close either comes
        // first (nothing is committed) or finds every loop running.
        let mut open = state.forwards.open().map_err(|e| BindError {
            path: place_text(first).to_owned(),
            cause: e.into(),
        })?;
        for c in created {
            let (stats, tokens) = open.insert(&c.forward_id, &c.at, c.inode, &state.shutdown.stop);
            tracing::info!(forward_id = %c.forward_id, listener = %escape(&c.at.to_string()),
                "forward listening");
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

/// What names a socket of the request in its error: the path, or the TCP address.
fn place_text(s: &Socket) -> &str {
    if s.tcp_listen.is_empty() {
        &s.socket_path
    } else {
        &s.tcp_listen
    }
}

/// One forward's accept loop; the listener (and its file) goes when it ends.
async fn accept(
    state: Arc<AgentState>,
    forward_id: String,
    listener: ClientListener,
    stats: Arc<ForwardCounters>,
    tokens: Tokens,
) {
    let mut backoff = Backoff::accept();
    while let Some(conn) = accept_next(&listener, &mut backoff, &tokens.stop).await {
        ForwardCounters::bump(&stats.total);
        // Parked pre-opened streams hold slots on loan: a client comes first.
        let slot = match state.client_slots.clone().try_acquire_owned() {
            Err(_) if state.pools.evict_one() => state.client_slots.clone().try_acquire_owned(),
            other => other,
        };
        let Ok(slot) = slot else {
            ForwardCounters::bump(&stats.refused);
            if let Some(pass) = state.log_throttle.allow("open-file limit") {
                tracing::warn!(
                    %forward_id,
                    suppressed = pass.suppressed,
                    "open-file limit reached: client refused (raise LimitNOFILE)"
                );
            }
            drop(conn);
            continue;
        };
        let serve = client::serve(state.clone(), conn, forward_id.clone(), stats.clone());
        state.connections.spawn(async move {
            serve.await;
            drop(slot);
        });
    }
    let listener_text = listener.describe();
    tracing::debug!(%forward_id, listener = %escape(&listener_text), "forward listener closed");
    drop(listener);
    tokens.done.cancel();
}

/// Unbind: closes `forward_id`'s listener and removes its socket file (once the
/// accept loop has dropped it); connections already accepted run to their end.
/// Returns where it listened.
pub async fn unbind(state: &AgentState, forward_id: &str) -> Result<ListenAt, UnbindError> {
    let _serial = state.forwards.serialize().await;
    let Some(removed) = state.forwards.remove(forward_id) else {
        return Err(UnbindError::Unknown(forward_id.to_owned()));
    };
    state.dispatcher.lock().forget_forward(forward_id);
    removed.tokens.stop.cancel();
    if tokio::time::timeout(UNBIND_WAIT, removed.tokens.done.cancelled())
        .await
        .is_err()
    {
        tracing::warn!(%forward_id, "listener still closing; answering Unbind anyway");
    }
    tracing::info!(%forward_id, listener = %escape(&removed.at.to_string()), "forward unbound");
    Ok(removed.at)
}
