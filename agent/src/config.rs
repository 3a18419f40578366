//! The agent's one validated configuration.
//!
//! Sources apply in order: defaults, the file, the kernel command line, flags
//! ([`crate::load`] reads and merges them, [`crate::keys`] parses each value);
//! the result is checked once with [`AgentConfig::validate`] before
//! [`crate::run`] uses it.

use sockfwd_proto::handshake;
use sockfwd_proto::rpc::Socket;
use sockfwd_proto::transport::{Address, VMADDR_CID_ANY, VMADDR_CID_HOST};
use std::fmt;
use std::path::{Component, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The vsock port of the control channel (wire contract).
pub const CONTROL_PORT: u32 = 1025;
/// The vsock port of the streams channel (wire contract).
pub const STREAMS_PORT: u32 = 1026;
/// The longest stream ID length a user may configure (the handshake allocates it).
pub const MAX_STREAM_ID_LEN_LIMIT: usize = 64 << 10;
/// The longest any configured duration may be: deadlines are computed as
/// `now + duration`, which must not overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// How the control channel is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMode {
    /// Listen on the address; each connection is one ttrpc client (the host).
    Listen(Address),
    /// Dial the host and serve ttrpc on that connection, redialing when it drops
    /// (nerdbox's topology).
    Dial(Address),
}

impl ControlMode {
    /// The default listening form: `vsock://-1:1025`.
    pub fn default_listen() -> Address {
        Address::Vsock {
            cid: VMADDR_CID_ANY,
            port: CONTROL_PORT,
        }
    }

    /// The default dialing form: `vsock://2:1025`.
    pub fn default_dial() -> Address {
        Address::Vsock {
            cid: VMADDR_CID_HOST,
            port: CONTROL_PORT,
        }
    }
}

impl fmt::Display for ControlMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlMode::Listen(a) => write!(f, "listen {a}"),
            ControlMode::Dial(a) => write!(f, "dial {a}"),
        }
    }
}

/// Everything the agent needs to run; see `docs/design.md` "Agent CLI".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The control channel: listen (default `vsock://-1:1025`) or dial the host.
    pub control: ControlMode,
    /// The stream-port listener (default `vsock://-1:1026`).
    pub streams: Address,
    /// How long a guest connection waits for its `ConnectResult`.
    pub pending_timeout: Duration,
    /// How long one Accept stream may take to answer before another is tried.
    pub result_timeout: Duration,
    /// Guest connections waiting for a result at once; beyond it they are refused.
    pub max_pending: usize,
    /// Longest stream ID accepted in a stream-port handshake.
    pub max_stream_id_len: usize,
    /// Deadline for a stream-port handshake (reading the ID, writing the answer).
    pub handshake_timeout: Duration,
    /// A registered stream that nobody claims within this is closed.
    pub claim_timeout: Duration,
    /// How long open relays may run after Shutdown or SIGTERM.
    pub shutdown_grace: Duration,
    /// Mode of a forward listener whose Bind gives none.
    ///
    /// 0666 by default, unlike the reference agent's umask-derived mode: the
    /// socket sits where the host asked, usually bind-mounted into one
    /// container whose processes run as arbitrary non-root users, and a mode
    /// derived from root's umask refuses them. Access control is by placement
    /// (who can reach the directory), as for the host socket it stands for.
    pub socket_mode: u32,
    /// Owner of a forward listener whose Bind gives no uid; `None` leaves the
    /// agent's own.
    pub socket_uid: Option<u32>,
    /// Group of a forward listener whose Bind gives no gid; `None` leaves the
    /// agent's own.
    pub socket_gid: Option<u32>,
    /// Directories under which Bind may create sockets; empty means anywhere.
    /// Each is trusted as spelled; below it no symlink is followed.
    pub allow_dirs: Vec<PathBuf>,
    /// Most sockets one Bind call may create.
    pub max_sockets_per_bind: usize,
    /// Accept vsock connections from any CID, not only the host (CID 2).
    pub allow_any_cid: bool,
    /// Targets the host may reach with `Connect` (`--allow-target`); empty: any.
    pub allow_targets: crate::local::target::AllowList,
    /// Sockets bound at start, before any host attaches, owned by no control
    /// connection; a host's Bind of the same ID and path later takes them over.
    pub forwards: Vec<BootForward>,
}

