//! Caps on what the guest can make the host do: concurrent connections and new
//! connections per second, per forward and in total, plus a throttle for the log
//! lines a flood would otherwise produce.
//!
//! Admission is synchronous and allocation-free, so the Accept loop can refuse an
//! excess request before spawning anything for it.

use crate::forwards::ForwardEntry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;

/// The caps; 0 means "no cap" for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Forwarded connections at once, all forwards together.
    pub max_concurrent: usize,
    /// Forwarded connections at once, per forward.
    pub max_concurrent_per_forward: usize,
    /// New connections per second, all forwards together.
    pub max_rate: u32,
    /// New connections per second, per forward.
    pub max_rate_per_forward: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent: 4096,
            max_concurrent_per_forward: 1024,
            // Generous: the concurrency caps bound what a hostile guest can hold;
            // the rate caps only stop a connect loop from burning the host's CPU,
            // and must not throttle a busy client (measured: ~10k/s through one forward).
            max_rate: 20_000,
            max_rate_per_forward: 10_000,
        }
    }
}

/// A shared count of held slots; clones count the same slots.
#[derive(Debug, Default, Clone)]
pub struct SlotCounter(Arc<AtomicUsize>);

/// One held slot, given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SlotCounter {
    /// Takes a slot if fewer than `max` are held (`max` 0: always).
    pub fn try_acquire(&self, max: usize) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(&self.0)))
    }

    /// Slots held now.
    pub fn current(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// A token bucket: `per_sec` tokens a second, bursts of up to one second's worth.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: u32,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A limiter allowing `per_sec` events a second (0: unlimited), starting full.
    pub fn new(per_sec: u32) -> RateLimiter {
        RateLimiter {
            per_sec,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(per_sec),
                last: Instant::now(),
            }),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&self) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        let now = Instant::now();
        let mut b = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let rate = f64::from(self.per_sec);
        let refill = now.saturating_duration_since(b.last).as_secs_f64() * rate;
        b.tokens = (b.tokens + refill).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a request was refused; the wire text is what the guest gets.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The forward has `max_concurrent_per_forward` connections.
    #[error("connection limit reached (per forward)")]
    ForwardConcurrency,
    /// All forwards together have `max_concurrent` connections.
    #[error("connection limit reached (total)")]
    TotalConcurrency,
    /// The forward exceeded `max_rate_per_forward`.
    #[error("rate limit reached (per forward)")]
    ForwardRate,
    /// All forwards together exceeded `max_rate`.
    #[error("rate limit reached (total)")]
    TotalRate,
}

impl Refusal {
    /// The text sent in `ConnectResult.error`.
    pub fn wire_text(self) -> &'static str {
        match self {
            Refusal::ForwardConcurrency | Refusal::TotalConcurrency => "connection limit reached",
            Refusal::ForwardRate | Refusal::TotalRate => "rate limit reached",
        }
    }
}

/// An admitted connection's slots, held until its relay ends.
#[derive(Debug)]
pub struct Permit {
    _forward: Slot,
    _total: Slot,
}

/// The relay-wide caps and their state.
#[derive(Debug)]
pub struct Caps {
    limits: Limits,
    active: SlotCounter,
    rate: RateLimiter,
}

impl Caps {
    /// Caps with fresh state.
    pub fn new(limits: Limits) -> Caps {
        Caps {
            limits,
            active: SlotCounter::default(),
            rate: RateLimiter::new(limits.max_rate),
        }
    }

    /// Connections held across all forwards.
    pub fn active(&self) -> usize {
        self.active.current()
    }

    /// Admits one new connection to `entry` or says which cap refused it.
    /// Concurrency is checked first: a refused request takes no rate token then.
    pub fn admit(&self, entry: &ForwardEntry) -> Result<Permit, Refusal> {
        let forward = entry
            .counters
            .active
            .try_acquire(self.limits.max_concurrent_per_forward)
            .ok_or(Refusal::ForwardConcurrency)?;
        let total = self
            .active
            .try_acquire(self.limits.max_concurrent)
            .ok_or(Refusal::TotalConcurrency)?;
        if !entry.rate.try_take() {
            return Err(Refusal::ForwardRate);
        }
        if !self.rate.try_take() {
            return Err(Refusal::TotalRate);
        }
        Ok(Permit {
            _forward: forward,
            _total: total,
        })
    }
}

