//! The stream registry: stream-port connections waiting to be claimed.
//!
//! The stream-port task reserves the ID the host sent ([`Registry::reserve`]: a
//! duplicate is refused), answers the handshake, then fills the reservation with
//! the connection. The client's task that raised the request claims it
//! once the host's success result arrives ([`Registry::claim`]); a claim that
//! comes while the answer is still being written waits for the fill, and so
//! does a claim that comes before the stream connection itself (a host using
//! the early-result extension sends its result without waiting for our
//! acknowledgement: see `sockfwd_proto::features`).
//!
//! A [`Registration`] is a drop guard: when its task drops it (claim timeout,
//! failed handshake, shutdown) an unclaimed entry is removed and its connection
//! closed, so nothing the host opens can stay registered forever.

use sockfwd_proto::transport::Stream;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::oneshot;

/// Why a stream ID could not be registered.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RegistryError {
    /// The ID is already registered (or reserved).
    #[error("stream {0:?} is already registered")]
    Duplicate(String),
}

enum State {
    /// The handshake answer is being written; a claimer may wait here.
    Reserved {
        claimer: Option<oneshot::Sender<Stream>>,
    },
    /// Registered and waiting to be claimed.
    Ready(Stream),
}

struct Entry {
    generation: u64,
    state: State,
    /// Dropped when the entry leaves the map: tells the registration's task.
    _gone: oneshot::Sender<()>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Claims that arrived before their stream: the reservation takes the
    /// claimer over. Bounded by the client connections waiting (--max-pending).
    early: HashMap<String, oneshot::Sender<Stream>>,
    next_generation: u64,
}

/// The registry; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

/// One reserved ID, owned by its stream-port task; see the module docs.
pub struct Registration {
    registry: Registry,
    id: String,
    generation: u64,
    gone: oneshot::Receiver<()>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // update is one insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `id`; refuses an ID that is already there.
    pub fn reserve(&self, id: &str) -> Result<Registration, RegistryError> {
        let mut inner = self.lock();
        if inner.entries.contains_key(id) {
            return Err(RegistryError::Duplicate(id.to_owned()));
        }
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let (tx, gone) = oneshot::channel();
        let claimer = inner.early.remove(id);
        inner.entries.insert(
            id.to_owned(),
            Entry {
                generation,
                state: State::Reserved { claimer },
                _gone: tx,
            },
        );
        Ok(Registration {
            registry: self.clone(),
            id: id.to_owned(),
            generation,
            gone,
        })
    }

