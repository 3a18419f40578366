//! Accepting TCP connections with one runtime registration each.
//!
//! tokio's `TcpListener` registers every accepted socket with the runtime, and
//! turning that into a [`Stream`] deregisters and registers it again (two more
//! `epoll_ctl` calls and two `fcntl` per connection). Accepting with
//! `accept4(SOCK_NONBLOCK)` on the listener's own registration hands the
//! socket straight to [`Stream`], as the Unix listeners do. Used by
//! [`ClientListener`](super::ClientListener) for every TCP client.

use super::Stream;
use nix::sys::socket::SockFlag;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// A listening TCP socket whose connections come out as [`Stream`]s.
#[derive(Debug)]
pub(super) struct TcpAcceptor {
    fd: AsyncFd<TcpListener>,
}

impl TcpAcceptor {
    /// Takes over a listening socket (made nonblocking here). Needs a tokio runtime.
    pub(super) fn new(listener: TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        // SAFETY: the listener is moved into the AsyncFd, which owns it from
        // here on; nothing else can close or replace the descriptor.
        let fd = unsafe { AsyncFd::register(listener) }.map_err(io::Error::from)?;
        Ok(TcpAcceptor { fd })
    }

    /// The address it listens on (the port the kernel picked, for port 0).
    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    /// Accepts one connection, with TCP_NODELAY: small request/response
    /// exchanges should not wait for Nagle (a socket that refuses the option
    /// still works). Errors (EMFILE included) are the caller's to back off from.
    pub(super) async fn accept(&self) -> io::Result<Stream> {
        loop {
            let mut guard = self.fd.readable().await?;
            let accepted = guard.try_io(|l| {
                Ok(nix::sys::socket::accept4(
                    l.as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )?)
            });
            match accepted {
                Ok(raw) => {
                    // SAFETY: accept4 returned a new descriptor that nothing else owns.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw?) };
                    let tcp = std::net::TcpStream::from(fd);
                    let _ = tcp.set_nodelay(true);
                    return Stream::from_nonblocking_fd(OwnedFd::from(tcp));
                }
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsFd for TcpAcceptor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn accepted_connections_are_streams_with_nodelay() {
        let acceptor = TcpAcceptor::new(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        let addr = acceptor.local_addr().unwrap();
        assert_ne!(addr.port(), 0, "the kernel's port is reported");
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            let mut back = [0u8; 4];
            c.read_exact(&mut back).await.unwrap();
            back
        });
        let mut s = acceptor.accept().await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        let dup = std::net::TcpStream::from(s.as_fd().try_clone_to_owned().unwrap());
        assert!(dup.nodelay().unwrap(), "TCP_NODELAY set");
        s.write_all(b"pong").await.unwrap();
        assert_eq!(&client.await.unwrap(), b"pong");
    }
}
