//! One `ConnectRequest` of a remote forward, from the Accept loop to the end
//! of its relay.
//!
//! In the Accept loop (synchronous, no task yet): check the stream ID, resolve the
//! forward ID in our own table, apply the caps; refusals are answered right there,
//! so a flood costs no tasks. Admitted requests get a task on the tracker that
//! dials the forward's target (a host Unix socket, or a TCP address through
//! `sockfwd_proto::tcp_dial`, within the same `--dial-timeout`) and opens the
//! stream at the same time, sends the result only once both are up, then relays until both
//! directions end. Every way a request can fail is a `Failure`, put into words
//! for the guest and for the log in one place.
//!
//! With an agent that lists `stream-pool`, most connections take the other
//! way in: `pool` keeps streams open ahead of demand for each session, and
//! `pooled` serves one when the agent names a forward on it, with the same
//! table, caps, dial and relay as a request, answered in-band.

use crate::control::session::ConnectRequests;
use crate::framing::choose;
use crate::limits::{Permit, Refusal};
use crate::remote_table::ForwardEntry;
use crate::rpc::Results;
use crate::shared::Shared;
use crate::streams::{open_stream, StreamError};
use dial::{dial_target, TargetDialError};
use sockfwd_proto::counters::ForwardCounters;
use sockfwd_proto::framing::Framing;
use sockfwd_proto::handshake;
use sockfwd_proto::info::AgentInfo;
use sockfwd_proto::log_text::escape;
use sockfwd_proto::relay::{relay_stream, RelayConfig};
use sockfwd_proto::report::{chain, Chain};
use sockfwd_proto::rpc::{ConnectRequest, SocketForwardClient};
use sockfwd_proto::stream_id::{self, StreamIdError};
use sockfwd_proto::transport::Stream;
use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

mod dial;
mod pool;
mod pooled;

/// Error text for a host socket that cannot be reached (the reference's wording).
pub const DIAL_FAILED: &str = "failed to dial host socket";
/// Error text when a request arrives or completes while the relay shuts down.
pub const SHUTTING_DOWN: &str = "relay shutting down";
/// Error text for a stream ID that breaks the stream-ID rule.
pub const BAD_STREAM_ID: &str = "invalid stream ID";

/// Why a request got an error result instead of a relay.
#[derive(Debug)]
enum Failure {
    /// The stream ID breaks the stream-ID rule.
    BadStreamId(StreamIdError),
    /// Shutdown began before the request was admitted, or while it was set up.
    ShuttingDown,
    /// The forward ID is not in the table (as the guest sent it).
    UnknownForward(String),
    /// A cap refused it.
    Capped(Refusal),
    /// The target could not be dialed.
    HostUnreachable(TargetDialError),
    /// The stream could not be opened.
    Stream(StreamError),
}

impl Failure {
    /// The `ConnectResult.error` text (the contract's wording where it has one).
    fn wire_text(&self) -> String {
        match self {
            Failure::BadStreamId(_) => BAD_STREAM_ID.to_owned(),
            Failure::ShuttingDown => SHUTTING_DOWN.to_owned(),
            Failure::UnknownForward(id) => format!("unknown forward ID: {}", escape(id)),
            Failure::Capped(r) => r.wire_text().to_owned(),
            Failure::HostUnreachable(_) => DIAL_FAILED.to_owned(),
            Failure::Stream(e) => chain(e),
        }
    }

    /// Whether the forward's `failed` counter counts it (refusals count as
    /// `refused` where they are counted at all).
    fn is_failure(&self) -> bool {
        matches!(self, Failure::HostUnreachable(_) | Failure::Stream(_))
    }
}

impl fmt::Display for Failure {
    /// The log's wording: as the wire's, with the cause in full.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::BadStreamId(e) => write!(f, "{BAD_STREAM_ID}: {e}"),
            Failure::Capped(r) => write!(f, "{r}"),
            Failure::HostUnreachable(e) => write!(f, "{DIAL_FAILED}: {}", Chain(e)),
            // The agent's text (a refused handshake) is the peer's: escaped.
            Failure::Stream(e) => write!(f, "{}", Chain(e)),
            other => f.write_str(&other.wire_text()),
        }
    }
}

/// The remote-forward side: what each control session hands its requests
/// to, and the session's pool of pre-opened streams.
pub(crate) struct RemoteForwards {
    shared: Arc<Shared>,
    pool: Arc<pool::Current>,
}

impl RemoteForwards {
    /// The remote forwards of the run whose state is `shared`.
    pub(crate) fn new(shared: Arc<Shared>) -> RemoteForwards {
        RemoteForwards {
            shared,
            pool: Arc::default(),
        }
    }
}

impl ConnectRequests for RemoteForwards {
    fn handle(&self, req: ConnectRequest, results: &Results) -> impl Future<Output = ()> + Send {
        // A request means the agent found no pooled stream: refill.
        self.pool.want_more();
        handle_request(&self.shared, results, req)
    }

