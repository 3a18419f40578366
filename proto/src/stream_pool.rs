//! Pre-opened streams (an extension, Info name [`crate::info::STREAM_POOL`];
//! wire-protocol 8.11): the rules and the in-band messages both sides share.
//!
//! The host asks for a pool on its control connection (`StreamPool`, with a
//! [token](generate_token)), then opens streams ahead of demand whose IDs are
//! `<token>-<n>` ([`stream_id`]); the agent parks them instead of registering
//! them for a claim. A guest client takes a parked stream without a
//! `ConnectRequest`:
//!
//! 1. the agent writes the **header**, the forward ID as one frame (a `u32`
//!    big-endian length, 1 to 128, then the ID), and may follow it at once
//!    with the client's first bytes in the pool's framing ([`write_opening`],
//!    [`write_early`]): the connection's bytes start right after the header;
//! 2. the host resolves that ID in its own table only, applies its caps,
//!    dials its target and answers with the **verdict**, one frame: length 0
//!    for success, else up to [`MAX_VERDICT_LEN`] bytes of error text
//!    ([`write_verdict`]), after which it closes. It reads nothing past the
//!    header before a success verdict, so bytes the agent sent early reach
//!    the target only if the verdict was written;
//! 3. on success, both relay the connection's bytes with the pool's framing,
//!    host to guest from the first byte after the verdict.
//!
//! Every read is exact (nothing past the frame is consumed: the connection's
//! bytes follow it at once) and bounded in length and in time.

use crate::forward_id::{self, ForwardIdError};
use crate::framing::Framing;
use crate::transport::Stream;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use std::io;
use std::time::Duration;
use thiserror::Error;

/// Shortest pool token, in bytes: enough randomness that a host's pools never meet.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest pool token, in bytes.
pub const MAX_TOKEN_LEN: usize = 64;
/// The handshake answer for a pooled stream beyond its pool's `max`.
pub const POOL_FULL: &str = "stream pool full";
/// Longest verdict text read, in bytes; a longer announced length is an error.
pub const MAX_VERDICT_LEN: usize = 1024;

/// Why a pool token breaks the rule (`StreamPoolRequest.token`).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Shorter than [`MIN_TOKEN_LEN`] or longer than [`MAX_TOKEN_LEN`].
    #[error("pool token is {len} bytes; it must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN}")]
    Length {
        /// Its length in bytes.
        len: usize,
    },
    /// A byte outside `A-Z a-z 0-9 _ -`.
    #[error("pool token has byte {byte:#04x} at offset {at}; allowed are A-Z a-z 0-9 _ -")]
    BadByte {
        /// Offset of the first such byte.
        at: usize,
        /// The byte.
        byte: u8,
    },
}

/// Checks a pool token: [`MIN_TOKEN_LEN`] to [`MAX_TOKEN_LEN`] bytes of
/// `A-Z a-z 0-9 _ -`, so `<token>-<n>` always obeys the stream-ID rule.
pub fn check_token(token: &str) -> Result<(), TokenError> {
    let len = token.len();
    if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&len) {
        return Err(TokenError::Length { len });
    }
    match token
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        Some(at) => Err(TokenError::BadByte {
            at,
            byte: token.as_bytes()[at],
        }),
        None => Ok(()),
    }
}

/// A fresh token: `pool_` and 18 random bytes in base64url (29 bytes).
pub fn generate_token() -> String {
    let mut random = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut random);
    format!("pool_{}", URL_SAFE_NO_PAD.encode(random))
}

/// The ID of pooled stream number `n` of the pool named `token`.
pub fn stream_id(token: &str, n: u64) -> String {
    format!("{token}-{n}")
}

/// The token of a pooled stream's ID (`<token>-<digits>`), or `None` when the
/// ID has no such form (an ordinary stream).
pub fn token_of(id: &str) -> Option<&str> {
    let (token, n) = id.rsplit_once('-')?;
    let digits = !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit());
    (digits && check_token(token).is_ok()).then_some(token)
}

