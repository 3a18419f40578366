//! One connected, nonblocking stream socket of any transport, registered with tokio.
//!
//! It is a plain fd (not tokio's `UnixStream` or tokio-vsock's type) so that the
//! relay can `splice(2)` between any two of them with the runtime's readiness,
//! whatever the transport.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connected stream socket (Unix or vsock).
#[derive(Debug)]
pub struct Stream {
    fd: AsyncFd<OwnedFd>,
    /// An AF_VSOCK socket: the relay copies into it rather than splicing.
    vsock: bool,
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

impl Stream {
    /// Wraps a connected stream socket; sets it nonblocking. Needs a tokio runtime.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        Self::from_nonblocking_fd(fd)
    }

    /// Wraps a connected stream socket that is already nonblocking (accept4 or
    /// socket with SOCK_NONBLOCK): one epoll registration, no fcntl.
    pub(crate) fn from_nonblocking_fd(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it from here on;
        // nothing else can close or replace the descriptor while it is registered.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Stream { fd, vsock: false })
    }

    /// Wraps a tokio Unix stream.
    pub fn from_unix(s: tokio::net::UnixStream) -> io::Result<Self> {
        Self::from_fd(OwnedFd::from(s.into_std()?))
    }

    /// Wraps a tokio-vsock stream (deregistering it from its own reactor entry).
    pub fn from_vsock(s: tokio_vsock::VsockStream) -> io::Result<Self> {
        Self::from_vsock_fd(OwnedFd::from(s))
    }

    /// Wraps a connected AF_VSOCK socket; sets it nonblocking.
    pub(crate) fn from_vsock_fd(fd: OwnedFd) -> io::Result<Self> {
        let mut s = Self::from_fd(fd)?;
        s.vsock = true;
        Ok(s)
    }

    /// Whether this is an AF_VSOCK socket.
    pub fn is_vsock(&self) -> bool {
        self.vsock
    }

    /// Connects to a Unix socket path. A full listen backlog is `WouldBlock`
    /// (EAGAIN), as for any nonblocking Unix connect: the caller decides whether
    /// to retry.
    pub async fn connect_unix(path: &std::path::Path) -> io::Result<Self> {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        // Our own socket() + connect() rather than tokio's UnixStream: that one
        // registers with epoll, and moving it here would deregister and register
        // again (three epoll_ctl calls and two fcntl per connection, measured as
        // a visible share of the daemons' per-connection CPU).
        let addr = UnixAddr::new(path)?;
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        // A Unix-socket connect completes at once or fails: it never returns
        // EINPROGRESS, so there is nothing to wait for here.
        connect(fd.as_raw_fd(), &addr)?;
        Self::from_nonblocking_fd(fd)
    }

    /// Waits until the socket may be readable; see [`AsyncFd::readable`].
    pub async fn readable(&self) -> io::Result<AsyncFdReadyGuard<'_, OwnedFd>> {
        self.fd.readable().await
    }

    /// Waits until the socket may be writable; see [`AsyncFd::writable`].
    pub async fn writable(&self) -> io::Result<AsyncFdReadyGuard<'_, OwnedFd>> {
        self.fd.writable().await
    }

    /// Reads without waiting: `WouldBlock` when nothing is there.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(nix::unistd::read(self.fd.as_raw_fd(), buf)?)
    }

    /// Writes without waiting: `WouldBlock` when the socket buffer is full.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        // send(MSG_NOSIGNAL): a peer that closed must give EPIPE, not kill the process.
        Ok(nix::sys::socket::send(
            self.fd.as_raw_fd(),
            buf,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        )?)
    }

    /// Peeks at pending bytes without consuming them.
    pub fn try_peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(nix::sys::socket::recv(
            self.fd.as_raw_fd(),
            buf,
            nix::sys::socket::MsgFlags::MSG_PEEK,
        )?)
    }

    /// Shuts down the writing half: the peer reads EOF, and can still send to us.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Write) {
            // The peer is already gone: nothing left to tell it.
            Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads, waiting for readiness as needed.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.as_raw_fd(), buf)?)) {
                Ok(Ok(n)) => {
                    drained(&mut guard, n, buf.len());
                    return Ok(n);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `buf`, waiting for readiness as needed.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|_| self.try_write(buf)) {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => {
                    drained(&mut guard, n, buf.len());
                    buf = &buf[n..];
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// After a read or write of `done` of `asked` bytes: a short one (but not an
/// EOF or a zero-length call) found the socket drained or full, so its
/// readiness is cleared and the next call waits for the poller rather than
/// asking the kernel for an `EAGAIN`. tokio's own sockets do the same; a
/// closed state is never cleared, and an event that came after the guard was
/// taken keeps the readiness.
fn drained<T: AsRawFd>(guard: &mut AsyncFdReadyGuard<'_, T>, done: usize, asked: usize) {
    if done > 0 && done < asked {
        guard.clear_ready();
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let asked = unfilled.len();
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.as_raw_fd(), unfilled)?)) {
                Ok(Ok(n)) => {
                    drained(&mut guard, n, asked);
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|_| self.try_write(buf)) {
                Ok(Ok(n)) => {
                    drained(&mut guard, n, buf.len());
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown_write())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_writes_and_half_closes() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let mut a = Stream::from_unix(a).unwrap();
        let mut b = Stream::from_unix(b).unwrap();
        a.write_all(b"ping").await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        // The other direction still works after a's half-close.
        b.write_all(b"pong").await.unwrap();
        let mut back = [0u8; 4];
        a.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
    }
}
