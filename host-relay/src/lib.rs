//! sockfwd host relay: binds forwards in the guest and splices each guest
//! connection to a host socket, and the other way round.
//!
//! Two directions, named as ssh users know them (from the host): a **remote
//! forward** listens in the guest (a socket file or a TCP address) and dials a
//! host socket or TCP address (`-R`, `--forward`, `--uds-mount`: nerdbox's
//! direction); a **local forward** listens on the host and dials a target in
//! the guest (`-L`, `--auto-forward`, [`Guest::forward`]).
//!
//! Layout, in layers; a module uses only modules of the layers below it:
//!
//! 1. what users and peers say, parsed and checked: [`remote_spec`] (`-R`,
//!    `--forward`, `--uds-mount`), [`local_spec`] (`-L`), [`port_filter`], [`framing`],
//!    [`limits`]; then [`config`] ([`Config`]) and [`remote_table`]
//!    ([`ForwardTable`]) over them;
//! 2. talking to the agent: [`rpc`] (deadlines, [`CallError`], the Accept
//!    stream's sending half) and `streams` (a stream-port connection with its
//!    handshake); [`local`] opens local forwards with them ([`Guest`]) and
//!    serves their host listeners;
//! 3. the control session: `control` (dial or listen, one session's Bind,
//!    Accept and liveness, reconnects and the boot deadline), `shared`, the
//!    state of a run, and [`remote_control`], remote forwards added and removed
//!    while it runs;
//! 4. the remote forwards' connections ([`remote_connect`], fed by the
//!    session) and the admin socket ([`admin`]);
//! 5. [`run`], which starts them all, and [`cli`];
//! 6. the binary.
//!
//! # Library use
//!
//! A host program reaches services in a guest with a [`Guest`] handle:
//! [`Guest::forward`] one mapping (a [`LocalForward`] with its bound address,
//! `close()` and `closed().await`), [`Guest::forward_all`] (all or nothing),
//! [`Guest::open`] one raw connection, and a [`LocalForwards`] for many
//! sessions. See `examples/forward_and_fetch.rs`.
//!
//! A program that runs the relay itself ([`Relay::start`]) also adds remote
//! forwards while it runs, the code path of `sockfwd-relay add -R`: a
//! [`RemoteForward`] with its bound guest address and `close()`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sockfwd_relay::{Config, Control, Relay};
//! use tokio_util::sync::CancellationToken;
//!
//! let control = Control::Dial("unix:///run/vm/control.sock".parse()?);
//! let config = Config::new(control, "unix:///run/vm/streams.sock".parse()?, vec![]);
//! let relay = Relay::start(config, CancellationToken::new()).await?;
//! // A guest TCP listener on a port the agent picks, reaching the host's PostgreSQL.
//! let db = relay.remote().add_spec("0:localhost:5432").await?;
//! println!("guest clients dial {:?}", db.guest_addr());
//! db.close().await?;
//! # Ok(())
//! # }
//! ```

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
pub mod remote_control;
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
pub use control::channel::{ChannelError, BACKOFF_MAX, BACKOFF_MIN};
pub use control::connector::ReachError;
pub use control::session::SessionError;
#[allow(deprecated)]
pub use local::forward::LocalAddr;
pub use local::forward::{LocalForward, LocalForwards};
pub use local::guest_handle::{Guest, GuestOptions, LocalForwardError, PortEvents};

/// A local forward's handle: [`LocalForward`] (its name before the vocabulary).
#[deprecated(since = "0.2.0", note = "renamed LocalForward")]
pub type ProxySession = LocalForward;
/// Many local forwards' handles: [`LocalForwards`] (its name before the vocabulary).
#[deprecated(since = "0.2.0", note = "renamed LocalForwards")]
pub type ProxyManager = LocalForwards;
/// Why a local-forward operation failed: [`LocalForwardError`] (its name
/// before the vocabulary).
#[deprecated(since = "0.2.0", note = "renamed LocalForwardError")]
pub type ProxyError = LocalForwardError;
pub use local_spec::{LocalSpec, LocalSpecError};
pub use remote_connect::{BAD_STREAM_ID, DIAL_FAILED, SHUTTING_DOWN};
pub use remote_control::{RemoteControl, RemoteError, RemoteForward};
/// `--forward` and `--uds-mount` specs (the module's name before the layers).
pub use remote_spec as spec;
pub use remote_spec::{Forward, HostTarget};
/// The remote forward table (the module's name before the layers).
pub use remote_table as forwards;
pub use remote_table::{ForwardTable, NO_TCP_LISTEN};
pub use rpc::CallError;
/// Where a forward listens: a socket file or a TCP address (the shared type,
/// [`sockfwd_proto::transport::ListenAt`]).
pub use sockfwd_proto::transport::ListenAt;
pub use streams::StreamError;

