//! Shutdown, in the order the host can rely on (the tokens are
//! [`crate::state::Shutdown`]).
//!
//! Shutdown (the RPC) and SIGTERM/SIGINT do the same, in four steps:
//! 1. stop: every listener stops accepting and its socket file is removed;
//!    connections waiting for the host are refused (closed);
//! 2. the Shutdown RPC answers once step 1 is done;
//! 3. open relays run until they end or the grace period passes, then end;
//! 4. control connections close, and [`crate::run`] returns.

use crate::state::AgentState;
use std::time::Duration;
use tokio::time::timeout;

/// Bound on waiting for control connections to wind down in step 4.
const CONTROL_DRAIN: Duration = Duration::from_secs(3);

/// Runs steps 1 to 4 once `state.shutdown.stop` is cancelled.
pub async fn drain(state: &AgentState) {
    state.shutdown.stop.cancelled().await;
    tracing::info!("shutting down: closing listeners, refusing waiting connections");
    state.forwards.close_all();
    state.dispatcher.lock().close("the agent is shutting down");
    state.listeners.close();
    state.listeners.wait().await;
    state.shutdown.listeners_closed.cancel();

    let grace = state.shutdown.grace(state.config.shutdown_grace);
    state.connections.close();
    if timeout(grace, state.connections.wait()).await.is_err() {
        tracing::info!(
            open = state.connections.len(),
            ?grace,
            "grace period over; closing open relays"
        );
        state.shutdown.relays.cancel();
        state.connections.wait().await;
    }

    state.shutdown.control.cancel();
    state.tasks.close();
    if timeout(CONTROL_DRAIN, state.tasks.wait()).await.is_err() {
        tracing::warn!(
            left = state.tasks.len(),
            "control connections did not close in time; leaving them"
        );
    }
    tracing::info!("shut down");
}
