//! Where clients connect to a forward, in either daemon: a remote forward's
//! listener in the guest, a local forward's on the host. One place is a Unix
//! socket file or a TCP address ([`ListenAt`]); one listener accepts on
//! either ([`ClientListener`]), with `TCP_NODELAY` on every TCP client. A TCP
//! client is accepted with `accept4` on the listener's own registration
//! (`tcp_accept`), so each connection is registered with the runtime once.

use super::tcp_accept::TcpAcceptor;
use super::{Address, Listener, ListenerError, SocketFileError, Stream};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::path::PathBuf;
use thiserror::Error;

/// Pending connections a TCP listener queues before the accept loop takes them.
const TCP_BACKLOG: u32 = 1024;

/// Where a forward listens for its clients: in the guest for a remote forward
/// (the relay names it in `Bind`, the agent binds it), on the host for a local
/// one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAt {
    /// A Unix socket file.
    Unix(PathBuf),
    /// A TCP address. Asked for, port 0 means any free port; bound, it is the
    /// address with the port the kernel picked.
    Tcp(SocketAddr),
}

impl ListenAt {
    /// Whether a listener bound at `self` is what `asked` asks for: the same
    /// place, or for port 0 the same address with whichever port it got.
    pub fn answers(&self, asked: &ListenAt) -> bool {
        match (self, asked) {
            (ListenAt::Tcp(bound), ListenAt::Tcp(a)) if a.port() == 0 => bound.ip() == a.ip(),
            _ => self == asked,
        }
    }

    /// The place it takes for itself, which no other forward may share, if it
    /// names one: a socket file, or a TCP address with its port (port 0 takes
    /// whichever port is free, so it names none).
    pub fn place(&self) -> Option<&ListenAt> {
        match self {
            ListenAt::Tcp(addr) if addr.port() == 0 => None,
            other => Some(other),
        }
    }

    /// The wire's `socket_path` for it (`Socket`, `ForwardInfo`): the path, or
    /// empty for a TCP address.
    pub fn socket_path(&self) -> String {
        match self {
            ListenAt::Unix(p) => p.to_string_lossy().into_owned(),
            ListenAt::Tcp(_) => String::new(),
        }
    }

    /// The wire's `tcp_listen` for it (`Socket`, `ForwardInfo`, extension
    /// `tcp-listen`): the address, or empty for a socket file.
    pub fn tcp_listen(&self) -> String {
        match self {
            ListenAt::Tcp(a) => a.to_string(),
            ListenAt::Unix(_) => String::new(),
        }
    }
}

impl fmt::Display for ListenAt {
    /// The path, or `IP:PORT` (`[IPV6]:PORT`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAt::Unix(p) => write!(f, "{}", p.display()),
            ListenAt::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Why a [`ClientListener`] could not be bound; the caller names where.
#[derive(Debug, Error)]
pub enum ClientListenError {
    /// socket, bind or listen failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The Unix socket file could not be made (a live socket or another file
    /// in the way, ...).
    #[error(transparent)]
    File(SocketFileError),
}

impl From<ListenerError> for ClientListenError {
    /// The cause without the address, which the caller names.
    fn from(e: ListenerError) -> ClientListenError {
        match e {
            ListenerError::InUse { .. } => ClientListenError::File(SocketFileError::InUse),
            ListenerError::NotASocket { .. } => {
                ClientListenError::File(SocketFileError::NotASocket)
            }
            ListenerError::File { source, .. } => ClientListenError::File(source),
            ListenerError::Bind { source, .. } => ClientListenError::Io(source),
            // Only hybrid vsock addresses, never a client's place.
            ListenerError::NotListenable(_) => io::Error::from(io::ErrorKind::InvalidInput).into(),
        }
    }
}

enum Inner {
    Unix(Listener),
    Tcp(TcpAcceptor),
}

/// A bound listener for a forward's clients; a Unix one removes its socket
/// file when dropped (see [`Listener`]).
pub struct ClientListener {
    inner: Inner,
    at: ListenAt,
}

impl ClientListener {
    /// A Unix listener already bound at `path` (each daemon places its socket
    /// files its own way).
    pub fn unix(listener: Listener, path: PathBuf) -> ClientListener {
        ClientListener {
            inner: Inner::Unix(listener),
            at: ListenAt::Unix(path),
        }
    }

