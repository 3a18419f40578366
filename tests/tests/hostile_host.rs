//! A hostile or buggy host on the control channel (fault suite): what one
//! control connection, and all of them, may hold is capped, refusals are
//! RESOURCE_EXHAUSTED and logged, memory and threads stay bounded, silent
//! connections are closed at their deadline while idle ones that spoke stay,
//! and nerdbox-style hosts (one connection, one Accept stream per container)
//! keep working, each forward misrouted at most once per stream.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_proto::rpc::{
    ConnectResult, InfoRequest, ListForwardsRequest, PortEvent, WatchPortsRequest,
};
use sockfwd_tests::ttrpc_raw::{self, read_frame, request, request_flagged, Frame};
use sockfwd_tests::{wait_until, Daemon, Env, READY_DEADLINE};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A raw control connection, reads bounded by the readiness deadline.
fn control(env: &Env) -> UnixStream {
    let s = UnixStream::connect(env.path("control.sock")).unwrap();
    s.set_read_timeout(Some(READY_DEADLINE)).unwrap();
    s
}

fn accept_frames(first_id: u32, count: u32) -> Vec<u8> {
    (0..count)
        .flat_map(|i| {
            request_flagged(
                first_id + 2 * i,
                "Accept",
                &ConnectResult::new(),
                ttrpc_raw::CLIENT_STREAM,
            )
        })
        .collect()
}

/// Reads frames until `n` refusals (RESOURCE_EXHAUSTED) have come; panics on
/// any other answer.
fn read_refusals(s: &mut UnixStream, n: usize) -> Vec<String> {
    let mut messages = Vec::with_capacity(n);
    while messages.len() < n {
        let f = read_frame(s).unwrap_or_else(|e| panic!("after {} refusals: {e}", messages.len()));
        match ttrpc_raw::status(&f) {
            Some((ttrpc::Code::RESOURCE_EXHAUSTED, m)) => messages.push(m),
            other => panic!("unexpected answer {other:?} to call {}", f.id),
        }
    }
    messages
}

