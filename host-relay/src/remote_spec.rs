//! Remote forward specs from the command line: `-R SPEC` (ssh's `-R`, as the
//! guest sees it), `--forward [ID=]GUEST_PATH:HOST_PATH` and nerdbox's
//! `--uds-mount CONTAINER_ID:HOST_PATH:DESTINATION`. Each is a listener in the
//! guest ([`ListenAt`]: a socket file or a TCP address, the place type both
//! daemons use) and the host socket its clients reach ([`HostTarget`]: a Unix
//! socket or a TCP address).
//!
//! | `-R` spec | listens in the guest | reaches on the host |
//! |---|---|---|
//! | `[GUEST_BIND:]GUEST_PORT:HOST:HOSTPORT` | GUEST_BIND:GUEST_PORT | HOST:HOSTPORT |
//! | `[GUEST_BIND:]GUEST_PORT:/HOST/PATH` | GUEST_BIND:GUEST_PORT | the Unix socket |
//! | `/GUEST/PATH:HOST:HOSTPORT` | the socket file | HOST:HOSTPORT |
//! | `/GUEST/PATH:/HOST/PATH` | the socket file | the Unix socket (as `--forward`) |
//!
//! GUEST_BIND is `127.0.0.1` unless given: an IP (`[::1]` for IPv6),
//! `localhost` or `*` (0.0.0.0). GUEST_PORT `0` lets the agent pick a free
//! port. HOST is an IP or a name resolved on the host (`localhost`: `::1`,
//! then `127.0.0.1`; see `sockfwd_proto::tcp_dial`); a host socket path starts
//! with `/` or `.`. Every form takes an `ID=` prefix, as `--forward` does.
//!
//! Parsing is pure (no file system access, no name resolution): the target is
//! dialed per connection, and the guest side only means something inside the
//! guest.
//!
//! Forward IDs, stable across restarts (an agent that still has a forward's
//! listener takes the same ID at the same place as a no-op):
//! - `--uds-mount`: the lowercase hex SHA-256 of `CONTAINER_ID:DESTINATION`, exactly
//!   as nerdbox's host derives it, with the guest listener at `GUEST_DIR/<id>.sock`;
//! - `--forward` and `-R` without `ID=`: the first 16 hex digits (64 bits) of the
//!   SHA-256 of where it listens: the guest path, or `tcp:` and the TCP address;
//!   for guest port 0, which names no one listener, `tcp:ADDRESS:TARGET`;
//! - `ID=...`: the ID as given, held to the shared forward-ID rule
//!   ([`sockfwd_proto::forward_id`]).
//!
//! A `--forward` or `-R` spec may end with options
//! ([`sockfwd_proto::spec_options`]: `,idle-timeout=DUR`); they are split off
//! before the spec is read, so they take no part in its ID. A `--uds-mount`
//! takes none (nerdbox's form).

use sha2::{Digest, Sha256};
use sockfwd_proto::forward_id::{self, ForwardIdError};
use sockfwd_proto::spec_options::{self, OptionError, SpecOptions};
use sockfwd_proto::target::{split_host_port, Target, TargetParseError};
use sockfwd_proto::transport::{ListenAt, SUN_PATH_MAX};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use thiserror::Error;

/// Hex digits of SHA-256 kept in an ID derived from a guest path.
pub const DERIVED_ID_HEX: usize = 16;
/// The guest directory nerdbox places its listeners in.
pub const DEFAULT_GUEST_DIR: &str = "/run/socketfwd";
/// The guest address a TCP `-R` spec listens on without a GUEST_BIND.
pub const DEFAULT_GUEST_BIND: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// What a remote forward's connections reach, on the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostTarget {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP address: `host` is an IP (IPv6 without brackets) or a name
    /// resolved on the host at each connection.
    Tcp {
        /// The IP or name.
        host: String,
        /// The port, 1 to 65535.
        port: u16,
    },
}

