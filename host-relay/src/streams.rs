//! Opening a stream: one connection to the guest's stream port, with the
//! stream-ID handshake, for one forwarded connection of either direction.
//! Host sockets are dialed here too ([`dial_patiently`]), waiting out a full
//! listen backlog.

use sockfwd_proto::handshake::{self, HandshakeError};
use sockfwd_proto::transport::{dial, Address, DialError, Stream};
use std::time::Duration;
use thiserror::Error;
use tokio::time::{sleep, timeout, Instant};

/// Longest wait between connect attempts on a full listen backlog.
const BACKLOG_PAUSE_MAX: Duration = Duration::from_millis(50);

/// Why a stream connection could not be opened.
#[derive(Debug, Error)]
pub enum StreamError {
    /// The stream port could not be reached.
    #[error("opening a stream connection")]
    Dial(#[source] DialError),
    /// The guest refused or botched the handshake.
    #[error("stream handshake")]
    Handshake(#[source] HandshakeError),
    /// Dial and handshake together took too long.
    #[error("opening the stream timed out after {0:?}")]
    Timeout(Duration),
}

/// [`dial`], waiting out a full listen backlog: a nonblocking Unix connect fails
/// with EAGAIN where a blocking one would wait, and a burst of connections (a
/// thousand at once) fills a host server's backlog easily.
pub(crate) async fn dial_patiently(addr: &Address, limit: Duration) -> Result<Stream, DialError> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match dial(addr, left).await {
            Err(DialError::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock
                    && Instant::now() + pause < deadline =>
            {
                sleep(pause).await;
                pause = (pause * 2).min(BACKLOG_PAUSE_MAX);
            }
            other => return other,
        }
    }
}

/// Dials the guest's stream port and completes the handshake for `id`; with
/// `early`, only sends the ID (the caller reads the acknowledgement after
/// sending its result: the early-result extension, `sockfwd_proto::features`).
pub(crate) async fn open_stream(
    addr: &Address,
    id: &str,
    limit: Duration,
    early: bool,
) -> Result<Stream, StreamError> {
    let open = async {
        let mut s = dial_patiently(addr, limit)
            .await
            .map_err(StreamError::Dial)?;
        if early {
            handshake::send_id(&mut s, id, limit).await
        } else {
            handshake::open(&mut s, id, limit).await
        }
        .map_err(StreamError::Handshake)?;
        Ok(s)
    };
    timeout(limit, open)
        .await
        .unwrap_or(Err(StreamError::Timeout(limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_backlog_is_waited_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        let sock = tokio::net::UnixSocket::new_stream().unwrap();
        sock.bind(&path).unwrap();
        let listener = sock.listen(1).unwrap();
        let addr = Address::Unix(path);
        // Fill the backlog until a plain dial sees EAGAIN.
        let mut queued = Vec::new();
        let refused = loop {
            match dial(&addr, Duration::from_secs(1)).await {
                Ok(s) => queued.push(s),
                Err(e) => break e,
            }
            assert!(queued.len() < 100, "the backlog never filled");
        };
        assert!(
            matches!(&refused, DialError::Connect { source, .. } if source.kind() == std::io::ErrorKind::WouldBlock),
            "{refused}"
        );
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            while listener.accept().await.is_ok() {}
        });
        dial_patiently(&addr, Duration::from_secs(5)).await.unwrap();
    }
}
