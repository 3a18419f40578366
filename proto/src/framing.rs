//! The end-of-stream framing extension, for transports that lose a half-close.
//!
//! Some vsock devices drop a one-sided shutdown (Firecracker's hybrid vsock,
//! vhost-device-vsock close the whole connection; libkrun turns a host EOF into a
//! reset). On such a stream the two daemons agree, per stream, to carry the bytes
//! in frames instead: `u32` big-endian length, then that many bytes; a frame of
//! length 0 is end-of-stream for that direction. The socket itself is never
//! half-closed; it is closed once both directions have ended (or, pooled, kept
//! for the next connection).
//!
//! Negotiation is additive: the agent lists what it can speak in
//! `ConnectRequest.framings` (a bit set of [`Framing::bit`]); the host picks one in
//! `ConnectResult.framing` before the guest reads a byte of the stream. A nerdbox
//! peer sends 0 on both and gets the contract's raw stream.
//!
//! A stream may carry one connection after another (a pre-opened stream in
//! EOF frames, [`crate::stream_pool`]): the next connection's bytes can follow
//! a direction's end frame at once, in the same socket buffer. The reader
//! therefore never reads past a frame's header: each read asks for the rest of
//! the current frame and the header after it, no more, so what follows the
//! end frame stays in the socket for the stream's next user.

use crate::copy::{pump, write_now, Flow};
use crate::transport::Stream;
use std::io;
use std::ops::Range;
use std::sync::atomic::AtomicU64;

/// Largest frame accepted from a peer: a hostile length costs at most this much.
pub const MAX_FRAME: usize = 1 << 20;

/// How a stream's bytes are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// The contract's raw byte stream; half-close is a socket shutdown.
    #[default]
    Raw,
    /// Length-prefixed frames with an explicit end-of-stream frame.
    EofFrames,
}

impl Framing {
    /// The wire value in `ConnectResult.framing`.
    pub fn wire(self) -> u32 {
        match self {
            Framing::Raw => 0,
            Framing::EofFrames => 1,
        }
    }

    /// This framing's bit in `ConnectRequest.framings` (0 for raw, always supported).
    pub fn bit(self) -> u32 {
        match self {
            Framing::Raw => 0,
            Framing::EofFrames => 1 << 0,
        }
    }

    /// Decodes `ConnectResult.framing`; `None` for a value this build does not know.
    pub fn from_wire(v: u32) -> Option<Framing> {
        match v {
            0 => Some(Framing::Raw),
            1 => Some(Framing::EofFrames),
            _ => None,
        }
    }

    /// Every framing this build can speak, as a `ConnectRequest.framings` bit set.
    pub fn supported_bits() -> u32 {
        Framing::EofFrames.bit()
    }
}

/// Largest frame the relay sends by default, header included: one vsock
/// packet (the virtio transport's largest, `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`),
/// and the credit window of vhost-device-vsock's default buffer. A frame of
/// 64 KiB of data plus its header would go out as two packets, the second of 4
/// bytes.
pub const DEFAULT_FRAME: usize = 64 << 10;

/// Frame header: the payload length.
const HEADER: usize = 4;
/// Reads `src` and writes frames to `dst`, each at most `frame` bytes header
/// included; an EOF on `src` becomes a 0-length frame. The bytes carried are
/// added to `moved` as they go.
pub(crate) async fn frame_out(
    src: &Stream,
    dst: &Stream,
    frame: usize,
    moved: &AtomicU64,
) -> io::Result<()> {
    let frame = frame.clamp(HEADER + 1, MAX_FRAME + HEADER);
    pump(src, dst, frame, moved, |buf| {
        let n = src.try_read(&mut buf[HEADER..])?;
        let len = u32::try_from(n).map_err(|_| io::Error::other("frame too long"))?;
        buf[..HEADER].copy_from_slice(&len.to_be_bytes());
        let w = write_now(dst, &buf[..HEADER + n])?;
        let rest = w..HEADER + n;
        Ok(if n == 0 {
            // The end frame, then nothing more in this direction.
            Flow::End { counted: 0, rest }
        } else {
            Flow::Moved {
                counted: n,
                drained: n < frame - HEADER,
                rest,
            }
        })
    })
    .await
}

