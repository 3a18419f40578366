//! One pre-opened stream, from its opening to the end of its connection
//! (wire-protocol 8.11): open it with the full handshake, park it until the
//! agent writes a header (or it idles out, or the session ends), then serve
//! the connection the header names as a `ConnectRequest` would be: the
//! forward from our own table only, the same caps, the dial of its target,
//! and the answer in-band (the verdict) before the relay. [`Pool`] is what
//! the streams of one session share; `super::pool` keeps it filled.

use super::{admit, dial_target, note_failure, note_refusal, relay_connected, Failure};
use crate::shared::{PoolGauge, Shared};
use crate::streams::{open_stream, StreamError};
use sockfwd_proto::counters::ForwardCounters;
use sockfwd_proto::framing::Framing;
use sockfwd_proto::handshake::HandshakeError;
use sockfwd_proto::log_text::escape;
use sockfwd_proto::report::Chain;
use sockfwd_proto::stream_pool::{self, read_header, write_verdict, PoolWireError};
use sockfwd_proto::transport::Stream;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Error text for a header whose forward ID breaks the forward-ID rule.
const BAD_FORWARD_ID: &str = "invalid forward ID";
/// First pause before refilling after a failed open; it doubles per failure.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause before refilling after failed opens.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// One session's pool, shared by its streams.
pub(super) struct Pool {
    /// Names the pool: stream IDs are `<token>-<n>`.
    token: String,
    /// The framing of every pooled stream.
    pub(super) framing: Framing,
    /// Most streams parked at once (what the agent granted).
    max: usize,
    next: AtomicU64,
    /// Streams opening or parked.
    live: AtomicUsize,
    /// Opens that failed since the last one that worked.
    failures: AtomicU32,
    wanted: Notify,
    /// Cancelled when the session ends: parked streams close.
    ended: CancellationToken,
    /// Where `status` reads the streams open (of every pool) and the size.
    pub(super) gauge: Arc<PoolGauge>,
}

impl Pool {
    /// A pool of at most `max` streams named by `token`, for the session
    /// that `ended` follows.
    pub(super) fn new(
        token: String,
        framing: Framing,
        max: usize,
        ended: CancellationToken,
        gauge: Arc<PoolGauge>,
    ) -> Pool {
        Pool {
            token,
            framing,
            max,
            next: AtomicU64::new(1),
            live: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            wanted: Notify::new(),
            ended,
            gauge,
        }
    }

    /// Most streams open at once: what the agent granted.
    pub(super) fn size(&self) -> usize {
        self.max
    }

    /// Fill up again (demand).
    pub(super) fn want_more(&self) {
        self.wanted.notify_one();
    }

    /// Waits for demand.
    pub(super) async fn wanted(&self) {
        self.wanted.notified().await;
    }

