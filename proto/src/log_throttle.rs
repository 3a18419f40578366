//! Keeps a flood from flooding the log, the one throttle both daemons use for
//! per-connection lines: at most N lines per window for each kind of line (a
//! refusal, a failed connection, a bad message); the rest are counted. The
//! count is reported once: on the first line of that kind let through
//! afterwards (`suppressed = N`), or, when the burst stops before one comes, on
//! a summary line of its own at the end of the window (`kind`, `suppressed`),
//! so the log always says how much it left out.
//!
//! Kinds are the callers' `&'static str` names, so their number is bounded by
//! the code, not by what a peer sends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Lines of each kind per second both daemons let through by default.
pub const LINES_PER_SEC: u32 = 5;

/// Lets through at most `per_window` lines per `window` of each kind.
#[derive(Debug, Clone)]
pub struct LogThrottle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    per_window: u32,
    window: Duration,
    kinds: Mutex<HashMap<&'static str, Window>>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
    /// A summary task is waiting for this kind's window to end.
    summary_due: bool,
}

/// A line that may be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Lines of this kind dropped since the last one let through, when there
    /// were any: log it as a field (`suppressed = pass.suppressed`), which
    /// tracing leaves out when it is `None`.
    pub suppressed: Option<u64>,
}

impl LogThrottle {
    /// A throttle of `per_window` lines of each kind per `window`.
    pub fn new(per_window: u32, window: Duration) -> LogThrottle {
        LogThrottle {
            inner: Arc::new(Inner {
                per_window,
                window,
                kinds: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The daemons' throttle: [`LINES_PER_SEC`] lines of each kind a second.
    pub fn per_second() -> LogThrottle {
        LogThrottle::new(LINES_PER_SEC, Duration::from_secs(1))
    }

    /// Whether to log a line of `kind` now: `None` drops it (and counts it;
    /// inside a tokio runtime, a summary follows at the window's end unless a
    /// later line of the kind carries the count first).
    pub fn allow(&self, kind: &'static str) -> Option<Pass> {
        let now = Instant::now();
        let mut kinds = self.inner.lock();
        let w = kinds.entry(kind).or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
            summary_due: false,
        });
        if now.saturating_duration_since(w.start) >= self.inner.window {
            w.start = now;
            w.logged = 0;
        }
        if w.logged < self.inner.per_window {
            w.logged += 1;
            let dropped = std::mem::take(&mut w.suppressed);
            return Some(Pass {
                suppressed: (dropped > 0).then_some(dropped),
            });
        }
        w.suppressed += 1;
        if !w.summary_due {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                w.summary_due = true;
                let at = w.start + self.inner.window;
                let inner = Arc::clone(&self.inner);
                runtime.spawn(async move {
                    tokio::time::sleep_until(at).await;
                    if let Some(n) = inner.take_summary(kind) {
                        tracing::warn!(kind, suppressed = n, "similar log lines suppressed");
                    }
                });
            }
        }
        None
    }

    /// Lines of `kind` dropped and not reported yet (for tests and status).
    pub fn pending(&self, kind: &'static str) -> u64 {
        self.inner.lock().get(kind).map_or(0, |w| w.suppressed)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Window>> {
        // Every update is a few integer writes: a poisoned lock is still consistent.
        self.kinds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The end of a window with drops: takes the count still unreported.
    fn take_summary(&self, kind: &'static str) -> Option<u64> {
        let mut kinds = self.lock();
        let w = kinds.get_mut(kind)?;
        w.summary_due = false;
        let n = std::mem::take(&mut w.suppressed);
        (n > 0).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Option<Pass> = Some(Pass { suppressed: None });

    #[tokio::test(start_paused = true)]
    async fn counts_what_it_drops_per_kind() {
        let t = LogThrottle::new(2, Duration::from_secs(1));
        assert_eq!(t.allow("a"), QUIET);
        assert_eq!(t.allow("a"), QUIET);
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.allow("a"), None);
        // Another kind has its own allowance.
        assert_eq!(t.allow("b"), QUIET);
        assert_eq!((t.pending("a"), t.pending("b")), (2, 0));
        // Within the window, no more lines of the kind.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.pending("a"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_that_stops_is_summed_up_at_the_window_end() {
        let t = LogThrottle::new(1, Duration::from_secs(1));
        assert_eq!(t.allow("k"), QUIET);
        for _ in 0..5 {
            assert_eq!(t.allow("k"), None);
        }
        assert_eq!(t.pending("k"), 5);
        // No line of the kind comes again: the summary task takes the count.
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(t.pending("k"), 0, "reported by the summary");
        // Nothing is reported twice: the next line carries no count.
        assert_eq!(t.allow("k"), QUIET);
        // A second burst gets a summary of its own.
        assert_eq!(t.allow("k"), None);
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(t.pending("k"), 0);
    }

    #[test]
    fn outside_a_runtime_the_count_waits_for_the_next_line() {
        let t = LogThrottle::new(1, Duration::from_millis(1));
        assert_eq!(t.allow("k"), QUIET);
        assert_eq!(t.allow("k"), None);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            t.allow("k"),
            Some(Pass {
                suppressed: Some(1)
            })
        );
    }
}
