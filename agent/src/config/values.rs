//! The kinds of value a key takes. A [`Kind`] reads a value from text the
//! same way in every layer, checks it once, says what it expected when it
//! cannot, and shows it as a TOML value that reads back. From the file an
//! integer or a boolean reads as its text (`max_pending = 7` and `"7"` agree),
//! except that an integer mode is the mode itself (`socket_mode = 0o660`).

use crate::config::allow::{AllowTarget, AllowTargetError};
use sockfwd_proto::duration::{self, DurationError};
use sockfwd_proto::forward_id::ForwardIdError;
use sockfwd_proto::transport::{Address, AddressError, VMADDR_CID_ANY, VMADDR_CID_HOST};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use toml::Value as Toml;

/// The vsock port of the control channel (wire contract).
pub const CONTROL_PORT: u32 = 1025;

/// What a value should have been; the layer adds the key, itself and the value.
#[derive(Debug, Error)]
pub enum ValueError {
    /// The text is not of the kind's form.
    #[error("expected {0}")]
    Expected(&'static str),
    /// A whole number out of range; a lowest of 0 turns the thing it bounds off.
    #[error("expected a whole number from {lowest} to {1}",
        lowest = if *.0 == 0 { "0 (none)" } else { "1" })]
    Range(usize, usize),
    /// An address with a known scheme, malformed after it (the reason says how).
    #[error("{0}")]
    Address(&'static str),
    /// A log filter tracing does not take.
    #[error("expected {LOG} ({0})")]
    Log(tracing_subscriber::filter::ParseError),
    /// A boot-time forward's field, and what is wrong with it.
    #[error("{0}: {1}")]
    Field(&'static str, Box<ValueError>),
    /// A forward ID against the forward-ID rule.
    #[error(transparent)]
    ForwardId(#[from] ForwardIdError),
    /// A `[[forward]]` table that does not read (serde's words, or which
    /// fields do not go together).
    #[error("{0}")]
    Table(String),
    /// An `--allow-target` or `--allow-listen` pattern that does not parse.
    #[error(transparent)]
    AllowTarget(#[from] AllowTargetError),
}

/// One kind of value; see the module docs.
pub trait Kind: 'static {
    /// What a value reads as.
    type Value: Clone + Send + Sync + 'static;
    /// A layer's values add up to a list (else the last one counts).
    const LIST: bool = false;
    /// What `--help` calls a value (`DUR`).
    const NAME: &'static str;
    /// A value of this kind that no default has (the shipped file's examples).
    const SAMPLE: &'static str;
    /// Reads the text any layer gives.
    fn parse(text: &str) -> Result<Self::Value, ValueError>;
    /// The value as the file writes it.
    fn show(value: &Self::Value) -> Toml;
    /// Reads a value of the file ([`read_text`] unless the kind says otherwise).
    fn read(value: Toml) -> Result<Self::Value, ValueError> {
        read_text::<Self>(value)
    }
}

/// A TOML value as text: a string, or TOML's spelling of a number or a
/// boolean; a list or a table is no single value.
pub fn read_text<K: Kind + ?Sized>(value: Toml) -> Result<K::Value, ValueError> {
    match value {
        Toml::String(s) => K::parse(&s),
        Toml::Array(_) | Toml::Table(_) => Err(ValueError::Expected(SINGLE)),
        other => K::parse(&other.to_string()),
    }
}

/// Kinds that are a value type, a parser and a printer (and a reader of the
/// file's values, if not [`read_text`]): `Name(NAME, SAMPLE [, list])`.
macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident($help:literal, $sample:literal $(, $list:ident)?):
        $value:ty = $parse:expr, $show:expr $(, $read:expr)?;)*) => {$(
        $(#[$doc])*
        pub enum $name {}

        impl Kind for $name {
            type Value = $value;
            const LIST: bool = !stringify!($($list)?).is_empty();
            const NAME: &'static str = $help;
            const SAMPLE: &'static str = $sample;
            fn parse(s: &str) -> Result<$value, ValueError> {
                ($parse)(s)
            }
            fn show(v: &$value) -> Toml {
                ($show)(v)
            }
            $(fn read(value: Toml) -> Result<$value, ValueError> {
                ($read)(value)
            })?
        }
    )*};
}

