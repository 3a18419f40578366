//! Every configuration key and how its value is parsed, whichever layer gave it.
//!
//! One table serves the three layers that carry values: a key is `NAME` in the
//! TOML file, `sockfwd.NAME=` on the kernel command line and `--NAME` (with `-`
//! for `_`) as a flag. Text layers give strings; the file gives TOML values,
//! which are read as the same strings (`max_pending = 7` and `"7"` agree)
//! except where TOML says more (an integer `mode = 0o660`, a `[[forward]]`
//! table). A value that does not parse returns the "expected ..." half of the
//! message; [`crate::load`] adds the key, the layer and the value.

use crate::config::{BootForward, ControlMode, MAX_DURATION, MAX_STREAM_ID_LEN_LIMIT};
use crate::local::target::AllowTarget;
use crate::AgentConfig;
use sockfwd_proto::transport::{Address, AddressError, VMADDR_CID_ANY};
use std::borrow::Cow;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// A value as one layer gave it.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// From the kernel command line or a flag; a bare word or flag is `""`.
    Text(&'a str),
    /// From the TOML file.
    Toml(&'a toml::Value),
}

impl Input<'_> {
    /// The value as a message shows it: quoted text, or TOML's own spelling.
    pub fn shown(&self) -> String {
        match self {
            Input::Text(s) => format!("{s:?}"),
            Input::Toml(v) => v.to_string(),
        }
    }
}

/// What the layers set, starting from the defaults; [`Key::apply`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// The agent's configuration so far.
    pub config: AgentConfig,
    /// The tracing filter (`log`).
    pub log: String,
    /// The file named by `config` (kernel command line or flag).
    pub config_file: Option<PathBuf>,
    /// `allow_target` as given, for `--print-config` (the parsed patterns
    /// do not print).
    pub allow_target_text: Vec<String>,
}

macro_rules! keys {
    ($($variant:ident => $name:literal,)*) => {
        /// A configuration key; see the module docs for how each layer spells it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Key {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl Key {
            /// Every key, in the order `--help` and `--print-config` list them.
            pub const ALL: &'static [Key] = &[$(Key::$variant),*];

            /// The key's name in the file and after `sockfwd.`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Key::$variant => $name,)*
                }
            }
        }
    };
}

keys! {
    Config => "config",
    Control => "control",
    ControlDial => "control_dial",
    ControlPort => "control_port",
    Streams => "streams",
    StreamsPort => "streams_port",
    PendingTimeout => "pending_timeout",
    ResultTimeout => "result_timeout",
    MaxPending => "max_pending",
    MaxStreamIdLen => "max_stream_id_len",
    HandshakeTimeout => "handshake_timeout",
    ClaimTimeout => "claim_timeout",
    ShutdownGrace => "shutdown_grace",
    SocketMode => "socket_mode",
    SocketUid => "socket_uid",
    SocketGid => "socket_gid",
    AllowDir => "allow_dir",
    MaxSocketsPerBind => "max_sockets_per_bind",
    AllowAnyCid => "allow_any_cid",
    AllowTarget => "allow_target",
    Forward => "forward",
    Log => "log",
}

impl Key {
    /// The key named `name` (as in the file, `_` between words).
    pub fn from_name(name: &str) -> Option<Key> {
        Key::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// The flag spelling: `--pending-timeout`.
    pub fn flag(self) -> String {
        format!("--{}", self.name().replace('_', "-"))
    }

    /// The setting the key writes: shorthands and alternatives share one
    /// (`control_port` and `control_dial` set `control`), so one layer may
    /// give only one of them, and a later layer's replaces an earlier one's.
    pub fn setting(self) -> &'static str {
        match self {
            Key::ControlDial | Key::ControlPort => Key::Control.name(),
            Key::StreamsPort => Key::Streams.name(),
            k => k.name(),
        }
    }

    /// Whether the TOML file may set it (the file cannot name another file).
    pub fn in_file(self) -> bool {
        self != Key::Config
    }

    /// Whether the key is repeatable: a layer that gives it replaces the list
    /// of earlier layers, and its own occurrences add up.
    pub fn is_list(self) -> bool {
        matches!(self, Key::AllowDir | Key::AllowTarget | Key::Forward)
    }

    /// Empties a list key's setting (the first time a layer gives it).
    pub fn clear(self, d: &mut Draft) {
        match self {
            Key::AllowDir => d.config.allow_dirs.clear(),
            Key::AllowTarget => {
                d.config.allow_targets.0.clear();
                d.allow_target_text.clear();
            }
            Key::Forward => d.config.forwards.clear(),
            _ => {}
        }
    }

