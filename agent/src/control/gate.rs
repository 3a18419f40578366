//! The gate between a control connection's socket and ttrpc: it follows the
//! ttrpc frames both ways and keeps the connection's [`Books`].
//!
//! Reading, it takes bytes from the socket into a buffer of its own, and hands
//! ttrpc whole frames the books let [`Pass`](Verdict::Pass), skips those they
//! [`Drop`](Verdict::Drop), and stops at a header they
//! [`Pause`](Verdict::Pause) on (the socket is not read meanwhile, so a host
//! that floods requests fills its own socket buffer, not the agent's memory).
//! Writing, it passes ttrpc's bytes through and tells the books when the last
//! byte of a call's final frame has left.
//!
//! The gate knows frames only: it never reads a payload. It is its own type so
//! that the socket's other wrappers (end-of-connection detection, write
//! batching) stay independent of it.

use crate::control_caps::{frame, Books, Verdict};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at a time.
const READ_BUF: usize = 8 << 10;

/// Where the reader is in the frame stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Waiting for a whole header.
    Header,
    /// Handing this many more bytes (header included) to ttrpc.
    Pass(u64),
    /// Skipping this many more bytes.
    Skip(u64),
}

/// Where the writer is in the frame stream.
#[derive(Debug, Default)]
struct Writing {
    header: [u8; frame::HEADER_LEN],
    have: usize,
    body_left: u64,
    /// The call whose final frame this is.
    ends: Option<u32>,
}

/// A control connection's socket seen through its books; see the module docs.
pub struct Gate<S> {
    inner: S,
    books: Arc<Books>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    reading: Reading,
    writing: Writing,
}

impl<S> Gate<S> {
    /// `inner` kept by `books`.
    pub fn new(inner: S, books: Arc<Books>) -> Gate<S> {
        Gate {
            inner,
            books,
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            reading: Reading::Header,
            writing: Writing::default(),
        }
    }
}

/// Length, stream ID and type of a frame header.
fn header(b: &[u8]) -> (u64, u32, u8) {
    let word = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    (u64::from(word(0)), word(4), b[8])
}

