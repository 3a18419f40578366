//! The admin socket (`--admin PATH`, mode 0600) and its client subcommands
//! (`sockfwd-relay status|add|remove --admin PATH ...`).
//!
//! Protocol: one request line, one answer, then the server closes. Requests:
//! `status`, `status prometheus`, `add forward SPEC`, `add local SPEC`,
//! `remove ID|SPEC`. The answer's first line is `ok` or `error: MESSAGE`; the
//! rest is the body. The request is read with a bound on length
//! ([`MAX_REQUEST`]) and time ([`REQUEST_TIMEOUT`]), in the connection's task.

use crate::forwards::socket;
use crate::local::LocalSpec;
use crate::report::chain;
use crate::runtime::Origin;
use crate::session::{call, context};
use crate::spec::Forward;
use crate::status::{self, Row};
use crate::Shared;
use clap::{Parser, Subcommand};
use sockfwd_proto::rpc::{BindRequest, ListForwardsRequest, UnbindRequest};
use sockfwd_proto::transport::{Address, Listener, ListenerError, Stream};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Longest request line.
pub const MAX_REQUEST: usize = 4096;
/// Deadline for reading a request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest answer the client reads.
const MAX_ANSWER: u64 = 4 << 20;
/// How long `status` waits for the agent's `ListForwards`.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// Creates the admin socket with mode 0600 (a stale socket file is replaced;
/// the file is removed when the listener is dropped).
pub(crate) fn bind(path: &Path) -> Result<Listener, ListenerError> {
    let addr = Address::Unix(path.to_path_buf());
    let l = Listener::bind(&addr)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| ListenerError::Bind { addr, source })?;
    Ok(l)
}

