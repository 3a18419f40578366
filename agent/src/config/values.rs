//! The kinds of value a configuration key takes. A [`Kind`] says how its text
//! parses (the same in every layer), checks its bounds once, says what it
//! expected when it cannot, and prints text that parses back; [`Val`] is a key's
//! value of one kind: `FromStr` for clap, serde for the file and the kernel
//! command line.
//!
//! From the file, a value may also be TOML's own: an integer or a boolean is
//! read as its text (`max_pending = 7` and `"7"` agree), except that an integer
//! mode is the mode itself (`socket_mode = 0o660`); a `[[forward]]` table is a
//! [`Forward`].

use crate::config::{AllowTarget, AllowTargetError, BootForward, BootListen, ControlMode};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use sockfwd_proto::duration::MAX_DURATION;
use sockfwd_proto::forward_id::{self, ForwardIdError};
use sockfwd_proto::transport::{Address, AddressError, VMADDR_CID_ANY};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use thiserror::Error;

/// What a value should have been; the layer adds the key, itself and the value.
#[derive(Debug, Error)]
pub enum ValueError {
    /// The text is not of the kind's form.
    #[error("expected {0}")]
    Expected(&'static str),
    /// A whole number out of range.
    #[error("expected a whole number from 1 to {0}")]
    Count(usize),
    /// An address with a known scheme, malformed after it (the reason says how).
    #[error("{0}")]
    Address(&'static str),
    /// A log filter tracing does not take.
    #[error("expected {LOG} ({0})")]
    Log(tracing_subscriber::filter::ParseError),
    /// A boot-time forward whose form is right and one field is not.
    #[error("{field}: {error}")]
    Field {
        /// The field, as the form names it (`MODE`).
        field: &'static str,
        /// What is wrong with it.
        error: Box<ValueError>,
    },
    /// A forward ID against the forward-ID rule.
    #[error(transparent)]
    ForwardId(#[from] ForwardIdError),
    /// A `[[forward]]` table serde could not read (a missing, unknown or
    /// mistyped field: serde's words).
    #[error("{0}")]
    Table(String),
    /// An `--allow-target` pattern that does not parse.
    #[error(transparent)]
    AllowTarget(#[from] AllowTargetError),
}

/// One kind of value; see the module docs.
pub trait Kind: Clone + fmt::Debug + Eq + 'static {
    /// What the text parses to.
    type Value: Clone + fmt::Debug + Eq + Send + Sync;
    /// Parses the text any layer gives.
    fn parse(s: &str) -> Result<Self::Value, ValueError>;
    /// Text that [`Kind::parse`] reads back to the same value.
    fn show(v: &Self::Value) -> String;
    /// A TOML integer: its decimal text, unless the kind says otherwise.
    fn integer(i: i64) -> Result<Self::Value, ValueError> {
        Self::parse(&i.to_string())
    }
    /// A TOML table: only a kind made of fields takes one.
    fn table(_: toml::Table) -> Result<Self::Value, ValueError> {
        Err(ValueError::Expected(SINGLE))
    }
}

/// A key's value of kind `K`; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Val<K: Kind>(pub K::Value);

impl<K: Kind> FromStr for Val<K> {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        K::parse(s).map(Val)
    }
}

impl<K: Kind> fmt::Display for Val<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&K::show(&self.0))
    }
}

impl<K: Kind> Serialize for Val<K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&K::show(&self.0))
    }
}

impl<'de, K: Kind> Deserialize<'de> for Val<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parsed = match toml::Value::deserialize(d)? {
            toml::Value::String(s) => K::parse(&s),
            toml::Value::Integer(i) => K::integer(i),
            toml::Value::Table(t) => K::table(t),
            toml::Value::Array(_) => Err(ValueError::Expected(SINGLE)),
            other => K::parse(&other.to_string()),
        };
        parsed.map(Val).map_err(de::Error::custom)
    }
}