    /// The pause before the next refill, after the failed opens so far.
    pub(super) fn retry_pause(&self) -> Duration {
        match self.failures.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            n => RETRY_MIN
                .saturating_mul(1 << n.min(16).saturating_sub(1))
                .min(RETRY_MAX),
        }
    }

    /// Opens streams (each parked in its own task) until `max` are live.
    pub(super) fn fill(self: &Arc<Pool>, shared: &Arc<Shared>) {
        while self.live.load(Ordering::Relaxed) < self.max {
            self.live.fetch_add(1, Ordering::Relaxed);
            self.gauge.open.fetch_add(1, Ordering::Relaxed);
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let live = Live(Arc::clone(self));
            shared.tracker.spawn(park(Arc::clone(shared), live, n));
        }
    }

    /// An open failed (`false`) or worked (`true`): the refill backs off or not.
    fn opened(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counts a stream as live (opening or parked) until dropped.
struct Live(Arc<Pool>);

impl Live {
    fn pool(&self) -> &Arc<Pool> {
        &self.0
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Opens pooled stream number `n`, parks it, and serves what comes of it:
/// in EOF frames, one connection after another while each ends cleanly.
async fn park(shared: Arc<Shared>, live: Live, n: u64) {
    let id = stream_pool::stream_id(&live.pool().token, n);
    let span = tracing::debug_span!("pooled", stream_id = %id);
    async move {
        let pool = Arc::clone(live.pool());
        let Some(stream) = open(&shared, &pool, &id).await else {
            return;
        };
        // Raw streams end with a shutdown: one connection each, counted in
        // the pool until taken. In EOF frames a connection ends with both end
        // frames and the stream stays open for the next one: it counts for
        // as long as it lives, so the pool never holds more than its size
        // (more would only be refused by the agent, or churn).
        let reusable = pool.framing == Framing::EofFrames;
        let mut live = Some(live);
        let mut served = false;
        loop {
            let forward_id = match wait_for_header(&shared, &pool, &stream).await {
                Ok(forward_id) => forward_id,
                Err(Unparked::Idle | Unparked::Ended) => return,
                Err(Unparked::Closed) => {
                    // The agent dropped its end: after a connection whose guest
                    // side failed, it does not park the stream again. Its place
                    // in the agent's pool is free, so this one is replaced now
                    // rather than at the next demand. A stream dropped before
                    // it carried anything counts as a failed open, so an agent
                    // that drops every stream meets the refill's backoff, not
                    // a loop of opens.
                    if !served {
                        pool.opened(false);
                    }
                    if live.take().is_some() {
                        pool.want_more();
                    }
                    return;
                }
            };
            served = true;
            if !reusable {
                // Taken for good: the pool opens its replacement.
                drop(live.take());
                pool.want_more();
            }
            let span = tracing::debug_span!("connection", forward_id = %escape(&forward_id));
            let clean = tokio::select! {
                c = serve(&shared, &stream, &id, &forward_id, pool.framing).instrument(span) => c,
                () = shared.hard_stop.cancelled() => {
                    tracing::debug!("connection cut at the end of the shutdown grace");
                    false
                }
            };
            if !(reusable && clean) || pool.ended.is_cancelled() || shared.shutdown.is_cancelled() {
                if live.take().is_some() {
                    // A stream of the pool closed: it may be replaced.
                    pool.want_more();
                }
                return;
            }
            tracing::debug!("parked again for the next connection");
        }
    }
    .instrument(span)
    .await;
}

/// Opens the stream with the full handshake; `None` if that failed (said,
/// and the pool backs off) or the session ended meanwhile.
async fn open(shared: &Shared, pool: &Pool, id: &str) -> Option<Stream> {
    let config = &shared.config;
    let opened = tokio::select! {
        r = open_stream(&config.streams, id, config.stream_timeout, false) => r,
        () = pool.ended.cancelled() => return None,
    };
    match opened {
        Ok(s) => {
            pool.opened(true);
            Some(s)
        }
        Err(e) => {
            pool.opened(false);
            if is_full(&e) {
                // The agent holds all it will: not a fault.
                tracing::debug!("the agent's stream pool is full");
            } else if let Some(pass) = shared.log_throttle.allow("pool open") {
                tracing::warn!(cause = %Chain(&e), suppressed = pass.suppressed,
                    "could not open a pre-opened stream; connections ask with a ConnectRequest meanwhile");
            }
            None
        }
    }
}

/// Whether the agent refused a stream because its pool is full.
fn is_full(e: &StreamError) -> bool {
    matches!(e, StreamError::Handshake(HandshakeError::Refused(text)) if text == stream_pool::POOL_FULL)
}

/// Why a parked stream ended without a header.
enum Unparked {
    /// Unused for `--stream-pool-idle`: the pool shrinks until the next demand.
    Idle,
    /// Its session or the relay ended.
    Ended,
    /// The agent closed it, or sent a header we refuse.
    Closed,
}

/// Waits, parked, for the agent's header: the forward ID it names, or why
/// the stream ended without one.
async fn wait_for_header(
    shared: &Shared,
    pool: &Pool,
    stream: &Stream,
) -> Result<String, Unparked> {
    let config = &shared.config;
    tokio::select! {
        () = stream_pool::readable(stream) => {}
        () = tokio::time::sleep(config.stream_pool_idle) => {
            tracing::debug!(idle = ?config.stream_pool_idle, "pre-opened stream unused; closed");
            return Err(Unparked::Idle);
        }
        () = pool.ended.cancelled() => return Err(Unparked::Ended),
        () = shared.shutdown.cancelled() => return Err(Unparked::Ended),
    }
    match read_header(stream, config.stream_timeout).await {
        Ok(forward_id) => Ok(forward_id),
        // The agent's pool ended with its session, or the agent is shutting down.
        Err(PoolWireError::Closed)
            if pool.ended.is_cancelled() || shared.shutdown.is_cancelled() =>
        {
            Err(Unparked::Ended)
        }
        Err(PoolWireError::Closed) => {
            tracing::debug!("parked stream closed by the agent");
            Err(Unparked::Closed)
        }
        Err(PoolWireError::ForwardId(e)) => {
            if let Some(pass) = shared.log_throttle.allow("refused") {
                tracing::warn!(cause = %Chain(&e), suppressed = pass.suppressed, "connection refused");
            }
            let _ = write_verdict(stream, BAD_FORWARD_ID, config.stream_timeout).await;
            Err(Unparked::Closed)
        }
        Err(e) => {
            if let Some(pass) = shared.log_throttle.allow("bad header") {
                tracing::warn!(cause = %Chain(&e), suppressed = pass.suppressed,
                    "unusable header on a pre-opened stream; closed");
            }
            Err(Unparked::Closed)
        }
    }
}

/// The connection the header named: admitted, dialed and answered, then
/// relayed. `true` when it ended cleanly, both directions to their end.
async fn serve(
    shared: &Shared,
    stream: &Stream,
    id: &str,
    forward_id: &str,
    framing: Framing,
) -> bool {
    let limit = shared.config.stream_timeout;
    let (entry, permit) = match admit(shared, id, forward_id) {
        Ok(admitted) => admitted,
        Err(failure) => {
            note_refusal(shared, id, forward_id, &failure);
            refuse(stream, &failure, limit).await;
            return false;
        }
    };
    let host = match dial_target(&entry.forward.target, shared.config.dial_timeout).await {
        Ok(host) if !shared.shutdown.is_cancelled() => host,
        Ok(_) => {
            refuse(stream, &Failure::ShuttingDown, limit).await;
            return false;
        }
        Err(e) => {
            let failure = Failure::HostUnreachable(e);
            note_failure(shared, &entry, id, &failure);
            refuse(stream, &failure, limit).await;
            return false;
        }
    };
    if let Err(e) = write_verdict(stream, "", limit).await {
        ForwardCounters::bump(&entry.counters.failed);
        if let Some(pass) = shared.log_throttle.allow("failed") {
            tracing::error!(stream_id = %id, forward_id = %entry.forward.id, cause = %Chain(&e),
                suppressed = pass.suppressed, "connection failed: could not answer the agent");
        }
        return false;
    }
    let clean = relay_connected(shared, &entry, &host, stream, framing).await;
    drop(permit);
    clean
}

/// Answers the header with `failure`'s text; the stream closes after it.
async fn refuse(stream: &Stream, failure: &Failure, limit: Duration) {
    if let Err(e) = write_verdict(stream, &failure.wire_text(), limit).await {
        tracing::debug!(cause = %Chain(&e), "could not send the refusal to the agent");
    }
}