/// A forward from the configuration, bound at start so that guest services
/// find its socket at once; its connections wait for a host like any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootForward {
    /// The forward ID the host will use for it.
    pub id: String,
    /// Where the socket is created.
    pub path: PathBuf,
    /// Its mode; `None`: [`AgentConfig::socket_mode`].
    pub mode: Option<u32>,
    /// Its owner; `None`: [`AgentConfig::socket_uid`].
    pub uid: Option<u32>,
    /// Its group; `None`: [`AgentConfig::socket_gid`].
    pub gid: Option<u32>,
}

impl BootForward {
    /// The Bind request entry for this forward.
    pub fn to_socket(&self) -> Socket {
        Socket {
            forward_id: self.id.clone(),
            socket_path: self.path.to_string_lossy().into_owned(),
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            ..Default::default()
        }
    }
}

impl fmt::Display for BootForward {
    /// The `ID:PATH[:MODE[:UID:GID]]` form of the kernel command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id, self.path.display())?;
        if self.mode.is_some() || self.uid.is_some() || self.gid.is_some() {
            f.write_str(":")?;
            if let Some(mode) = self.mode {
                write!(f, "{mode:04o}")?;
            }
        }
        if self.uid.is_some() || self.gid.is_some() {
            let id = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
            write!(f, ":{}:{}", id(self.uid), id(self.gid))?;
        }
        Ok(())
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            control: ControlMode::Listen(ControlMode::default_listen()),
            streams: Address::Vsock {
                cid: VMADDR_CID_ANY,
                port: STREAMS_PORT,
            },
            pending_timeout: Duration::from_secs(30),
            result_timeout: Duration::from_secs(10),
            max_pending: 4096,
            max_stream_id_len: handshake::DEFAULT_MAX_ID_LEN,
            handshake_timeout: handshake::DEFAULT_TIMEOUT,
            claim_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            socket_mode: 0o666,
            socket_uid: None,
            socket_gid: None,
            allow_dirs: Vec::new(),
            max_sockets_per_bind: 1024,
            allow_any_cid: false,
            allow_targets: crate::local::target::AllowList::default(),
            forwards: Vec::new(),
        }
    }
}

/// Why a configuration was refused; each names the setting.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// A duration beyond [`MAX_DURATION`].
    #[error("{0} must be at most 24h")]
    LongDuration(&'static str),
    /// A count that must be positive is zero.
    #[error("{0} must be at least 1")]
    ZeroCount(&'static str),
    /// The stream ID bound is too large.
    #[error("max-stream-id-len {0} exceeds the limit of {MAX_STREAM_ID_LEN_LIMIT}")]
    StreamIdLen(usize),
    /// A mode with bits beyond 0o7777.
    #[error("socket-mode {0:#o} is not a file mode (at most 0o7777)")]
    Mode(u32),
    /// An allowed directory that is relative or has `..` in it.
    #[error("allow-dir {0:?} must be an absolute path without '..'")]
    AllowDir(PathBuf),
    /// A boot-time forward with a bad ID, a relative path or a bad mode.
    #[error("forward {id:?} at {path:?}: {reason}")]
    Forward {
        /// The forward ID.
        id: String,
        /// The socket path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A listener address nothing can listen on.
    #[error(
        "{setting} {addr}: hvsock:// is for dialing from the host; listen on vsock:// or unix://"
    )]
    NotListenable {
        /// Which setting.
        setting: &'static str,
        /// The address given.
        addr: Address,
    },
}

