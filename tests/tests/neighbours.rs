//! Careful neighbours (fault suite): a daemon never takes over or deletes a
//! socket another process listens on (`-L`, `--admin`, the agent's own
//! control and stream ports), and a listener that closes removes its path
//! only while the file there is still its own.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_tests::reverse::Relay;
use sockfwd_tests::servers::{Behaviour, Server};
use sockfwd_tests::{wait_connectable, wait_forwarding, Daemon, Env, READY_DEADLINE};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// A listener of this test process: "another process" to the daemons.
fn foreign(path: &Path) -> UnixListener {
    UnixListener::bind(path).unwrap()
}

/// The foreign listener still owns its path: a client reaches it.
fn still_served_by(listener: &UnixListener, path: &Path) {
    let _client = UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("{} no longer reaches its listener: {e}", path.display()));
    listener.set_nonblocking(false).unwrap();
    listener.accept().unwrap();
}

fn fails_naming(daemon: &mut Daemon, path: &Path) -> i32 {
    let status = daemon.wait_exit(READY_DEADLINE);
    let logs = daemon.logs();
    assert!(
        logs.contains(&path.display().to_string())
            && logs.contains("another process is listening on it"),
        "the error names the path in use: {logs}"
    );
    status.code().unwrap_or(-1)
}

#[test]
fn a_local_forward_does_not_take_over_a_socket_in_use() {
    let env = Env::new();
    let _agent = env.agent(&[]);
    let taken = env.path("other.sock");
    let other = foreign(&taken);
    let spec = format!("{}:127.0.0.1:9", taken.display());
    let mut relay = Relay::start(&env, &Relay::args(&env, &["-L", &spec]));
    assert_ne!(fails_naming(&mut relay.daemon, &taken), 0);
    still_served_by(&other, &taken);
}

#[test]
fn the_admin_socket_does_not_take_over_a_socket_in_use() {
    let env = Env::new();
    let _agent = env.agent(&[]);
    let taken = env.path("admin.sock");
    let other = foreign(&taken);
    let admin = taken.display().to_string();
    let mut relay = Relay::start(&env, &Relay::args(&env, &["--admin", &admin]));
    assert_ne!(fails_naming(&mut relay.daemon, &taken), 0);
    still_served_by(&other, &taken);
}

#[test]
fn a_second_agent_on_the_same_paths_exits_2_and_the_first_keeps_serving() {
    let env = Env::new();
    let host = env.path("host.sock");
    let _server = Server::start(&host, Behaviour::DigestAfterEof("host".into()));
    let _first = env.agent(&[]);
    let guest = env.path("guest.sock");
    let _relay = env.relay(&[(&guest, &host)], &[]);
    wait_forwarding(&guest, "host");

    let mut second = env.agent_with(vec![
        "--control".into(),
        env.control(),
        "--streams".into(),
        env.streams(),
    ]);
    let code = fails_naming(&mut second, &env.path("streams.sock"));
    assert_eq!(code, 2, "{}", second.logs());
    // Both paths are still the first agent's, and forwarding goes on.
    wait_connectable(&env.path("control.sock"));
    wait_connectable(&env.path("streams.sock"));
    wait_forwarding(&guest, "host");
}

#[test]
fn a_closing_listener_leaves_a_file_that_is_no_longer_its_own() {
    let env = Env::new();
    let mut agent = env.agent(&[]);
    let control = env.path("control.sock");
    // Someone replaces the agent's control socket with their own.
    std::fs::remove_file(&control).unwrap();
    let other = foreign(&control);
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(READY_DEADLINE).success());
    still_served_by(&other, &control);
    // Its own file, still in place, is removed.
    assert!(!env.path("streams.sock").exists());
}
