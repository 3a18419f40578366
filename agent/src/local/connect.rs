//! Local forwards, the agent's side (the `Connect` extension): a host client
//! connected to a relay listener, the relay has opened a stream on the stream port (handshake done, so it waits in the registry under
//! its ID) and asks the agent to connect it to a target inside the guest.
//!
//! Order: check the request, claim the stream (so a refused request closes it at
//! once instead of at `--claim-timeout`), connect the target (bounded by the
//! caller's deadline, at most [`CONNECT_TIMEOUT`]), answer, then relay in a task
//! of its own. Any error drops the claimed stream, so the host side is closed.

use crate::local::target::{self, Target, TargetError};
use crate::state::AgentState;
use sockfwd_proto::framing::Framing;
use sockfwd_proto::relay::{relay_stream, RelayConfig};
use sockfwd_proto::rpc::ConnectTargetRequest;
use sockfwd_proto::transport::Stream;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tracing::Instrument as _;

/// Longest the agent spends connecting a target.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a `Connect` failed; [`status`] maps each to a ttrpc code.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The stream ID is empty or longer than `--max-stream-id-len`.
    #[error("invalid stream ID")]
    BadStreamId,
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

/// The ttrpc status for a failed `Connect`: the code says what kind of failure
/// (NOT_FOUND is avoided: hosts read it as "method not supported").
pub fn status(err: &ConnectError) -> ttrpc::Error {
    use ttrpc::Code;
    let code = match err {
        ConnectError::BadStreamId | ConnectError::Framing(_) => Code::INVALID_ARGUMENT,
        ConnectError::Target(TargetError::Parse(_)) => Code::INVALID_ARGUMENT,
        ConnectError::Target(TargetError::NotAllowed(_)) => Code::PERMISSION_DENIED,
        ConnectError::NoStream(_) | ConnectError::Target(TargetError::NoSuchPath(_)) => {
            Code::FAILED_PRECONDITION
        }
        ConnectError::Timeout { .. } => Code::DEADLINE_EXCEEDED,
        ConnectError::Target(_) | ConnectError::ShuttingDown => Code::UNAVAILABLE,
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, crate::error_chain(err)))
}

/// Serves one `Connect`; `deadline` is the caller's (ttrpc `timeout_nano`), if any.
pub async fn connect(
    state: &Arc<AgentState>,
    req: ConnectTargetRequest,
    deadline: Option<Duration>,
) -> Result<(), ConnectError> {
    let id = req.stream_id;
    if id.is_empty() || id.len() > state.config.max_stream_id_len {
        return Err(ConnectError::BadStreamId);
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
    let span = tracing::info_span!("connect", stream_id = %id, target = %target);
    let task_state = state.clone();
    state
        .connections
        .spawn(relay(task_state, local, stream, framing).instrument(span));
    tracing::debug!(stream_id = %id, %target, ?framing, "host connection connected");
    Ok(())
}

/// Relays until both directions end, or the shutdown grace period is over.
async fn relay(state: Arc<AgentState>, local: Stream, stream: Stream, framing: Framing) {
    let config = RelayConfig::default();
    tokio::select! {
        r = relay_stream(&local, &stream, framing, &config) => match r {
            Ok(moved) => tracing::debug!(to_host = moved.a_to_b, to_guest = moved.b_to_a, "relay done"),
            Err(err) => tracing::debug!(cause = %crate::error_chain(&err), "relay ended on an error"),
        },
        () = state.shutdown.relays.cancelled() => {
            tracing::debug!("shutdown grace period over; closing the relay");
        }
    }
}
