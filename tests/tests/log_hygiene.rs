//! The agent's log against a hostile host and a flood of clients, and the
//! relay's against the text of its users' specs (fault suite): what a peer or
//! a user sends is logged escaped and clipped (no forged line, no control
//! byte, bounded length), and per-connection lines are throttled with a count
//! of what was left out.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_proto::rpc::{BindRequest, Socket, SocketForwardClient};
use sockfwd_proto::transport::{dial, Address};
use sockfwd_tests::forwards::{admin, Relay};
use sockfwd_tests::{runtime, wait_connectable, wait_until, Env, READY_DEADLINE};
use std::io::{ErrorKind, Read as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A line a host tries to forge into the agent's log.
const FORGED: &str = "2026-12-01T00:00:00.000000Z  INFO sockfwd_agent: FORGED line";

async fn bind(client: &SocketForwardClient, id: &str, path: &str) -> Result<(), String> {
    let mut s = Socket::new();
    s.forward_id = id.into();
    s.socket_path = path.into();
    let mut req = BindRequest::new();
    req.sockets.push(s);
    client
        .bind(ttrpc::context::with_timeout(10_000_000_000), &req)
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

#[test]
fn what_a_host_sends_cannot_forge_or_stretch_a_log_line() {
    let env = Env::new();
    let agent = env.agent(&[]);
    let dir = env.dir.path().display();
    // A file whose name holds the forged line: a Bind through it names it.
    let trap = format!("{dir}/\n{FORGED}\u{1b}[31m");
    std::fs::write(&trap, b"not a directory").unwrap();
    let rt = runtime();
    rt.block_on(async {
        let conn = dial(&Address::Unix(env.path("control.sock")), READY_DEADLINE)
            .await
            .unwrap();
        let client = SocketForwardClient::new(ttrpc::r#async::Client::new(
            ttrpc::r#async::transport::Socket::new(conn),
        ));
        let forged = format!("\n{FORGED}\u{1b}[2J\0");
        // A forward ID with a newline, a path with the forged line, ANSI and NUL.
        bind(
            &client,
            &format!("id{forged}"),
            &format!("{dir}/a{forged}.sock"),
        )
        .await
        .unwrap_err();
        // A good ID, a path through the file named with the forged line.
        bind(&client, "ok", &format!("{trap}/x.sock"))
            .await
            .unwrap_err();
        // A socket whose path holds the line, then the same ID elsewhere: the
        // refusal names where it is bound.
        let odd = format!("{dir}/b\n{FORGED}\u{1b}[0m.sock");
        bind(&client, "odd", &odd).await.unwrap();
        bind(&client, "odd", &format!("{dir}/c.sock"))
            .await
            .unwrap_err();
        // 4,000 bytes of path.
        let long = format!("{dir}/{}", "p".repeat(4000));
        bind(&client, "long", &long).await.unwrap_err();
    });
    agent.wait_log("Bind failed");
    wait_until("four Bind failures in the log", READY_DEADLINE, || {
        (agent.logs().matches("Bind failed").count() >= 4).then_some(())
    });
    let shown = forged_only_escaped(&agent.log);
    assert!(shown > 0, "the test's Binds reached the log");
}

/// Asserts that no line of the log at `path` holds a control character,
/// starts as the forged line or is over 2 KiB, and that the forged text shows
/// only inside an escaped field; the number of lines that show it.
fn forged_only_escaped(path: &Path) -> usize {
    let log = String::from_utf8(std::fs::read(path).unwrap()).unwrap();
    let (mut shown, mut longest) = (0, 0);
    for line in log.lines() {
        longest = longest.max(line.len());
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "a control character in a log line: {line:?}"
        );
        assert!(!line.starts_with(&FORGED[..20]), "a forged line: {line:?}");
        // Wherever the forged text shows, it is inside an escaped field: its
        // line break (or ANSI line erase) is written out.
        if let Some(at) = line.find("FORGED") {
            let before = &line[..at];
            assert!(
                before.contains("\\n2026-12-01T") || before.contains("\\u{1b}[2K2026-12-01T"),
                "{line:?}"
            );
            shown += 1;
        }
        assert!(line.len() <= 2048, "{} bytes: {line}", line.len());
    }
    eprintln!(
        "{} log lines, the longest {longest} bytes",
        log.lines().count()
    );
    shown
}