/// Waits until a parked stream has something to read for real: the header's
/// first byte (host side), or an EOF or error (either side: nothing else
/// arrives on a parked stream). Readiness left over from the handshake's reads
/// does not count: each wake-up is checked with a peek.
pub async fn readable(s: &Stream) {
    let mut byte = [0u8; 1];
    loop {
        let Ok(mut guard) = s.readable().await else {
            return;
        };
        // WouldBlock clears the stale readiness and waits again.
        if guard.try_io(|_| s.try_peek(&mut byte)).is_ok() {
            return;
        }
    }
}

/// Why a header or verdict could not be read or written.
#[derive(Debug, Error)]
pub enum PoolWireError {
    /// The peer closed the stream before the frame's first byte.
    #[error("the stream closed before its first frame")]
    Closed,
    /// The frame did not arrive (or could not be written) in time.
    #[error("the stream's frame took longer than {0:?}")]
    Timeout(Duration),
    /// The socket failed, or closed within the frame.
    #[error("stream i/o")]
    Io(#[source] io::Error),
    /// The header announces a length outside 1 to 128.
    #[error("header length {0} is not a forward ID's (1 to 128)")]
    HeaderLength(u32),
    /// The header's forward ID breaks the forward-ID rule.
    #[error("header names an invalid forward ID")]
    ForwardId(#[source] ForwardIdError),
    /// The verdict announces more than [`MAX_VERDICT_LEN`] bytes.
    #[error("verdict length {0} exceeds the limit of {MAX_VERDICT_LEN}")]
    VerdictLength(u32),
}

/// One frame: length, then bytes, in one buffer (one write).
fn frame(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(out)
}

async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, PoolWireError>>,
) -> Result<T, PoolWireError> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(PoolWireError::Timeout(limit)))
}

/// Fills `buf` exactly; `Ok(false)` when the stream ended before its first byte.
async fn read_exact(s: &Stream, buf: &mut [u8]) -> Result<bool, PoolWireError> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]).await.map_err(PoolWireError::Io)? {
            0 if got == 0 => return Ok(false),
            0 => {
                return Err(PoolWireError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream closed within a frame",
                )))
            }
            n => got += n,
        }
    }
    Ok(true)
}

