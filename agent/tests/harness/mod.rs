//! The in-process agent that the agent's own tests drive: started with its
//! control and stream sockets in a temporary directory, stopped in order.
//! Each test file brings its own fake host on top.

use sockfwd_agent::{run_with_ready, AgentConfig, AgentError, ControlMode};
use sockfwd_proto::transport::{dial, Address, Stream};
use std::path::PathBuf;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// The bound on every wait in these tests: long, as only a hang should hit it.
pub const LONG: Duration = Duration::from_secs(10);
/// [`LONG`] as a ttrpc context's timeout.
pub const LONG_NANOS: i64 = 10_000_000_000;

/// A running agent and its sockets.
pub struct Agent {
    dir: tempfile::TempDir,
    /// Its control socket (it listens).
    pub control: PathBuf,
    /// Its stream port.
    pub streams: PathBuf,
    stop: CancellationToken,
    task: JoinHandle<Result<(), AgentError>>,
}

impl Agent {
    /// Starts an agent with the defaults, changed by `tune`, and waits until it is ready.
    pub async fn start(tune: impl FnOnce(&mut AgentConfig)) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control.sock");
        let streams = dir.path().join("streams.sock");
        let mut config = AgentConfig {
            control: ControlMode::Listen(Address::Unix(control.clone())),
            streams: Address::Unix(streams.clone()),
            ..AgentConfig::default()
        };
        tune(&mut config);
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(run_with_ready(config, stop.clone(), Some(tx)));
        rx.await.unwrap();
        Agent {
            dir,
            control,
            streams,
            stop,
            task,
        }
    }

    /// A path in the agent's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new connection to the control socket.
    pub async fn dial_control(&self) -> Stream {
        dial(&Address::Unix(self.control.clone()), LONG)
            .await
            .unwrap()
    }

    /// Shuts the agent down and checks that it ended without an error.
    pub async fn stop(self) {
        self.stop.cancel();
        self.exited().await;
    }

    /// Waits for the agent to end by itself (a Shutdown) without an error.
    pub async fn exited(self) {
        timeout(LONG, self.task).await.unwrap().unwrap().unwrap();
    }
}
