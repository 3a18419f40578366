//! The processes the bench starts (agent, relay, socat) and the guards that
//! make sure none outlives it: a `Drop` per daemon, plus a panic hook and a
//! signal thread (release builds abort on panic, so `Drop` alone is not
//! enough), plus PR_SET_PDEATHSIG if the bench itself is killed.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, SigSet, Signal};
use nix::unistd::Pid;

use crate::sys::{self, Ctx, Res};

/// Process groups of every daemon alive (each daemon leads its own group,
/// so socat's forked children go with it).
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn groups() -> std::sync::MutexGuard<'static, Vec<i32>> {
    GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// SIGKILLs every daemon group still registered.
pub fn kill_all() {
    // try_lock: this runs from the panic hook, possibly on a thread holding the lock.
    let list = match GROUPS.try_lock() {
        Ok(g) => g.clone(),
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().clone(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for pg in list {
        let _ = killpg(Pid::from_raw(pg), Signal::SIGKILL);
    }
}

/// Installs the panic hook and the SIGINT/SIGTERM/SIGHUP thread. Call first,
/// before any other thread exists, so every thread inherits the blocked mask
/// (children get a clean mask: std resets it on spawn).
pub fn install_guards() -> Res<()> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_all();
        previous(info);
    }));
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().ctx("block signals")?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                eprintln!("sockfwd-bench: {sig}, stopping the daemons");
                kill_all();
                std::process::exit(128 + sig as i32);
            }
        })
        .ctx("spawn signal thread")?;
    Ok(())
}

/// Registers a process group that [`kill_all`] must kill if the bench is
/// interrupted (for groups not led by a [`Daemon`], such as the VM's).
pub fn register_group(pg: i32) {
    groups().push(pg);
}

/// Forgets a group registered with [`register_group`].
pub fn unregister_group(pg: i32) {
    groups().retain(|&g| g != pg);
}

