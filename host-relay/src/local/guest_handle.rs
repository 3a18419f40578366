//! The host's handle on one guest, for local forwards: open a stream on the
//! stream port with a fresh stream ID, then ask the agent (`Connect`) to
//! connect it to a target inside the guest.
//!
//! The handle either owns its control connection ([`Guest::dial`], for host
//! programs using the library) or follows the relay daemon's current session
//! (whatever control connection is up now; a call made while none is up waits
//! for one, within the stream deadline). Either way it knows what the agent of
//! that connection supports ([`Guest::agent_info`], its `Info`).

use crate::framing::{choose, FramingPolicy};
use crate::local_spec::LocalSpecError;
use crate::rpc::{ask_info, call, context, CallError, Peer};
use crate::streams::{open_stream, StreamError};
use sockfwd_proto::framing::Framing;
use sockfwd_proto::info::AgentInfo;
use sockfwd_proto::log_text::escape;
use sockfwd_proto::log_throttle::LogThrottle;
use sockfwd_proto::relay::RelayConfig;
use sockfwd_proto::rpc::{ConnectTargetRequest, PortEvent, SocketForwardClient, WatchPortsRequest};
use sockfwd_proto::stream_id::{self, SOCKET_FORWARD_PREFIX};
use sockfwd_proto::target::{Target, TargetParseError};
use sockfwd_proto::transport::{
    dial_with_retry, Address, ClientListenError, DialError, ListenAt, Stream,
};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Settings of a [`Guest`] handle.
#[derive(Debug, Clone)]
pub struct GuestOptions {
    /// Deadline for opening a stream (dial + handshake), and for waiting for a
    /// control session when none is up.
    pub stream_timeout: Duration,
    /// Deadline of a `Connect` call (the agent's own connect is bounded too).
    pub call_timeout: Duration,
    /// How forwarded connections' framing is chosen (see `--framing`).
    pub framing: FramingPolicy,
    /// Relay tuning.
    pub relay: RelayConfig,
}

impl Default for GuestOptions {
    fn default() -> Self {
        GuestOptions {
            stream_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(15),
            framing: FramingPolicy::Auto,
            relay: RelayConfig::default(),
        }
    }
}

