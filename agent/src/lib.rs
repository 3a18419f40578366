//! sockfwd guest agent: creates the forwarded Unix sockets inside the guest and
//! serves the socketforward ttrpc service (control channel) and the stream port.
//!
//! Layout, from the configuration down to the splice (`docs/design.md`, "Agent"):
//! - [`config`]: the one [`AgentConfig`], from the defaults, the file, the
//!   kernel command line and the flags ([`cli`]);
//! - [`state`]: what every task shares; [`forwards`] (the forward table),
//!   [`registry`] (streams waiting to be claimed), [`stream_pool`] (streams
//!   opened ahead of demand) and [`dispatch`] (which Accept stream gets each
//!   request) are its parts;
//! - [`control`]: the control channel (listen or dial) and its service;
//! - [`remote`]: remote forwards: Bind's listeners and their clients;
//! - [`local`]: local forwards: the host's `Connect` to a guest target;
//! - [`stream_port`]: the stream port, where the host opens each stream;
//! - [`boot`]: the configuration's forwards, bound before the agent is ready;
//! - [`shutdown`]: the order things stop in; [`notify`]: systemd readiness;
//! - [`ports`]: the guest's listening TCP ports, and the one watcher of them
//!   every `WatchPorts` call shares;
//! - [`control_caps`]: what control connections may hold, and each one's books.
//!
//! The binary (`main.rs`) parses flags, sets up logging and signals, and calls
//! [`run`]. The wire contract is `docs/wire-protocol.md` in the repository.

pub mod boot;
pub mod cli;
pub mod config;
pub mod control;
pub mod control_caps;
pub mod dispatch;
pub mod forwards;
pub mod local;
pub mod notify;
pub mod ports;
pub mod registry;
pub mod remote;
pub mod shutdown;
pub mod state;
pub mod stream_pool;
pub mod stream_port;
pub mod timer_anchor;

pub use config::{AgentConfig, ControlMode};
pub use notify::Ready;