/// Kinds that are a value type, a parser and a printer.
macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident: $value:ty = $parse:expr, $show:expr;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum $name {}

        impl Kind for $name {
            type Value = $value;
            fn parse(s: &str) -> Result<$value, ValueError> {
                ($parse)(s)
            }
            fn show(v: &$value) -> String {
                ($show)(v)
            }
        }
    )*};
}

kinds! {
    /// A deadline: humantime's `500ms`, `10s`, `1m`; above zero, at most a day.
    Timeout: Duration = |s| match duration(s)? {
        d if d.is_zero() => Err(ValueError::Expected(POSITIVE)),
        d => Ok(d),
    }, humane;
    /// A grace period: like [`Timeout`], and zero allowed.
    Grace: Duration = duration, humane;
    /// An address the agent can listen on: `unix://PATH` or `vsock://CID:PORT`.
    Listen: Address = |s| match address(s)? {
        Address::Hybrid { .. } => Err(ValueError::Expected(HYBRID)),
        a => Ok(a),
    }, Address::to_string;
    /// The host to dial; empty or `true` (a bare switch) is `vsock://2:1025`.
    Dial: Address = |s| match s {
        "" | "true" => Ok(ControlMode::default_dial()),
        s => address(s),
    }, Address::to_string;
    /// A vsock port, the shorthand for `vsock://-1:PORT`.
    Port: Address = |s: &str| match s.parse() {
        Ok(port) => Ok(Address::Vsock { cid: VMADDR_CID_ANY, port }),
        Err(_) => Err(ValueError::Expected("a port number from 0 to 4294967295")),
    }, |a: &Address| match a {
        Address::Vsock { port, .. } => port.to_string(),
        other => other.to_string(),
    };
    /// A numeric user ID (no name lookup: a guest may have no user database
    /// when the agent starts).
    Uid: u32 = |s: &str| s.parse().map_err(|_| ValueError::Expected(UID)), u32::to_string;
    /// A numeric group ID.
    Gid: u32 = |s: &str| s.parse().map_err(|_| ValueError::Expected(GID)), u32::to_string;
    /// An absolute directory without `..`, as allowed directories must be.
    Dir: PathBuf = |s: &str| {
        let path = Path::new(s);
        match path.is_absolute() && !path.components().any(|c| c == Component::ParentDir) {
            true => Ok(path.to_path_buf()),
            false => Err(ValueError::Expected("an absolute path without '..'")),
        }
    }, |p: &PathBuf| p.display().to_string();
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`); empty (a bare
    /// switch) is true.
    Switch: bool = |s| match s {
        "" | "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ValueError::Expected("true or false")),
    }, bool::to_string;
    /// A tracing filter, as `RUST_LOG` takes it.
    Log: String = |s: &str| match tracing_subscriber::EnvFilter::builder().parse(s) {
        _ if s.trim().is_empty() => Err(ValueError::Expected(LOG)),
        Ok(_) => Ok(s.to_owned()),
        Err(e) => Err(ValueError::Log(e)),
    }, String::clone;
    /// An `--allow-target` pattern ([`AllowTarget`]).
    Allow: AllowTarget = |s: &str| Ok(s.parse()?), AllowTarget::to_string;
}

const DURATION: &str = "a duration like 500ms or 10s";
const POSITIVE: &str = "a duration like 500ms or 10s, greater than zero";
const LISTEN: &str = "unix://PATH or vsock://CID:PORT";
const HYBRID: &str = "unix://PATH or vsock://CID:PORT; hvsock:// is for dialing from the host";
const UID: &str = "a numeric user ID from 0 to 4294967295";
const GID: &str = "a numeric group ID from 0 to 4294967295";
const LOG: &str = "a tracing filter like info or info,sockfwd_agent=debug";
const MODE: &str = "an octal mode like 0660, at most 07777";
const FORWARD: &str = "ID:PATH[:MODE[:UID:GID]] or ID:tcp:IP:PORT";
const TCP: &str = "IP:PORT, an IPv6 address in brackets";
const SINGLE: &str = "a single value, not a list or a table";

fn duration(s: &str) -> Result<Duration, ValueError> {
    match humantime::parse_duration(s) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => Err(ValueError::Expected(
            "a duration like 500ms or 10s, at most 24h",
        )),
        Err(_) => Err(ValueError::Expected(DURATION)),
    }
}

fn humane(d: &Duration) -> String {
    humantime::format_duration(*d).to_string()
}

fn address(s: &str) -> Result<Address, ValueError> {
    s.parse().map_err(|e| match e {
        AddressError::Scheme(_) => ValueError::Expected(LISTEN),
        AddressError::Malformed { reason, .. } => ValueError::Address(reason),
    })
}

/// A whole number from 1 to `MAX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Count<const MAX: usize> {}

impl<const MAX: usize> Kind for Count<MAX> {
    type Value = usize;
    fn parse(s: &str) -> Result<usize, ValueError> {
        match s.parse::<usize>() {
            Ok(n) if (1..=MAX).contains(&n) => Ok(n),
            _ => Err(ValueError::Count(MAX)),
        }
    }
    fn show(n: &usize) -> String {
        n.to_string()
    }
}

/// An octal file mode: `0666`, `666` or `0o666`; from TOML also an integer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {}

impl Kind for Mode {
    type Value = u32;
    fn parse(s: &str) -> Result<u32, ValueError> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        let mode = u32::from_str_radix(digits, 8).ok();
        mode.filter(|m| *m <= 0o7777)
            .ok_or(ValueError::Expected(MODE))
    }
    fn show(m: &u32) -> String {
        format!("{m:04o}")
    }
    fn integer(i: i64) -> Result<u32, ValueError> {
        let mode = u32::try_from(i).ok();
        mode.filter(|m| *m <= 0o7777)
            .ok_or(ValueError::Expected(MODE))
    }
}

