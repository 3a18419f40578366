//! A local forward's connection, the agent's side (the `Connect` extension): a
//! client reached a relay listener, the relay has opened a stream on the stream
//! port (handshake done, so it waits in the registry under its ID) and asks the
//! agent to connect it to a target inside the guest.
//!
//! Order: check the request, claim the stream (so a refused request closes it at
//! once instead of at `--claim-timeout`), connect the target (bounded by the
//! caller's deadline, at most [`CONNECT_TIMEOUT`]), answer, then relay in a task
//! of its own. Any error drops the claimed stream, so the host side is closed.

use crate::local::target::{self, TargetError};
use crate::state::AgentState;
use sockfwd_proto::framing::Framing;
use sockfwd_proto::log_text::escape;
use sockfwd_proto::relay::{relay_stream, RelayConfig};
use sockfwd_proto::report::Chain;
use sockfwd_proto::rpc::ConnectTargetRequest;
use sockfwd_proto::stream_id::{self, StreamIdError};
use sockfwd_proto::target::Target;
use sockfwd_proto::transport::Stream;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tracing::Instrument as _;

/// Longest the agent spends connecting a target.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a `Connect` failed; the control service maps each to a ttrpc code.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The stream ID breaks the stream-ID rule.
    #[error("invalid stream ID")]
    BadStreamId(#[source] StreamIdError),
    /// The stream ID is longer than `--max-stream-id-len`.
    #[error("stream ID is {len} bytes; the limit is {max}")]
    LongStreamId {
        /// Its length.
        len: usize,
        /// `--max-stream-id-len`.
        max: usize,
    },
    /// A framing this agent does not speak.
    #[error("framing {0} is not supported")]
    Framing(u32),
    /// No stream with this ID is registered (never opened, timed out, claimed).
    #[error("no stream {0:?} is registered on the stream port")]
    NoStream(String),
    /// The target failed.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Connecting took longer than the deadline.
    #[error("connecting to {target} timed out after {after:?}")]
    Timeout {
        /// The target.
        target: String,
        /// The deadline.
        after: Duration,
    },
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// Serves one `Connect`; `deadline` is the caller's (ttrpc `timeout_nano`), if any.
pub async fn connect(
    state: &Arc<AgentState>,
    req: ConnectTargetRequest,
    deadline: Option<Duration>,
) -> Result<(), ConnectError> {
    let id = req.stream_id;
    stream_id::check(&id).map_err(ConnectError::BadStreamId)?;
    let max = state.config.max_stream_id_len;
    if id.len() > max {
        return Err(ConnectError::LongStreamId { len: id.len(), max });
    }
    let framing = Framing::from_wire(req.framing).ok_or(ConnectError::Framing(req.framing))?;
    let target: Target = req.target.parse().map_err(TargetError::Parse)?;
    if state.shutdown.stop.is_cancelled() {
        return Err(ConnectError::ShuttingDown);
    }
    let Some(stream) = state
        .registry
        .claim(&id, state.config.handshake_timeout)
        .await
    else {
        return Err(ConnectError::NoStream(id));
    };
    let limit = deadline.map_or(CONNECT_TIMEOUT, |d| d.min(CONNECT_TIMEOUT));
    let fd =
        match tokio::time::timeout(limit, target::connect(&target, &state.config.allow_targets))
            .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(ConnectError::Timeout {
                    target: target.to_string(),
                    after: limit,
                })
            }
        };
    let local = Stream::from_fd(fd).map_err(|source| TargetError::Connect {
        target: target.to_string(),
        source,
    })?;
    let shown = target.to_string();
    let span = tracing::info_span!("connect", stream_id = %id, target = %escape(&shown));
    let task_state = state.clone();
    state
        .connections
        .spawn(relay(task_state, local, stream, framing).instrument(span));
    tracing::debug!(stream_id = %id, target = %escape(&shown), ?framing, "target connected");
    Ok(())
}

/// Relays until both directions end, or the shutdown grace period is over.
async fn relay(state: Arc<AgentState>, local: Stream, stream: Stream, framing: Framing) {
    let config = RelayConfig::default();
    tokio::select! {
        r = relay_stream(&local, &stream, framing, &config) => match r {
            Ok(moved) => tracing::debug!(to_host = moved.a_to_b, to_guest = moved.b_to_a, "relay done"),
            Err(err) => tracing::debug!(cause = %Chain(&err), "relay ended on an error"),
        },
        () = state.shutdown.relays.cancelled() => {
            tracing::debug!("shutdown grace period over; closing the relay");
        }
    }
}
