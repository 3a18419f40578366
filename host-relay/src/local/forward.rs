//! Handles on local forwards, in the shape of Sprites' proxy API: a
//! [`LocalForward`] per host listener with its bound address, `close()` and an
//! awaitable end; a [`LocalForwards`] closes or awaits many together. The
//! listeners themselves are served by `listen`.

use crate::local_spec::LocalSpec;
use sockfwd_proto::counters::{CounterSnapshot, ForwardCounters};
use sockfwd_proto::transport::ListenAt;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio_util::sync::CancellationToken;

/// The address a session listens on: proto's [`ListenAt`] (the name before
/// it was shared).
#[deprecated(since = "0.2.0", note = "use sockfwd_proto::transport::ListenAt")]
pub type LocalAddr = ListenAt;

/// One host listener forwarding to a guest target. Dropping it closes it too.
pub struct LocalForward {
    spec: LocalSpec,
    local: ListenAt,
    counters: Arc<ForwardCounters>,
    /// Cancelled by `close()` (or the guest handle's shutdown).
    stop: CancellationToken,
    /// Cancelled once the listener is gone.
    done: CancellationToken,
}

impl LocalForward {
    /// The handle of the listener serving `spec` at `local`; the listener's
    /// loop ends on `stop` and cancels `done` once it is gone.
    pub(crate) fn new(
        spec: LocalSpec,
        local: ListenAt,
        counters: Arc<ForwardCounters>,
        stop: CancellationToken,
        done: CancellationToken,
    ) -> LocalForward {
        LocalForward {
            spec,
            local,
            counters,
            stop,
            done,
        }
    }

    /// The bound local address (the real port when the spec asked for 0).
    pub fn local_addr(&self) -> &ListenAt {
        &self.local
    }

    /// The mapping it serves.
    pub fn spec(&self) -> &LocalSpec {
        &self.spec
    }

    /// Its counters: connections and bytes (bytes of finished connections).
    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// Stops accepting and closes the listener (a Unix socket file is
    /// removed); open connections run to their end. Idempotent.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Resolves once the listener is closed, by [`close`](Self::close) or the
    /// guest handle's shutdown.
    pub async fn closed(&self) {
        self.done.cancelled().await;
    }

    /// Whether the listener is closed.
    pub fn is_closed(&self) -> bool {
        self.done.is_cancelled()
    }
}

impl Drop for LocalForward {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl fmt::Debug for LocalForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LocalForward({} -> {})",
            self.local,
            self.spec.remote_text()
        )
    }
}

/// Many local forwards closed or awaited together.
#[derive(Default)]
pub struct LocalForwards {
    forwards: Mutex<Vec<Arc<LocalForward>>>,
}

impl LocalForwards {
    /// An empty manager.
    pub fn new() -> LocalForwards {
        LocalForwards::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<LocalForward>>> {
        self.forwards.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a session; the manager keeps it open until `close_all`.
    pub fn add(&self, forward: LocalForward) -> Arc<LocalForward> {
        let s = Arc::new(forward);
        self.lock().push(s.clone());
        s
    }

    /// How many local forwards it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every local forward.
    pub fn close_all(&self) {
        for s in self.lock().iter() {
            s.close();
        }
    }

    /// Resolves once every local forward is closed.
    pub async fn wait_all(&self) {
        let all: Vec<_> = self.lock().clone();
        for s in all {
            s.closed().await;
        }
    }
}
