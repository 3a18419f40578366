//! Control connections: each one gets its own ttrpc server.
//!
//! ttrpc's `TtrpcContext` says nothing about which connection a call came on, so
//! every control connection gets a ttrpc `Server` of its own, fed by a listener
//! that yields just that connection, with a [`Service`] that knows the
//! connection's ID: that is how a Bind's forwards get their owner, and how an
//! Accept stream is tied to its connection.
//!
//! The end of a connection is seen by `WatchedSocket`, which fires on EOF, a
//! socket error, or drop: ttrpc stops reading then, but keeps its writer (and
//! the socket) alive while any Accept handler holds a sender, so waiting for
//! the drop alone would wait forever. The connection's token then ends its
//! Accept handlers, and its requests in flight go back to waiting.
//!
//! Once ttrpc's teardown is over (or timed out) the socket is shut down through
//! a duplicate descriptor, so a writer blocked on a host that stopped reading
//! cannot keep it open.
//!
//! What a connection may hold is bounded (see [`crate::control_caps`]): the
//! socket is read through a [`Gate`] keeping its books, and its streaming
//! calls are wrapped by [`cap_streams`]. A connection the agent accepted must
//! send its first request within `--first-frame-timeout` (after that it may
//! stay idle), and at most `--max-control-conns` are served at once.
//!
//! With `--control-dial` the agent dials the host instead and serves ttrpc on
//! that one connection, redialing with backoff (capped at 1 s) until shutdown.

use crate::control::capped::cap_streams;
use crate::control::gate::Gate;
use crate::control::service::Service;
use crate::control_caps::{Books, Caps};
use crate::state::AgentState;
use futures::StreamExt as _;
use sockfwd_proto::backoff::Backoff;
use sockfwd_proto::report::Chain;
use sockfwd_proto::rpc::create_socket_forward;
use sockfwd_proto::transport::{dial as dial_host, Address, Listener, Stream};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Deadline of one dial attempt to the host.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on ttrpc's own teardown of a connection's server.
const SERVER_SHUTDOWN: Duration = Duration::from_secs(2);

/// Accepts control connections until shutdown. One refused (another CID, or
/// past `--max-control-conns`) is closed before anything is spawned for it.
pub async fn listen(state: Arc<AgentState>, listener: Listener) {
    let slots = Arc::new(Semaphore::new(state.config.max_control_conns));
    let deadline = Some(state.config.first_frame_timeout);
    state
        .serve_host_port("control", listener, |state, stream| {
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refuse_connection(&state);
                return None;
            };
            let serve = serve_connection(state, stream, deadline);
            Some(async move {
                serve.await;
                drop(slot);
            })
        })
        .await;
}