/// Sends an Info request on `s` and reads until its answer, returning the
/// frames read before it.
fn info_round_trip(s: &mut UnixStream, id: u32) -> Vec<Frame> {
    s.write_all(&request(id, "Info", &InfoRequest::new()))
        .unwrap();
    let mut before = Vec::new();
    loop {
        let f = read_frame(s).unwrap();
        if f.id == id {
            assert_eq!(ttrpc_raw::status(&f).map(|s| s.0), Some(ttrpc::Code::OK));
            return before;
        }
        before.push(f);
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
fn accept_streams_past_the_cap_are_refused_and_their_memory_returns() {
    let env = Env::new();
    // Per connection 256 (the default); in total 300, so a second connection
    // gets its 256 only if the first gave its streams back.
    let agent = env.agent(&["--max-streaming-calls-total", "300"]);
    let mut warm = control(&env);
    info_round_trip(&mut warm, 1);
    drop(warm);
    let base = agent.rss_kib();

    let mut s = control(&env);
    let mut writer = s.try_clone().unwrap();
    let frames = accept_frames(1, 20_000);
    let sending = std::thread::spawn(move || writer.write_all(&frames).unwrap());
    let refused = read_refusals(&mut s, 20_000 - 256);
    sending.join().unwrap();
    assert!(
        refused
            .iter()
            .all(|m| m.contains("256 streaming calls are open on this control connection")),
        "{:?}",
        refused.first()
    );
    // Still serving on that connection, 256 Accept streams open.
    assert!(
        info_round_trip(&mut s, 50_001).is_empty(),
        "nothing but refusals"
    );
    let peak = agent.rss_kib();
    eprintln!(
        "agent RSS: {:.1} MiB before, {:.1} MiB with 256 Accept streams open and 19,744 refused",
        mib(base),
        mib(peak)
    );
    assert!(
        peak < base + 16 * 1024,
        "RSS grew {:.1} MiB (bound: 16 MiB)",
        mib(peak - base)
    );
    agent.wait_log("streaming call refused: RESOURCE_EXHAUSTED");

    drop(s);
    agent.wait_log("control connection closed");
    // The streams went with the connection: a new one opens 256 again, and is
    // refused at its own cap, not the total.
    let mut again = control(&env);
    let mut writer = again.try_clone().unwrap();
    writer.write_all(&accept_frames(1, 266)).unwrap();
    let refused = read_refusals(&mut again, 10);
    assert!(
        refused
            .iter()
            .all(|m| m.contains("on this control connection")),
        "{refused:?}"
    );
    info_round_trip(&mut again, 9_999);
    drop(again);
    agent.wait_log("control connection closed");
    let after = wait_until("the agent's RSS to settle", READY_DEADLINE, || {
        let now = agent.rss_kib();
        (now < base + 8 * 1024).then_some(now)
    });
    eprintln!(
        "agent RSS after both connections closed: {:.1} MiB",
        mib(after)
    );
}

#[test]
fn answers_never_read_hold_a_bounded_number_of_requests() {
    let env = Env::new();
    let agent = env.agent(&[]);
    let mut warm = control(&env);
    info_round_trip(&mut warm, 1);
    drop(warm);
    let base = agent.rss_kib();

    let s = control(&env);
    let mut writer = s.try_clone().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    const CALLS: u32 = 100_000;
    let sending = std::thread::spawn(move || {
        for chunk in 0..CALLS / 1000 {
            let batch: Vec<u8> = (0..1000)
                .flat_map(|i| {
                    request(
                        2 * (chunk * 1000 + i) + 1,
                        "ListForwards",
                        &ListForwardsRequest::new(),
                    )
                })
                .collect();
            writer.write_all(&batch).unwrap();
            counter.fetch_add(1000, Ordering::Relaxed);
        }
    });
    // The agent answers until its socket buffer is full, then holds at most
    // --max-requests-in-flight (64) and stops reading.
    agent.wait_log("not reading the control connection until answers leave");
    let held = agent.rss_kib();
    let written = sent.load(Ordering::Relaxed);
    eprintln!(
        "agent RSS: {:.1} MiB before, {:.1} MiB with the host not reading ({written} of {CALLS} requests written)",
        mib(base),
        mib(held)
    );
    assert!(
        held < base + 16 * 1024,
        "RSS grew {:.1} MiB (bound: 16 MiB)",
        mib(held - base)
    );
    assert!(!sending.is_finished(), "the agent kept reading");

    // The host reads at last: every request is answered, none lost.
    let mut reader = s.try_clone().unwrap();
    let mut answered = 0u32;
    while answered < CALLS {
        let f = read_frame(&mut reader).unwrap();
        assert_eq!(ttrpc_raw::status(&f).map(|s| s.0), Some(ttrpc::Code::OK));
        answered += 1;
    }
    sending.join().unwrap();
    drop((s, reader));
    wait_until("the agent's RSS to settle", READY_DEADLINE, || {
        (agent.rss_kib() < base + 8 * 1024).then_some(())
    });
}

/// Threads of a process.
fn threads(d: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn watch_ports_calls_share_one_watcher() {
    let env = Env::new();
    let agent = env.agent(&[]);
    let before = threads(&agent);
    let mut s = control(&env);
    const CALLS: u32 = 200;
    let watches: Vec<u8> = (0..CALLS)
        .flat_map(|i| {
            request_flagged(
                2 * i + 1,
                "WatchPorts",
                &WatchPortsRequest::new(),
                ttrpc_raw::REMOTE_CLOSED,
            )
        })
        .collect();
    s.write_all(&watches).unwrap();
    // A listener opened now reaches every call.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = u32::from(listener.local_addr().unwrap().port());
    let mut told: HashSet<u32> = HashSet::new();
    while told.len() < CALLS as usize {
        let f = read_frame(&mut s).unwrap();
        assert_eq!(f.kind, ttrpc_raw::DATA, "{:?}", ttrpc_raw::status(&f));
        let e: PortEvent = protobuf::Message::parse_from_bytes(&f.payload).unwrap();
        if e.port == port {
            told.insert(f.id);
        }
    }
    let during = threads(&agent);
    eprintln!("agent threads: {before} before, {during} with {CALLS} WatchPorts calls");
    assert!(
        during <= before + 2,
        "{during} threads with {CALLS} calls ({before} before)"
    );
}

#[test]
fn a_silent_control_connection_is_closed_at_its_deadline_and_an_idle_one_is_not() {
    let env = Env::new();
    let agent = env.agent(&["--first-frame-timeout", "2s"]);
    let baseline = agent.fd_count();
    let mut spoke = control(&env);
    info_round_trip(&mut spoke, 1);
    let mut silent: Vec<UnixStream> = (0..50).map(|_| control(&env)).collect();
    for s in &mut silent {
        let mut byte = [0u8; 1];
        // Closed by the agent: EOF (or a reset), never data.
        assert!(!matches!(s.read(&mut byte), Ok(n) if n > 0));
    }
    agent.wait_log("no request within --first-frame-timeout; control connection closed");
    // The connection that sent a request has been idle longer than the
    // deadline by now, and still serves.
    info_round_trip(&mut spoke, 3);
    drop(silent);
    drop(spoke);
    wait_until("the agent's descriptors to return", READY_DEADLINE, || {
        (agent.fd_count() <= baseline).then_some(())
    });
}

#[test]
fn control_connections_past_the_cap_are_closed_at_once() {
    let env = Env::new();
    let agent = env.agent(&["--max-control-conns", "4"]);
    // The readiness probe's connection must be gone before counting.
    agent.wait_log("control connection closed");
    let mut held: Vec<UnixStream> = (0..4).map(|_| control(&env)).collect();
    for (i, s) in held.iter_mut().enumerate() {
        info_round_trip(s, 2 * u32::try_from(i).unwrap() + 1);
    }
    let mut fifth = control(&env);
    let mut byte = [0u8; 1];
    assert!(!matches!(fifth.read(&mut byte), Ok(n) if n > 0));
    agent.wait_log("too many control connections (--max-control-conns)");
    for s in &mut held {
        info_round_trip(s, 101);
    }
    drop(held);
    // Slots come back with the connections.
    wait_until(
        "a control connection to be served again",
        READY_DEADLINE,
        || {
            let mut s = control(&env);
            s.write_all(&request(1, "Info", &InfoRequest::new())).ok()?;
            read_frame(&mut s).ok().map(|_| ())
        },
    );
}

mod nerdbox {
    use super::*;
    use sockfwd_proto::handshake;
    use sockfwd_proto::rpc::{BindRequest, ConnectRequest, Socket, SocketForwardClient};
    use sockfwd_proto::transport::{dial, Address};
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LONG: Duration = Duration::from_secs(10);

    type Misroutes = Arc<Mutex<HashMap<(usize, String), u32>>>;

    /// An Accept stream that knows only `mine`, as a nerdbox host's stream for
    /// one container: serves it (replies `mine:` and what it read), answers
    /// `unknown forward ID` for the others and counts those.
    async fn container_stream(
        client: &SocketForwardClient,
        streams: std::path::PathBuf,
        index: usize,
        mine: &'static str,
        misroutes: Misroutes,
    ) {
        let stream = client
            .accept(ttrpc::context::Context::default())
            .await
            .unwrap();
        tokio::spawn(async move {
            let (tx, mut rx) = stream.split();
            while let Ok(req) = rx.recv().await {
                let req: ConnectRequest = req;
                let mut result = ConnectResult::new();
                result.stream_id = req.stream_id.clone();
                if req.forward_id != mine {
                    *misroutes
                        .lock()
                        .unwrap()
                        .entry((index, req.forward_id.clone()))
                        .or_default() += 1;
                    result.error = format!("unknown forward ID: {}", req.forward_id);
                    let _ = tx.send(&result).await;
                    continue;
                }
                let (tx, streams) = (tx.clone(), streams.clone());
                tokio::spawn(async move {
                    let mut s = dial(&Address::Unix(streams), LONG).await.unwrap();
                    handshake::open(&mut s, &result.stream_id, LONG)
                        .await
                        .unwrap();
                    tx.send(&result).await.unwrap();
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.unwrap();
                    s.write_all(format!("{mine}:").as_bytes()).await.unwrap();
                    s.write_all(&got).await.unwrap();
                    s.shutdown().await.unwrap();
                });
            }
        });
    }

    #[test]
    fn two_accept_streams_on_one_connection_misroute_each_forward_at_most_once() {
        let env = Env::new();
        let _agent = env.agent(&[]);
        let rt = sockfwd_tests::runtime();
        let guests = [env.path("g/f1.sock"), env.path("g/f2.sock")];
        let misroutes: Misroutes = Arc::default();
        let _client = rt.block_on(async {
            let conn = dial(&Address::Unix(env.path("control.sock")), LONG)
                .await
                .unwrap();
            let client = SocketForwardClient::new(ttrpc::r#async::Client::new(
                ttrpc::r#async::transport::Socket::new(conn),
            ));
            let mut bind = BindRequest::new();
            for (id, path) in [("f1", &guests[0]), ("f2", &guests[1])] {
                let mut s = Socket::new();
                s.forward_id = id.into();
                s.socket_path = path.display().to_string();
                bind.sockets.push(s);
            }
            client
                .bind(ttrpc::context::with_timeout(10_000_000_000), &bind)
                .await
                .unwrap();
            for (index, mine) in [(0, "f1"), (1, "f2")] {
                let streams = env.path("streams.sock");
                container_stream(&client, streams, index, mine, misroutes.clone()).await;
            }
            client
        });
        // Bursts of concurrent guest connections to both forwards.
        const PER_FORWARD: usize = 40;
        let handles: Vec<_> = (0..PER_FORWARD)
            .flat_map(|i| {
                guests.iter().enumerate().map(move |(f, path)| {
                    let path = path.clone();
                    std::thread::spawn(move || {
                        let reply = sockfwd_tests::request(&path, i.to_string().as_bytes());
                        assert_eq!(String::from_utf8(reply).unwrap(), format!("f{}:{i}", f + 1));
                    })
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let counted = misroutes.lock().unwrap().clone();
        eprintln!("misroutes per (stream, forward) over {PER_FORWARD} connections per forward: {counted:?}");
        assert!(
            counted.values().all(|&n| n <= 1) && counted.len() <= 2,
            "at most one misroute per forward per stream: {counted:?}"
        );
        drop(rt);
    }
}
