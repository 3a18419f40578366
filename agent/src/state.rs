//! What every task of a running agent shares, and the tokens that sequence
//! its shutdown (the steps themselves are [`crate::shutdown`]).

use crate::config::AgentConfig;
use crate::control_caps::Totals;
use crate::dispatch::{ConnId, Dispatcher};
use crate::forwards::Forwards;
use crate::ports::watch::PortWatch;
use crate::registry::Registry;
use crate::stream_pool::StreamPools;
use sockfwd_proto::accept::accept_next;
use sockfwd_proto::backoff::Backoff;
use sockfwd_proto::log_throttle::LogThrottle;
use sockfwd_proto::transport::{Listener, Peer, Stream, VMADDR_CID_HOST};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The running agent's state, behind an `Arc` in every task.
pub struct AgentState {
    /// The configuration.
    pub config: AgentConfig,
    /// Stream-port connections waiting to be claimed.
    pub registry: Registry,
    /// Pre-opened streams parked per control connection.
    pub pools: StreamPools,
    /// Routing of connection requests to Accept streams.
    pub dispatcher: Dispatcher,
    /// The forward table (Bind's listeners and their counters).
    pub forwards: Forwards,
    /// Shutdown sequencing.
    pub shutdown: Shutdown,
    /// Accept loops of every listener; all end at shutdown step 1.
    pub listeners: TaskTracker,
    /// Forwarded connections of both directions, waiting or relaying; given
    /// the grace period.
    pub connections: TaskTracker,
    /// Control connections, the dialer, and stream-port handshakes.
    pub tasks: TaskTracker,
    /// One permit per client connection the open-file limit can carry
    /// (`sockfwd_proto::limits`): out of permits, a new client is refused at
    /// once rather than starving the stream connections it needs.
    pub client_slots: Arc<Semaphore>,
    /// Throttles per-connection log lines (refusals, failures), one allowance
    /// per kind: a guest or host flood cannot flood the log.
    pub log_throttle: LogThrottle,
    /// What all control connections hold together, and what was refused.
    pub control_totals: Arc<Totals>,
    /// The one watcher of the guest's TCP listeners every `WatchPorts` shares.
    pub ports: Arc<PortWatch>,
    next_conn: AtomicU64,
}

impl AgentState {
    /// Fresh state for `config`, shutting down when `parent` is cancelled.
    pub fn new(config: AgentConfig, parent: &CancellationToken) -> Self {
        let client_slots = Arc::new(Semaphore::new(sockfwd_proto::limits::connection_budget()));
        AgentState {
            registry: Registry::default(),
            pools: StreamPools::new(config.max_pooled_streams, Arc::clone(&client_slots)),
            dispatcher: Dispatcher::new(config.max_pending),
            forwards: Forwards::default(),
            shutdown: Shutdown::new(parent),
            listeners: TaskTracker::new(),
            connections: TaskTracker::new(),
            tasks: TaskTracker::new(),
            client_slots,
            log_throttle: LogThrottle::per_second(),
            control_totals: Arc::new(Totals::default()),
            ports: Arc::new(PortWatch::default()),
            next_conn: AtomicU64::new(0),
            config,
        }
    }

    /// Whether a connection to a host-facing `port` (control or streams) from
    /// `peer` may be served: Unix peers always, vsock peers from the host (CID
    /// 2) unless `allow_any_cid`. A refusal is logged.
    pub fn from_host(&self, port: &str, peer: Peer) -> bool {
        let allowed = match peer {
            Peer::Unix => true,
            Peer::Vsock { cid, .. } => self.config.allow_any_cid || cid == VMADDR_CID_HOST,
        };
        if !allowed {
            if let Some(pass) = self.log_throttle.allow("foreign CID") {
                tracing::warn!(
                    port,
                    ?peer,
                    suppressed = pass.suppressed,
                    "connection from a CID other than the host; closed"
                );
            }
        }
        allowed
    }

    /// Accepts on the host-facing `port` (`control` or `streams`) until
    /// shutdown, and serves each connection [`from_host`](Self::from_host)
    /// that `admit` takes (it returns the serving future) in its own task. A
    /// connection refused by either is closed before anything is spawned for
    /// it: a burst of refused connections costs no task each.
    pub async fn serve_host_port<F, Fut>(self: &Arc<Self>, port: &str, listener: Listener, admit: F)
    where
        F: Fn(Arc<AgentState>, Stream) -> Option<Fut>,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut backoff = Backoff::accept();
        while let Some((stream, peer)) =
            accept_next(&listener, &mut backoff, &self.shutdown.stop).await
        {
            if !self.from_host(port, peer) {
                continue;
            }
            if let Some(serving) = admit(Arc::clone(self), stream) {
                self.tasks.spawn(serving);
            }
        }
        tracing::debug!(port, listener = %listener.address(), "listener closed");
    }

    /// A fresh control connection ID.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The tokens that sequence shutdown; see [`crate::shutdown`] for the steps.
pub struct Shutdown {
    /// Step 1: cancelled by the caller's token (signals) or the Shutdown RPC.
    pub stop: CancellationToken,
    /// Step 3's end: open relays are closed.
    pub relays: CancellationToken,
    /// Step 4: control connections close.
    pub control: CancellationToken,
    /// Cancelled once step 1 is complete.
    pub listeners_closed: CancellationToken,
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

    /// The grace period: the Shutdown RPC's, else `default`.
    pub fn grace(&self, default: Duration) -> Duration {
        self.grace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(default)
    }
}
