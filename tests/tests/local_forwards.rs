//! Local forwards through the real agent and relay: every `-L` spec form
//! reaching a Python HTTP server in the guest role (TCP, and over a Unix
//! socket), fetched with curl on the host side; the all-or-nothing binding
//! rule; refusals closing the client's connection at once.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_tests::forwards::{self, curl, free_port, http_tcp, Relay};
use sockfwd_tests::{peers, wait_connectable, Env};
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn served_dir(env: &Env) -> std::path::PathBuf {
    forwards::served_dir(env, "www", "hello from the guest\n")
}

#[test]
fn every_local_spec_form_reaches_the_guest_service() {
    let env = Env::new();
    let guest_port = free_port();
    let _http = http_tcp(&served_dir(&env), guest_port, env.path("http.log"));
    let guest_unix = env.path("guest-http.sock");
    let _unix_http = peers::http(&guest_unix, env.path("unix-http.log"));
    let _agent = env.agent(&[]);

    let (p1, p2, p3, p4) = (free_port(), free_port(), free_port(), free_port());
    let g = guest_unix.display().to_string();
    let host_unix = env.path("host-http.sock");
    let specs = [
        format!("0:127.0.0.1:{guest_port}"),
        format!("{p1}:127.0.0.1:{guest_port}"),
        format!("127.0.0.1:{p2}:127.0.0.1:{guest_port}"),
        format!("{p3}:localhost:{guest_port}"),
        format!("{p4}:{g}"),
        format!("{}:{g}", host_unix.display()),
        format!("./rel.sock:127.0.0.1:{guest_port}"),
    ];
    let mut args = Relay::args(&env, &[]);
    for s in &specs {
        args.push("-L".into());
        args.push(s.clone());
    }
    let relay = Relay::start(&env, &args);
    // The random port is printed; so is every other listener, in order.
    let ports = relay.listening_ports(5);
    let random = ports[0];
    assert_ne!(random, 0);
    assert_eq!(&ports[1..], &[p1, p2, p3, p4]);
    let first = relay.wait_line("listening 127.0.0.1:");
    assert_eq!(
        first,
        format!("listening 127.0.0.1:{random} -> 127.0.0.1:{guest_port}")
    );
    relay.wait_line(&format!("listening {} -> {g}", host_unix.display()));
    relay.wait_line("listening ./rel.sock -> ");

    for port in [random, p1, p2, p3] {
        let body = curl(&[&format!("http://127.0.0.1:{port}/hello.txt")]).unwrap();
        assert_eq!(body, "hello from the guest\n", "port {port}");
    }
    // A guest Unix socket behind a TCP listener and behind a Unix listener.
    assert_eq!(
        curl(&[&format!("http://127.0.0.1:{p4}/tcp")]).unwrap(),
        "hello /tcp"
    );
    let h = host_unix.display().to_string();
    assert_eq!(
        curl(&["--unix-socket", &h, "http://guest/unix"]).unwrap(),
        "hello /unix"
    );
    // A relative host socket path, relative to the relay's working directory.
    let rel = env.path("rel.sock").display().to_string();
    assert_eq!(
        curl(&["--unix-socket", &rel, "http://guest/hello.txt"]).unwrap(),
        "hello from the guest\n"
    );
    // Keep-alive and an upload across the TCP-to-Unix path.
    let body = env.path("body.bin");
    std::fs::write(&body, vec![b'x'; 3 << 20]).unwrap();
    let out = curl(&[
        "--data-binary",
        &format!("@{}", body.display()),
        &format!("http://127.0.0.1:{p4}/upload"),
    ])
    .unwrap();
    assert_eq!(out, format!("got {} bytes", 3 << 20));
}

#[test]
fn one_listener_that_cannot_bind_closes_the_others_and_names_its_spec() {
    let env = Env::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let free = free_port();
    let bad = format!("{busy_port}:127.0.0.1:80");
    let args = Relay::args(
        &env,
        &[
            "-L",
            "./first.sock:127.0.0.1:80",
            "-L",
            &format!("{free}:127.0.0.1:80"),
            "-L",
            &bad,
        ],
    );
    let mut relay = Relay::start(&env, &args);
    let status = relay.daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let log = relay.daemon.logs();
    assert!(
        log.contains(&format!("-L {bad}: cannot listen on 127.0.0.1:{busy_port}")),
        "{log}"
    );
    assert!(log.contains("in use"), "{log}");
    // Nothing stays bound: not the Unix socket, not the free port, and nothing
    // was reported as listening.
    assert!(!env.path("first.sock").exists());
    std::net::TcpListener::bind(("127.0.0.1", free)).unwrap();
    assert_eq!(relay.output(), "");

    // A malformed spec is a usage error that names it.
    let mut relay = Relay::start(&env, &Relay::args(&env, &["-L", "1:host:0"]));
    assert_eq!(
        relay.daemon.wait_exit(Duration::from_secs(20)).code(),
        Some(2)
    );
    assert!(
        relay.daemon.logs().contains("1:host:0"),
        "{}",
        relay.daemon.logs()
    );
}

/// Connects to the host listener and expects it closed without a byte, fast.
fn closed_at_once(port: u16) {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn refused_and_disallowed_targets_close_the_host_connection() {
    let env = Env::new();
    let guest_port = free_port();
    let _http = http_tcp(&served_dir(&env), guest_port, env.path("http.log"));
    let nothing = free_port();
    let agent = env.agent(&[
        "--allow-target",
        &format!("127.0.0.1:{nothing}"),
        "--allow-target",
        "unix:/nonexistent/*",
    ]);
    let (a, b, c) = (free_port(), free_port(), free_port());
    let args = Relay::args(
        &env,
        &[
            "-L",
            &format!("{a}:127.0.0.1:{nothing}"),
            "-L",
            &format!("{b}:127.0.0.1:{guest_port}"),
            "-L",
            &format!("{c}:/nonexistent/x.sock"),
        ],
    );
    let relay = Relay::start(&env, &args);
    relay.listening_ports(3);
    // Nothing listens there.
    closed_at_once(a);
    agent.wait_log("connection refused by 127.0.0.1");
    // Not in --allow-target.
    closed_at_once(b);
    agent.wait_log("is not allowed by --allow-target");
    // Allowed, but no such socket.
    closed_at_once(c);
    agent.wait_log("no such socket: /nonexistent/x.sock");
    relay.daemon.wait_log("PERMISSION_DENIED");
    // The relay stays up and its streams do not pile up in the agent.
    wait_connectable(&env.path("control.sock"));
}
