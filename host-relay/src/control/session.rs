//! One control session over one connection: ask the agent's `Info` (once; a
//! nerdbox guest without it is a core-only peer), Bind every forward the agent
//! can have (a guest TCP listener only when `Info` lists `tcp-listen`), learn
//! the TCP listeners' bound addresses (`ListForwards`: a new agent may give a
//! port-0 listener a new port) and print them, open one Accept stream, hand
//! each `ConnectRequest` to the remote-forward side (through
//! [`ConnectRequests`]), and check liveness with an empty Bind every ping
//! interval (a nerdbox guest answers it too). The session ends when the
//! channel dies or on shutdown; `channel` decides what comes next.
//!
//! While the session is ready, its client and the agent's `Info` are published
//! together (a [`Peer`] in `client`): local forwards, the remote forwards'
//! connections, the admin socket and auto-forward use it, ask it which
//! extensions the agent has, and see it withdrawn when the session ends.

use crate::config::Config;
use crate::control::connector::Connector;
use crate::local::listener_table::announce;
use crate::remote_table::{BindPlan, ForwardTable, NO_TCP_LISTEN};
use crate::rpc::{ask_info, call, context, CallError, Peer, Results};
use sockfwd_proto::info::AgentInfo;
use sockfwd_proto::log_text::{escape, escape_clipped};
use sockfwd_proto::log_throttle::LogThrottle;
use sockfwd_proto::report::Chain;
use sockfwd_proto::rpc::{BindRequest, ConnectRequest, ShutdownRequest, SocketForwardClient};
use sockfwd_proto::transport::Stream;
use std::future::Future;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use ttrpc::r#async::CSReceiver;

/// What a session does with each `ConnectRequest` (the remote-forward side).
pub(crate) trait ConnectRequests: Sync {
    /// Handles one request; answers go out on `results`. Returns once the
    /// request is refused or handed to its own task.
    fn handle(&self, req: ConnectRequest, results: &Results) -> impl Future<Output = ()> + Send;

    /// Between the session's `Info` and its `Bind`: asks for the session's
    /// pre-opened streams (the `StreamPool` call, when the agent of `info`
    /// has it), to be opened once `ready` is cancelled (the session is
    /// ready) and closed once `ended` is. A pool the agent refuses only means
    /// none: the session goes on.
    fn open_pool(
        &self,
        client: &SocketForwardClient,
        info: &AgentInfo,
        ready: &CancellationToken,
        ended: &CancellationToken,
    ) -> impl Future<Output = ()> + Send;
}

/// What a session uses of the relay's state.
pub(crate) struct SessionParts<'a> {
    /// The settings.
    pub(crate) config: &'a Config,
    /// The forwards to bind.
    pub(crate) table: &'a ForwardTable,
    /// Cancelled on SIGTERM/SIGINT.
    pub(crate) shutdown: &'a CancellationToken,
    /// Where the ready session's agent is published.
    pub(crate) client: &'a watch::Sender<Option<Peer>>,
    /// Throttles per-request log lines.
    pub(crate) throttle: &'a LogThrottle,
}