    /// Takes the stream registered as `id`, waiting up to `fill_wait` if it is
    /// still being handed over. `None`: no such stream (never registered, already
    /// claimed, timed out, or its handshake failed).
    pub async fn claim(&self, id: &str, fill_wait: Duration) -> Option<Stream> {
        let early = {
            let mut inner = self.lock();
            if inner.entries.contains_key(id) {
                None
            } else if inner.early.contains_key(id) {
                return None;
            } else {
                let (tx, rx) = oneshot::channel();
                inner.early.insert(id.to_owned(), tx);
                Some(rx)
            }
        };
        if let Some(rx) = early {
            return self.await_early(id, rx, fill_wait).await;
        }
        let rx = {
            let mut inner = self.lock();
            let entry = inner.entries.get(id)?;
            let ready = match &entry.state {
                State::Ready(_) => true,
                // Someone else already waits for this ID: one claim only.
                State::Reserved { claimer: Some(_) } => return None,
                State::Reserved { claimer: None } => false,
            };
            if ready {
                return match inner.entries.remove(id) {
                    Some(Entry {
                        state: State::Ready(s),
                        ..
                    }) => Some(s),
                    _ => None,
                };
            }
            let (tx, rx) = oneshot::channel();
            if let Some(Entry {
                state: State::Reserved { claimer },
                ..
            }) = inner.entries.get_mut(id)
            {
                *claimer = Some(tx);
            }
            rx
        };
        match tokio::time::timeout(fill_wait, rx).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(_dropped)) => None,
            Err(_elapsed) => {
                // Give up our place; the registration keeps the entry and its own
                // timer closes it.
                if let Some(Entry {
                    state: State::Reserved { claimer },
                    ..
                }) = self.lock().entries.get_mut(id)
                {
                    *claimer = None;
                }
                None
            }
        }
    }

    /// Waits for a stream whose claim came first (see the module docs).
    async fn await_early(
        &self,
        id: &str,
        rx: oneshot::Receiver<Stream>,
        fill_wait: Duration,
    ) -> Option<Stream> {
        if let Ok(Ok(stream)) = tokio::time::timeout(fill_wait, rx).await {
            return Some(stream);
        }
        // Gave up (or the stream's handshake failed): forget the claim, and let a
        // reservation that took it over keep its own timer.
        let mut inner = self.lock();
        inner.early.remove(id);
        if let Some(Entry {
            state: State::Reserved { claimer },
            ..
        }) = inner.entries.get_mut(id)
        {
            *claimer = None;
        }
        None
    }

    /// How many IDs are reserved or registered.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Registration {
    /// The registered stream ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Hands the connection over: to a claimer already waiting, or into the map.
    pub fn fill(&mut self, stream: Stream) {
        let mut inner = self.registry.lock();
        let Some(entry) = inner.entries.get_mut(&self.id) else {
            return;
        };
        if entry.generation != self.generation {
            return;
        }
        match std::mem::replace(&mut entry.state, State::Reserved { claimer: None }) {
            State::Reserved {
                claimer: Some(claimer),
            } => {
                inner.entries.remove(&self.id);
                drop(inner);
                // A claimer that gave up in between drops the stream: closed.
                let _ = claimer.send(stream);
            }
            State::Reserved { claimer: None } | State::Ready(_) => {
                entry.state = State::Ready(stream);
            }
        }
    }

    /// Waits until the stream is claimed (`true`) or `limit` passes (`false`).
    pub async fn claimed_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, &mut self.gone).await.is_ok()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let removed = {
            let mut inner = self.registry.lock();
            match inner.entries.get(&self.id) {
                Some(e) if e.generation == self.generation => inner.entries.remove(&self.id),
                _ => None,
            }
        };
        // Closes the connection (if it was never claimed) outside the lock.
        drop(removed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    fn pair() -> (Stream, tokio::net::UnixStream) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        (Stream::from_unix(a).unwrap(), b)
    }

    #[tokio::test]
    async fn fill_then_claim_once() {
        let r = Registry::default();
        let mut reg = r.reserve("a").unwrap();
        assert_eq!(
            r.reserve("a").err(),
            Some(RegistryError::Duplicate("a".into()))
        );
        let (s, _peer) = pair();
        reg.fill(s);
        assert!(r.claim("a", Duration::from_secs(1)).await.is_some());
        assert!(r.claim("a", Duration::from_secs(1)).await.is_none());
        assert!(reg.claimed_within(Duration::from_secs(1)).await);
        drop(reg);
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn a_claim_before_the_stream_gets_it_when_it_arrives() {
        let r = Registry::default();
        let claimer = {
            let r = r.clone();
            tokio::spawn(async move { r.claim("early", Duration::from_secs(5)).await })
        };
        // Let the claim register first.
        while r.lock().early.is_empty() {
            tokio::task::yield_now().await;
        }
        // A second claim for the same ID is refused: one claim only.
        assert!(r.claim("early", Duration::from_secs(1)).await.is_none());
        let mut reg = r.reserve("early").unwrap();
        let (s, _peer) = pair();
        reg.fill(s);
        assert!(claimer.await.unwrap().is_some());
        assert!(reg.claimed_within(Duration::from_secs(1)).await);
        drop(reg);
        assert!(r.is_empty());
        assert!(r.lock().early.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_claim_gives_up_at_its_deadline_and_leaves_nothing() {
        let r = Registry::default();
        assert!(r.claim("never", Duration::from_secs(2)).await.is_none());
        assert!(r.lock().early.is_empty());
        // A stream arriving later is an ordinary registration (its own timer closes it).
        let reg = r.reserve("never").unwrap();
        drop(reg);
        assert!(r.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn unclaimed_stream_is_closed_and_removed_at_the_deadline() {
        let r = Registry::default();
        let (s, mut peer) = pair();
        let r2 = r.clone();
        let task = tokio::spawn(async move {
            let mut reg = r2.reserve("late").unwrap();
            reg.fill(s);
            reg.claimed_within(Duration::from_secs(10)).await
        });
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(r.len(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!task.await.unwrap(), "nobody claimed it");
        assert!(r.is_empty());
        assert!(r.claim("late", Duration::from_secs(1)).await.is_none());
        // The host side sees the connection closed.
        let mut buf = [0u8; 1];
        assert_eq!(peer.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn claim_waits_for_a_fill_in_progress() {
        let r = Registry::default();
        let mut reg = r.reserve("x").unwrap();
        let r2 = r.clone();
        let claimer = tokio::spawn(async move { r2.claim("x", Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (s, _peer) = pair();
        reg.fill(s);
        assert!(claimer.await.unwrap().is_some());
        assert!(reg.claimed_within(Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn claim_gives_up_when_the_fill_never_comes() {
        let r = Registry::default();
        let reg = r.reserve("x").unwrap();
        assert!(r.claim("x", Duration::from_secs(1)).await.is_none());
        drop(reg);
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn dropped_reservation_frees_the_id() {
        let r = Registry::default();
        drop(r.reserve("x").unwrap());
        r.reserve("x").unwrap();
    }
}
