//! Pre-opened streams (wire-protocol 8.11), the agent's side: the agent
//! library over Unix sockets, driven by a fake host built on the ttrpc client
//! that starts a pool, opens pooled streams and plays the relay's part on
//! them (header, verdict), with the ConnectRequest path as the fallback.

#[cfg(test)]
mod harness;

#[cfg(test)]
mod stream_pool {
    use crate::harness::{Agent, LONG, LONG_NANOS};
    use sockfwd_proto::framing::Framing;
    use sockfwd_proto::handshake::{self, HandshakeError};
    use sockfwd_proto::relay::{relay_stream, RelayConfig};
    use sockfwd_proto::rpc::{
        BindRequest, ConnectRequest, ConnectResult, ConnectTargetRequest, ForwardInfo,
        ListForwardsRequest, Socket, SocketForwardClient, StreamPoolRequest,
    };
    use sockfwd_proto::stream_pool::{self, read_header, write_verdict};
    use sockfwd_proto::transport::{dial, Address, Stream};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    /// The fake relay of this file on a new control connection.
    trait HostOf {
        async fn host(&self) -> Host;
    }

    impl HostOf for Agent {
        async fn host(&self) -> Host {
            let s = self.dial_control().await;
            let fd = std::os::fd::AsFd::as_fd(&s).try_clone_to_owned().unwrap();
            let cut = std::os::unix::net::UnixStream::from(fd);
            let socket = ttrpc::r#async::transport::Socket::new(s);
            Host {
                client: SocketForwardClient::new(ttrpc::r#async::Client::new(socket)),
                cut,
                streams: self.streams.clone(),
            }
        }
    }

    /// The fake relay.
    struct Host {
        client: SocketForwardClient,
        /// A second handle on the control connection, to cut it like a crash.
        cut: std::os::unix::net::UnixStream,
        streams: PathBuf,
    }

    fn ctx() -> ttrpc::context::Context {
        ttrpc::context::with_timeout(LONG_NANOS)
    }

