//! Keeps a flood from flooding the log: at most N lines per window for each
//! kind of line (a refusal, a failed connection, a bad message); the rest are
//! counted, and the first line of that kind let through afterwards carries the
//! count (`suppressed = N`), so the log says how much it left out.
//!
//! Kinds are the callers' `&'static str` names, so their number is bounded by
//! the code, not by what a peer sends.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Lets through at most `per_window` lines per `window` of each kind.
#[derive(Debug)]
pub struct LogThrottle {
    per_window: u32,
    window: Duration,
    kinds: Mutex<HashMap<&'static str, Window>>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
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
            per_window,
            window,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// Whether to log a line of `kind` now: `None` drops it (and counts it).
    pub fn allow(&self, kind: &'static str) -> Option<Pass> {
        let now = Instant::now();
        // Every update is a few integer writes: a poisoned lock is still consistent.
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        let w = kinds.entry(kind).or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(w.start) >= self.window {
            w.start = now;
            w.logged = 0;
        }
        if w.logged < self.per_window {
            w.logged += 1;
            let dropped = std::mem::take(&mut w.suppressed);
            Some(Pass {
                suppressed: (dropped > 0).then_some(dropped),
            })
        } else {
            w.suppressed += 1;
            None
        }
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
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            t.allow("a"),
            Some(Pass {
                suppressed: Some(2)
            })
        );
        assert_eq!(t.allow("a"), QUIET);
        assert_eq!(t.allow("b"), QUIET);
    }
}