    /// Listens at `at`; a Unix socket as [`Listener::bind`] makes it (the
    /// umask's mode; a live socket in the way is refused, a stale one replaced).
    pub fn bind(at: &ListenAt) -> Result<ClientListener, ClientListenError> {
        match at {
            ListenAt::Tcp(addr) => Ok(Self::bind_tcp(*addr)?),
            ListenAt::Unix(path) => Ok(Self::unix(
                Listener::bind(&Address::Unix(path.clone()))?,
                path.clone(),
            )),
        }
    }

    /// Listens on `addr` with SO_REUSEADDR (a port whose last connections are
    /// in TIME_WAIT can be bound again at once). Needs a tokio runtime.
    pub fn bind_tcp(addr: SocketAddr) -> io::Result<ClientListener> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = TcpAcceptor::new(socket.listen(TCP_BACKLOG)?.into_std()?)?;
        Ok(ClientListener {
            at: ListenAt::Tcp(listener.local_addr()?),
            inner: Inner::Tcp(listener),
        })
    }

    /// Where it listens (for TCP, with the port it got).
    pub fn at(&self) -> &ListenAt {
        &self.at
    }

    /// Accepts one client (a TCP one with `TCP_NODELAY`). Errors (EMFILE
    /// included) are the caller's to back off from.
    pub async fn accept(&self) -> io::Result<Stream> {
        match &self.inner {
            Inner::Unix(l) => Ok(l.accept().await?.0),
            Inner::Tcp(l) => l.accept().await,
        }
    }
}

impl AsRawFd for ClientListener {
    fn as_raw_fd(&self) -> RawFd {
        match &self.inner {
            Inner::Unix(l) => l.as_raw_fd(),
            Inner::Tcp(l) => l.as_fd().as_raw_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_answered_by_any_port_of_its_address() {
        let tcp = |s: &str| ListenAt::Tcp(s.parse().unwrap());
        let bound = tcp("127.0.0.1:4000");
        assert!(bound.answers(&tcp("127.0.0.1:0")));
        assert!(bound.answers(&tcp("127.0.0.1:4000")));
        assert!(!bound.answers(&tcp("127.0.0.1:4001")));
        assert!(!bound.answers(&tcp("[::1]:0")));
        assert!(!bound.answers(&ListenAt::Unix("127.0.0.1:0".into())));
        assert_eq!(tcp("[::1]:1").to_string(), "[::1]:1");
    }

    #[test]
    fn port_zero_takes_no_place_and_the_wire_gets_one_field() {
        let tcp = |s: &str| ListenAt::Tcp(s.parse().unwrap());
        assert_eq!(tcp("127.0.0.1:0").place(), None);
        assert_eq!(tcp("[::1]:5").place(), Some(&tcp("[::1]:5")));
        let unix = ListenAt::Unix("/run/a.sock".into());
        assert_eq!(unix.place(), Some(&unix));
        assert_eq!(
            (unix.socket_path(), unix.tcp_listen()),
            ("/run/a.sock".to_owned(), String::new())
        );
        let v6 = tcp("[::1]:5432");
        assert_eq!(
            (v6.socket_path(), v6.tcp_listen()),
            (String::new(), "[::1]:5432".to_owned())
        );
    }

    #[tokio::test]
    async fn accepts_on_tcp_and_unix_and_says_where() {
        let tcp = ClientListener::bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let ListenAt::Tcp(addr) = *tcp.at() else {
            panic!("not TCP: {}", tcp.at());
        };
        assert_ne!(addr.port(), 0);
        assert!(tcp.as_raw_fd() >= 0);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let conn = tcp.accept().await.unwrap();
        drop(client);
        assert_eq!(conn.read(&mut [0u8; 1]).await.unwrap(), 0);
        // Its port is taken while it listens.
        let err = ClientListener::bind(tcp.at()).err().unwrap();
        assert!(
            matches!(&err, ClientListenError::Io(e) if e.kind() == io::ErrorKind::AddrInUse),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let unix = ClientListener::bind(&ListenAt::Unix(path.clone())).unwrap();
        assert_eq!(unix.at().to_string(), path.display().to_string());
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        unix.accept().await.unwrap();
        let err = ClientListener::bind(unix.at()).err().unwrap();
        assert!(
            matches!(err, ClientListenError::File(SocketFileError::InUse)),
            "{err}"
        );
        assert_eq!(err.to_string(), "another process is listening on it");
        drop(unix);
        assert!(!path.exists());
    }
}
