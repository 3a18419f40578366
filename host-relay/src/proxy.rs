//! Host listeners whose connections reach the guest (`-L`, the library's
//! [`Guest::forward`]), in the shape of Sprites' proxy API: a
//! [`ProxySession`] per mapping with its bound address, `close()` and an
//! awaitable end; [`Guest::forward_all`] binds several, all or nothing; a
//! [`ProxyManager`] closes or awaits many together.
//!
//! Each accepted connection gets a task: open a stream to the target
//! ([`Guest`]), then relay until both directions end. When the stream cannot
//! be opened or the agent refuses the target, the host connection is closed at
//! once. Closing a session stops its listener (a Unix socket file is removed);
//! connections already open run to their end.

use crate::forwards::{CounterSnapshot, ForwardCounters};
use crate::guest::{Guest, ProxyError};
use crate::local::{Listen, LocalSpec};
use crate::report::chain;
use sockfwd_proto::relay::relay_stream;
use sockfwd_proto::transport::{Address, Listener, ListenerError, Stream};
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Pause after a failed accept (out of descriptors) before the next one.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// The address a session listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAddr {
    /// A TCP address, with the port the OS chose for port 0.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Tcp(a) => write!(f, "{a}"),
            LocalAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(Listener),
}

impl Bound {
    async fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Bound::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Stream::from_fd(OwnedFd::from(s.into_std()?))
            }
            Bound::Unix(l) => Ok(l.accept().await?.0),
        }
    }
}

fn bind(spec: &LocalSpec) -> std::io::Result<(Bound, LocalAddr)> {
    match &spec.listen {
        Listen::Tcp(addr) => {
            let std = std::net::TcpListener::bind(addr)?;
            std.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(std)?;
            let local = l.local_addr()?;
            Ok((Bound::Tcp(l), LocalAddr::Tcp(local)))
        }
        Listen::Unix(path) => {
            let l = Listener::bind(&Address::Unix(path.clone())).map_err(|e| match e {
                ListenerError::Bind { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            })?;
            Ok((Bound::Unix(l), LocalAddr::Unix(path.clone())))
        }
    }
}

/// One host listener forwarding to a guest target; see the module docs.
/// Dropping it closes it too.
pub struct ProxySession {
    spec: LocalSpec,
    local: LocalAddr,
    counters: Arc<ForwardCounters>,
    /// Cancelled by `close()` (or the guest handle's shutdown).
    stop: CancellationToken,
    /// Cancelled once the listener is gone.
    done: CancellationToken,
}

impl ProxySession {
    /// The bound local address (the real port when the spec asked for 0).
    pub fn local_addr(&self) -> &LocalAddr {
        &self.local
    }

    /// The mapping this session serves.
    pub fn spec(&self) -> &LocalSpec {
        &self.spec
    }

    /// Its counters: connections and bytes (bytes of finished connections).
    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// Stops accepting and closes the listener (a Unix socket file is
    /// removed); open connections run to their end. Idempotent.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Resolves once the listener is closed, by [`close`](Self::close) or the
    /// guest handle's shutdown.
    pub async fn closed(&self) {
        self.done.cancelled().await;
    }

    /// Whether the listener is closed.
    pub fn is_closed(&self) -> bool {
        self.done.is_cancelled()
    }
}

impl Drop for ProxySession {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl fmt::Debug for ProxySession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxySession({} -> {})", self.local, self.spec.remote)
    }
}

impl Guest {
    /// Binds a host listener for `spec` (an `-L` spec, see [`crate::local`])
    /// and forwards each connection to the guest target.
    pub async fn forward(&self, spec: &str) -> Result<ProxySession, ProxyError> {
        let mut v = self.forward_all(&[spec]).await?;
        v.pop().ok_or(ProxyError::Spec {
            spec: spec.to_owned(),
            source: crate::local::LocalSpecError::Shape,
        })
    }

