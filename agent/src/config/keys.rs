//! Every configuration key, once. A field of [`Keys`] is at the same time the
//! flag (`--pending-timeout`, clap: its doc comment is the help), the file key
//! (`pending_timeout`, serde) and the kernel command line key
//! (`sockfwd.pending_timeout`, serde), so the three accept the same values and
//! fail with the same message. One layer is one `Keys`: a field a layer does
//! not give is `None`.
//!
//! Keys that set one setting form a clap group (`control`, `control_dial` and
//! `control_port`; `streams` and `streams_port`): one layer may give only one
//! of them, and a later layer's replaces an earlier one's. `From<Keys> for
//! AgentConfig` below turns the merged keys into the configuration, each key
//! with its default.

use crate::config::values::{
    Allow, Count, Dial, Dir, Forward, Gid, Grace, Kind, Listen, Log, Mode, Port, Switch, Timeout,
    Uid, Val,
};
use crate::config::{AgentConfig, AllowList, ControlMode, MAX_STREAM_ID_LEN_LIMIT, STREAMS_PORT};
use clap::{ArgAction, Args};
use serde::{Deserialize, Serialize};
use sockfwd_proto::handshake;
use sockfwd_proto::transport::{Address, VMADDR_CID_ANY};
use std::time::Duration;

/// The configuration keys of one layer; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Serialize, Deserialize)]
#[group(skip)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// ttrpc listener [default: vsock://-1:1025]
    #[arg(long, value_name = "ADDR", group = "control_setting")]
    pub control: Option<Val<Listen>>,

    /// Dial the host and serve ttrpc on that connection, redialing with backoff
    /// [default when given without ADDR: vsock://2:1025]
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = "vsock://2:1025",
        group = "control_setting"
    )]
    pub control_dial: Option<Val<Dial>>,

    /// Listen for ttrpc on vsock://-1:PORT
    #[arg(long, value_name = "PORT", group = "control_setting")]
    pub control_port: Option<Val<Port>>,

    /// Stream-port listener [default: vsock://-1:1026]
    #[arg(long, value_name = "ADDR", group = "streams_setting")]
    pub streams: Option<Val<Listen>>,

    /// Stream port on vsock://-1:PORT
    #[arg(long, value_name = "PORT", group = "streams_setting")]
    pub streams_port: Option<Val<Port>>,

    /// How long a guest connection waits for its result [default: 30s]
    #[arg(long, value_name = "DUR")]
    pub pending_timeout: Option<Val<Timeout>>,

    /// How long one Accept stream may take to answer before the request is
    /// offered to another [default: 10s]
    #[arg(long, value_name = "DUR")]
    pub result_timeout: Option<Val<Timeout>>,

    /// Guest connections waiting at once; beyond it they are closed and logged
    /// [default: 4096]
    #[arg(long, value_name = "N")]
    pub max_pending: Option<Val<Count<{ usize::MAX }>>>,

    /// Longest stream ID accepted on the stream port [default: 256]
    #[arg(long, value_name = "N")]
    pub max_stream_id_len: Option<Val<Count<MAX_STREAM_ID_LEN_LIMIT>>>,

    /// Stream-port handshake read deadline [default: 5s]
    #[arg(long, value_name = "DUR")]
    pub handshake_timeout: Option<Val<Timeout>>,

    /// A registered stream not claimed within this is closed [default: 10s]
    #[arg(long, value_name = "DUR")]
    pub claim_timeout: Option<Val<Timeout>>,

    /// How long open relays may run after Shutdown or SIGTERM [default: 5s]
    #[arg(long, value_name = "DUR")]
    pub shutdown_grace: Option<Val<Grace>>,

    /// Mode of a forward socket whose Bind gives none [default: 0666: the
    /// socket's directory decides who reaches it]
    #[arg(long, value_name = "OCTAL")]
    pub socket_mode: Option<Val<Mode>>,

    /// Owner of a forward socket whose Bind gives none [default: the agent's]
    #[arg(long, value_name = "UID")]
    pub socket_uid: Option<Val<Uid>>,

    /// Group of a forward socket whose Bind gives none [default: the agent's]
    #[arg(long, value_name = "GID")]
    pub socket_gid: Option<Val<Gid>>,

    /// Only create sockets under DIR (repeatable); below DIR no symlink is
    /// followed [default: anywhere]
    #[arg(long, value_name = "DIR")]
    pub allow_dir: Option<Vec<Val<Dir>>>,

    /// Most sockets one Bind call may create [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_sockets_per_bind: Option<Val<Count<{ usize::MAX }>>>,

    /// Accept vsock connections from any CID, not only the host (CID 2)
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub allow_any_cid: Option<Val<Switch>>,

    /// A target host-initiated connections may reach (repeatable): HOST:PORT
    /// with * for any host or port and A-B for a range (127.0.0.1:*, *:8080,
    /// db.internal:5432-5433; an IPv6 host in square brackets), or unix:GLOB
    /// (unix:/run/*) [default: any target]
    #[arg(long, value_name = "SPEC")]
    pub allow_target: Option<Vec<Val<Allow>>>,

    /// A TCP address the host may have a remote forward listen on, besides
    /// loopback (repeatable): IP:PORT with * for any address or port and A-B
    /// for a range (0.0.0.0:8080, *:3000-3999; an IPv6 address in square
    /// brackets) [default: loopback only]
    #[arg(long, value_name = "SPEC")]
    pub allow_listen: Option<Vec<Val<Allow>>>,

    /// Bind this socket at start, before any host attaches (repeatable);
    /// MODE is octal, an empty field keeps the default; ID:tcp:IP:PORT is a
    /// TCP listener (an IPv6 address in square brackets)
    #[arg(long, value_name = "ID:PATH[:MODE[:UID:GID]]")]
    pub forward: Option<Vec<Val<Forward>>>,

    /// Log filter [default: RUST_LOG, else info]
    #[arg(long, value_name = "FILTER")]
    pub log: Option<Val<Log>>,
}