kinds! {
    /// A deadline: humantime's `500ms`, `10s`, `1m`; above zero, at most a day.
    Timeout("DUR", "7s"): Duration = |s| duration(s, true), humane;
    /// A grace period: like [`Timeout`], and zero allowed.
    Grace("DUR", "7s"): Duration = |s| duration(s, false), humane;
    /// An address the agent can listen on: `unix://PATH` or `vsock://CID:PORT`.
    Listen("ADDR", "unix:///s.sock"): Address = listen, text;
    /// A vsock port, the shorthand for `vsock://-1:PORT`.
    Port("PORT", "5000"): Address = port, text;
    /// The control channel's listener (`control`).
    ControlListen("ADDR", "unix:///c.sock"): ControlMode =
        |s| listen(s).map(ControlMode::Listen), control;
    /// The host to dial (`control_dial`); empty or `true` (a bare switch) is
    /// `vsock://2:1025`.
    ControlDial("ADDR", "unix:///c.sock"): ControlMode = |s| match s {
        "" | "true" => Ok(ControlMode::Dial(ControlMode::default_dial())),
        s => address(s).map(ControlMode::Dial),
    }, control;
    /// The control channel's port (`control_port`), `vsock://-1:PORT`.
    ControlPort("PORT", "5000"): ControlMode = |s| port(s).map(ControlMode::Listen), control;
    /// A numeric user ID (no name lookup: a guest may have no user database
    /// when the agent starts).
    Uid("UID", "1000"): u32 = |s: &str| s.parse().map_err(|_| ValueError::Expected(UID)), int;
    /// A numeric group ID.
    Gid("GID", "1000"): u32 = |s: &str| s.parse().map_err(|_| ValueError::Expected(GID)), int;
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`); empty (a bare
    /// switch) is true.
    Switch("BOOL", "true"): bool = |s| match s {
        "" | "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ValueError::Expected("true or false")),
    }, |b: &bool| Toml::Boolean(*b);
    /// A tracing filter, as `RUST_LOG` takes it.
    Log("FILTER", "debug"): String = |s: &str| match tracing_subscriber::EnvFilter::builder().parse(s) {
        _ if s.trim().is_empty() => Err(ValueError::Expected(LOG)),
        Ok(_) => Ok(s.to_owned()),
        Err(e) => Err(ValueError::Log(e)),
    }, text;
    /// An absolute directory without `..`, as allowed directories must be;
    /// repeatable.
    Dir("DIR", "/run", list): PathBuf = |s: &str| {
        let path = Path::new(s);
        match path.is_absolute() && !path.components().any(|c| c == Component::ParentDir) {
            true => Ok(path.to_path_buf()),
            false => Err(ValueError::Expected("an absolute path without '..'")),
        }
    }, |p: &PathBuf| Toml::String(p.display().to_string());
    /// An `--allow-target` or `--allow-listen` pattern, repeatable.
    Allow("SPEC", "*:80", list): AllowTarget = |s: &str| Ok(s.parse::<AllowTarget>()?), text;
    /// An octal file mode: `0666`, `666` or `0o666`; from TOML also an integer.
    Mode("OCTAL", "0600"): u32 = |s: &str| {
        mode(u32::from_str_radix(s.strip_prefix("0o").unwrap_or(s), 8).ok())
    }, |m: &u32| Toml::String(format!("{m:04o}")), |value| match value {
        Toml::Integer(i) => mode(u32::try_from(i).ok()),
        other => read_text::<Mode>(other),
    };
}

/// How the control channel is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMode {
    /// Listen on the address; each connection is one ttrpc client (the host).
    Listen(Address),
    /// Dial the host and serve ttrpc on that connection, redialing when it
    /// drops (nerdbox's topology).
    Dial(Address),
}

impl ControlMode {
    /// The default dialing form: `vsock://2:1025`.
    pub fn default_dial() -> Address {
        let (cid, port) = (VMADDR_CID_HOST, CONTROL_PORT);
        Address::Vsock { cid, port }
    }
}

impl std::fmt::Display for ControlMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlMode::Listen(a) => write!(f, "listen {a}"),
            ControlMode::Dial(a) => write!(f, "dial {a}"),
        }
    }
}

/// A whole number from `MIN` (0 or 1) to `MAX`; see [`Count`] and [`Cap`].
pub enum Whole<const MIN: usize, const MAX: usize> {}
/// A whole number from 1 to `MAX`.
pub type Count<const MAX: usize> = Whole<1, MAX>;
/// A whole number from 0 to `MAX`, where 0 turns the thing it bounds off.
pub type Cap<const MAX: usize> = Whole<0, MAX>;

