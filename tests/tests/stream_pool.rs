//! Pre-opened streams (wire-protocol 8.11) with the real binaries: that
//! connections take them (the daemons' logs name the pooled stream IDs), that
//! bytes and half-closes cross them exactly with either framing, that a relay
//! restart drops the pool without losing a connection, and that
//! `--stream-pool 0` keeps the ConnectRequest path.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sha2::{Digest, Sha256};
use sockfwd_tests::servers::{
    digest_to_eof, hex, pattern_digest, write_pattern, Behaviour, Server,
};
use sockfwd_tests::{connect, request, wait_forwarding, Daemon, Env, READY_DEADLINE};
use std::io::{Read, Write};
use std::net::Shutdown;

const MIB: u64 = 1 << 20;

fn digest_reply(tag: &str, body: &[u8]) -> String {
    format!("{tag} {} {}", body.len(), hex(&Sha256::digest(body)))
}

/// How many connections went through pooled streams, by the relay's log.
fn pooled_connections(relay_log: &str) -> usize {
    relay_log
        .lines()
        .filter(|l| l.contains("pooled{stream_id=pool_") && l.contains("relaying"))
        .count()
}

/// The agent's descriptors once the harness's readiness probes (one
/// connection to each of its sockets) are closed: counted earlier, they
/// would be in the baseline and the pool's streams might never reach it.
fn settled_fd_count(agent: &Daemon) -> usize {
    agent.wait_log("control connection closed");
    agent.wait_log("stream handshake failed");
    agent.fd_count()
}

/// Waits until the agent holds `before` plus its control connection, the
/// forward's listener and `streams` parked streams; the count it reached.
fn wait_parked(agent: &Daemon, before: usize, streams: usize, what: &str) -> usize {
    sockfwd_tests::wait_until(what, READY_DEADLINE, || {
        let n = agent.fd_count();
        (n >= before + 2 + streams).then_some(n)
    })
}

#[test]
fn pooled_connections_are_byte_exact_both_ways_and_keep_half_closes() {
    for framing in ["raw", "eof"] {
        let env = Env::new();
        let up = env.path("up.sock");
        let down = env.path("down.sock");
        let _sink = Server::start(&up, Behaviour::DigestAfterEof("sink".into()));
        let _source = Server::start(
            &down,
            Behaviour::Source {
                len: 64 * MIB,
                seed: 5,
            },
        );
        let _agent = env.agent(&[]);
        let (g_up, g_down) = (env.path("g-up.sock"), env.path("g-down.sock"));
        let relay = env.relay(&[(&g_up, &up), (&g_down, &down)], &["--framing", framing]);
        relay.wait_log("stream pool started");

        // guest -> host, 64 MiB, then the reply the server writes after EOF.
        let mut s = connect(&g_up);
        write_pattern(&mut s, 3, 64 * MIB).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert_eq!(
            reply,
            format!("sink {} {}", 64 * MIB, pattern_digest(3, 64 * MIB))
        );

        // host -> guest, 64 MiB; the server half-closes first, then drains.
        let mut s = connect(&g_down);
        let (len, digest) = digest_to_eof(&mut s).unwrap();
        assert_eq!((len, digest), (64 * MIB, pattern_digest(5, 64 * MIB)));
        s.write_all(b"after the server's EOF").unwrap();
        s.shutdown(Shutdown::Write).unwrap();

        // Small request/response exchanges, many of them.
        for i in 0..50 {
            let body = format!("request {i}");
            let reply = request(&g_up, body.as_bytes());
            assert_eq!(
                String::from_utf8(reply).unwrap(),
                digest_reply("sink", body.as_bytes())
            );
        }
        let log = relay.logs();
        assert!(
            pooled_connections(&log) >= 50,
            "{framing}: only {} connections took a pooled stream",
            pooled_connections(&log)
        );
        if framing == "eof" {
            assert!(
                log.contains("framing=EofFrames"),
                "the pool's framing is not EOF frames"
            );
        }
    }
}

#[test]
fn a_relay_restart_drops_the_pool_and_connections_keep_working() {
    for framing in ["raw", "eof"] {
        let env = Env::new();
        let host = env.path("host.sock");
        let _server = Server::start(&host, Behaviour::DigestAfterEof("host".into()));
        let agent = env.agent(&[]);
        let before = settled_fd_count(&agent);
        let guest = env.path("guest.sock");
        let flags = ["--framing", framing, "--stream-pool", "4"];
        let mut relay = env.relay(&[(&guest, &host)], &flags);
        relay.wait_log("stream pool started");
        wait_forwarding(&guest, "host");
        let pooled = wait_parked(&agent, before, 4, "4 parked streams");

        relay.signal(nix::sys::signal::Signal::SIGKILL);
        relay.wait_exit(READY_DEADLINE);
        // Its parked streams go with it: the agent closes them all.
        sockfwd_tests::wait_until(
            "the agent to close the dead relay's streams",
            READY_DEADLINE,
            || (agent.fd_count() + 4 <= pooled).then_some(()),
        );
        // Clients that come meanwhile wait (the ConnectRequest path) for the next relay.
        let waiting: Vec<_> = (0..20)
            .map(|i| {
                let guest = guest.clone();
                std::thread::spawn(move || {
                    let body = vec![u8::try_from(i).unwrap(); 100_000];
                    (request(&guest, &body), body)
                })
            })
            .collect();
        let next = env.relay(&[(&guest, &host)], &flags);
        for t in waiting {
            let (reply, body) = t.join().unwrap();
            assert_eq!(
                String::from_utf8(reply).unwrap(),
                digest_reply("host", &body)
            );
        }
        // The next relay's pool serves the connections after those.
        next.wait_log("stream pool started");
        for i in 0..20 {
            let body = format!("after {i}");
            let reply = request(&guest, body.as_bytes());
            assert_eq!(
                String::from_utf8(reply).unwrap(),
                digest_reply("host", body.as_bytes())
            );
        }
        assert!(
            pooled_connections(&next.logs()) > 0,
            "{framing}: the next relay's pool was not used"
        );
    }
}

