//! What a client asks the host server for, and where it connects.
//!
//! A connection opens with one byte saying what it is for:
//!
//! - a byte `>= 0x80`: an echo: the server writes that byte back, then waits
//!   for the client to close (the latency and rate figures);
//! - `U` and a little-endian u64 length: an upload; the server reads that many
//!   bytes, checks every one against the [`Pattern`](crate::pattern::Pattern),
//!   then answers `K` (all there and right) or `X`;
//! - `D` and a length: a download; the server writes that many pattern bytes.
//!
//! Lengths are explicit and nothing relies on a half-close, which does not
//! cross vhost-device-vsock's hybrid socket.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::sys;

/// First byte of an upload.
pub const UPLOAD: u8 = b'U';
/// First byte of a download.
pub const DOWNLOAD: u8 = b'D';
/// The server's answer to an upload that arrived whole and right.
pub const UPLOAD_OK: u8 = b'K';
/// The server's answer to an upload with wrong bytes.
pub const UPLOAD_BAD: u8 = b'X';
/// Smallest first byte that asks for an echo.
pub const ECHO_MIN: u8 = 0x80;

/// Where a client connects.
#[derive(Clone, Debug)]
pub enum Target {
    /// A Unix socket path.
    Unix(String),
    /// AF_VSOCK CID and port (guest only).
    Vsock(u32, u32),
}

impl Target {
    /// Parses `unix:PATH` or `vsock:CID:PORT`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Target::Unix(p.to_string()));
        }
        let bad = || format!("bad target {s:?} (unix:PATH or vsock:CID:PORT)");
        let rest = s.strip_prefix("vsock:").ok_or_else(bad)?;
        let (cid, port) = rest.split_once(':').ok_or_else(bad)?;
        Ok(Target::Vsock(
            cid.parse().map_err(|_| bad())?,
            port.parse().map_err(|_| bad())?,
        ))
    }

    /// A blocking connection with read and write timeouts.
    pub fn connect(&self, timeout: Duration) -> io::Result<File> {
        let f = match self {
            Target::Unix(p) => File::from(OwnedFd::from(UnixStream::connect(p)?)),
            Target::Vsock(cid, port) => sys::vsock_connect(*cid, *port)?,
        };
        sys::set_timeouts(f.as_raw_fd(), timeout)?;
        Ok(f)
    }
}

/// The 9-byte header of an upload or download of `len` bytes.
pub fn header(kind: u8, len: u64) -> [u8; 9] {
    let mut h = [0u8; 9];
    h[0] = kind;
    h[1..].copy_from_slice(&len.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert!(matches!(
            Target::parse("vsock:2:5000"),
            Ok(Target::Vsock(2, 5000))
        ));
        assert!(
            matches!(Target::parse("unix:/run/a.sock"), Ok(Target::Unix(p)) if p == "/run/a.sock")
        );
        Target::parse("vsock:2").unwrap_err();
        Target::parse("tcp:1").unwrap_err();
    }
}
