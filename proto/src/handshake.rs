//! The streams-channel handshake, both sides.
//!
//! Every forwarded connection is its own connection to the guest's stream port:
//!
//! 1. the host writes a `u32` big-endian length, then that many bytes of stream ID;
//! 2. the guest registers the connection under that ID and answers with the same
//!    length-prefixed ID; if the ID is already registered it answers with a
//!    length-prefixed error message (`stream "<id>" already exists`) and closes;
//! 3. the host compares the answer with what it sent: equal means ready, anything
//!    else is the guest's error text.
//!
//! Unlike the reference, every read here is bounded in length and in time, so a
//! hostile or stalled peer costs one task and a few bytes, never the accept loop.
//! Both sides hold the ID to the stream-ID rule ([`crate::stream_id::check`]).

use crate::log_text::escape_clipped;
use crate::stream_id::{self, StreamIdError};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default bound on a stream ID's length: the rule's ([`stream_id::MAX_LEN`]).
pub const DEFAULT_MAX_ID_LEN: usize = stream_id::MAX_LEN;
/// Bound on the guest's error text the host is willing to read.
pub const MAX_REPLY_LEN: usize = 4096;
/// How much of the guest's refusal text its error message shows, in characters.
const REFUSAL_SHOWN: usize = 512;
/// Default deadline for each side of the handshake.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a handshake failed.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The peer did not finish its part in time.
    #[error("stream handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The socket failed while reading or writing the handshake.
    #[error("stream handshake i/o")]
    Io(#[source] std::io::Error),
    /// The announced length is above the bound; nothing of it was allocated.
    #[error("stream ID length {len} exceeds the limit of {max} bytes")]
    TooLong {
        /// The length the peer announced.
        len: u32,
        /// The configured bound.
        max: usize,
    },
    /// The stream ID breaks the stream-ID rule (empty, not printable ASCII).
    #[error("invalid stream ID")]
    BadId(#[source] StreamIdError),
    /// The guest answered with something other than the ID: its error text
    /// (shown escaped and clipped: it is the peer's).
    #[error("guest refused the stream: {}", escape_clipped(.0, REFUSAL_SHOWN))]
    Refused(String),
}

/// The text the guest sends when an ID is already registered (the reference's wording).
pub fn duplicate_message(id: &str) -> String {
    format!("stream \"{id}\" already exists")
}

async fn write_frame<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too long"))?;
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(bytes);
    // One write: the peer reads the length and the ID in one go on most transports.
    s.write_all(&frame).await?;
    s.flush().await
}

/// Reads one length-prefixed frame, refusing lengths above `max` before allocating.
async fn read_frame<S: AsyncRead + Unpin>(
    s: &mut S,
    max: usize,
) -> Result<Vec<u8>, HandshakeError> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.map_err(HandshakeError::Io)?;
    let len = u32::from_be_bytes(len);
    if len as usize > max {
        return Err(HandshakeError::TooLong { len, max });
    }
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf).await.map_err(HandshakeError::Io)?;
    Ok(buf)
}

async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, HandshakeError>>,
) -> Result<T, HandshakeError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Err(HandshakeError::Timeout(timeout)))
}

/// Writes one frame within `timeout`: every one-way step of the handshake.
async fn write_bounded<S: AsyncWrite + Unpin>(
    s: &mut S,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), HandshakeError> {
    bounded(timeout, async {
        write_frame(s, bytes).await.map_err(HandshakeError::Io)
    })
    .await
}

/// Host side: sends `id` and waits for the guest's acknowledgement.
pub async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    id: &str,
    timeout: Duration,
) -> Result<(), HandshakeError> {
    stream_id::check(id).map_err(HandshakeError::BadId)?;
    bounded(timeout, async {
        write_frame(s, id.as_bytes())
            .await
            .map_err(HandshakeError::Io)?;
        read_ack(s, id).await
    })
    .await
}

/// Host side, first half of [`open`]: sends `id` without waiting for the answer
/// (for a guest that accepts the early-result extension, `crate::features`).
pub async fn send_id<S: AsyncWrite + Unpin>(
    s: &mut S,
    id: &str,
    timeout: Duration,
) -> Result<(), HandshakeError> {
    stream_id::check(id).map_err(HandshakeError::BadId)?;
    write_bounded(s, id.as_bytes(), timeout).await
}

/// Host side, second half of [`open`]: reads the guest's answer to `id`.
pub async fn await_ack<S: AsyncRead + Unpin>(
    s: &mut S,
    id: &str,
    timeout: Duration,
) -> Result<(), HandshakeError> {
    bounded(timeout, read_ack(s, id)).await
}

async fn read_ack<S: AsyncRead + Unpin>(s: &mut S, id: &str) -> Result<(), HandshakeError> {
    let reply = read_frame(s, MAX_REPLY_LEN.max(id.len())).await?;
    if reply == id.as_bytes() {
        Ok(())
    } else {
        Err(HandshakeError::Refused(
            String::from_utf8_lossy(&reply).into_owned(),
        ))
    }
}

