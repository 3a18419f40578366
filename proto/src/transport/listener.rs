//! Guest-side listeners for the control and stream ports.

use super::{Address, Stream};
use nix::sys::socket::SockFlag;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokio::io::unix::AsyncFd;

/// Who connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A Unix-socket peer (tests, or a VMM's per-port socket).
    Unix,
    /// An AF_VSOCK peer.
    Vsock {
        /// The peer's context ID (2 is the host).
        cid: u32,
        /// The peer's port.
        port: u32,
    },
}

/// Why a listener could not be created.
#[derive(Debug, Error)]
pub enum ListenerError {
    /// Hybrid vsock is a host-side dialing scheme; nothing listens on it.
    #[error("cannot listen on {0}: hvsock:// is for dialing from the host")]
    NotListenable(Address),
    /// A non-socket file is where the socket should go.
    #[error("cannot listen on {addr}: a file that is not a socket is in the way")]
    NotASocket {
        /// The requested address.
        addr: Address,
    },
    /// bind/listen failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The requested address.
        addr: Address,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

enum Inner {
    /// A listening Unix socket registered with the runtime directly: accept4
    /// hands a nonblocking socket straight to [`Stream`] with one registration
    /// (tokio's UnixListener would register each accepted stream, and moving it
    /// into a Stream would deregister and register it again).
    Unix(AsyncFd<OwnedFd>),
    Vsock(tokio_vsock::VsockListener),
}

/// A bound listener; a Unix one unlinks its socket file when dropped.
pub struct Listener {
    inner: Inner,
    /// Where the socket file is, for removal on drop (Unix only).
    path: Option<PathBuf>,
    addr: Address,
}

/// Removes a stale socket file at `path`; refuses any other kind of file.
fn clear_stale_socket(path: &Path) -> Result<(), io::ErrorKind> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(|e| e.kind()),
        Ok(_) => Err(io::ErrorKind::AlreadyExists),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.kind()),
    }
}

impl Listener {
    /// Binds `addr`. A stale Unix socket file is replaced; any other file is refused.
    pub fn bind(addr: &Address) -> Result<Self, ListenerError> {
        let bind_err = |source| ListenerError::Bind {
            addr: addr.clone(),
            source,
        };
        match addr {
            Address::Unix(path) => {
                match clear_stale_socket(path) {
                    Ok(()) => {}
                    Err(io::ErrorKind::AlreadyExists) => {
                        return Err(ListenerError::NotASocket { addr: addr.clone() })
                    }
                    Err(kind) => return Err(bind_err(kind.into())),
                }
                let l = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
                l.set_nonblocking(true).map_err(bind_err)?;
                // SAFETY: the listener's descriptor is moved into the AsyncFd, which
                // owns it from here on; nothing else closes or replaces it.
                let fd = unsafe { AsyncFd::register(OwnedFd::from(l)) }
                    .map_err(|e| bind_err(io::Error::from(e)))?;
                Ok(Listener {
                    inner: Inner::Unix(fd),
                    path: Some(path.clone()),
                    addr: addr.clone(),
                })
            }
            Address::Vsock { cid, port } => {
                let l = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(*cid, *port))
                    .map_err(bind_err)?;
                Ok(Listener {
                    inner: Inner::Vsock(l),
                    path: None,
                    addr: addr.clone(),
                })
            }
            Address::Hybrid { .. } => Err(ListenerError::NotListenable(addr.clone())),
        }
    }

    /// The address this listener was bound to.
    pub fn address(&self) -> &Address {
        &self.addr
    }

    /// Accepts one connection. Errors (EMFILE included) are the caller's to back off from.
    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        match &self.inner {
            Inner::Unix(l) => loop {
                let mut guard = l.readable().await?;
                let accepted = guard.try_io(|fd| {
                    Ok(nix::sys::socket::accept4(
                        fd.as_raw_fd(),
                        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                    )?)
                });
                match accepted {
                    Ok(raw) => {
                        // SAFETY: accept4 returned a new descriptor that nothing else owns.
                        let fd = unsafe { OwnedFd::from_raw_fd(raw?) };
                        return Ok((Stream::from_nonblocking_fd(fd)?, Peer::Unix));
                    }
                    Err(_would_block) => continue,
                }
            },
            Inner::Vsock(l) => {
                // The std stream, not tokio-vsock's registered one: moving that
                // into a Stream would deregister and register it again.
                let (s, peer) = std::future::poll_fn(|cx| l.poll_accept_std(cx)).await?;
                Ok((
                    Stream::from_fd(OwnedFd::from(s))?,
                    Peer::Vsock {
                        cid: peer.cid(),
                        port: peer.port(),
                    },
                ))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            // Best effort: the file may already be gone or replaced by an operator.
            let _ = clear_stale_socket(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replaces_stale_socket_refuses_regular_file_and_unlinks_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let addr = Address::Unix(path.clone());
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        // The std listener leaves its file behind: a stale socket.
        let l = Listener::bind(&addr).unwrap();
        assert!(path.exists());
        drop(l);
        assert!(!path.exists());

        std::fs::write(&path, b"data").unwrap();
        let err = Listener::bind(&addr).err().unwrap();
        assert!(matches!(err, ListenerError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }
}
