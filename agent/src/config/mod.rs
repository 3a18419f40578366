//! The agent's configuration: one typed [`AgentConfig`], made of four layers,
//! later wins: the built-in defaults, the TOML file, the kernel command line
//! (`sockfwd.KEY=VALUE`) and the flags.
//!
//! - [`keys`]: every key, once: a field of [`keys::Keys`] is the flag (clap),
//!   the file key and the `sockfwd.` key (serde) at the same time, its type
//!   from [`values`] parsing it the same way in every layer;
//! - [`layers`]: each layer read into a table and checked on its own (a bad
//!   value names its key, its layer and itself), then merged with the source
//!   of each setting kept: [`layers::Effective`]; [`load`] reads them;
//! - [`cmdline`]: the kernel command line split as the kernel does;
//! - [`allow`]: the `--allow-target` patterns, parsed and matched;
//! - [`print`](mod@print): `--print-config`, a valid file with each value's source.
//!
//! # Adding a key
//!
//! A key is written in two places, and nowhere else:
//! 1. a field of [`keys::Keys`], named as the file spells the key: its doc
//!    comment is the flag's help, its `#[arg]` the flag's shape, and its type
//!    (one of [`values`], or a new one there) what every layer accepts;
//! 2. the field it sets in [`AgentConfig`] here, and in `keys.rs`
//!    its line in `From<Keys> for AgentConfig`, which holds its default.
//!
//! The file, the kernel command line, the layering, `--print-config` and the
//! sources follow from these; a test fails if the flag and the file or kernel
//! command line disagree on the set of keys.

pub mod allow;
pub mod cmdline;
pub mod keys;
pub mod layers;
pub mod load;
pub mod print;
pub mod values;

use serde::ser::{SerializeMap as _, Serializer};
use serde::Serialize;
use sockfwd_proto::rpc::Socket;
use sockfwd_proto::transport::{Address, VMADDR_CID_ANY, VMADDR_CID_HOST};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use allow::{AllowList, AllowTarget, AllowTargetError};

/// The vsock port of the control channel (wire contract).
pub const CONTROL_PORT: u32 = 1025;
/// The vsock port of the streams channel (wire contract).
pub const STREAMS_PORT: u32 = 1026;
/// The longest stream ID length a user may configure (the handshake allocates it).
pub const MAX_STREAM_ID_LEN_LIMIT: usize = 64 << 10;

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

impl Serialize for ControlMode {
    /// As the key that sets it: `control = ADDR` or `control_dial = ADDR`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (key, addr) = match self {
            ControlMode::Listen(a) => ("control", a),
            ControlMode::Dial(a) => ("control_dial", a),
        };
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(key, &addr.to_string())?;
        map.end()
    }
}