    fn open_pool(
        &self,
        client: &SocketForwardClient,
        info: &AgentInfo,
        ready: &CancellationToken,
        ended: &CancellationToken,
    ) -> impl Future<Output = ()> + Send {
        pool::open(&self.shared, &self.pool, client, info, ready, ended)
    }
}

/// Handles one request from the Accept loop; see the module docs.
async fn handle_request(shared: &Arc<Shared>, results: &Results, req: ConnectRequest) {
    match admit(shared, &req.stream_id, &req.forward_id) {
        Ok((entry, permit)) => {
            let span = tracing::debug_span!("connection", stream_id = %req.stream_id,
                forward_id = %entry.forward.id);
            let task = serve(Arc::clone(shared), results.clone(), entry, req, permit);
            shared.tracker.spawn(task.instrument(span));
        }
        Err(failure) => {
            note_refusal(shared, &req.stream_id, &req.forward_id, &failure);
            // A failed send means the session is dying, which the loop sees
            // on its next read.
            if let Err(e) = results
                .send(&req.stream_id, &failure.wire_text(), Framing::Raw)
                .await
            {
                if let Some(pass) = shared.log_throttle.allow("refusal not sent") {
                    tracing::warn!(cause = %Chain(&e), suppressed = pass.suppressed,
                        "could not send a refusal to the agent");
                }
            }
        }
    }
}

/// Logs a request `admit` refused (throttled; shutdown's refusals are expected).
fn note_refusal(shared: &Shared, stream_id: &str, forward_id: &str, failure: &Failure) {
    if !matches!(failure, Failure::ShuttingDown) {
        if let Some(pass) = shared.log_throttle.allow("refused") {
            tracing::warn!(stream_id = %escape(stream_id), forward_id = %escape(forward_id),
                cause = %failure, suppressed = pass.suppressed, "connection refused");
        }
    }
}

/// The checks of the Accept loop (and of a pooled stream's header), in
/// order; counts what it refuses. The forward is looked up in our own table
/// only: what the guest names is a key, never a place.
fn admit(
    shared: &Shared,
    stream_id: &str,
    forward_id: &str,
) -> Result<(Arc<ForwardEntry>, Permit), Failure> {
    stream_id::check(stream_id).map_err(Failure::BadStreamId)?;
    if shared.shutdown.is_cancelled() {
        return Err(Failure::ShuttingDown);
    }
    let Some(entry) = shared.table.get(forward_id) else {
        shared.table.unknown.fetch_add(1, Ordering::Relaxed);
        return Err(Failure::UnknownForward(forward_id.to_owned()));
    };
    ForwardCounters::bump(&entry.counters.total);
    match shared.caps.admit(&entry.limiter, &entry.counters) {
        Ok(permit) => Ok((entry, permit)),
        Err(refusal) => {
            ForwardCounters::bump(&entry.counters.refused);
            Err(Failure::Capped(refusal))
        }
    }
}

/// The admitted request's task. Everything it does ends at the shutdown grace.
async fn serve(
    shared: Arc<Shared>,
    results: Results,
    entry: Arc<ForwardEntry>,
    req: ConnectRequest,
    permit: Permit,
) {
    tokio::select! {
        () = connect_and_relay(&shared, results, &entry, &req) => {}
        () = shared.hard_stop.cancelled() => {
            tracing::debug!("connection cut at the end of the shutdown grace");
        }
    }
    drop(permit);
}

/// Both sides of a connection, up.
struct Connected {
    host: Stream,
    stream: Stream,
}

/// Dials the host socket and opens the stream at the same time.
async fn set_up(
    shared: &Shared,
    entry: &ForwardEntry,
    req: &ConnectRequest,
    early: bool,
) -> Result<Connected, Failure> {
    let config = &shared.config;
    let (host, stream) = tokio::join!(
        dial_target(&entry.forward.target, config.dial_timeout),
        open_stream(
            &config.streams,
            &req.stream_id,
            config.stream_timeout,
            early
        ),
    );
    let host = host.map_err(Failure::HostUnreachable)?;
    let stream = stream.map_err(Failure::Stream)?;
    if shared.shutdown.is_cancelled() {
        return Err(Failure::ShuttingDown);
    }
    Ok(Connected { host, stream })
}

/// Logs a connection that failed or was refused, and counts the failures.
fn note_failure(shared: &Shared, entry: &ForwardEntry, stream_id: &str, failure: &Failure) {
    if failure.is_failure() {
        ForwardCounters::bump(&entry.counters.failed);
        if let Some(pass) = shared.log_throttle.allow("failed") {
            tracing::error!(%stream_id, forward_id = %entry.forward.id,
                target = %escape(&entry.forward.target.to_string()), cause = %failure,
                suppressed = pass.suppressed, "connection failed");
        }
    } else {
        // Refused on purpose, not failed: the agent closes the guest side.
        tracing::debug!("connection refused: {failure}");
    }
}

