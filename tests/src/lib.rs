//! Helpers for the integration tests: run the real `sockfwd-agent` and
//! `sockfwd-relay` binaries over Unix sockets in a temporary directory, host-side
//! servers to forward to, and readiness waits that retry until a deadline
//! (never a blind sleep).
//!
//! The binaries are found next to the test executable's target directory, so
//! `cargo build --bins` must run before the tests (the README's test command does).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failure is a test failure

pub mod forwards;
pub mod peers;
pub mod servers;
pub mod ttrpc_raw;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any readiness wait may take before the test fails.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// The directory holding the workspace's built binaries (target/debug or target/release).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary; panics with the command to run when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first with `cargo build --bins` (the README's test command does)",
        path.display()
    );
    path
}

/// Retries `check` until it returns `Some`, or panics after `deadline` naming `what`.
pub fn wait_until<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Waits until a Unix socket at `path` accepts a connection.
pub fn wait_connectable(path: &Path) {
    wait_until(
        &format!("{} to accept connections", path.display()),
        READY_DEADLINE,
        || UnixStream::connect(path).ok().map(|_| ()),
    );
}

/// A spawned daemon, killed when dropped; its stderr goes to a log file.
pub struct Daemon {
    /// The child process.
    pub child: Child,
    /// Where its stderr (tracing output) is written.
    pub log: PathBuf,
    name: String,
}

impl Daemon {
    /// Starts `program` with `args`, logging to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: PathBuf) -> Daemon {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Self::spawn_command(name, cmd, log)
    }

    /// Starts a prepared command, logging its stderr to `log`.
    pub fn spawn_command(name: &str, mut cmd: Command, log: PathBuf) -> Daemon {
        let err = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("SOCKFWD_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Daemon {
            child,
            log,
            name: name.to_owned(),
        }
    }

    /// The log written so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, sig);
    }

    /// Kills with SIGKILL and reaps.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for exit up to `deadline`; returns the exit status.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let name = self.name.clone();
        wait_until(&format!("{name} to exit"), deadline, || {
            self.child.try_wait().ok().flatten()
        })
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        wait_until(
            &format!("{} to log {needle:?}", self.name),
            READY_DEADLINE,
            || self.logs().contains(needle).then_some(()),
        );
    }

    /// Number of open file descriptors of the process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// CPU time used so far (user + system), in clock ticks (1/100 s on Linux).
    pub fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        get(11) + get(12)
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.logs()
            );
        }
    }
}

/// A temporary directory with the standard socket layout of one "VM".
pub struct Env {
    /// The directory; removed on drop.
    pub dir: tempfile::TempDir,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    /// A new empty environment. Short paths: sockaddr_un holds 107 bytes.
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("sfw")
            .tempdir_in("/tmp")
            .expect("tempdir");
        Env { dir }
    }

    /// A path inside the environment.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The agent's control address.
    pub fn control(&self) -> String {
        format!("unix://{}", self.path("control.sock").display())
    }

    /// The agent's stream-port address.
    pub fn streams(&self) -> String {
        format!("unix://{}", self.path("streams.sock").display())
    }

    /// Starts the agent listening on the control and stream sockets, and waits until
    /// both accept connections.
    pub fn agent(&self, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "--control".into(),
            self.control(),
            "--streams".into(),
            self.streams(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let d = self.agent_with(args);
        wait_connectable(&self.path("control.sock"));
        wait_connectable(&self.path("streams.sock"));
        d
    }

    /// Starts the agent with exactly `args`, without waiting.
    pub fn agent_with(&self, args: Vec<String>) -> Daemon {
        let log = self.unique("agent", "log");
        Daemon::spawn("sockfwd-agent", &bin("sockfwd-agent"), &args, log)
    }

    /// Starts a relay dialing the agent, with `forwards` as `GUEST:HOST` specs
    /// (`--forward` each), and waits for every guest socket to accept connections.
    pub fn relay(&self, forwards: &[(&Path, &Path)], extra: &[&str]) -> Daemon {
        let mut args = vec![
            "--control".into(),
            self.control(),
            "--streams".into(),
            self.streams(),
        ];
        for (guest, host) in forwards {
            args.push("--forward".into());
            args.push(format!("{}:{}", guest.display(), host.display()));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let d = self.relay_with(args);
        for (guest, _) in forwards {
            wait_connectable(guest);
        }
        d
    }

    /// Starts the relay with exactly `args`, without waiting.
    pub fn relay_with(&self, args: Vec<String>) -> Daemon {
        let log = self.unique("relay", "log");
        Daemon::spawn("sockfwd-relay", &bin("sockfwd-relay"), &args, log)
    }

    /// Starts `binary` (`sockfwd-agent` or `sockfwd-relay`) with `args` under an
    /// open-file limit of `nofile` (through util-linux's prlimit), without waiting.
    pub fn spawn_limited(&self, binary: &str, args: Vec<String>, nofile: u32) -> Daemon {
        let prlimit = require_tool("prlimit", "util-linux");
        let mut cmd = Command::new(prlimit);
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(bin(binary))
            .args(args);
        let log = self.unique(binary, "log");
        Daemon::spawn_command(binary, cmd, log)
    }

    fn unique(&self, stem: &str, ext: &str) -> PathBuf {
        (0..)
            .map(|i| self.path(&format!("{stem}{i}.{ext}")))
            .find(|p| !p.exists())
            .expect("a free name")
    }
}

/// Connects to a Unix socket with read/write timeouts so a broken forward fails
/// the test instead of hanging it.
pub fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Sends `msg`, half-closes, and reads the whole reply.
pub fn request(path: &Path, msg: &[u8]) -> Vec<u8> {
    let mut s = connect(path);
    s.write_all(msg).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    reply
}

/// Like [`request`], but `None` instead of a panic when anything fails (a read
/// times out after 5 s): for probing whether forwarding works (again).
pub fn try_request(path: &Path, msg: &[u8]) -> Option<Vec<u8>> {
    let mut s = UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(msg).ok()?;
    s.shutdown(std::net::Shutdown::Write).ok()?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok()?;
    Some(reply)
}

/// Waits until a request through `guest` gets an answer starting with `prefix`.
pub fn wait_forwarding(guest: &Path, prefix: &str) {
    let what = format!("forwarding through {} to answer {prefix}", guest.display());
    wait_until(&what, READY_DEADLINE, || {
        try_request(guest, b"x")?
            .starts_with(prefix.as_bytes())
            .then_some(())
    });
}

/// A tokio runtime for tests that speak ttrpc directly to a daemon.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Fails the test with the tool's name when a real peer is missing from the machine.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is missing: install the Debian package `{package}` (.ci/run does)")
    })
}
