//! Where control connections come from: the relay dials the agent
//! (`--control`) or listens and lets the agent dial in (`--control-listen`,
//! nerdbox's topology). The first connection is bounded by the boot deadline;
//! later ones are retried without end.

use crate::config::Control;
use sockfwd_proto::accept::accept_next;
use sockfwd_proto::backoff::Backoff;
use sockfwd_proto::log_text::escape;
use sockfwd_proto::report::Chain;
use sockfwd_proto::transport::{
    dial, dial_with_retry, Address, DialError, Listener, ListenerError, Stream,
};
use std::time::Duration;
use thiserror::Error;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Shortest dial attempt while the boot deadline runs out.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

/// Why the first control connection did not come about.
#[derive(Debug, Error)]
pub enum ReachError {
    /// `--control`: the agent could not be dialed within the boot timeout.
    #[error("cannot reach the agent's control port")]
    Unreachable(#[source] DialError),
    /// `--control-listen`: the listener could not be created.
    #[error("cannot listen for the agent")]
    Listen(#[source] ListenerError),
    /// `--control-listen`: no agent dialed in within the boot timeout.
    #[error("no agent dialed in on {addr} within {after:?}")]
    NoAgentDialedIn {
        /// The control address.
        addr: Address,
        /// The boot timeout.
        after: Duration,
    },
}

enum Mode {
    Dial(Address),
    Listen(Listener),
}

/// The source of control connections; see the module docs.
pub(crate) struct Connector {
    mode: Mode,
    /// Ends the listener's accepts (shutdown).
    stop: CancellationToken,
}

impl Connector {
    /// A connector for `control`; listen mode binds its listener now.
    pub(crate) fn new(control: &Control, stop: CancellationToken) -> Result<Connector, ReachError> {
        let mode = match control {
            Control::Dial(a) => Mode::Dial(a.clone()),
            Control::Listen(a) => {
                let l = Listener::bind(a).map_err(ReachError::Listen)?;
                tracing::info!(control = %escape(&a.to_string()), "waiting for the agent to dial in");
                Mode::Listen(l)
            }
        };
        Ok(Connector { mode, stop })
    }

    /// Whether the agent dials in (listen mode).
    pub(crate) fn listens(&self) -> bool {
        matches!(self.mode, Mode::Listen(_))
    }

    /// The first connection, before `deadline` (the boot timeout, `boot_timeout` long).
    pub(crate) async fn first(
        &self,
        deadline: Instant,
        boot_timeout: Duration,
        dial_timeout: Duration,
    ) -> Result<Stream, ReachError> {
        // Rounded up to 10 ms so messages say "60s", not "59.99998s".
        let left = deadline.saturating_duration_since(Instant::now());
        let left = Duration::from_millis(
            u64::try_from(left.as_millis().div_ceil(10) * 10).unwrap_or(u64::MAX),
        );
        match &self.mode {
            Mode::Dial(addr) => {
                tracing::info!(control = %escape(&addr.to_string()), within = ?left, "dialing the agent");
                let attempt = dial_timeout.min(left).max(MIN_ATTEMPT);
                dial_with_retry(addr, attempt, left)
                    .await
                    .map_err(ReachError::Unreachable)
            }
            Mode::Listen(l) => {
                timeout(left, self.accept(l))
                    .await
                    .map_err(|_| ReachError::NoAgentDialedIn {
                        addr: l.address().clone(),
                        after: boot_timeout,
                    })
            }
        }
    }

    /// A new connection after a lost session: no deadline.
    pub(crate) async fn again(&self, backoff: &mut Backoff, dial_timeout: Duration) -> Stream {
        match &self.mode {
            Mode::Dial(addr) => loop {
                match dial(addr, dial_timeout).await {
                    Ok(s) => return s,
                    Err(e) => {
                        tracing::debug!(control = %escape(&addr.to_string()), cause = %Chain(&e), "agent not reachable yet");
                    }
                }
                sleep(backoff.next_delay()).await;
            },
            Mode::Listen(l) => self.accept(l).await,
        }
    }

    /// Listen mode: the agent's next connection while a session runs. Dial mode: never.
    pub(crate) async fn incoming(&self) -> Stream {
        match &self.mode {
            Mode::Dial(_) => std::future::pending().await,
            Mode::Listen(l) => self.accept(l).await,
        }
    }

    /// The next connection on `l`; pending for good once stopped (the caller
    /// watches the same token).
    async fn accept(&self, l: &Listener) -> Stream {
        match accept_next(l, &mut Backoff::accept(), &self.stop).await {
            Some((s, _)) => {
                tracing::info!(control = %escape(&l.address().to_string()), "the agent dialed in");
                s
            }
            None => std::future::pending().await,
        }
    }
}
