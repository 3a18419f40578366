//! Connecting a local forward's target from inside the guest, as far as the
//! allow-list (`--allow-target`, [`AllowList`]) lets the host reach it.
//!
//! The target grammar is the wire's (`sockfwd_proto::target`). The host is not
//! trusted: a target is checked against the allow-list after name resolution,
//! per address actually dialed, so a name cannot smuggle a connection to an
//! address the list does not allow.

use crate::config::AllowList;
use sockfwd_proto::target::{Target, TargetParseError};
use sockfwd_proto::tcp_dial::{self, TcpDialError};
use std::io;
use thiserror::Error;

/// Why the connection to a target failed.
#[derive(Debug, Error)]
pub enum TargetError {
    /// The target string is malformed.
    #[error("invalid target")]
    Parse(#[from] TargetParseError),
    /// `--allow-target` does not allow it.
    #[error("target {0} is not allowed by --allow-target")]
    NotAllowed(String),
    /// The name did not resolve (or resolved to nothing).
    #[error("cannot resolve {host:?} in the guest")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// Nothing listens there.
    #[error("connection refused by {0}")]
    Refused(String),
    /// The Unix socket path does not exist.
    #[error("no such socket: {0}")]
    NoSuchPath(String),
    /// Any other connect failure.
    #[error("connecting to {target}")]
    Connect {
        /// The target.
        target: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn classify(target: &str, unix: bool, e: io::Error) -> TargetError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => TargetError::Refused(target.to_owned()),
        io::ErrorKind::NotFound if unix => TargetError::NoSuchPath(target.to_owned()),
        _ => TargetError::Connect {
            target: target.to_owned(),
            source: e,
        },
    }
}

/// Connected socket of either kind, as an owned descriptor for `Stream::from_fd`.
pub type Connected = std::os::fd::OwnedFd;

/// Checks `target` against `allow` and connects to it from inside the guest.
pub async fn connect(target: &Target, allow: &AllowList) -> Result<Connected, TargetError> {
    match target {
        Target::Unix(path) => {
            if !allow.allows_unix(path) {
                return Err(TargetError::NotAllowed(target.to_string()));
            }
            let s = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| classify(&path.display().to_string(), true, e))?;
            let s = s
                .into_std()
                .map_err(|e| classify(&target.to_string(), true, e))?;
            Ok(s.into())
        }
        Target::Ip(addr) => tcp(target, &addr.ip().to_string(), addr.port(), None, allow).await,
        Target::Name { host, port } => tcp(target, host, *port, Some(host), allow).await,
    }
}

/// Dials a TCP target the shared way ([`tcp_dial`]: `localhost` is both
/// loopback addresses, each address checked against the allow-list before it
/// is dialed), in this module's words. `name` is the host's name for it, if
/// it gave one.
async fn tcp(
    target: &Target,
    host: &str,
    port: u16,
    name: Option<&str>,
    allow: &AllowList,
) -> Result<Connected, TargetError> {
    let s = tcp_dial::dial(host, port, |addr| allow.allows_tcp(name, addr))
        .await
        .map_err(|e| match e {
            TcpDialError::Resolve { host, source } => TargetError::Resolve { host, source },
            TcpDialError::NotAllowed(_) if name.is_none() => {
                TargetError::NotAllowed(target.to_string())
            }
            TcpDialError::NotAllowed(addr) => TargetError::NotAllowed(format!("{target} ({addr})")),
            TcpDialError::Refused(addr) => TargetError::Refused(addr.to_string()),
            TcpDialError::Connect { addr, source } => TargetError::Connect {
                target: addr.to_string(),
                source,
            },
        })?;
    let s = s
        .into_std()
        .map_err(|e| classify(&target.to_string(), false, e))?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(specs: &[&str]) -> AllowList {
        AllowList(specs.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[tokio::test]
    async fn connect_reports_refused_missing_and_not_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Target::Unix(dir.path().join("nope.sock"));
        let err = connect(&missing, &AllowList::default()).await.unwrap_err();
        assert!(matches!(err, TargetError::NoSuchPath(_)), "{err}");

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = connect(&Target::Ip(addr), &AllowList::default())
            .await
            .unwrap_err();
        assert!(matches!(err, TargetError::Refused(_)), "{err}");

        let err = connect(&Target::Ip(addr), &list(&["*:1"]))
            .await
            .unwrap_err();
        assert!(matches!(err, TargetError::NotAllowed(_)), "{err}");
    }
}
