//! The end-of-stream framing extension, for transports that lose a half-close.
//!
//! Some vsock devices drop a one-sided shutdown (Firecracker's hybrid vsock,
//! vhost-device-vsock close the whole connection; libkrun turns a host EOF into a
//! reset). On such a stream the two daemons agree, per stream, to carry the bytes
//! in frames instead: `u32` big-endian length, then that many bytes; a frame of
//! length 0 is end-of-stream for that direction. The socket itself is never
//! half-closed; it is closed once both directions have ended.
//!
//! Negotiation is additive: the agent lists what it can speak in
//! `ConnectRequest.framings` (a bit set of [`Framing::bit`]); the host picks one in
//! `ConnectResult.framing` before the guest reads a byte of the stream. A nerdbox
//! peer sends 0 on both and gets the contract's raw stream.

use crate::transport::Stream;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Reads `src` and writes frames to `dst`; an EOF on `src` becomes a 0-length
/// frame. The bytes carried are added to `moved` as they go.
pub(crate) async fn frame_out(
    src: &Stream,
    dst: &Stream,
    buffer_size: usize,
    moved: &AtomicU64,
) -> io::Result<()> {
    let chunk = buffer_size.clamp(1, MAX_FRAME);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let n = {
            let mut guard = src.readable().await?;
            if buf.is_empty() {
                buf = vec![0u8; 4 + chunk];
            }
            match guard.try_io(|_| src.try_read(&mut buf[4..])) {
                Ok(r) => r?,
                Err(_would_block) => {
                    buf = Vec::new();
                    continue;
                }
            }
        };
        let len = u32::try_from(n).map_err(|_| io::Error::other("frame too long"))?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        dst.write_all(&buf[..4 + n]).await?;
        if n == 0 {
            return Ok(());
        }
        moved.fetch_add(n as u64, Ordering::Relaxed);
    }
}

async fn read_exact(src: &Stream, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match src.read(buf).await? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream closed without an end-of-stream frame",
                ))
            }
            n => buf = &mut buf[n..],
        }
    }
    Ok(())
}

/// Reads frames from `src` and writes their bytes to `dst`; the 0-length frame
/// half-closes `dst`. A close without that frame is an abort (an error). The
/// bytes carried are added to `moved` as they go.
pub(crate) async fn frame_in(
    src: &Stream,
    dst: &Stream,
    buffer_size: usize,
    moved: &AtomicU64,
) -> io::Result<()> {
    let chunk = buffer_size.clamp(1, MAX_FRAME);
    loop {
        let mut header = [0u8; 4];
        read_exact(src, &mut header).await?;
        let len = u32::from_be_bytes(header) as usize;
        if len == 0 {
            dst.shutdown_write()?;
            return Ok(());
        }
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes exceeds the limit of {MAX_FRAME}"),
            ));
        }
        let mut buf = vec![0u8; len.min(chunk)];
        let mut left = len;
        while left > 0 {
            let take = left.min(buf.len());
            read_exact(src, &mut buf[..take]).await?;
            dst.write_all(&buf[..take]).await?;
            left -= take;
            moved.fetch_add(take as u64, Ordering::Relaxed);
        }
    }
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
}
