//! One watcher of the guest's TCP listeners shared by every `WatchPorts` call:
//! however many calls are open, the listener set is taken once per
//! [`POLL_INTERVAL`] on at most one blocking
//! thread (a call used to poll on its own, with a blocking task each: 5,000
//! calls held 513 threads and a core).
//!
//! The watcher runs while a call subscribes and stops with the last one. It
//! publishes each listing (every listener with its inode and owning PID)
//! through a `watch` channel; each call keeps the listing it last sent and
//! sends the difference, so a subscriber gets the current set first (as
//! OPENED events), and a burst of changes the watcher has coalesced (see
//! [`ports`](super)) reaches it as one diff. The agent's own TCP
//! listeners are left out, as before.

use super::{self as ports, Key, Snapshot, POLL_INTERVAL, SETTLE};
use sockfwd_proto::rpc::{PortEvent, PortEventKind};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use ttrpc::r#async::ServerStreamSender;

/// The guest's TCP listeners: inode and owning PID (0: not found) by address.
pub type Listing = BTreeMap<Key, (u64, u32)>;

/// The shared watcher; see the module docs.
pub struct PortWatch {
    tx: watch::Sender<Option<Arc<Listing>>>,
    /// Whether the watcher task runs; changed with the subscriber count checked.
    running: Mutex<bool>,
}

impl Default for PortWatch {
    fn default() -> Self {
        PortWatch {
            tx: watch::channel(None).0,
            running: Mutex::new(false),
        }
    }
}

