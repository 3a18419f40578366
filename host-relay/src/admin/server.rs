//! The admin socket (`--admin PATH`, mode 0600) of a running relay: status,
//! and forwards added and removed in both directions. The protocol is in
//! [`crate::admin::request`]; each connection is served in its own task, the
//! request read there within its bounds. Every way a request can fail is an
//! [`AdminError`], answered as one `error:` line.
//!
//! Who may use it is checked twice. The socket is born with its final mode
//! (0600, or 0660 for `--admin-group`: see `sockfwd_proto::transport::socket_file`),
//! so no client can connect in a window before a chmod; and every connection's
//! peer credentials (`SO_PEERCRED`, `SO_PEERGROUPS`, which the kernel records
//! and the peer cannot forge) must be root, the relay's own user, or a member
//! of `--admin-group`, whatever the file's mode has become since. Anyone else
//! gets `error: permission denied` before a byte of the request is read, and
//! a log line with its uid and pid.

use crate::admin::request::{AdminRequest, Answer, RequestError, MAX_REQUEST, REQUEST_TIMEOUT};
use crate::admin::status::{self, Direction, Row};
use crate::local::guest_handle::{Guest, LocalForwardError};
use crate::local::listener_table::{announce, ListenerTable, Origin};
use crate::local_spec::{LocalSpec, LocalSpecError};
use crate::remote_control::{RemoteControl, RemoteError};
use crate::remote_spec::{Forward, SpecError};
use crate::rpc::{call, context, Peer};
use crate::shared::Shared;
use sockfwd_proto::accept::serve_each;
use sockfwd_proto::counters::CounterSnapshot;
use sockfwd_proto::log_text::escape_clipped;
use sockfwd_proto::report::Chain;
use sockfwd_proto::rpc::ListForwardsRequest;
use sockfwd_proto::transport::{
    peer_credentials, Listener, ListenerError, PeerCredentials, SocketFileOptions, Stream,
};
use std::os::fd::AsFd as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The answer to a caller who may not use the admin socket.
pub const PERMISSION_DENIED: &str = "permission denied";

/// How long `status` waits for the agent's `ListForwards`.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// Who may use the admin socket: root, the relay's own user, and the members
/// of the `--admin-group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AdminAccess {
    /// The relay's effective uid.
    pub(crate) own_uid: u32,
    /// `--admin-group`.
    pub(crate) group: Option<u32>,
}

impl AdminAccess {
    /// Access for this process, with `--admin-group`.
    pub(crate) fn for_this_process(group: Option<u32>) -> AdminAccess {
        AdminAccess {
            own_uid: nix::unistd::geteuid().as_raw(),
            group,
        }
    }

    fn allows(&self, peer: &PeerCredentials) -> bool {
        peer.uid == 0 || peer.uid == self.own_uid || self.group.is_some_and(|g| peer.in_group(g))
    }
}

/// What the admin socket works on.
pub(crate) struct Admin {
    /// Who may use it.
    pub(crate) access: AdminAccess,
    /// The remote forwards, the settings, the tasks.
    pub(crate) shared: Arc<Shared>,
    /// Opens local forwards and reaches the current session.
    pub(crate) guest: Guest,
    /// The local forwards.
    pub(crate) listeners: Arc<ListenerTable>,
    /// Adds and removes remote forwards (the library's code path too).
    pub(crate) remote: RemoteControl,
}