/// Lets through at most `per_window` log lines per `window` and counts the rest.
#[derive(Debug)]
pub struct LogThrottle {
    per_window: u32,
    window: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug)]
struct ThrottleState {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogThrottle {
    /// A throttle of `per_window` lines per `window`.
    pub fn new(per_window: u32, window: Duration) -> LogThrottle {
        LogThrottle {
            per_window,
            window,
            state: Mutex::new(ThrottleState {
                start: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// `None`: drop this line. `Some(dropped)`: log it, with `dropped` the number
    /// of lines dropped before it when there were any (a field only when it says
    /// something).
    pub fn allow(&self) -> Option<Option<u64>> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if now.saturating_duration_since(s.start) >= self.window {
            s.start = now;
            s.logged = 0;
        }
        if s.logged < self.per_window {
            s.logged += 1;
            let dropped = std::mem::take(&mut s.suppressed);
            Some((dropped > 0).then_some(dropped))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwards::ForwardTable;
    use crate::spec::Forward;

    fn table(rate_per_forward: u32) -> ForwardTable {
        let f = Forward::from_spec("a=/g/a.sock:/h/a.sock").unwrap();
        let g = Forward::from_spec("b=/g/b.sock:/h/b.sock").unwrap();
        ForwardTable::new(&[f, g], rate_per_forward)
    }

    #[test]
    fn slots_are_capped_and_given_back() {
        let c = SlotCounter::default();
        let a = c.try_acquire(2).unwrap();
        let _b = c.try_acquire(2).unwrap();
        assert!(c.try_acquire(2).is_none());
        drop(a);
        assert_eq!(c.current(), 1);
        assert!(c.try_acquire(2).is_some());
        let many: Vec<_> = (0..100).map(|_| c.try_acquire(0).unwrap()).collect();
        assert_eq!(c.current(), 101);
        drop(many);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_refills_over_time() {
        let r = RateLimiter::new(10);
        assert_eq!((0..20).filter(|_| r.try_take()).count(), 10, "burst");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..20).filter(|_| r.try_take()).count(), 5, "half a second");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!((0..20).filter(|_| r.try_take()).count(), 10, "capped burst");
        let unlimited = RateLimiter::new(0);
        assert!((0..10_000).all(|_| unlimited.try_take()));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_caps_per_forward_and_total() {
        let t = table(0);
        let caps = Caps::new(Limits {
            max_concurrent: 3,
            max_concurrent_per_forward: 2,
            max_rate: 0,
            max_rate_per_forward: 0,
        });
        let (a, b) = (&t.get("a").unwrap(), &t.get("b").unwrap());
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).unwrap_err(), Refusal::ForwardConcurrency);
        let _b1 = caps.admit(b).unwrap();
        assert_eq!(caps.admit(b).unwrap_err(), Refusal::TotalConcurrency);
        assert_eq!(a.counters.active.current(), 2);
        // The refused total did not leak b's per-forward slot.
        assert_eq!(b.counters.active.current(), 1);
        drop(a1);
        let _b2 = caps.admit(b).unwrap();
        assert_eq!(caps.active(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_caps_per_forward_then_total() {
        let t = table(3);
        let caps = Caps::new(Limits {
            max_concurrent: 0,
            max_concurrent_per_forward: 0,
            max_rate: 5,
            max_rate_per_forward: 3,
        });
        let (a, b) = (&t.get("a").unwrap(), &t.get("b").unwrap());
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(caps.admit(a).unwrap());
        }
        let refused = caps.admit(a).unwrap_err();
        assert_eq!(refused, Refusal::ForwardRate);
        assert_eq!(refused.wire_text(), "rate limit reached");
        // a's refusal took no total token: b still gets the 2 left of 5.
        held.push(caps.admit(b).unwrap());
        held.push(caps.admit(b).unwrap());
        assert_eq!(caps.admit(b).unwrap_err(), Refusal::TotalRate);
        tokio::time::advance(Duration::from_secs(1)).await;
        caps.admit(a).unwrap();
        assert_eq!(
            Refusal::TotalConcurrency.wire_text(),
            "connection limit reached"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn log_throttle_counts_what_it_drops() {
        let t = LogThrottle::new(2, Duration::from_secs(1));
        assert_eq!(t.allow(), Some(None));
        assert_eq!(t.allow(), Some(None));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.allow(), Some(Some(2)));
        assert_eq!(t.allow(), Some(None));
    }
}
