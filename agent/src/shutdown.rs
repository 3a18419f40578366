//! Shutdown, in the order the host can rely on.
//!
//! Shutdown (the RPC) and SIGTERM/SIGINT do the same, in four steps:
//! 1. stop: every listener stops accepting and its socket file is removed;
//!    connections waiting for the host are refused (closed);
//! 2. the Shutdown RPC answers once step 1 is done;
//! 3. open relays run until they end or the grace period passes, then end;
//! 4. control connections close, and [`crate::run`] returns.

use crate::state::AgentState;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Bound on waiting for control connections to wind down in step 4.
const CONTROL_DRAIN: Duration = Duration::from_secs(3);

/// The tokens that sequence shutdown; see the module docs.
pub struct Shutdown {
    /// Step 1: cancelled by the caller's token (signals) or the Shutdown RPC.
    pub stop: CancellationToken,
    /// Step 3's end: open relays are closed.
    pub relays: CancellationToken,
    /// Step 4: control connections close.
    pub control: CancellationToken,
    /// Cancelled once step 1 is complete.
    listeners_closed: CancellationToken,
    /// A grace period given by the Shutdown RPC (else the configured one).
    grace: Mutex<Option<Duration>>,
}

impl Shutdown {
    /// Shutdown tokens under the caller's token.
    pub fn new(parent: &CancellationToken) -> Self {
        Shutdown {
            stop: parent.child_token(),
            relays: CancellationToken::new(),
            control: CancellationToken::new(),
            listeners_closed: CancellationToken::new(),
            grace: Mutex::new(None),
        }
    }

    /// Starts shutting down, with `grace` instead of the configured period.
    /// The first request's grace period wins.
    pub fn request(&self, grace: Option<Duration>) {
        if !self.stop.is_cancelled() {
            *self.grace.lock().unwrap_or_else(|e| e.into_inner()) = grace;
        }
        self.stop.cancel();
    }

    /// Waits until every listener is closed and its file removed.
    pub async fn listeners_closed(&self) {
        self.listeners_closed.cancelled().await;
    }

    fn grace(&self, default: Duration) -> Duration {
        self.grace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(default)
    }
}

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
    state.guests.close();
    if timeout(grace, state.guests.wait()).await.is_err() {
        tracing::info!(
            open = state.guests.len(),
            ?grace,
            "grace period over; closing open relays"
        );
        state.shutdown.relays.cancel();
        state.guests.wait().await;
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
