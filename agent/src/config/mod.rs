//! The agent's configuration: one typed [`AgentConfig`], made of four layers,
//! later wins: the built-in defaults, the TOML file, the kernel command line
//! (`sockfwd.KEY=VALUE`) and the flags.
//!
//! The table below is every setting, once: its doc comment (the flag's help,
//! the field's doc and the shipped file's comment), its field and type, its
//! default, and the [`values`] kind that reads its value the same way in every
//! layer. `keys!` ([`keys`]) makes from it the field of [`AgentConfig`] and its
//! `Default`, and the key in [`KEYS`] that the flags, the layers,
//! `--print-config` and the shipped file walk.
//!
//! # Adding a key
//!
//! One row in the table, nowhere else (a new kind of value is a [`values`]
//! kind, or a `Kind` beside its domain type as [`forward::Forward`] is); then
//! `SOCKFWD_BLESS=1 cargo nextest run -p sockfwd-agent shipped_file` writes
//! `dist/agent.toml` anew. An alias (another key for a setting above, such as
//! `control_port`) is a row after `[aliases]`.
//!
//! - [`layers`]: each layer read and checked on its own, then laid over the
//!   defaults with the source of each setting kept;
//! - [`cmdline`]: the kernel command line split as the kernel does;
//! - [`source`]: where a value came from, and a refused value's words;
//! - [`allow`]: the `--allow-target`/`--allow-listen` patterns, parsed and matched;
//! - [`print`](mod@print): `--print-config` and the commented default file.

pub mod allow;
pub mod cmdline;
pub mod forward;
pub mod keys;
pub mod layers;
pub mod print;
pub mod source;
pub mod values;

pub use allow::{AllowList, AllowTarget, AllowTargetError};
pub use forward::BootForward;
pub use keys::Key;
pub use values::{ControlMode, CONTROL_PORT};

use forward::Forward;
use keys::keys;
use sockfwd_proto::transport::Address;
use sockfwd_proto::{handshake, stream_id};
use std::path::PathBuf;
use std::time::Duration;
use values::{
    Allow, Cap, ControlDial, ControlListen, ControlPort, Count, Dir, Gid, Grace, Kind, Listen, Log,
    Mode, Port, Switch, Timeout, Uid,
};

/// The vsock port of the streams channel (wire contract).
pub const STREAMS_PORT: u32 = 1026;
/// The most pre-opened streams a user may let hosts park (each holds a descriptor).
pub const MAX_POOLED_STREAMS_LIMIT: usize = 1 << 16;
/// The tracing filter when neither a layer nor `RUST_LOG` gives one.
pub const DEFAULT_LOG: &str = "info";