/// A boot-time forward: `ID:PATH[:MODE[:UID:GID]]` (an empty MODE, UID or GID
/// keeps the default; PATH holds no `:`) or `ID:tcp:IP:PORT` (a TCP listener;
/// `[IPV6]:PORT`), or the file's table of `id` and `path` (with `mode`, `uid`,
/// `gid`) or `tcp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forward {}

/// A `[[forward]]` table as the file writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardTable {
    id: String,
    path: Option<String>,
    tcp: Option<String>,
    mode: Option<Val<Mode>>,
    uid: Option<Val<Uid>>,
    gid: Option<Val<Gid>>,
}

fn field(field: &'static str, error: ValueError) -> ValueError {
    ValueError::Field {
        field,
        error: Box::new(error),
    }
}

/// The one check of what a forward's fields hold.
fn forward(
    id: &str,
    path: &str,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<BootForward, ValueError> {
    forward_id::check(id).map_err(|e| field("ID", e.into()))?;
    if !Path::new(path).is_absolute() {
        return Err(field("PATH", ValueError::Expected("an absolute path")));
    }
    Ok(BootForward {
        id: id.to_owned(),
        listen: BootListen::Path(PathBuf::from(path)),
        mode,
        uid,
        gid,
    })
}

/// The check of a TCP forward's fields (no mode or owner: those are a file's).
fn tcp_forward(id: &str, addr: &str) -> Result<BootForward, ValueError> {
    forward_id::check(id).map_err(|e| field("ID", e.into()))?;
    let addr = addr
        .parse::<SocketAddr>()
        .map_err(|_| field("tcp", ValueError::Expected(TCP)))?;
    Ok(BootForward {
        id: id.to_owned(),
        listen: BootListen::Tcp(addr),
        mode: None,
        uid: None,
        gid: None,
    })
}

impl Kind for Forward {
    type Value = BootForward;
    fn parse(s: &str) -> Result<BootForward, ValueError> {
        fn opt<K: Kind>(name: &'static str, v: &str) -> Result<Option<K::Value>, ValueError> {
            let parsed = (!v.is_empty()).then(|| K::parse(v)).transpose();
            parsed.map_err(|e| field(name, e))
        }
        // A PATH is absolute, so `tcp:` after the ID can only mean TCP.
        if let Some((id, addr)) = s
            .split_once(':')
            .and_then(|(id, rest)| Some((id, rest.strip_prefix("tcp:")?)))
        {
            return tcp_forward(id, addr);
        }
        let parts: Vec<&str> = s.split(':').collect();
        let (id, path, mode, uid, gid) = match parts[..] {
            [id, path] => (id, path, "", "", ""),
            [id, path, m] => (id, path, m, "", ""),
            [id, path, m, u, g] => (id, path, m, u, g),
            _ => return Err(ValueError::Expected(FORWARD)),
        };
        let mode = opt::<Mode>("MODE", mode)?;
        forward(
            id,
            path,
            mode,
            opt::<Uid>("UID", uid)?,
            opt::<Gid>("GID", gid)?,
        )
    }
    fn show(b: &BootForward) -> String {
        b.to_string()
    }
    fn table(t: toml::Table) -> Result<BootForward, ValueError> {
        let t = ForwardTable::deserialize(toml::Value::Table(t))
            .map_err(|e| ValueError::Table(e.message().to_owned()))?;
        let (mode, uid, gid) = (t.mode.map(|m| m.0), t.uid.map(|u| u.0), t.gid.map(|g| g.0));
        match (&t.path, &t.tcp) {
            (Some(path), None) => forward(&t.id, path, mode, uid, gid),
            (None, Some(addr)) if mode.is_none() && uid.is_none() && gid.is_none() => {
                tcp_forward(&t.id, addr)
            }
            (None, Some(_)) => Err(ValueError::Table(
                "mode, uid and gid apply to a path, not to tcp".into(),
            )),
            (None, None) => Err(ValueError::Table(
                "missing field `path` (or `tcp`, for a TCP listener)".into(),
            )),
            (Some(_), Some(_)) => Err(ValueError::Table("`path` or `tcp`, not both".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_specs_round_trip_their_text_form() {
        for (spec, want) in [
            ("a:/r/a.sock", "a:/r/a.sock"),
            ("a:/r/a.sock:660", "a:/r/a.sock:0660"),
            ("a:/r/a.sock:0660:1:2", "a:/r/a.sock:0660:1:2"),
            ("a:/r/a.sock::1:", "a:/r/a.sock::1:"),
            ("db:tcp:127.0.0.1:5432", "db:tcp:127.0.0.1:5432"),
            ("db:tcp:[::1]:0", "db:tcp:[::1]:0"),
        ] {
            let f: Val<Forward> = spec.parse().unwrap();
            assert_eq!(f.to_string(), want);
            assert_eq!(want.parse::<Val<Forward>>().unwrap(), f);
        }
        for bad in ["a", "a:/r:1:2", "a:/r/a.sock:1:2:3:4"] {
            let err = bad.parse::<Val<Forward>>().unwrap_err().to_string();
            assert_eq!(err, "expected ID:PATH[:MODE[:UID:GID]] or ID:tcp:IP:PORT");
        }
        for bad in ["db:tcp:localhost:5432", "db:tcp:::1:5432", "db:tcp:1.2.3.4"] {
            let err = bad.parse::<Val<Forward>>().unwrap_err().to_string();
            assert_eq!(err, "tcp: expected IP:PORT, an IPv6 address in brackets");
        }
    }

    #[test]
    fn every_kind_prints_text_that_parses_back() {
        fn again<K: Kind>(s: &str) {
            let v: Val<K> = s.parse().unwrap();
            assert_eq!(v.to_string().parse::<Val<K>>().unwrap(), v, "{s}");
        }
        again::<Timeout>("1m 30s");
        again::<Grace>("0s");
        again::<Count<7>>("7");
        again::<Listen>("vsock://-1:1025");
        again::<Dial>("");
        again::<Port>("5");
        again::<Mode>("0o640");
        again::<Uid>("0");
        again::<Gid>("7");
        again::<Dir>("/run");
        again::<Switch>("on");
        again::<Log>("info,a=debug");
        again::<Allow>("[::1]:80-90");
        again::<Forward>("a:/r.sock:0600:1:2");
        again::<Forward>("a:tcp:0.0.0.0:80");
    }
}