use notify::Systemd;
use sockfwd_proto::log_text::escape;
use sockfwd_proto::transport::{Address, Listener, ListenerError};
use state::AgentState;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Why the agent could not run.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The control listener could not be created.
    #[error("control channel")]
    Control(#[source] ListenerError),
    /// The stream-port listener could not be created.
    #[error("stream port")]
    Streams(#[source] ListenerError),
    /// A forward from the configuration could not be bound.
    #[error("boot-time forward")]
    BootForward(#[source] remote::bind::BindError),
}

impl AgentError {
    /// Whether another process already listens where the agent should: the
    /// control or stream port's socket, or a boot-time forward's.
    pub fn is_address_in_use(&self) -> bool {
        match self {
            AgentError::Control(e) | AgentError::Streams(e) => {
                matches!(e, ListenerError::InUse { .. })
            }
            AgentError::BootForward(e) => matches!(
                e.cause,
                remote::bind::BindCause::Path(remote::paths::PathError::LiveSocket)
            ),
        }
    }
}

enum ControlStart {
    Listen(Listener),
    Dial(Address),
}

/// Runs the agent until `shutdown` is cancelled (or a Shutdown RPC), then shuts
/// down in order (see [`shutdown`]) and returns.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    run_with_ready(config, shutdown, None).await
}

/// [`run`], telling `ready` once the listeners are bound and the boot-time
/// forwards exist (for systemd's READY=1, or a test waiting to connect).
pub async fn run_with_ready(
    config: AgentConfig,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<Ready>>,
) -> Result<(), AgentError> {
    let streams = Listener::bind(&config.streams).map_err(AgentError::Streams)?;
    let control = match &config.control {
        ControlMode::Listen(addr) => {
            ControlStart::Listen(Listener::bind(addr).map_err(AgentError::Control)?)
        }
        ControlMode::Dial(addr) => ControlStart::Dial(addr.clone()),
    };
    let state = Arc::new(AgentState::new(config, &shutdown));
    if let Err(err) = boot::bind_forwards(&state).await {
        // Undo what was bound; the unspawned listeners go with this frame.
        state.shutdown.request(None);
        shutdown::drain(&state).await;
        return Err(AgentError::BootForward(err));
    }
    state
        .listeners
        .spawn(stream_port::serve(state.clone(), streams));
    state
        .listeners
        .spawn(timer_anchor::run(state.shutdown.stop.clone()));
    match control {
        ControlStart::Listen(listener) => {
            state
                .listeners
                .spawn(control::channel::listen(state.clone(), listener));
        }
        ControlStart::Dial(addr) => {
            // The dialer holds its live connection until shutdown step 4, so it
            // belongs with the control connections, not the listeners.
            state
                .tasks
                .spawn(control::channel::dial(state.clone(), addr));
        }
    }
    tracing::info!(
        control = %escape(&state.config.control.to_string()),
        streams = %escape(&state.config.streams.to_string()),
        "agent ready"
    );
    if let Some(ready) = ready {
        let _ = ready.send(Ready {
            control: state.config.control.clone(),
            streams: state.config.streams.clone(),
            stopping: state.shutdown.stop.clone(),
        });
    }
    shutdown::drain(&state).await;
    Ok(())
}

/// [`run`], telling `systemd` (when there is one) about readiness, liveness
/// and stopping (see [`notify`]).
pub async fn run_notifying(
    config: AgentConfig,
    shutdown: CancellationToken,
    systemd: Option<Systemd>,
) -> Result<(), AgentError> {
    let Some(systemd) = systemd else {
        return run(config, shutdown).await;
    };
    let (tx, rx) = oneshot::channel();
    let finished = CancellationToken::new();
    let agent = async {
        let result = run_with_ready(config, shutdown, Some(tx)).await;
        finished.cancel();
        result
    };
    let (result, ()) = tokio::join!(agent, systemd.follow(rx, finished.clone()));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::BootForward;
    use notify::Notifier;
    use sockfwd_proto::transport::ListenAt;
    use std::time::Duration;

    async fn next(socket: &tokio::net::UnixDatagram) -> String {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[tokio::test]
    async fn ready_after_the_listeners_and_boot_forwards_exist_then_keepalives_then_stopping() {
        let dir = tempfile::tempdir().unwrap();
        let notify_path = dir.path().join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
        let control = dir.path().join("control.sock");
        let streams = dir.path().join("streams.sock");
        let boot = dir.path().join("boot/web.sock");
        let config = AgentConfig {
            control: ControlMode::Listen(Address::Unix(control.clone())),
            streams: Address::Unix(streams.clone()),
            forwards: vec![BootForward {
                id: "web".into(),
                listen: ListenAt::Unix(boot.clone()),
                mode: Some(0o600),
                uid: None,
                gid: None,
            }],
            ..AgentConfig::default()
        };
        let systemd = Systemd::new(
            Notifier::new(notify_path.to_str().unwrap()).unwrap(),
            Some(Duration::from_millis(50)),
        );
        let stop = CancellationToken::new();
        let agent = tokio::spawn(run_notifying(config, stop.clone(), Some(systemd)));

        let first = next(&socket).await;
        assert!(first.starts_with("READY=1\n"), "{first}");
        for path in [&control, &streams, &boot] {
            assert!(path.exists(), "{} missing at READY=1", path.display());
        }
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&boot).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600);
        for _ in 0..3 {
            assert_eq!(next(&socket).await, "WATCHDOG=1");
        }
        stop.cancel();
        loop {
            let msg = next(&socket).await;
            if msg != "WATCHDOG=1" {
                assert!(msg.starts_with("STOPPING=1"), "{msg}");
                break;
            }
        }
        tokio::time::timeout(Duration::from_secs(10), agent)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!boot.exists(), "boot forward removed at shutdown");
    }

    #[tokio::test]
    async fn no_watchdog_without_watchdog_usec() {
        let dir = tempfile::tempdir().unwrap();
        let notify_path = dir.path().join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
        let config = AgentConfig {
            control: ControlMode::Listen(Address::Unix(dir.path().join("c.sock"))),
            streams: Address::Unix(dir.path().join("s.sock")),
            ..AgentConfig::default()
        };
        let systemd = Systemd::new(Notifier::new(notify_path.to_str().unwrap()).unwrap(), None);
        let stop = CancellationToken::new();
        let agent = tokio::spawn(run_notifying(config, stop.clone(), Some(systemd)));
        assert!(next(&socket).await.starts_with("READY=1"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
        assert!(next(&socket).await.starts_with("STOPPING=1"));
        agent.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_failed_start_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let notify_path = dir.path().join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
        let taken = dir.path().join("taken");
        std::fs::write(&taken, b"a file, not a socket").unwrap();
        let config = AgentConfig {
            control: ControlMode::Listen(Address::Unix(dir.path().join("c.sock"))),
            streams: Address::Unix(dir.path().join("s.sock")),
            forwards: vec![BootForward {
                id: "f".into(),
                listen: ListenAt::Unix(taken),
                mode: None,
                uid: None,
                gid: None,
            }],
            ..AgentConfig::default()
        };
        let systemd = Systemd::new(Notifier::new(notify_path.to_str().unwrap()).unwrap(), None);
        let err = run_notifying(config, CancellationToken::new(), Some(systemd))
            .await
            .unwrap_err();
        assert!(
            sockfwd_proto::report::chain(&err).contains("not a socket"),
            "{err}"
        );
        let mut buf = [0u8; 64];
        assert!(socket.try_recv(&mut buf).is_err(), "nothing was sent");
        assert!(!dir.path().join("c.sock").exists());
    }
}
