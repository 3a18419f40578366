//! The pre-opened streams of one control session (wire-protocol 8.11).
//!
//! With an agent that lists `stream-pool`, the relay asks for a pool right
//! after the session's `Info` and before its `Bind` (`StreamPool`: a fresh
//! token, the framing, `--stream-pool`), and once the session is ready keeps
//! up to what the agent granted open and handshaken, each parked in its own
//! task until the agent names a forward on it ([`super::pooled`]). Not
//! before: streams opened while the agent runs the Bind would compete with
//! it for the agent's descriptors, and a Bind that fails for want of one
//! fails the session.
//!
//! The pool refills on demand only: when a parked stream is taken, and when a
//! `ConnectRequest` shows that the agent found none. A stream unused for
//! `--stream-pool-idle` is closed and not replaced until connections come
//! again, so an idle guest holds none and the pool never churns on its own
//! (each stream is a host-initiated connection: the expensive kind, and on
//! vhost-device-vsock 0.3.0 a step of its port counter). Failed opens back
//! off. When the session ends, every parked stream is closed (the agent drops
//! its side with the control connection too); taken ones run to their end.

use super::pooled::Pool;
use crate::framing::choose;
use crate::rpc::{call, context};
use crate::shared::Shared;
use sockfwd_proto::framing::Framing;
use sockfwd_proto::info::{self, AgentInfo};
use sockfwd_proto::report::Chain;
use sockfwd_proto::rpc::{SocketForwardClient, StreamPoolRequest};
use sockfwd_proto::stream_pool;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use tokio_util::sync::CancellationToken;

/// The current session's pool, as the request path sees it.
#[derive(Default)]
pub(crate) struct Current(Mutex<Option<Arc<Pool>>>);

impl Current {
    /// Asks the current pool, if there is one, to fill up again.
    pub(crate) fn want_more(&self) {
        if let Some(pool) = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            pool.want_more();
        }
    }

    fn set(&self, pool: Arc<Pool>) {
        let mut current = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        pool.gauge.size.store(pool.size(), Ordering::Relaxed);
        *current = Some(pool);
    }

    /// Forgets `pool`, unless a later session's pool took its place already.
    fn clear(&self, pool: &Arc<Pool>) {
        let mut current = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, pool)) {
            pool.gauge.size.store(0, Ordering::Relaxed);
            *current = None;
        }
    }
}

/// Asks the agent (`agent`: its `Info`) for the session's pool, if the relay
/// keeps one and the agent supports it, and keeps it filled in a task of its
/// own from `ready` until `ended`.
pub(super) async fn open(
    shared: &Arc<Shared>,
    current: &Arc<Current>,
    client: &SocketForwardClient,
    agent: &AgentInfo,
    ready: &CancellationToken,
    ended: &CancellationToken,
) {
    if shared.config.stream_pool == 0 {
        return;
    }
    if !agent.supports(info::STREAM_POOL) {
        tracing::debug!(
            "the agent has no stream pool: every connection asks with a ConnectRequest"
        );
        return;
    }
    let Some(pool) = ask(shared, client, agent, ended).await else {
        return;
    };
    let task = run(
        Arc::clone(shared),
        Arc::clone(current),
        pool,
        ready.clone(),
        ended.clone(),
    );
    shared.tracker.spawn(task);
}

/// Keeps the granted pool filled on demand from `ready` until the session ends.
async fn run(
    shared: Arc<Shared>,
    current: Arc<Current>,
    pool: Arc<Pool>,
    ready: CancellationToken,
    ended: CancellationToken,
) {
    tokio::select! {
        () = ready.cancelled() => {}
        () = ended.cancelled() => return,
    }
    current.set(Arc::clone(&pool));
    pool.want_more();
    loop {
        tokio::select! {
            () = pool.wanted() => {}
            () = ended.cancelled() => break,
            () = shared.shutdown.cancelled() => break,
        }
        let pause = pool.retry_pause();
        if !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = ended.cancelled() => break,
                () = shared.shutdown.cancelled() => break,
            }
        }
        pool.fill(&shared);
    }
    current.clear(&pool);
    tracing::debug!("stream pool closed with its session");
}

/// The `StreamPool` call: the pool the agent granted, or `None`.
async fn ask(
    shared: &Shared,
    client: &SocketForwardClient,
    agent: &AgentInfo,
    ended: &CancellationToken,
) -> Option<Arc<Pool>> {
    let config = &shared.config;
    let offered = if agent.supports(info::EOF_FRAMING) {
        Framing::supported_bits()
    } else {
        0
    };
    let framing = choose(config.framing, &config.streams, offered);
    let mut req = StreamPoolRequest::new();
    req.token = stream_pool::generate_token();
    req.framing = framing.wire();
    req.max = u32::try_from(config.stream_pool).unwrap_or(u32::MAX);
    let limit = config.bind_timeout;
    let answer = tokio::select! {
        r = call(limit, client.stream_pool(context(limit), &req)) => r,
        () = ended.cancelled() => return None,
    };
    let granted = match answer {
        Ok(resp) => usize::try_from(resp.max)
            .unwrap_or(usize::MAX)
            .min(config.stream_pool),
        Err(e) => {
            tracing::warn!(cause = %Chain(&e),
                "the agent refused a stream pool: every connection asks with a ConnectRequest");
            return None;
        }
    };
    if granted == 0 {
        tracing::info!("the agent keeps no pre-opened streams (its --max-pooled-streams is 0)");
        return None;
    }
    tracing::info!(max = granted, ?framing, "stream pool started");
    Some(Arc::new(Pool::new(
        req.token,
        framing,
        granted,
        ended.clone(),
        Arc::clone(&shared.pool_gauge),
    )))
}
