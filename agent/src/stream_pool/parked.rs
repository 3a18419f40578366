//! The guards of a pool's places: [`Parking`] while a pooled stream's
//! handshake answer is written, [`Parked`] while it waits for a client, and
//! [`watch`], the task that holds the latter.

use super::{ConnId, Entry, StreamPools};
use sockfwd_proto::log_text::escape;
use sockfwd_proto::stream_pool;
use sockfwd_proto::transport::Stream;
use std::sync::Arc;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

/// A reserved place in a pool, held by the stream port's task during the
/// handshake's answer; dropped unfilled, it gives the place back.
pub struct Parking {
    pub(super) pools: StreamPools,
    pub(super) conn: ConnId,
    pub(super) epoch: u64,
    pub(super) id: String,
    pub(super) closed: CancellationToken,
    pub(super) slot: Option<OwnedSemaphorePermit>,
}

/// A parked stream, as its watching task sees it: dropped, it leaves the pool
/// (closing the stream unless a client took it).
pub struct Parked {
    pub(super) pools: StreamPools,
    pub(super) conn: ConnId,
    pub(super) generation: u64,
    pub(super) gone: oneshot::Receiver<()>,
    pub(super) closed: CancellationToken,
}

/// Watches a parked stream until a client takes it, its pool goes, `stop`,
/// or the host closes it (a parked stream carries nothing before a client's
/// header, so anything readable means the host is done with it); then it
/// leaves the pool, closed unless a client took it.
pub async fn watch(mut parked: Parked, stream: Arc<Stream>, id: &str, stop: &CancellationToken) {
    tokio::select! {
        () = parked.gone() => {}
        () = stream_pool::readable(&stream) => {
            tracing::debug!(stream_id = %escape(id), "parked stream closed by the host");
        }
        () = stop.cancelled() => {}
    }
    drop(parked);
}

impl Parking {
    /// The answer is written: the stream is parked; its task watches it with
    /// the [`Parked`] returned. `None`: the pool went meanwhile (the stream is
    /// dropped, so closed).
    pub fn fill(mut self, stream: Arc<Stream>) -> Option<Parked> {
        let (gone_tx, gone) = oneshot::channel();
        let slot = self.slot.take()?;
        let mut inner = self.pools.lock();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let pool = inner
            .pools
            .get_mut(&self.conn)
            .filter(|p| p.epoch == self.epoch)?;
        pool.reserved -= 1;
        pool.parked.push(Entry {
            generation,
            id: std::mem::take(&mut self.id),
            stream,
            _slot: slot,
            _gone: gone_tx,
        });
        drop(inner);
        Some(Parked {
            pools: self.pools.clone(),
            conn: self.conn,
            generation,
            gone,
            closed: self.closed.clone(),
        })
    }
}

impl Drop for Parking {
    fn drop(&mut self) {
        // Unfilled: give the place back, if the pool is still the one reserved in.
        if self.slot.is_some() {
            let mut inner = self.pools.lock();
            if let Some(pool) = inner.pools.get_mut(&self.conn) {
                if pool.epoch == self.epoch {
                    pool.reserved -= 1;
                    inner.total -= 1;
                }
            }
        }
    }
}

impl Parked {
    /// Waits until a client takes the stream, or its pool goes.
    pub async fn gone(&mut self) {
        tokio::select! {
            _ = &mut self.gone => {}
            () = self.closed.cancelled() => {}
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        let removed = {
            let mut inner = self.pools.lock();
            let Some(pool) = inner.pools.get_mut(&self.conn) else {
                return;
            };
            let at = pool
                .parked
                .iter()
                .position(|e| e.generation == self.generation);
            let removed = at.map(|i| pool.parked.remove(i));
            if removed.is_some() {
                inner.total -= 1;
            }
            removed
        };
        // Closes the stream (when this held its last handle) outside the lock.
        drop(removed);
    }
}
