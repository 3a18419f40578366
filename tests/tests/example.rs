//! The library's example (`host-relay/examples/forward_and_fetch.rs`) run as
//! its docs say, `forward_and_fetch CONTROL_ADDR STREAMS_ADDR GUEST_TARGET`,
//! against a real agent and an HTTP server in the guest role.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_tests::forwards::{free_port, http_tcp};
use sockfwd_tests::{bin_dir, Env};
use std::process::Command;

#[test]
fn forward_and_fetch_prints_what_its_docs_say() {
    // `cargo test` and nextest build the examples with the tests; the docs'
    // `cargo run --example` would rebuild in the middle of the test run.
    let example = bin_dir().join("examples/forward_and_fetch");
    assert!(
        example.exists(),
        "{} not found: build it with `cargo build -p sockfwd-relay --examples` (the README's test command does)",
        example.display()
    );
    let env = Env::new();
    let www = env.path("www");
    std::fs::create_dir(&www).unwrap();
    let port = free_port();
    let _http = http_tcp(&www, port, env.path("http.log"));
    let agent = env.agent(&[]);
    let target = format!("127.0.0.1:{port}");

    let out = Command::new(&example)
        .args([env.control(), env.streams(), target.clone()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the example failed: {}\n{stdout}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.logs()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let listening = lines[0].strip_prefix("listening 127.0.0.1:").unwrap();
    let (host_port, remote) = listening.split_once(" -> ").unwrap();
    assert!(host_port.parse::<u16>().unwrap() > 0, "{stdout}");
    assert_eq!(remote, target);
    assert_eq!(lines[1], "through the listener: HTTP/1.0 200 OK");
    assert_eq!(lines[2], "raw connection: HTTP/1.0 200 OK");
}
