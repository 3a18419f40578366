//! sockfwd host relay: binds forwards in the guest and splices each guest
//! connection to a host socket.
//!
//! Layout, in the order a connection meets them: [`cli`] turns flags into a
//! validated [`Config`] ([`config`], with forward specs parsed in [`spec`]);
//! [`run`] keeps a control session going (`control`: dial or listen, reconnect;
//! `session`: Bind, Accept, liveness); each `ConnectRequest` is resolved in the
//! [`forwards`] table, checked against the caps in [`limits`], and served by
//! `connect` (host dial and stream open at once, result, relay), with its
//! [`framing`] chosen per stream. [`report`] formats error chains.

pub mod cli;
pub mod config;
mod connect;
mod control;
pub mod forwards;
pub mod framing;
pub mod limits;
pub mod report;
mod session;
pub mod spec;

pub use config::{Config, ConfigError, Control};
pub use connect::{StreamError, BAD_STREAM_ID, DIAL_FAILED, SHUTTING_DOWN};
pub use control::{BACKOFF_MAX, BACKOFF_MIN};
pub use forwards::{CounterSnapshot, ForwardCounters, ForwardTable};
pub use session::{CallError, SessionError};
pub use spec::Forward;

use limits::{Caps, LogThrottle};
use sockfwd_proto::transport::{Address, DialError, ListenerError};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Log lines per second for per-connection refusals and failures; the rest are
/// counted and reported with the next line that gets through.
const LOG_LINES_PER_SEC: u32 = 20;

/// Why the relay stopped (shutdown is not an error).
#[derive(Debug, Error)]
pub enum RelayError {
    /// The configuration is unusable.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// `--control`: the agent could not be dialed within the boot timeout.
    #[error("cannot reach the agent's control port at {addr}")]
    AgentUnreachable {
        /// The control address.
        addr: Address,
        /// The last dial error.
        #[source]
        source: DialError,
    },
    /// `--control-listen`: the listener could not be created.
    #[error("cannot listen for the agent")]
    Listen(#[source] ListenerError),
    /// `--control-listen`: no agent dialed in within the boot timeout.
    #[error("no agent dialed in on {addr} within {after:?}")]
    NoAgentDialedIn {
        /// The control address.
        addr: Address,
        /// The boot timeout.
        after: Duration,
    },
    /// The first session never became ready: Bind refused, or the boot timeout passed.
    #[error("no working control session with the agent at {addr}")]
    NoSession {
        /// The control address.
        addr: Address,
        /// The last session's failure.
        #[source]
        source: SessionError,
    },
}

/// State every session and connection task shares; lives as long as [`run`].
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) table: Arc<ForwardTable>,
    pub(crate) caps: Caps,
    /// Where connection tasks run; waited on (up to the grace) at shutdown.
    pub(crate) tracker: TaskTracker,
    /// Cancelled on SIGTERM/SIGINT: no new requests are taken.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the shutdown grace is over: open relays are cut.
    pub(crate) hard_stop: CancellationToken,
    /// Throttles per-connection log lines (refusals, failures).
    pub(crate) log_throttle: LogThrottle,
}

/// Runs the relay until `shutdown` is cancelled (then `Ok`, after open relays
/// ended or the grace passed) or it cannot start: see [`RelayError`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RelayError> {
    let table = Arc::new(ForwardTable::new(
        &config.forwards,
        config.limits.max_rate_per_forward,
    ));
    run_with_table(config, table, shutdown).await
}

/// [`run`] with a forward table the caller keeps, to read its counters. The
/// table must have been built from `config.forwards`.
pub async fn run_with_table(
    config: Config,
    table: Arc<ForwardTable>,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    config.validate()?;
    if table.is_empty() {
        tracing::warn!("no forwards configured: nothing will be forwarded");
    }
    let grace = config.shutdown_grace;
    let mut limits = config.limits;
    // Never admit more connections than the open-file limit can carry: out of
    // descriptors, refusing up front beats failing halfway through a setup.
    let budget = sockfwd_proto::limits::connection_budget();
    if limits.max_concurrent == 0 || limits.max_concurrent > budget {
        tracing::info!(
            max_concurrent = budget,
            "total connection cap set by the open-file limit"
        );
        limits.max_concurrent = budget;
    }
    let shared = Arc::new(Shared {
        caps: Caps::new(limits),
        config,
        table,
        tracker: TaskTracker::new(),
        // A child: ending the run on a fatal error must not cancel the caller's token.
        shutdown: shutdown.child_token(),
        hard_stop: CancellationToken::new(),
        log_throttle: LogThrottle::new(LOG_LINES_PER_SEC, Duration::from_secs(1)),
    });
    let result = control::run(&shared).await;
    // Shutdown or a fatal error: no session takes requests any more.
    shared.shutdown.cancel();
    shared.tracker.close();
    if !shared.tracker.is_empty() {
        tracing::info!(
            open = shared.tracker.len(),
            ?grace,
            "waiting for open connections"
        );
    }
    if tokio::time::timeout(grace, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = shared.tracker.len(),
            "shutdown grace over; closing open connections"
        );
        shared.hard_stop.cancel();
        shared.tracker.wait().await;
    }
    if result.is_ok() {
        tracing::info!("relay stopped");
    }
    result
}
