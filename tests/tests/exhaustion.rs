//! Running out of file descriptors (EMFILE) and flooding the relay's caps: the
//! daemons back off, refuse, log, keep serving, and recover when descriptors
//! are free again.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_tests::servers::{Behaviour, Server};
use sockfwd_tests::{try_request, wait_connectable, wait_until, Daemon, Env, READY_DEADLINE};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

fn forwarding_works(guest: &Path) -> bool {
    try_request(guest, b"ok?").as_deref() == Some(b"ok?".as_slice())
}

/// Holds `n` guest connections open (each has sent a byte) and returns them.
fn hold(guest: &Path, n: usize) -> Vec<UnixStream> {
    (0..n)
        .filter_map(|_| {
            let mut s = UnixStream::connect(guest).ok()?;
            s.write_all(b"x").ok()?;
            Some(s)
        })
        .collect()
}

/// CPU ticks (1/100 s) a daemon uses over two seconds of wall time.
fn ticks_over_two_seconds(d: &Daemon) -> u64 {
    let before = d.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    d.cpu_ticks() - before
}

#[test]
fn agent_out_of_descriptors_backs_off_and_recovers() {
    let env = Env::new();
    let host = env.path("host.sock");
    let _server = Server::start(&host, Behaviour::Echo);
    let args = vec![
        "--control".into(),
        env.control(),
        "--streams".into(),
        env.streams(),
    ];
    let mut agent = env.spawn_limited("sockfwd-agent", args, 48);
    wait_connectable(&env.path("control.sock"));
    let guest = env.path("guest.sock");
    let _relay = env.relay(&[(&guest, &host)], &[]);
    wait_until("forwarding", READY_DEADLINE, || {
        forwarding_works(&guest).then_some(())
    });
    let baseline = agent.fd_count();

    // Far more connections than the agent has descriptors for.
    let held = hold(&guest, 200);
    agent.wait_log("open-file limit reached: client refused");
    let ticks = ticks_over_two_seconds(&agent);
    assert!(
        ticks < 100,
        "the agent spins while out of descriptors: {ticks} ticks in 2 s"
    );
    assert!(agent.is_running(), "the agent survives EMFILE");

    drop(held);
    wait_until("forwarding to recover", READY_DEADLINE, || {
        forwarding_works(&guest).then_some(())
    });
    wait_until(
        "the agent's descriptors to return",
        Duration::from_secs(30),
        || (agent.fd_count() <= baseline).then_some(()),
    );
}

#[test]
fn relay_out_of_descriptors_refuses_and_recovers() {
    let env = Env::new();
    let host = env.path("host.sock");
    let _server = Server::start(&host, Behaviour::Echo);
    let _agent = env.agent(&[]);
    let guest = env.path("guest.sock");
    let args = vec![
        "--control".into(),
        env.control(),
        "--streams".into(),
        env.streams(),
        "--forward".into(),
        format!("{}:{}", guest.display(), host.display()),
    ];
    let mut relay = env.spawn_limited("sockfwd-relay", args, 48);
    wait_connectable(&guest);
    wait_until("forwarding", READY_DEADLINE, || {
        forwarding_works(&guest).then_some(())
    });
    let baseline = relay.fd_count();

    // 200 connections need far more than 48 descriptors: the relay's budget
    // (its total cap, clamped to what the limit carries) refuses the excess up
    // front; a descriptor that runs out anyway (EMFILE) must be survived too.
    let held = hold(&guest, 200);
    wait_until(
        "the relay to refuse for lack of descriptors",
        READY_DEADLINE,
        || {
            let logs = relay.logs();
            (logs.contains("connection limit reached") || logs.contains("Too many open files"))
                .then_some(())
        },
    );
    let ticks = ticks_over_two_seconds(&relay);
    assert!(
        ticks < 100,
        "the relay spins while out of descriptors: {ticks} ticks in 2 s"
    );
    assert!(relay.is_running(), "the relay survives EMFILE");

    drop(held);
    wait_until("forwarding to recover", READY_DEADLINE, || {
        forwarding_works(&guest).then_some(())
    });
    wait_until(
        "the relay's descriptors to return",
        Duration::from_secs(30),
        || (relay.fd_count() <= baseline).then_some(()),
    );
}

#[test]
fn relay_caps_refuse_and_count_the_excess() {
    let env = Env::new();
    let host = env.path("host.sock");
    let server = Server::start(&host, Behaviour::Echo);
    let _agent = env.agent(&[]);
    let guest = env.path("guest.sock");
    let relay = env.relay(
        &[(&guest, &host)],
        &[
            "--max-concurrent-per-forward",
            "10",
            "--max-rate-per-forward",
            "100000",
        ],
    );
    wait_until("forwarding", READY_DEADLINE, || {
        forwarding_works(&guest).then_some(())
    });
    let before = server.accepted();

    // 50 connections held open: 10 are served, the rest refused at once.
    let mut held = hold(&guest, 50);
    let mut closed = 0;
    for s in held.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(1) => {}
            _ => closed += 1,
        }
    }
    assert_eq!(closed, 40, "the excess is refused, not queued");
    assert_eq!(server.accepted() - before, 10);
    relay.wait_log("connection limit reached");
    drop(held);
    wait_until("forwarding after the flood", READY_DEADLINE, || {
        forwarding_works(&guest).then_some(())
    });
}