    /// Parses `input` and writes it into `d`; on error, what was expected.
    pub fn apply(self, d: &mut Draft, input: Input<'_>) -> Result<(), String> {
        let c = &mut d.config;
        match self {
            Key::Config => d.config_file = Some(file_path(&scalar(input)?)?),
            Key::Control => c.control = ControlMode::Listen(listen_address(&scalar(input)?)?),
            Key::ControlDial => {
                let s = scalar(input)?;
                c.control = ControlMode::Dial(match &*s {
                    "" | "true" => ControlMode::default_dial(),
                    s => s.parse().map_err(|e| address_expected(&e))?,
                });
            }
            Key::ControlPort => c.control = ControlMode::Listen(any_cid(&scalar(input)?)?),
            Key::Streams => c.streams = listen_address(&scalar(input)?)?,
            Key::StreamsPort => c.streams = any_cid(&scalar(input)?)?,
            Key::PendingTimeout => c.pending_timeout = positive_duration(&scalar(input)?)?,
            Key::ResultTimeout => c.result_timeout = positive_duration(&scalar(input)?)?,
            Key::MaxPending => c.max_pending = count(&scalar(input)?, usize::MAX)?,
            Key::MaxStreamIdLen => {
                c.max_stream_id_len = count(&scalar(input)?, MAX_STREAM_ID_LEN_LIMIT)?;
            }
            Key::HandshakeTimeout => c.handshake_timeout = positive_duration(&scalar(input)?)?,
            Key::ClaimTimeout => c.claim_timeout = positive_duration(&scalar(input)?)?,
            Key::ShutdownGrace => c.shutdown_grace = duration(&scalar(input)?)?,
            Key::SocketMode => c.socket_mode = mode(input)?,
            Key::SocketUid => c.socket_uid = Some(owner_id(&scalar(input)?, "user")?),
            Key::SocketGid => c.socket_gid = Some(owner_id(&scalar(input)?, "group")?),
            Key::AllowDir => c.allow_dirs.push(allow_dir(&scalar(input)?)?),
            Key::MaxSocketsPerBind => c.max_sockets_per_bind = count(&scalar(input)?, usize::MAX)?,
            Key::AllowAnyCid => c.allow_any_cid = boolean(&scalar(input)?)?,
            Key::AllowTarget => {
                let s = scalar(input)?;
                c.allow_targets.0.push(allow_target(&s)?);
                d.allow_target_text.push(s.into_owned());
            }
            Key::Forward => c.forwards.push(match input {
                Input::Toml(toml::Value::Table(t)) => forward_table(t)?,
                other => forward_spec(&scalar(other)?)?,
            }),
            Key::Log => d.log = log_filter(&scalar(input)?)?,
        }
        Ok(())
    }
}

/// The value as text: TOML strings as they are, other TOML scalars as TOML
/// writes them; lists and tables are not single values.
fn scalar(input: Input<'_>) -> Result<Cow<'_, str>, String> {
    match input {
        Input::Text(s) => Ok(Cow::Borrowed(s)),
        Input::Toml(toml::Value::String(s)) => Ok(Cow::Borrowed(s)),
        Input::Toml(toml::Value::Array(_) | toml::Value::Table(_)) => {
            Err("expected a single value, not a list or a table".to_owned())
        }
        Input::Toml(v) => Ok(Cow::Owned(v.to_string())),
    }
}

const DURATION: &str = "expected a duration like 500ms or 10s";

/// A duration in humantime's form: `500ms`, `10s`, `1m`; at most a day.
pub fn duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => Err(format!("{DURATION}, at most 24h")),
        Err(_) => Err(DURATION.to_owned()),
    }
}

/// A [`duration`] greater than zero.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err(format!("{DURATION}, greater than zero")),
        d => Ok(d),
    }
}

/// A whole number from 1 to `max`.
pub fn count(s: &str, max: usize) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {max}")),
    }
}

/// `vsock://-1:PORT` for a port number.
fn any_cid(s: &str) -> Result<Address, String> {
    let port = s
        .parse::<u32>()
        .map_err(|_| format!("expected a port number from 0 to {}", u32::MAX))?;
    Ok(Address::Vsock {
        cid: VMADDR_CID_ANY,
        port,
    })
}

const LISTEN: &str = "expected unix://PATH or vsock://CID:PORT";

fn address_expected(e: &AddressError) -> String {
    match e {
        AddressError::Scheme(_) => LISTEN.to_owned(),
        AddressError::Malformed { reason, .. } => format!("{LISTEN} ({reason})"),
    }
}