/// An ID frame's bytes as a stream ID, if they obey the rule.
fn to_id(bytes: Vec<u8>) -> Result<String, HandshakeError> {
    stream_id::check_bytes(&bytes).map_err(HandshakeError::BadId)?;
    // Printable ASCII is UTF-8; the lossy conversion never replaces anything here.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Guest side: reads the stream ID the host sent, bounded by `max_len` and
/// `timeout`, and holds it to the stream-ID rule.
pub async fn read_id<S: AsyncRead + Unpin>(
    s: &mut S,
    max_len: usize,
    timeout: Duration,
) -> Result<String, HandshakeError> {
    bounded(timeout, async { to_id(read_frame(s, max_len).await?) }).await
}

/// Guest side: acknowledges `id` (the stream is registered).
pub async fn accept<S: AsyncWrite + Unpin>(
    s: &mut S,
    id: &str,
    timeout: Duration,
) -> Result<(), HandshakeError> {
    write_bounded(s, id.as_bytes(), timeout).await
}

/// Guest side: refuses the stream with `message` (the caller closes the connection).
pub async fn refuse<S: AsyncWrite + Unpin>(
    s: &mut S,
    message: &str,
    timeout: Duration,
) -> Result<(), HandshakeError> {
    write_bounded(s, message.as_bytes(), timeout).await
}

/// Parses one frame from a byte slice: what [`read_id`] would do, without I/O.
/// Used by fuzz and property tests of the decoder.
pub fn decode_id(bytes: &[u8], max_len: usize) -> Result<Option<String>, HandshakeError> {
    let Some(len) = bytes.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    if len as usize > max_len {
        return Err(HandshakeError::TooLong { len, max: max_len });
    }
    let Some(id) = bytes.get(4..4 + len as usize) else {
        return Ok(None);
    };
    to_id(id.to_vec()).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn round_trip() {
        let (mut host, mut guest) = duplex(1024);
        let guest_side = tokio::spawn(async move {
            let id = read_id(&mut guest, DEFAULT_MAX_ID_LEN, DEFAULT_TIMEOUT).await?;
            accept(&mut guest, &id, DEFAULT_TIMEOUT).await?;
            Ok::<_, HandshakeError>(id)
        });
        open(&mut host, "socketfwd-1-abcdef", DEFAULT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(guest_side.await.unwrap().unwrap(), "socketfwd-1-abcdef");
    }

    #[tokio::test]
    async fn wire_bytes_are_length_prefixed_big_endian() {
        let (mut host, mut guest) = duplex(1024);
        let opener = tokio::spawn(async move { open(&mut host, "ab", DEFAULT_TIMEOUT).await });
        let mut got = [0u8; 6];
        guest.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0, 0, 0, 2, b'a', b'b']);
        guest.write_all(&got).await.unwrap();
        opener.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn refusal_text_reaches_the_host() {
        let (mut host, mut guest) = duplex(1024);
        tokio::spawn(async move {
            let id = read_id(&mut guest, DEFAULT_MAX_ID_LEN, DEFAULT_TIMEOUT)
                .await
                .unwrap();
            refuse(&mut guest, &duplicate_message(&id), DEFAULT_TIMEOUT)
                .await
                .unwrap();
        });
        let err = open(&mut host, "dup", DEFAULT_TIMEOUT).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest refused the stream: stream \"dup\" already exists"
        );
    }

    #[tokio::test]
    async fn huge_length_is_refused_without_allocating() {
        let (mut host, mut guest) = duplex(1024);
        host.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_id(&mut guest, DEFAULT_MAX_ID_LEN, DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                HandshakeError::TooLong {
                    len: u32::MAX,
                    max: 256
                }
            ),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (_host, mut guest) = duplex(1024);
        let err = read_id(&mut guest, DEFAULT_MAX_ID_LEN, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, HandshakeError::Timeout(_)), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn length_without_bytes_times_out() {
        let (mut host, mut guest) = duplex(1024);
        host.write_all(&10u32.to_be_bytes()).await.unwrap();
        let err = read_id(&mut guest, DEFAULT_MAX_ID_LEN, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, HandshakeError::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn truncated_frame_is_an_io_error() {
        let (mut host, mut guest) = duplex(1024);
        host.write_all(&[0, 0, 0, 10, b'x']).await.unwrap();
        drop(host);
        let err = read_id(&mut guest, DEFAULT_MAX_ID_LEN, DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, HandshakeError::Io(_)), "{err}");
    }

    #[test]
    fn decoder_cases() {
        assert!(decode_id(&[0, 0], 256).unwrap().is_none());
        assert!(decode_id(&[0, 0, 0, 3, b'a'], 256).unwrap().is_none());
        assert_eq!(
            decode_id(&[0, 0, 0, 1, b'a'], 256).unwrap().as_deref(),
            Some("a")
        );
        assert!(matches!(
            decode_id(&[0, 0, 0, 0], 256),
            Err(HandshakeError::BadId(StreamIdError::Empty))
        ));
        assert!(matches!(
            decode_id(&[0, 0, 1, 1], 256),
            Err(HandshakeError::TooLong { .. })
        ));
        assert!(matches!(
            decode_id(&[0, 0, 0, 1, 0xff], 256),
            Err(HandshakeError::BadId(StreamIdError::NotPrintable { .. }))
        ));
        assert!(matches!(
            decode_id(&[0, 0, 0, 3, b'a', b' ', b'b'], 256),
            Err(HandshakeError::BadId(StreamIdError::NotPrintable {
                at: 1,
                ..
            }))
        ));
    }

    #[tokio::test]
    async fn the_host_side_refuses_to_send_an_id_that_breaks_the_rule() {
        let (mut host, _guest) = duplex(1024);
        for bad in ["", "a b", "a\nb"] {
            let err = open(&mut host, bad, DEFAULT_TIMEOUT).await.unwrap_err();
            assert!(matches!(err, HandshakeError::BadId(_)), "{err}");
            let err = send_id(&mut host, bad, DEFAULT_TIMEOUT).await.unwrap_err();
            assert!(matches!(err, HandshakeError::BadId(_)), "{err}");
        }
    }
}
