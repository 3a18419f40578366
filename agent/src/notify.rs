//! systemd notification (the `sd_notify` protocol), without libsystemd: one
//! datagram per state change to the Unix socket named by `NOTIFY_SOCKET`
//! (a path, or `@name` for the abstract namespace).
//!
//! - `READY=1` once the agent reports [`Ready`] (the control and stream
//!   listeners bound and the boot-time forwards created), so units ordered
//!   after the agent start when forwarding can work;
//! - `WATCHDOG=1` every `WATCHDOG_USEC / 2`, from a future on the agent's
//!   runtime: a runtime that stops running tasks stops the keep-alives, and
//!   systemd restarts the agent;
//! - `STOPPING=1` when shutdown begins (signal or the Shutdown RPC).
//!
//! Without `NOTIFY_SOCKET` (a minimal init, PID 1 of an initramfs) there is no
//! [`Systemd`] and nothing else changes.

use crate::config::ControlMode;
use sockfwd_proto::transport::Address;
use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// What the agent reports once it is ready: the control channel is listening
/// (or its dialer started), the stream port is listening, and the boot-time
/// forwards exist.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The control channel as configured.
    pub control: ControlMode,
    /// The stream port.
    pub streams: Address,
    /// Cancelled when shutdown begins (signal or Shutdown RPC), for systemd's
    /// STOPPING=1; cancelling it starts shutdown.
    pub stopping: CancellationToken,
}

/// Why `NOTIFY_SOCKET` cannot be used; the agent then runs without notifying.
#[derive(Debug, Error)]
pub enum NotifyError {
    /// An address form this agent does not speak (systemd's `vsock:` form).
    #[error("NOTIFY_SOCKET {0:?}: expected an absolute path or @abstract-name")]
    Unsupported(String),
    /// The datagram socket could not be made.
    #[error("NOTIFY_SOCKET {addr:?}: creating the socket")]
    Socket {
        /// The address as given.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A datagram socket aimed at the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// A notifier for `addr`: an absolute path or `@abstract-name`.
    pub fn new(addr: &str) -> Result<Notifier, NotifyError> {
        let failed = |source| NotifyError::Socket {
            addr: addr.to_owned(),
            source,
        };
        let target = match addr.strip_prefix('@') {
            Some(name) if !name.is_empty() => SocketAddr::from_abstract_name(name.as_bytes()),
            None if addr.starts_with('/') => SocketAddr::from_pathname(addr),
            _ => return Err(NotifyError::Unsupported(addr.to_owned())),
        }
        .map_err(failed)?;
        let socket = UnixDatagram::unbound().map_err(failed)?;
        // A full queue must not block a runtime thread: the datagram is dropped.
        socket.set_nonblocking(true).map_err(failed)?;
        Ok(Notifier {
            socket,
            addr: target,
        })
    }

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, ... joined by `\n`).
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(|_| ())
    }
}

/// The part of the environment systemd sets for a notify service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemdEnv {
    /// `NOTIFY_SOCKET`.
    pub notify_socket: Option<String>,
    /// `WATCHDOG_USEC`.
    pub watchdog_usec: Option<String>,
    /// `WATCHDOG_PID`.
    pub watchdog_pid: Option<String>,
}

impl SystemdEnv {
    /// Reads the variables (the binary does; the library takes them as values).
    pub fn from_env() -> SystemdEnv {
        let var = |name| std::env::var(name).ok();
        SystemdEnv {
            notify_socket: var("NOTIFY_SOCKET"),
            watchdog_usec: var("WATCHDOG_USEC"),
            watchdog_pid: var("WATCHDOG_PID"),
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, if it is set, a
/// positive number, and meant for this process (`WATCHDOG_PID` absent or ours).
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    match usec?.trim().parse::<u64>() {
        Ok(us) if us > 0 => Some(Duration::from_micros(us) / 2),
        _ => None,
    }
}

/// A service manager to tell about readiness, liveness and stopping.
#[derive(Debug)]
pub struct Systemd {
    notifier: Notifier,
    watchdog: Option<Duration>,
}

impl Systemd {
    /// Notifications through `notifier`, with keep-alives every `watchdog`.
    pub fn new(notifier: Notifier, watchdog: Option<Duration>) -> Systemd {
        Systemd { notifier, watchdog }
    }

    /// From systemd's variables: `Ok(None)` without `NOTIFY_SOCKET`.
    pub fn from_env(env: &SystemdEnv, own_pid: u32) -> Result<Option<Systemd>, NotifyError> {
        let Some(addr) = env.notify_socket.as_deref().filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        let watchdog = watchdog_interval(
            env.watchdog_usec.as_deref(),
            env.watchdog_pid.as_deref(),
            own_pid,
        );
        Ok(Some(Systemd::new(Notifier::new(addr)?, watchdog)))
    }

    fn send(&self, state: &str) {
        if let Err(err) = self.notifier.send(state) {
            tracing::warn!(cause = %err, state, "systemd notification not sent");
        }
    }

    /// READY=1 when the agent is ready, keep-alives until it has finished,
    /// STOPPING=1 when its shutdown begins.
    pub async fn follow(&self, ready: oneshot::Receiver<Ready>, finished: CancellationToken) {
        let Ok(ready) = ready.await else {
            return; // failed before it was ready; the exit status says the rest
        };
        self.send(&format!(
            "READY=1\nSTATUS=forwarding (control {}, streams {})",
            ready.control, ready.streams
        ));
        tracing::debug!("told systemd READY=1");
        let keepalives = async {
            if let Some(every) = self.watchdog {
                keepalive(&self.notifier, every, &finished).await;
            }
        };
        let stopping = async {
            tokio::select! {
                () = ready.stopping.cancelled() => {}
                () = finished.cancelled() => {}
            }
            self.send("STOPPING=1\nSTATUS=shutting down");
            // Keep-alives continue while the agent drains.
            finished.cancelled().await;
        };
        tokio::join!(keepalives, stopping);
    }
}

async fn keepalive(notifier: &Notifier, every: Duration, stop: &CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match notifier.send("WATCHDOG=1") {
            Ok(()) => warned = false,
            Err(err) if !warned => {
                warned = true;
                tracing::warn!(cause = %err, "systemd watchdog keep-alive not sent");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec_for_this_process() {
        let half = Some(Duration::from_secs(5));
        assert_eq!(watchdog_interval(Some("10000000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("10000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("10000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("10000000"), Some("x"), 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
    }

    #[test]
    fn addresses() {
        for bad in ["", "@", "relative", "vsock:2:1234"] {
            assert!(
                matches!(Notifier::new(bad), Err(NotifyError::Unsupported(_))),
                "{bad}"
            );
        }
        let env = SystemdEnv::default();
        assert!(Systemd::from_env(&env, 1).unwrap().is_none());
    }

    #[test]
    fn abstract_names_are_reached() {
        let name = format!("sockfwd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(&format!("@{name}"))
            .unwrap()
            .send("READY=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