impl<const MIN: usize, const MAX: usize> Kind for Whole<MIN, MAX> {
    type Value = usize;
    const NAME: &'static str = "N";
    const SAMPLE: &'static str = "7";
    fn parse(s: &str) -> Result<usize, ValueError> {
        match s.parse::<usize>() {
            Ok(n) if (MIN..=MAX).contains(&n) => Ok(n),
            _ => Err(ValueError::Range(MIN, MAX)),
        }
    }
    fn show(n: &usize) -> Toml {
        Toml::Integer(i64::try_from(*n).unwrap_or(i64::MAX))
    }
}

const DURATION: &str = "a duration like 500ms or 10s";
const LISTEN: &str = "unix://PATH or vsock://CID:PORT";
const HYBRID: &str = "unix://PATH or vsock://CID:PORT; hvsock:// is for dialing from the host";
const UID: &str = "a numeric user ID from 0 to 4294967295";
const GID: &str = "a numeric group ID from 0 to 4294967295";
const LOG: &str = "a tracing filter like info or info,sockfwd_agent=debug";
const MODE: &str = "an octal mode like 0660, at most 07777";
const SINGLE: &str = "a single value, not a list or a table";

/// A duration within proto's one cap (a day), above zero if `positive`.
fn duration(s: &str, positive: bool) -> Result<Duration, ValueError> {
    let d = humantime::parse_duration(s).map_err(|_| ValueError::Expected(DURATION))?;
    Err(ValueError::Expected(
        match duration::check(s, d, positive) {
            Ok(()) => return Ok(d),
            Err(DurationError::Zero { .. }) => "a duration like 500ms or 10s, greater than zero",
            Err(DurationError::TooLong { .. }) => "a duration like 500ms or 10s, at most 24h",
        },
    ))
}

fn humane(d: &Duration) -> Toml {
    Toml::String(humantime::format_duration(*d).to_string())
}

fn text<T: std::fmt::Display>(v: &T) -> Toml {
    Toml::String(v.to_string())
}

fn control(c: &ControlMode) -> Toml {
    let (ControlMode::Listen(a) | ControlMode::Dial(a)) = c;
    text(a)
}

fn int(v: &u32) -> Toml {
    Toml::Integer(i64::from(*v))
}

fn mode(m: Option<u32>) -> Result<u32, ValueError> {
    m.filter(|m| *m <= 0o7777).ok_or(ValueError::Expected(MODE))
}

fn address(s: &str) -> Result<Address, ValueError> {
    s.parse().map_err(|e| match e {
        AddressError::Scheme(_) => ValueError::Expected(LISTEN),
        AddressError::Malformed { reason, .. } => ValueError::Address(reason),
    })
}

fn listen(s: &str) -> Result<Address, ValueError> {
    match address(s)? {
        Address::Hybrid { .. } => Err(ValueError::Expected(HYBRID)),
        a => Ok(a),
    }
}

fn port(s: &str) -> Result<Address, ValueError> {
    let port = s.parse();
    let port = port.map_err(|_| ValueError::Expected("a port number from 0 to 4294967295"))?;
    Ok(any_cid(port))
}

/// `vsock://-1:PORT`: a vsock listener on any CID.
pub fn any_cid(port: u32) -> Address {
    let cid = VMADDR_CID_ANY;
    Address::Vsock { cid, port }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_shows_a_value_that_reads_back() {
        fn again<K: Kind>(s: &str)
        where
            K::Value: PartialEq + std::fmt::Debug,
        {
            let v = K::parse(s).unwrap();
            assert_eq!(K::read(K::show(&v)).unwrap(), v, "{s}");
            assert!(K::parse(K::SAMPLE).is_ok(), "{}", K::SAMPLE);
        }
        again::<Timeout>("1m 30s");
        again::<Grace>("0s");
        again::<Count<7>>("7");
        again::<Cap<7>>("0");
        assert!(matches!(Cap::<7>::parse("8"), Err(ValueError::Range(0, 7))));
        again::<Listen>("vsock://-1:1025");
        again::<ControlListen>("vsock://-1:1025");
        again::<ControlDial>("");
        again::<Mode>("0o640");
        again::<Uid>("0");
        again::<Gid>("7");
        again::<Dir>("/run");
        again::<Switch>("on");
        again::<Log>("info,a=debug");
        again::<Allow>("[::1]:80-90");
        assert!(Port::parse(Port::SAMPLE).is_ok() && ControlPort::parse("5").is_ok());
    }

    #[test]
    fn ranges_say_whether_zero_is_allowed() {
        let words = |e: ValueError| e.to_string();
        assert_eq!(
            words(Count::<9>::parse("0").unwrap_err()),
            "expected a whole number from 1 to 9"
        );
        assert_eq!(
            words(Cap::<9>::parse("10").unwrap_err()),
            "expected a whole number from 0 (none) to 9"
        );
    }
}
