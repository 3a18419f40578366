//! Real programs on the host end of a forward: redis-server, PostgreSQL (each
//! on a Unix socket or on TCP only), and a Python HTTP server on a Unix socket.
//! A missing program fails the test with the package to install; it never skips.

use crate::forwards::wait_tcp;
use crate::{require_tool, wait_connectable, Daemon};
use std::path::{Path, PathBuf};
use std::process::Command;

/// redis-server listening only on the Unix socket `path`.
pub fn redis(path: &Path, log: PathBuf) -> Daemon {
    let socket = path.display().to_string();
    let listen = [
        "--port",
        "0",
        "--unixsocket",
        &socket,
        "--unixsocketperm",
        "700",
    ];
    let d = redis_with(&listen, log);
    wait_connectable(path);
    d
}

/// redis-server listening only on TCP, 127.0.0.1:`port`.
pub fn redis_tcp(port: u16, log: PathBuf) -> Daemon {
    let port_text = port.to_string();
    let d = redis_with(&["--port", &port_text, "--bind", "127.0.0.1"], log);
    wait_tcp(port);
    d
}

fn redis_with(listen: &[&str], log: PathBuf) -> Daemon {
    let server = require_tool("redis-server", "redis-server");
    require_tool("redis-cli", "redis-tools");
    let rest = ["--save", "", "--appendonly", "no", "--daemonize", "no"];
    let args: Vec<String> = listen.iter().chain(&rest).map(|s| s.to_string()).collect();
    Daemon::spawn("redis-server", &server, &args, log)
}

/// Python's http.server on the Unix socket `path`: GET answers `hello <path>`;
/// POST answers the byte count of the body.
pub fn http(path: &Path, log: PathBuf) -> Daemon {
    let python = require_tool("python3", "python3");
    let script = r#"
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply(b"hello " + self.path.encode())
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(n)
        self.reply(b"got %d bytes" % len(data))
    def address_string(self):
        return "unix"
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
S(sys.argv[1], H).serve_forever()
"#;
    let args = vec![
        "-c".to_string(),
        script.to_string(),
        path.display().to_string(),
    ];
    let d = Daemon::spawn("http-server", &python, &args, log);
    wait_connectable(path);
    d
}

/// A PostgreSQL server run as the `postgres` user: [`postgres`] on a Unix
/// socket only, [`postgres_tcp`] on TCP only.
pub struct Postgres {
    /// The server process (SIGKILLed and reaped on drop, like every daemon).
    pub daemon: Daemon,
    /// Data directory, removed on drop.
    _data: tempfile::TempDir,
}

fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("{name} is missing: install the Debian package `postgresql` (.ci/run does)")
    })
}

/// Starts PostgreSQL with its socket in `sock_dir`, as the `postgres` user (it refuses root).
pub fn postgres(sock_dir: &Path, log: PathBuf) -> Postgres {
    let sock_arg = sock_dir.display().to_string();
    let listen = ["-k", &sock_arg, "-c", "listen_addresses=", "-p", "5432"];
    let pg = start_postgres(&listen, Some(sock_dir), log);
    wait_connectable(&sock_dir.join(".s.PGSQL.5432"));
    pg
}

/// Starts PostgreSQL listening on TCP only, 127.0.0.1:`port` (no socket file).
pub fn postgres_tcp(port: u16, log: PathBuf) -> Postgres {
    let port_text = port.to_string();
    let listen = [
        "-k",
        "",
        "-c",
        "listen_addresses=127.0.0.1",
        "-p",
        &port_text,
    ];
    let pg = start_postgres(&listen, None, log);
    wait_tcp(port);
    pg
}

/// initdb in a fresh data directory, then the server with `listen` flags, as
/// the `postgres` user; `sock_dir` is handed to that user too.
fn start_postgres(listen: &[&str], sock_dir: Option<&Path>, log: PathBuf) -> Postgres {
    use std::os::unix::process::CommandExt as _;
    require_tool("psql", "postgresql-client");
    let user = nix::unistd::User::from_name("postgres").ok().flatten().unwrap_or_else(|| {
        panic!("user `postgres` is missing: install the Debian package `postgresql` (.ci/run does)")
    });
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let initdb = pg_bin("initdb");
    let server = pg_bin("postgres");
    let data = tempfile::Builder::new()
        .prefix("sfwpg")
        .tempdir_in("/tmp")
        .expect("tempdir");
    for dir in std::iter::once(data.path()).chain(sock_dir) {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown to postgres");
    }
    let db = data.path().join("db");
    let out = Command::new(&initdb)
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&db)
        .current_dir(data.path())
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = Command::new(server);
    cmd.arg("-D").arg(&db).args(listen);
    cmd.current_dir(data.path()).uid(uid).gid(gid);
    let daemon = Daemon::spawn_command("postgres", cmd, log);
    Postgres {
        daemon,
        _data: data,
    }
}