impl From<Keys> for AgentConfig {
    /// The merged keys over the defaults: this is where each default lives.
    /// (`log` is the binary's, not the agent's.)
    fn from(k: Keys) -> AgentConfig {
        let secs = Duration::from_secs;
        fn any<K: Kind>(v: Option<Val<K>>) -> Option<K::Value> {
            v.map(|v| v.0)
        }
        fn list<K: Kind>(v: Option<Vec<Val<K>>>) -> impl Iterator<Item = K::Value> {
            v.unwrap_or_default().into_iter().map(|v| v.0)
        }
        let control = match (any(k.control), any(k.control_dial), any(k.control_port)) {
            (Some(a), ..) | (.., Some(a)) => ControlMode::Listen(a),
            (_, Some(a), _) => ControlMode::Dial(a),
            _ => ControlMode::Listen(ControlMode::default_listen()),
        };
        let streams = any(k.streams).or(any(k.streams_port));
        AgentConfig {
            control,
            streams: streams.unwrap_or(Address::Vsock {
                cid: VMADDR_CID_ANY,
                port: STREAMS_PORT,
            }),
            pending_timeout: any(k.pending_timeout).unwrap_or(secs(30)),
            result_timeout: any(k.result_timeout).unwrap_or(secs(10)),
            max_pending: any(k.max_pending).unwrap_or(4096),
            max_stream_id_len: any(k.max_stream_id_len).unwrap_or(handshake::DEFAULT_MAX_ID_LEN),
            handshake_timeout: any(k.handshake_timeout).unwrap_or(handshake::DEFAULT_TIMEOUT),
            claim_timeout: any(k.claim_timeout).unwrap_or(secs(10)),
            shutdown_grace: any(k.shutdown_grace).unwrap_or(secs(5)),
            socket_mode: any(k.socket_mode).unwrap_or(0o666),
            socket_uid: any(k.socket_uid),
            socket_gid: any(k.socket_gid),
            allow_dirs: list(k.allow_dir).collect(),
            max_sockets_per_bind: any(k.max_sockets_per_bind).unwrap_or(1024),
            allow_any_cid: any(k.allow_any_cid).unwrap_or(false),
            allow_targets: AllowList(list(k.allow_target).collect()),
            allow_listen: AllowList(list(k.allow_listen).collect()),
            forwards: list(k.forward).collect(),
        }
    }
}