/// An address the agent can listen on: `unix://` or `vsock://`.
pub fn listen_address(s: &str) -> Result<Address, String> {
    match s.parse::<Address>() {
        Ok(Address::Hybrid { .. }) => {
            Err(format!("{LISTEN}; hvsock:// is for dialing from the host"))
        }
        Ok(a) => Ok(a),
        Err(e) => Err(address_expected(&e)),
    }
}

/// An octal file mode: `0666`, `666` or `0o666`; from TOML also an integer
/// (`0o660`).
pub fn mode(input: Input<'_>) -> Result<u32, String> {
    const EXPECTED: &str = "expected an octal mode like 0660, at most 07777";
    let mode = match input {
        Input::Toml(toml::Value::Integer(i)) => u32::try_from(*i).map_err(|_| EXPECTED)?,
        other => {
            let s = scalar(other)?;
            let digits = s.strip_prefix("0o").unwrap_or(&s);
            u32::from_str_radix(digits, 8).map_err(|_| EXPECTED)?
        }
    };
    if mode > 0o7777 {
        return Err(EXPECTED.to_owned());
    }
    Ok(mode)
}

/// A numeric user or group ID (no name lookup: a guest may have no user
/// database when the agent starts).
fn owner_id(s: &str, what: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| format!("expected a numeric {what} ID from 0 to {}", u32::MAX))
}

/// An absolute path without `..`, as allowed directories must be.
fn allow_dir(s: &str) -> Result<PathBuf, String> {
    let path = Path::new(s);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err("expected an absolute path without '..'".to_owned());
    }
    Ok(path.to_path_buf())
}

/// A pattern for host-initiated connections (see [`AllowTarget`]).
fn allow_target(s: &str) -> Result<AllowTarget, String> {
    s.parse::<AllowTarget>().map_err(|e| {
        // The parser names the flag and the value; the caller does that here.
        let why = e.split_once("\": ").map_or(e.as_str(), |(_, why)| why);
        format!("expected HOST:PORT (* for any, A-B for a range) or unix:GLOB: {why}")
    })
}