/// Why an admin request failed.
#[derive(Debug, Error)]
pub enum AdminError {
    /// No complete request line in time.
    #[error("no request within {0:?}")]
    NoRequest(Duration),
    /// The line is longer than [`MAX_REQUEST`].
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLong,
    /// The line is not text.
    #[error("request is not UTF-8")]
    NotUtf8,
    /// Reading the request failed.
    #[error("reading the request")]
    Read(#[source] std::io::Error),
    /// Not a request.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// `add forward` with a malformed spec.
    #[error("invalid --forward {spec:?}")]
    Forward {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        #[source]
        source: SpecError,
    },
    /// `add forward`, `add remote` or `remove` of a remote forward failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// `add local` with a malformed spec.
    #[error("invalid -L {spec:?}")]
    Local {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        #[source]
        source: LocalSpecError,
    },
    /// `add local`: the host listener could not be bound.
    #[error(transparent)]
    Listen(LocalForwardError),
    /// `remove` of something that is not there.
    #[error("no forward or listener {0:?}")]
    NotFound(String),
}

/// Creates the admin socket, born with mode 0600 (0660 and owned by the
/// group with `group`); a stale socket file is replaced, one in use refused,
/// and the file is removed when the listener is dropped.
pub(crate) fn bind(path: &Path, group: Option<u32>) -> Result<Listener, ListenerError> {
    let options = SocketFileOptions {
        mode: Some(if group.is_some() { 0o660 } else { 0o600 }),
        uid: None,
        gid: group,
    };
    Listener::bind_unix(path, &options)
}

/// Serves admin connections until shutdown, each in a task on the relay's tracker.
pub(crate) async fn serve(admin: Arc<Admin>, listener: Listener) {
    let shared = &admin.shared;
    serve_each(&listener, &shared.shutdown, &shared.tracker, |(s, _)| {
        let admin = Arc::clone(&admin);
        async move {
            let hard_stop = admin.shared.hard_stop.clone();
            tokio::select! {
                () = handle(&admin, s) => {}
                () = hard_stop.cancelled() => {}
            }
        }
    })
    .await;
}

async fn read_line(s: &Stream) -> Result<String, AdminError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk).await.map_err(AdminError::Read)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.contains(&b'\n') {
            break;
        }
        if buf.len() > MAX_REQUEST {
            return Err(AdminError::TooLong);
        }
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    String::from_utf8(line.to_vec()).map_err(|_| AdminError::NotUtf8)
}

/// Whether `s`'s peer may use the admin socket; a refusal is logged (throttled).
fn permitted(admin: &Admin, s: &Stream) -> bool {
    let peer = match peer_credentials(s.as_fd()) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!(cause = %e, "admin connection refused: its credentials cannot be read");
            return false;
        }
    };
    if admin.access.allows(&peer) {
        return true;
    }
    if let Some(pass) = admin.shared.log_throttle.allow("admin refused") {
        tracing::warn!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            suppressed = pass.suppressed,
            "admin connection refused: permission denied"
        );
    }
    false
}

async fn handle(admin: &Admin, s: Stream) {
    if !permitted(admin, &s) {
        let text = Answer::Refused(PERMISSION_DENIED.to_owned()).to_string();
        if let Err(e) = s.write_all(text.as_bytes()).await {
            tracing::debug!(cause = %e, "refused admin client left before the answer");
        }
        // The request is read (within its bounds) and dropped, never parsed:
        // closing before the client has written it would break its pipe
        // before it reads the answer.
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, read_line(&s)).await;
        return;
    }
    let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, read_line(&s)).await {
        Err(_) => Err(AdminError::NoRequest(REQUEST_TIMEOUT)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(line)) => match line.trim().parse::<AdminRequest>() {
            Ok(req) => execute(admin, req).await,
            Err(e) => Err(e.into()),
        },
    };
    let text = Answer::of(outcome).to_string();
    if let Err(e) = s.write_all(text.as_bytes()).await {
        tracing::debug!(cause = %e, "admin client left before the answer");
    }
}

async fn execute(admin: &Admin, req: AdminRequest) -> Result<String, AdminError> {
    match req {
        AdminRequest::Status { prometheus: false } => Ok(status::table(&rows(admin).await)),
        AdminRequest::Status { prometheus: true } => {
            let mut text = status::prometheus(&rows(admin).await);
            let (open, size) = admin.shared.pool_gauge.read();
            text.push_str(&status::pool_metrics(open, size));
            Ok(text)
        }
        AdminRequest::AddForward(spec) => add_forward(admin, &spec).await,
        AdminRequest::AddRemote(spec) => add_remote(admin, &spec).await,
        AdminRequest::AddLocal(spec) => add_local(admin, &spec),
        AdminRequest::Remove(arg) => remove(admin, &arg).await,
    }
}

