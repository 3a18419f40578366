//! What every task of a running agent shares.

use crate::config::AgentConfig;
use crate::dispatch::{ConnId, Dispatcher};
use crate::listeners::Forwards;
use crate::registry::Registry;
use crate::shutdown::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The running agent's state, behind an `Arc` in every task.
pub struct AgentState {
    /// The validated configuration.
    pub config: AgentConfig,
    /// Stream-port connections waiting to be claimed.
    pub registry: Registry,
    /// Routing of connection requests to Accept streams.
    pub dispatcher: Dispatcher,
    /// The forward table (Bind's listeners and their counters).
    pub forwards: Forwards,
    /// Shutdown sequencing.
    pub shutdown: Shutdown,
    /// Accept loops of every listener; all end at shutdown step 1.
    pub listeners: TaskTracker,
    /// Guest connections, waiting or relaying; given the grace period.
    pub guests: TaskTracker,
    /// Control connections, the dialer, and stream-port handshakes.
    pub tasks: TaskTracker,
    /// One permit per guest connection the open-file limit can carry
    /// (`sockfwd_proto::limits`): out of permits, a new guest connection is
    /// refused at once rather than starving the stream connections it needs.
    pub guest_slots: Arc<Semaphore>,
    next_conn: AtomicU64,
}

impl AgentState {
    /// Fresh state for `config`, shutting down when `parent` is cancelled.
    pub fn new(config: AgentConfig, parent: &CancellationToken) -> Self {
        AgentState {
            registry: Registry::default(),
            dispatcher: Dispatcher::new(config.max_pending),
            forwards: Forwards::default(),
            shutdown: Shutdown::new(parent),
            listeners: TaskTracker::new(),
            guests: TaskTracker::new(),
            tasks: TaskTracker::new(),
            guest_slots: Arc::new(Semaphore::new(sockfwd_proto::limits::connection_budget())),
            next_conn: AtomicU64::new(0),
            config,
        }
    }

    /// A fresh control connection ID.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }
}
