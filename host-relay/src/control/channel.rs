//! The control channel's life: get a connection ([`Connector`]), run a session
//! on it, and when the session dies get a new connection and start over, with
//! backoff.
//!
//! Only the very first session is bounded, by `--boot-timeout` (the VM may still
//! be booting): failing that is fatal. While it waits, the relay says so every
//! [`PROGRESS_EVERY`]: what it waits for, for how long, and until when. After
//! one session was ready, the relay reconnects forever (100 ms doubling to 2 s),
//! since the agent may restart.

use crate::control::connector::{Connector, ReachError};
use crate::control::session::{self, ConnectRequests, SessionEnd, SessionError, SessionParts};
use sockfwd_proto::backoff::Backoff;
use sockfwd_proto::log_text::escape;
use sockfwd_proto::report::Chain;
use sockfwd_proto::transport::{Address, Stream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;
use thiserror::Error;
use tokio::time::{interval_at, sleep, Instant, MissedTickBehavior};

/// First reconnect delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the relay reports that it is still waiting for a booting guest.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why the control channel never worked.
#[derive(Debug, Error)]
pub enum ChannelError {
    /// No first connection.
    #[error(transparent)]
    Reach(#[from] ReachError),
    /// The first session never became ready: Bind refused, or the boot timeout passed.
    #[error("no working control session on {addr}")]
    NoSession {
        /// The control address.
        addr: Address,
        /// The last session's failure.
        #[source]
        source: SessionError,
    },
}

/// What the relay waits for while the guest boots, for the progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Boot {
    /// A first connection.
    Connection = 0,
    /// The agent's answer to Bind (and the Accept stream) on a connection.
    Session = 1,
    /// A session was ready: booted.
    Done = 2,
}

/// The boot phase, shared by the session loop and the progress reporter.
struct Phase(AtomicU8);

impl Phase {
    fn set(&self, b: Boot) {
        self.0.store(b as u8, Ordering::Relaxed);
    }

    fn get(&self) -> Boot {
        match self.0.load(Ordering::Relaxed) {
            0 => Boot::Connection,
            1 => Boot::Session,
            _ => Boot::Done,
        }
    }
}

/// Runs sessions until shutdown (`Ok`), or until the first one cannot come
/// about; see the module docs.
pub(crate) async fn run(
    parts: &SessionParts<'_>,
    connector: &Connector,
    requests: &impl ConnectRequests,
) -> Result<(), ChannelError> {
    let config = parts.config;
    let start = Instant::now();
    let boot_deadline = start
        .checked_add(config.boot_timeout)
        .unwrap_or_else(|| start + crate::config::MAX_DURATION);
    let phase = Phase(AtomicU8::new(Boot::Connection as u8));
    // The current session's readiness, seen by the progress lines while that
    // session still runs (it may serve for days before it ends).
    let session_ready = AtomicBool::new(false);
    let sessions = async {
        let mut was_ready = false;
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut next: Option<Stream> = None;
        loop {
            let stream = match next.take() {
                Some(s) => s,
                None => {
                    let connect = async {
                        if was_ready {
                            Ok(connector.again(&mut backoff, config.dial_timeout).await)
                        } else {
                            connector
                                .first(boot_deadline, config.boot_timeout, config.dial_timeout)
                                .await
                        }
                    };
                    tokio::select! {
                        () = parts.shutdown.cancelled() => return Ok(()),
                        s = connect => s?,
                    }
                }
            };
            if !was_ready {
                phase.set(Boot::Session);
            }
            session_ready.store(false, Ordering::Relaxed);
            let end = session::run(
                parts,
                stream,
                connector,
                requests,
                &session_ready,
                &mut next,
            )
            .await;
            let ready = session_ready.load(Ordering::Relaxed);
            if ready {
                was_ready = true;
                phase.set(Boot::Done);
                backoff.reset();
            } else if !was_ready {
                phase.set(Boot::Connection);
            }
            match end {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Lost(e) => lost(e, was_ready, ready, boot_deadline, parts)?,
            }
            if next.is_some() {
                tracing::info!(control = %escape(&config.control.address().to_string()),
                    "continuing on the agent's newer control connection");
                continue;
            }
            tokio::select! {
                () = parts.shutdown.cancelled() => return Ok(()),
                () = sleep(backoff.next_delay()) => {}
            }
        }
    };
    tokio::select! {
        r = sessions => r,
        never = boot_progress(parts, connector, &phase, &session_ready, start, boot_deadline) => match never {},
    }
}

/// Logs every [`PROGRESS_EVERY`], until a first session is ready, what the
/// relay waits for, how long it has waited and when it gives up. Never returns.
async fn boot_progress(
    parts: &SessionParts<'_>,
    connector: &Connector,
    phase: &Phase,
    session_ready: &AtomicBool,
    start: Instant,
    deadline: Instant,
) -> std::convert::Infallible {
    let control = parts.config.control.address();
    let mut tick = interval_at(start + PROGRESS_EVERY, PROGRESS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if session_ready.load(Ordering::Relaxed) {
            return std::future::pending().await;
        }
        let waiting_for = match phase.get() {
            Boot::Done => return std::future::pending().await,
            Boot::Connection if connector.listens() => "the agent to dial in",
            Boot::Connection => "the agent's control port to accept",
            Boot::Session => "the agent to answer Bind",
        };
        let now = Instant::now();
        tracing::info!(
            %control,
            waited = ?whole_seconds(now.saturating_duration_since(start)),
            gives_up_in = ?whole_seconds(deadline.saturating_duration_since(now)),
            boot_timeout = ?parts.config.boot_timeout,
            "guest still booting: waiting for {waiting_for}"
        );
    }
}

/// `d` rounded to whole seconds, for progress lines ("10s", not "10.000183s").
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_millis() >= 500))
}

/// Decides whether a lost session is fatal (only before the first ready one) and logs it.
fn lost(
    e: SessionError,
    was_ready: bool,
    ready: bool,
    boot_deadline: Instant,
    parts: &SessionParts<'_>,
) -> Result<(), ChannelError> {
    let addr = parts.config.control.address();
    if was_ready {
        if ready {
            tracing::warn!(control = %escape(&addr.to_string()), cause = %Chain(&e), "control channel lost; reconnecting");
        } else {
            tracing::warn!(control = %escape(&addr.to_string()), cause = %Chain(&e), "control session failed; retrying");
        }
        return Ok(());
    }
    // Before the first session: the agent refusing Bind is a configuration
    // problem, and the boot deadline bounds everything else.
    if e.is_bind_refused() || Instant::now() >= boot_deadline {
        return Err(ChannelError::NoSession {
            addr: addr.clone(),
            source: e,
        });
    }
    tracing::debug!(control = %escape(&addr.to_string()), cause = %Chain(&e), "agent not ready yet; retrying");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_figures_are_whole_seconds() {
        assert_eq!(
            whole_seconds(Duration::from_millis(9_999)),
            Duration::from_secs(10)
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(5_001)),
            Duration::from_secs(5)
        );
        assert_eq!(whole_seconds(Duration::ZERO), Duration::ZERO);
    }
}
