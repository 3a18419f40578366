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
//!
//! The other direction (host to guest, an extension): [`guest`] opens a stream
//! and has the agent connect it to a target in the guest; [`proxy`] serves host
//! listeners for `-L` specs ([`local`]) and for the library's API;
//! [`autofwd`] follows the guest's listening ports; `runtime` keeps the
//! listeners, and [`admin`] ([`status`]) controls a running relay.
//!
//! # Library use
//!
//! A host program reaches services in a guest with a [`Guest`] handle:
//! [`Guest::forward`] one mapping (a [`ProxySession`] with its bound address,
//! `close()` and `closed().await`), [`Guest::forward_all`] (all or nothing),
//! [`Guest::open`] one raw connection, and a [`ProxyManager`] for many
//! sessions. See `examples/forward_and_fetch.rs`.

pub mod admin;
pub mod autofwd;
pub mod cli;
pub mod config;
mod connect;
mod control;
pub mod forwards;
pub mod framing;
pub mod guest;
pub mod limits;
pub mod local;
pub mod proxy;
pub mod report;
mod runtime;
mod session;
pub mod spec;
pub mod status;

pub use config::{Config, ConfigError, Control};
pub use connect::{StreamError, BAD_STREAM_ID, DIAL_FAILED, SHUTTING_DOWN};
pub use control::{BACKOFF_MAX, BACKOFF_MIN};
pub use forwards::{CounterSnapshot, ForwardCounters, ForwardTable};
pub use guest::{Guest, GuestOptions, PortEvents, ProxyError};
pub use local::{LocalSpec, LocalSpecError};
pub use proxy::{LocalAddr, ProxyManager, ProxySession};
pub use session::{CallError, SessionError};
pub use spec::Forward;

use limits::{Caps, LogThrottle};
use sockfwd_proto::rpc::SocketForwardClient;
use sockfwd_proto::transport::{Address, DialError, ListenerError};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;
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
    /// An `-L` listener could not be bound (the others were closed).
    #[error("cannot start the host listeners")]
    Local(#[source] ProxyError),
    /// The admin socket could not be created.
    #[error("cannot create the admin socket")]
    Admin(#[source] ListenerError),
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
    /// The current session's client (`None` between sessions).
    pub(crate) client: watch::Sender<Option<SocketForwardClient>>,
    /// Host-to-guest connections, over whatever session is up.
    pub(crate) guest: Guest,
    /// Host listeners (`-L`, admin, auto-forward).
    pub(crate) locals: runtime::Locals,
}

/// Prints one line on stdout (listener reports meant for scripts), flushed.
pub(crate) fn print_line(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    // A closed stdout is no reason to fail; the log has the line too.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
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
    if table.is_empty() && config.locals.is_empty() && config.auto_forward.is_none() {
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
    // A child: ending the run on a fatal error must not cancel the caller's token.
    let shutdown = shutdown.child_token();
    let (tracker, hard_stop) = (TaskTracker::new(), CancellationToken::new());
    let (client, client_rx) = watch::channel(None);
    let guest = Guest::linked(
        client_rx,
        config.streams.clone(),
        GuestOptions {
            stream_timeout: config.stream_timeout,
            call_timeout: config.stream_timeout + config.dial_timeout,
            framing: config.framing,
            relay: config.relay.clone(),
        },
        guest::Tasks {
            tracker: tracker.clone(),
            stop: shutdown.clone(),
            hard_stop: hard_stop.clone(),
        },
    );
    // Every host listener is bound before anything else happens, or none.
    let admin = config
        .admin
        .as_deref()
        .map(admin::bind)
        .transpose()
        .map_err(RelayError::Admin)?;
    let specs = config
        .locals
        .iter()
        .map(|s| {
            s.parse::<LocalSpec>().map_err(|source| {
                RelayError::Config(ConfigError::Local {
                    spec: s.clone(),
                    source,
                })
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<&str> = config.locals.iter().map(String::as_str).collect();
    let sessions = guest
        .forward_specs(&specs, &names)
        .map_err(RelayError::Local)?;
    let locals = runtime::Locals::default();
    for (raw, session) in config.locals.iter().zip(sessions) {
        let line = format!(
            "listening {} -> {}",
            session.local_addr(),
            session.spec().remote
        );
        print_line(&line);
        let id = locals.add(runtime::Origin::Spec(raw.clone()), session);
        tracing::info!(forward_id = %id, "{line}");
    }
    let shared = Arc::new(Shared {
        caps: Caps::new(limits),
        config,
        table,
        tracker,
        shutdown,
        hard_stop,
        log_throttle: LogThrottle::new(LOG_LINES_PER_SEC, Duration::from_secs(1)),
        client,
        guest,
        locals,
    });
    if let Some(listener) = admin {
        tokio::spawn(admin::serve(shared.clone(), listener));
    }
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
