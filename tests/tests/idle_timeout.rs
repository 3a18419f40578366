//! Idle clients and a forward's concurrency cap (fault suite): with
//! `--idle-timeout` (or a forward's `,idle-timeout=`, on `--forward`, `-R` or
//! `-L`), a connection on which no byte moved either way for that long is
//! closed, and frees its slot; without it, nothing is closed.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_tests::forwards::{free_port, wait_tcp, Relay};
use sockfwd_tests::servers::{Behaviour, Server};
use sockfwd_tests::{connect, wait_connectable, wait_until, Env, READY_DEADLINE};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A client whose connection reached the host: one echo round. One refused
/// meanwhile is retried: a probe of the forward (`wait_connectable`) may still
/// hold a slot of its cap for a moment after it closed.
fn echoing(guest: &Path) -> UnixStream {
    wait_until("a client to reach the host", READY_DEADLINE, || {
        let mut s = connect(guest);
        alive(&mut s).then_some(s)
    })
}

/// A client of a guest TCP port whose connection reached the host: one echo
/// round.
fn echoing_tcp(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    s
}

/// A host TCP echo server on a free loopback port; its port.
fn tcp_echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let Ok(mut r) = s.try_clone() else { return };
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    port
}

/// Whether `s` is closed: a read ends with EOF or an error, never data.
fn closed(s: &mut impl Read) -> bool {
    let mut b = [0u8; 1];
    !matches!(s.read(&mut b), Ok(n) if n > 0)
}

/// Whether `s` still carries bytes both ways.
fn alive(s: &mut (impl Read + Write)) -> bool {
    let mut b = [0u8; 1];
    s.write_all(b"y").is_ok() && s.read_exact(&mut b).is_ok()
}

/// The cap (2 per forward) is full: a third client is refused.
fn refused_at_the_cap(guest: &Path) {
    let mut third = connect(guest);
    let _ = third.write_all(b"z");
    assert!(closed(&mut third), "a third client got through a cap of 2");
}

#[test]
fn idle_clients_are_closed_after_the_timeout_and_free_the_forward_s_cap() {
    let env = Env::new();
    let host = env.path("host.sock");
    let _server = Server::start(&host, Behaviour::Echo);
    let _agent = env.agent(&[]);
    let guest = env.path("guest.sock");
    // A local forward too: a host listener reaching the echo server "in the guest".
    let local = env.path("local.sock");
    let spec = format!("{}:{}", local.display(), host.display());
    let relay = env.relay(
        &[(&guest, &host)],
        &[
            "--max-concurrent-per-forward",
            "2",
            // Long enough for the two idle clients to still hold the cap
            // when the third is refused, on a loaded machine too.
            "--idle-timeout",
            "3s",
            "-L",
            &spec,
        ],
    );
    wait_connectable(&local);
    let mut idle = [echoing(&guest), echoing(&guest), echoing(&local)];
    refused_at_the_cap(&guest);
    for s in &mut idle {
        assert!(closed(s), "an idle client was not closed");
    }
    // Their slots are free again.
    let mut fresh = wait_until("a new client to get through", READY_DEADLINE, || {
        let mut s = connect(&guest);
        alive(&mut s).then_some(s)
    });
    assert!(alive(&mut fresh));
    drop(relay);
}

#[test]
fn a_forward_s_own_idle_timeout_closes_its_clients_only() {
    let env = Env::new();
    let host = env.path("host.sock");
    let _server = Server::start(&host, Behaviour::Echo);
    let _agent = env.agent(&[]);
    let (timed, plain) = (env.path("timed.sock"), env.path("plain.sock"));
    let _relay = env.relay_with(vec![
        "--control".into(),
        env.control(),
        "--streams".into(),
        env.streams(),
        "--max-concurrent-per-forward".into(),
        "2".into(),
        "--forward".into(),
        format!("{}:{},idle-timeout=1s", timed.display(), host.display()),
        "--forward".into(),
        format!("{}:{}", plain.display(), host.display()),
    ]);
    wait_connectable(&timed);
    wait_connectable(&plain);
    let mut kept = [echoing(&plain), echoing(&plain)];
    let mut idle = [echoing(&timed), echoing(&timed)];
    refused_at_the_cap(&plain);
    for s in &mut idle {
        assert!(
            closed(s),
            "an idle client of the timed forward was not closed"
        );
    }
    // Well past the other forward's timeout: the forward without one keeps
    // its idle clients, and its cap stays full.
    std::thread::sleep(Duration::from_secs(2));
    for s in &mut kept {
        assert!(
            alive(s),
            "a client of a forward without an idle timeout was closed"
        );
    }
    refused_at_the_cap(&plain);
    assert!(alive(&mut echoing(&timed)));
}

#[test]
fn an_r_spec_s_idle_timeout_closes_its_guest_tcp_clients_only() {
    let env = Env::new();
    let echo = tcp_echo();
    let _agent = env.agent(&[]);
    let (timed, plain) = (free_port(), free_port());
    let (timed_spec, plain_spec) = (
        format!("{timed}:127.0.0.1:{echo},idle-timeout=1s"),
        format!("{plain}:127.0.0.1:{echo}"),
    );
    let args = Relay::args(&env, &["-R", &timed_spec, "-R", &plain_spec]);
    let relay = Relay::start(&env, &args);
    relay.daemon.wait_log("relay ready");
    wait_tcp(timed);
    wait_tcp(plain);
    let mut kept = echoing_tcp(plain);
    let mut idle = echoing_tcp(timed);
    assert!(
        closed(&mut idle),
        "an idle client of the -R forward with an idle timeout was not closed"
    );
    // Well past the other forward's timeout: its idle client is still open.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        alive(&mut kept),
        "a client of an -R forward without an idle timeout was closed"
    );
    assert!(alive(&mut echoing_tcp(timed)));
}
