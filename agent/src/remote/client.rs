//! One client of a remote forward's listener (a guest process that connected),
//! in its own task: over a pre-opened stream when its host keeps a pool
//! ([`crate::remote::pooled`]); otherwise raise a `ConnectRequest`, wait for the host's result
//! (bounded by `--pending-timeout`, with `--result-timeout` per Accept stream),
//! claim the stream the host opened, then relay until both directions end.
//!
//! Every way out closes the client's connection at once and says why in the
//! log; nothing waits without a deadline.

use crate::dispatch::Event;
use crate::remote::pooled::{self, Outcome};
use crate::state::AgentState;
use crate::stream_pool;
use sockfwd_proto::counters::ForwardCounters;
use sockfwd_proto::framing::Framing;
use sockfwd_proto::log_text::escape;
use sockfwd_proto::relay::{relay_stream, RelayConfig};
use sockfwd_proto::report::Chain;
use sockfwd_proto::rpc::ConnectRequest;
use sockfwd_proto::stream_id::{self, SOCKET_FORWARD_PREFIX};
use sockfwd_proto::transport::Stream;
use std::sync::Arc;
use tokio::sync::mpsc::unbounded_channel;
use tokio::time::{sleep_until, Instant};
use tracing::Instrument as _;

/// Serves one client accepted on `forward_id`'s listener.
pub async fn serve(
    state: Arc<AgentState>,
    conn: Stream,
    forward_id: String,
    stats: Arc<ForwardCounters>,
) {
    match pooled::connect(&state, &conn, &forward_id, &stats).await {
        Outcome::Connected(c) => {
            let (stream, framing) = (&*c.taken.stream, c.taken.framing);
            let id = c.taken.id.clone();
            let span = tracing::info_span!("guest", stream_id = %escape(&id), %forward_id);
            let clean = relay(&state, &conn, stream, framing, &stats)
                .instrument(span)
                .await;
            stats.add_bytes(0, c.sent);
            drop(conn);
            // Both end frames crossed: the stream may carry the next client.
            if clean {
                if let Some((parked, stream)) = state.pools.repark(c.taken) {
                    tracing::debug!(stream_id = %escape(&id), "stream parked again for the next client");
                    // Watched in a task of its own: this client's slot is free again.
                    let stop = state.shutdown.stop.clone();
                    state.tasks.spawn(async move {
                        stream_pool::watch(parked, stream, &id, &stop).await;
                    });
                }
            }
            return;
        }
        Outcome::Closed => return,
        Outcome::Fallback => {}
    }
    let stream_id = stream_id::generate(SOCKET_FORWARD_PREFIX);
    // Info level, so the IDs show on every line logged inside, even under RUST_LOG=info.
    let span = tracing::info_span!("guest", %stream_id, %forward_id);
    async move {
        let Some(framing) = wait_for_host(&state, &stream_id, &forward_id, &stats).await else {
            return;
        };
        let Some(framing) = Framing::from_wire(framing) else {
            if let Some(pass) = state.log_throttle.allow("unknown framing") {
                tracing::error!(
                    framing,
                    suppressed = pass.suppressed,
                    "the host chose a framing this agent does not speak; closing"
                );
            }
            ForwardCounters::bump(&stats.failed);
            return;
        };
        let Some(stream) = state
            .registry
            .claim(&stream_id, state.config.handshake_timeout)
            .await
        else {
            if let Some(pass) = state.log_throttle.allow("stream never came") {
                tracing::error!(
                    suppressed = pass.suppressed,
                    "the host reported success but no stream with this ID is registered; closing"
                );
            }
            ForwardCounters::bump(&stats.failed);
            return;
        };
        relay(&state, &conn, &stream, framing, &stats).await;
    }
    .instrument(span)
    .await;
}

/// Forgets the request if the task ends before its result (deadline, shutdown).
struct CancelOnDrop<'a> {
    state: &'a AgentState,
    stream_id: &'a str,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        self.state.dispatcher.lock().cancel(self.stream_id);
    }
}

