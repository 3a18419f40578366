//! The admin subcommands of `sockfwd-relay` (`status`, `add`, `remove`): the
//! client of a running relay's admin socket.

use crate::admin::request::{AdminRequest, Answer, RequestError};
use clap::Subcommand;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Longest answer the client reads.
const MAX_ANSWER: u64 = 4 << 20;
/// Deadline of each read and write on the admin socket.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One admin subcommand.
#[derive(Debug, Clone, Subcommand)]
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
    #[command(group(clap::ArgGroup::new("forward_spec").required(true).args(["forward", "remote", "local"])))]
    Add {
        /// The running relay's admin socket.
        #[arg(long, value_name = "PATH")]
        admin: PathBuf,
        /// A remote forward (listens in the guest, dials on the host): [ID=]GUEST_PATH:HOST_PATH.
        #[arg(long, value_name = "SPEC")]
        forward: Option<String>,
        /// A remote forward (listens in the guest, dials on the host): an -R
        /// spec; prints the guest address it got.
        #[arg(short = 'R', long = "remote", value_name = "SPEC")]
        remote: Option<String>,
        /// A local forward (listens on the host, dials in the guest): an -L spec.
        #[arg(short = 'L', long = "local", value_name = "SPEC")]
        local: Option<String>,
    },
    /// Remove a forward: a forward ID, a local forward's ID (local-N,
    /// auto-PORT), or the spec it was added with.
    Remove {
        /// The running relay's admin socket.
        #[arg(long, value_name = "PATH")]
        admin: PathBuf,
        /// ID or spec.
        target: String,
    },
}

impl AdminCommand {
    /// The admin socket it talks to.
    pub fn socket(&self) -> &Path {
        match self {
            AdminCommand::Status { admin, .. }
            | AdminCommand::Add { admin, .. }
            | AdminCommand::Remove { admin, .. } => admin,
        }
    }

    /// The request it sends.
    pub fn request(&self) -> AdminRequest {
        match self {
            AdminCommand::Status { prometheus, .. } => AdminRequest::Status {
                prometheus: *prometheus,
            },
            AdminCommand::Add {
                forward: Some(spec),
                ..
            } => AdminRequest::AddForward(spec.clone()),
            AdminCommand::Add {
                remote: Some(spec), ..
            } => AdminRequest::AddRemote(spec.clone()),
            AdminCommand::Add { local, .. } => {
                AdminRequest::AddLocal(local.clone().unwrap_or_default())
            }
            AdminCommand::Remove { target, .. } => AdminRequest::Remove(target.clone()),
        }
    }

    /// Sends the request; the answer's body.
    pub fn run(&self) -> Result<String, ClientError> {
        request(self.socket(), &self.request())
    }
}

/// Why an admin request got no `ok`.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The request cannot be sent as one line.
    #[error("invalid request")]
    Request(#[source] RequestError),
    /// Nothing answers at the socket.
    #[error("cannot reach the relay's admin socket {}: the relay must be running with --admin pointing at it", .path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The conversation broke off.
    #[error("talking to the relay's admin socket {path}", path = .path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The relay answered with an error.
    #[error("{0}")]
    Refused(String),
}

impl ClientError {
    /// Whether the fault is in the arguments (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, ClientError::Request(_))
    }
}

/// Sends `req` to the admin socket at `path`; the answer's body.
pub fn request(path: &Path, req: &AdminRequest) -> Result<String, ClientError> {
    let line = req.line().map_err(ClientError::Request)?;
    let mut s =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let io = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    s.take(MAX_ANSWER).read_to_string(&mut answer).map_err(io)?;
    let Ok(answer) = answer.parse::<Answer>();
    match answer {
        Answer::Done(body) => Ok(body),
        Answer::Refused(why) => Err(ClientError::Refused(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_socket_says_how_the_relay_must_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let err = request(&path, &AdminRequest::Status { prometheus: false }).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("the relay must be running with --admin"),
            "{text}"
        );
        assert!(text.contains("admin.sock"), "{text}");
        // A stale socket file that nobody listens on: refused, same hint.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = request(&path, &AdminRequest::Status { prometheus: false }).unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        let err = request(&path, &AdminRequest::Remove("a\nb".into())).unwrap_err();
        assert!(err.is_usage(), "{err}");
    }

    #[test]
    fn the_relay_s_error_comes_back_as_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = [0u8; 64];
            let n = s.read(&mut line).unwrap();
            assert_eq!(&line[..n], b"remove x\n");
            s.write_all(b"error: no forward or listener \"x\"\n")
                .unwrap();
        });
        let err = request(&path, &AdminRequest::Remove("x".into())).unwrap_err();
        assert_eq!(err.to_string(), r#"no forward or listener "x""#);
        server.join().unwrap();
    }
}
