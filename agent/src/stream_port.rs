//! The stream port: the host opens one connection per forwarded connection.
//!
//! The accept loop only accepts; each connection's handshake runs in its own
//! task, bounded in length (`--max-stream-id-len`) and time
//! (`--handshake-timeout`), so a slow or hostile peer stalls nobody else.
//! The ID is reserved in the registry (a duplicate is refused with the
//! contract's text), acknowledged, and then kept until the client connection
//! that asked for it claims it, or `--claim-timeout` passes and it is closed.
//! A pooled stream (its ID names a live pool: wire-protocol 8.11) is parked in
//! [`crate::stream_pool`] instead, and watched until a client takes it.

use crate::state::AgentState;
use crate::stream_pool::{self, Parking};
use sockfwd_proto::handshake;
use sockfwd_proto::log_text::escape;
use sockfwd_proto::report::Chain;
use sockfwd_proto::transport::{Listener, Stream};
use std::sync::Arc;

/// Accepts stream-port connections until shutdown.
pub async fn serve(state: Arc<AgentState>, listener: Listener) {
    state
        .serve_host_port("streams", listener, |state, stream| {
            Some(handle(state, stream))
        })
        .await;
}

/// One stream-port connection: handshake, register, wait to be claimed.
async fn handle(state: Arc<AgentState>, mut stream: Stream) {
    let config = &state.config;
    let stop = &state.shutdown.stop;
    let read = handshake::read_id(
        &mut stream,
        config.max_stream_id_len,
        config.handshake_timeout,
    );
    let id = tokio::select! {
        () = stop.cancelled() => return,
        r = read => match r {
            Ok(id) => id,
            Err(err) => {
                if let Some(pass) = state.log_throttle.allow("stream handshake failed") {
                    tracing::warn!(cause = %Chain(&err), suppressed = pass.suppressed,
                        "stream handshake failed; closed");
                }
                return;
            }
        },
    };
    match state.pools.reserve(&id) {
        Ok(None) => {}
        Ok(Some(parking)) => return park(&state, stream, &id, parking).await,
        Err(err) => {
            if let Some(pass) = state.log_throttle.allow("pooled stream refused") {
                tracing::warn!(stream_id = %escape(&id), cause = %err, suppressed = pass.suppressed,
                    "pooled stream refused");
            }
            let _ =
                handshake::refuse(&mut stream, &err.to_string(), config.handshake_timeout).await;
            return;
        }
    }
    let mut registration = match state.registry.reserve(&id) {
        Ok(r) => r,
        Err(err) => {
            if let Some(pass) = state.log_throttle.allow("duplicate stream ID") {
                tracing::warn!(stream_id = %escape(&id), cause = %err, suppressed = pass.suppressed,
                    "duplicate stream ID refused");
            }
            let message = handshake::duplicate_message(&id);
            if let Err(err) =
                handshake::refuse(&mut stream, &message, config.handshake_timeout).await
            {
                tracing::debug!(stream_id = %escape(&id), cause = %Chain(&err), "could not send the refusal");
            }
            return;
        }
    };
    if let Err(err) = handshake::accept(&mut stream, &id, config.handshake_timeout).await {
        if let Some(pass) = state.log_throttle.allow("stream handshake failed") {
            tracing::warn!(stream_id = %escape(&id), cause = %Chain(&err),
                suppressed = pass.suppressed, "stream handshake failed; closed");
        }
        return;
    }
    registration.fill(stream);
    tracing::debug!(stream_id = %escape(&id), "stream registered");
    tokio::select! {
        claimed = registration.claimed_within(config.claim_timeout) => {
            if !claimed {
                if let Some(pass) = state.log_throttle.allow("stream not claimed") {
                    tracing::warn!(
                        stream_id = %escape(&id),
                        timeout = ?config.claim_timeout,
                        suppressed = pass.suppressed,
                        "stream not claimed in time; closed"
                    );
                }
            }
        }
        () = stop.cancelled() => {}
    }
    // Dropping the registration closes the stream unless it was claimed.
}

/// A pooled stream: acknowledge, park, and watch it until a client takes it,
/// its pool goes, or the host closes it.
async fn park(state: &AgentState, mut stream: Stream, id: &str, parking: Parking) {
    let stop = &state.shutdown.stop;
    if let Err(err) = handshake::accept(&mut stream, id, state.config.handshake_timeout).await {
        if let Some(pass) = state.log_throttle.allow("stream handshake failed") {
            tracing::warn!(stream_id = %escape(id), cause = %Chain(&err),
                suppressed = pass.suppressed, "stream handshake failed; closed");
        }
        return;
    }
    let stream = Arc::new(stream);
    let Some(parked) = parking.fill(Arc::clone(&stream)) else {
        tracing::debug!(stream_id = %escape(id), "its pool ended during the handshake; closed");
        return;
    };
    tracing::debug!(stream_id = %escape(id), "stream parked in the pool");
    stream_pool::watch(parked, stream, id, stop).await;
}
