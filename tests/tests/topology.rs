//! Both control topologies, reconnection after a relay restart, and routing with
//! two relays (two Accept streams) sharing one agent.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_tests::servers::{Behaviour, Server};
use sockfwd_tests::{request, wait_connectable, Env};

fn reply(path: &std::path::Path, body: &str) -> String {
    String::from_utf8(request(path, body.as_bytes())).unwrap()
}

fn tag_of(reply: &str) -> &str {
    reply.split(' ').next().unwrap_or("")
}

#[test]
fn agent_dials_the_relay_and_redials_after_the_relay_restarts() {
    let env = Env::new();
    let host = env.path("host.sock");
    let _server = Server::start(&host, Behaviour::DigestAfterEof("host".into()));
    let listen = format!("unix://{}", env.path("hostctl.sock").display());
    let guest = env.path("guest.sock");
    let relay_args = || {
        vec![
            "--control-listen".to_string(),
            listen.clone(),
            "--streams".into(),
            env.streams(),
            "--forward".into(),
            format!("{}:{}", guest.display(), host.display()),
        ]
    };
    let mut relay = env.relay_with(relay_args());
    wait_connectable(&env.path("hostctl.sock"));
    let _agent = env.agent_with(vec![
        "--control-dial".into(),
        listen.clone(),
        "--streams".into(),
        env.streams(),
    ]);
    wait_connectable(&guest);
    assert_eq!(tag_of(&reply(&guest, "first")), "host");

    relay.kill();
    let _relay2 = env.relay_with(relay_args());
    // The agent redials the new relay, which binds again (same forward, same path:
    // a no-op for the listener) and reopens Accept.
    sockfwd_tests::wait_until(
        "forwarding to work after the relay restart",
        sockfwd_tests::READY_DEADLINE,
        || {
            let s = sockfwd_tests::connect(&guest);
            drop(s);
            let r = request(&guest, b"again");
            (tag_of(&String::from_utf8_lossy(&r)) == "host").then_some(())
        },
    );
}

#[test]
fn two_relays_each_get_only_their_own_forwards() {
    let env = Env::new();
    let (host_a, host_b) = (env.path("a.sock"), env.path("b.sock"));
    let _a = Server::start(&host_a, Behaviour::DigestAfterEof("A".into()));
    let _b = Server::start(&host_b, Behaviour::DigestAfterEof("B".into()));
    let _agent = env.agent(&[]);
    let (guest_a, guest_b) = (env.path("ga.sock"), env.path("gb.sock"));
    let _relay_a = env.relay(&[(&guest_a, &host_a)], &[]);
    let _relay_b = env.relay(&[(&guest_b, &host_b)], &[]);

    // The reference sends each request to whichever Accept stream reads first, so
    // about half of these would reach the relay that doesn't know the forward.
    for i in 0..100 {
        let (guest, want) = if i % 2 == 0 {
            (&guest_a, "A")
        } else {
            (&guest_b, "B")
        };
        let r = reply(guest, &format!("req {i}"));
        assert_eq!(tag_of(&r), want, "request {i} got {r:?}");
    }
}

#[test]
fn the_relay_asks_the_real_agent_s_extensions_once_per_session() {
    let env = Env::new();
    let _agent = env.agent(&[]);
    let relay = env.relay(&[], &[]);
    relay.wait_log("relay ready");
    let logs = relay.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("agent capabilities"))
        .collect();
    assert_eq!(lines.len(), 1, "{logs}");
    let version = format!("agent=sockfwd-agent {}", env!("CARGO_PKG_VERSION"));
    assert!(lines[0].contains(&version), "{}", lines[0]);
    for name in sockfwd_proto::info::SUPPORTED {
        assert!(lines[0].contains(name), "{name} in {}", lines[0]);
    }
}
