//! Runtime control through the relay's admin socket: add and remove forwards
//! in both directions, unbind with a connection still open, and the counters
//! (table and Prometheus text, the relay's and the agent's) matching the
//! traffic sent.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_tests::forwards::{admin, metric, Relay};
use sockfwd_tests::servers::{Behaviour, Server};
use sockfwd_tests::{connect, request, wait_connectable, wait_until, Env, READY_DEADLINE};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::PermissionsExt as _;

fn echo_round(s: &mut (impl Read + Write), msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn unbind_closes_the_listener_and_leaves_open_connections_running() {
    let env = Env::new();
    let host = env.path("host.sock");
    let _server = Server::start(&host, Behaviour::Echo);
    let _agent = env.agent(&[]);
    let guest = env.path("guest/echo.sock");
    let admin_sock = env.path("admin.sock");
    let spec = format!("echo={}:{}", guest.display(), host.display());
    let relay = Relay::start(
        &env,
        &Relay::args(
            &env,
            &[
                "--forward",
                &spec,
                "--admin",
                &admin_sock.display().to_string(),
            ],
        ),
    );
    wait_connectable(&guest);
    wait_connectable(&admin_sock);
    let mode = std::fs::metadata(&admin_sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut open = connect(&guest);
    echo_round(&mut open, b"before");
    assert_eq!(
        admin(&admin_sock, "remove", &["echo"]).unwrap(),
        "removed forward echo\n"
    );
    // The listener and its file are gone by the time remove answers.
    assert!(!guest.exists());
    // The connection accepted before still works, both ways, to its end.
    echo_round(&mut open, b"after the unbind");
    open.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // Removing it again names it.
    let err = admin(&admin_sock, "remove", &["echo"]).unwrap_err();
    assert!(err.contains("no forward or listener \"echo\""), "{err}");
    drop(relay);
}

#[test]
fn forwards_are_added_and_removed_at_runtime_in_both_directions() {
    let env = Env::new();
    let host = env.path("host.sock");
    let _server = Server::start(&host, Behaviour::Echo);
    let _agent = env.agent(&[]);
    let admin_sock = env.path("admin.sock");
    let relay = Relay::start(
        &env,
        &Relay::args(&env, &["--admin", &admin_sock.display().to_string()]),
    );
    relay.daemon.wait_log("relay ready");

    // A remote forward.
    let guest = env.path("g/added.sock");
    let spec = format!("{}:{}", guest.display(), host.display());
    let out = admin(&admin_sock, "add", &["--forward", &spec]).unwrap();
    assert!(out.starts_with("forward "), "{out}");
    wait_connectable(&guest);
    assert_eq!(request(&guest, b"ping"), b"ping");

    // A local forward: a random port to the guest's echo socket.
    let out = admin(
        &admin_sock,
        "add",
        &["-L", &format!("0:{}", host.display())],
    )
    .unwrap();
    // local-1 listening 127.0.0.1:PORT -> /path
    let port: u16 = out
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.rsplit(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(out.starts_with("local-1 listening 127.0.0.1:"), "{out}");
    relay.wait_line(&format!("listening 127.0.0.1:{port} -> {}", host.display()));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    echo_round(&mut s, b"over tcp");
    drop(s);

    let table = admin(&admin_sock, "status", &[]).unwrap();
    assert!(table.starts_with("DIRECTION"), "{table}");
    assert!(table.contains("host_to_guest  relay  local-1"), "{table}");

    // A spec that cannot bind is refused with its reason, nothing added.
    let err = admin(&admin_sock, "add", &["-L", &format!("{port}:127.0.0.1:1")]).unwrap_err();
    assert!(err.contains("in use"), "{err}");
    let err = admin(&admin_sock, "add", &["-L", "nonsense"]).unwrap_err();
    assert!(err.contains("invalid -L \"nonsense\""), "{err}");

    // Removal by spec (a remote forward) and by ID (a local forward).
    assert!(admin(&admin_sock, "remove", &[&spec])
        .unwrap()
        .starts_with("removed forward"));
    assert!(!guest.exists());
    assert_eq!(
        admin(&admin_sock, "remove", &["local-1"]).unwrap(),
        "removed local-1\n"
    );
    wait_until("the host listener to close", READY_DEADLINE, || {
        TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    });
}

#[test]
fn counters_match_the_traffic_sent() {
    let env = Env::new();
    let host = env.path("host.sock");
    let _server = Server::start(&host, Behaviour::Echo);
    let _agent = env.agent(&[]);
    let admin_sock = env.path("admin.sock");
    let guest = env.path("guest/echo.sock");
    let spec = format!("echo={}:{}", guest.display(), host.display());
    let relay = Relay::start(
        &env,
        &Relay::args(
            &env,
            &[
                "--forward",
                &spec,
                "-L",
                &format!("0:{}", host.display()),
                "--admin",
                &admin_sock.display().to_string(),
            ],
        ),
    );
    let port = relay.listening_ports(1)[0];
    // Not a probe through the forward: it would count as a connection.
    relay.daemon.wait_log("relay ready");

    // The remote forward: 3 connections of 1000, 2000, 3000 bytes, echoed back.
    for n in [1000usize, 2000, 3000] {
        assert_eq!(request(&guest, &vec![7u8; n]).len(), n);
    }
    // The local forward: 2 connections of 5000 and 7000 bytes.
    for n in [5000usize, 7000] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&vec![9u8; n]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), n);
    }
    // Byte counts land when a relay ends; wait for the last one.
    let text = wait_until("the counters to settle", READY_DEADLINE, || {
        let t = admin(&admin_sock, "status", &["--prometheus"]).ok()?;
        let done = metric(&t, "sockfwd_bytes_to_host_total", "relay", "echo") == Some(6000)
            && metric(&t, "sockfwd_bytes_to_guest_total", "relay", "local-1") == Some(12000)
            && metric(&t, "sockfwd_bytes_to_host_total", "agent", "echo") == Some(6000);
        done.then_some(t)
    });
    let want = [
        ("sockfwd_connections_total", "relay", "echo", 3),
        ("sockfwd_connections_failed_total", "relay", "echo", 0),
        ("sockfwd_connections_refused_total", "relay", "echo", 0),
        ("sockfwd_connections_active", "relay", "echo", 0),
        ("sockfwd_bytes_to_guest_total", "relay", "echo", 6000),
        ("sockfwd_connections_total", "agent", "echo", 3),
        ("sockfwd_bytes_to_guest_total", "agent", "echo", 6000),
        ("sockfwd_connections_total", "relay", "local-1", 2),
        ("sockfwd_connections_failed_total", "relay", "local-1", 0),
        ("sockfwd_bytes_to_host_total", "relay", "local-1", 12000),
    ];
    for (m, side, id, v) in want {
        assert_eq!(
            metric(&text, m, side, id),
            Some(v),
            "{m} {side} {id}\n{text}"
        );
    }
    let table = admin(&admin_sock, "status", &[]).unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with("host_to_guest  relay  local-1"))
        .unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // ... ACTIVE TOTAL REFUSED FAILED TO_GUEST TO_HOST
    assert_eq!(
        &cols[cols.len() - 6..],
        ["0", "2", "0", "0", "12000", "12000"],
        "{table}"
    );
}
