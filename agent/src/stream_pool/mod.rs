//! Pre-opened streams (wire-protocol 8.11): streams a host opened ahead of
//! demand, parked per control connection until a guest client takes one.
//!
//! A host's `StreamPool` call ([`StreamPools::open`]) names its pool with a
//! token; a stream-port connection whose ID is `<token>-<n>` for a live pool
//! is parked here ([`StreamPools::reserve`], then [`Parking::fill`]) instead of
//! being registered for a claim, so it never meets `--claim-timeout`. A client
//! of a forward owned by that connection takes the newest one
//! ([`StreamPools::take`]).
//!
//! Bounds: each pool at most what its host asked for, every pool together at
//! most `--max-pooled-streams`, and each parked stream holds one of the
//! descriptor budget's connection slots until it is taken. The slot is on
//! loan: a client that finds none free closes the oldest parked stream and
//! takes its slot ([`StreamPools::evict_one`]), so parked streams never
//! starve the clients they are for. A pool goes with its control
//! connection ([`StreamPools::close_conn`]): its streams are closed, and the
//! host's new session starts a new pool.
//!
//! A stream of a pool in EOF frames may carry one connection after another:
//! when a connection over it ended cleanly (both end frames crossed), the
//! client's task parks it again ([`StreamPools::repark`]), if its pool is
//! still there and has room; otherwise it is closed, and the host sees that.
//!
//! Plain data under a lock, like the registry; a task watches each parked
//! stream ([`watch`]) and removes it when the host closes it.

use sockfwd_proto::framing::Framing;
use sockfwd_proto::stream_pool::{self, TokenError};
use sockfwd_proto::transport::Stream;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use thiserror::Error;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

mod parked;

pub use parked::{watch, Parked, Parking};

/// A control connection, as `dispatch::ConnId` numbers it (a plain number
/// here, so this table needs nothing from the router).
pub type ConnId = u64;

/// Why a `StreamPool` call is refused.
#[derive(Debug, Error)]
pub enum PoolError {
    /// The token breaks the token rule.
    #[error("invalid pool token")]
    Token(#[source] TokenError),
    /// The framing is not one this agent speaks.
    #[error("unknown framing {0}")]
    Framing(u32),
    /// Another control connection's pool has this token.
    #[error("pool token is in use by another control connection")]
    TokenInUse,
}

/// Why a pooled stream could not be parked (the handshake answer says it).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParkError {
    /// The pool, or every pool together, holds as many as allowed.
    #[error("{}", stream_pool::POOL_FULL)]
    Full,
    /// The descriptor budget has no slot left.
    #[error("stream pool: the agent is at its open-file limit")]
    NoSlot,
}

/// A pooled stream a client took: relay over it once the host accepted.
pub struct Taken {
    /// Its stream ID (`<token>-<n>`), for the logs.
    pub id: String,
    /// The stream; the watching task may hold a second handle for a moment.
    pub stream: Arc<Stream>,
    /// The pool's framing.
    pub framing: Framing,
    /// The pool it came from, to go back to.
    conn: ConnId,
    epoch: u64,
}

struct Entry {
    generation: u64,
    id: String,
    stream: Arc<Stream>,
    /// Its descriptor slot: given back when the stream is taken or closed.
    _slot: OwnedSemaphorePermit,
    /// Dropped when the entry leaves the pool: tells the watching task.
    _gone: oneshot::Sender<()>,
}

struct Pool {
    /// Tells this pool from a later one of the same connection.
    epoch: u64,
    token: String,
    framing: Framing,
    max: usize,
    /// Parked streams, oldest first; a client takes the newest.
    parked: Vec<Entry>,
    /// Handshakes between `reserve` and `fill`.
    reserved: usize,
    /// Cancelled when the pool goes: its watching tasks end.
    closed: CancellationToken,
}

#[derive(Default)]
struct Inner {
    pools: HashMap<ConnId, Pool>,
    /// Parked and reserved streams of every pool.
    total: usize,
    /// Numbers pools (their epoch) and entries (their generation).
    next_generation: u64,
}

/// The pools of every control connection; cheap to clone (shared).
#[derive(Clone)]
pub struct StreamPools {
    inner: Arc<Mutex<Inner>>,
    cap: usize,
    slots: Arc<Semaphore>,
}