impl PortWatch {
    /// A subscription to the listings, starting the watcher if it is not
    /// running. `own` gives the inodes of the agent's own listeners; the
    /// watcher ends with `stop` or its last subscriber.
    pub fn subscribe(
        self: &Arc<Self>,
        own: impl Fn() -> HashSet<u64> + Send + Sync + 'static,
        stop: CancellationToken,
    ) -> watch::Receiver<Option<Arc<Listing>>> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let rx = self.tx.subscribe();
        if !*running {
            *running = true;
            let me = Arc::clone(self);
            tokio::spawn(async move {
                tokio::select! {
                    // It clears `running` itself, under the lock.
                    () = me.run(own) => {}
                    () = stop.cancelled() => me.stopped(),
                }
            });
        }
        rx
    }

    /// The watcher ended: the next subscriber starts afresh, without the last
    /// listing (it may be stale by then).
    fn stopped(&self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        self.tx.send_replace(None);
        *running = false;
    }

    /// Whether the watcher task runs (for tests).
    pub fn is_running(&self) -> bool {
        *self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes listings until nobody subscribes.
    async fn run(&self, own: impl Fn() -> HashSet<u64>) {
        let mut current: Option<Arc<Listing>> = None;
        loop {
            {
                // Checked under the lock `subscribe` holds, so a subscriber
                // arriving now either is counted here or starts a new watcher.
                let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
                if self.tx.receiver_count() == 0 {
                    self.tx.send_replace(None);
                    *running = false;
                    return;
                }
            }
            match self.next_listing(current.as_deref(), &own).await {
                Ok(listing) => {
                    if current.as_deref() != Some(&listing) {
                        let listing = Arc::new(listing);
                        current = Some(Arc::clone(&listing));
                        self.tx.send_replace(Some(listing));
                    }
                }
                Err(err) => {
                    tracing::warn!(cause = %err, "cannot list the guest's TCP listeners");
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The listeners now (after a short settle when they changed), with the
    /// owners of new ones found by walking /proc, off the async threads.
    async fn next_listing(
        &self,
        before: Option<&Listing>,
        own: &impl Fn() -> HashSet<u64>,
    ) -> io::Result<Listing> {
        let mut next = snapshot(own).await?;
        let changed = before.is_some_and(|b| !same_sockets(b, &next));
        if changed {
            tokio::time::sleep(SETTLE).await;
            if let Ok(settled) = snapshot(own).await {
                next = settled;
            }
        }
        let known: HashMap<Key, (u64, u32)> = before
            .map(|b| b.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        let listing = tokio::task::spawn_blocking(move || {
            let fresh: HashSet<u64> = next
                .iter()
                .filter(|(k, inode)| known.get(*k).map(|v| v.0) != Some(**inode))
                .map(|(_, inode)| *inode)
                .collect();
            let owners = if fresh.is_empty() {
                HashMap::new()
            } else {
                ports::owners(&fresh)
            };
            next.into_iter()
                .map(|(k, inode)| {
                    let pid = match known.get(&k) {
                        Some(&(i, pid)) if i == inode => pid,
                        _ => owners.get(&inode).copied().unwrap_or(0),
                    };
                    (k, (inode, pid))
                })
                .collect::<Listing>()
        })
        .await
        .map_err(io::Error::other)?;
        Ok(listing)
    }
}

/// A snapshot without the listeners whose inodes `own` gives.
async fn snapshot(own: &impl Fn() -> HashSet<u64>) -> io::Result<Snapshot> {
    let mut s = tokio::task::spawn_blocking(ports::snapshot)
        .await
        .map_err(io::Error::other)??;
    let own = own();
    s.retain(|_, inode| !own.contains(inode));
    Ok(s)
}

fn same_sockets(listing: &Listing, snapshot: &Snapshot) -> bool {
    listing.len() == snapshot.len()
        && listing
            .iter()
            .zip(snapshot)
            .all(|((k1, (i1, _)), (k2, i2))| k1 == k2 && i1 == i2)
}

fn event(kind: PortEventKind, key: &Key, pid: u32) -> PortEvent {
    let mut e = PortEvent::new();
    e.kind = kind.into();
    e.port = u32::from(key.1);
    e.address = key.0.to_string();
    e.pid = pid;
    e
}

/// The events that turn `old` into `new`: closed ones first.
pub fn diff(old: &Listing, new: &Listing) -> Vec<PortEvent> {
    let gone = old
        .iter()
        .filter(|(k, (inode, _))| new.get(*k).map(|v| v.0) != Some(*inode))
        .map(|(k, (_, pid))| event(PortEventKind::CLOSED, k, *pid));
    let came = new
        .iter()
        .filter(|(k, (inode, _))| old.get(*k).map(|v| v.0) != Some(*inode))
        .map(|(k, (_, pid))| event(PortEventKind::OPENED, k, *pid));
    gone.chain(came).collect()
}

/// Sends one subscriber the listings as differences until sending fails (the
/// host closed the stream) or the watcher is gone.
pub async fn follow(
    mut listings: watch::Receiver<Option<Arc<Listing>>>,
    sender: &ServerStreamSender<PortEvent>,
) -> Result<(), ttrpc::Error> {
    let mut sent = Listing::new();
    loop {
        let latest = listings.borrow_and_update().clone();
        if let Some(latest) = latest {
            for e in diff(&sent, &latest) {
                tracing::debug!(kind = ?e.kind, port = e.port, address = %e.address, pid = e.pid,
                    "guest port event");
                sender.send(&e).await?;
            }
            sent = (*latest).clone();
        }
        if listings.changed().await.is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> Key {
        ("127.0.0.1".parse().unwrap(), port)
    }

    #[test]
    fn diff_reports_closed_then_opened_with_their_pids() {
        let a: Listing = [(key(1), (10, 42)), (key(2), (20, 0))].into();
        let b: Listing = [(key(2), (21, 7)), (key(3), (30, 8))].into();
        let got: Vec<(bool, u32, u32)> = diff(&a, &b)
            .iter()
            .map(|e| (e.kind == PortEventKind::OPENED.into(), e.port, e.pid))
            .collect();
        // Port 2's socket was replaced (a new inode): closed and opened.
        assert_eq!(
            got,
            [(false, 1, 42), (false, 2, 0), (true, 2, 7), (true, 3, 8)]
        );
        assert!(diff(&b, &b).is_empty());
    }

    #[tokio::test]
    async fn many_subscribers_share_one_watcher_that_stops_with_the_last() {
        let hub = Arc::new(PortWatch::default());
        let stop = CancellationToken::new();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut subs: Vec<_> = (0..50)
            .map(|_| hub.subscribe(HashSet::new, stop.clone()))
            .collect();
        assert!(hub.is_running());
        for rx in &mut subs {
            let listing = rx.wait_for(Option::is_some).await.unwrap().clone().unwrap();
            let (_, pid) = listing[&key(port)];
            assert_eq!(pid, std::process::id());
        }
        drop(subs);
        // The watcher notices on its next round that nobody listens.
        tokio::time::timeout(POLL_INTERVAL * 20, async {
            while hub.is_running() {
                tokio::time::sleep(POLL_INTERVAL / 5).await;
            }
        })
        .await
        .unwrap();
        // A new subscriber starts it again.
        let mut rx = hub.subscribe(HashSet::new, stop.clone());
        assert!(rx.wait_for(Option::is_some).await.unwrap().is_some());
        stop.cancel();
    }
}