impl AgentConfig {
    /// Checks every bound; called once after all sources are applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, d) in [
            ("pending-timeout", self.pending_timeout),
            ("result-timeout", self.result_timeout),
            ("handshake-timeout", self.handshake_timeout),
            ("claim-timeout", self.claim_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        for (name, d) in [
            ("pending-timeout", self.pending_timeout),
            ("result-timeout", self.result_timeout),
            ("handshake-timeout", self.handshake_timeout),
            ("claim-timeout", self.claim_timeout),
            ("shutdown-grace", self.shutdown_grace),
        ] {
            if d > MAX_DURATION {
                return Err(ConfigError::LongDuration(name));
            }
        }
        for (name, n) in [
            ("max-pending", self.max_pending),
            ("max-stream-id-len", self.max_stream_id_len),
            ("max-sockets-per-bind", self.max_sockets_per_bind),
        ] {
            if n == 0 {
                return Err(ConfigError::ZeroCount(name));
            }
        }
        if self.max_stream_id_len > MAX_STREAM_ID_LEN_LIMIT {
            return Err(ConfigError::StreamIdLen(self.max_stream_id_len));
        }
        if self.socket_mode > 0o7777 {
            return Err(ConfigError::Mode(self.socket_mode));
        }
        for dir in &self.allow_dirs {
            if !dir.is_absolute() || dir.components().any(|c| c == Component::ParentDir) {
                return Err(ConfigError::AllowDir(dir.clone()));
            }
        }
        for f in &self.forwards {
            let refuse = |reason: String| ConfigError::Forward {
                id: f.id.clone(),
                path: f.path.clone(),
                reason,
            };
            crate::remote::paths::check_forward_id(&f.id).map_err(refuse)?;
            if !f.path.is_absolute() {
                return Err(refuse("the path is not absolute".to_owned()));
            }
            if let Some(mode) = f.mode.filter(|m| *m > 0o7777) {
                return Err(refuse(format!("mode {mode:#o} is not a file mode")));
            }
        }
        if let ControlMode::Listen(addr @ Address::Hybrid { .. }) = &self.control {
            return Err(ConfigError::NotListenable {
                setting: "control",
                addr: addr.clone(),
            });
        }
        if let addr @ Address::Hybrid { .. } = &self.streams {
            return Err(ConfigError::NotListenable {
                setting: "streams",
                addr: addr.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design_notes_and_validate() {
        let c = AgentConfig::default();
        assert_eq!(c.control.to_string(), "listen vsock://-1:1025");
        assert_eq!(c.streams.to_string(), "vsock://-1:1026");
        assert_eq!(c.pending_timeout, Duration::from_secs(30));
        assert_eq!(c.result_timeout, Duration::from_secs(10));
        assert_eq!(c.max_pending, 4096);
        assert_eq!(c.max_stream_id_len, 256);
        assert_eq!(c.handshake_timeout, Duration::from_secs(5));
        assert_eq!(c.claim_timeout, Duration::from_secs(10));
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        assert_eq!(c.socket_mode, 0o666);
        assert_eq!(c.max_sockets_per_bind, 1024);
        assert!(c.allow_dirs.is_empty());
        assert!(!c.allow_any_cid);
        assert_eq!((c.socket_uid, c.socket_gid), (None, None));
        assert!(c.forwards.is_empty());
        assert_eq!(c.validate(), Ok(()));
    }

    fn boot(id: &str, path: &str) -> BootForward {
        BootForward {
            id: id.into(),
            path: path.into(),
            mode: None,
            uid: None,
            gid: None,
        }
    }

    #[test]
    fn boot_forwards_print_in_the_command_line_form() {
        let mut f = boot("web", "/run/web.sock");
        assert_eq!(f.to_string(), "web:/run/web.sock");
        f.mode = Some(0o660);
        assert_eq!(f.to_string(), "web:/run/web.sock:0660");
        f.uid = Some(0);
        f.gid = Some(5);
        assert_eq!(f.to_string(), "web:/run/web.sock:0660:0:5");
        f.mode = None;
        assert_eq!(f.to_string(), "web:/run/web.sock::0:5");
        let s = f.to_socket();
        assert_eq!(s.socket_path, "/run/web.sock");
        assert_eq!((s.mode, s.uid, s.gid), (None, Some(0), Some(5)));
    }

    #[test]
    fn bad_values_name_their_setting() {
        type Case = (fn(&mut AgentConfig), &'static str);
        let cases: Vec<Case> = vec![
            (|c| c.pending_timeout = Duration::ZERO, "pending-timeout"),
            (|c| c.claim_timeout = Duration::ZERO, "claim-timeout"),
            (|c| c.shutdown_grace = Duration::MAX, "shutdown-grace"),
            (|c| c.max_pending = 0, "max-pending"),
            (|c| c.max_stream_id_len = 1 << 20, "max-stream-id-len"),
            (|c| c.socket_mode = 0o10000, "socket-mode"),
            (|c| c.allow_dirs = vec!["run".into()], "allow-dir"),
            (|c| c.allow_dirs = vec!["/run/../etc".into()], "allow-dir"),
            (
                |c| c.forwards = vec![boot("", "/run/a.sock")],
                "empty forward ID",
            ),
            (
                |c| c.forwards = vec![boot("a", "run/a.sock")],
                "not absolute",
            ),
            (
                |c| {
                    c.streams = Address::Hybrid {
                        path: "/v".into(),
                        port: 1,
                    }
                },
                "streams",
            ),
        ];
        for (mutate, name) in cases {
            let mut c = AgentConfig::default();
            mutate(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
