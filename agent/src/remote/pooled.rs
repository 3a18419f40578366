//! A client of a remote forward over a pre-opened stream (wire-protocol
//! 8.11): take a stream parked for the control connection that owns the
//! forward, name the forward in its header, read the host's verdict; the
//! client's task ([`crate::remote::client`]) then relays.
//! No `ConnectRequest` and no stream to wait for: the header and its verdict
//! are the whole setup.
//!
//! The client's first bytes (up to 16 KiB) go right behind the header, so
//! the host's verdict and the target's first answer come back together: one
//! host round trip before the first byte. They are peeked, not read: they
//! stay in the client's socket until the verdict accepts the stream.
//!
//! Falling back: a pooled stream that fails before its verdict (a relay that
//! restarted, a stream it closed) took nothing from the client's socket, and
//! the relay forwards nothing before it writes a verdict, so the next pooled
//! stream, or the `ConnectRequest` path, takes the connection with nothing
//! lost or sent twice. A verdict that refuses closes the client, as a
//! refusing `ConnectResult` does, except `unknown forward ID`: as that answer
//! on an Accept stream moves a request on to another, it sends the client to
//! the `ConnectRequest` path, where the router's learned routing (see
//! [`crate::dispatch`]) finds the stream that serves the forward, if any.
//!
//! The pool used is the one of the connection that owns the forward
//! ([`crate::dispatch::Router::owner`]), as its requests go only to that
//! connection's Accept streams; a forward without an owner (bound from the
//! boot configuration) takes the `ConnectRequest` path, which may try any.

use crate::dispatch::UNKNOWN_FORWARD;
use crate::state::AgentState;
use crate::stream_pool::Taken;
use sockfwd_proto::counters::ForwardCounters;
use sockfwd_proto::log_text::escape;
use sockfwd_proto::report::Chain;
use sockfwd_proto::stream_pool::{
    self, read_verdict, write_early, write_opening, PoolWireError, Verdict,
};
use sockfwd_proto::transport::Stream;
use std::sync::Arc;
use tracing::Instrument as _;

/// Most pooled streams one client tries before the `ConnectRequest` path.
const TRIES: usize = 3;
/// Most of the client's first bytes sent before the host's verdict.
const EARLY_MAX: usize = 16 << 10;

/// How a pooled attempt ended.
pub(crate) enum Outcome {
    /// The host accepted: relay over this stream.
    Connected(Connected),
    /// Refused or failed (said and counted): close the client.
    Closed,
    /// No pooled stream took it: use the `ConnectRequest` path.
    Fallback,
}

/// A pooled stream the host accepted a client on.
pub(crate) struct Connected {
    /// The stream, its ID and framing.
    pub(crate) taken: Taken,
    /// The client's bytes that went before the verdict (the relay counts the rest).
    pub(crate) sent: u64,
}

/// One pooled stream's attempt.
enum Attempt {
    Connected(u64),
    Closed,
    /// The stream failed before its verdict, having carried nothing.
    Dead,
    /// The host does not know the forward on this connection: the
    /// `ConnectRequest` path asks the router, which learns it and tries the
    /// other Accept streams.
    Unknown,
}

/// Connects `conn` over a pooled stream if its forward's owner has one.
pub(crate) async fn connect(
    state: &AgentState,
    conn: &Stream,
    forward_id: &str,
    stats: &Arc<ForwardCounters>,
) -> Outcome {
    // A forward no host has bound has no pool to use: the ConnectRequest
    // path waits for one.
    let Some(owner) = state.dispatcher.lock().owner(forward_id) else {
        return Outcome::Fallback;
    };
    for _ in 0..TRIES {
        let Some(taken) = state.pools.take(owner) else {
            return Outcome::Fallback;
        };
        let span = tracing::info_span!("guest", stream_id = %escape(&taken.id), %forward_id);
        match attempt(state, conn, &taken, forward_id, stats)
            .instrument(span)
            .await
        {
            Attempt::Connected(sent) => return Outcome::Connected(Connected { taken, sent }),
            Attempt::Closed => return Outcome::Closed,
            Attempt::Unknown => return Outcome::Fallback,
            Attempt::Dead => {}
        }
    }
    Outcome::Fallback
}

