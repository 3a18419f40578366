//! Backing off from failures that a retry may fix: accept errors such as
//! EMFILE/ENFILE (never spin, never exit), and redialing the host.

use sockfwd_proto::transport::{Listener, Peer, Stream, VMADDR_CID_HOST};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Exponential backoff between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `min`, doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// For accept loops: 100 ms doubling to 1 s.
    pub fn accept() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// The next delay; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Accepts the next connection, backing off on errors; `None` once `stop` fires.
pub async fn accept_next(
    listener: &Listener,
    backoff: &mut Backoff,
    stop: &CancellationToken,
) -> Option<(Stream, Peer)> {
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            r = listener.accept() => r,
        };
        match accepted {
            Ok(conn) => {
                backoff.reset();
                return Some(conn);
            }
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    listener = %listener.address(),
                    cause = %err,
                    retry_in = ?delay,
                    "accept failed; backing off"
                );
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// The accept loop of a host-facing port (control or streams): accepts until
/// `stop`, closes and logs a vsock peer other than the host (unless
/// `allow_any_cid`), and runs `serve` on each other connection in its own task.
pub async fn accept_from_host<Fut>(
    port: &'static str,
    listener: &Listener,
    allow_any_cid: bool,
    stop: &CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
    mut serve: impl FnMut(Stream) -> Fut,
) where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut backoff = Backoff::accept();
    while let Some((stream, peer)) = accept_next(listener, &mut backoff, stop).await {
        if !peer_allowed(peer, allow_any_cid) {
            tracing::warn!(
                port,
                ?peer,
                "connection from a CID other than the host; closed"
            );
            continue;
        }
        tasks.spawn(serve(stream));
    }
    tracing::debug!(port, listener = %listener.address(), "listener closed");
}

/// Whether a connection from `peer` may be served: Unix peers always; vsock
/// peers only from the host unless `allow_any_cid`.
pub fn peer_allowed(peer: Peer, allow_any_cid: bool) -> bool {
    match peer {
        Peer::Unix => true,
        Peer::Vsock { cid, .. } => allow_any_cid || cid == VMADDR_CID_HOST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::accept();
        let got: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        let want: Vec<Duration> = [100, 200, 400, 800, 1000, 1000]
            .into_iter()
            .map(Duration::from_millis)
            .collect();
        assert_eq!(got, want);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn only_the_host_cid_unless_allowed() {
        assert!(peer_allowed(Peer::Unix, false));
        assert!(peer_allowed(Peer::Vsock { cid: 2, port: 9 }, false));
        assert!(!peer_allowed(Peer::Vsock { cid: 3, port: 9 }, false));
        assert!(peer_allowed(Peer::Vsock { cid: 3, port: 9 }, true));
    }
}