async fn add_forward(admin: &Admin, spec: &str) -> Result<String, AdminError> {
    let f = Forward::from_spec(spec).map_err(|source| AdminError::Forward {
        spec: spec.to_owned(),
        source,
    })?;
    let added = admin.remote.add(f).await?;
    let f = added.forward();
    Ok(format!("forward {} {} -> {}\n", f.id, f.listen, f.target))
}

async fn add_remote(admin: &Admin, spec: &str) -> Result<String, AdminError> {
    let added = admin.remote.add_spec(spec).await?;
    let target = &added.forward().target;
    // `remote GUEST -> TARGET`, the bound port for port 0; until a session
    // binds it, the address asked for.
    let guest = added
        .guest_addr()
        .unwrap_or_else(|| added.forward().listen.clone());
    let bound = if added.guest_addr().is_some() {
        ""
    } else {
        " (bound when the agent connects)"
    };
    Ok(format!(
        "{} remote {guest} -> {target}{bound}\n",
        added.id()
    ))
}

fn add_local(admin: &Admin, raw: &str) -> Result<String, AdminError> {
    let spec: LocalSpec = raw.parse().map_err(|source| AdminError::Local {
        spec: raw.to_owned(),
        source,
    })?;
    let forward = admin
        .guest
        .forward_specs(std::slice::from_ref(&spec), &[raw])
        .map_err(AdminError::Listen)?
        .pop()
        .ok_or(AdminError::Local {
            spec: raw.to_owned(),
            source: LocalSpecError::Shape,
        })?;
    let line = format!(
        "listening {} -> {}",
        forward.local_addr(),
        spec.remote_text()
    );
    announce(&line);
    let id = admin.listeners.add(Origin::Spec(raw.to_owned()), forward);
    tracing::info!(forward_id = %id, "{}", escape_clipped(&line, 512));
    Ok(format!("{id} {line}\n"))
}

async fn remove(admin: &Admin, arg: &str) -> Result<String, AdminError> {
    if let Some(id) = admin.remote.find(arg) {
        admin.remote.remove(&id).await?;
        return Ok(format!("removed forward {id}\n"));
    }
    match admin.listeners.remove(arg) {
        Some(id) => {
            tracing::info!(forward_id = %id, "host listener removed");
            Ok(format!("removed {id}\n"))
        }
        None => Err(AdminError::NotFound(arg.to_owned())),
    }
}

async fn rows(admin: &Admin) -> Vec<Row> {
    let shared = &admin.shared;
    let mut rows = Vec::new();
    for e in shared.table.entries() {
        rows.push(Row {
            direction: Direction::Remote,
            side: "relay",
            id: e.forward.id.clone(),
            from: e.guest_text(),
            to: e.forward.target.to_string(),
            counters: e.counters.snapshot(),
        });
    }
    for l in admin.listeners.rows() {
        rows.push(Row {
            direction: Direction::Local,
            side: "relay",
            id: l.id,
            from: l.local.to_string(),
            to: l.remote,
            counters: l.counters,
        });
    }
    // The agent's own view of the guest-side listeners, when it answers.
    if let Some(Peer { client, .. }) = shared.peer() {
        let req = ListForwardsRequest::new();
        let listed = call(
            LIST_TIMEOUT,
            client.list_forwards(context(LIST_TIMEOUT), &req),
        )
        .await;
        match listed {
            Ok(list) => {
                for f in list.forwards {
                    // A guest TCP listener's bound address, else its socket file.
                    let from = if f.tcp_listen.is_empty() {
                        f.socket_path
                    } else {
                        f.tcp_listen
                    };
                    let counters = CounterSnapshot {
                        active: f.active,
                        total: f.total,
                        refused: f.refused,
                        failed: f.failed,
                        bytes_to_guest: f.bytes_to_guest,
                        bytes_to_host: f.bytes_to_host,
                    };
                    rows.push(Row {
                        direction: Direction::Remote,
                        side: "agent",
                        id: f.forward_id,
                        from,
                        to: String::new(),
                        counters,
                    });
                }
            }
            Err(e) => tracing::debug!(cause = %Chain(&e), "status without the agent's rows"),
        }
    }
    rows
}