/// Dials the host and serves each connection, redialing until shutdown.
pub async fn dial(state: Arc<AgentState>, addr: Address) {
    let stop = state.shutdown.stop.clone();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut quiet = false;
    loop {
        let dialed = tokio::select! {
            () = stop.cancelled() => return,
            r = dial_host(&addr, DIAL_TIMEOUT) => r,
        };
        match dialed {
            Ok(stream) => {
                tracing::info!(%addr, "control connection to the host open");
                backoff.reset();
                quiet = false;
                // The agent's own connection: no first-request deadline (a
                // host may take its time to start using it).
                serve_connection(state.clone(), stream, None).await;
            }
            // Said once per outage: a host that is not up yet is normal at boot.
            Err(err) if !quiet => {
                tracing::warn!(%addr, cause = %Chain(&err), "cannot reach the host; retrying");
                quiet = true;
            }
            Err(err) => {
                tracing::debug!(%addr, cause = %Chain(&err), "cannot reach the host; retrying");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Logs (throttled) and counts a connection closed at `--max-control-conns`.
fn refuse_connection(state: &AgentState) {
    let total = state
        .control_totals
        .refused_conns
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    if let Some(pass) = state.log_throttle.allow("control connection refused") {
        tracing::warn!(
            max = state.config.max_control_conns,
            refused_total = total,
            suppressed = pass.suppressed,
            "too many control connections (--max-control-conns); new one closed"
        );
    }
}

/// Waits out `deadline` for the connection's first request; returns only if
/// none came (never without a deadline, or once one came).
async fn silent_for(books: &Books, deadline: Option<Duration>) {
    let first = books.first_request().cancelled();
    match deadline {
        Some(d) if tokio::time::timeout(d, first).await.is_err() => {}
        _ => std::future::pending().await,
    }
}

/// Serves ttrpc on one control connection until it ends or shutdown step 4;
/// with a `first_request` deadline, until then if it sends no request.
async fn serve_connection(state: Arc<AgentState>, stream: Stream, first_request: Option<Duration>) {
    let conn = state.next_conn_id();
    // A second handle on the socket, to cut it once ttrpc has had its chance to
    // flush: its writer can otherwise stay blocked on a host that stopped
    // reading, holding the socket open for good. None if out of descriptors.
    let cut = stream.as_fd().try_clone_to_owned().ok();
    let ended = CancellationToken::new();
    let conn_token = state.shutdown.control.child_token();
    let socket = WatchedSocket {
        stream,
        ended: ended.clone(),
    };
    let c = &state.config;
    let caps = Caps {
        streaming: c.max_streaming_calls,
        streaming_total: c.max_streaming_calls_total,
        in_flight: c.max_requests_in_flight,
        in_flight_total: c.max_requests_in_flight_total,
    };
    let books = Books::new(
        caps,
        state.control_totals.clone(),
        state.log_throttle.clone(),
        conn,
    );
    let socket = Gate::new(socket, books.clone());
    let service = Service::new(state.clone(), conn, conn_token.clone());
    let mut services = create_socket_forward(Arc::new(service));
    cap_streams(&mut services, &books);
    // One send per ttrpc message (sockfwd_proto::control_io), above the gate so
    // that it counts a call answered once its last byte is on the socket. No
    // read buffer on top: the gate reads the socket through its own, so ttrpc
    // already gets header and payload from one recv.
    let socket = sockfwd_proto::control_io::MessageWriter::new(socket);
    let incoming = futures::stream::once(futures::future::ready(Ok::<_, io::Error>(socket)))
        .chain(futures::stream::pending());
    let mut server = ttrpc::r#async::Server::new()
        .register_service(services)
        .add_listener(ttrpc::r#async::transport::Listener::new(incoming));
    state.dispatcher.lock().open_conn(conn);
    tracing::info!(conn, "control connection open");
    match server.start().await {
        Ok(()) => {
            tokio::select! {
                () = ended.cancelled() => {}
                () = conn_token.cancelled() => {}
                () = silent_for(&books, first_request) => {
                    let total = state.control_totals.silent_closed.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some(pass) = state.log_throttle.allow("silent control connection") {
                        tracing::warn!(conn, timeout = ?first_request, silent_total = total,
                            suppressed = pass.suppressed,
                            "no request within --first-frame-timeout; control connection closed");
                    }
                }
            }
        }
        Err(err) => {
            tracing::error!(conn, cause = %Chain(&err), "cannot serve the control connection")
        }
    }
    conn_token.cancel();
    state.dispatcher.lock().close_conn(conn);
    state.pools.close_conn(conn);
    if tokio::time::timeout(SERVER_SHUTDOWN, server.shutdown())
        .await
        .is_err()
    {
        tracing::debug!(conn, "ttrpc server teardown timed out");
    }
    if let Some(fd) = cut {
        let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
    books.close();
    tracing::info!(conn, "control connection closed");
}

/// A control connection's socket that reports its end (EOF, error, drop).
struct WatchedSocket {
    stream: Stream,
    ended: CancellationToken,
}

impl AsyncRead for WatchedSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if asked && buf.filled().len() == before => self.ended.cancel(),
            Poll::Ready(Err(_)) => self.ended.cancel(),
            _ => {}
        }
        r
    }
}

impl AsyncWrite for WatchedSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Err(_)) = &r {
            self.ended.cancel();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Drop for WatchedSocket {
    fn drop(&mut self) {
        self.ended.cancel();
    }
}