/// Why a session ended without our shutdown.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The agent failed its `Info` call (other than by not having it).
    #[error("asking the agent's capabilities (Info)")]
    Info(#[source] CallError),
    /// The agent refused or failed to create the listeners.
    #[error("binding the forwards")]
    Bind(#[source] CallError),
    /// The agent refused one forward's listener, named in its answer (the
    /// contract's `binding socket forward listener at <place>: <cause>`); the
    /// agent's Bind created none of them.
    #[error("binding forward {forward}")]
    BindForward {
        /// The forward's ID (quoted) and, in brackets, where it listens and
        /// what it reaches, as an `-R` spec writes it.
        forward: String,
        /// The agent's answer (boxed: it keeps the error small).
        #[source]
        source: Box<CallError>,
    },
    /// The agent did not list its forwards after Bind (the guest TCP
    /// listeners' addresses).
    #[error("listing the forwards' bound addresses (ListForwards)")]
    List(#[source] CallError),
    /// The Accept stream could not be opened.
    #[error("opening the Accept stream")]
    OpenAccept(#[source] CallError),
    /// The Accept stream ended or failed.
    #[error("the Accept stream ended")]
    AcceptEnded(#[source] CallError),
    /// The liveness call failed.
    #[error("liveness check failed")]
    Ping(#[source] CallError),
}

impl SessionError {
    /// The agent answered Bind with an error: retrying the same request won't help.
    pub fn is_bind_refused(&self) -> bool {
        match self {
            SessionError::Bind(e) => matches!(e, CallError::Status { .. }),
            SessionError::BindForward { source, .. } => {
                matches!(**source, CallError::Status { .. })
            }
            _ => false,
        }
    }
}

/// How a session ended.
pub(crate) enum SessionEnd {
    /// Our shutdown token fired.
    Shutdown,
    /// The control channel is unusable.
    Lost(SessionError),
}

/// Listen mode: keeps the agent's newest extra connection for when this session
/// ends. It does not replace a working session at once: a probe that connects
/// and leaves must not cost the agent its session, and a dead one is found by
/// the liveness call within a ping interval.
fn hold(waiting: &mut Option<Stream>, s: Stream) {
    if waiting.replace(s).is_some() {
        tracing::debug!("a newer control connection replaces the waiting one");
    }
    tracing::info!("another control connection is waiting; it takes over if this session ends");
}

/// Shuts the control socket down (both ways) when the session ends. ttrpc keeps a
/// dropped client's connection while its writer is blocked on a peer that does
/// not read, and keeps reading from it; shutting the socket itself down ends
/// both. A duplicate descriptor keeps the number from being reused meanwhile.
struct ShutdownOnDrop(Option<OwnedFd>);

impl ShutdownOnDrop {
    fn new(stream: &Stream) -> ShutdownOnDrop {
        ShutdownOnDrop(stream.as_fd().try_clone_to_owned().ok())
    }
}

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        if let Some(fd) = &self.0 {
            // Already shut down or disconnected: nothing left to do.
            let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
    }
}

/// Withdraws the session's client when the session ends.
struct Unpublish<'a>(&'a watch::Sender<Option<Peer>>);

impl Drop for Unpublish<'_> {
    fn drop(&mut self) {
        self.0.send_replace(None);
    }
}

/// Runs one session on `stream`. `ready` is set (and seen at once by the boot
/// progress lines) once Bind succeeded and Accept is
/// open; `waiting` receives a connection the agent opened meanwhile (listen mode).
pub(crate) async fn run(
    parts: &SessionParts<'_>,
    stream: Stream,
    connector: &Connector,
    requests: &impl ConnectRequests,
    ready: &AtomicBool,
    waiting: &mut Option<Stream>,
) -> SessionEnd {
    let config = parts.config;
    let _close = ShutdownOnDrop::new(&stream);
    let client = ttrpc::r#async::Client::new(sockfwd_proto::control_io::socket(stream));
    let client = SocketForwardClient::new(client);
    let limit = config.bind_timeout;

    // Cancelled however the session ends: its pre-opened streams go with it.
    let ended = CancellationToken::new();
    let _ended = ended.clone().drop_guard();
    // Cancelled once the session is ready: its pre-opened streams are opened
    // then, not while the Bind needs the agent's descriptors.
    let serving = CancellationToken::new();
    let opened = async {
        let info = ask_info(&client, limit).await.map_err(SessionError::Info)?;
        // With what Info said, before the Bind: the session's calls go one
        // after another (Info, StreamPool, Bind, ListForwards, Accept).
        requests.open_pool(&client, &info, &serving, &ended).await;
        // What goes into the Bind depends on what the agent said it supports.
        bind(parts, &client, &info).await?;
        // No deadline on the stream itself: it lives as long as the session.
        let accept = call(limit, client.accept(ttrpc::context::Context::default()))
            .await
            .map_err(SessionError::OpenAccept)?;
        Ok((info, accept))
    };
    tokio::pin!(opened);
    let (info, accept) = loop {
        tokio::select! {
            () = parts.shutdown.cancelled() => return SessionEnd::Shutdown,
            s = connector.incoming() => hold(waiting, s),
            r = &mut opened => match r {
                Ok(a) => break a,
                Err(e) => return SessionEnd::Lost(e),
            },
        }
    };
    let (sender, receiver) = accept.split();
    let results = Results::new(sender, limit);
    ready.store(true, Ordering::Relaxed);
    // Local forwards, auto-forward and the admin socket use this session now.
    parts.client.send_replace(Some(Peer {
        client: client.clone(),
        info: std::sync::Arc::new(info),
    }));
    let _unpublish = Unpublish(parts.client);
    serving.cancel();
    tracing::info!(
        forwards = parts.table.len(),
        control = %escape(&config.control.address().to_string()),
        streams = %escape(&config.streams.to_string()),
        "relay ready"
    );

    let ping = liveness(&client, config.ping_interval);
    let reading = accept_loop(parts, requests, receiver, &results);
    tokio::pin!(ping, reading);
    let end = loop {
        tokio::select! {
            () = parts.shutdown.cancelled() => break SessionEnd::Shutdown,
            e = &mut ping => break SessionEnd::Lost(SessionError::Ping(e)),
            e = &mut reading => break SessionEnd::Lost(e),
            s = connector.incoming() => hold(waiting, s),
        }
    };
    if matches!(end, SessionEnd::Shutdown) && config.shutdown_agent {
        shutdown_agent(&client, config.shutdown_grace, limit).await;
    }
    end
}

/// Binds every forward the agent of `info` can have, then learns (and
/// prints) the bound addresses of the guest TCP listeners. Those an agent
/// without `tcp-listen` cannot have are refused here, each logged with its
/// spec; the rest are bound as before.
async fn bind(
    parts: &SessionParts<'_>,
    client: &SocketForwardClient,
    info: &AgentInfo,
) -> Result<(), SessionError> {
    let limit = parts.config.bind_timeout;
    let BindPlan {
        request,
        no_tcp_listen,
    } = parts.table.bind_plan(info);
    for e in &no_tcp_listen {
        tracing::error!(forward_id = %e.forward.id, spec = %escape(&e.forward.spec_text()),
            "-R {}: {NO_TCP_LISTEN}; the other forwards are bound", escape(&e.forward.spec_text()));
    }
    if let Err(e) = call(limit, client.bind(context(limit), &request)).await {
        return Err(bind_error(parts.table, &request, e));
    }
    let changed = parts
        .table
        .learn_bound(client, info, limit)
        .await
        .map_err(SessionError::List)?;
    for e in changed {
        let line = e.remote_line();
        announce(&line);
        tracing::info!(forward_id = %e.forward.id, "{}", escape_clipped(&line, 512));
    }
    Ok(())
}

/// A failed Bind, naming the forward the agent's answer names (the
/// contract's error text gives its path or address) when there is one.
fn bind_error(table: &ForwardTable, request: &BindRequest, e: CallError) -> SessionError {
    let CallError::Status { message, .. } = &e else {
        return SessionError::Bind(e);
    };
    let named = request.sockets.iter().find(|s| {
        let place = if s.tcp_listen.is_empty() {
            &s.socket_path
        } else {
            &s.tcp_listen
        };
        message.contains(&format!("listener at {place}: "))
    });
    match named.and_then(|s| table.get(&s.forward_id)) {
        Some(entry) => SessionError::BindForward {
            forward: format!("{:?} ({})", entry.forward.id, entry.forward.spec_text()),
            source: Box::new(e),
        },
        None => SessionError::Bind(e),
    }
}

/// Calls an empty Bind every `interval` (deadline: the same), until one fails.
async fn liveness(client: &SocketForwardClient, interval: Duration) -> CallError {
    let mut tick = interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let empty = BindRequest::new();
    loop {
        tick.tick().await;
        let ping = client.bind(context(interval), &empty);
        if let Err(e) = call(interval, ping).await {
            return e;
        }
        tracing::trace!("agent answered the liveness call");
    }
}

/// The one place ttrpc tells a bad message apart from a dead stream: its decode
/// error text (ttrpc 0.9 `CSReceiver::recv`).
fn is_decode_error(e: &ttrpc::Error) -> bool {
    matches!(e, ttrpc::Error::Others(m) if m.starts_with("Decode message failed"))
}

/// Reads requests until the Accept stream ends.
async fn accept_loop(
    parts: &SessionParts<'_>,
    requests: &impl ConnectRequests,
    mut receiver: CSReceiver<ConnectRequest>,
    results: &Results,
) -> SessionError {
    loop {
        match receiver.recv().await {
            Ok(req) => requests.handle(req, results).await,
            // One garbled message is the agent's bug, not a dead channel.
            Err(e) if is_decode_error(&e) => {
                if let Some(pass) = parts.throttle.allow("undecodable request") {
                    tracing::warn!(cause = %Chain(&e), suppressed = pass.suppressed,
                        "ignoring an undecodable ConnectRequest");
                }
            }
            Err(e) => return SessionError::AcceptEnded(CallError::from(e)),
        }
    }
}

/// Asks the agent to close its listeners, letting its relays run for `grace`.
async fn shutdown_agent(client: &SocketForwardClient, grace: Duration, limit: Duration) {
    let mut req = ShutdownRequest::new();
    req.grace_period_ms = u32::try_from(grace.as_millis()).unwrap_or(u32::MAX);
    match call(limit, client.shutdown(context(limit), &req)).await {
        Ok(_) => tracing::info!("agent shut down its listeners"),
        Err(e) if e.is_unsupported() => {
            tracing::info!(cause = %Chain(&e), "the agent does not support Shutdown; leaving it running");
        }
        Err(e) => tracing::warn!(cause = %Chain(&e), "Shutdown call to the agent failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_guard_shuts_the_socket_while_others_still_hold_it() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let held = Stream::from_unix(a).unwrap();
        let peer = Stream::from_unix(b).unwrap();
        drop(ShutdownOnDrop::new(&held));
        let mut buf = [0u8; 1];
        assert_eq!(peer.read(&mut buf).await.unwrap(), 0, "the peer sees EOF");
        assert!(held.write_all(b"x").await.is_err(), "writes fail too");
    }
}