/// Why an operation of the [`Guest`] handle (a local forward, a connection in
/// the guest, the port watch) failed.
#[derive(Debug, Error)]
pub enum LocalForwardError {
    /// The control port could not be reached.
    #[error("cannot reach the agent's control port")]
    Control(#[source] DialError),
    /// No control session came up within the deadline.
    #[error("no control session with the agent within {0:?}")]
    NoSession(Duration),
    /// The stream could not be opened.
    #[error(transparent)]
    Stream(StreamError),
    /// The agent refused or failed to connect the target.
    #[error("Connect to {target} failed")]
    Connect {
        /// The target.
        target: String,
        /// The agent's answer.
        #[source]
        source: CallError,
    },
    /// A spec did not parse.
    #[error("invalid -L {spec:?}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        #[source]
        source: LocalSpecError,
    },
    /// A host listener could not be created.
    #[error("-L {}: cannot listen on {listen}", escape(.spec))]
    Listen {
        /// The spec.
        spec: String,
        /// Where.
        listen: ListenAt,
        /// Why.
        #[source]
        source: ClientListenError,
    },
    /// A target does not parse.
    #[error("invalid target {target:?}")]
    Target {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        #[source]
        source: TargetParseError,
    },
    /// The agent could not start the port watch.
    #[error("WatchPorts failed")]
    Watch(#[source] CallError),
    /// The agent failed its `Info` call (other than by not having it).
    #[error("asking the agent's capabilities (Info) failed")]
    Info(#[source] CallError),
}

/// The tasks of forwarded connections and the token that cuts them.
#[derive(Clone)]
pub(crate) struct Tasks {
    /// Connection tasks.
    pub(crate) tracker: TaskTracker,
    /// Cancelled to end the listeners' accept loops (their tasks are on
    /// `tracker` too).
    pub(crate) stop: CancellationToken,
    /// Cancelled to cut open connections.
    pub(crate) hard_stop: CancellationToken,
}

struct Inner {
    client: watch::Receiver<Option<Peer>>,
    /// Held by a handle that owns its connection, so the channel stays open.
    _own: Option<watch::Sender<Option<Peer>>>,
    streams: Address,
    options: GuestOptions,
    tasks: Tasks,
    /// Throttles the per-connection lines of its local forwards.
    log_throttle: LogThrottle,
}

/// A handle on one guest; cheap to clone. See the module docs.
#[derive(Clone)]
pub struct Guest {
    inner: Arc<Inner>,
}

impl Guest {
    /// Dials the agent's control port (retrying while the VM boots, up to
    /// `boot_timeout`), asks its `Info`, and returns a handle that owns that
    /// connection. Nothing is bound in the guest; this connection never
    /// reconnects.
    pub async fn dial(
        control: &Address,
        streams: Address,
        options: GuestOptions,
        boot_timeout: Duration,
    ) -> Result<Guest, LocalForwardError> {
        let stream = dial_with_retry(control, options.stream_timeout, boot_timeout)
            .await
            .map_err(LocalForwardError::Control)?;
        let client = ttrpc::r#async::Client::new(sockfwd_proto::control_io::socket(stream));
        let client = SocketForwardClient::new(client);
        let info = ask_info(&client, options.call_timeout)
            .await
            .map_err(LocalForwardError::Info)?;
        let peer = Peer {
            client,
            info: Arc::new(info),
        };
        let (tx, rx) = watch::channel(Some(peer));
        let tasks = Tasks {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
        };
        Ok(Guest {
            inner: Arc::new(Inner {
                client: rx,
                _own: Some(tx),
                streams,
                options,
                tasks,
                log_throttle: LogThrottle::per_second(),
            }),
        })
    }

    /// A handle following the daemon's sessions.
    pub(crate) fn linked(
        client: watch::Receiver<Option<Peer>>,
        streams: Address,
        options: GuestOptions,
        tasks: Tasks,
    ) -> Guest {
        Guest {
            inner: Arc::new(Inner {
                client,
                _own: None,
                streams,
                options,
                tasks,
                log_throttle: LogThrottle::per_second(),
            }),
        }
    }

    pub(crate) fn options(&self) -> &GuestOptions {
        &self.inner.options
    }

    pub(crate) fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// The throttle of its per-connection log lines.
    pub(crate) fn log_throttle(&self) -> &LogThrottle {
        &self.inner.log_throttle
    }

    /// The framing forwarded connections use on this guest's stream port.
    pub(crate) fn framing(&self) -> Framing {
        choose(
            self.inner.options.framing,
            &self.inner.streams,
            Framing::supported_bits(),
        )
    }

    /// The current session's agent, waiting up to the stream deadline for one.
    pub(crate) async fn peer(&self) -> Result<Peer, LocalForwardError> {
        let limit = self.inner.options.stream_timeout;
        let mut rx = self.inner.client.clone();
        let got = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
        match got {
            Ok(Ok(c)) => c.clone().ok_or(LocalForwardError::NoSession(limit)),
            _ => Err(LocalForwardError::NoSession(limit)),
        }
    }

    /// The current control client, waiting up to the stream deadline for one.
    pub(crate) async fn client(&self) -> Result<SocketForwardClient, LocalForwardError> {
        Ok(self.peer().await?.client)
    }

    /// What the agent of the current control session supports (its answer to
    /// `Info`, asked once per session; [`AgentInfo::core_only`] for a nerdbox
    /// guest), waiting up to the stream deadline for a session.
    pub async fn agent_info(&self) -> Result<Arc<AgentInfo>, LocalForwardError> {
        Ok(self.peer().await?.info)
    }

    /// Opens a stream and has the agent connect it to `target`; the stream
    /// carries `framing`.
    pub(crate) async fn open_framed(
        &self,
        target: &Target,
        framing: Framing,
    ) -> Result<Stream, LocalForwardError> {
        let o = &self.inner.options;
        let client = self.client().await?;
        let id = stream_id::generate(SOCKET_FORWARD_PREFIX);
        // Registered in the guest before Connect names it.
        let stream = open_stream(&self.inner.streams, &id, o.stream_timeout, false)
            .await
            .map_err(LocalForwardError::Stream)?;
        let mut req = ConnectTargetRequest::new();
        req.stream_id = id.clone();
        req.target = target.to_string();
        req.framing = framing.wire();
        let limit = o.call_timeout;
        call(limit, client.connect(context(limit), &req))
            .await
            .map_err(|source| LocalForwardError::Connect {
                target: req.target.clone(),
                source,
            })?;
        tracing::debug!(stream_id = %id, target = %escape(&req.target), "connected to the guest target");
        Ok(stream)
    }

    /// Opens one raw connection to `target` inside the guest: `host:port`,
    /// `[v6]:port`, a name the guest resolves, or `unix:/path` (the shared
    /// target grammar, [`sockfwd_proto::target`]). The stream is the
    /// contract's plain byte stream (no EOF framing), an
    /// `AsyncRead + AsyncWrite`.
    pub async fn open(&self, target: &str) -> Result<Stream, LocalForwardError> {
        let target = target
            .parse::<Target>()
            .map_err(|source| LocalForwardError::Target {
                target: target.to_owned(),
                source,
            })?;
        self.open_framed(&target, Framing::Raw).await
    }

    /// Subscribes to the guest's TCP listeners: the current set first, then
    /// changes as they happen.
    pub async fn watch_ports(&self) -> Result<PortEvents, LocalForwardError> {
        let client = self.client().await?;
        let limit = self.inner.options.call_timeout;
        let rx = call(
            limit,
            client.watch_ports(
                ttrpc::context::Context::default(),
                &WatchPortsRequest::new(),
            ),
        )
        .await
        .map_err(LocalForwardError::Watch)?;
        Ok(PortEvents { rx })
    }
}

/// Guest port events from [`Guest::watch_ports`].
pub struct PortEvents {
    rx: ttrpc::r#async::ClientStreamReceiver<PortEvent>,
}

impl PortEvents {
    /// The next event; `Ok(None)` when the agent ended the stream.
    pub async fn next(&mut self) -> Result<Option<PortEvent>, CallError> {
        self.rx.recv().await.map_err(CallError::from)
    }
}