/// Raises the request and waits for its result: `Some(framing)` on success.
async fn wait_for_host(
    state: &AgentState,
    stream_id: &str,
    forward_id: &str,
    stats: &Arc<ForwardCounters>,
) -> Option<u32> {
    let (tx, mut events) = unbounded_channel();
    let request = ConnectRequest {
        stream_id: stream_id.to_owned(),
        forward_id: forward_id.to_owned(),
        framings: Framing::supported_bits(),
        // The registry's claim waits for a stream whose result came first.
        features: sockfwd_proto::features::SUPPORTED,
        ..Default::default()
    };
    if let Err(err) = state.dispatcher.lock().submit(request, tx) {
        if let Some(pass) = state.log_throttle.allow("client refused") {
            tracing::warn!(cause = %err, suppressed = pass.suppressed, "client refused");
        }
        ForwardCounters::bump(&stats.refused);
        return None;
    }
    let _cancel = CancelOnDrop { state, stream_id };
    let deadline = Instant::now() + state.config.pending_timeout;
    let mut result_timer: Option<(Instant, u32)> = None;
    loop {
        let timer = async {
            match result_timer {
                Some((at, _)) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep_until(deadline) => {
                if let Some(pass) = state.log_throttle.allow("no result") {
                    tracing::error!(
                        timeout = ?state.config.pending_timeout,
                        suppressed = pass.suppressed,
                        "no result from the host in time; closing the client"
                    );
                }
                ForwardCounters::bump(&stats.failed);
                return None;
            }
            () = timer => {
                if let Some((_, attempt)) = result_timer.take() {
                    tracing::debug!(attempt, "no result from this Accept stream in time");
                    state.dispatcher.lock().result_timeout(stream_id, attempt);
                }
            }
            event = events.recv() => match event {
                Some(Event::Offered { attempt }) => {
                    tracing::debug!(attempt, "request sent to the host");
                    result_timer = Some((Instant::now() + state.config.result_timeout, attempt));
                }
                Some(Event::Ready { framing }) => return Some(framing),
                Some(Event::Refused(reason)) => {
                    if state.shutdown.stop.is_cancelled() {
                        if let Some(pass) = state.log_throttle.allow("closed at shutdown") {
                            tracing::info!(cause = %escape(&reason), suppressed = pass.suppressed,
                                "client closed");
                        }
                        ForwardCounters::bump(&stats.refused);
                    } else {
                        if let Some(pass) = state.log_throttle.allow("host refused") {
                            tracing::error!(cause = %escape(&reason), suppressed = pass.suppressed,
                                "the host refused the connection; closing it");
                        }
                        ForwardCounters::bump(&stats.failed);
                    }
                    return None;
                }
                // The router dropped the request without a word: cannot happen,
                // but a closed connection is the safe answer.
                None => {
                    ForwardCounters::bump(&stats.failed);
                    return None;
                }
            },
        }
    }
}

/// Relays until both directions end (`true`), or an error or the end of
/// the shutdown grace period cuts it (`false`).
async fn relay(
    state: &AgentState,
    conn: &Stream,
    stream: &Stream,
    framing: Framing,
    stats: &Arc<ForwardCounters>,
) -> bool {
    let _active = stats.active_guard();
    let config = RelayConfig::default();
    tracing::debug!(?framing, "relaying");
    tokio::select! {
        result = relay_stream(conn, stream, framing, &config) => match result {
            Ok(moved) => {
                stats.add_bytes(moved.b_to_a, moved.a_to_b);
                tracing::debug!(to_host = moved.a_to_b, to_guest = moved.b_to_a, "relay done");
                true
            }
            Err(err) => {
                tracing::debug!(cause = %Chain(&err), "relay ended on an error");
                false
            }
        },
        () = state.shutdown.relays.cancelled() => {
            tracing::debug!("shutdown grace period over; closing the relay");
            false
        }
    }
}
