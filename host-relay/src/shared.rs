//! The state every remote-forward connection task, the control channel and the
//! admin socket share; it lives as long as one `run` of the relay.

use crate::config::Config;
use crate::limits::Caps;
use crate::remote_table::ForwardTable;
use crate::rpc::Peer;
use sockfwd_proto::log_throttle::LogThrottle;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// See the module docs.
pub(crate) struct Shared {
    /// The validated settings.
    pub(crate) config: Config,
    /// The remote forwards, resolved for each `ConnectRequest`.
    pub(crate) table: Arc<ForwardTable>,
    /// The relay-wide concurrency and rate caps.
    pub(crate) caps: Caps,
    /// Where every task of the run is spawned: connections, listeners, the
    /// admin socket, auto-forward. Waited on (up to the grace) at shutdown.
    pub(crate) tracker: TaskTracker,
    /// Cancelled on SIGTERM/SIGINT: no new requests or clients are taken.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the shutdown grace is over: open relays are cut.
    pub(crate) hard_stop: CancellationToken,
    /// Throttles per-connection log lines (refusals, failures).
    pub(crate) log_throttle: LogThrottle,
    /// The ready session's agent: its client and its `Info` (`None` between
    /// sessions).
    pub(crate) client: watch::Sender<Option<Peer>>,
    /// The pre-opened streams, as `status` shows them.
    pub(crate) pool_gauge: Arc<PoolGauge>,
}

/// The relay's pre-opened streams for `status`, kept by the pools
/// (`remote_connect`) as they open and close streams.
#[derive(Debug, Default)]
pub(crate) struct PoolGauge {
    /// Streams open: opening, parked, or (in EOF frames, which reuse them)
    /// carrying a connection.
    pub(crate) open: AtomicUsize,
    /// What the agent granted the ready session's pool; 0 without one.
    pub(crate) size: AtomicUsize,
}

impl PoolGauge {
    /// `(open, size)` now.
    pub(crate) fn read(&self) -> (usize, usize) {
        (
            self.open.load(Ordering::Relaxed),
            self.size.load(Ordering::Relaxed),
        )
    }
}

impl Shared {
    /// The ready session's agent, if a session is ready: ask it which
    /// extensions the agent supports ([`Peer::supports`]).
    pub(crate) fn peer(&self) -> Option<Peer> {
        self.client.borrow().clone()
    }
}
