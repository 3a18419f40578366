//! Real programs on both ends: a host redis-server, PostgreSQL and an HTTP server,
//! used from the guest side through the forward with redis-cli, psql and curl:
//! through a guest socket file (`--forward`), and through a guest TCP port
//! (`-R`) to a host service on TCP or on a Unix socket.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_tests::forwards::{free_port, Relay};
use sockfwd_tests::{peers, require_tool, Env};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Queries through a forward to PostgreSQL (`q` runs one with psql): a sum
/// over 10,000 rows, and a large result set that crosses intact.
fn psql_workload(q: impl Fn(&str) -> String) {
    assert_eq!(q("SELECT 40 + 2"), "42");
    q("CREATE TABLE t (n int)");
    q("INSERT INTO t SELECT generate_series(1, 10000)");
    assert_eq!(q("SELECT sum(n) FROM t"), "50005000");
    let rows = q("SELECT string_agg(md5(n::text), '') FROM t");
    assert_eq!(rows.len(), 320_000);
}

/// curl through a forward to `peers::http` (`via`: curl's flags to reach it,
/// `url`: the URL of a path): one request, three on one connection
/// (keep-alive), a 5 MiB upload.
fn http_workload(env: &Env, via: &[&str], url: impl Fn(&str) -> String) {
    let curl = require_tool("curl", "curl");
    let get = |urls: &[String]| run(Command::new(&curl).arg("-sS").args(via).args(urls));
    assert_eq!(get(&[url("/v1/ping")]), "hello /v1/ping");
    assert_eq!(
        get(&[url("/a"), url("/b"), url("/c")]),
        "hello /ahello /bhello /c"
    );
    let body = env.path("body.bin");
    std::fs::write(&body, vec![b'x'; 5 << 20]).unwrap();
    let out = run(Command::new(&curl)
        .arg("-sS")
        .args(via)
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(url("/upload")));
    assert_eq!(out, format!("got {} bytes", 5 << 20));
}

#[test]
fn redis_cli_in_the_guest_talks_to_redis_on_the_host() {
    let env = Env::new();
    let host = env.path("redis.sock");
    let _redis = peers::redis(&host, env.path("redis.log"));
    let _agent = env.agent(&[]);
    let guest = env.path("guest/redis.sock");
    let _relay = env.relay(&[(&guest, &host)], &[]);

    let cli = require_tool("redis-cli", "redis-tools");
    let g = guest.display().to_string();
    assert_eq!(
        run(Command::new(&cli).args(["-s", &g, "SET", "sockfwd", "works"])),
        "OK"
    );
    assert_eq!(
        run(Command::new(&cli).args(["-s", &g, "GET", "sockfwd"])),
        "works"
    );
    // A pipeline of many commands in one connection.
    let script: String = (0..500)
        .map(|i| format!("INCR counter{}\n", i % 5))
        .collect();
    let mut child = Command::new(&cli)
        .args(["-s", &g])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().last(),
        Some("100")
    );
    // The value is on the host's server, read from the host side directly.
    assert_eq!(
        run(Command::new(&cli).args(["-s", &host.display().to_string(), "GET", "counter4"])),
        "100"
    );
}

#[test]
fn psql_in_the_guest_queries_postgres_on_the_host() {
    let env = Env::new();
    let host_dir = env.path("pghost");
    std::fs::create_dir(&host_dir).unwrap();
    let _pg = peers::postgres(&host_dir, env.path("pg.log"));
    let _agent = env.agent(&[]);
    // psql finds the server as DIR/.s.PGSQL.PORT: forward exactly that name.
    let guest_dir = env.path("pgguest");
    let guest = guest_dir.join(".s.PGSQL.5432");
    let _relay = env.relay(&[(&guest, &host_dir.join(".s.PGSQL.5432"))], &[]);

    let psql = require_tool("psql", "postgresql-client");
    let g = guest_dir.display().to_string();
    let q = |sql: &str| {
        run(Command::new(&psql).args(["-h", &g, "-p", "5432", "-U", "postgres", "-tAc", sql]))
    };
    psql_workload(q);
}

#[test]
fn curl_in_the_guest_reaches_an_http_server_on_the_host() {
    let env = Env::new();
    let host = env.path("http.sock");
    let _http = peers::http(&host, env.path("http.log"));
    let _agent = env.agent(&[]);
    let guest = env.path("guest/http.sock");
    let _relay = env.relay(&[(&guest, &host)], &[]);

    let g = guest.display().to_string();
    http_workload(&env, &["--unix-socket", &g], |path| {
        format!("http://guest{path}")
    });
}

/// A relay with `-R 0:TARGET` against `env`'s agent; the guest address it
/// printed (the port the agent picked, on 127.0.0.1).
fn guest_port_to(env: &Env, target: &str) -> (Relay, String) {
    let relay = Relay::start(env, &Relay::args(env, &["-R", &format!("0:{target}")]));
    let guest = relay.remote_addr(target);
    (relay, guest)
}

#[test]
fn psql_on_a_guest_tcp_port_queries_postgres_listening_on_host_tcp_only() {
    let env = Env::new();
    let pg_port = free_port();
    let _pg = peers::postgres_tcp(pg_port, env.path("pg.log"));
    let _agent = env.agent(&[]);
    let (_relay, guest) = guest_port_to(&env, &format!("127.0.0.1:{pg_port}"));
    let port = guest.strip_prefix("127.0.0.1:").unwrap();

    let psql = require_tool("psql", "postgresql-client");
    let q = |sql: &str| {
        run(Command::new(&psql).args([
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-U",
            "postgres",
            "-tAc",
            sql,
        ]))
    };
    // The server sees a TCP client from loopback: the relay's dial.
    assert_eq!(q("SELECT host(inet_client_addr())"), "127.0.0.1");
    psql_workload(q);
}

#[test]
fn redis_cli_on_a_guest_tcp_port_talks_to_redis_on_host_tcp() {
    let env = Env::new();
    let redis_port = free_port();
    let _redis = peers::redis_tcp(redis_port, env.path("redis.log"));
    let _agent = env.agent(&[]);
    let (_relay, guest) = guest_port_to(&env, &format!("localhost:{redis_port}"));
    let port = guest.strip_prefix("127.0.0.1:").unwrap();

    let cli = require_tool("redis-cli", "redis-tools");
    let at = |args: &[&str]| run(Command::new(&cli).args(["-p", port]).args(args));
    assert_eq!(at(&["PING"]), "PONG");
    assert_eq!(at(&["SET", "sockfwd", "over tcp"]), "OK");
    assert_eq!(at(&["GET", "sockfwd"]), "over tcp");
    // The value is on the host's server, read there directly.
    let direct = redis_port.to_string();
    assert_eq!(
        run(Command::new(&cli).args(["-p", &direct, "GET", "sockfwd"])),
        "over tcp"
    );
}

#[test]
fn curl_to_a_guest_tcp_port_reaches_an_http_server_on_a_host_unix_socket() {
    let env = Env::new();
    let host = env.path("http.sock");
    let _http = peers::http(&host, env.path("http.log"));
    let _agent = env.agent(&[]);
    let (_relay, guest) = guest_port_to(&env, &host.display().to_string());

    http_workload(&env, &[], |path| format!("http://{guest}{path}"));
}
