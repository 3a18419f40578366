//! sockfwd guest agent: creates the forwarded Unix sockets inside the guest and
//! serves the socketforward ttrpc service (control channel) and the stream port.
//!
//! Layout, in the order of one connection's flow:
//! - [`config`], [`cli`]: the validated [`AgentConfig`] and the flags layer;
//! - [`control`]: control connections (listen or dial), one ttrpc server each,
//!   serving [`service`];
//! - [`listeners`]: Bind and the forward table, with [`validate`] for paths;
//! - [`guest`]: one guest connection: request, wait, claim, relay;
//! - [`dispatch`]: which Accept stream gets each request;
//! - [`streams`] and [`registry`]: the stream port and its waiting streams;
//! - [`shutdown`]: the order things stop in; [`backoff`], [`stats`]: helpers;
//! - extensions: [`outbound`] and [`target`] (host-initiated `Connect`),
//!   [`ports`] (`WatchPorts`).
//!
//! The binary (`main.rs`) parses flags, sets up logging and signals, and calls
//! [`run`]. The wire contract is `shared/docs/wire-protocol.md`.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod control;
pub mod dispatch;
pub mod guest;
pub mod listeners;
pub mod outbound;
pub mod ports;
pub mod registry;
pub mod service;
pub mod shutdown;
pub mod state;
pub mod stats;
pub mod streams;
pub mod target;
pub mod validate;

pub use config::{AgentConfig, ConfigError, ControlMode};

use sockfwd_proto::transport::{Address, Listener, ListenerError};
use state::AgentState;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Why the agent could not run.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The configuration failed validation.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// The control listener could not be created.
    #[error("control channel")]
    Control(#[source] ListenerError),
    /// The stream-port listener could not be created.
    #[error("stream port")]
    Streams(#[source] ListenerError),
}

/// Sent once the agent is ready: the control channel is listening (or its
/// dialer started) and the stream port is listening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The control channel as configured.
    pub control: ControlMode,
    /// The stream port.
    pub streams: Address,
}

enum ControlStart {
    Listen(Listener),
    Dial(Address),
}

/// Runs the agent until `shutdown` is cancelled (or a Shutdown RPC), then shuts
/// down in order (see [`shutdown`]) and returns.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    run_with_ready(config, shutdown, None).await
}

/// [`run`], telling `ready` when the listeners are bound (for systemd's
/// READY=1, or a test waiting to connect).
pub async fn run_with_ready(
    config: AgentConfig,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<Ready>>,
) -> Result<(), AgentError> {
    config.validate()?;
    let streams = Listener::bind(&config.streams).map_err(AgentError::Streams)?;
    let control = match &config.control {
        ControlMode::Listen(addr) => {
            ControlStart::Listen(Listener::bind(addr).map_err(AgentError::Control)?)
        }
        ControlMode::Dial(addr) => ControlStart::Dial(addr.clone()),
    };
    let state = Arc::new(AgentState::new(config, &shutdown));
    state
        .listeners
        .spawn(streams::serve(state.clone(), streams));
    match control {
        ControlStart::Listen(listener) => {
            state
                .listeners
                .spawn(control::listen(state.clone(), listener));
        }
        ControlStart::Dial(addr) => {
            // The dialer holds its live connection until shutdown step 4, so it
            // belongs with the control connections, not the listeners.
            state.tasks.spawn(control::dial(state.clone(), addr));
        }
    }
    tracing::info!(
        control = %state.config.control,
        streams = %state.config.streams,
        "agent ready"
    );
    if let Some(ready) = ready {
        let _ = ready.send(Ready {
            control: state.config.control.clone(),
            streams: state.config.streams.clone(),
        });
    }
    shutdown::drain(&state).await;
    Ok(())
}

/// An error and its causes joined by `: `, for one log line or a ttrpc status.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