    impl Host {
        async fn bind(&self, id: &str, path: &Path) {
            let req = BindRequest {
                sockets: vec![Socket {
                    forward_id: id.into(),
                    socket_path: path.to_str().unwrap().into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            self.client.bind(ctx(), &req).await.unwrap();
        }

        async fn pool(&self, token: &str, framing: Framing, max: u32) -> ttrpc::Result<u32> {
            let req = StreamPoolRequest {
                token: token.into(),
                framing: framing.wire(),
                max,
                ..Default::default()
            };
            self.client.stream_pool(ctx(), &req).await.map(|r| r.max)
        }

        /// Opens a stream with the section-6 handshake.
        async fn open(&self, id: &str) -> Result<Stream, HandshakeError> {
            let mut s = dial(&Address::Unix(self.streams.clone()), LONG)
                .await
                .unwrap();
            handshake::open(&mut s, id, LONG).await.map(|()| s)
        }

        /// Opens an Accept stream; each request arrives on the channel
        /// returned, and the test answers through `Answers`.
        async fn accept(&self) -> (mpsc::UnboundedReceiver<ConnectRequest>, Answers) {
            let stream = self
                .client
                .accept(ttrpc::context::Context::default())
                .await
                .unwrap();
            let (tx, mut rx) = stream.split();
            let (req_tx, requests) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Ok(req) = rx.recv().await {
                    let _ = req_tx.send(req);
                }
            });
            (requests, Answers(Arc::new(tx)))
        }

        /// The first forward's entry in `ListForwards`, once `ready` holds.
        async fn forward_when(&self, ready: impl Fn(&ForwardInfo) -> bool) -> ForwardInfo {
            let deadline = tokio::time::Instant::now() + LONG;
            loop {
                let list = self
                    .client
                    .list_forwards(ctx(), &ListForwardsRequest::new())
                    .await
                    .unwrap();
                let f = list.forwards[0].clone();
                if ready(&f) {
                    return f;
                }
                assert!(tokio::time::Instant::now() < deadline, "never: {f:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        fn crash(&self) {
            self.cut.shutdown(std::net::Shutdown::Both).unwrap();
        }
    }

    struct Answers(Arc<ttrpc::r#async::CSSender<ConnectResult>>);

    impl Answers {
        async fn send(&self, stream_id: &str, error: &str) {
            let r = ConnectResult {
                stream_id: stream_id.into(),
                error: error.into(),
                ..Default::default()
            };
            self.0.send(&r).await.unwrap();
        }
    }

    /// Plays the target behind the relay on an accepted stream: reads the
    /// client's bytes to their end through a relay with `framing`, then
    /// answers `reply:` and what it read. Returns what it read.
    async fn serve_target(stream: Stream, framing: Framing) -> Vec<u8> {
        serve_target_and_keep(stream, framing).await.0
    }

    /// [`serve_target`], handing the stream back once the relay over it ended.
    async fn serve_target_and_keep(stream: Stream, framing: Framing) -> (Vec<u8>, Stream) {
        let (local, mut target) = UnixStream::pair().unwrap();
        let local = Stream::from_unix(local).unwrap();
        let relay = tokio::spawn(async move {
            relay_stream(&local, &stream, framing, &RelayConfig::default())
                .await
                .map(|_| stream)
        });
        let mut got = Vec::new();
        timeout(LONG, target.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        target.write_all(b"reply:").await.unwrap();
        target.write_all(&got).await.unwrap();
        drop(target);
        let stream = timeout(LONG, relay).await.unwrap().unwrap().unwrap();
        (got, stream)
    }

    /// A guest process: sends `msg` in two writes, half-closes, reads the reply.
    fn client(path: &Path, msg: Vec<u8>) -> JoinHandle<Vec<u8>> {
        let path = path.to_path_buf();
        tokio::spawn(async move {
            let mut s = UnixStream::connect(&path).await.unwrap();
            let (a, b) = msg.split_at(msg.len().min(100));
            s.write_all(a).await.unwrap();
            s.write_all(b).await.unwrap();
            s.shutdown().await.unwrap();
            let mut reply = Vec::new();
            let _ = timeout(LONG, s.read_to_end(&mut reply)).await.unwrap();
            reply
        })
    }

    fn payload(len: u32) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    const TOKEN: &str = "pool_testtesttesttest";

    #[tokio::test]
    async fn a_client_over_a_pooled_stream_is_byte_exact_and_keeps_its_half_close() {
        for framing in [Framing::Raw, Framing::EofFrames] {
            let agent = Agent::start(|_| {}).await;
            let host = agent.host().await;
            let path = agent.path("f.sock");
            host.bind("f", &path).await;
            let (mut requests, _answers) = host.accept().await;
            assert_eq!(host.pool(TOKEN, framing, 4).await.unwrap(), 4);
            let stream = host.open(&format!("{TOKEN}-1")).await.unwrap();

            let msg = payload(2_000_000);
            let guest = client(&path, msg.clone());
            let forward = timeout(LONG, read_header(&stream, LONG))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(forward, "f");
            write_verdict(&stream, "", LONG).await.unwrap();
            let (got, stream) = serve_target_and_keep(stream, framing).await;
            assert!(got == msg, "{framing:?}: the bytes differ");
            let reply = guest.await.unwrap();
            assert_eq!(&reply[..6], b"reply:");
            assert!(reply[6..] == msg[..], "{framing:?}: the reply differs");
            assert!(requests.try_recv().is_err(), "a ConnectRequest was raised");
            let mut stats = (1, msg.len() as u64, reply.len() as u64);
            if framing == Framing::EofFrames {
                // Both end frames crossed: the same stream carries the next client.
                let guest = client(&path, b"next".to_vec());
                let forward = timeout(LONG, read_header(&stream, LONG))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(forward, "f");
                write_verdict(&stream, "", LONG).await.unwrap();
                assert_eq!(serve_target(stream, framing).await, b"next");
                assert_eq!(guest.await.unwrap(), b"reply:next");
                stats = (2, stats.1 + 4, stats.2 + 10);
            } else {
                // A raw stream ends with its connection.
                let mut buf = [0u8; 1];
                assert_eq!(
                    timeout(LONG, stream.read(&mut buf)).await.unwrap().unwrap(),
                    0
                );
            }

            // Byte counts cover finished connections: the last one finishes
            // just after its client saw the end.
            let f = host.forward_when(|f| f.bytes_to_guest == stats.2).await;
            assert_eq!((f.total, f.failed, f.refused), (stats.0, 0, 0));
            assert_eq!(f.bytes_to_host, stats.1, "early bytes counted once");
            agent.stop().await;
        }
    }

    #[tokio::test]
    async fn a_refusing_verdict_closes_the_client() {
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        let path = agent.path("f.sock");
        host.bind("f", &path).await;
        let (mut requests, _answers) = host.accept().await;
        host.pool(TOKEN, Framing::Raw, 1).await.unwrap();
        let stream = host.open(&format!("{TOKEN}-1")).await.unwrap();
        let guest = client(&path, b"hello".to_vec());
        assert_eq!(read_header(&stream, LONG).await.unwrap(), "f");
        write_verdict(&stream, "failed to dial host socket", LONG)
            .await
            .unwrap();
        assert_eq!(
            guest.await.unwrap(),
            b"",
            "the client got bytes after a refusal"
        );
        assert!(requests.try_recv().is_err(), "a refusal is final");
        host.forward_when(|f| f.failed == 1).await;
        agent.stop().await;
    }

    #[tokio::test]
    async fn an_unknown_forward_verdict_sends_the_client_to_the_router_with_nothing_lost() {
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        let path = agent.path("f.sock");
        host.bind("f", &path).await;
        let (mut requests, answers) = host.accept().await;
        host.pool(TOKEN, Framing::Raw, 1).await.unwrap();
        let stream = host.open(&format!("{TOKEN}-1")).await.unwrap();
        let msg = payload(300_000);
        let guest = client(&path, msg.clone());
        assert_eq!(read_header(&stream, LONG).await.unwrap(), "f");
        // As on an Accept stream, `unknown forward ID` is not final: the
        // router offers the request to the Accept streams that may serve it.
        write_verdict(&stream, "unknown forward ID: f", LONG)
            .await
            .unwrap();
        let req = timeout(LONG, requests.recv()).await.unwrap().unwrap();
        assert_eq!(req.forward_id, "f");
        let stream = host.open(&req.stream_id).await.unwrap();
        answers.send(&req.stream_id, "").await;
        let got = serve_target(stream, Framing::Raw).await;
        assert!(got == msg, "bytes lost or doubled after the refusal");
        let reply = guest.await.unwrap();
        assert!(reply[6..] == msg[..]);
        let f = host.forward_when(|f| f.active == 0).await;
        assert_eq!((f.total, f.failed, f.refused), (1, 0, 0));
        agent.stop().await;
    }

    #[tokio::test]
    async fn a_connection_holds_one_pool_and_a_new_call_replaces_it() {
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        let tokens: Vec<String> = (0..50).map(|_| stream_pool::generate_token()).collect();
        for token in &tokens {
            assert_eq!(host.pool(token, Framing::Raw, 2).await.unwrap(), 2);
        }
        // Only the last pool is there: a stream of an earlier one is an
        // ordinary stream, registered to be claimed.
        let last = &tokens[tokens.len() - 1];
        let parked = host.open(&format!("{last}-1")).await.unwrap();
        let _parked_too = host.open(&format!("{last}-2")).await.unwrap();
        match host.open(&format!("{last}-3")).await {
            Err(HandshakeError::Refused(text)) => assert_eq!(text, "stream pool full"),
            other => panic!("a third parked stream: {other:?}"),
        }
        let ordinary = host.open(&format!("{}-1", tokens[0])).await.unwrap();
        drop(ordinary);
        // Another call: the parked streams of the pool it replaces are closed.
        host.pool(&stream_pool::generate_token(), Framing::Raw, 2)
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        let n = timeout(LONG, parked.read(&mut buf)).await.unwrap().unwrap();
        assert_eq!(n, 0, "a stream of a replaced pool stayed parked");
        agent.stop().await;
    }

    #[tokio::test]
    async fn a_stream_lost_before_its_verdict_falls_back_and_loses_nothing() {
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        let path = agent.path("f.sock");
        host.bind("f", &path).await;
        let (mut requests, answers) = host.accept().await;
        host.pool(TOKEN, Framing::Raw, 1).await.unwrap();
        let stream = host.open(&format!("{TOKEN}-1")).await.unwrap();
        let msg = payload(300_000);
        let guest = client(&path, msg.clone());
        // The header and the client's first bytes reach the pooled stream,
        // which then dies without a verdict (a relay that restarted).
        assert_eq!(read_header(&stream, LONG).await.unwrap(), "f");
        let mut early = [0u8; 1];
        assert_eq!(stream.read(&mut early).await.unwrap(), 1);
        assert_eq!(early[0], msg[0]);
        drop(stream);
        // The ConnectRequest path takes the connection, from its first byte.
        let req = timeout(LONG, requests.recv()).await.unwrap().unwrap();
        assert_eq!(req.forward_id, "f");
        let stream = host.open(&req.stream_id).await.unwrap();
        answers.send(&req.stream_id, "").await;
        let got = serve_target(stream, Framing::Raw).await;
        assert!(got == msg, "bytes lost or doubled in the fallback");
        let reply = guest.await.unwrap();
        assert!(reply[6..] == msg[..]);
        agent.stop().await;
    }

    #[tokio::test]
    async fn parked_streams_go_with_their_control_connection() {
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        let path = agent.path("f.sock");
        host.bind("f", &path).await;
        host.pool(TOKEN, Framing::Raw, 2).await.unwrap();
        let a = host.open(&format!("{TOKEN}-1")).await.unwrap();
        let b = host.open(&format!("{TOKEN}-2")).await.unwrap();
        host.crash();
        for s in [&a, &b] {
            let mut buf = [0u8; 1];
            let n = timeout(LONG, s.read(&mut buf)).await.unwrap().unwrap();
            assert_eq!(n, 0, "a parked stream outlived its control connection");
        }
        // The next relay binds again without a pool: the core path serves.
        let next = agent.host().await;
        next.bind("f", &path).await;
        let (mut requests, answers) = next.accept().await;
        let guest = client(&path, b"after".to_vec());
        let req = timeout(LONG, requests.recv()).await.unwrap().unwrap();
        let stream = next.open(&req.stream_id).await.unwrap();
        answers.send(&req.stream_id, "").await;
        assert_eq!(serve_target(stream, Framing::Raw).await, b"after");
        assert_eq!(guest.await.unwrap(), b"reply:after");
        // A stream opened under the old token is an ordinary stream now.
        let old = next.open(&format!("{TOKEN}-3")).await.unwrap();
        drop(old);
        agent.stop().await;
    }

    #[tokio::test]
    async fn pools_are_bounded_and_checked() {
        let agent = Agent::start(|c| c.max_pooled_streams = 2).await;
        let host = agent.host().await;
        let other = agent.host().await;
        let code = |r: ttrpc::Result<u32>| match r {
            Err(ttrpc::Error::RpcStatus(s)) => s.code(),
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(
            code(host.pool("short", Framing::Raw, 2).await),
            ttrpc::Code::INVALID_ARGUMENT
        );
        let mut bad = StreamPoolRequest::new();
        bad.token = TOKEN.into();
        bad.framing = 7;
        let err = host.client.stream_pool(ctx(), &bad).await.map(|r| r.max);
        assert_eq!(code(err), ttrpc::Code::INVALID_ARGUMENT);
        // At most the agent's cap, whatever the host asks.
        assert_eq!(host.pool(TOKEN, Framing::Raw, 100).await.unwrap(), 2);
        assert_eq!(
            code(other.pool(TOKEN, Framing::Raw, 1).await),
            ttrpc::Code::FAILED_PRECONDITION,
            "another connection's token"
        );
        let _parked = [
            host.open(&format!("{TOKEN}-1")).await.unwrap(),
            host.open(&format!("{TOKEN}-2")).await.unwrap(),
        ];
        match host.open(&format!("{TOKEN}-3")).await {
            Err(HandshakeError::Refused(text)) => assert_eq!(text, "stream pool full"),
            other => panic!("a third parked stream: {other:?}"),
        }
        agent.stop().await;

        let agent = Agent::start(|c| c.max_pooled_streams = 0).await;
        let host = agent.host().await;
        assert_eq!(host.pool(TOKEN, Framing::Raw, 8).await.unwrap(), 0);
        agent.stop().await;
    }

    #[tokio::test]
    async fn an_id_shaped_like_a_pooled_one_is_ordinary_without_its_pool() {
        // A host that never calls StreamPool (nerdbox) may use any ID: one
        // that looks pooled is registered and claimed as the contract says.
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        let target = agent.path("target.sock");
        let listener = tokio::net::UnixListener::bind(&target).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"from the guest target").await.unwrap();
        });
        let id = format!("{}-1", stream_pool::generate_token());
        let mut stream = host.open(&id).await.unwrap();
        let req = ConnectTargetRequest {
            stream_id: id,
            target: format!("unix:{}", target.display()),
            ..Default::default()
        };
        host.client.connect(ctx(), &req).await.unwrap();
        let mut got = Vec::new();
        timeout(LONG, stream.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"from the guest target");
        drop(stream);
        agent.stop().await;
    }
}
