//! Careful neighbours (fault suite): a daemon never takes over or deletes a
//! socket another process listens on (`-L`, `--admin`, the agent's own
//! control and stream ports), a listener that closes removes its path only
//! while the file there is still its own, and the admin socket serves only
//! root, the relay's user and `--admin-group`, whatever its file's mode.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_tests::forwards::{admin, Relay};
use sockfwd_tests::servers::{Behaviour, Server};
use sockfwd_tests::{
    bin, require_tool, wait_connectable, wait_forwarding, wait_until, Daemon, Env, READY_DEADLINE,
};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;

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

/// Runs `sockfwd-relay ARGS` as uid and gid 65534 with `groups` (setpriv, from
/// util-linux): its exit status and stderr.
fn relay_as_nobody(groups: &str, args: &[&str]) -> (bool, String) {
    let setpriv = require_tool("setpriv", "util-linux");
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid=65534", "--regid=65534"]);
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.arg(format!("--groups={groups}"));
    }
    let out = cmd.arg(bin("sockfwd-relay")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_admin_socket_refuses_other_users_even_when_its_mode_is_0666() {
    let env = Env::new();
    let _agent = env.agent(&[]);
    let admin_sock = env.path("admin.sock");
    let admin_arg = admin_sock.display().to_string();
    let relay = Relay::start(&env, &Relay::args(&env, &["--admin", &admin_arg]));
    wait_connectable(&admin_sock);
    assert_eq!(mode_of(&admin_sock), 0o600, "born with its final mode");
    // Someone opens the file and its directory to everybody: the peer check holds.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&admin_sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, stderr) = relay_as_nobody(
        "",
        &[
            "add",
            "--admin",
            &admin_arg,
            "--forward",
            "/tmp/evil.sock:/etc/shadow",
        ],
    );
    assert!(!ok, "refused");
    assert!(stderr.contains("permission denied"), "{stderr}");
    relay
        .daemon
        .wait_log("admin connection refused: permission denied");
    let logs = relay.daemon.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("admin connection refused"))
        .unwrap();
    assert!(
        line.contains("uid=65534") && line.contains("pid="),
        "{line}"
    );
    // Nothing was added; root still may use it.
    let status = admin(&admin_sock, "status", &[]).unwrap();
    assert!(!status.contains("evil"), "{status}");
}

#[test]
fn admin_group_members_may_use_the_admin_socket() {
    let env = Env::new();
    let _agent = env.agent(&[]);
    let admin_sock = env.path("admin.sock");
    let admin_arg = admin_sock.display().to_string();
    let relay = Relay::start(
        &env,
        &Relay::args(&env, &["--admin", &admin_arg, "--admin-group", "4242"]),
    );
    wait_connectable(&admin_sock);
    assert_eq!(mode_of(&admin_sock), 0o660);
    // The group is set right after the bind (connections are checked by
    // their credentials anyway).
    wait_until("the admin socket's group", READY_DEADLINE, || {
        (std::fs::metadata(&admin_sock).unwrap().gid() == 4242).then_some(())
    });
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, stderr) = relay_as_nobody("4242", &["status", "--admin", &admin_arg]);
    assert!(ok, "a member of the group: {stderr}");
    // Not a member: the file's mode alone keeps it out; made 0666, the
    // credentials check does.
    std::fs::set_permissions(&admin_sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, stderr) = relay_as_nobody("", &["status", "--admin", &admin_arg]);
    assert!(!ok && stderr.contains("permission denied"), "{stderr}");
    drop(relay);
}