keys! {
    /// ttrpc listener: the control channel, vsock://CID:PORT (CID -1: any) or
    /// unix://PATH; the host relay dials it
    control: ControlMode = ControlMode::Listen(values::any_cid(CONTROL_PORT)), ControlListen;

    /// Stream-port listener: each forwarded connection arrives here as one
    /// connection from the host
    streams: Address = values::any_cid(STREAMS_PORT), Listen;

    /// How long a remote forward's client waits for the host to answer it,
    /// then is closed
    pending_timeout: Duration = Duration::from_secs(30), Timeout;

    /// How long one Accept stream may take to answer before the request is
    /// offered to another
    result_timeout: Duration = Duration::from_secs(10), Timeout;

    /// Clients waiting for the host at once; beyond it new ones are closed and
    /// logged
    max_pending: usize = 4096, Count<{ usize::MAX }>;

    /// Longest stream ID accepted on the stream port, in bytes (at most the
    /// wire's limit)
    max_stream_id_len: usize = handshake::DEFAULT_MAX_ID_LEN, Count<{ stream_id::MAX_LEN }>;

    /// Stream-port handshake read deadline: a stream connection sends its
    /// stream ID within this
    handshake_timeout: Duration = handshake::DEFAULT_TIMEOUT, Timeout;

    /// A registered stream that nobody claims within this is closed
    claim_timeout: Duration = Duration::from_secs(10), Timeout;

    /// A control connection the agent accepted must send its first request
    /// within this, or is closed; after it, it may stay idle (nerdbox hosts
    /// do, for hours)
    first_frame_timeout: Duration = Duration::from_secs(10), Timeout;

    /// How long open relays may run after Shutdown or SIGTERM
    shutdown_grace: Duration = Duration::from_secs(5), Grace;

    /// Mode of a forward socket whose Bind gives none. Not the reference
    /// agent's umask-derived mode: the socket sits where the host asked,
    /// usually mounted into a container whose users are rarely root, so its
    /// directory decides who reaches it, as for the host socket it stands for
    socket_mode: u32 = 0o666, Mode;

    /// Owner of a forward socket whose Bind gives none [default: the agent's]
    socket_uid: Option<u32> = None, Uid;

    /// Group of a forward socket whose Bind gives none [default: the agent's]
    socket_gid: Option<u32> = None, Gid;

    /// Only create sockets under DIR (repeatable); below DIR no symlink is
    /// followed [default: anywhere]
    allow_dirs as allow_dir: Vec<PathBuf> = Vec::new(), Dir;

    /// Most sockets one Bind call may create
    max_sockets_per_bind: usize = 1024, Count<{ usize::MAX }>;

    /// Streams hosts may open ahead of demand (pre-opened streams), all
    /// control connections together (0: none); each holds a descriptor
    /// until a guest client takes it
    max_pooled_streams: usize = 64, Cap<MAX_POOLED_STREAMS_LIMIT>;

    /// Control connections served at once; beyond it a new one is closed
    /// before anything is read from it
    max_control_conns: usize = 64, Count<{ usize::MAX }>;

    /// Streaming calls (Accept, WatchPorts) open at once on one control
    /// connection; beyond it a new one is refused with RESOURCE_EXHAUSTED (a
    /// nerdbox host opens one Accept stream per container)
    max_streaming_calls: usize = 256, Count<{ usize::MAX }>;

    /// Streaming calls open at once on all control connections together
    max_streaming_calls_total: usize = 1024, Count<{ usize::MAX }>;

    /// Requests read from one control connection whose answers are not
    /// written yet; at the cap the agent reads no more from it until answers
    /// leave (a host that never reads its answers holds no more than this)
    max_requests_in_flight: usize = 64, Count<{ usize::MAX }>;

    /// Requests in flight on all control connections together
    max_requests_in_flight_total: usize = 256, Count<{ usize::MAX }>;

    /// Accept vsock connections from any CID, not only the host (CID 2)
    allow_any_cid: bool = false, Switch,
        |a: clap::Arg| a.num_args(0..=1).require_equals(true).default_missing_value("true");

    /// A target host-initiated connections (local forwards) may reach
    /// (repeatable): HOST:PORT with * for any host or port and A-B for a range
    /// (127.0.0.1:*, *:8080, db.internal:5432-5433; an IPv6 host in square
    /// brackets), or unix:GLOB (unix:/run/*) [default: any target]
    allow_targets as allow_target: AllowList = AllowList::default(), Allow;

    /// A TCP address the host may have a remote forward listen on, besides
    /// loopback (repeatable): IP:PORT with * for any address or port and A-B
    /// for a range (0.0.0.0:8080, *:3000-3999; an IPv6 address in square
    /// brackets) [default: loopback only]
    allow_listen: AllowList = AllowList::default(), Allow;

    /// A remote forward bound at start, before any host attaches (repeatable);
    /// a host's Bind of the same ID and place takes it over. MODE is octal, an
    /// empty field keeps the default; ID:tcp:IP:PORT is a TCP listener (an
    /// IPv6 address in square brackets). In the file also a table: id, path
    /// (mode, uid, gid) or tcp [default: none]
    forwards as forward: Vec<BootForward> = Vec::new(), Forward;

    /// Log filter, as RUST_LOG takes it; RUST_LOG, when set, replaces the
    /// default
    log: String = DEFAULT_LOG.to_owned(), Log;

    [aliases]

    /// Dial the host instead and serve ttrpc on that connection, redialing
    /// with backoff (nerdbox's topology); without ADDR (or `true`):
    /// vsock://2:1025
    control_dial => control, ControlDial,
        |a: clap::Arg| a.num_args(0..=1).default_missing_value("vsock://2:1025");

    /// Listen for ttrpc on vsock://-1:PORT
    control_port => control, ControlPort;

    /// Stream port on vsock://-1:PORT
    streams_port => streams, Port;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn every_flag_is_a_key_and_back() {
        let names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        assert!(names.contains(&"pending_timeout"), "{names:?}");
        let mut flags = Vec::new();
        for arg in crate::cli::Cli::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                let key = long.replace('-', "_");
                let meta = ["print_config", "config", "cmdline_file", "help", "version"];
                assert!(
                    names.contains(&key.as_str()) || meta.contains(&key.as_str()),
                    "--{long} is neither a key nor a known meta flag"
                );
                flags.push(key);
            }
        }
        for name in names {
            assert!(flags.iter().any(|f| f == name), "{name} has no flag");
        }
    }

    #[test]
    fn groups_name_their_setting_and_lists_are_known() {
        let get = |n: &str| KEYS.iter().find(|k| k.name == n).unwrap();
        assert_eq!(get("control_port").field, "control");
        assert_eq!(get("control_dial").field, "control");
        assert_eq!(get("streams_port").field, "streams");
        assert_eq!(get("pending_timeout").field, "pending_timeout");
        let lists: Vec<&str> = KEYS.iter().filter(|k| k.list).map(|k| k.name).collect();
        assert_eq!(
            lists,
            ["allow_dir", "allow_target", "allow_listen", "forward"]
        );
    }

    #[test]
    fn no_keys_is_the_defaults_of_the_design_notes() {
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
        assert_eq!(c.max_pooled_streams, 64);
        assert_eq!(c.max_control_conns, 64);
        assert_eq!(
            (c.max_streaming_calls, c.max_streaming_calls_total),
            (256, 1024)
        );
        assert_eq!(
            (c.max_requests_in_flight, c.max_requests_in_flight_total),
            (64, 256)
        );
        assert_eq!(c.first_frame_timeout, Duration::from_secs(10));
        assert!(c.allow_dirs.is_empty());
        assert!(!c.allow_any_cid);
        assert_eq!((c.socket_uid, c.socket_gid), (None, None));
        assert!(c.forwards.is_empty());
        assert_eq!(c.log, "info");
    }
}