/// Makes `cmd`'s child start with no blocked signals (the bench blocks
/// SIGINT/SIGTERM/SIGHUP for its signal thread, and exec keeps the mask),
/// and with `die_with_bench`, get SIGKILL when the bench's spawning thread ends.
pub fn unblock_signals_in_child(cmd: &mut Command, die_with_bench: bool) {
    // SAFETY: the closure runs in the forked child before exec and only
    // calls sigemptyset(3), sigprocmask(2) and prctl(2), which are
    // async-signal-safe; it touches only its own stack.
    unsafe {
        cmd.pre_exec(move || {
            let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            if libc::sigemptyset(empty.as_mut_ptr()) != 0
                || libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut()) != 0
                || (die_with_bench && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// One started process, killed (with its process group) when dropped.
pub struct Daemon {
    /// Short name for messages.
    pub name: String,
    child: Child,
    pid: i32,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program` in its own process group, output to `log`. Call from
    /// the main thread: PR_SET_PDEATHSIG fires when the spawning thread ends.
    pub fn spawn(name: &str, program: &Path, args: &[OsString], log: &Path) -> Res<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Self::spawn_command(name, cmd, log)
    }

    /// [`Daemon::spawn`] for a prepared command (another user, environment).
    pub fn spawn_command(name: &str, mut cmd: Command, log: &Path) -> Res<Self> {
        let out = File::create(log).with_ctx(|| format!("create {}", log.display()))?;
        let err = out.try_clone().ctx("dup log fd")?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        unblock_signals_in_child(&mut cmd, true);
        let child = cmd
            .spawn()
            .with_ctx(|| format!("start {name} ({})", cmd.get_program().to_string_lossy()))?;
        let pid = i32::try_from(child.id()).ctx("pid")?;
        groups().push(pid);
        Ok(Self {
            name: name.to_string(),
            child,
            pid,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Fails (with the end of its log) if the daemon has exited.
    pub fn check_alive(&mut self) -> Res<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} died ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, 20)
            )),
            Err(e) => Err(format!("{}: wait: {e}", self.name)),
        }
    }

    /// Last lines of the daemon's output.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pg = Pid::from_raw(self.pid);
        let _ = killpg(pg, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        // Whatever is left of the group (the daemon itself if it ignored
        // SIGTERM, socat's forked children).
        let _ = killpg(pg, Signal::SIGKILL);
        let _ = self.child.wait();
        groups().retain(|&g| g != self.pid);
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls until `path` accepts a connection, the daemon dies, or `timeout`.
pub fn wait_connectable(path: &Path, daemon: &mut Daemon, timeout: Duration) -> Res<Duration> {
    let start = Instant::now();
    loop {
        if sys::connect(path, Duration::from_secs(1)).is_ok() {
            return Ok(start.elapsed());
        }
        daemon.check_alive()?;
        if start.elapsed() > timeout {
            return Err(format!(
                "{} did not accept on {} within {timeout:?}; log:\n{}",
                daemon.name,
                path.display(),
                daemon.log_tail(20)
            ));
        }
        thread::sleep(Duration::from_micros(200));
    }
}

/// Polls until the socket file `path` exists, the daemon dies, or `timeout`.
pub fn wait_bound(path: &Path, daemon: &mut Daemon, timeout: Duration) -> Res<Duration> {
    let start = Instant::now();
    loop {
        if path.exists() {
            return Ok(start.elapsed());
        }
        daemon.check_alive()?;
        if start.elapsed() > timeout {
            return Err(format!(
                "{} did not bind {} within {timeout:?}; log:\n{}",
                daemon.name,
                path.display(),
                daemon.log_tail(20)
            ));
        }
        thread::sleep(Duration::from_micros(200));
    }
}

/// The two daemon binaries.
pub struct Bins {
    /// sockfwd-agent (release).
    pub agent: PathBuf,
    /// sockfwd-relay (release).
    pub relay: PathBuf,
    /// Extra relay arguments (raised admission limits).
    pub relay_extra: Vec<OsString>,
}

/// The relay's admission limits and the values the bench raises them to:
/// the defaults are policy (e.g. 1,024 connections at once per forward), below
/// what the rate and idle-connection figures may need.
const RELAY_LIMITS: [(&str, &str); 4] = [
    ("--max-concurrent", "1000000"),
    ("--max-concurrent-per-forward", "1000000"),
    ("--max-rate", "10000000"),
    ("--max-rate-per-forward", "10000000"),
];

const BUILD_HINT: &str =
    "build them first: cargo build --release -p sockfwd-agent -p sockfwd-relay";

/// Where release binaries may be: `--bin-dir`, $CARGO_TARGET_DIR/release,
/// the bench's own directory when it is a release build, the workspace's target/release.
pub fn release_dirs(bin_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = bin_dir {
        dirs.push(d.to_path_buf());
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(t).join("release"));
    }
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        if d.file_name().is_some_and(|n| n == "release") {
            dirs.push(d);
        }
    }
    dirs.push(workspace_dir().join("target/release"));
    dirs.dedup();
    dirs
}

/// The workspace root (this crate's parent directory, fixed at build time).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

impl Bins {
    /// Finds both binaries or fails naming the build command.
    pub fn find(bin_dir: Option<&Path>) -> Res<Self> {
        let dirs = release_dirs(bin_dir);
        let find = |name: &str| -> Res<PathBuf> {
            dirs.iter()
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    let looked: Vec<String> =
                        dirs.iter().map(|d| d.display().to_string()).collect();
                    format!(
                        "{name} not found (looked in {}); {BUILD_HINT}",
                        looked.join(", ")
                    )
                })
        };
        Ok(Self {
            agent: find("sockfwd-agent")?,
            relay: find("sockfwd-relay")?,
            relay_extra: Vec::new(),
        })
    }

    /// Names the binaries older than a source file of their crates (or of
    /// proto/), i.e. probably not the code in the tree.
    pub fn stale(&self) -> Vec<String> {
        [(&self.agent, "agent"), (&self.relay, "host-relay")]
            .into_iter()
            .filter(|(bin, krate)| older_than_sources(bin, krate))
            .map(|(bin, _)| bin.display().to_string())
            .collect()
    }

    /// Adds the `--relay-arg` flags; returns the note saying so, if any.
    pub fn add_relay_args(&mut self, args: &[String]) -> Option<String> {
        self.relay_extra.extend(args.iter().map(OsString::from));
        (!args.is_empty()).then(|| format!("relay started with {}", args.join(" ")))
    }

    /// Raises the relay's admission limits, for the flags its `--help` lists;
    /// returns the note for under the table saying so, if any was raised.
    pub fn raise_relay_limits(&mut self) -> Res<Option<String>> {
        let out = Command::new(&self.relay)
            .arg("--help")
            .stdin(Stdio::null())
            .output()
            .with_ctx(|| format!("{} --help", self.relay.display()))?;
        let help = String::from_utf8_lossy(&out.stdout);
        let mut set = Vec::new();
        for (flag, value) in RELAY_LIMITS {
            if help.split_whitespace().any(|w| w == flag) {
                self.relay_extra.push(flag.into());
                self.relay_extra.push(value.into());
                set.push(format!("{flag} {value}"));
            }
        }
        Ok((!set.is_empty()).then(|| {
            format!(
                "relay started with its admission limits raised ({}): its defaults are policy (new connections \
                 per second and connections at once, per forward and in all) and can cap the rate and \
                 idle-connection figures; --default-limits measures the shipped defaults",
                set.join(", ")
            )
        }))
    }
}

fn newest(dir: &Path, depth: usize) -> Option<std::time::SystemTime> {
    let mut best = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() && depth > 0 {
            newest(&path, depth - 1)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        best = best.max(t);
    }
    best
}

/// Whether `bin` is older than a file under `<workspace>/<krate>/src` or `proto/`.
pub fn older_than_sources(bin: &Path, krate: &str) -> bool {
    let ws = workspace_dir();
    let src = newest(&ws.join(krate).join("src"), 4).max(newest(&ws.join("proto"), 4));
    match (fs::metadata(bin).and_then(|m| m.modified()).ok(), src) {
        (Some(built), Some(src)) => src > built,
        _ => false,
    }
}

/// Finds an executable on $PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

fn unix_addr(p: &Path) -> OsString {
    let mut s = OsString::from("unix://");
    s.push(p);
    s
}

/// Arguments for an agent listening on `dir/control.sock` and `dir/streams.sock`.
pub fn agent_args(dir: &Path) -> Vec<OsString> {
    vec![
        os("--control"),
        unix_addr(&dir.join("control.sock")),
        os("--streams"),
        unix_addr(&dir.join("streams.sock")),
    ]
}

/// Arguments for a relay forwarding `dir/guest.sock` to `dir/server.sock`.
pub fn relay_args(dir: &Path, extra: &[OsString]) -> Vec<OsString> {
    let mut fwd = dir.join("guest.sock").into_os_string();
    fwd.push(":");
    fwd.push(dir.join("server.sock"));
    vec![
        os("--control"),
        unix_addr(&dir.join("control.sock")),
        os("--streams"),
        unix_addr(&dir.join("streams.sock")),
        os("--forward"),
        fwd,
    ]
    .into_iter()
    .chain(extra.iter().cloned())
    .collect()
}

/// Runs a client to completion, killed after `timeout`; its stdout.
pub fn run_client(mut cmd: Command, timeout: Duration, what: &str) -> Res<String> {
    let dir = tempfile::tempdir().ctx("temp dir")?;
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let out = std::fs::File::create(&out_path).ctx("client output")?;
    let err = std::fs::File::create(&err_path).ctx("client output")?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    unblock_signals_in_child(&mut cmd, true);
    let mut child = cmd.spawn().with_ctx(|| format!("start {what}"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().ctx(what)? {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: no result within {timeout:?}"));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(format!("{what} failed ({status}): {}", stderr.trim()));
    }
    Ok(stdout)
}
