//! Exponential backoff between retries a later attempt may fix: an accept
//! that failed for want of descriptors, a dial to a guest that is not up yet.

use std::time::Duration;

/// Exponential backoff: `min`, doubling on every delay up to `max`, back to
/// `min` on [`reset`](Backoff::reset).
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `min`, doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max: max.max(min),
        }
    }

    /// For accept loops: 100 ms doubling to 1 s, so a listener out of
    /// descriptors retries about once a second and never spins.
    pub fn accept() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// The delay to wait now; the next one doubles.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    /// The delay [`next_delay`](Backoff::next_delay) would return, without taking it.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let seq: Vec<_> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seq, [100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.peek(), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        let mut a = Backoff::accept();
        let seq: Vec<_> = (0..6).map(|_| a.next_delay().as_millis()).collect();
        assert_eq!(seq, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn a_cap_below_the_start_is_the_start() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::ZERO);
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }
}