#[test]
fn without_a_pool_every_connection_asks_with_a_connect_request() {
    let env = Env::new();
    let host = env.path("host.sock");
    let _server = Server::start(&host, Behaviour::DigestAfterEof("core".into()));
    let agent = env.agent(&[]);
    let guest = env.path("guest.sock");
    let relay = env.relay(&[(&guest, &host)], &["--stream-pool", "0"]);
    for i in 0..20 {
        let body = format!("core {i}");
        let reply = request(&guest, body.as_bytes());
        assert_eq!(
            String::from_utf8(reply).unwrap(),
            digest_reply("core", body.as_bytes())
        );
    }
    let (agent_log, relay_log) = (agent.logs(), relay.logs());
    assert!(!relay_log.contains("stream pool started"), "{relay_log}");
    assert!(!agent_log.contains("stream parked"), "a stream was parked");
    assert_eq!(pooled_connections(&relay_log), 0);
    assert!(relay_log.contains("connection{stream_id=socketfwd-"));
}

/// A relay given to an agent without the extension (an agent started with
/// --max-pooled-streams 0 grants none) keeps the core path, and says so.
#[test]
fn an_agent_that_grants_no_pool_keeps_the_core_path() {
    let env = Env::new();
    let host = env.path("host.sock");
    let _server = Server::start(&host, Behaviour::DigestAfterEof("core".into()));
    let _agent = env.agent(&["--max-pooled-streams", "0"]);
    let guest = env.path("guest.sock");
    let relay = env.relay(&[(&guest, &host)], &[]);
    relay.wait_log("the agent keeps no pre-opened streams");
    let reply = request(&guest, b"core");
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        digest_reply("core", b"core")
    );
    assert_eq!(pooled_connections(&relay.logs()), 0);
}

/// A guest client that leaves before its answer fails the agent's end of the
/// connection (its write to the client breaks), so the agent drops the
/// pooled stream rather than parking it again. The relay replaces it at once:
/// the pool is full again without waiting for a connection to miss it.
#[test]
fn a_stream_the_agent_drops_after_a_failed_client_is_replaced_at_once() {
    let env = Env::new();
    let host = env.path("host.sock");
    let _server = Server::start(&host, Behaviour::DigestAfterEof("host".into()));
    let agent = env.agent(&[]);
    let before = settled_fd_count(&agent);
    let guest = env.path("guest.sock");
    let relay = env.relay(
        &[(&guest, &host)],
        &["--framing", "eof", "--stream-pool", "4"],
    );
    relay.wait_log("stream pool started");
    wait_forwarding(&guest, "host");
    wait_parked(&agent, before, 4, "4 parked streams");
    for round in 1..=3 {
        let failed = agent.logs().matches("relay ended on an error").count();
        // The host answers only after the client's EOF, so always after the
        // client has gone: the agent's write of the answer fails.
        let mut client = connect(&guest);
        client.write_all(b"gone before the answer").unwrap();
        drop(client);
        sockfwd_tests::wait_until("the agent's end to fail", READY_DEADLINE, || {
            (agent.logs().matches("relay ended on an error").count() > failed).then_some(())
        });
        wait_parked(
            &agent,
            before,
            4,
            &format!("round {round}: 4 parked streams again"),
        );
    }
    let log = relay.logs();
    assert!(log.contains("parked stream closed by the agent"), "{log}");
    assert!(pooled_connections(&log) >= 3, "{log}");
}

/// `status --prometheus` says how many pre-opened streams are open of what
/// the agent granted; without a pool, none of none.
#[test]
fn status_shows_the_pool() {
    for (pool, want_open, want_size) in [
        (
            "3",
            "sockfwd_stream_pool_open 3",
            "sockfwd_stream_pool_size 3",
        ),
        (
            "0",
            "sockfwd_stream_pool_open 0",
            "sockfwd_stream_pool_size 0",
        ),
    ] {
        let env = Env::new();
        let host = env.path("host.sock");
        let _server = Server::start(&host, Behaviour::DigestAfterEof("host".into()));
        let _agent = env.agent(&[]);
        let guest = env.path("guest.sock");
        let admin_sock = env.path("admin.sock");
        let admin_arg = admin_sock.display().to_string();
        let flags = [
            "--framing",
            "eof",
            "--stream-pool",
            pool,
            "--admin",
            &admin_arg,
        ];
        let _relay = env.relay(&[(&guest, &host)], &flags);
        wait_forwarding(&guest, "host");
        let metrics = sockfwd_tests::wait_until("the pool's gauges", READY_DEADLINE, || {
            let text =
                sockfwd_tests::forwards::admin(&admin_sock, "status", &["--prometheus"]).ok()?;
            text.lines().any(|l| l == want_open).then_some(text)
        });
        assert!(
            metrics.contains("# TYPE sockfwd_stream_pool_open gauge"),
            "{metrics}"
        );
        assert!(metrics.lines().any(|l| l == want_size), "{metrics}");
        // The table keeps one line per forward.
        let table = sockfwd_tests::forwards::admin(&admin_sock, "status", &[]).unwrap();
        assert!(!table.contains("pool"), "{table}");
    }
}
