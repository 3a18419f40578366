//! The control connection's socket as ttrpc sees it: one send per ttrpc
//! message, and reads through a buffer.
//!
//! ttrpc 0.9 (async) writes each message as five writes: the header's four
//! fields one at a time (u32 length, u32 stream ID, u8 type, u8 flags), a
//! flush, then the payload. On a socket each write is a `sendto`, and the peer
//! may wake for each. [`MessageWriter`] keeps a message's bytes until its last
//! one arrives (the header says how many there are) and sends the message
//! whole. The flush ttrpc asks for between header and payload sends nothing: a
//! header alone is of no use to the peer, and ttrpc always writes the rest.
//!
//! ttrpc reads a message as a 10-byte read for the header and one for the
//! payload; through [`socket`]'s read buffer both usually come from one `recv`.
//! A daemon that reads the socket through a buffer of its own already (the
//! agent's frame gate, which counts frames under ttrpc) puts [`MessageWriter`]
//! alone above it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};

/// ttrpc's message header: u32 payload length, u32 stream ID, u8 type, u8 flags.
const HEADER: usize = 10;

/// Read buffer of a control connection: a typical message, header and
/// payload, fits; larger payloads are read straight into ttrpc's own buffer.
const READ_BUFFER: usize = 8 << 10;

/// After a message larger than this, the write buffer gives its memory back.
const KEEP_CAPACITY: usize = 64 << 10;

/// A control connection's socket wrapped for ttrpc (see [`wrap`]).
pub type ControlIo<S> = BufReader<MessageWriter<S>>;

/// Wraps a control connection's socket: one send per ttrpc message, buffered reads.
pub fn wrap<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> ControlIo<S> {
    BufReader::with_capacity(READ_BUFFER, MessageWriter::new(io))
}

/// A ttrpc client's socket over a control connection, [`wrap`]ped.
pub fn socket<S>(io: S) -> ttrpc::r#async::transport::Socket
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    ttrpc::r#async::transport::Socket::new(wrap(io))
}

/// Gathers each ttrpc message written to it and sends it with one write to
/// the inner socket; reads pass through. See the module docs.
#[derive(Debug)]
pub struct MessageWriter<S> {
    inner: S,
    /// The message being gathered: always less than a whole one, except
    /// within `poll_write` while it is being sent.
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already sent.
    sent: usize,
}

impl<S> MessageWriter<S> {
    /// Wraps a socket that ttrpc will write messages to.
    pub fn new(inner: S) -> Self {
        MessageWriter {
            inner,
            buf: Vec::new(),
            sent: 0,
        }
    }

    /// How many bytes of `data` belong to the message being gathered.
    fn wanted(&self, data: &[u8]) -> usize {
        let have = self.buf.len();
        if have + data.len() < HEADER {
            return data.len();
        }
        let mut len = [0u8; 4];
        for (i, b) in len.iter_mut().enumerate() {
            *b = if i < have {
                self.buf[i]
            } else {
                data[i - have]
            };
        }
        let total = HEADER.saturating_add(u32::from_be_bytes(len) as usize);
        total.saturating_sub(have).min(data.len())
    }

    /// Whether `buf` holds a whole message.
    fn complete(&self) -> bool {
        self.buf.len() >= HEADER
            && self.buf.len()
                >= HEADER
                    + u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                        as usize
    }
}

impl<S: AsyncWrite + Unpin> MessageWriter<S> {
    /// Sends what is left of `buf`.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.sent = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MessageWriter<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MessageWriter<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let take = this.wanted(data);
        this.buf.extend_from_slice(&data[..take]);
        if !this.complete() {
            return Poll::Ready(Ok(take));
        }
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => {
                this.reset();
                Poll::Ready(Ok(take))
            }
            Poll::Ready(Err(e)) => {
                this.reset();
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                // The socket is full. The message's last byte (never sent, as
                // the send stopped short) stays with the caller: a writer
                // only calls again while it holds unwritten bytes, so this
                // keeps it calling until the whole message is out.
                this.buf.pop();
                if take > 1 {
                    Poll::Ready(Ok(take - 1))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Whole messages are sent as they complete; a part of one waits for
        // the rest (see the module docs).
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send(cx))?;
        this.reset();
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A writer that records each write and takes at most `room` bytes before
    /// it reports a full socket once.
    struct Recorder {
        writes: Vec<Vec<u8>>,
        room: usize,
        blocked_once: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.room == 0 && !self.blocked_once {
                self.blocked_once = true;
                self.room = usize::MAX;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn message(stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        m.extend_from_slice(&stream.to_be_bytes());
        m.extend_from_slice(&[1, 0]);
        m.extend_from_slice(payload);
        m
    }

    /// Writes `m` the way ttrpc 0.9 does: four header fields, a flush, the payload.
    async fn write_like_ttrpc<W: AsyncWrite + Unpin>(w: &mut W, m: &[u8]) {
        w.write_all(&m[0..4]).await.unwrap();
        w.write_all(&m[4..8]).await.unwrap();
        w.write_all(&m[8..9]).await.unwrap();
        w.write_all(&m[9..10]).await.unwrap();
        w.flush().await.unwrap();
        w.write_all(&m[10..]).await.unwrap();
    }

    #[tokio::test]
    async fn each_message_is_one_write() {
        let mut w = MessageWriter::new(Recorder {
            writes: Vec::new(),
            room: usize::MAX,
            blocked_once: true,
        });
        let (a, b, empty) = (
            message(1, b"hello"),
            message(3, &[7u8; 9000]),
            message(5, b""),
        );
        for m in [&a, &b, &empty] {
            write_like_ttrpc(&mut w, m).await;
        }
        assert_eq!(w.inner.writes, vec![a, b, empty]);
    }

    #[tokio::test]
    async fn two_messages_in_one_write_go_out_one_by_one() {
        let mut w = MessageWriter::new(Recorder {
            writes: Vec::new(),
            room: usize::MAX,
            blocked_once: true,
        });
        let (a, b) = (message(1, b"one"), message(3, b"two"));
        w.write_all(&[a.clone(), b.clone()].concat()).await.unwrap();
        assert_eq!(w.inner.writes, vec![a, b]);
    }

    #[tokio::test]
    async fn a_full_socket_keeps_the_writer_writing_until_the_message_is_out() {
        let m = message(7, &[42u8; 1000]);
        for room in [0, 1, 9, 10, 500, 1009] {
            let mut w = MessageWriter::new(Recorder {
                writes: Vec::new(),
                room,
                blocked_once: false,
            });
            write_like_ttrpc(&mut w, &m).await;
            assert_eq!(w.inner.writes.concat(), m, "room {room}");
            assert!(w.buf.is_empty(), "room {room}: nothing left behind");
        }
    }

    #[tokio::test]
    async fn over_a_socket_pair_messages_arrive_whole() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let mut w = MessageWriter::new(a);
        let mut r = BufReader::with_capacity(READ_BUFFER, b);
        let big = message(9, &vec![3u8; 300_000]);
        let writer = tokio::spawn(async move {
            write_like_ttrpc(&mut w, &big).await;
            write_like_ttrpc(&mut w, &message(11, b"after")).await;
            w.shutdown().await.unwrap();
            big
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        let big = writer.await.unwrap();
        assert_eq!(got, [big, message(11, b"after")].concat());
    }
}
