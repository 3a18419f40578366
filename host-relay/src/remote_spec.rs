//! Remote forward specs from the command line: `--forward [ID=]GUEST_PATH:HOST_PATH`
//! and nerdbox's `--uds-mount CONTAINER_ID:HOST_PATH:DESTINATION`. Each is a
//! listener in the guest and the host socket (its target) its clients reach.
//!
//! Parsing is pure (no file system access): the host path is dialed per connection,
//! and the guest path only means something inside the guest.
//!
//! Forward IDs:
//! - `--uds-mount`: the lowercase hex SHA-256 of `CONTAINER_ID:DESTINATION`, exactly
//!   as nerdbox's host derives it, with the guest listener at `GUEST_DIR/<id>.sock`;
//! - `--forward` without `ID=`: the first 16 hex digits (64 bits) of the SHA-256 of
//!   the guest path, so the same flag always yields the same ID across restarts;
//! - `--forward ID=...`: the ID as given, held to the shared forward-ID rule
//!   ([`sockfwd_proto::forward_id`]).

use sha2::{Digest, Sha256};
use sockfwd_proto::forward_id::{self, ForwardIdError};
use sockfwd_proto::transport::SUN_PATH_MAX;
use std::fmt::Write as _;
use std::path::PathBuf;
use thiserror::Error;

/// Hex digits of SHA-256 kept in an ID derived from a guest path.
pub const DERIVED_ID_HEX: usize = 16;
/// The guest directory nerdbox places its listeners in.
pub const DEFAULT_GUEST_DIR: &str = "/run/socketfwd";

/// One forward: a listener in the guest and the host socket its connections reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The ID the agent reports in `ConnectRequest.forward_id`; resolved only here.
    pub id: String,
    /// Where the agent creates the listener, inside the guest.
    pub guest_path: String,
    /// The host Unix socket each guest connection is spliced to.
    pub host_path: PathBuf,
    /// Listener mode in the guest (extension; `None`: the agent's default).
    pub mode: Option<u32>,
    /// Listener owner in the guest (extension; `None`: the agent's default).
    pub uid: Option<u32>,
    /// Listener group in the guest (extension; `None`: the agent's default).
    pub gid: Option<u32>,
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
    /// The `ID=` part breaks the forward-ID rule.
    #[error(transparent)]
    BadId(#[from] ForwardIdError),
    /// A required part is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// The guest path (or guest directory) is relative.
    #[error("guest path {0:?} must be absolute")]
    RelativeGuestPath(String),
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
    let mut id = hex(&Sha256::digest(guest_path.as_bytes()));
    id.truncate(DERIVED_ID_HEX);
    id
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

impl Forward {
    /// Parses `[ID=]GUEST_PATH:HOST_PATH`.
    ///
    /// The guest path is absolute, so a spec that does not start with `/` and has
    /// an `=` before its first `:` carries an ID. The paths are split at the first
    /// `:` after the ID: a guest path cannot contain `:`, a host path can.
    pub fn from_spec(spec: &str) -> Result<Forward, SpecError> {
        let (id, paths) = match spec.split_once('=') {
            Some((id, rest)) if !spec.starts_with('/') && !id.contains(':') => {
                forward_id::check(id)?;
                (Some(id), rest)
            }
            _ => (None, spec),
        };
        let (guest, host) = paths.split_once(':').ok_or(SpecError::ForwardShape)?;
        check_guest_path(guest)?;
        let host_path = check_host_path(host)?;
        Ok(Forward {
            id: id.map_or_else(|| derived_forward_id(guest), str::to_owned),
            guest_path: guest.to_owned(),
            host_path,
            mode: None,
            uid: None,
            gid: None,
        })
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
        Ok(Forward {
            id,
            guest_path,
            host_path,
            mode: None,
            uid: None,
            gid: None,
        })
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
        Forward {
            id: id.to_owned(),
            guest_path: guest.to_owned(),
            host_path: PathBuf::from(host),
            mode: None,
            uid: None,
            gid: None,
        }
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
                .map(|f| (f.guest_path, f.host_path)),
            Ok((format!("/g/{id}.sock"), PathBuf::from("/h:x.sock")))
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
}