    /// Binds every listener, or none: if one spec is malformed or cannot be
    /// bound, the listeners already bound are closed and the error names the
    /// spec. Sessions come back in the order of `specs`.
    pub async fn forward_all(&self, specs: &[&str]) -> Result<Vec<ProxySession>, ProxyError> {
        let parsed = specs
            .iter()
            .map(|s| {
                s.parse::<LocalSpec>().map_err(|source| ProxyError::Spec {
                    spec: (*s).to_owned(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.forward_specs(&parsed, specs)
    }

    /// [`forward_all`](Self::forward_all) for parsed specs; `names` are how
    /// errors name them.
    pub(crate) fn forward_specs(
        &self,
        specs: &[LocalSpec],
        names: &[&str],
    ) -> Result<Vec<ProxySession>, ProxyError> {
        let mut bound = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            match bind(spec) {
                Ok(b) => bound.push(b),
                Err(source) => {
                    // Dropping what was bound closes it (and unlinks Unix sockets).
                    drop(bound);
                    return Err(ProxyError::Listen {
                        spec: names
                            .get(i)
                            .map_or_else(|| spec.to_string(), |s| (*s).to_owned()),
                        listen: spec.listen.to_string(),
                        source,
                    });
                }
            }
        }
        Ok(specs
            .iter()
            .zip(bound)
            .map(|(spec, (l, local))| self.serve(spec.clone(), l, local))
            .collect())
    }

    /// Binds `spec`, trying `spec`'s port first and then the next ones, up to
    /// `tries` ports; the session of the first that binds.
    pub(crate) fn forward_near(
        &self,
        spec: &LocalSpec,
        tries: u16,
    ) -> Result<ProxySession, ProxyError> {
        let Listen::Tcp(first) = spec.listen else {
            return self
                .forward_specs(std::slice::from_ref(spec), &[])
                .map(|mut v| v.remove(0));
        };
        let mut last = None;
        for port in (first.port()..=u16::MAX).take(usize::from(tries.max(1))) {
            let mut s = spec.clone();
            s.listen = Listen::Tcp(SocketAddr::new(first.ip(), port));
            match self.forward_specs(std::slice::from_ref(&s), &[]) {
                Ok(mut v) => return Ok(v.remove(0)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ProxyError::Spec {
            spec: spec.to_string(),
            source: crate::local::LocalSpecError::Shape,
        }))
    }

    fn serve(&self, spec: LocalSpec, listener: Bound, local: LocalAddr) -> ProxySession {
        let stop = self.tasks().stop.child_token();
        let done = CancellationToken::new();
        let counters = Arc::new(ForwardCounters::default());
        let session = ProxySession {
            spec: spec.clone(),
            local: local.clone(),
            counters: counters.clone(),
            stop: stop.clone(),
            done: done.clone(),
        };
        let guest = self.clone();
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    () = stop.cancelled() => break,
                    r = listener.accept() => r,
                };
                match conn {
                    Ok(conn) => {
                        counters.total.fetch_add(1, Ordering::Relaxed);
                        let span =
                            tracing::debug_span!("local", local = %local, target = %spec.remote);
                        let task =
                            connection(guest.clone(), spec.remote.target(), conn, counters.clone());
                        let tasks = guest.tasks();
                        let hard_stop = tasks.hard_stop.clone();
                        tasks.tracker.spawn(
                            async move {
                                tokio::select! {
                                    () = task => {}
                                    () = hard_stop.cancelled() => {}
                                }
                            }
                            .instrument(span),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(%local, cause = %e, "accepting a host connection failed");
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                    }
                }
            }
            drop(listener);
            tracing::info!(%local, "host listener closed");
            done.cancel();
        });
        session
    }
}

/// One host connection: open the guest side, then relay.
async fn connection(guest: Guest, target: String, conn: Stream, counters: Arc<ForwardCounters>) {
    let Some(_slot) = counters.active.try_acquire(0) else {
        return;
    };
    let framing = guest.framing();
    let stream = match guest.open_framed(&target, framing).await {
        Ok(s) => s,
        Err(e) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%target, cause = %chain(&e), "host connection closed: the guest side failed");
            return;
        }
    };
    match relay_stream(&conn, &stream, framing, &guest.options().relay).await {
        Ok(stats) => counters.add_bytes(stats),
        Err(e) => tracing::debug!(cause = %chain(&e), "connection ended on an error"),
    }
}

/// Many sessions closed or awaited together.
#[derive(Default)]
pub struct ProxyManager {
    sessions: Mutex<Vec<Arc<ProxySession>>>,
}

impl ProxyManager {
    /// An empty manager.
    pub fn new() -> ProxyManager {
        ProxyManager::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ProxySession>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a session; the manager keeps it open until `close_all`.
    pub fn add(&self, session: ProxySession) -> Arc<ProxySession> {
        let s = Arc::new(session);
        self.lock().push(s.clone());
        s
    }

    /// How many sessions it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every session.
    pub fn close_all(&self) {
        for s in self.lock().iter() {
            s.close();
        }
    }

    /// Resolves once every session is closed.
    pub async fn wait_all(&self) {
        let all: Vec<_> = self.lock().clone();
        for s in all {
            s.closed().await;
        }
    }
}
