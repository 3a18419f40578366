//! Port notifications driving auto-forwarding: a server that starts in the
//! "guest" gets a host listener, reached with curl; when it stops, the
//! listener goes. The guest is this machine, so the host cannot take the
//! guest's own port: that is the "next free port" case, reported on stdout.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_tests::forwards::{curl, free_port, http_tcp, Relay};
use sockfwd_tests::Env;
use std::net::TcpStream;

#[test]
fn auto_forward_follows_a_server_that_starts_and_stops() {
    let env = Env::new();
    let www = env.path("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.txt"), "auto\n").unwrap();
    let _agent = env.agent(&[]);
    let guest_port = free_port();
    // Only this port: every other listener of the machine is "in the guest" too.
    let relay = Relay::start(
        &env,
        &Relay::args(&env, &["--auto-forward", &guest_port.to_string()]),
    );
    relay
        .daemon
        .wait_log("auto-forward: following the guest's TCP listeners");
    assert_eq!(relay.output(), "", "nothing listens on the port yet");

    let mut http = http_tcp(&www, guest_port, env.path("http.log"));
    let line = relay.wait_line("auto-forward 127.0.0.1:");
    // auto-forward 127.0.0.1:HOST -> 127.0.0.1:GUEST (pid PID)
    let host_port: u16 = line
        .strip_prefix("auto-forward 127.0.0.1:")
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert_ne!(host_port, guest_port, "the guest's own port is taken here");
    assert!(
        host_port > guest_port && host_port <= guest_port + 100,
        "the next free port: {line}"
    );
    assert_eq!(
        line,
        format!(
            "auto-forward 127.0.0.1:{host_port} -> 127.0.0.1:{guest_port} (pid {})",
            http.pid()
        )
    );
    relay
        .daemon
        .wait_log("the same host port is taken; using the next free one");
    assert_eq!(
        curl(&[&format!("http://127.0.0.1:{host_port}/index.txt")]).unwrap(),
        "auto\n"
    );

    http.kill();
    relay.wait_line(&format!(
        "auto-forward closed 127.0.0.1:{host_port} -> 127.0.0.1:{guest_port}"
    ));
    sockfwd_tests::wait_until(
        "the host listener to close",
        sockfwd_tests::READY_DEADLINE,
        || {
            TcpStream::connect(("127.0.0.1", host_port))
                .is_err()
                .then_some(())
        },
    );

    // The server comes back: so does the forward.
    let _http = http_tcp(&www, guest_port, env.path("http2.log"));
    sockfwd_tests::wait_until(
        "a second auto-forward",
        sockfwd_tests::READY_DEADLINE,
        || (relay.output().matches("auto-forward 127.0.0.1:").count() == 2).then_some(()),
    );
}