#[test]
fn remote_forward_specs_cannot_forge_the_relay_s_log_lines() {
    let env = Env::new();
    let _agent = env.agent(&[]);
    let dir = env.dir.path().display();
    let admin_sock = env.path("admin.sock");
    // Host targets that do not exist, named with the forged line: every client
    // fails to reach them, and the failure names the target. (An admin request
    // is one line: the added spec erases the line with ANSI instead.)
    let (started, added) = (env.path("started.sock"), env.path("added.sock"));
    let spec = |guest: &Path, name: &str, erase: &str| {
        format!(
            "{}:{dir}/{name}{erase}{FORGED}\u{1b}[31m.sock",
            guest.display()
        )
    };
    let relay = Relay::with_admin(&env, &admin_sock, &["-R", &spec(&started, "s", "\n")]);
    let added_spec = spec(&added, "a", "\u{1b}[2K");
    admin(&admin_sock, "add", &["-R", &added_spec]).unwrap();
    for guest in [&started, &added] {
        wait_connectable(guest);
        // The agent closes the client once the relay's failure comes back.
        let mut client = UnixStream::connect(guest).unwrap();
        client.set_read_timeout(Some(READY_DEADLINE)).unwrap();
        let mut got = Vec::new();
        match client.read_to_end(&mut got) {
            Ok(_) => assert!(got.is_empty(), "no host side, yet {got:?}"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        }
    }
    wait_until("two failures in the relay's log", READY_DEADLINE, || {
        (relay.daemon.logs().matches("connection failed").count() >= 2).then_some(())
    });
    // The failures and the added forward's line, at least.
    let shown = forged_only_escaped(&relay.daemon.log);
    assert!(shown >= 3, "{shown} lines name the targets");
}

/// `field=N` values of `field` in `line`.
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_flood_of_clients_writes_a_bounded_number_of_lines() {
    let env = Env::new();
    let flood = env.path("flood.sock");
    let forward = format!("flood:{}", flood.display());
    let agent = env.agent(&[
        "--log",
        "info",
        "--forward",
        &forward,
        "--max-pending",
        "100",
        "--pending-timeout",
        "1s",
    ]);
    // The boot-time forward is bound after the control port, and its file
    // exists a moment before it listens: wait for the agent to say it is ready
    // (after its boot-time forwards) without connecting (a connection would be
    // one more refusal).
    agent.wait_log("agent ready");
    const CONNECTIONS: u64 = 5_000;
    let start = Instant::now();
    // No relay: each waits for a host until refused (over --max-pending) or its
    // deadline passes.
    for _ in 0..CONNECTIONS {
        drop(UnixStream::connect(&flood).unwrap());
    }
    // Every connection is accounted for: a line of its own, or in a count.
    // (message, throttle kind); a line counts for the first message it holds:
    // the open-file refusal says "client refused" too.
    let kinds = [
        ("open-file limit reached", "open-file limit"),
        ("client refused", "client refused"),
        ("no result from the host in time", "no result"),
    ];
    let (accounted, lines) = wait_until(
        "every refusal to be logged or counted",
        Duration::from_secs(60),
        || {
            let log = agent.logs();
            let mut accounted = 0;
            for line in log.lines() {
                for (message, kind) in kinds {
                    let summary = line.contains("similar log lines suppressed")
                        && line.contains(&format!("kind=\"{kind}\""));
                    if summary {
                        accounted += field(line, "suppressed").unwrap_or(0);
                        break;
                    }
                    if line.contains(message) {
                        accounted += 1 + field(line, "suppressed").unwrap_or(0);
                        break;
                    }
                }
            }
            (accounted >= CONNECTIONS).then(|| (accounted, log.lines().count()))
        },
    );
    let secs = start.elapsed().as_secs() + 2;
    let log = agent.logs();
    eprintln!("{CONNECTIONS} refused clients: {lines} log lines in all, over {secs} s");
    assert_eq!(accounted, CONNECTIONS, "each refusal counted once");
    assert!(log.contains("similar log lines suppressed"), "{log}");
    // 5 lines a second per kind, a summary each, plus the start-up lines.
    let bound = secs * 3 * 6 + 20;
    assert!(
        (lines as u64) < bound.min(CONNECTIONS / 5),
        "{lines} lines (bound {bound})"
    );
}

/// The relay logs the control and stream addresses it was given as fields;
/// a path holding the forged line shows escaped, not as a line of its own.
#[test]
fn the_relay_s_own_addresses_cannot_forge_its_log_lines() {
    let env = Env::new();
    let dir = env.dir.path().display();
    // Nothing listens there: the relay says where it dials, retries, gives up.
    let control = format!("unix://{dir}/c\n{FORGED}\u{1b}[31m.sock");
    let streams = format!("unix://{dir}/s\n{FORGED}.sock");
    let mut relay = env.relay_with(vec![
        "--control".into(),
        control,
        "--streams".into(),
        streams,
        "--boot-timeout".into(),
        "1s".into(),
    ]);
    relay.wait_log("dialing the agent");
    relay.wait_exit(READY_DEADLINE);
    let shown = forged_only_escaped(&relay.log);
    assert!(shown >= 1, "the control address reached the log");
}