/// Relays a connected host socket and stream until both directions end
/// (`true`), or one fails (`false`).
async fn relay_connected(
    shared: &Shared,
    entry: &ForwardEntry,
    host: &Stream,
    stream: &Stream,
    framing: Framing,
) -> bool {
    tracing::debug!(?framing, "relaying");
    let config = &shared.config;
    let relay = RelayConfig {
        idle_timeout: entry
            .forward
            .options
            .idle_timeout(config.relay.idle_timeout),
        ..config.relay.clone()
    };
    match relay_stream(host, stream, framing, &relay).await {
        Ok(stats) => {
            // The host socket is the relay's first side: a to b is towards the guest.
            entry.counters.add_bytes(stats.a_to_b, stats.b_to_a);
            tracing::debug!(
                to_guest = stats.a_to_b,
                to_host = stats.b_to_a,
                "connection closed"
            );
            true
        }
        Err(e) => {
            tracing::debug!(cause = %Chain(&e), "connection ended on an error");
            false
        }
    }
}

async fn connect_and_relay(
    shared: &Shared,
    results: Results,
    entry: &ForwardEntry,
    req: &ConnectRequest,
) {
    let config = &shared.config;
    let counters = &entry.counters;
    let framing = choose(config.framing, &config.streams, req.framings);
    // The agent says its claim waits for a stream that comes after the result:
    // then the result goes out without waiting for the acknowledgement.
    let early = req.features & sockfwd_proto::features::EARLY_RESULT != 0;
    let Connected { host, mut stream } = match set_up(shared, entry, req, early).await {
        Ok(c) => c,
        Err(failure) => {
            note_failure(shared, entry, &req.stream_id, &failure);
            if let Err(e) = results
                .send(&req.stream_id, &failure.wire_text(), Framing::Raw)
                .await
            {
                tracing::debug!(cause = %Chain(&e), "could not send the failure to the agent");
            }
            return;
        }
    };
    if let Err(e) = results.send(&req.stream_id, "", framing).await {
        ForwardCounters::bump(&counters.failed);
        tracing::error!(stream_id = %req.stream_id, forward_id = %entry.forward.id,
            cause = %Chain(&e), "connection failed: could not send its result to the agent");
        return;
    }
    drop(results);
    if early {
        if let Err(e) =
            handshake::await_ack(&mut stream, &req.stream_id, config.stream_timeout).await
        {
            // The agent refused the stream after our result: its claim gives up at
            // its deadline and closes the guest connection.
            ForwardCounters::bump(&counters.failed);
            tracing::error!(stream_id = %req.stream_id, forward_id = %entry.forward.id,
                cause = %Chain(&e), "connection failed: the agent refused the stream");
            return;
        }
    }
    relay_connected(shared, entry, &host, &stream, framing).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockfwd_proto::log_text::LOG_TEXT_MAX;
    use sockfwd_proto::tcp_dial::TcpDialError;
    use sockfwd_proto::transport::{Address, DialError};
    use std::time::Duration;

    #[test]
    fn failures_in_words_for_the_guest_and_the_log() {
        let dial = DialError::Timeout {
            addr: Address::Unix("/h.sock".into()),
            after: Duration::from_secs(5),
        };
        let cases = [
            (
                Failure::BadStreamId(StreamIdError::Empty),
                "invalid stream ID",
                "invalid stream ID: empty stream ID",
            ),
            (
                Failure::ShuttingDown,
                "relay shutting down",
                "relay shutting down",
            ),
            (
                Failure::UnknownForward("nope\n".into()),
                "unknown forward ID: nope\\n",
                "unknown forward ID: nope\\n",
            ),
            (
                Failure::Capped(Refusal::TotalRate),
                "rate limit reached",
                "rate limit reached (total)",
            ),
            (
                Failure::HostUnreachable(TargetDialError::Unix(dial)),
                "failed to dial host socket",
                "failed to dial host socket: connecting to unix:///h.sock: timed out after 5s",
            ),
            (
                Failure::HostUnreachable(TargetDialError::Tcp {
                    target: "localhost:5432".into(),
                    source: TcpDialError::Refused("127.0.0.1:5432".parse().unwrap()),
                }),
                "failed to dial host socket",
                "failed to dial host socket: connecting to localhost:5432: connection refused by 127.0.0.1:5432",
            ),
            (
                Failure::Stream(StreamError::Timeout(Duration::from_secs(5))),
                "opening the stream timed out after 5s",
                "opening the stream timed out after 5s",
            ),
        ];
        for (failure, wire, log) in cases {
            assert_eq!(failure.wire_text(), wire);
            assert_eq!(failure.to_string(), log);
        }
        let long = Failure::UnknownForward("x".repeat(LOG_TEXT_MAX + 1)).wire_text();
        assert!(long.ends_with("...(1 more bytes)"), "{long}");
    }
}