impl fmt::Display for HostTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostTarget::Unix(p) => write!(f, "{}", p.display()),
            HostTarget::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            HostTarget::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// One forward: a listener in the guest and the host socket its connections reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The ID the agent reports in `ConnectRequest.forward_id`; resolved only here.
    pub id: String,
    /// Where the agent listens, inside the guest: a socket file (an absolute
    /// UTF-8 path, as the wire carries it) or a TCP address (port 0: the agent
    /// picks one; sent only to an agent that lists the `tcp-listen` extension).
    pub listen: ListenAt,
    /// What each guest connection is spliced to.
    pub target: HostTarget,
    /// Listener mode in the guest (extension, socket files only; `None`: the agent's default).
    pub mode: Option<u32>,
    /// Listener owner in the guest (extension, socket files only; `None`: the agent's default).
    pub uid: Option<u32>,
    /// Listener group in the guest (extension, socket files only; `None`: the agent's default).
    pub gid: Option<u32>,
    /// The spec's options (its connections' idle timeout).
    pub options: SpecOptions,
}

/// What is wrong with one spec (the caller names the flag and the spec).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    /// No `:` between the two paths.
    #[error("expected [ID=]GUEST_PATH:HOST_PATH")]
    ForwardShape,
    /// Not three `:`-separated parts.
    #[error("expected CONTAINER_ID:HOST_PATH:DESTINATION")]
    UdsMountShape,
    /// Not one of the `-R` forms.
    #[error(
        "expected [ID=][GUEST_BIND:]GUEST_PORT:HOST:HOSTPORT, [GUEST_BIND:]GUEST_PORT:/HOST/PATH, \
         /GUEST/PATH:HOST:HOSTPORT or /GUEST/PATH:/HOST/PATH"
    )]
    RemoteShape,
    /// The `ID=` part breaks the forward-ID rule.
    #[error(transparent)]
    BadId(#[from] ForwardIdError),
    /// A required part is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// The guest path (or guest directory) is relative.
    #[error("guest path {0:?} must be absolute")]
    RelativeGuestPath(String),
    /// A hand-built forward's guest path is not UTF-8 (the wire carries text).
    #[error("guest path {0:?} is not UTF-8")]
    GuestPathNotUtf8(PathBuf),
    /// The guest path does not fit a Unix socket address.
    #[error("guest path {path:?} is {len} bytes; a Unix socket path holds at most {SUN_PATH_MAX}")]
    GuestPathTooLong {
        /// The offending path.
        path: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A path holds a NUL byte, which no socket address can.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// GUEST_BIND is not an IP, `localhost` or `*`.
    #[error("guest bind address {0:?} must be an IP address ([::1] for IPv6), localhost or *")]
    GuestBind(String),
    /// GUEST_PORT is not 0 to 65535.
    #[error("guest port {0:?} is not a number from 0 to 65535")]
    GuestPort(String),
    /// HOST:HOSTPORT breaks the target grammar.
    #[error("host target {text:?}")]
    HostTarget {
        /// The target as written.
        text: String,
        /// What is wrong with it.
        #[source]
        source: TargetParseError,
    },
    /// A mode or owner on a TCP listener, which only a socket file has.
    #[error("mode, uid and gid apply to guest socket files, not to TCP listeners")]
    OwnerOnTcp,
    /// An option at the end is malformed.
    #[error(transparent)]
    Options(#[from] OptionError),
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// nerdbox's forward ID: lowercase hex SHA-256 of `CONTAINER_ID:DESTINATION`.
pub fn nerdbox_forward_id(container_id: &str, destination: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update(b":");
    h.update(destination.as_bytes());
    hex(&h.finalize())
}

/// The ID of a `--forward` without `ID=`: the first [`DERIVED_ID_HEX`] hex digits
/// of the SHA-256 of the guest path.
pub fn derived_forward_id(guest_path: &str) -> String {
    derived_id(guest_path.as_bytes())
}

fn derived_id(text: &[u8]) -> String {
    let mut id = hex(&Sha256::digest(text));
    id.truncate(DERIVED_ID_HEX);
    id
}

/// The ID of a spec without `ID=` (see the module docs): derived from where
/// it listens, and for guest port 0 from its target too.
pub fn derived_remote_id(listen: &ListenAt, target: &HostTarget) -> String {
    match listen {
        ListenAt::Unix(path) => derived_id(path.as_os_str().as_bytes()),
        ListenAt::Tcp(addr) if addr.port() == 0 => {
            derived_forward_id(&format!("tcp:{addr}:{target}"))
        }
        ListenAt::Tcp(addr) => derived_forward_id(&format!("tcp:{addr}")),
    }
}

/// Checks a guest socket path: absolute, no NUL, fits `sun_path`.
pub fn check_guest_path(path: &str) -> Result<(), SpecError> {
    if path.is_empty() {
        return Err(SpecError::Empty("guest path"));
    }
    if path.contains('\0') {
        return Err(SpecError::Nul("guest path"));
    }
    if !path.starts_with('/') {
        return Err(SpecError::RelativeGuestPath(path.to_owned()));
    }
    if path.len() > SUN_PATH_MAX {
        return Err(SpecError::GuestPathTooLong {
            path: path.to_owned(),
            len: path.len(),
        });
    }
    Ok(())
}

fn check_host_path(path: &str) -> Result<PathBuf, SpecError> {
    if path.is_empty() {
        return Err(SpecError::Empty("host path"));
    }
    if path.contains('\0') {
        return Err(SpecError::Nul("host path"));
    }
    Ok(PathBuf::from(path))
}

/// Splits an optional `ID=` off a spec. A guest path is absolute and a bind
/// address is an IP or a word without `=`, so a spec that does not start with
/// `/` and has an `=` before its first `:` carries an ID.
fn split_id(spec: &str) -> Result<(Option<&str>, &str), SpecError> {
    match spec.split_once('=') {
        Some((id, rest)) if !spec.starts_with('/') && !id.contains(':') => {
            forward_id::check(id)?;
            Ok((Some(id), rest))
        }
        _ => Ok((None, spec)),
    }
}

/// The first `:`-separated part of `s` (a bracketed IPv6 address counts as
/// one) and the rest after its `:`.
fn next_part(s: &str) -> Result<(&str, &str), SpecError> {
    let end = if s.starts_with('[') {
        s.find("]:").ok_or(SpecError::RemoteShape)? + 1
    } else {
        s.find(':').ok_or(SpecError::RemoteShape)?
    };
    Ok((&s[..end], &s[end + 1..]))
}

/// GUEST_BIND: an IP (IPv6 in brackets), `localhost` or `*`.
fn guest_bind(s: &str) -> Result<IpAddr, SpecError> {
    let bad = || SpecError::GuestBind(s.to_owned());
    if let Some(v6) = s.strip_prefix('[') {
        let v6 = v6.strip_suffix(']').ok_or_else(bad)?;
        return match v6.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V6(_)) => Ok(ip),
            _ => Err(bad()),
        };
    }
    match s {
        "localhost" => Ok(DEFAULT_GUEST_BIND),
        "*" => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        _ => match s.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => Ok(ip),
            _ => Err(bad()),
        },
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// GUEST_PORT: 0 to 65535 in at most five digits.
fn guest_port(s: &str) -> Result<u16, SpecError> {
    s.parse::<u16>()
        .ok()
        .filter(|_| is_digits(s) && s.len() <= 5)
        .ok_or_else(|| SpecError::GuestPort(s.to_owned()))
}

/// HOST:HOSTPORT or a host socket path (starting with `/` or `.`).
fn host_target(s: &str) -> Result<HostTarget, SpecError> {
    if s.starts_with('/') || s.starts_with('.') {
        return Ok(HostTarget::Unix(check_host_path(s)?));
    }
    if s.is_empty() {
        return Err(SpecError::Empty("host target"));
    }
    let bad = |source| SpecError::HostTarget {
        text: s.to_owned(),
        source,
    };
    let (host, port) = split_host_port(s).map_err(|_| SpecError::RemoteShape)?;
    match Target::tcp(host, port).map_err(bad)? {
        Target::Ip(addr) => Ok(HostTarget::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        }),
        Target::Name { host, port } => Ok(HostTarget::Tcp { host, port }),
        Target::Unix(_) => Err(SpecError::RemoteShape),
    }
}

impl Forward {
    /// A forward with the agent's default mode and owner, and no options.
    pub fn new(id: String, listen: ListenAt, target: HostTarget) -> Forward {
        Forward {
            id,
            listen,
            target,
            mode: None,
            uid: None,
            gid: None,
            options: SpecOptions::default(),
        }
    }

    /// Parses `[ID=]GUEST_PATH:HOST_PATH`.
    ///
    /// The paths are split at the first `:` after the ID: a guest path cannot
    /// contain `:`, a host path can.
    pub fn from_spec(spec: &str) -> Result<Forward, SpecError> {
        let (spec, options) = spec_options::split(spec)?;
        let (id, paths) = split_id(spec)?;
        let (guest, host) = paths.split_once(':').ok_or(SpecError::ForwardShape)?;
        check_guest_path(guest)?;
        let host_path = check_host_path(host)?;
        let mut forward = Forward::new(
            id.map_or_else(|| derived_forward_id(guest), str::to_owned),
            ListenAt::Unix(guest.into()),
            HostTarget::Unix(host_path),
        );
        forward.options = options;
        Ok(forward)
    }

    /// Parses an `-R` spec (see the module docs).
    pub fn from_remote_spec(spec: &str) -> Result<Forward, SpecError> {
        let (spec, options) = spec_options::split(spec)?;
        let (id, body) = split_id(spec)?;
        let (listen, target) = if body.starts_with('/') {
            let (guest, host) = body.split_once(':').ok_or(SpecError::RemoteShape)?;
            check_guest_path(guest)?;
            (ListenAt::Unix(guest.into()), host_target(host)?)
        } else {
            let (first, rest) = next_part(body)?;
            let (bind, port, rest) = if is_digits(first) {
                (DEFAULT_GUEST_BIND, first, rest)
            } else {
                let bind = guest_bind(first)?;
                let (port, rest) = next_part(rest)?;
                (bind, port, rest)
            };
            let addr = SocketAddr::new(bind, guest_port(port)?);
            (ListenAt::Tcp(addr), host_target(rest)?)
        };
        let id = id.map_or_else(|| derived_remote_id(&listen, &target), str::to_owned);
        let mut forward = Forward::new(id, listen, target);
        forward.options = options;
        Ok(forward)
    }

    /// Parses nerdbox's `CONTAINER_ID:HOST_PATH:DESTINATION`; the listener goes to
    /// `GUEST_DIR/<id>.sock`. The host path may itself contain `:` (the first and
    /// last `:` delimit it).
    pub fn from_uds_mount(spec: &str, guest_dir: &str) -> Result<Forward, SpecError> {
        let (container, rest) = spec.split_once(':').ok_or(SpecError::UdsMountShape)?;
        let (host, dest) = rest.rsplit_once(':').ok_or(SpecError::UdsMountShape)?;
        if container.is_empty() {
            return Err(SpecError::Empty("container ID"));
        }
        if dest.is_empty() {
            return Err(SpecError::Empty("destination"));
        }
        let host_path = check_host_path(host)?;
        let id = nerdbox_forward_id(container, dest);
        let guest_path = format!("{}/{id}.sock", guest_dir.trim_end_matches('/'));
        check_guest_path(&guest_path)?;
        Ok(Forward::new(
            id,
            ListenAt::Unix(guest_path.into()),
            HostTarget::Unix(host_path),
        ))
    }

    /// The forward as an `-R` spec would write it (without its ID):
    /// `LISTEN:TARGET` and its options, for messages and `status`.
    pub fn spec_text(&self) -> String {
        format!("{}:{}{}", self.listen, self.target, self.options.suffix())
    }

    /// Whether it listens on a guest TCP address (the `tcp-listen` extension).
    pub fn listens_on_tcp(&self) -> bool {
        matches!(self.listen, ListenAt::Tcp(_))
    }

    /// Checks a forward however it was built (a library caller may build one
    /// by hand): its ID, its guest path, its host path, and no mode or owner
    /// on a TCP listener.
    pub fn check(&self) -> Result<(), SpecError> {
        forward_id::check(&self.id)?;
        match &self.listen {
            ListenAt::Unix(path) => {
                // The wire carries the path as text.
                let text = path
                    .to_str()
                    .ok_or_else(|| SpecError::GuestPathNotUtf8(path.clone()))?;
                check_guest_path(text)?;
            }
            ListenAt::Tcp(_) if self.mode.is_some() || self.uid.is_some() || self.gid.is_some() => {
                return Err(SpecError::OwnerOnTcp)
            }
            ListenAt::Tcp(_) => {}
        }
        match &self.target {
            HostTarget::Unix(path) => {
                check_host_path(&path.to_string_lossy())?;
            }
            HostTarget::Tcp { host, .. } => {
                // What the spec grammar reads back from the target's text.
                let text = self.target.to_string();
                if host_target(&text)? != self.target {
                    return Err(SpecError::HostTarget {
                        text,
                        source: TargetParseError::Host(host.clone()),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Checks `--guest-dir`: absolute, no NUL.
pub fn check_guest_dir(dir: &str) -> Result<(), SpecError> {
    if dir.contains('\0') {
        return Err(SpecError::Nul("guest directory"));
    }
    if !dir.starts_with('/') {
        return Err(SpecError::RelativeGuestPath(dir.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(id: &str, guest: &str, host: &str) -> Forward {
        Forward::new(
            id.to_owned(),
            ListenAt::Unix(guest.into()),
            HostTarget::Unix(PathBuf::from(host)),
        )
    }

    fn tcp(host: &str, port: u16) -> HostTarget {
        HostTarget::Tcp {
            host: host.to_owned(),
            port,
        }
    }

    fn at(addr: &str) -> ListenAt {
        ListenAt::Tcp(addr.parse().unwrap())
    }

    #[test]
    fn nerdbox_id_is_hex_sha256_of_container_colon_destination() {
        // printf 'ctr1:/var/run/app.sock' | sha256sum
        assert_eq!(
            nerdbox_forward_id("ctr1", "/var/run/app.sock"),
            "76b5bc05b57910cdbf23567b806fde2ae3b3ec144f960a4185026e6c9a5f553b"
        );
    }

    #[test]
    fn derived_id_is_a_sha256_prefix_of_the_guest_path() {
        // printf '/guest/x.sock' | sha256sum
        assert_eq!(derived_forward_id("/guest/x.sock"), "d0276c36d5d9aa1e");
    }

    #[test]
    fn forward_specs() {
        let ok = [
            (
                "/guest/x.sock:/host/y.sock",
                fwd("d0276c36d5d9aa1e", "/guest/x.sock", "/host/y.sock"),
            ),
            (
                "db=/guest/x.sock:/host/y.sock",
                fwd("db", "/guest/x.sock", "/host/y.sock"),
            ),
            // The host path may hold ':' and '='; the guest path may hold '='.
            (
                "a.b_c-1=/g.sock:/h:1=2.sock",
                fwd("a.b_c-1", "/g.sock", "/h:1=2.sock"),
            ),
            (
                "/g=1.sock:rel/h.sock",
                fwd(&derived_forward_id("/g=1.sock"), "/g=1.sock", "rel/h.sock"),
            ),
        ];
        for (spec, want) in ok {
            assert_eq!(Forward::from_spec(spec), Ok(want), "{spec}");
        }
        let long = format!("/{}:/h", "a".repeat(SUN_PATH_MAX));
        let bad = [
            ("", SpecError::ForwardShape),
            ("/guest/x.sock", SpecError::ForwardShape),
            ("id=/g", SpecError::ForwardShape),
            (
                "guest/x.sock:/h",
                SpecError::RelativeGuestPath("guest/x.sock".into()),
            ),
            (":/h", SpecError::Empty("guest path")),
            ("/g:", SpecError::Empty("host path")),
            ("=/g:/h", SpecError::BadId(ForwardIdError::Empty)),
            (
                "a b=/g:/h",
                SpecError::BadId(ForwardIdError::BadChar { at: 1, ch: ' ' }),
            ),
            ("id=g:/h", SpecError::RelativeGuestPath("g".into())),
            ("/g\0:/h", SpecError::Nul("guest path")),
            ("/g:/h\0", SpecError::Nul("host path")),
        ];
        for (spec, want) in bad {
            assert_eq!(Forward::from_spec(spec), Err(want), "{spec:?}");
        }
        assert!(matches!(
            Forward::from_spec(&long),
            Err(SpecError::GuestPathTooLong { len: 108, .. })
        ));
        let too_long_id = format!("{}=/g:/h", "i".repeat(forward_id::MAX_LEN + 1));
        assert!(matches!(
            Forward::from_spec(&too_long_id),
            Err(SpecError::BadId(_))
        ));
    }

    #[test]
    fn uds_mount_specs() {
        let id = "cea9fb51e984afb8a2dd57a9310f4c252b21fd1ebd5680bd391765f17e146f35";
        assert_eq!(
            Forward::from_uds_mount(
                "abc:/var/run/docker.sock:/run/docker.sock",
                "/run/socketfwd"
            ),
            Ok(fwd(
                id,
                &format!("/run/socketfwd/{id}.sock"),
                "/var/run/docker.sock"
            ))
        );
        // A trailing slash on the guest dir and a ':' in the host path.
        assert_eq!(
            Forward::from_uds_mount("abc:/h:x.sock:/run/docker.sock", "/g/")
                .map(|f| (f.listen, f.target)),
            Ok((
                ListenAt::Unix(format!("/g/{id}.sock").into()),
                HostTarget::Unix(PathBuf::from("/h:x.sock"))
            ))
        );
        let bad = [
            ("abc", SpecError::UdsMountShape),
            ("abc:/h", SpecError::UdsMountShape),
            (":/h:/d", SpecError::Empty("container ID")),
            ("c:/h:", SpecError::Empty("destination")),
            ("c::/d", SpecError::Empty("host path")),
        ];
        for (spec, want) in bad {
            assert_eq!(
                Forward::from_uds_mount(spec, "/run/socketfwd"),
                Err(want),
                "{spec}"
            );
        }
        assert!(matches!(
            Forward::from_uds_mount("c:/h:/d", &format!("/{}", "d".repeat(40))),
            Err(SpecError::GuestPathTooLong { .. })
        ));
    }

    #[test]
    fn guest_dir_must_be_absolute() {
        assert_eq!(check_guest_dir("/run/socketfwd"), Ok(()));
        assert_eq!(
            check_guest_dir("run"),
            Err(SpecError::RelativeGuestPath("run".into()))
        );
    }

    #[test]
    fn remote_specs_of_every_form() {
        let ok = [
            (
                "5432:localhost:5432",
                at("127.0.0.1:5432"),
                tcp("localhost", 5432),
            ),
            ("0:127.0.0.1:80", at("127.0.0.1:0"), tcp("127.0.0.1", 80)),
            ("[::1]:0:[::1]:5432", at("[::1]:0"), tcp("::1", 5432)),
            (
                "0.0.0.0:8080:db.internal:1",
                at("0.0.0.0:8080"),
                tcp("db.internal", 1),
            ),
            ("localhost:1:h:2", at("127.0.0.1:1"), tcp("h", 2)),
            ("*:1:h:2", at("0.0.0.0:1"), tcp("h", 2)),
            (
                "8080:/run/app.sock",
                at("127.0.0.1:8080"),
                HostTarget::Unix("/run/app.sock".into()),
            ),
            (
                "127.0.0.1:0:./rel:1.sock",
                at("127.0.0.1:0"),
                HostTarget::Unix("./rel:1.sock".into()),
            ),
            (
                "/run/pg.sock:127.0.0.1:5432",
                ListenAt::Unix("/run/pg.sock".into()),
                tcp("127.0.0.1", 5432),
            ),
            (
                "/g/x.sock:/h:y.sock",
                ListenAt::Unix("/g/x.sock".into()),
                HostTarget::Unix("/h:y.sock".into()),
            ),
        ];
        for (spec, listen, target) in ok {
            let f = Forward::from_remote_spec(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!((&f.listen, &f.target), (&listen, &target), "{spec}");
            assert_eq!(f.id, derived_remote_id(&listen, &target), "{spec}");
            // The canonical text parses back to the same forward.
            assert_eq!(
                Forward::from_remote_spec(&f.spec_text()),
                Ok(f.clone()),
                "{spec}"
            );
        }
        let f = Forward::from_remote_spec("db=0:localhost:5432").unwrap();
        assert_eq!(
            (f.id.as_str(), f.spec_text()),
            ("db", "127.0.0.1:0:localhost:5432".into())
        );
        assert_eq!(f.target.to_string(), "localhost:5432");
        let f = Forward::from_remote_spec("[::1]:0:[::1]:5").unwrap();
        assert_eq!(f.spec_text(), "[::1]:0:[::1]:5");
    }

    #[test]
    fn remote_ids_follow_where_the_forward_listens() {
        // As --forward for a socket file, whatever the target.
        assert_eq!(
            Forward::from_remote_spec("/guest/x.sock:/host/y.sock"),
            Forward::from_spec("/guest/x.sock:/host/y.sock")
        );
        let a = Forward::from_remote_spec("5432:localhost:5432").unwrap();
        let b = Forward::from_remote_spec("127.0.0.1:5432:/run/pg.sock").unwrap();
        assert_eq!(a.id, b.id, "one TCP address, one ID");
        assert_eq!(a.id, derived_forward_id("tcp:127.0.0.1:5432"));
        // Port 0 names no one listener: two of them differ by their targets.
        let c = Forward::from_remote_spec("0:localhost:5432").unwrap();
        let d = Forward::from_remote_spec("0:localhost:6379").unwrap();
        assert_ne!(c.id, d.id);
        assert_eq!(c.id, derived_forward_id("tcp:127.0.0.1:0:localhost:5432"));
    }

    #[test]
    fn bad_remote_specs_say_why() {
        use SpecError as E;
        let bad = [
            ("", E::RemoteShape),
            ("5432", E::RemoteShape),
            ("5432:localhost", E::RemoteShape),
            ("/g.sock", E::RemoteShape),
            ("/g.sock:h", E::RemoteShape),
            ("[::1]5432:h:1", E::RemoteShape),
            ("x:1:h:2", E::GuestBind("x".into())),
            ("::1:0:h:2", E::GuestBind("".into())),
            ("[127.0.0.1]:0:h:2", E::GuestBind("[127.0.0.1]".into())),
            ("[::1:0:h:2", E::RemoteShape),
            ("65536:h:1", E::GuestPort("65536".into())),
            ("1.2.3.4:-1:h:1", E::GuestPort("-1".into())),
            ("1.2.3.4:000001:h:1", E::GuestPort("000001".into())),
            ("0:", E::Empty("host target")),
            ("0:/h\0", E::Nul("host path")),
            ("rel.sock:/h", E::GuestBind("rel.sock".into())),
            ("=0:h:1", E::BadId(ForwardIdError::Empty)),
        ];
        for (spec, want) in bad {
            assert_eq!(Forward::from_remote_spec(spec), Err(want), "{spec:?}");
        }
        let err = Forward::from_remote_spec("0:h:0").unwrap_err();
        assert_eq!(err.to_string(), r#"host target "h:0""#);
        assert!(matches!(
            err,
            E::HostTarget {
                source: TargetParseError::Port(_),
                ..
            }
        ));
        assert!(matches!(
            Forward::from_remote_spec("0:a b:1"),
            Err(E::HostTarget {
                source: TargetParseError::Host(_),
                ..
            })
        ));
        assert!(matches!(
            Forward::from_remote_spec("/g:[::1:1"),
            Err(E::RemoteShape | E::HostTarget { .. })
        ));
    }

    #[test]
    fn a_hand_built_forward_is_checked() {
        let mut f = Forward::from_remote_spec("0:localhost:1").unwrap();
        assert_eq!(f.check(), Ok(()));
        f.mode = Some(0o600);
        assert_eq!(f.check(), Err(SpecError::OwnerOnTcp));
        let mut f = Forward::from_remote_spec("0:localhost:1").unwrap();
        f.target = tcp("a b", 1);
        assert!(matches!(f.check(), Err(SpecError::HostTarget { .. })));
        f.target = tcp("::1", 1);
        assert_eq!(f.check(), Ok(()));
        f.id = "a b".into();
        assert!(matches!(f.check(), Err(SpecError::BadId(_))));
        let mut f = Forward::from_spec("/g/a.sock:/h").unwrap();
        let not_utf8 = PathBuf::from(std::ffi::OsStr::from_bytes(b"/g/\xff.sock"));
        f.listen = ListenAt::Unix(not_utf8.clone());
        assert_eq!(f.check(), Err(SpecError::GuestPathNotUtf8(not_utf8)));
        f.listen = ListenAt::Unix("g/a.sock".into());
        assert_eq!(
            f.check(),
            Err(SpecError::RelativeGuestPath("g/a.sock".into()))
        );
    }

    #[test]
    fn a_forward_or_remote_spec_may_end_with_an_idle_timeout() {
        let two_minutes = Some(std::time::Duration::from_secs(120));
        let f = Forward::from_spec("db=/run/db.sock:/h/a,b.sock,idle-timeout=2m").unwrap();
        assert_eq!(
            (f.id.as_str(), &f.listen),
            ("db", &ListenAt::Unix("/run/db.sock".into()))
        );
        assert_eq!(f.target, HostTarget::Unix(PathBuf::from("/h/a,b.sock")));
        assert_eq!(f.options.idle_timeout(None), two_minutes);
        let plain = Forward::from_spec("/run/db.sock:/h/a,b.sock").unwrap();
        assert_eq!(plain.target, HostTarget::Unix(PathBuf::from("/h/a,b.sock")));
        assert_eq!(plain.options, SpecOptions::default());
        assert!(matches!(
            Forward::from_spec("/g:/h,idle-timeout=1x"),
            Err(SpecError::Options(_))
        ));
        // -R: every form, and the options take no part in the ID.
        let r = Forward::from_remote_spec("5432:localhost:5432,idle-timeout=2m").unwrap();
        assert_eq!(
            (&r.listen, &r.target),
            (&at("127.0.0.1:5432"), &tcp("localhost", 5432))
        );
        assert_eq!(r.options.idle_timeout(None), two_minutes);
        assert_eq!(r.id, derived_forward_id("tcp:127.0.0.1:5432"));
        assert_eq!(
            r.spec_text(),
            "127.0.0.1:5432:localhost:5432,idle-timeout=2m"
        );
        assert_eq!(Forward::from_remote_spec(&r.spec_text()), Ok(r));
        let off = Forward::from_remote_spec("/g.sock:/h,c.sock,idle-timeout=0").unwrap();
        assert_eq!(off.target, HostTarget::Unix(PathBuf::from("/h,c.sock")));
        assert_eq!(off.options.idle_timeout(two_minutes), None);
        assert!(matches!(
            Forward::from_remote_spec("0:h:1,idle-timeout=soon"),
            Err(SpecError::Options(_))
        ));
    }
}