/// Where [`frame_in`] is in the frame sequence.
#[derive(Debug, Default)]
struct Decoder {
    /// Header bytes seen of the next frame.
    header: [u8; HEADER],
    have: usize,
    /// Payload bytes still to come in the current frame.
    left: usize,
    /// The end frame was read.
    ended: bool,
}

impl Decoder {
    /// Most bytes the next read may take without going past a frame header:
    /// the rest of the current frame's payload and the header after it (that
    /// header is still this connection's: at worst it is the end frame).
    fn want(&self) -> usize {
        if self.left > 0 {
            self.left + HEADER
        } else {
            HEADER - self.have
        }
    }

    /// Decodes `data`, read as [`want`](Self::want) allowed: the range of
    /// `data` that is payload (always at its start), the rest being header.
    fn decode(&mut self, data: &[u8]) -> io::Result<Range<usize>> {
        debug_assert!(data.len() <= self.want(), "read past a frame header");
        let payload = self.left.min(data.len());
        self.left -= payload;
        let header = &data[payload..];
        self.header[self.have..self.have + header.len()].copy_from_slice(header);
        self.have += header.len();
        if self.have == HEADER {
            self.have = 0;
            let len = u32::from_be_bytes(self.header) as usize;
            if len > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("frame of {len} bytes exceeds the limit of {MAX_FRAME}"),
                ));
            }
            self.left = len;
            self.ended = len == 0;
        }
        Ok(0..payload)
    }
}