impl StreamPools {
    /// No pools yet; at most `cap` parked streams in all, each holding one of
    /// `slots` (the descriptor budget's connection slots).
    pub fn new(cap: usize, slots: Arc<Semaphore>) -> StreamPools {
        StreamPools {
            inner: Arc::default(),
            cap,
            slots,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a few field changes with no await or panic between
        // them: a poisoned lock still holds consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `StreamPool` on connection `conn`: starts its pool (replacing one it
    /// had, whose streams are closed) and returns how many streams it may park.
    pub fn open(
        &self,
        conn: ConnId,
        token: &str,
        framing: u32,
        asked: u32,
    ) -> Result<usize, PoolError> {
        stream_pool::check_token(token).map_err(PoolError::Token)?;
        let framing = Framing::from_wire(framing).ok_or(PoolError::Framing(framing))?;
        let max = usize::try_from(asked).unwrap_or(usize::MAX).min(self.cap);
        let old = {
            let mut inner = self.lock();
            if inner
                .pools
                .iter()
                .any(|(c, p)| *c != conn && p.token == token)
            {
                return Err(PoolError::TokenInUse);
            }
            let old = inner.pools.remove(&conn);
            if let Some(old) = &old {
                inner.total -= old.parked.len() + old.reserved;
            }
            if max > 0 {
                inner.next_generation += 1;
                let epoch = inner.next_generation;
                inner.pools.insert(
                    conn,
                    Pool {
                        epoch,
                        token: token.to_owned(),
                        framing,
                        max,
                        parked: Vec::new(),
                        reserved: 0,
                        closed: CancellationToken::new(),
                    },
                );
            }
            old
        };
        drop_pool(old);
        Ok(max)
    }

    /// Connection `conn` ended: its pool goes, and its streams are closed.
    pub fn close_conn(&self, conn: ConnId) {
        let old = {
            let mut inner = self.lock();
            let old = inner.pools.remove(&conn);
            if let Some(old) = &old {
                inner.total -= old.parked.len() + old.reserved;
            }
            old
        };
        drop_pool(old);
    }

    /// A stream-port handshake named `id`: `Ok(None)` for an ordinary stream
    /// (not `<token>-<n>` of a live pool), a place in the pool otherwise.
    pub fn reserve(&self, id: &str) -> Result<Option<Parking>, ParkError> {
        let Some(token) = stream_pool::token_of(id) else {
            return Ok(None);
        };
        let mut inner = self.lock();
        let Some(conn) = inner
            .pools
            .iter()
            .find_map(|(&conn, p)| (p.token == token).then_some(conn))
        else {
            return Ok(None);
        };
        self.reserve_in(&mut inner, conn, id).map(Some)
    }

    /// A place in connection `conn`'s pool (which must exist), if it and all
    /// pools have room and a descriptor slot is free.
    fn reserve_in(&self, inner: &mut Inner, conn: ConnId, id: &str) -> Result<Parking, ParkError> {
        let total = inner.total;
        let Some(pool) = inner.pools.get_mut(&conn) else {
            return Err(ParkError::Full);
        };
        if pool.parked.len() + pool.reserved >= pool.max || total >= self.cap {
            return Err(ParkError::Full);
        }
        let slot = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| ParkError::NoSlot)?;
        pool.reserved += 1;
        let (epoch, closed) = (pool.epoch, pool.closed.clone());
        inner.total += 1;
        Ok(Parking {
            pools: self.clone(),
            conn,
            epoch,
            id: id.to_owned(),
            closed,
            slot: Some(slot),
        })
    }

    /// Takes the newest stream parked for connection `conn`, if any.
    pub fn take(&self, conn: ConnId) -> Option<Taken> {
        let (entry, framing, epoch) = {
            let mut inner = self.lock();
            let pool = inner.pools.get_mut(&conn)?;
            let entry = pool.parked.pop()?;
            let (framing, epoch) = (pool.framing, pool.epoch);
            inner.total -= 1;
            (entry, framing, epoch)
        };
        let Entry { id, stream, .. } = entry;
        Some(Taken {
            id,
            stream,
            framing,
            conn,
            epoch,
        })
    }

    /// The connection over `taken` ended cleanly, both end frames crossed:
    /// parks the stream again for the next one, if its pool is in EOF frames
    /// (raw streams end with a shutdown: they cannot be reused), is still the
    /// same pool, and has room. `None`: the caller drops it, so it closes.
    pub fn repark(&self, taken: Taken) -> Option<(Parked, Arc<Stream>)> {
        if taken.framing != Framing::EofFrames {
            return None;
        }
        // The same way in as a fresh stream's: a place reserved, then filled.
        let parking = {
            let mut inner = self.lock();
            let same = inner.pools.get(&taken.conn).map(|p| p.epoch) == Some(taken.epoch);
            if !same {
                return None;
            }
            self.reserve_in(&mut inner, taken.conn, &taken.id).ok()?
        };
        let parked = parking.fill(Arc::clone(&taken.stream))?;
        Some((parked, taken.stream))
    }

    /// Closes the oldest parked stream of any pool, giving its descriptor
    /// slot back for a client; `false` when none is parked.
    pub fn evict_one(&self) -> bool {
        let evicted = {
            let mut inner = self.lock();
            let oldest = inner
                .pools
                .values_mut()
                .filter(|p| !p.parked.is_empty())
                .min_by_key(|p| p.parked[0].generation)
                .map(|p| p.parked.remove(0));
            if oldest.is_some() {
                inner.total -= 1;
            }
            oldest
        };
        let found = evicted.is_some();
        if let Some(e) = &evicted {
            tracing::debug!(stream_id = %e.id, "parked stream closed: a client needs its descriptor slot");
        }
        drop(evicted);
        found
    }
}

/// Ends a pool that left the table: its watching tasks end, its streams close.
fn drop_pool(pool: Option<Pool>) {
    if let Some(pool) = pool {
        pool.closed.cancel();
        drop(pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "pool_unit_test_token";

    fn stream() -> Arc<Stream> {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        // The peer stays open for the test: leaked on purpose, a few bytes.
        std::mem::forget(b);
        Arc::new(Stream::from_unix(a).unwrap())
    }

    fn id(n: u64) -> String {
        stream_pool::stream_id(TOKEN, n)
    }

    /// Parks stream `n` of `TOKEN`'s pool; the guard keeps it parked.
    fn park(pools: &StreamPools, n: u64) -> Parked {
        let parking = pools.reserve(&id(n)).unwrap().unwrap();
        parking.fill(stream()).unwrap()
    }

    #[tokio::test]
    async fn a_pool_parks_what_its_host_asked_within_the_agent_s_cap() {
        let slots = Arc::new(Semaphore::new(10));
        let pools = StreamPools::new(3, Arc::clone(&slots));
        assert!(matches!(
            pools.open(1, "short", 0, 2),
            Err(PoolError::Token(_))
        ));
        assert!(matches!(
            pools.open(1, TOKEN, 9, 2),
            Err(PoolError::Framing(9))
        ));
        assert_eq!(pools.open(1, TOKEN, Framing::Raw.wire(), 100).unwrap(), 3);
        assert!(matches!(
            pools.open(2, TOKEN, 0, 1),
            Err(PoolError::TokenInUse)
        ));
        // Not of a live pool: an ordinary stream.
        assert!(pools.reserve("pool_other_token_here-1").unwrap().is_none());
        assert!(pools.reserve("socketfwd-1-abcdef").unwrap().is_none());
        let parked: Vec<Parked> = (1..=3).map(|n| park(&pools, n)).collect();
        assert_eq!(
            slots.available_permits(),
            7,
            "each parked stream holds a slot"
        );
        assert_eq!(pools.reserve(&id(4)).err(), Some(ParkError::Full));
        // A reservation dropped unfilled gives its place back.
        drop(parked);
        let parking = pools.reserve(&id(5)).unwrap().unwrap();
        drop(parking);
        assert_eq!(pools.lock().total, 0);
        assert_eq!(slots.available_permits(), 10);
    }

    #[tokio::test]
    async fn a_client_takes_the_newest_and_only_its_owner_s() {
        let pools = StreamPools::new(8, Arc::new(Semaphore::new(8)));
        pools.open(1, TOKEN, Framing::Raw.wire(), 4).unwrap();
        let _a = park(&pools, 1);
        let _b = park(&pools, 2);
        assert!(pools.take(2).is_none(), "another connection's pool");
        assert_eq!(pools.take(1).unwrap().id, id(2));
        assert_eq!(pools.take(1).unwrap().id, id(1));
        assert!(pools.take(1).is_none());
        assert_eq!(pools.lock().total, 0);
    }

    #[tokio::test]
    async fn a_stream_in_eof_frames_goes_back_to_its_own_pool_only() {
        let pools = StreamPools::new(8, Arc::new(Semaphore::new(8)));
        pools.open(1, TOKEN, Framing::EofFrames.wire(), 1).unwrap();
        let _a = park(&pools, 1);
        let taken = pools.take(1).unwrap();
        let (again, _stream) = pools.repark(taken).unwrap();
        assert_eq!(pools.take(1).unwrap().id, id(1), "parked again");
        drop(again);
        // A pool replaced meanwhile (the host's new session) does not take it.
        let _b = park(&pools, 2);
        let taken = pools.take(1).unwrap();
        pools.open(1, "pool_the_next_session", 1, 1).unwrap();
        assert!(pools.repark(taken).is_none());
        // Nor does a raw pool: its streams end with a shutdown.
        pools.open(1, TOKEN, Framing::Raw.wire(), 1).unwrap();
        let _c = park(&pools, 3);
        let taken = pools.take(1).unwrap();
        assert!(pools.repark(taken).is_none());
    }

    #[tokio::test]
    async fn a_pool_goes_with_its_connection_and_lends_its_slots_to_clients() {
        let slots = Arc::new(Semaphore::new(2));
        let pools = StreamPools::new(8, Arc::clone(&slots));
        pools.open(1, TOKEN, Framing::Raw.wire(), 8).unwrap();
        let mut a = park(&pools, 1);
        let _b = park(&pools, 2);
        assert_eq!(pools.reserve(&id(3)).err(), Some(ParkError::NoSlot));
        // A client without a slot closes the oldest parked stream for one.
        assert!(pools.evict_one());
        assert_eq!(slots.available_permits(), 1);
        tokio::time::timeout(std::time::Duration::from_secs(5), a.gone())
            .await
            .unwrap();
        pools.close_conn(1);
        assert_eq!(slots.available_permits(), 2);
        assert!(!pools.evict_one());
        assert!(pools.take(1).is_none());
        assert_eq!(pools.lock().total, 0);
    }
}
