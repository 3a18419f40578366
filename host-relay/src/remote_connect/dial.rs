//! Dialing a remote forward's target on the host, for a `ConnectRequest`
//! and for a pooled stream's header alike.

use crate::remote_spec::HostTarget;
use crate::streams::dial_patiently;
use sockfwd_proto::tcp_dial::{self, TcpDialError};
use sockfwd_proto::transport::{Address, DialError, Stream};
use std::os::fd::OwnedFd;
use std::time::Duration;
use thiserror::Error;

/// Why a forward's target on the host could not be dialed.
#[derive(Debug, Error)]
pub(crate) enum TargetDialError {
    /// A Unix socket.
    #[error(transparent)]
    Unix(DialError),
    /// A TCP target.
    #[error("connecting to {target}")]
    Tcp {
        /// The target as configured.
        target: String,
        /// What failed.
        #[source]
        source: TcpDialError,
    },
    /// A TCP target did not answer in time.
    #[error("connecting to {target}: timed out after {after:?}")]
    TcpTimeout {
        /// The target as configured.
        target: String,
        /// The dial deadline.
        after: Duration,
    },
    /// A connected TCP socket could not be taken over.
    #[error("connecting to {target}")]
    TcpSocket {
        /// The target as configured.
        target: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Dials `target` within `limit`: a Unix socket waiting out a full backlog,
/// a TCP address the shared way (every address of a name, `localhost` as
/// both loopback addresses, `TCP_NODELAY`).
pub(super) async fn dial_target(
    target: &HostTarget,
    limit: Duration,
) -> Result<Stream, TargetDialError> {
    match target {
        HostTarget::Unix(path) => dial_patiently(&Address::Unix(path.clone()), limit)
            .await
            .map_err(TargetDialError::Unix),
        HostTarget::Tcp { host, port } => {
            let text = || target.to_string();
            let s = tokio::time::timeout(limit, tcp_dial::dial(host, *port, |_| true))
                .await
                .map_err(|_| TargetDialError::TcpTimeout {
                    target: text(),
                    after: limit,
                })?
                .map_err(|source| TargetDialError::Tcp {
                    target: text(),
                    source,
                })?;
            let taken = s.into_std().and_then(|s| Stream::from_fd(OwnedFd::from(s)));
            taken.map_err(|source| TargetDialError::TcpSocket {
                target: text(),
                source,
            })
        }
    }
}