impl<S: AsyncRead + Unpin> AsyncRead for Gate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let g = self.get_mut();
        loop {
            let buffered = g.end - g.start;
            match g.reading {
                Reading::Pass(left) if buffered > 0 => {
                    let n = buffered.min(out.remaining());
                    let n = usize::try_from(left).map_or(n, |l| l.min(n));
                    out.put_slice(&g.buf[g.start..g.start + n]);
                    g.start += n;
                    g.reading = match left - n as u64 {
                        0 => Reading::Header,
                        more => Reading::Pass(more),
                    };
                    return Poll::Ready(Ok(()));
                }
                Reading::Skip(left) if buffered > 0 => {
                    let n = usize::try_from(left).map_or(buffered, |l| l.min(buffered));
                    g.start += n;
                    g.reading = match left - n as u64 {
                        0 => Reading::Header,
                        more => Reading::Skip(more),
                    };
                    continue;
                }
                Reading::Header if buffered >= frame::HEADER_LEN => {
                    let (len, id, kind) = header(&g.buf[g.start..]);
                    let payload = usize::try_from(len).unwrap_or(usize::MAX);
                    let whole = len + frame::HEADER_LEN as u64;
                    g.reading = match g.books.on_read(kind, id, payload, cx.waker()) {
                        Verdict::Pass => Reading::Pass(whole),
                        Verdict::Drop => Reading::Skip(whole),
                        Verdict::Pause => return Poll::Pending,
                    };
                    continue;
                }
                _ => {}
            }
            if g.eof {
                return Poll::Ready(Ok(()));
            }
            if g.start == g.end {
                (g.start, g.end) = (0, 0);
            } else if g.end == g.buf.len() {
                g.buf.copy_within(g.start..g.end, 0);
                (g.start, g.end) = (0, g.end - g.start);
            }
            let mut into = ReadBuf::new(&mut g.buf[g.end..]);
            match Pin::new(&mut g.inner).poll_read(cx, &mut into) {
                Poll::Ready(Ok(())) => match into.filled().len() {
                    0 => g.eof = true,
                    n => g.end += n,
                },
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S> Gate<S> {
    /// Follows `bytes` that were written, telling the books of ended calls.
    fn wrote(&mut self, mut bytes: &[u8]) {
        let w = &mut self.writing;
        while !bytes.is_empty() {
            if w.have < frame::HEADER_LEN {
                let n = (frame::HEADER_LEN - w.have).min(bytes.len());
                w.header[w.have..w.have + n].copy_from_slice(&bytes[..n]);
                w.have += n;
                bytes = &bytes[n..];
                if w.have < frame::HEADER_LEN {
                    return;
                }
                let (len, id, kind) = header(&w.header);
                let flags = w.header[9];
                let last = kind == frame::RESPONSE
                    || (kind == frame::DATA && flags & frame::REMOTE_CLOSED != 0);
                w.ends = last.then_some(id);
                w.body_left = len;
            } else {
                let n = usize::try_from(w.body_left).map_or(bytes.len(), |l| l.min(bytes.len()));
                w.body_left -= n as u64;
                bytes = &bytes[n..];
            }
            if w.body_left == 0 {
                w.have = 0;
                if let Some(id) = w.ends.take() {
                    self.books.on_answered(id);
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let g = self.get_mut();
        let r = Pin::new(&mut g.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            g.wrote(&buf[..*n]);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_caps::{Caps, Totals};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame_bytes(kind: u8, id: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(payload);
        f
    }

    const CAPS: Caps = Caps {
        streaming: 4,
        streaming_total: 4,
        in_flight: 2,
        in_flight_total: 8,
    };

    #[tokio::test]
    async fn passes_requests_drops_stray_data_and_pauses_at_the_cap() {
        let (mut host, agent) = tokio::io::duplex(1 << 16);
        let throttle = sockfwd_proto::log_throttle::LogThrottle::per_second();
        let books = Books::new(CAPS, Arc::new(Totals::default()), throttle, 1);
        let mut gate = Gate::new(agent, books.clone());
        let mut sent = Vec::new();
        sent.extend(frame_bytes(frame::REQUEST, 1, 0, b"first"));
        sent.extend(frame_bytes(
            frame::DATA,
            1,
            0,
            b"stray data: no call reads it",
        ));
        sent.extend(frame_bytes(frame::REQUEST, 3, 0, b"second"));
        sent.extend(frame_bytes(frame::REQUEST, 5, 0, b"third: waits"));
        // One byte at a time: headers split anywhere.
        for b in &sent {
            host.write_all(&[*b]).await.unwrap();
        }
        let want = [
            frame_bytes(frame::REQUEST, 1, 0, b"first"),
            frame_bytes(frame::REQUEST, 3, 0, b"second"),
        ]
        .concat();
        let mut got = vec![0u8; want.len()];
        gate.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);
        assert!(books.first_request().is_cancelled());
        // The third request is not handed over while two are unanswered.
        let mut one = [0u8; 1];
        // (It is all in the pipe already: a gate that did not pause would
        // answer at once.)
        assert!(
            futures::FutureExt::now_or_never(gate.read(&mut one)).is_none(),
            "read past the cap"
        );
        // An answer leaves (written in pieces, as ttrpc does): reading resumes.
        let answer = frame_bytes(frame::RESPONSE, 1, 0, b"ok");
        for piece in answer.chunks(3) {
            gate.write_all(piece).await.unwrap();
        }
        let third = frame_bytes(frame::REQUEST, 5, 0, b"third: waits");
        let mut got = vec![0u8; third.len()];
        gate.read_exact(&mut got).await.unwrap();
        assert_eq!(got, third);
        let mut echoed = vec![0u8; answer.len()];
        host.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, answer);
        // EOF passes through.
        drop(host);
        assert_eq!(gate.read(&mut one).await.unwrap(), 0);
    }
}