use admin::server::{self, Admin, AdminAccess};
use control::channel;
use control::connector::Connector;
use control::session::SessionParts;
use limits::Caps;
use local::auto_forward::{self, AutoForward};
use local::guest_handle::Tasks;
use local::listener_table::{announce, ListenerTable, Origin};
use remote_connect::RemoteForwards;
use rpc::Peer;
use shared::Shared;
use sockfwd_proto::log_throttle::LogThrottle;
use sockfwd_proto::transport::ListenerError;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the relay stopped (shutdown is not an error).
#[derive(Debug, Error)]
pub enum RelayError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The control channel never worked: no first connection (the agent
    /// unreachable, no agent dialing in, no listener), or no first session.
    #[error(transparent)]
    Control(#[from] ChannelError),
    /// An `-L` listener could not be bound (the others were closed).
    #[error("cannot start the host listeners")]
    Local(#[source] LocalForwardError),
    /// The admin socket could not be created.
    #[error("cannot create the admin socket")]
    Admin(#[source] ListenerError),
    /// The task [`Relay::start`] runs the relay in failed (it panicked).
    #[error("the relay's task failed")]
    Task(#[source] tokio::task::JoinError),
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
    drive(set_up(config, table, shutdown)?).await
}

/// A relay running in a task of its own, from a host program: its remote
/// forwards ([`Relay::remote`]) and its guest handle for local forwards
/// ([`Relay::guest`]) while it runs.
pub struct Relay {
    remote: RemoteControl,
    guest: Guest,
    task: JoinHandle<Result<(), RelayError>>,
}

impl Relay {
    /// Starts the relay on the current tokio runtime and returns once its
    /// first control session is ready, every configured forward bound (or
    /// with the error that stops it, as [`run`] would return it). It runs
    /// until `shutdown` is cancelled; [`Relay::wait`] awaits its end.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Relay, RelayError> {
        let table = Arc::new(ForwardTable::new(
            &config.forwards,
            config.limits.max_rate_per_forward,
        ));
        let run = set_up(config, table, shutdown)?;
        let (remote, guest) = (run.remote.clone(), run.guest.clone());
        let mut ready = run.client_rx.clone();
        let mut task = tokio::spawn(drive(run));
        tokio::select! {
            ended = &mut task => {
                // Stopped before a session was ready: shutdown (the end is
                // there for `wait`) or the error that stopped it.
                let end = ended.map_err(RelayError::Task)?;
                end?;
                let task = tokio::spawn(async { Ok(()) });
                Ok(Relay { remote, guest, task })
            }
            _ = ready.wait_for(Option::is_some) => Ok(Relay { remote, guest, task }),
        }
    }

    /// Adds, finds and removes remote forwards while the relay runs (the code
    /// path of `sockfwd-relay add -R` and `remove`).
    pub fn remote(&self) -> &RemoteControl {
        &self.remote
    }

    /// The relay's guest handle: local forwards over its current session.
    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    /// Resolves when the relay has stopped (after its shutdown grace).
    pub async fn wait(self) -> Result<(), RelayError> {
        self.task.await.map_err(RelayError::Task)?
    }
}

/// A relay set up to run: every host listener bound, the admin socket and
/// auto-forward started; the control channel not yet.
struct SetUp {
    shared: Arc<Shared>,
    connector: Connector,
    guest: Guest,
    remote: RemoteControl,
    client_rx: watch::Receiver<Option<Peer>>,
    /// The local forwards: held for the whole run (a dropped session closes
    /// its listener).
    listeners: Arc<ListenerTable>,
}

/// Binds every host listener (all or none) and starts what runs beside the
/// control channel.
fn set_up(
    config: Config,
    table: Arc<ForwardTable>,
    shutdown: CancellationToken,
) -> Result<SetUp, RelayError> {
    config.validate()?;
    if table.is_empty() && config.locals.is_empty() && config.auto_forward.is_none() {
        tracing::warn!("no forwards configured: nothing will be forwarded");
    }
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
    let connector =
        Connector::new(&config.control, shutdown.clone()).map_err(ChannelError::from)?;
    let remote = RemoteControl::new(Arc::clone(&table), guest.clone(), config.bind_timeout);
    let shared = Arc::new(Shared {
        caps: Caps::new(limits),
        config,
        table,
        tracker,
        shutdown,
        hard_stop,
        log_throttle: LogThrottle::per_second(),
        client,
        pool_gauge: Arc::default(),
    });
    if let Some(listener) = admin_listener {
        let admin = Arc::new(Admin {
            access: AdminAccess::for_this_process(shared.config.admin_group),
            shared: Arc::clone(&shared),
            guest: guest.clone(),
            listeners: Arc::clone(&listeners),
            remote: remote.clone(),
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
        let following = auto_forward::follow(auto, client_rx.clone(), shared.shutdown.clone());
        shared.tracker.spawn(following);
    }
    Ok(SetUp {
        shared,
        connector,
        guest,
        remote,
        client_rx,
        listeners,
    })
}

/// Runs the control channel until shutdown or a fatal error, then lets open
/// connections end within the grace.
async fn drive(run: SetUp) -> Result<(), RelayError> {
    let SetUp {
        shared,
        connector,
        listeners,
        ..
    } = run;
    let grace = shared.config.shutdown_grace;
    let parts = SessionParts {
        config: &shared.config,
        table: &shared.table,
        shutdown: &shared.shutdown,
        client: &shared.client,
        throttle: &shared.log_throttle,
    };
    let requests = RemoteForwards::new(Arc::clone(&shared));
    let result = channel::run(&parts, &connector, &requests)
        .await
        .map_err(RelayError::Control);
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
    drop(listeners);
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
