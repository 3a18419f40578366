//! The one accept loop of both daemons: every listener (the agent's control and
//! stream ports and remote forwards, the relay's admin socket, control
//! listener and local forwards) accepts through [`accept_next`].
//!
//! An accept that fails is retried after a [`Backoff`] pause, never at once:
//! out of descriptors (EMFILE, ENFILE) the listening socket stays readable, so
//! retrying at once would spin a core while nothing can be accepted anyway.
//! The pause ends early when the loop is stopped. A success resets the backoff.

use crate::backoff::Backoff;
use crate::transport::{ClientListener, Listener, Peer, Stream};
use std::future::Future;
use std::io;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A listener [`accept_next`] can drive.
pub trait Accept {
    /// One accepted connection.
    type Conn: Send + 'static;

    /// Accepts one connection; errors are the loop's to back off from.
    fn accept(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send;

    /// Where it listens, for log lines.
    fn describe(&self) -> String;
}

impl Accept for Listener {
    type Conn = (Stream, Peer);

    fn accept(&self) -> impl Future<Output = io::Result<(Stream, Peer)>> + Send {
        Listener::accept(self)
    }

    fn describe(&self) -> String {
        self.address().to_string()
    }
}

impl Accept for ClientListener {
    type Conn = Stream;

    fn accept(&self) -> impl Future<Output = io::Result<Stream>> + Send {
        ClientListener::accept(self)
    }

    fn describe(&self) -> String {
        self.at().to_string()
    }
}

/// Whether an accept error means the process or system is out of descriptors
/// (or of the memory a socket needs), as opposed to one failed connection.
pub fn is_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accepts the next connection, pausing after each failure; `None` once
/// `stop` is cancelled.
pub async fn accept_next<L: Accept>(
    listener: &L,
    backoff: &mut Backoff,
    stop: &CancellationToken,
) -> Option<L::Conn> {
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
                    listener = %listener.describe(),
                    cause = %err,
                    out_of_descriptors = is_exhaustion(&err),
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

/// Accepts until `stop` and runs `serve` on each connection in its own task
/// on `tasks`.
pub async fn serve_each<L, F, Fut>(
    listener: &L,
    stop: &CancellationToken,
    tasks: &TaskTracker,
    mut serve: F,
) where
    L: Accept,
    F: FnMut(L::Conn) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Backoff::accept();
    while let Some(conn) = accept_next(listener, &mut backoff, stop).await {
        tasks.spawn(serve(conn));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Address;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;

    /// Fails with EMFILE `failures` times, then accepts forever.
    struct Exhausted {
        failures: AtomicU32,
    }

    impl Accept for Exhausted {
        type Conn = ();

        fn accept(&self) -> impl Future<Output = io::Result<()>> + Send {
            let fail = self
                .failures
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            async move {
                if fail {
                    Err(io::Error::from_raw_os_error(libc::EMFILE))
                } else {
                    Ok(())
                }
            }
        }

        fn describe(&self) -> String {
            "test".into()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_waited_out_with_growing_pauses_and_success_resets() {
        let l = Exhausted {
            failures: AtomicU32::new(3),
        };
        let mut backoff = Backoff::accept();
        let stop = CancellationToken::new();
        let start = Instant::now();
        assert_eq!(accept_next(&l, &mut backoff, &stop).await, Some(()));
        // 100 + 200 + 400 ms of (paused, virtual) time: three pauses, no spin.
        assert_eq!(start.elapsed(), Duration::from_millis(700));
        assert_eq!(backoff.next_delay(), Duration::from_millis(100), "reset");
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_exhaustion(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_a_pause() {
        let l = Exhausted {
            failures: AtomicU32::new(u32::MAX),
        };
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            stopper.cancel();
        });
        assert_eq!(accept_next(&l, &mut Backoff::accept(), &stop).await, None);
    }

    #[tokio::test]
    async fn serves_each_connection_of_a_real_listener_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let addr = Address::Unix(dir.path().join("l.sock"));
        let listener = Listener::bind(&addr).unwrap();
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let serving = {
            let (stop, tasks) = (stop.clone(), tasks.clone());
            tokio::spawn(async move {
                serve_each(&listener, &stop, &tasks, |(s, peer): (Stream, Peer)| {
                    let tx = tx.clone();
                    async move {
                        let mut b = [0u8; 1];
                        let n = s.read(&mut b).await.unwrap();
                        tx.send((peer, b[..n].to_vec())).unwrap();
                    }
                })
                .await;
            })
        };
        for byte in [b'a', b'b'] {
            let c = crate::transport::dial(&addr, Duration::from_secs(5))
                .await
                .unwrap();
            c.write_all(&[byte]).await.unwrap();
            assert_eq!(rx.recv().await.unwrap(), (Peer::Unix, vec![byte]));
        }
        stop.cancel();
        serving.await.unwrap();
        tasks.close();
        tasks.wait().await;
    }
}
