//! Helpers for the tests of forwards in either direction as a user sets them
//! up: a relay whose stdout (the lines it prints for `-L`, auto-forward and
//! guest TCP listeners) is kept in a file, free loopback ports, a Python HTTP
//! server on TCP, curl, and the relay's admin subcommands.

use crate::{bin, require_tool, wait_until, Daemon, Env, READY_DEADLINE};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A port on 127.0.0.1 that was free a moment ago (bound to 0, then closed).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Waits until 127.0.0.1:`port` accepts connections.
pub fn wait_tcp(port: u16) {
    wait_until(
        &format!("127.0.0.1:{port} to accept connections"),
        READY_DEADLINE,
        || TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()),
    );
}

/// A relay with its stdout in a file.
pub struct Relay {
    /// The process (killed on drop).
    pub daemon: Daemon,
    /// Its stdout.
    pub stdout: PathBuf,
}

impl Relay {
    /// Starts `sockfwd-relay` with exactly `args`, working directory `env`'s.
    pub fn start(env: &Env, args: &[String]) -> Relay {
        let stdout = (0..)
            .map(|i| env.path(&format!("relay{i}.out")))
            .find(|p| !p.exists())
            .expect("a free name");
        let log = stdout.with_extension("log");
        let mut cmd = Command::new(bin("sockfwd-relay"));
        cmd.args(args)
            .current_dir(env.dir.path())
            .env(
                "RUST_LOG",
                std::env::var("SOCKFWD_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = cmd.spawn().expect("spawning sockfwd-relay");
        Relay {
            daemon: Daemon {
                child,
                log,
                name: "sockfwd-relay".into(),
            },
            stdout,
        }
    }

    /// The control and stream flags for `env`'s agent, then `extra`.
    pub fn args(env: &Env, extra: &[&str]) -> Vec<String> {
        let mut v = vec![
            "--control".to_string(),
            env.control(),
            "--streams".into(),
            env.streams(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// Starts a relay with `--admin ADMIN` and `extra`, and waits until its
    /// first session is ready.
    pub fn with_admin(env: &Env, admin: &Path, extra: &[&str]) -> Relay {
        let admin_arg = admin.display().to_string();
        let mut flags = vec!["--admin", admin_arg.as_str()];
        flags.extend_from_slice(extra);
        let relay = Relay::start(env, &Relay::args(env, &flags));
        relay.daemon.wait_log("relay ready");
        relay
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits for a stdout line starting with `prefix`; returns it.
    pub fn wait_line(&self, prefix: &str) -> String {
        wait_until(
            &format!("the relay to print {prefix:?}"),
            READY_DEADLINE,
            || {
                self.output()
                    .lines()
                    .find(|l| l.starts_with(prefix))
                    .map(str::to_owned)
            },
        )
    }

    /// The guest address of its `remote GUEST -> TARGET` line for `target`
    /// (the port the agent picked for port 0).
    pub fn remote_addr(&self, target: &str) -> String {
        let suffix = format!(" -> {target}");
        let line = wait_until(
            &format!("the relay to print remote ... -> {target}"),
            READY_DEADLINE,
            || {
                self.output()
                    .lines()
                    .find(|l| l.starts_with("remote ") && l.ends_with(&suffix))
                    .map(str::to_owned)
            },
        );
        line["remote ".len()..line.len() - suffix.len()].to_owned()
    }

    /// The host ports of its `listening 127.0.0.1:PORT -> ...` lines, in order.
    pub fn listening_ports(&self, count: usize) -> Vec<u16> {
        wait_until("the relay's listening lines", READY_DEADLINE, || {
            let ports: Vec<u16> = self
                .output()
                .lines()
                .filter_map(|l| l.strip_prefix("listening 127.0.0.1:"))
                .filter_map(|l| l.split(' ').next()?.parse().ok())
                .collect();
            (ports.len() >= count).then_some(ports)
        })
    }
}

/// A directory `name` in `env` holding `hello.txt` with `text`, for an HTTP server.
pub fn served_dir(env: &Env, name: &str, text: &str) -> PathBuf {
    let dir = env.path(name);
    std::fs::create_dir(&dir).expect("create the served directory");
    std::fs::write(dir.join("hello.txt"), text).expect("write hello.txt");
    dir
}

/// `python3 -m http.server PORT --bind 127.0.0.1` serving `dir`; waits until it
/// accepts connections.
pub fn http_tcp(dir: &Path, port: u16, log: PathBuf) -> Daemon {
    let python = require_tool("python3", "python3");
    let args: Vec<String> = [
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--directory",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let d = Daemon::spawn("http.server", &python, &args, log);
    wait_tcp(port);
    d
}

/// Runs curl with `args` (plus -sS and a deadline); its stdout, or its error.
pub fn curl(args: &[&str]) -> Result<String, String> {
    let curl = require_tool("curl", "curl");
    let out = Command::new(curl)
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    stdout_or_stderr(&out)
}

/// Runs `sockfwd-relay SUBCOMMAND --admin PATH ARGS`: its stdout, or its stderr.
pub fn admin(path: &Path, subcommand: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin("sockfwd-relay"))
        .arg(subcommand)
        .arg("--admin")
        .arg(path)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    stdout_or_stderr(&out)
}

/// A finished command's stdout if it succeeded, else its stderr.
fn stdout_or_stderr(out: &Output) -> Result<String, String> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// The value of a Prometheus sample `metric{...id="ID"...}` in `text`.
pub fn metric(text: &str, metric: &str, side: &str, id: &str) -> Option<u64> {
    let labels = format!("side=\"{side}\",id=\"{id}\"}}");
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&labels))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}
