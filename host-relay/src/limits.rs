//! Caps on what the guest can make the host do: concurrent connections and new
//! connections per second, per forward and in total.
//!
//! Admission is synchronous and allocation-free, so the Accept loop can refuse an
//! excess request before spawning anything for it. Concurrency caps are
//! semaphores; a permit is held for as long as the connection's task runs.

use sockfwd_proto::counters::{ActiveGuard, ForwardCounters};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

/// A concurrency cap: `max` permits, or no semaphore at all for "no cap".
#[derive(Debug)]
struct Slots(Option<Arc<Semaphore>>);

impl Slots {
    fn new(max: usize) -> Slots {
        Slots((max > 0).then(|| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)))))
    }

    /// A slot, or `None` when every one is taken.
    fn try_take(&self) -> Option<Slot> {
        match &self.0 {
            None => Some(Slot { _permit: None }),
            Some(s) => Arc::clone(s)
                .try_acquire_owned()
                .ok()
                .map(|p| Slot { _permit: Some(p) }),
        }
    }
}

/// A held slot, given back on drop (holds nothing when there is no cap).
#[derive(Debug)]
struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
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

/// One forward's own caps: its concurrency slots and its rate.
#[derive(Debug)]
pub struct ForwardLimiter {
    /// Sized by the [`Caps`] that first admit a connection to the forward: a
    /// forward table can be built (by a library caller) before the caps exist.
    slots: OnceLock<Slots>,
    rate: RateLimiter,
}

impl ForwardLimiter {
    /// A forward's limiter allowing `rate_per_sec` new connections a second (0: no cap).
    pub fn new(rate_per_sec: u32) -> ForwardLimiter {
        ForwardLimiter {
            slots: OnceLock::new(),
            rate: RateLimiter::new(rate_per_sec),
        }
    }
}

/// An admitted connection's slots, held until its task ends; it also counts
/// the connection in its forward's `active` counter.
#[derive(Debug)]
pub struct Permit {
    _forward: Slot,
    _total: Slot,
    _active: ActiveGuard,
}

/// The relay-wide caps and their state.
#[derive(Debug)]
pub struct Caps {
    limits: Limits,
    slots: Slots,
    rate: RateLimiter,
}

impl Caps {
    /// Caps with fresh state.
    pub fn new(limits: Limits) -> Caps {
        Caps {
            limits,
            slots: Slots::new(limits.max_concurrent),
            rate: RateLimiter::new(limits.max_rate),
        }
    }

    /// Admits one new connection to the forward with `limiter` and `counters`,
    /// or says which cap refused it. Concurrency is checked first: a refused
    /// request takes no rate token then.
    pub fn admit(
        &self,
        limiter: &ForwardLimiter,
        counters: &Arc<ForwardCounters>,
    ) -> Result<Permit, Refusal> {
        let per_forward = limiter
            .slots
            .get_or_init(|| Slots::new(self.limits.max_concurrent_per_forward));
        let forward = per_forward.try_take().ok_or(Refusal::ForwardConcurrency)?;
        let total = self.slots.try_take().ok_or(Refusal::TotalConcurrency)?;
        if !limiter.rate.try_take() {
            return Err(Refusal::ForwardRate);
        }
        if !self.rate.try_take() {
            return Err(Refusal::TotalRate);
        }
        Ok(Permit {
            _forward: forward,
            _total: total,
            _active: counters.active_guard(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A forward as the table holds it: its limiter and its counters.
    fn forward(rate_per_forward: u32) -> (ForwardLimiter, Arc<ForwardCounters>) {
        (
            ForwardLimiter::new(rate_per_forward),
            Arc::new(ForwardCounters::default()),
        )
    }

    fn active(c: &ForwardCounters) -> u64 {
        c.snapshot().active
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
        let (a, b) = (forward(0), forward(0));
        let caps = Caps::new(Limits {
            max_concurrent: 3,
            max_concurrent_per_forward: 2,
            max_rate: 0,
            max_rate_per_forward: 0,
        });
        let a1 = caps.admit(&a.0, &a.1).unwrap();
        let _a2 = caps.admit(&a.0, &a.1).unwrap();
        assert_eq!(
            caps.admit(&a.0, &a.1).unwrap_err(),
            Refusal::ForwardConcurrency
        );
        let _b1 = caps.admit(&b.0, &b.1).unwrap();
        assert_eq!(
            caps.admit(&b.0, &b.1).unwrap_err(),
            Refusal::TotalConcurrency
        );
        assert_eq!(active(&a.1), 2);
        // The refused total did not leak b's per-forward slot.
        assert_eq!(active(&b.1), 1);
        drop(a1);
        assert_eq!(active(&a.1), 1);
        let _b2 = caps.admit(&b.0, &b.1).unwrap();
        assert_eq!(active(&b.1), 2);
        assert_eq!(
            caps.admit(&a.0, &a.1).unwrap_err(),
            Refusal::TotalConcurrency,
            "three held: the total cap again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_cap_admits_without_bound() {
        let f = forward(0);
        let caps = Caps::new(Limits {
            max_concurrent: 0,
            max_concurrent_per_forward: 0,
            max_rate: 0,
            max_rate_per_forward: 0,
        });
        let many: Vec<_> = (0..100).map(|_| caps.admit(&f.0, &f.1).unwrap()).collect();
        assert_eq!(active(&f.1), 100);
        drop(many);
        assert_eq!(active(&f.1), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_caps_per_forward_then_total() {
        let (a, b) = (forward(3), forward(3));
        let caps = Caps::new(Limits {
            max_concurrent: 0,
            max_concurrent_per_forward: 0,
            max_rate: 5,
            max_rate_per_forward: 3,
        });
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(caps.admit(&a.0, &a.1).unwrap());
        }
        let refused = caps.admit(&a.0, &a.1).unwrap_err();
        assert_eq!(refused, Refusal::ForwardRate);
        assert_eq!(refused.wire_text(), "rate limit reached");
        // a's refusal took no total token: b still gets the 2 left of 5.
        held.push(caps.admit(&b.0, &b.1).unwrap());
        held.push(caps.admit(&b.0, &b.1).unwrap());
        assert_eq!(caps.admit(&b.0, &b.1).unwrap_err(), Refusal::TotalRate);
        tokio::time::advance(Duration::from_secs(1)).await;
        caps.admit(&a.0, &a.1).unwrap();
        assert_eq!(
            Refusal::TotalConcurrency.wire_text(),
            "connection limit reached"
        );
    }
}