impl Default for AgentConfig {
    /// Every key at its default.
    fn default() -> AgentConfig {
        Keys::default().into()
    }
}

/// What the layers need to know of one key, read from the flags' definition
/// so it cannot drift from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key as the file spells it.
    pub name: String,
    /// Repeatable: a layer's values add up, and replace earlier layers' list.
    pub list: bool,
    /// The setting it writes: its group's first key, else itself.
    pub setting: String,
}

/// Every key, in the order `--help` and `--print-config` list them.
pub fn catalog() -> Vec<KeyInfo> {
    let mut cmd = Keys::augment_args(clap::Command::new("keys").disable_help_flag(true));
    cmd.build();
    let setting = |id: &str| {
        cmd.get_groups()
            .find(|g| g.get_args().any(|a| a == id))
            .and_then(|g| g.get_args().next())
            .map_or_else(|| id.to_owned(), |first| first.to_string())
    };
    cmd.get_arguments()
        .map(|a| {
            let name = a.get_id().to_string();
            KeyInfo {
                list: matches!(a.get_action(), ArgAction::Append),
                setting: setting(&name),
                name,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;
    use serde::de::{self, Visitor};
    use std::collections::BTreeSet;

    /// The field names serde reads, taken from the derived `Deserialize`
    /// itself: it names them when it asks for a struct.
    fn serde_keys() -> BTreeSet<String> {
        struct Fields(Vec<&'static str>);
        impl<'de> de::Deserializer<'de> for &mut Fields {
            type Error = de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("fields only"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0 = fields.to_vec();
                Err(de::Error::custom("fields only"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut fields = Fields(Vec::new());
        let _ = Keys::deserialize(&mut fields);
        fields.0.iter().map(|f| (*f).to_owned()).collect()
    }

    #[test]
    fn every_flag_is_a_file_and_kernel_command_line_key_and_back() {
        let flags: BTreeSet<String> = catalog().into_iter().map(|k| k.name).collect();
        let file_and_cmdline = serde_keys();
        assert!(flags.contains("pending_timeout"), "{flags:?}");
        assert_eq!(
            flags, file_and_cmdline,
            "flags vs file/kernel command line keys"
        );
        // And the flag is the key with dashes, as the docs promise.
        for arg in crate::cli::Cli::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                let key = long.replace('-', "_");
                let meta = ["print_config", "config", "cmdline_file", "help", "version"];
                assert!(
                    flags.contains(&key) || meta.contains(&key.as_str()),
                    "--{long} is neither a key nor a known meta flag"
                );
            }
        }
    }

    #[test]
    fn groups_name_their_setting_and_lists_are_known() {
        let info = catalog();
        let get = |n: &str| info.iter().find(|k| k.name == n).unwrap().clone();
        assert_eq!(get("control_port").setting, "control");
        assert_eq!(get("control_dial").setting, "control");
        assert_eq!(get("streams_port").setting, "streams");
        assert_eq!(get("pending_timeout").setting, "pending_timeout");
        let lists: Vec<String> = info
            .iter()
            .filter(|k| k.list)
            .map(|k| k.name.clone())
            .collect();
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
        assert!(c.allow_dirs.is_empty());
        assert!(!c.allow_any_cid);
        assert_eq!((c.socket_uid, c.socket_gid), (None, None));
        assert!(c.forwards.is_empty());
    }
}
