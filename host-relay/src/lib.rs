//! sockfwd host relay: binds forwards in the guest and splices each guest
//! connection to a host socket, and the other way round.
//!
//! Two directions, named as ssh users know them (from the host): a **remote
//! forward** listens in the guest and dials a host socket (`--forward`,
//! `--uds-mount`: nerdbox's direction); a **local forward** listens on the host
//! and dials a target in the guest (`-L`, `--auto-forward`, [`Guest::forward`]).
//!
//! Layout, in layers; a module uses only modules of the layers below it:
//!
//! 1. what users and peers say, parsed and checked: [`remote_spec`] (`--forward`,
//!    `--uds-mount`), [`local_spec`] (`-L`), [`port_filter`], [`framing`],
//!    [`limits`]; then [`config`] ([`Config`]) and [`remote_table`]
//!    ([`ForwardTable`]) over them;
//! 2. talking to the agent: [`rpc`] (deadlines, [`CallError`], the Accept
//!    stream's sending half) and `streams` (a stream-port connection with its
//!    handshake); [`local`] opens local forwards with them ([`Guest`]) and
//!    serves their host listeners;
//! 3. the control session: `control` (dial or listen, one session's Bind,
//!    Accept and liveness, reconnects and the boot deadline), and `shared`, the
//!    state of a run;
//! 4. the remote forwards' connections ([`remote_connect`], fed by the
//!    session) and the admin socket ([`admin`]);
//! 5. [`run`], which starts them all, and [`cli`];
//! 6. the binary.
//!
//! # Library use
//!
//! A host program reaches services in a guest with a [`Guest`] handle:
//! [`Guest::forward`] one mapping (a [`ProxySession`] with its bound address,
//! `close()` and `closed().await`), [`Guest::forward_all`] (all or nothing),
//! [`Guest::open`] one raw connection, and a [`ProxyManager`] for many
//! sessions. See `examples/forward_and_fetch.rs`.

pub mod admin;
pub mod cli;
pub mod config;
mod control;
pub mod framing;
pub mod limits;
pub mod local;
pub mod local_spec;
pub mod port_filter;
pub mod remote_connect;
pub mod remote_spec;
pub mod remote_table;
pub mod rpc;
mod shared;
mod streams;

/// Error chains as text (the shared printer, [`sockfwd_proto::report`]).
pub use sockfwd_proto::report;

/// Per-forward counters (the shared type, [`sockfwd_proto::counters`]).
pub use sockfwd_proto::counters::{CounterSnapshot, ForwardCounters};

pub use config::{Config, ConfigError, Control};
pub use control::channel::{BACKOFF_MAX, BACKOFF_MIN};
pub use control::session::SessionError;
pub use local::guest_handle::{Guest, GuestOptions, PortEvents, ProxyError};
pub use local::proxy_session::{LocalAddr, ProxyManager, ProxySession};
pub use local_spec::{LocalSpec, LocalSpecError};
pub use remote_connect::{BAD_STREAM_ID, DIAL_FAILED, SHUTTING_DOWN};
/// `--forward` and `--uds-mount` specs (the module's name before the layers).
pub use remote_spec as spec;
pub use remote_spec::Forward;
/// The remote forward table (the module's name before the layers).
pub use remote_table as forwards;
pub use remote_table::ForwardTable;
pub use rpc::CallError;
pub use streams::StreamError;

use admin::server::{self, Admin, AdminAccess};
use control::channel::{self, ChannelError};
use control::connector::{Connector, ReachError};
use control::session::SessionParts;
use limits::Caps;
use local::auto_forward::{self, AutoForward};
use local::guest_handle::Tasks;
use local::listener_table::{announce, ListenerTable, Origin};
use remote_connect::RemoteForwards;
use shared::Shared;
use sockfwd_proto::log_throttle::LogThrottle;
use sockfwd_proto::transport::{Address, DialError, ListenerError};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Log lines per second for each kind of per-connection refusal and failure;
/// the rest are counted and reported with the next line that gets through.
const LOG_LINES_PER_SEC: u32 = 20;

