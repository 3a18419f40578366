//! One `ConnectRequest`, from the Accept loop to the end of its relay.
//!
//! In the Accept loop (synchronous, no task yet): check the stream ID, resolve the
//! forward ID in our own table, apply the caps; refusals are answered right there,
//! so a flood costs no tasks. Admitted requests get a task on the tracker that
//! dials the host socket and opens the stream at the same time, sends the result
//! only once both are up, then relays until both directions end.

use crate::framing::choose;
use crate::limits::Permit;
use crate::report::chain;
use crate::session::CallError;
use crate::{forwards::ForwardEntry, Shared};
use sockfwd_proto::framing::Framing;
use sockfwd_proto::handshake::{self, HandshakeError, DEFAULT_MAX_ID_LEN};
use sockfwd_proto::relay::relay_stream;
use sockfwd_proto::rpc::{ConnectRequest, ConnectResult};
use sockfwd_proto::transport::{dial, Address, DialError, Stream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::time::{sleep, timeout, Instant};
use tracing::Instrument as _;
use ttrpc::r#async::CSSender;

/// Error text for a host socket that cannot be reached (the reference's wording).
pub const DIAL_FAILED: &str = "failed to dial host socket";
/// Error text when a request arrives or completes while the relay shuts down.
pub const SHUTTING_DOWN: &str = "relay shutting down";
/// Error text for a stream ID that is empty, too long or not printable ASCII.
pub const BAD_STREAM_ID: &str = "invalid stream ID";
/// Longest wait between connect attempts on a full listen backlog.
const BACKLOG_PAUSE_MAX: Duration = Duration::from_millis(50);
/// How much of a guest-sent forward ID is echoed back or logged.
const ECHO_MAX: usize = 128;

/// The sending half of the Accept stream, shared by the loop and the tasks.
/// Each task drops its clone once its result is sent, so a dead session's
/// connection is not held open by long relays.
#[derive(Clone)]
pub(crate) struct Results {
    sender: CSSender<ConnectResult>,
    limit: Duration,
}

impl Results {
    pub(crate) fn new(sender: CSSender<ConnectResult>, limit: Duration) -> Results {
        Results { sender, limit }
    }

    async fn send(&self, stream_id: &str, error: &str, framing: Framing) -> Result<(), CallError> {
        let mut r = ConnectResult::new();
        r.stream_id = stream_id.to_owned();
        r.error = error.to_owned();
        r.framing = framing.wire();
        match timeout(self.limit, self.sender.send(&r)).await {
            Ok(res) => res.map_err(CallError::from),
            Err(_) => Err(CallError::Timeout(self.limit)),
        }
    }
}

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

/// A guest-sent string fit for a log line or an echo: truncated, escaped by `?`.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(ECHO_MAX) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Stream IDs are echoed into logs and the handshake: bounded, printable ASCII.
fn valid_stream_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= DEFAULT_MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Sends a refusal from the Accept loop; a failed send means the session is dying,
/// which the loop sees on its next read.
async fn refuse(shared: &Shared, results: &Results, stream_id: &str, error: &str) {
    if let Err(e) = results.send(stream_id, error, Framing::Raw).await {
        if let Some(suppressed) = shared.log_throttle.allow() {
            tracing::warn!(cause = %chain(&e), suppressed, "could not send a refusal to the agent");
        }
    }
}

/// Handles one request from the Accept loop; see the module docs.
pub(crate) async fn handle_request(shared: &Arc<Shared>, results: &Results, req: ConnectRequest) {
    if !valid_stream_id(&req.stream_id) {
        if let Some(suppressed) = shared.log_throttle.allow() {
            tracing::warn!(stream_id = ?clip(&req.stream_id), forward_id = ?clip(&req.forward_id),
                suppressed, "connection refused: invalid stream ID");
        }
        refuse(shared, results, &req.stream_id, BAD_STREAM_ID).await;
        return;
    }
    if shared.shutdown.is_cancelled() {
        refuse(shared, results, &req.stream_id, SHUTTING_DOWN).await;
        return;
    }
    let Some(entry) = shared.table.get(&req.forward_id) else {
        shared.table.unknown.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = shared.log_throttle.allow() {
            tracing::warn!(stream_id = %req.stream_id, forward_id = ?clip(&req.forward_id),
                suppressed, "connection refused: unknown forward ID");
        }
        let error = format!("unknown forward ID: {}", clip(&req.forward_id));
        refuse(shared, results, &req.stream_id, &error).await;
        return;
    };
    entry.counters.total.fetch_add(1, Ordering::Relaxed);
    match shared.caps.admit(&entry) {
        Err(refusal) => {
            entry.counters.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = shared.log_throttle.allow() {
                tracing::warn!(stream_id = %req.stream_id, forward_id = %entry.forward.id,
                    cause = %refusal, suppressed, "connection refused");
            }
            refuse(shared, results, &req.stream_id, refusal.wire_text()).await;
        }
        Ok(permit) => {
            let span = tracing::debug_span!("connection", stream_id = %req.stream_id,
                forward_id = %entry.forward.id);
            let task = serve(Arc::clone(shared), results.clone(), entry, req, permit);
            shared.tracker.spawn(task.instrument(span));
        }
    }
}

/// [`dial`], waiting out a full listen backlog: a nonblocking Unix connect fails
/// with EAGAIN where a blocking one would wait, and a burst of connections (a
/// thousand at once) fills a host server's backlog easily.
async fn dial_patiently(addr: &Address, limit: Duration) -> Result<Stream, DialError> {
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

/// The admitted request's task. Everything it does ends at the shutdown grace.
async fn serve(
    shared: Arc<Shared>,
    results: Results,
    entry: Arc<ForwardEntry>,
    req: ConnectRequest,
    permit: Permit,
) {
    tokio::select! {
        () = connect_and_relay(&shared, results, &entry, &req) => {}
        () = shared.hard_stop.cancelled() => {
            tracing::debug!("connection cut at the end of the shutdown grace");
        }
    }
    drop(permit);
}

async fn connect_and_relay(
    shared: &Shared,
    results: Results,
    entry: &ForwardEntry,
    req: &ConnectRequest,
) {
    let config = &shared.config;
    let counters = &entry.counters;
    let framing = choose(config.framing, &config.streams, req.framings);
    let host_addr = Address::Unix(entry.forward.host_path.clone());
    // The agent says its claim waits for a stream that comes after the result:
    // then the result goes out without waiting for the acknowledgement.
    let early = req.features & sockfwd_proto::features::EARLY_RESULT != 0;
    let (host, stream) = tokio::join!(
        dial_patiently(&host_addr, config.dial_timeout),
        open_stream(
            &config.streams,
            &req.stream_id,
            config.stream_timeout,
            early
        ),
    );
    let outcome = match (host, stream) {
        (Err(e), _) => Err((
            DIAL_FAILED.to_owned(),
            format!("{DIAL_FAILED}: {}", chain(&e)),
        )),
        (_, Err(e)) => Err((chain(&e), chain(&e))),
        (Ok(_), Ok(_)) if shared.shutdown.is_cancelled() => {
            Err((SHUTTING_DOWN.to_owned(), SHUTTING_DOWN.to_owned()))
        }
        (Ok(h), Ok(s)) => Ok((h, s)),
    };
    let (host, mut stream) = match outcome {
        Ok(pair) => pair,
        Err((error, cause)) => {
            if error == SHUTTING_DOWN {
                // Refused on purpose, not failed: the agent closes the guest side.
                tracing::debug!("connection refused: relay shutting down");
            } else {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = shared.log_throttle.allow() {
                    tracing::error!(stream_id = %req.stream_id, forward_id = %entry.forward.id,
                        host_path = %entry.forward.host_path.display(), %cause, suppressed,
                        "connection failed");
                }
            }
            if let Err(e) = results.send(&req.stream_id, &error, Framing::Raw).await {
                tracing::debug!(cause = %chain(&e), "could not send the failure to the agent");
            }
            return;
        }
    };
    if let Err(e) = results.send(&req.stream_id, "", framing).await {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(stream_id = %req.stream_id, forward_id = %entry.forward.id,
            cause = %chain(&e), "connection failed: could not send its result to the agent");
        return;
    }
    drop(results);
    if early {
        if let Err(e) =
            handshake::await_ack(&mut stream, &req.stream_id, config.stream_timeout).await
        {
            // The agent refused the stream after our result: its claim gives up at
            // its deadline and closes the guest connection.
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(stream_id = %req.stream_id, forward_id = %entry.forward.id,
                cause = %chain(&e), "connection failed: the agent refused the stream");
            return;
        }
    }
    tracing::debug!(?framing, "relaying");
    match relay_stream(&host, &stream, framing, &config.relay).await {
        Ok(stats) => {
            counters.add_bytes(stats);
            tracing::debug!(
                to_guest = stats.a_to_b,
                to_host = stats.b_to_a,
                "connection closed"
            );
        }
        Err(e) => tracing::debug!(cause = %chain(&e), "connection ended on an error"),
    }
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

    #[test]
    fn stream_ids_are_checked_and_guest_text_clipped() {
        assert!(valid_stream_id("socketfwd-1732406400123456789-q83vEg"));
        assert!(!valid_stream_id(""));
        assert!(!valid_stream_id("a b"));
        assert!(!valid_stream_id("a\nb"));
        assert!(!valid_stream_id(&"x".repeat(DEFAULT_MAX_ID_LEN + 1)));
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(ECHO_MAX + 10);
        assert_eq!(clip(&long).chars().count(), ECHO_MAX);
    }
}