async fn attempt(
    state: &AgentState,
    conn: &Stream,
    taken: &Taken,
    forward_id: &str,
    stats: &Arc<ForwardCounters>,
) -> Attempt {
    let stream = &*taken.stream;
    let config = &state.config;
    let (framing, limit) = (taken.framing, config.handshake_timeout);
    // The client's first bytes go with the header when they are already
    // there: the host's verdict and the target's answer then come back in
    // one round trip.
    let mut early = Early::peek(conn);
    if let Err(err) = write_opening(stream, forward_id, framing, early.bytes(), limit).await {
        tracing::debug!(cause = %Chain(&err), "pooled stream gone before its header; trying another");
        return Attempt::Dead;
    }
    let verdict = read_verdict(stream, config.pending_timeout);
    tokio::pin!(verdict);
    let verdict = loop {
        tokio::select! {
            v = &mut verdict => break v,
            () = stream_pool::readable(conn), if early.waiting() => {
                early = Early::peek(conn);
                // A failed write shows in the verdict's read.
                let _ = write_early(stream, framing, early.bytes(), limit).await;
            }
            () = state.shutdown.stop.cancelled() => {
                if let Some(pass) = state.log_throttle.allow("closed at shutdown") {
                    tracing::info!(suppressed = pass.suppressed,
                        "guest connection closed: the agent is shutting down");
                }
                ForwardCounters::bump(&stats.refused);
                return Attempt::Closed;
            }
        }
    };
    match verdict {
        Ok(Verdict::Accepted) => {
            if let Err(err) = early.consume(conn).await {
                tracing::debug!(cause = %err, "guest connection failed");
                return Attempt::Closed;
            }
            return Attempt::Connected(early.bytes().len() as u64);
        }
        // Nothing of the client's was taken: its bytes are still there.
        Ok(Verdict::Refused(text)) if text.starts_with(UNKNOWN_FORWARD) => {
            tracing::debug!(cause = %escape(&text),
                "the pool's host does not know the forward; asking with a ConnectRequest");
            return Attempt::Unknown;
        }
        Ok(Verdict::Refused(text)) => {
            if let Some(pass) = state.log_throttle.allow("host refused") {
                tracing::error!(cause = %escape(&text), suppressed = pass.suppressed,
                    "the host refused the connection; closing it");
            }
            ForwardCounters::bump(&stats.failed);
        }
        Err(err @ (PoolWireError::Closed | PoolWireError::Io(_))) => {
            tracing::debug!(cause = %Chain(&err),
                "pooled stream closed before its verdict; trying another");
            return Attempt::Dead;
        }
        Err(err) => {
            if let Some(pass) = state.log_throttle.allow("no usable verdict") {
                tracing::error!(cause = %Chain(&err), suppressed = pass.suppressed,
                    "no usable verdict from the host; closing the guest connection");
            }
            ForwardCounters::bump(&stats.failed);
        }
    }
    Attempt::Closed
}

/// The client's first bytes, sent to the host before its verdict: peeked,
/// not read, so they stay in the client's socket until the verdict accepts
/// the stream ([`Early::consume`]), and a stream that fails before it takes
/// nothing away from the next one.
enum Early {
    /// Nothing there yet: the first bytes to arrive go before the verdict.
    Waiting,
    /// These went (or go) with the header; nothing more before the verdict.
    Sent(Vec<u8>),
    /// The client half-closed, or its socket failed: the relay will see it.
    Done,
}

impl Early {
    /// Peeks at what the client has sent, without waiting.
    fn peek(conn: &Stream) -> Early {
        let mut buf = vec![0u8; EARLY_MAX];
        match conn.try_peek(&mut buf) {
            Ok(0) => Early::Done,
            Ok(n) => {
                buf.truncate(n);
                Early::Sent(buf)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Early::Waiting,
            Err(_) => Early::Done,
        }
    }

    fn waiting(&self) -> bool {
        matches!(self, Early::Waiting)
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Early::Sent(b) => b,
            Early::Waiting | Early::Done => &[],
        }
    }

    /// Takes the bytes already sent out of the client's socket.
    async fn consume(&self, conn: &Stream) -> std::io::Result<()> {
        let mut left = self.bytes().len();
        let mut sink = vec![0u8; left];
        while left > 0 {
            match conn.read(&mut sink[..left]).await? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => left -= n,
            }
        }
        Ok(())
    }
}
