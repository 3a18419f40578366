//! The control connection's life: reach the agent (dial it, or listen and let it
//! dial in), run a session, and when the session dies get a new connection and
//! start over, with backoff.
//!
//! Only the very first session is bounded, by `--boot-timeout` (the VM may still
//! be booting): failing that is fatal. After one session was ready, the relay
//! reconnects forever (100 ms doubling to 2 s), since the agent may restart.

use crate::config::Control;
use crate::report::chain;
use crate::session::{self, SessionEnd, SessionError};
use crate::{RelayError, Shared};
use sockfwd_proto::transport::{dial, dial_with_retry, Address, Listener, Stream};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, timeout, Instant};

/// First reconnect delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Shortest dial attempt while the boot deadline runs out.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

/// Exponential backoff, [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`].
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff(BACKOFF_MIN)
    }

    /// The delay to wait now; the next one doubles.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// Where control connections come from.
pub(crate) enum Connector {
    /// `--control`: dial this address.
    Dial(Address),
    /// `--control-listen`: accept the agent's connections here.
    Listen(Listener),
}

impl Connector {
    fn new(control: &Control) -> Result<Connector, RelayError> {
        match control {
            Control::Dial(a) => Ok(Connector::Dial(a.clone())),
            Control::Listen(a) => {
                let l = Listener::bind(a).map_err(RelayError::Listen)?;
                tracing::info!(control = %a, "waiting for the agent to dial in");
                Ok(Connector::Listen(l))
            }
        }
    }

    /// The first connection, before `deadline` (the boot timeout).
    async fn first(&self, deadline: Instant, shared: &Shared) -> Result<Stream, RelayError> {
        let config = &shared.config;
        // Rounded up to 10 ms so messages say "60s", not "59.99998s".
        let left = deadline.saturating_duration_since(Instant::now());
        let left = Duration::from_millis(
            u64::try_from(left.as_millis().div_ceil(10) * 10).unwrap_or(u64::MAX),
        );
        match self {
            Connector::Dial(addr) => {
                tracing::info!(control = %addr, within = ?left, "dialing the agent");
                let attempt = config.dial_timeout.min(left).max(MIN_ATTEMPT);
                dial_with_retry(addr, attempt, left)
                    .await
                    .map_err(|source| RelayError::AgentUnreachable {
                        addr: addr.clone(),
                        source,
                    })
            }
            Connector::Listen(l) => {
                timeout(left, self.accept(l))
                    .await
                    .map_err(|_| RelayError::NoAgentDialedIn {
                        addr: l.address().clone(),
                        after: config.boot_timeout,
                    })
            }
        }
    }

    /// A new connection after a lost session: no deadline.
    async fn again(&self, backoff: &mut Backoff, dial_timeout: Duration) -> Stream {
        match self {
            Connector::Dial(addr) => loop {
                match dial(addr, dial_timeout).await {
                    Ok(s) => return s,
                    Err(e) => {
                        tracing::debug!(control = %addr, cause = %chain(&e), "agent not reachable yet")
                    }
                }
                sleep(backoff.next_delay()).await;
            },
            Connector::Listen(l) => self.accept(l).await,
        }
    }

    /// Listen mode: the agent's next connection while a session runs. Dial mode: never.
    pub(crate) async fn incoming(&self) -> Stream {
        match self {
            Connector::Dial(_) => std::future::pending().await,
            Connector::Listen(l) => self.accept(l).await,
        }
    }

    async fn accept(&self, l: &Listener) -> Stream {
        let mut backoff = Backoff::new();
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    tracing::info!(control = %l.address(), "the agent dialed in");
                    return s;
                }
                // EMFILE and friends: wait for descriptors instead of spinning.
                Err(e) => {
                    tracing::warn!(control = %l.address(), cause = %e, "accepting the agent's connection failed");
                    sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

/// Runs sessions until shutdown; see the module docs.
pub(crate) async fn run(shared: &Arc<Shared>) -> Result<(), RelayError> {
    let config = &shared.config;
    let addr = config.control.address();
    let connector = Connector::new(&config.control)?;
    let boot_deadline = Instant::now()
        .checked_add(config.boot_timeout)
        .unwrap_or_else(|| Instant::now() + crate::config::MAX_DURATION);
    let mut was_ready = false;
    let mut backoff = Backoff::new();
    let mut next: Option<Stream> = None;
    loop {
        let stream = match next.take() {
            Some(s) => s,
            None => {
                let connect = async {
                    if was_ready {
                        Ok(connector.again(&mut backoff, config.dial_timeout).await)
                    } else {
                        connector.first(boot_deadline, shared).await
                    }
                };
                tokio::select! {
                    () = shared.shutdown.cancelled() => return Ok(()),
                    s = connect => s?,
                }
            }
        };
        let mut ready = false;
        let end = session::run(shared, stream, &connector, &mut ready, &mut next).await;
        if ready {
            was_ready = true;
            backoff.reset();
        }
        match end {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Lost(e) => lost(e, was_ready, ready, boot_deadline, shared)?,
        }
        if next.is_some() {
            tracing::info!(control = %addr, "continuing on the agent's newer control connection");
            continue;
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => return Ok(()),
            () = sleep(backoff.next_delay()) => {}
        }
    }
}

/// Decides whether a lost session is fatal (only before the first ready one) and logs it.
fn lost(
    e: SessionError,
    was_ready: bool,
    ready: bool,
    boot_deadline: Instant,
    shared: &Shared,
) -> Result<(), RelayError> {
    let addr = shared.config.control.address();
    if was_ready {
        if ready {
            tracing::warn!(control = %addr, cause = %chain(&e), "control channel lost; reconnecting");
        } else {
            tracing::warn!(control = %addr, cause = %chain(&e), "control session failed; retrying");
        }
        return Ok(());
    }
    // Before the first session: the agent refusing Bind is a configuration
    // problem, and the boot deadline bounds everything else.
    if e.is_bind_refused() || Instant::now() >= boot_deadline {
        return Err(RelayError::NoSession {
            addr: addr.clone(),
            source: e,
        });
    }
    tracing::debug!(control = %addr, cause = %chain(&e), "agent not ready yet; retrying");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        let seq: Vec<_> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seq, [100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }
}