/// A file to read; relative paths are taken from the working directory.
fn file_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("expected a file path".to_owned());
    }
    Ok(PathBuf::from(s))
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`); empty (a bare
/// switch) is true.
pub fn boolean(s: &str) -> Result<bool, String> {
    match s {
        "" | "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

/// A tracing filter, as `RUST_LOG` takes it.
pub fn log_filter(s: &str) -> Result<String, String> {
    const EXPECTED: &str = "expected a tracing filter like info or info,sockfwd_agent=debug";
    if s.trim().is_empty() {
        return Err(EXPECTED.to_owned());
    }
    match tracing_subscriber::EnvFilter::builder().parse(s) {
        Ok(_) => Ok(s.to_owned()),
        Err(e) => Err(format!("{EXPECTED} ({e})")),
    }
}

/// `ID:PATH[:MODE[:UID:GID]]`; an empty MODE, UID or GID keeps the default.
/// PATH cannot hold `:` in this form (the file's `[[forward]]` can).
pub fn forward_spec(s: &str) -> Result<BootForward, String> {
    const FORM: &str = "expected ID:PATH[:MODE[:UID:GID]]";
    let parts: Vec<&str> = s.split(':').collect();
    let (id, path, mode_s, uid, gid) = match parts[..] {
        [id, path] => (id, path, "", "", ""),
        [id, path, m] => (id, path, m, "", ""),
        [id, path, m, u, g] => (id, path, m, u, g),
        _ => return Err(FORM.to_owned()),
    };
    let optional = |v: &str, parse: &dyn Fn(&str) -> Result<u32, String>| {
        if v.is_empty() {
            Ok(None)
        } else {
            parse(v).map(Some)
        }
    };
    forward(
        id,
        path,
        optional(mode_s, &|v| mode(Input::Text(v)))?,
        optional(uid, &|v| owner_id(v, "user"))?,
        optional(gid, &|v| owner_id(v, "group"))?,
    )
    .map_err(|e| format!("{FORM}: {e}"))
}

/// A `[[forward]]` table: `id`, `path`, and optionally `mode`, `uid`, `gid`.
fn forward_table(t: &toml::Table) -> Result<BootForward, String> {
    const KEYS: &str = "id, path, mode, uid, gid";
    if let Some(k) = t
        .keys()
        .find(|k| !KEYS.split(", ").any(|known| known == k.as_str()))
    {
        return Err(format!("unknown key {k:?} in a forward (expected {KEYS})"));
    }
    let text = |k: &str| match t.get(k) {
        Some(toml::Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(format!("{k} must be a string")),
        None => Err(format!("a forward needs {k}")),
    };
    let owner = |k: &str, what: &str| {
        t.get(k)
            .map(|v| owner_id(&scalar(Input::Toml(v))?, what))
            .transpose()
    };
    forward(
        text("id")?,
        text("path")?,
        t.get("mode").map(|v| mode(Input::Toml(v))).transpose()?,
        owner("uid", "user")?,
        owner("gid", "group")?,
    )
}

fn forward(
    id: &str,
    path: &str,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<BootForward, String> {
    crate::remote::paths::check_forward_id(id)?;
    if !Path::new(path).is_absolute() {
        return Err("the path must be absolute".to_owned());
    }
    Ok(BootForward {
        id: id.to_owned(),
        path: PathBuf::from(path),
        mode,
        uid,
        gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> Draft {
        Draft {
            config: AgentConfig::default(),
            log: "info".into(),
            config_file: None,
            allow_target_text: Vec::new(),
        }
    }

    fn text(key: Key, s: &str) -> Result<Draft, String> {
        let mut d = draft();
        key.apply(&mut d, Input::Text(s)).map(|()| d)
    }

    fn file(key: Key, toml_value: &str) -> Result<Draft, String> {
        let table: toml::Table = format!("v = {toml_value}").parse().unwrap();
        let mut d = draft();
        key.apply(&mut d, Input::Toml(&table["v"])).map(|()| d)
    }

    #[test]
    fn names_round_trip_and_flags_use_dashes() {
        for k in Key::ALL {
            assert_eq!(Key::from_name(k.name()), Some(*k));
        }
        assert_eq!(Key::PendingTimeout.flag(), "--pending-timeout");
        assert_eq!(Key::from_name("pending-timeout"), None);
        assert_eq!(Key::ControlPort.setting(), "control");
        assert_eq!(Key::StreamsPort.setting(), "streams");
    }

    #[test]
    fn text_values_land_in_the_draft() {
        let c = |k, s| text(k, s).unwrap().config;
        assert_eq!(
            c(Key::ControlPort, "7").control,
            ControlMode::Listen("vsock://-1:7".parse().unwrap())
        );
        assert_eq!(
            c(Key::ControlDial, "").control,
            ControlMode::Dial(ControlMode::default_dial())
        );
        assert_eq!(
            c(Key::ControlDial, "unix:///h").control,
            ControlMode::Dial(Address::Unix("/h".into()))
        );
        assert_eq!(c(Key::StreamsPort, "9").streams.to_string(), "vsock://-1:9");
        assert_eq!(
            c(Key::PendingTimeout, "1m").pending_timeout,
            Duration::from_secs(60)
        );
        assert_eq!(c(Key::ShutdownGrace, "0s").shutdown_grace, Duration::ZERO);
        assert_eq!(c(Key::SocketMode, "0o600").socket_mode, 0o600);
        assert_eq!(c(Key::SocketUid, "1000").socket_uid, Some(1000));
        assert!(c(Key::AllowAnyCid, "").allow_any_cid);
        assert!(!c(Key::AllowAnyCid, "false").allow_any_cid);
        let d = text(Key::AllowTarget, "127.0.0.1:*").unwrap();
        assert_eq!(d.config.allow_targets.0.len(), 1);
        assert_eq!(d.allow_target_text, ["127.0.0.1:*"]);
        assert_eq!(
            text(Key::Log, "warn,sockfwd_agent=debug").unwrap().log,
            "warn,sockfwd_agent=debug"
        );
        assert_eq!(
            text(Key::Config, "/x.toml").unwrap().config_file,
            Some("/x.toml".into())
        );
    }

    #[test]
    fn toml_values_are_read_as_their_text_except_modes_and_tables() {
        assert_eq!(file(Key::MaxPending, "7").unwrap().config.max_pending, 7);
        assert_eq!(
            file(Key::MaxPending, "\"7\"").unwrap().config.max_pending,
            7
        );
        assert!(file(Key::AllowAnyCid, "true").unwrap().config.allow_any_cid);
        assert_eq!(
            file(Key::ControlDial, "true").unwrap().config.control,
            ControlMode::Dial(ControlMode::default_dial())
        );
        assert_eq!(
            file(Key::SocketMode, "0o660").unwrap().config.socket_mode,
            0o660
        );
        assert_eq!(
            file(Key::SocketMode, "\"0660\"")
                .unwrap()
                .config
                .socket_mode,
            0o660
        );
        assert_eq!(
            file(Key::SocketMode, "432").unwrap().config.socket_mode,
            0o660
        );
        let f = file(
            Key::Forward,
            r#"{ id = "web", path = "/run/a:b.sock", mode = 0o600, uid = 0, gid = 5 }"#,
        )
        .unwrap();
        assert_eq!(
            f.config.forwards[0].to_string(),
            "web:/run/a:b.sock:0600:0:5"
        );
        let f = file(Key::Forward, r#""web:/run/w.sock""#).unwrap();
        assert_eq!(f.config.forwards[0].path, PathBuf::from("/run/w.sock"));
    }

    #[test]
    fn forward_specs() {
        let ok = |s: &str| forward_spec(s).unwrap().to_string();
        assert_eq!(ok("a:/r/a.sock"), "a:/r/a.sock");
        assert_eq!(ok("a:/r/a.sock:660"), "a:/r/a.sock:0660");
        assert_eq!(ok("a:/r/a.sock:0660:1:2"), "a:/r/a.sock:0660:1:2");
        assert_eq!(ok("a:/r/a.sock::1:"), "a:/r/a.sock::1:");
        for (bad, needle) in [
            ("a", "expected ID:PATH"),
            ("a:/r:1:2", "expected ID:PATH"),
            (":/r/a.sock", "empty forward ID"),
            ("a:r/a.sock", "absolute"),
            ("a:/r/a.sock:999", "octal mode"),
            ("a:/r/a.sock:0600:x:1", "numeric user ID"),
            ("a:/r/a.sock:0600:1:-1", "numeric group ID"),
        ] {
            let err = forward_spec(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let cases: Vec<(Key, &str, &str)> = vec![
            (
                Key::PendingTimeout,
                "abc",
                "expected a duration like 500ms or 10s",
            ),
            (Key::PendingTimeout, "0s", "greater than zero"),
            (Key::ShutdownGrace, "soon", "expected a duration"),
            (Key::ShutdownGrace, "25h", "at most 24h"),
            (
                Key::PendingTimeout,
                "99999999999999years",
                "expected a duration",
            ),
            (Key::MaxPending, "0", "from 1 to"),
            (Key::MaxPending, "-3", "from 1 to"),
            (Key::MaxStreamIdLen, "65537", "from 1 to 65536"),
            (Key::ControlPort, "x", "port number"),
            (
                Key::Control,
                "tcp://x",
                "expected unix://PATH or vsock://CID:PORT",
            ),
            (Key::Control, "vsock://1", "expected CID:PORT"),
            (Key::Streams, "hvsock:///v:1", "dialing from the host"),
            (Key::ControlDial, "tcp://x", "expected unix://PATH"),
            (Key::SocketMode, "0999", "octal mode"),
            (Key::SocketMode, "70000", "at most 07777"),
            (Key::SocketUid, "root", "numeric user ID"),
            (Key::AllowDir, "run", "absolute path"),
            (Key::AllowDir, "/run/../etc", "without '..'"),
            (Key::AllowAnyCid, "maybe", "true or false"),
            (Key::AllowTarget, "*:x", "expected HOST:PORT"),
            (Key::AllowTarget, "unix:run", "absolute path glob"),
            (Key::Log, "", "tracing filter"),
            (Key::Log, "[[[", "tracing filter"),
            (Key::Config, "", "file path"),
        ];
        for (key, value, needle) in cases {
            let err = text(key, value).unwrap_err();
            assert!(err.contains(needle), "{key:?}={value:?}: {err}");
        }
        for (key, value, needle) in [
            (Key::PendingTimeout, "10", "expected a duration"),
            (Key::MaxPending, "[1]", "not a list"),
            (Key::SocketMode, "-1", "octal mode"),
            (Key::SocketMode, "0o10000", "octal mode"),
            (Key::Forward, r#"{ id = "a" }"#, "needs path"),
            (
                Key::Forward,
                r#"{ id = "a", path = "/a", user = 1 }"#,
                "unknown key \"user\"",
            ),
            (
                Key::Forward,
                r#"{ id = 1, path = "/a" }"#,
                "id must be a string",
            ),
            (
                Key::Forward,
                r#"{ id = "a", path = "/a", uid = "x" }"#,
                "numeric user ID",
            ),
        ] {
            let err = file(key, value).unwrap_err();
            assert!(err.contains(needle), "{key:?}={value}: {err}");
        }
    }
}
