//! Serving local forwards: binding host listeners (`-L`, the library's
//! [`Guest::forward`]) and, for each client, opening the guest side and
//! relaying.
//!
//! Each accepted client gets a task: open a stream to the target ([`Guest`]),
//! then relay until both directions end. When the stream cannot be opened or
//! the agent refuses the target, the client's connection is closed at once.
//! Closing a session stops its listener (a Unix socket file is removed);
//! connections already open run to their end. [`Guest::forward_all`] binds
//! several listeners, all or nothing.

use crate::local::forward::LocalForward;
use crate::local::guest_handle::{Guest, LocalForwardError};
use crate::local_spec::{LocalSpec, LocalSpecError};
use sockfwd_proto::accept::accept_next;
use sockfwd_proto::backoff::Backoff;
use sockfwd_proto::counters::ForwardCounters;
use sockfwd_proto::log_text::escape;
use sockfwd_proto::relay::{relay_stream, RelayConfig};
use sockfwd_proto::report::Chain;
use sockfwd_proto::spec_options::SpecOptions;
use sockfwd_proto::target::Target;
use sockfwd_proto::transport::{ClientListener, ListenAt, Stream};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

impl Guest {
    /// Binds a host listener for `spec` (an `-L` spec, see [`crate::local_spec`])
    /// and forwards each client to the guest target.
    pub async fn forward(&self, spec: &str) -> Result<LocalForward, LocalForwardError> {
        let mut v = self.forward_all(&[spec]).await?;
        v.pop().ok_or(LocalForwardError::Spec {
            spec: spec.to_owned(),
            source: LocalSpecError::Shape,
        })
    }

    /// Binds every listener, or none: if one spec is malformed or cannot be
    /// bound, the listeners already bound are closed and the error names the
    /// spec. The forwards come back in the order of `specs`.
    pub async fn forward_all(
        &self,
        specs: &[&str],
    ) -> Result<Vec<LocalForward>, LocalForwardError> {
        let parsed = specs
            .iter()
            .map(|s| {
                s.parse::<LocalSpec>()
                    .map_err(|source| LocalForwardError::Spec {
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
    ) -> Result<Vec<LocalForward>, LocalForwardError> {
        let mut bound = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            match ClientListener::bind(&spec.listen) {
                Ok(b) => bound.push(b),
                Err(source) => {
                    // Dropping what was bound closes it (and unlinks Unix sockets).
                    drop(bound);
                    return Err(LocalForwardError::Listen {
                        spec: names
                            .get(i)
                            .map_or_else(|| spec.to_string(), |s| (*s).to_owned()),
                        listen: spec.listen.clone(),
                        source,
                    });
                }
            }
        }
        Ok(specs
            .iter()
            .zip(bound)
            .map(|(spec, l)| self.serve(spec.clone(), l))
            .collect())
    }

    /// Binds `spec`, trying `spec`'s port first and then the next ones, up to
    /// `tries` ports; the local forward of the first that binds.
    pub(crate) fn forward_near(
        &self,
        spec: &LocalSpec,
        tries: u16,
    ) -> Result<LocalForward, LocalForwardError> {
        let ListenAt::Tcp(first) = spec.listen else {
            return self
                .forward_specs(std::slice::from_ref(spec), &[])
                .map(|mut v| v.remove(0));
        };
        let mut last = None;
        for port in (first.port()..=u16::MAX).take(usize::from(tries.max(1))) {
            let mut s = spec.clone();
            s.listen = ListenAt::Tcp(SocketAddr::new(first.ip(), port));
            match self.forward_specs(std::slice::from_ref(&s), &[]) {
                Ok(mut v) => return Ok(v.remove(0)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(LocalForwardError::Spec {
            spec: spec.to_string(),
            source: LocalSpecError::Shape,
        }))
    }

    /// Starts the accept loop of `listener` on the handle's tracker.
    fn serve(&self, spec: LocalSpec, listener: ClientListener) -> LocalForward {
        let stop = self.tasks().stop.child_token();
        let done = CancellationToken::new();
        let counters = Arc::new(ForwardCounters::default());
        let local = listener.at().clone();
        let forward = LocalForward::new(
            spec.clone(),
            local.clone(),
            counters.clone(),
            stop.clone(),
            done.clone(),
        );
        let guest = self.clone();
        self.tasks().tracker.spawn(async move {
            let mut backoff = Backoff::accept();
            while let Some(conn) = accept_next(&listener, &mut backoff, &stop).await {
                ForwardCounters::bump(&counters.total);
                let span = tracing::debug_span!("local", local = %escape(&local.to_string()),
                    target = %escape(&spec.remote.to_string()));
                let task = connection(
                    guest.clone(),
                    spec.remote.clone(),
                    spec.options,
                    conn,
                    counters.clone(),
                );
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
            drop(listener);
            tracing::info!(local = %escape(&local.to_string()), "host listener closed");
            done.cancel();
        });
        forward
    }
}

/// One client: open the guest side, then relay (with the spec's `options`).
async fn connection(
    guest: Guest,
    target: Target,
    options: SpecOptions,
    conn: Stream,
    counters: Arc<ForwardCounters>,
) {
    let _active = counters.active_guard();
    let relay = RelayConfig {
        idle_timeout: options.idle_timeout(guest.options().relay.idle_timeout),
        ..guest.options().relay.clone()
    };
    let framing = guest.framing();
    let stream = match guest.open_framed(&target, framing).await {
        Ok(s) => s,
        Err(e) => {
            ForwardCounters::bump(&counters.failed);
            if let Some(pass) = guest.log_throttle().allow("local connection failed") {
                tracing::warn!(target = %escape(&target.to_string()), cause = %Chain(&e),
                    suppressed = pass.suppressed, "client closed: the guest side failed");
            }
            return;
        }
    };
    match relay_stream(&conn, &stream, framing, &relay).await {
        // The client is the relay's first side: a to b is towards the guest.
        Ok(stats) => counters.add_bytes(stats.a_to_b, stats.b_to_a),
        Err(e) => tracing::debug!(cause = %Chain(&e), "connection ended on an error"),
    }
}
