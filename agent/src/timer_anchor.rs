//! One timer always pending in the agent's runtime, so that arming a
//! connection's deadline does not wake the runtime's poller.
//!
//! tokio wakes its I/O driver (an eventfd write, then one more return from
//! `epoll_wait`) whenever a timer is armed that is due before every timer
//! pending when the driver last went to sleep. The agent arms several per
//! forwarded connection (the pending and result deadlines, the stream
//! handshake and claim timeouts), and an idle agent has no other timer, so
//! each did that: 4 eventfd writes per connection (strace). With a timer due
//! at most [`ANCHOR`] ahead, a deadline further off is never the earliest.

use std::time::Duration;
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// The anchor's period: under the shortest default deadline (the 5 s stream
/// handshake), and one wakeup per 4 s when idle.
pub const ANCHOR: Duration = Duration::from_secs(4);

/// Keeps a timer pending until `stop`.
pub async fn run(stop: CancellationToken) {
    let mut tick = interval(ANCHOR);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_until_stopped() {
        let stop = CancellationToken::new();
        let anchor = tokio::spawn(run(stop.clone()));
        tokio::time::sleep(ANCHOR * 3).await;
        assert!(!anchor.is_finished(), "the anchor keeps running");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), anchor)
            .await
            .expect("ends at stop")
            .unwrap();
    }
}
