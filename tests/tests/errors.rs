//! Refusals: a forward the relay doesn't own, a host socket that isn't there,
//! and Bind requests the agent must refuse with a message naming the path.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_proto::rpc::{self, SocketForward};
use sockfwd_tests::servers::{Behaviour, Server};
use sockfwd_tests::{connect, request, runtime, wait_connectable, Env};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A fake agent: on Accept it raises one ConnectRequest for a forward the relay
/// never configured, and reports the relay's answer.
struct FakeAgent {
    results: mpsc::UnboundedSender<rpc::ConnectResult>,
}

#[async_trait::async_trait]
impl SocketForward for FakeAgent {
    async fn bind(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _req: rpc::BindRequest,
    ) -> ttrpc::Result<protobuf::well_known_types::empty::Empty> {
        Ok(Default::default())
    }

    async fn accept(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        mut stream: ttrpc::r#async::ServerStream<rpc::ConnectRequest, rpc::ConnectResult>,
    ) -> ttrpc::Result<()> {
        let req = rpc::ConnectRequest {
            stream_id: "socketfwd-1-AAAAAA".into(),
            forward_id: "not-mine".into(),
            ..Default::default()
        };
        stream.send(&req).await?;
        while let Some(result) = stream.recv().await? {
            let _ = self.results.send(result);
        }
        Ok(())
    }
}

#[test]
fn relay_refuses_a_forward_it_does_not_own_without_opening_a_stream() {
    let env = Env::new();
    let rt = runtime();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let control = env.path("control.sock");
    let streams = env.path("streams.sock");
    let stream_listener = std::os::unix::net::UnixListener::bind(&streams).unwrap();
    stream_listener.set_nonblocking(true).unwrap();
    let _server = rt.block_on(async {
        let service = rpc::create_socket_forward(Arc::new(FakeAgent { results: tx }));
        let mut server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", control.display()))
            .unwrap()
            .register_service(service);
        server.start().await.unwrap();
        server
    });
    let host = env.path("host.sock");
    let _relay = env.relay_with(vec![
        "--control".into(),
        env.control(),
        "--streams".into(),
        env.streams(),
        "--forward".into(),
        format!("/run/x/mine.sock:{}", host.display()),
    ]);
    let result = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), rx.recv()).await })
        .expect("the relay answers within 20 s")
        .expect("a result");
    assert_eq!(result.stream_id, "socketfwd-1-AAAAAA");
    assert_eq!(result.error, "unknown forward ID: not-mine");
    // The guest's forward_id never made the relay dial anything.
    assert!(
        stream_listener.accept().is_err(),
        "no stream connection was opened"
    );
}

#[test]
fn missing_host_socket_closes_the_guest_connection_promptly_and_the_agent_keeps_serving() {
    let env = Env::new();
    let good = env.path("good.sock");
    let _server = Server::start(&good, Behaviour::DigestAfterEof("fine".into()));
    let _agent = env.agent(&[]);
    let (g_missing, g_good) = (env.path("gm.sock"), env.path("gg.sock"));
    let relay = env.relay(
        &[(&g_missing, &env.path("absent.sock")), (&g_good, &good)],
        &[],
    );

    let start = Instant::now();
    let mut s = connect(&g_missing);
    let mut buf = Vec::new();
    let n = s.read_to_end(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "nothing arrives on a failed forward");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "closed promptly, took {:?}",
        start.elapsed()
    );
    relay.wait_log("failed to dial host socket");

    let r = String::from_utf8(request(&g_good, b"x")).unwrap();
    assert!(r.starts_with("fine 1 "), "{r}");
}

async fn bind(
    client: &rpc::SocketForwardClient,
    sockets: &[(&str, &str)],
) -> ttrpc::Result<protobuf::well_known_types::empty::Empty> {
    let req = rpc::BindRequest {
        sockets: sockets
            .iter()
            .map(|(id, path)| rpc::Socket {
                forward_id: id.to_string(),
                socket_path: path.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    client
        .bind(ttrpc::context::with_timeout(5_000_000_000), &req)
        .await
}

fn status_of(err: ttrpc::Error) -> ttrpc::proto::Status {
    match err {
        ttrpc::Error::RpcStatus(s) => s,
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

#[test]
fn bind_errors_name_the_path_and_undo_the_call() {
    let env = Env::new();
    let _agent = env.agent(&[]);
    let rt = runtime();
    let blocker = env.path("regular-file");
    std::fs::write(&blocker, b"keep me").unwrap();
    let good = env.path("made/ok.sock");
    rt.block_on(async {
        let client = ttrpc::r#async::Client::connect(&env.control())
            .await
            .unwrap();
        let client = rpc::SocketForwardClient::new(client);

        let err = status_of(
            bind(&client, &[("f1", "relative/x.sock")])
                .await
                .unwrap_err(),
        );
        assert_eq!(err.code(), ttrpc::proto::Code::UNKNOWN);
        assert!(
            err.message()
                .starts_with("binding socket forward listener at relative/x.sock: "),
            "{}",
            err.message()
        );

        // One good socket then a bad one: the call fails and the good one is removed.
        let good_s = good.display().to_string();
        let blocker_s = blocker.display().to_string();
        let err = status_of(
            bind(&client, &[("f2", &good_s), ("f3", &blocker_s)])
                .await
                .unwrap_err(),
        );
        assert!(
            err.message()
                .starts_with(&format!("binding socket forward listener at {blocker_s}: ")),
            "{}",
            err.message()
        );
        assert!(
            !good.exists(),
            "the socket created by the failed call was removed"
        );
        assert_eq!(
            std::fs::read(&blocker).unwrap(),
            b"keep me",
            "the file in the way is untouched"
        );

        // Binding the same forward to the same path twice is a no-op success.
        bind(&client, &[("f2", &good_s)]).await.unwrap();
        bind(&client, &[("f2", &good_s)]).await.unwrap();
    });
    wait_connectable(&good);
}