/// Serves admin connections until shutdown.
pub(crate) async fn serve(shared: Arc<Shared>, listener: Listener) {
    loop {
        let conn = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match conn {
            Ok((s, _)) => {
                tokio::spawn(handle(shared.clone(), s));
            }
            Err(e) => {
                tracing::warn!(cause = %e, "admin socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn read_line(s: &Stream) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.contains(&b'\n') {
            break;
        }
        if buf.len() > MAX_REQUEST {
            return Err(format!("request longer than {MAX_REQUEST} bytes"));
        }
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    String::from_utf8(line.to_vec()).map_err(|_| "request is not UTF-8".to_owned())
}

async fn handle(shared: Arc<Shared>, s: Stream) {
    let answer = match tokio::time::timeout(REQUEST_TIMEOUT, read_line(&s)).await {
        Err(_) => Err(format!("no request within {REQUEST_TIMEOUT:?}")),
        Ok(Err(e)) => Err(e),
        Ok(Ok(line)) => execute(&shared, line.trim()).await,
    };
    let text = match answer {
        Ok(body) => format!("ok\n{body}"),
        Err(e) => format!("error: {}\n", e.replace('\n', " ")),
    };
    if let Err(e) = s.write_all(text.as_bytes()).await {
        tracing::debug!(cause = %e, "admin client left before the answer");
    }
}

async fn execute(shared: &Arc<Shared>, line: &str) -> Result<String, String> {
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    match (cmd, rest.trim()) {
        ("status", "") => Ok(status::table(&rows(shared).await)),
        ("status", "prometheus") => Ok(status::prometheus(&rows(shared).await)),
        ("add", rest) => match rest.split_once(' ') {
            Some(("forward", spec)) => add_forward(shared, spec.trim()).await,
            Some(("local", spec)) => add_local(shared, spec.trim()),
            _ => Err("expected: add forward SPEC | add local SPEC".into()),
        },
        ("remove", arg) if !arg.is_empty() => remove(shared, arg).await,
        _ => Err(format!(
            "unknown request {:?}",
            line.chars().take(64).collect::<String>()
        )),
    }
}

async fn add_forward(shared: &Arc<Shared>, spec: &str) -> Result<String, String> {
    let f = Forward::from_spec(spec).map_err(|e| format!("invalid --forward {spec:?}: {e}"))?;
    let entry = shared.table.insert(f)?;
    let f = &entry.forward;
    let Ok(client) = shared.guest.client().await else {
        return Ok(format!(
            "forward {} added; it is bound when the agent connects\n",
            f.id
        ));
    };
    let mut req = BindRequest::new();
    req.sockets = vec![socket(f)];
    let limit = shared.config.bind_timeout;
    if let Err(e) = call(limit, client.bind(context(limit), &req)).await {
        shared.table.remove(&f.id);
        return Err(format!("the agent refused the Bind: {}", chain(&e)));
    }
    tracing::info!(forward_id = %f.id, guest_path = %f.guest_path, "forward added");
    Ok(format!(
        "forward {} {} -> {}\n",
        f.id,
        f.guest_path,
        f.host_path.display()
    ))
}

fn add_local(shared: &Arc<Shared>, raw: &str) -> Result<String, String> {
    let spec: LocalSpec = raw
        .parse()
        .map_err(|e| format!("invalid -L {raw:?}: {e}"))?;
    let mut sessions = shared
        .guest
        .forward_specs(std::slice::from_ref(&spec), &[raw])
        .map_err(|e| chain(&e))?;
    let session = sessions.pop().ok_or("no session")?;
    let line = format!("listening {} -> {}", session.local_addr(), spec.remote);
    crate::print_line(&line);
    let id = shared.locals.add(Origin::Spec(raw.to_owned()), session);
    tracing::info!(forward_id = %id, "{line}");
    Ok(format!("{id} {line}\n"))
}

async fn remove(shared: &Arc<Shared>, arg: &str) -> Result<String, String> {
    let id = if shared.table.get(arg).is_some() {
        Some(arg.to_owned())
    } else {
        Forward::from_spec(arg)
            .ok()
            .map(|f| f.id)
            .filter(|id| shared.table.get(id).is_some())
    };
    if let Some(id) = id {
        if let Ok(client) = shared.guest.client().await {
            let mut req = UnbindRequest::new();
            req.forward_id = id.clone();
            let limit = shared.config.bind_timeout;
            call(limit, client.unbind(context(limit), &req))
                .await
                .map_err(|e| format!("the agent refused the Unbind: {}", chain(&e)))?;
        }
        shared.table.remove(&id);
        tracing::info!(forward_id = %id, "forward removed");
        return Ok(format!("removed forward {id}\n"));
    }
    match shared.locals.remove(arg) {
        Some(id) => {
            tracing::info!(forward_id = %id, "host listener removed");
            Ok(format!("removed {id}\n"))
        }
        None => Err(format!("no forward or listener {arg:?}")),
    }
}

async fn rows(shared: &Arc<Shared>) -> Vec<Row> {
    let mut rows = Vec::new();
    for e in shared.table.entries() {
        let c = e.counters.snapshot();
        rows.push(Row {
            direction: "guest_to_host",
            side: "relay",
            id: e.forward.id.clone(),
            from: e.forward.guest_path.clone(),
            to: e.forward.host_path.display().to_string(),
            active: c.active as u64,
            total: c.total,
            refused: c.refused,
            failed: c.failed,
            bytes_to_guest: c.bytes_to_guest,
            bytes_to_host: c.bytes_to_host,
        });
    }
    for l in shared.locals.rows() {
        let c = l.counters;
        rows.push(Row {
            direction: "host_to_guest",
            side: "relay",
            id: l.id,
            from: l.local.to_string(),
            to: l.remote,
            active: c.active as u64,
            total: c.total,
            refused: c.refused,
            failed: c.failed,
            bytes_to_guest: c.bytes_to_guest,
            bytes_to_host: c.bytes_to_host,
        });
    }
    // The agent's own view of the guest-side listeners, when it answers.
    let session = shared.client.borrow().clone();
    {
        if let Some(client) = session {
            let req = ListForwardsRequest::new();
            if let Ok(list) = call(
                LIST_TIMEOUT,
                client.list_forwards(context(LIST_TIMEOUT), &req),
            )
            .await
            {
                for f in list.forwards {
                    rows.push(Row {
                        direction: "guest_to_host",
                        side: "agent",
                        id: f.forward_id,
                        from: f.socket_path,
                        to: String::new(),
                        active: f.active,
                        total: f.total,
                        refused: f.refused,
                        failed: f.failed,
                        bytes_to_guest: f.bytes_to_guest,
                        bytes_to_host: f.bytes_to_host,
                    });
                }
            }
        }
    }
    rows
}

/// The admin subcommands of `sockfwd-relay`.
#[derive(Debug, Parser)]
#[command(name = "sockfwd-relay", version)]
pub struct AdminCli {
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// One admin subcommand.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Print every forward's counters (a table, or Prometheus text).
    Status {
        /// The running relay's admin socket.
        #[arg(long, value_name = "PATH")]
        admin: PathBuf,
        /// Prometheus text exposition instead of a table.
        #[arg(long)]
        prometheus: bool,
    },
    /// Add a forward to the running relay, in either direction.
    Add {
        /// The running relay's admin socket.
        #[arg(long, value_name = "PATH")]
        admin: PathBuf,
        /// Guest to host: [ID=]GUEST_PATH:HOST_PATH.
        #[arg(
            long,
            value_name = "SPEC",
            conflicts_with = "local",
            required_unless_present = "local"
        )]
        forward: Option<String>,
        /// Host to guest: an -L spec.
        #[arg(short = 'L', long = "local", value_name = "SPEC")]
        local: Option<String>,
    },
    /// Remove a forward: a forward ID, an -L listener ID (local-N, auto-PORT),
    /// or the spec it was added with.
    Remove {
        /// The running relay's admin socket.
        #[arg(long, value_name = "PATH")]
        admin: PathBuf,
        /// ID or spec.
        target: String,
    },
}

/// Sends one request to the admin socket at `path`; the answer's body, or its error.
pub fn request(path: &Path, line: &str) -> Result<String, String> {
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("connecting to {}: {e}", path.display()))?;
    let limit = Some(Duration::from_secs(30));
    let io = |e: std::io::Error| format!("talking to {}: {e}", path.display());
    s.set_read_timeout(limit).map_err(io)?;
    s.set_write_timeout(limit).map_err(io)?;
    s.write_all(format!("{line}\n").as_bytes()).map_err(io)?;
    let mut answer = String::new();
    s.take(MAX_ANSWER).read_to_string(&mut answer).map_err(io)?;
    match answer.split_once('\n') {
        Some(("ok", body)) => Ok(body.to_owned()),
        _ => Err(answer
            .trim_end()
            .strip_prefix("error: ")
            .unwrap_or(answer.trim_end())
            .to_owned()),
    }
}

/// Runs an admin subcommand when the arguments start with one (`status`,
/// `add`, `remove`); `None` otherwise (the daemon's flags follow).
pub fn main_if_subcommand() -> Option<ExitCode> {
    let first = std::env::args_os().nth(1)?;
    if !matches!(first.to_str(), Some("status" | "add" | "remove")) {
        return None;
    }
    let cli = AdminCli::parse();
    let (path, line) = match cli.command {
        AdminCommand::Status { admin, prometheus } => (
            admin,
            if prometheus {
                "status prometheus"
            } else {
                "status"
            }
            .to_owned(),
        ),
        AdminCommand::Add {
            admin,
            forward: Some(spec),
            ..
        } => (admin, format!("add forward {spec}")),
        AdminCommand::Add { admin, local, .. } => {
            (admin, format!("add local {}", local.unwrap_or_default()))
        }
        AdminCommand::Remove { admin, target } => (admin, format!("remove {target}")),
    };
    if line.contains('\n') {
        eprintln!("sockfwd-relay: error: arguments may not contain a newline");
        return Some(ExitCode::from(2));
    }
    Some(match request(&path, &line) {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sockfwd-relay: error: {e}");
            ExitCode::FAILURE
        }
    })
}
