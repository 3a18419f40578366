//! sockfwd guest agent: creates the forwarded Unix sockets inside the guest and
//! serves the socketforward ttrpc service (control channel) and the stream port.
//!
//! Layout, in the order of one connection's flow:
//! - [`config`]: the validated [`AgentConfig`], built by [`load`] from the
//!   defaults, the file, the kernel command line ([`cmdline`]) and the flags
//!   ([`cli`]), each value parsed by [`keys`]; [`print_config`] shows it;
//! - [`boot`]: the configuration's forwards, bound before the agent is ready;
//! - [`notify`]: systemd readiness, watchdog and stopping notifications;
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
pub mod boot;
pub mod cli;
pub mod cmdline;
pub mod config;
pub mod control;
pub mod dispatch;
pub mod guest;
pub mod keys;
pub mod listeners;
pub mod load;
pub mod notify;
pub mod outbound;
pub mod ports;
pub mod print_config;
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
    /// A forward from the configuration could not be bound.
    #[error("boot-time forward")]
    BootForward(#[source] listeners::BindError),
}

/// Sent once the agent is ready: the control channel is listening (or its
/// dialer started), the stream port is listening, and the boot-time forwards
/// exist.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The control channel as configured.
    pub control: ControlMode,
    /// The stream port.
    pub streams: Address,
    /// Cancelled when shutdown begins (signal or Shutdown RPC), for systemd's
    /// STOPPING=1; cancelling it starts shutdown.
    pub stopping: CancellationToken,
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

/// [`run`], telling `ready` once the listeners are bound and the boot-time
/// forwards exist (for systemd's READY=1, or a test waiting to connect).
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
    if let Err(err) = boot::bind_forwards(&state).await {
        // Undo what was bound; the unspawned listeners go with this frame.
        state.shutdown.request(None);
        shutdown::drain(&state).await;
        return Err(AgentError::BootForward(err));
    }
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
            stopping: state.shutdown.stop.clone(),
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