/// Why the relay stopped (shutdown is not an error).
#[derive(Debug, Error)]
pub enum RelayError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--control`: the agent could not be dialed within the boot timeout.
    #[error("cannot reach the agent's control port")]
    AgentUnreachable {
        /// The control address.
        addr: Address,
        /// The last dial error (it names the address).
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
    #[error("no working control session on {addr}")]
    NoSession {
        /// The control address.
        addr: Address,
        /// The last session's failure.
        #[source]
        source: SessionError,
    },
}

impl RelayError {
    /// The control channel's errors as the relay's: one variant each.
    fn from_channel(e: ChannelError, addr: &Address) -> RelayError {
        match e {
            ChannelError::Reach(ReachError::Unreachable(source)) => RelayError::AgentUnreachable {
                addr: addr.clone(),
                source,
            },
            ChannelError::Reach(ReachError::Listen(e)) => RelayError::Listen(e),
            ChannelError::Reach(ReachError::NoAgentDialedIn { addr, after }) => {
                RelayError::NoAgentDialedIn { addr, after }
            }
            ChannelError::NoSession { addr, source } => RelayError::NoSession { addr, source },
        }
    }
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
        client_rx.clone(),
        config.streams.clone(),
        GuestOptions {
            stream_timeout: config.stream_timeout,
            call_timeout: config.stream_timeout + config.dial_timeout,
            framing: config.framing,
            relay: config.relay.clone(),
        },
        Tasks {
            tracker: tracker.clone(),
            stop: shutdown.clone(),
            hard_stop: hard_stop.clone(),
        },
    );
    // Every host listener is bound before anything else happens, or none.
    let admin_listener = config
        .admin
        .as_deref()
        .map(|path| server::bind(path, config.admin_group))
        .transpose()
        .map_err(RelayError::Admin)?;
    let listeners = Arc::new(ListenerTable::default());
    bind_locals(&config, &guest, &listeners)?;
    let connector = Connector::new(&config.control, shutdown.clone())
        .map_err(|e| RelayError::from_channel(e.into(), config.control.address()))?;
    let shared = Arc::new(Shared {
        caps: Caps::new(limits),
        config,
        table,
        tracker,
        shutdown,
        hard_stop,
        log_throttle: LogThrottle::new(LOG_LINES_PER_SEC, Duration::from_secs(1)),
        client,
    });
    if let Some(listener) = admin_listener {
        let admin = Arc::new(Admin {
            access: AdminAccess::for_this_process(shared.config.admin_group),
            shared: Arc::clone(&shared),
            guest: guest.clone(),
            listeners: Arc::clone(&listeners),
        });
        shared.tracker.spawn(server::serve(admin, listener));
    }
    if let Some(filter) = shared.config.auto_forward.clone() {
        let auto = AutoForward {
            guest: guest.clone(),
            listeners: Arc::clone(&listeners),
            filter,
            bind: shared.config.auto_forward_bind,
        };
        let following = auto_forward::follow(auto, client_rx, shared.shutdown.clone());
        shared.tracker.spawn(following);
    }
    let parts = SessionParts {
        config: &shared.config,
        table: &shared.table,
        shutdown: &shared.shutdown,
        client: &shared.client,
        throttle: &shared.log_throttle,
    };
    let requests = RemoteForwards(Arc::clone(&shared));
    let result = channel::run(&parts, &connector, &requests)
        .await
        .map_err(|e| RelayError::from_channel(e, shared.config.control.address()));
    // Shutdown or a fatal error: no session takes requests any more, and no
    // listener accepts.
    shared.shutdown.cancel();
    drop(connector);
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

/// Binds the `-L` listeners, all or none, and announces each.
fn bind_locals(
    config: &Config,
    guest: &Guest,
    listeners: &ListenerTable,
) -> Result<(), RelayError> {
    let specs: Vec<LocalSpec> = config.locals.iter().map(|l| l.spec.clone()).collect();
    let names: Vec<&str> = config.locals.iter().map(|l| l.text.as_str()).collect();
    let sessions = guest
        .forward_specs(&specs, &names)
        .map_err(RelayError::Local)?;
    for (arg, session) in config.locals.iter().zip(sessions) {
        let line = format!(
            "listening {} -> {}",
            session.local_addr(),
            session.spec().remote_text()
        );
        announce(&line);
        let id = listeners.add(Origin::Spec(arg.text.clone()), session);
        tracing::info!(forward_id = %id, "{}", sockfwd_proto::log_text::escape_clipped(&line, 512));
    }
    Ok(())
}
