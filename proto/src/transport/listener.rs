//! Listeners of both daemons: the agent's control and stream ports and
//! remote forwards, the relay's admin socket, control listener and local
//! forwards. Unix ones go through [`socket_file`](super::socket_file): a socket
//! in use is never taken over, and only our own file is removed.

use super::socket_file::{open_parent, SocketFile, SocketFileError, SocketFileOptions};
use super::{Address, Stream};
use nix::sys::socket::SockFlag;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
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
    /// Another process listens on the Unix socket at that path: it is left alone.
    #[error("cannot listen on {addr}: another process is listening on it")]
    InUse {
        /// The requested address.
        addr: Address,
    },
    /// A non-socket file is where the socket should go.
    #[error("cannot listen on {addr}: a file that is not a socket is in the way")]
    NotASocket {
        /// The requested address.
        addr: Address,
    },
    /// The Unix socket file could not be made (see [`SocketFileError`]).
    #[error("cannot listen on {addr}")]
    File {
        /// The requested address.
        addr: Address,
        /// What failed.
        #[source]
        source: SocketFileError,
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

impl ListenerError {
    fn unix(addr: &Address, source: SocketFileError) -> ListenerError {
        let addr = addr.clone();
        match source {
            SocketFileError::InUse => ListenerError::InUse { addr },
            SocketFileError::NotASocket => ListenerError::NotASocket { addr },
            source => ListenerError::File { addr, source },
        }
    }
}

enum Inner {
    /// A listening Unix socket registered with the runtime directly: accept4
    /// hands a nonblocking socket straight to [`Stream`] with one registration
    /// (tokio's UnixListener would register each accepted stream, and moving it
    /// into a Stream would deregister and register it again).
    Unix(AsyncFd<OwnedFd>),
    Vsock(tokio_vsock::VsockListener),
}

/// A bound listener. A Unix one never replaces a socket another process
/// listens on, and removes its socket file when dropped only if the file is
/// still its own (see [`socket_file`](super::socket_file)).
pub struct Listener {
    inner: Inner,
    /// The socket file it made, removed on drop (Unix only).
    _file: Option<SocketFile>,
    addr: Address,
}

impl Listener {
    /// Binds `addr`. A Unix socket gets the mode the umask gives; a stale
    /// socket file is replaced, a live one or any other file refused.
    pub fn bind(addr: &Address) -> Result<Self, ListenerError> {
        match addr {
            Address::Unix(path) => Self::bind_unix(path, &SocketFileOptions::default()),
            Address::Vsock { cid, port } => {
                let l = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(*cid, *port))
                    .map_err(|source| ListenerError::Bind {
                        addr: addr.clone(),
                        source,
                    })?;
                // Accepted connections inherit the listener's buffer size.
                super::vsock::enlarge(std::os::fd::AsFd::as_fd(&l));
                Ok(Listener {
                    inner: Inner::Vsock(l),
                    _file: None,
                    addr: addr.clone(),
                })
            }
            Address::Hybrid { .. } => Err(ListenerError::NotListenable(addr.clone())),
        }
    }

    /// Binds a Unix socket at `path` (its directory found by following
    /// symlinks: an operator's path), made as `options` say.
    pub fn bind_unix(path: &Path, options: &SocketFileOptions) -> Result<Self, ListenerError> {
        let addr = Address::Unix(path.to_path_buf());
        let len = path.as_os_str().len();
        if len > super::SUN_PATH_MAX {
            return Err(ListenerError::Bind {
                addr,
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the path is {len} bytes; a Unix socket address holds at most {}",
                        super::SUN_PATH_MAX
                    ),
                ),
            });
        }
        let (dir, name) = open_parent(path).map_err(|e| ListenerError::unix(&addr, e))?;
        Self::bind_in(dir, &name, addr, options)
    }

    /// Binds a Unix socket at `name` inside the directory `dir` (already
    /// opened and checked by the caller); `addr` is how it is shown.
    pub fn bind_in(
        dir: OwnedFd,
        name: &OsStr,
        addr: Address,
        options: &SocketFileOptions,
    ) -> Result<Self, ListenerError> {
        let (fd, file) =
            SocketFile::create(dir, name, options).map_err(|e| ListenerError::unix(&addr, e))?;
        // SAFETY: the listener's descriptor is moved into the AsyncFd, which
        // owns it from here on; nothing else closes or replaces it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| ListenerError::Bind {
            addr: addr.clone(),
            source: io::Error::from(e),
        })?;
        Ok(Listener {
            inner: Inner::Unix(fd),
            _file: Some(file),
            addr,
        })
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
                    Stream::from_vsock_fd(OwnedFd::from(s))?,
                    Peer::Vsock {
                        cid: peer.cid(),
                        port: peer.port(),
                    },
                ))
            }
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match &self.inner {
            Inner::Unix(fd) => fd.as_raw_fd(),
            Inner::Vsock(l) => l.as_raw_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replaces_stale_refuses_live_and_other_files_and_unlinks_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let addr = Address::Unix(path.clone());
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        // The std listener leaves its file behind: a stale socket.
        let l = Listener::bind(&addr).unwrap();
        assert!(path.exists());
        // A second listener on the same path is refused, and removes nothing.
        let err = Listener::bind(&addr).err().unwrap();
        assert!(matches!(err, ListenerError::InUse { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        drop(l);
        assert!(!path.exists());

        std::fs::write(&path, b"data").unwrap();
        let err = Listener::bind(&addr).err().unwrap();
        assert!(matches!(err, ListenerError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        std::fs::remove_file(&path).unwrap();

        // Replaced under it: the replacement survives the listener's end.
        let l = Listener::bind(&addr).unwrap();
        std::fs::remove_file(&path).unwrap();
        let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(l);
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(other);
    }
}