/// Reads one frame's length, then at most `max` bytes of it, exactly.
async fn read_frame(
    s: &Stream,
    too_long: impl FnOnce(u32) -> Option<PoolWireError>,
) -> Result<Vec<u8>, PoolWireError> {
    let mut len = [0u8; 4];
    if !read_exact(s, &mut len).await? {
        return Err(PoolWireError::Closed);
    }
    let len = u32::from_be_bytes(len);
    if let Some(e) = too_long(len) {
        return Err(e);
    }
    let mut bytes = vec![0u8; len as usize];
    if !read_exact(s, &mut bytes).await? && len > 0 {
        return Err(PoolWireError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(bytes)
}

/// `early`, the client's first bytes, as the pool's framing carries them.
fn carried(framing: Framing, early: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    match framing {
        Framing::Raw => out.extend_from_slice(early),
        Framing::EofFrames if early.is_empty() => {}
        Framing::EofFrames => out.extend_from_slice(&frame(early)?),
    }
    Ok(())
}

/// Agent side: names the forward on a pooled stream and sends `early`, the
/// client's first bytes (may be empty), in one write.
pub async fn write_opening(
    s: &Stream,
    forward_id: &str,
    framing: Framing,
    early: &[u8],
    limit: Duration,
) -> Result<(), PoolWireError> {
    let mut bytes = frame(forward_id.as_bytes()).map_err(PoolWireError::Io)?;
    carried(framing, early, &mut bytes).map_err(PoolWireError::Io)?;
    bounded(limit, async {
        s.write_all(&bytes).await.map_err(PoolWireError::Io)
    })
    .await
}

/// Agent side: the client's first bytes, when they came after the header.
pub async fn write_early(
    s: &Stream,
    framing: Framing,
    early: &[u8],
    limit: Duration,
) -> Result<(), PoolWireError> {
    let mut bytes = Vec::with_capacity(4 + early.len());
    carried(framing, early, &mut bytes).map_err(PoolWireError::Io)?;
    bounded(limit, async {
        s.write_all(&bytes).await.map_err(PoolWireError::Io)
    })
    .await
}
/// Host side: reads the header (the caller waited for its first byte), within
/// `limit`, and holds the forward ID to the forward-ID rule. `Closed`: the
/// agent closed the parked stream.
pub async fn read_header(s: &Stream, limit: Duration) -> Result<String, PoolWireError> {
    let max = forward_id::MAX_LEN;
    bounded(limit, async {
        let bytes = read_frame(s, |len| {
            (len == 0 || len as usize > max).then_some(PoolWireError::HeaderLength(len))
        })
        .await?;
        let id = String::from_utf8_lossy(&bytes).into_owned();
        forward_id::check(&id).map_err(PoolWireError::ForwardId)?;
        Ok(id)
    })
    .await
}

/// Host side: the verdict, `""` for success (the connection's bytes follow),
/// else the error text (clipped to [`MAX_VERDICT_LEN`] bytes).
pub async fn write_verdict(s: &Stream, error: &str, limit: Duration) -> Result<(), PoolWireError> {
    let mut end = error.len().min(MAX_VERDICT_LEN);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = frame(&error.as_bytes()[..end]).map_err(PoolWireError::Io)?;
    bounded(limit, async {
        s.write_all(&bytes).await.map_err(PoolWireError::Io)
    })
    .await
}

/// What the host answered a header with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The host is connected: relay.
    Accepted,
    /// The host refused; its text (the peer's: escape it for logs).
    Refused(String),
}

/// Agent side: reads the verdict within `limit`, consuming nothing after it.
pub async fn read_verdict(s: &Stream, limit: Duration) -> Result<Verdict, PoolWireError> {
    bounded(limit, async {
        let bytes = read_frame(s, |len| {
            (len as usize > MAX_VERDICT_LEN).then_some(PoolWireError::VerdictLength(len))
        })
        .await?;
        Ok(if bytes.is_empty() {
            Verdict::Accepted
        } else {
            Verdict::Refused(String::from_utf8_lossy(&bytes).into_owned())
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream_id as sid;

    fn pair() -> (Stream, Stream) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        (Stream::from_unix(a).unwrap(), Stream::from_unix(b).unwrap())
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn tokens_and_pooled_ids() {
        let token = generate_token();
        assert_eq!(check_token(&token), Ok(()), "{token}");
        assert_ne!(token, generate_token());
        let id = stream_id(&token, 7);
        assert_eq!(sid::check(&id), Ok(()));
        assert_eq!(token_of(&id), Some(token.as_str()));
        let longest = stream_id(&"t".repeat(MAX_TOKEN_LEN), u64::MAX);
        assert_eq!(sid::check(&longest), Ok(()));
        assert_eq!(token_of(&longest).map(str::len), Some(MAX_TOKEN_LEN));
        // Ordinary stream IDs, as both sides generate them, are never pooled.
        for plain in [
            sid::generate(sid::SOCKET_FORWARD_PREFIX),
            "socketfwd-1732406400123456789-q83vEg".to_owned(),
            format!("{token}-"),
            format!("{token}-1x"),
            "short-1".to_owned(),
            token.clone(),
        ] {
            assert_eq!(token_of(&plain), None, "{plain}");
        }
        assert_eq!(
            check_token("a b c d e f g h i"),
            Err(TokenError::BadByte { at: 1, byte: b' ' })
        );
        assert_eq!(check_token("x"), Err(TokenError::Length { len: 1 }));
        assert!(check_token(&"x".repeat(MAX_TOKEN_LEN + 1)).is_err());
    }

    #[tokio::test]
    async fn header_then_verdict_then_bytes_are_not_consumed() {
        let (agent, host) = pair();
        write_opening(&agent, "web.1", Framing::Raw, b"first ", T)
            .await
            .unwrap();
        // The client's bytes right behind the header stay for the relay.
        write_early(&agent, Framing::Raw, b"bytes", T)
            .await
            .unwrap();
        assert_eq!(read_header(&host, T).await.unwrap(), "web.1");
        write_verdict(&host, "", T).await.unwrap();
        host.write_all(b"reply").await.unwrap();
        assert_eq!(read_verdict(&agent, T).await.unwrap(), Verdict::Accepted);
        let mut buf = [0u8; 11];
        assert_eq!(host.read(&mut buf).await.unwrap(), 11);
        assert_eq!(&buf, b"first bytes");
        let mut buf = [0u8; 5];
        assert_eq!(agent.read(&mut buf).await.unwrap(), 5);
        assert_eq!(&buf, b"reply");
    }

    #[tokio::test]
    async fn wire_bytes() {
        let (agent, host) = pair();
        write_opening(&agent, "ab", Framing::Raw, b"", T)
            .await
            .unwrap();
        let mut got = [0u8; 6];
        assert_eq!(host.read(&mut got).await.unwrap(), 6);
        assert_eq!(got, [0, 0, 0, 2, b'a', b'b']);
        // Early bytes in EOF frames: a frame right behind the header; an empty
        // early write sends nothing (an empty frame would end the direction).
        write_opening(&agent, "ab", Framing::EofFrames, b"xyz", T)
            .await
            .unwrap();
        write_early(&agent, Framing::EofFrames, b"", T)
            .await
            .unwrap();
        write_early(&agent, Framing::EofFrames, b"!", T)
            .await
            .unwrap();
        let mut got = [0u8; 18];
        let mut n = 0;
        while n < got.len() {
            n += host.read(&mut got[n..]).await.unwrap();
        }
        assert_eq!(
            got,
            [0, 0, 0, 2, b'a', b'b', 0, 0, 0, 3, b'x', b'y', b'z', 0, 0, 0, 1, b'!']
        );
        write_verdict(&host, "no", T).await.unwrap();
        let mut got = [0u8; 6];
        assert_eq!(agent.read(&mut got).await.unwrap(), 6);
        assert_eq!(got, [0, 0, 0, 2, b'n', b'o']);
    }

    #[tokio::test]
    async fn a_refusal_carries_its_text_clipped() {
        let (agent, host) = pair();
        write_verdict(&host, "unknown forward ID: x", T)
            .await
            .unwrap();
        assert_eq!(
            read_verdict(&agent, T).await.unwrap(),
            Verdict::Refused("unknown forward ID: x".into())
        );
        write_verdict(&host, &"é".repeat(MAX_VERDICT_LEN), T)
            .await
            .unwrap();
        match read_verdict(&agent, T).await.unwrap() {
            Verdict::Refused(t) => assert_eq!(t.len(), MAX_VERDICT_LEN),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn hostile_frames_are_refused_before_allocating() {
        let (agent, host) = pair();
        agent.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_header(&host, T).await,
            Err(PoolWireError::HeaderLength(u32::MAX))
        ));
        agent.write_all(&[0, 0, 0, 0]).await.unwrap();
        assert!(matches!(
            read_header(&host, T).await,
            Err(PoolWireError::HeaderLength(0))
        ));
        agent
            .write_all(&[0, 0, 0, 3, b'a', b'/', b'b'])
            .await
            .unwrap();
        assert!(matches!(
            read_header(&host, T).await,
            Err(PoolWireError::ForwardId(_))
        ));
        host.write_all(&[0, 0, 0x10, 0]).await.unwrap();
        assert!(matches!(
            read_verdict(&agent, T).await,
            Err(PoolWireError::VerdictLength(4096))
        ));
    }

    #[tokio::test]
    async fn a_closed_stream_is_told_apart_from_a_cut_frame() {
        let (agent, host) = pair();
        drop(agent);
        assert!(matches!(
            read_header(&host, T).await,
            Err(PoolWireError::Closed)
        ));
        let (agent, host) = pair();
        host.write_all(&[0, 0, 0, 9, b'x']).await.unwrap();
        drop(host);
        assert!(matches!(
            read_verdict(&agent, T).await,
            Err(PoolWireError::Io(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out() {
        let (agent, _host) = pair();
        assert!(matches!(
            read_verdict(&agent, Duration::from_secs(3)).await,
            Err(PoolWireError::Timeout(_))
        ));
        // A header started and never finished.
        let (agent, host) = pair();
        agent.write_all(&[0, 0]).await.unwrap();
        assert!(matches!(
            read_header(&host, Duration::from_secs(3)).await,
            Err(PoolWireError::Timeout(_))
        ));
    }
}
