//! One pre-opened stream, from its opening to the end of its connection
//! (wire-protocol 8.11): open it with the full handshake, park it until the
//! agent writes a header (or it idles out, or the session ends), then serve
//! the connection the header names as a `ConnectRequest` would be: the
//! forward from our own table only, the same caps, the dial of its target,
//! and the answer in-band (the verdict) before the relay.

use super::pool::Live;
use super::{admit, dial_target, note_failure, note_refusal, relay_connected, Failure};
use crate::shared::Shared;
use crate::streams::open_stream;
use sockfwd_proto::framing::Framing;
use sockfwd_proto::log_text::escape;
use sockfwd_proto::report::Chain;
use sockfwd_proto::stream_pool::{self, read_header, write_verdict, PoolWireError};
use sockfwd_proto::transport::Stream;
use std::sync::Arc;
use tracing::Instrument as _;

/// Error text for a header whose forward ID breaks the forward-ID rule.
const BAD_FORWARD_ID: &str = "invalid forward ID";

/// Opens pooled stream number `n`, parks it, and serves what comes of it.
pub(super) async fn park(shared: Arc<Shared>, live: Live, n: u64) {
    let id = stream_pool::stream_id(&live.pool().token, n);
    let span = tracing::debug_span!("pooled", stream_id = %id);
    async move {
        let Some((stream, forward_id)) = wait_for_client(&shared, &live, &id).await else {
            return;
        };
        let pool = Arc::clone(live.pool());
        // Taken: it no longer counts, and the pool opens its replacement.
        drop(live);
        pool.want_more();
        let framing = pool.framing;
        let span = tracing::debug_span!("connection", forward_id = %escape(&forward_id));
        tokio::select! {
            () = serve(&shared, &stream, &id, &forward_id, framing).instrument(span) => {}
            () = shared.hard_stop.cancelled() => {
                tracing::debug!("connection cut at the end of the shutdown grace");
            }
        }
    }
    .instrument(span)
    .await;
}

/// Opens the stream and waits, parked, for the agent's header: the forward
/// ID it names, or `None` (the stream failed, idled out, its session or the
/// relay ended, or the header was malformed).
async fn wait_for_client(shared: &Shared, live: &Live, id: &str) -> Option<(Stream, String)> {
    let config = &shared.config;
    let pool = live.pool();
    let opened = tokio::select! {
        r = open_stream(&config.streams, id, config.stream_timeout, false) => r,
        () = pool.ended.cancelled() => return None,
    };
    let stream = match opened {
        Ok(s) => s,
        Err(e) => {
            pool.opened(false);
            if let Some(pass) = shared.log_throttle.allow("pool open") {
                tracing::warn!(cause = %Chain(&e), suppressed = pass.suppressed,
                    "could not open a pre-opened stream; connections ask with a ConnectRequest meanwhile");
            }
            return None;
        }
    };
    pool.opened(true);
    tokio::select! {
        () = stream_pool::readable(&stream) => {}
        () = tokio::time::sleep(config.stream_pool_idle) => {
            tracing::debug!(idle = ?config.stream_pool_idle, "pre-opened stream unused; closed");
            return None;
        }
        () = pool.ended.cancelled() => return None,
        () = shared.shutdown.cancelled() => return None,
    }
    match read_header(&stream, config.stream_timeout).await {
        Ok(forward_id) => Some((stream, forward_id)),
        // The agent dropped it: its pool ended, or it is shutting down.
        Err(PoolWireError::Closed) => None,
        Err(PoolWireError::ForwardId(e)) => {
            if let Some(pass) = shared.log_throttle.allow("refused") {
                tracing::warn!(cause = %e, suppressed = pass.suppressed, "connection refused");
            }
            let _ = write_verdict(&stream, BAD_FORWARD_ID, config.stream_timeout).await;
            None
        }
        Err(e) => {
            if let Some(pass) = shared.log_throttle.allow("bad header") {
                tracing::warn!(cause = %Chain(&e), suppressed = pass.suppressed,
                    "unusable header on a pre-opened stream; closed");
            }
            None
        }
    }
}

/// The connection the header named: admitted, dialed and answered, then relayed.
async fn serve(shared: &Shared, stream: &Stream, id: &str, forward_id: &str, framing: Framing) {
    let limit = shared.config.stream_timeout;
    let (entry, permit) = match admit(shared, id, forward_id) {
        Ok(admitted) => admitted,
        Err(failure) => {
            note_refusal(shared, id, forward_id, &failure);
            refuse(stream, &failure, limit).await;
            return;
        }
    };
    let host = match dial_target(&entry.forward.target, shared.config.dial_timeout).await {
        Ok(host) if !shared.shutdown.is_cancelled() => host,
        Ok(_) => {
            refuse(stream, &Failure::ShuttingDown, limit).await;
            return;
        }
        Err(e) => {
            let failure = Failure::HostUnreachable(e);
            note_failure(shared, &entry, id, &failure);
            refuse(stream, &failure, limit).await;
            return;
        }
    };
    if let Err(e) = write_verdict(stream, "", limit).await {
        sockfwd_proto::counters::ForwardCounters::bump(&entry.counters.failed);
        tracing::error!(stream_id = %id, forward_id = %entry.forward.id, cause = %Chain(&e),
            "connection failed: could not answer the agent");
        return;
    }
    relay_connected(shared, &entry, &host, stream, framing).await;
    drop(permit);
}

/// Answers the header with `failure`'s text; the stream closes after it.
async fn refuse(stream: &Stream, failure: &Failure, limit: std::time::Duration) {
    if let Err(e) = write_verdict(stream, &failure.wire_text(), limit).await {
        tracing::debug!(cause = %Chain(&e), "could not send the refusal to the agent");
    }
}