/// Reads frames from `src` (reads of up to `read_size`, never past a frame
/// header: see the module docs) and writes their bytes to `dst`; the 0-length
/// frame half-closes `dst`. A close without that frame is an abort (an
/// error). A frame's payload and the next header come in one read, and the
/// payload goes out at once. The bytes carried are added to `moved` as they go.
pub(crate) async fn frame_in(
    src: &Stream,
    dst: &Stream,
    read_size: usize,
    moved: &AtomicU64,
) -> io::Result<()> {
    let read_size = read_size.max(HEADER);
    let mut dec = Decoder::default();
    pump(src, dst, read_size, moved, |buf| {
        let want = dec.want().min(buf.len());
        let n = src.try_read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream closed without an end-of-stream frame",
            ));
        }
        let payload = dec.decode(&buf[..n])?;
        let w = if payload.is_empty() {
            0
        } else {
            write_now(dst, &buf[payload.clone()])?
        };
        let (counted, rest) = (payload.len(), payload.start + w..payload.end);
        Ok(if dec.ended {
            Flow::End { counted, rest }
        } else {
            Flow::Moved {
                counted,
                drained: n < want,
                rest,
            }
        })
    })
    .await?;
    dst.shutdown_write()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_are_stable() {
        assert_eq!(Framing::Raw.wire(), 0);
        assert_eq!(Framing::EofFrames.wire(), 1);
        assert_eq!(Framing::from_wire(1), Some(Framing::EofFrames));
        assert_eq!(Framing::from_wire(7), None);
        assert_eq!(Framing::supported_bits() & Framing::EofFrames.bit(), 1);
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (Stream, Stream) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        (Stream::from_unix(a).unwrap(), Stream::from_unix(b).unwrap())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect()
    }

    /// Frames `data` in frames of 1, 2, ... `cycle` bytes, then the end frame.
    fn tiny_frames(data: &[u8], cycle: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        let (mut pos, mut len) = (0, 1);
        while pos < data.len() {
            let take = len.min(data.len() - pos);
            wire.extend_from_slice(&u32::try_from(take).unwrap().to_be_bytes());
            wire.extend_from_slice(&data[pos..pos + take]);
            pos += take;
            len = len % cycle + 1;
        }
        wire.extend_from_slice(&[0, 0, 0, 0]);
        wire
    }

    /// Runs [`frame_in`] from `stream` to `local` with reads of up to
    /// `read_size`; the bytes it counted.
    async fn unframe(stream: &Stream, local: &Stream, read_size: usize) -> io::Result<u64> {
        let moved = AtomicU64::new(0);
        frame_in(stream, local, read_size, &moved).await?;
        Ok(moved.into_inner())
    }

    /// Many tiny frames, and a reader that starts late, so the destination
    /// fills up and the rest of a read is kept: every byte arrives, in order,
    /// then the half-close.
    #[tokio::test]
    async fn tiny_frames_and_a_full_destination_lose_nothing() {
        let data = pattern(1_000_000);
        let wire = tiny_frames(&data, 7);
        let (peer, stream) = pair();
        let (local, mut client) = pair();
        let relay = tokio::spawn(async move { unframe(&stream, &local, 256 << 10).await });
        let writer = tokio::spawn(async move {
            peer.write_all(&wire).await.unwrap();
            peer
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(
            got == data,
            "bytes differ (got {} of {})",
            got.len(),
            data.len()
        );
        assert_eq!(relay.await.unwrap().unwrap(), data.len() as u64);
        drop(writer.await.unwrap());
    }

    /// A reused stream: the next connection's bytes sit right behind the end
    /// frame, already in the socket when the reader starts. The reader stops
    /// at the end frame and leaves them there, whatever its read size.
    #[tokio::test]
    async fn bytes_after_the_end_frame_stay_in_the_stream() {
        let next = b"\0\0\0\x05next!and the next connection's own bytes";
        for (size, read_size) in [(10, 1 << 10), (200_000, 256 << 10), (70_000, 64 << 10)] {
            let data = pattern(size);
            let mut wire = Vec::new();
            for chunk in data.chunks(65_532) {
                wire.extend_from_slice(&u32::try_from(chunk.len()).unwrap().to_be_bytes());
                wire.extend_from_slice(chunk);
            }
            wire.extend_from_slice(&[0, 0, 0, 0]);
            wire.extend_from_slice(next);
            let (peer, mut stream) = pair();
            let (local, mut client) = pair();
            let writer = tokio::spawn(async move {
                peer.write_all(&wire).await.unwrap();
                peer
            });
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                client.read_to_end(&mut got).await.unwrap();
                got
            });
            assert_eq!(
                unframe(&stream, &local, read_size).await.unwrap(),
                size as u64
            );
            drop(local);
            assert!(reader.await.unwrap() == data, "{size}: payload differs");
            let peer = writer.await.unwrap();
            drop(peer);
            let mut after = Vec::new();
            stream.read_to_end(&mut after).await.unwrap();
            assert_eq!(after, next, "{size}: what follows the end frame");
        }
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_an_error() {
        let (peer, stream) = pair();
        let (local, _client) = pair();
        let over = u32::try_from(MAX_FRAME + 1).unwrap().to_be_bytes();
        peer.write_all(&over).await.unwrap();
        let err = unframe(&stream, &local, 64 << 10).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn a_close_without_the_end_frame_is_an_abort() {
        let (peer, stream) = pair();
        let (local, _client) = pair();
        peer.write_all(&[0, 0, 0, 3, b'a', b'b']).await.unwrap();
        drop(peer);
        let err = unframe(&stream, &local, 64 << 10).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    /// Every frame is at most `frame` bytes, header included (one vsock
    /// packet), whatever the reads return, and the bytes arrive whole.
    #[tokio::test]
    async fn frames_fit_the_frame_size() {
        const FRAME: usize = 4096;
        let data = pattern(200_000);
        let (mut client, local) = pair();
        let (stream, mut peer) = pair();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let relay = tokio::spawn(async move {
            let moved = AtomicU64::new(0);
            frame_out(&local, &stream, FRAME, &moved).await?;
            io::Result::Ok(moved.into_inner())
        });
        let mut wire = Vec::new();
        peer.read_to_end(&mut wire).await.unwrap();
        assert_eq!(relay.await.unwrap().unwrap(), data.len() as u64);
        drop(writer.await.unwrap());
        let (mut pos, mut payload, mut full) = (0, Vec::new(), 0);
        while pos < wire.len() {
            let len = u32::from_be_bytes(wire[pos..pos + 4].try_into().unwrap()) as usize;
            assert!(HEADER + len <= FRAME, "a frame of {len} bytes");
            full += usize::from(HEADER + len == FRAME);
            let end = pos + 4 + len;
            if len == 0 {
                assert_eq!(end, wire.len(), "nothing after the end frame");
            }
            payload.extend_from_slice(&wire[pos + 4..end]);
            pos = end;
        }
        assert!(full > 0, "reads of a bulk transfer fill whole frames");
        assert!(payload == data, "payload differs");
    }
}