/// Everything the agent needs to run; see `docs/design.md` "Agent CLI". Its
/// defaults are in `keys.rs`, beside the keys that set each field; it
/// serializes as the file spells it (`--print-config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentConfig {
    /// The control channel: listen (default `vsock://-1:1025`) or dial the host.
    #[serde(flatten)]
    pub control: ControlMode,
    /// The stream-port listener (default `vsock://-1:1026`).
    #[serde(serialize_with = "display")]
    pub streams: Address,
    /// How long a client connection waits for its `ConnectResult`.
    #[serde(serialize_with = "duration")]
    pub pending_timeout: Duration,
    /// How long one Accept stream may take to answer before another is tried.
    #[serde(serialize_with = "duration")]
    pub result_timeout: Duration,
    /// Client connections waiting for a result at once; beyond it they are refused.
    pub max_pending: usize,
    /// Longest stream ID accepted in a stream-port handshake.
    pub max_stream_id_len: usize,
    /// Read deadline of a stream-port handshake.
    #[serde(serialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// A registered stream that nobody claims within this is closed.
    #[serde(serialize_with = "duration")]
    pub claim_timeout: Duration,
    /// How long open relays may run after Shutdown or SIGTERM.
    #[serde(serialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Mode of a forward listener whose Bind gives none.
    ///
    /// 0666 by default, unlike the reference agent's umask-derived mode: the
    /// socket sits where the host asked, usually bind-mounted into one
    /// container whose processes run as arbitrary non-root users, and a mode
    /// derived from root's umask refuses them. Access control is by placement
    /// (who can reach the directory), as for the host socket it stands for.
    #[serde(serialize_with = "octal")]
    pub socket_mode: u32,
    /// Owner of a forward listener whose Bind gives no uid; `None` leaves the
    /// agent's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_uid: Option<u32>,
    /// Group of a forward listener whose Bind gives no gid; `None` leaves the
    /// agent's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_gid: Option<u32>,
    /// Directories under which Bind may create sockets; empty means anywhere.
    /// Each is trusted as spelled; below it no symlink is followed.
    #[serde(rename = "allow_dir")]
    pub allow_dirs: Vec<PathBuf>,
    /// Most sockets one Bind call may create.
    pub max_sockets_per_bind: usize,
    /// Accept vsock connections from any CID, not only the host (CID 2).
    pub allow_any_cid: bool,
    /// Targets the host may reach with `Connect` (`--allow-target`); empty: any.
    #[serde(rename = "allow_target")]
    pub allow_targets: AllowList,
    /// TCP addresses a remote forward may listen on besides loopback
    /// (`--allow-listen`, the `--allow-target` patterns); empty: loopback only.
    #[serde(rename = "allow_listen")]
    pub allow_listen: AllowList,
    /// Sockets bound at start, before any host attaches, owned by no control
    /// connection; a host's Bind of the same ID and path later takes them over.
    #[serde(rename = "forward")]
    pub forwards: Vec<BootForward>,
}

fn display<S: Serializer, T: fmt::Display>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

fn octal<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{mode:04o}"))
}

fn octal_some<S: Serializer>(mode: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match mode {
        Some(m) => octal(m, s),
        None => s.serialize_none(),
    }
}

/// A forward from the configuration, bound at start so that guest services
/// find its socket at once; its clients wait for a host like any other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootForward {
    /// The forward ID the host will use for it.
    pub id: String,
    /// Where it listens.
    #[serde(flatten)]
    pub listen: BootListen,
    /// Its mode; `None`: [`AgentConfig::socket_mode`].
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "octal_some")]
    pub mode: Option<u32>,
    /// Its owner; `None`: [`AgentConfig::socket_uid`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Its group; `None`: [`AgentConfig::socket_gid`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// Where a boot-time forward listens; the file's key says which (`path` or `tcp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootListen {
    /// A Unix socket file.
    Path(PathBuf),
    /// A TCP address (port 0: any free port).
    Tcp(SocketAddr),
}

impl BootForward {
    /// The Bind request entry for this forward.
    pub fn to_socket(&self) -> Socket {
        let (socket_path, tcp_listen) = match &self.listen {
            BootListen::Path(p) => (p.to_string_lossy().into_owned(), String::new()),
            BootListen::Tcp(a) => (String::new(), a.to_string()),
        };
        Socket {
            forward_id: self.id.clone(),
            socket_path,
            tcp_listen,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            ..Default::default()
        }
    }
}

impl fmt::Display for BootForward {
    /// The `ID:PATH[:MODE[:UID:GID]]` or `ID:tcp:ADDRESS` form of the kernel
    /// command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.listen {
            BootListen::Path(p) => write!(f, "{}:{}", self.id, p.display())?,
            BootListen::Tcp(a) => return write!(f, "{}:tcp:{a}", self.id),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(id: &str, path: &str) -> BootForward {
        BootForward {
            id: id.into(),
            listen: BootListen::Path(path.into()),
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
        assert_eq!(s.tcp_listen, "");

        let tcp = BootForward {
            listen: BootListen::Tcp("[::1]:5432".parse().unwrap()),
            ..boot("db", "/unused")
        };
        assert_eq!(tcp.to_string(), "db:tcp:[::1]:5432");
        let s = tcp.to_socket();
        assert_eq!(
            (s.socket_path.as_str(), s.tcp_listen.as_str()),
            ("", "[::1]:5432")
        );
    }
}
