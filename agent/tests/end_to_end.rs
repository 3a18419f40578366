//! The agent library end to end over Unix sockets, with a small fake host relay
//! built on the ttrpc client: Bind, Accept routing, the stream port, relays,
//! restarts, bounds and shutdown. (The workspace's `tests/` crate drives the
//! real binaries; these tests reach inside for timings and corner cases.)

#[cfg(test)]
mod harness;

#[cfg(test)]
mod end_to_end {
    use crate::harness::{Agent, LONG, LONG_NANOS};
    use sockfwd_agent::config::AllowList;
    use sockfwd_agent::ControlMode;
    use sockfwd_proto::handshake;
    use sockfwd_proto::rpc::{
        BindRequest, ConnectRequest, ConnectResult, ListForwardsRequest, PortEventKind,
        ShutdownRequest, Socket, SocketForwardClient, UnbindRequest, WatchPortsRequest,
    };
    use sockfwd_proto::transport::{dial, Address, Stream};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;
    use tokio::task::JoinHandle;
    use tokio::time::{timeout, Instant};

    /// The fake host of this file on a new control connection.
    trait HostOf {
        async fn host(&self) -> Host;
    }

    impl HostOf for Agent {
        async fn host(&self) -> Host {
            Host::over(self.dial_control().await, self.streams.clone())
        }
    }

    /// How the fake host answers a request.
    #[derive(Clone, Copy)]
    enum Answer {
        /// Open the stream and serve it: read to EOF, reply `tag` + what it read.
        Serve(&'static str),
        Error(&'static str),
        Ignore,
    }

    struct Host {
        client: SocketForwardClient,
        /// A second handle on the connection, to cut it like a crash would.
        cut: Arc<std::os::unix::net::UnixStream>,
        streams: PathBuf,
    }

    impl Host {
        fn over(s: Stream, streams: PathBuf) -> Host {
            let fd = std::os::fd::AsFd::as_fd(&s).try_clone_to_owned().unwrap();
            let cut = Arc::new(std::os::unix::net::UnixStream::from(fd));
            let socket = ttrpc::r#async::transport::Socket::new(s);
            let client = SocketForwardClient::new(ttrpc::r#async::Client::new(socket));
            Host {
                client,
                cut,
                streams,
            }
        }

        async fn bind(&self, sockets: &[(&str, &Path)]) -> ttrpc::Result<()> {
            let req = BindRequest {
                sockets: sockets
                    .iter()
                    .map(|(id, p)| Socket {
                        forward_id: id.to_string(),
                        socket_path: p.to_str().unwrap().to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            self.client
                .bind(ttrpc::context::with_timeout(LONG_NANOS), &req)
                .await
                .map(|_| ())
        }

        /// Binds TCP listeners: (forward ID, `Socket.tcp_listen`).
        async fn bind_tcp(&self, sockets: &[(&str, &str)]) -> ttrpc::Result<()> {
            let req = BindRequest {
                sockets: sockets
                    .iter()
                    .map(|(id, addr)| Socket {
                        forward_id: id.to_string(),
                        tcp_listen: addr.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            self.client
                .bind(ttrpc::context::with_timeout(LONG_NANOS), &req)
                .await
                .map(|_| ())
        }

        /// Each bound forward's ID with its socket path or TCP address.
        async fn listed(&self) -> Vec<(String, String, String)> {
            let list = self
                .client
                .list_forwards(
                    ttrpc::context::with_timeout(LONG_NANOS),
                    &ListForwardsRequest::new(),
                )
                .await
                .unwrap();
            list.forwards
                .into_iter()
                .map(|f| (f.forward_id, f.socket_path, f.tcp_listen))
                .collect()
        }

        /// Opens an Accept stream answering each request with `answer(forward_id)`.
        async fn accept(&self, answer: impl Fn(&str) -> Answer + Send + 'static) -> JoinHandle<()> {
            let stream = self
                .client
                .accept(ttrpc::context::Context::default())
                .await
                .unwrap();
            let streams = self.streams.clone();
            tokio::spawn(async move {
                let (tx, mut rx) = stream.split();
                while let Ok(req) = rx.recv().await {
                    let req: ConnectRequest = req;
                    let result = |error: &str| ConnectResult {
                        stream_id: req.stream_id.clone(),
                        error: error.to_string(),
                        ..Default::default()
                    };
                    match answer(&req.forward_id) {
                        Answer::Ignore => {}
                        Answer::Error(e) => {
                            let _ = tx.send(&result(e)).await;
                        }
                        Answer::Serve(tag) => {
                            let tx = tx.clone();
                            let ok = result("");
                            let streams = streams.clone();
                            tokio::spawn(async move {
                                let mut s = dial(&Address::Unix(streams), LONG).await.unwrap();
                                handshake::open(&mut s, &ok.stream_id, LONG).await.unwrap();
                                tx.send(&ok).await.unwrap();
                                let mut got = Vec::new();
                                s.read_to_end(&mut got).await.unwrap();
                                s.write_all(tag.as_bytes()).await.unwrap();
                                s.write_all(&got).await.unwrap();
                                s.shutdown().await.unwrap();
                            });
                        }
                    }
                }
            })
        }

        fn crash(&self) {
            self.cut.shutdown(std::net::Shutdown::Both).unwrap();
        }
    }

    /// A guest process: sends `msg`, half-closes, reads the reply to the end.
    async fn guest(path: &Path, msg: &str) -> String {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(msg.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut reply = String::new();
        let _ = timeout(LONG, s.read_to_string(&mut reply)).await.unwrap();
        reply
    }

    fn status(err: ttrpc::Error) -> (ttrpc::Code, String) {
        match err {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[tokio::test]
    async fn echo_with_half_close_and_mode() {
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        let path = agent.path("deep/dir/f.sock");
        host.bind(&[("f", &path)]).await.unwrap();
        host.bind(&[]).await.unwrap(); // the liveness ping
        host.accept(|_| Answer::Serve("host:")).await;
        assert_eq!(guest(&path, "hello").await, "host:hello");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        agent.stop().await;
        assert!(!path.exists(), "listener file removed at shutdown");
    }

    #[tokio::test]
    async fn bind_errors_carry_the_path_and_roll_back() {
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        let (code, msg) = status(
            host.bind(&[("f", Path::new("rel/x.sock"))])
                .await
                .unwrap_err(),
        );
        assert_eq!(code, ttrpc::Code::UNKNOWN);
        assert_eq!(
            msg,
            "binding socket forward listener at rel/x.sock: path is not absolute"
        );

        let file = agent.path("plain");
        std::fs::write(&file, b"keep").unwrap();
        let good = agent.path("good.sock");
        let (_, msg) = status(host.bind(&[("g", &good), ("f", &file)]).await.unwrap_err());
        assert!(
            msg.ends_with("plain: a file that is not a socket is in the way"),
            "{msg}"
        );
        assert!(!good.exists(), "the socket this call created is removed");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");

        host.bind(&[("g", &good)]).await.unwrap();
        host.bind(&[("g", &good)]).await.unwrap();
        let (_, msg) = status(host.bind(&[("other", &good)]).await.unwrap_err());
        assert!(msg.contains("already bound to forward ID \"g\""), "{msg}");
        let (_, msg) = status(
            host.bind(&[("g", &agent.path("elsewhere.sock"))])
                .await
                .unwrap_err(),
        );
        assert!(msg.contains("already bound at"), "{msg}");
        let (_, msg) = status(host.bind(&[("", &agent.path("e.sock"))]).await.unwrap_err());
        assert!(msg.ends_with("e.sock: empty forward ID"), "{msg}");
        agent.stop().await;
    }

    #[tokio::test]
    async fn each_connection_reaches_the_relay_that_owns_its_forward() {
        let agent = Agent::start(|_| {}).await;
        let (a, b) = (agent.host().await, agent.host().await);
        let (fa, fb) = (agent.path("a.sock"), agent.path("b.sock"));
        a.bind(&[("fa", &fa)]).await.unwrap();
        b.bind(&[("fb", &fb)]).await.unwrap();
        a.accept(|f| {
            if f == "fa" {
                Answer::Serve("A:")
            } else {
                Answer::Error("unknown forward ID: wrong relay")
            }
        })
        .await;
        b.accept(|f| {
            if f == "fb" {
                Answer::Serve("B:")
            } else {
                Answer::Error("unknown forward ID: wrong relay")
            }
        })
        .await;
        let mut tasks = Vec::new();
        for i in 0..100 {
            let (fa, fb) = (fa.clone(), fb.clone());
            tasks.push(tokio::spawn(async move {
                assert_eq!(guest(&fa, &i.to_string()).await, format!("A:{i}"));
                assert_eq!(guest(&fb, &i.to_string()).await, format!("B:{i}"));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        agent.stop().await;
    }

    #[tokio::test]
    async fn nerdbox_style_accept_streams_per_container_on_one_connection() {
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        let (f1, f2) = (agent.path("1.sock"), agent.path("2.sock"));
        host.bind(&[("f1", &f1), ("f2", &f2)]).await.unwrap();
        for (mine, tag) in [("f1", "one:"), ("f2", "two:")] {
            host.accept(move |f| {
                if f == mine {
                    Answer::Serve(tag)
                } else {
                    Answer::Error("unknown forward ID: not this container")
                }
            })
            .await;
        }
        for i in 0..20 {
            assert_eq!(guest(&f1, "x").await, "one:x", "{i}");
            assert_eq!(guest(&f2, "y").await, "two:y", "{i}");
        }
        agent.stop().await;
    }

    #[tokio::test]
    async fn refusals_close_the_guest_connection_promptly() {
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        let f = agent.path("f.sock");
        host.bind(&[("f", &f)]).await.unwrap();
        host.accept(|_| Answer::Error("failed to dial host socket"))
            .await;
        let start = Instant::now();
        assert_eq!(guest(&f, "x").await, "");
        assert!(start.elapsed() < Duration::from_secs(2));
        // Still serving.
        assert_eq!(guest(&f, "x").await, "");
        agent.stop().await;
    }

    #[tokio::test]
    async fn waiting_connections_are_answered_by_a_restarted_relay() {
        let agent = Agent::start(|_| {}).await;
        let old = agent.host().await;
        let f = agent.path("f.sock");
        old.bind(&[("f", &f)]).await.unwrap();
        old.accept(|_| Answer::Ignore).await;
        let waiting = tokio::spawn({
            let f = f.clone();
            async move { guest(&f, "again").await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        old.crash();
        let new = agent.host().await;
        new.bind(&[("f", &f)]).await.unwrap();
        new.accept(|_| Answer::Serve("new:")).await;
        assert_eq!(waiting.await.unwrap(), "new:again");
        agent.stop().await;
    }

    #[tokio::test]
    async fn a_silent_accept_stream_is_passed_over() {
        let agent = Agent::start(|c| c.result_timeout = Duration::from_millis(200)).await;
        let host = agent.host().await;
        let f = agent.path("f.sock");
        host.bind(&[("f", &f)]).await.unwrap();
        host.accept(|_| Answer::Ignore).await;
        host.accept(|_| Answer::Serve("ok:")).await;
        for _ in 0..4 {
            assert_eq!(guest(&f, "x").await, "ok:x");
        }
        agent.stop().await;
    }

    #[tokio::test]
    async fn bounds_on_waiting_connections() {
        let agent = Agent::start(|c| {
            c.max_pending = 1;
            c.pending_timeout = Duration::from_millis(500);
        })
        .await;
        let host = agent.host().await;
        let f = agent.path("f.sock");
        host.bind(&[("f", &f)]).await.unwrap();
        // No Accept stream: the first waits, the second is refused at once.
        let start = Instant::now();
        let first = tokio::spawn({
            let f = f.clone();
            async move { guest(&f, "1").await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(guest(&f, "2").await, "");
        assert!(start.elapsed() < Duration::from_millis(450));
        assert_eq!(first.await.unwrap(), "");
        assert!(start.elapsed() >= Duration::from_millis(500));
        agent.stop().await;
    }

    #[tokio::test]
    async fn stream_port_refuses_duplicates_and_closes_unclaimed_streams() {
        let agent = Agent::start(|c| c.claim_timeout = Duration::from_millis(300)).await;
        let addr = Address::Unix(agent.streams.clone());
        let mut first = dial(&addr, LONG).await.unwrap();
        handshake::open(&mut first, "dup", LONG).await.unwrap();
        let mut second = dial(&addr, LONG).await.unwrap();
        let err = handshake::open(&mut second, "dup", LONG).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest refused the stream: stream \"dup\" already exists"
        );
        let mut buf = [0u8; 1];
        let n = timeout(LONG, first.read(&mut buf)).await.unwrap().unwrap();
        assert_eq!(n, 0, "unclaimed stream closed");
        // A hostile length costs nothing and the port keeps serving.
        let bad = dial(&addr, LONG).await.unwrap();
        bad.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let n = timeout(LONG, bad.read(&mut buf)).await.unwrap().unwrap();
        assert_eq!(n, 0);
        let mut again = dial(&addr, LONG).await.unwrap();
        handshake::open(&mut again, "dup", LONG).await.unwrap();
        agent.stop().await;
    }

    #[tokio::test]
    async fn shutdown_rpc_removes_listeners_then_ends_relays_after_grace() {
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        let f = agent.path("f.sock");
        host.bind(&[("f", &f)]).await.unwrap();
        host.accept(|_| Answer::Serve("late:")).await;
        // A relay that stays open: the guest never half-closes.
        let mut open = UnixStream::connect(&f).await.unwrap();
        open.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        host.client
            .shutdown(
                ttrpc::context::with_timeout(LONG_NANOS),
                &ShutdownRequest {
                    grace_period_ms: 300,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(!f.exists());
        assert!(!agent.control.exists());
        assert!(!agent.streams.exists());
        agent.exited().await;
        assert!(start.elapsed() >= Duration::from_millis(300));
        let mut rest = Vec::new();
        let _ = timeout(LONG, open.read_to_end(&mut rest)).await.unwrap();
    }

    #[tokio::test]
    async fn hostile_control_input_costs_only_its_own_connection() {
        // The abandoned Accept stream below never answers: it is passed over.
        let agent = Agent::start(|c| c.result_timeout = Duration::from_millis(300)).await;
        let addr = Address::Unix(agent.control.clone());
        // Garbage, a truncated frame, and a frame header announcing 4 GiB.
        let garbage = dial(&addr, LONG).await.unwrap();
        garbage.write_all(&[0xff; 64]).await.unwrap();
        let truncated = dial(&addr, LONG).await.unwrap();
        truncated
            .write_all(&[0, 0, 0, 50, 0, 0, 0, 1, 1])
            .await
            .unwrap();
        drop(truncated);
        let huge = dial(&addr, LONG).await.unwrap();
        huge.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0])
            .await
            .unwrap();
        // A result for a stream nobody waits for is ignored.
        let host = agent.host().await;
        let f = agent.path("f.sock");
        host.bind(&[("f", &f)]).await.unwrap();
        let stream = host
            .client
            .accept(ttrpc::context::Context::default())
            .await
            .unwrap();
        stream
            .send(&ConnectResult {
                stream_id: "nobody".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        drop(stream);
        host.accept(|_| Answer::Serve("fine:")).await;
        assert_eq!(guest(&f, "x").await, "fine:x");
        drop((garbage, huge));
        agent.stop().await;
    }

    #[tokio::test]
    async fn shutdown_rpc_is_answered_even_with_nothing_to_drain() {
        for _ in 0..10 {
            let agent = Agent::start(|_| {}).await;
            let host = agent.host().await;
            host.client
                .shutdown(
                    ttrpc::context::with_timeout(LONG_NANOS),
                    &ShutdownRequest::default(),
                )
                .await
                .unwrap();
            agent.exited().await;
            // The agent closed the control connection behind it.
            let mut buf = [0u8; 1];
            let n = timeout(LONG, async {
                loop {
                    match nix::sys::socket::recv(
                        std::os::fd::AsRawFd::as_raw_fd(host.cut.as_ref()),
                        &mut buf,
                        nix::sys::socket::MsgFlags::MSG_PEEK,
                    ) {
                        Ok(n) => break n,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            })
            .await
            .unwrap();
            assert_eq!(n, 0);
        }
    }

    #[tokio::test]
    async fn dial_mode_redials_after_the_host_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let host_path = dir.path().join("host.sock");
        let listener = tokio::net::UnixListener::bind(&host_path).unwrap();
        let agent = Agent::start(|c| c.control = ControlMode::Dial(Address::Unix(host_path))).await;
        let f = agent.path("f.sock");
        for round in ["one:", "two:"] {
            let (s, _) = timeout(LONG, listener.accept()).await.unwrap().unwrap();
            let host = Host::over(Stream::from_unix(s).unwrap(), agent.streams.clone());
            host.bind(&[("f", &f)]).await.unwrap();
            host.accept(move |_| Answer::Serve(round)).await;
            assert_eq!(guest(&f, "x").await, format!("{round}x"));
            host.crash();
        }
        agent.stop().await;
    }

    /// A guest process on TCP: sends `msg`, half-closes, reads the reply to the end.
    async fn tcp_guest(addr: &str, msg: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(msg.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut reply = String::new();
        let _ = timeout(LONG, s.read_to_string(&mut reply)).await.unwrap();
        reply
    }

    #[tokio::test]
    async fn tcp_listeners_bind_list_relay_and_unbind() {
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        host.bind_tcp(&[("db", "127.0.0.1:0"), ("v6", "[::1]:0")])
            .await
            .unwrap();
        let listed = host.listed().await;
        assert_eq!(listed.len(), 2, "{listed:?}");
        let (db, v6) = (&listed[0], &listed[1]);
        assert_eq!((db.0.as_str(), db.1.as_str()), ("db", ""));
        assert!(
            db.2.starts_with("127.0.0.1:") && !db.2.ends_with(":0"),
            "{db:?}"
        );
        assert!(v6.2.starts_with("[::1]:"), "{v6:?}");
        // Binding again with port 0 is the same forward on the port it got.
        host.bind_tcp(&[("db", "127.0.0.1:0")]).await.unwrap();
        assert_eq!(host.listed().await[0].2, db.2);

        host.accept(|f| match f {
            "db" => Answer::Serve("pg:"),
            _ => Answer::Serve("six:"),
        })
        .await;
        assert_eq!(tcp_guest(&db.2, "select 1").await, "pg:select 1");
        assert_eq!(tcp_guest(&v6.2, "x").await, "six:x");

        let unbind = UnbindRequest {
            forward_id: "db".into(),
            ..Default::default()
        };
        host.client
            .unbind(ttrpc::context::with_timeout(LONG_NANOS), &unbind)
            .await
            .unwrap();
        let refused = tokio::net::TcpStream::connect(db.2.as_str()).await;
        assert!(
            refused.is_err(),
            "the port is closed by the time Unbind answers"
        );
        let v6_addr = v6.2.clone();
        agent.stop().await;
        let closed = tokio::net::TcpStream::connect(v6_addr.as_str()).await;
        assert!(closed.is_err(), "the port is closed at shutdown");
    }

    #[tokio::test]
    async fn tcp_listeners_are_confined_to_loopback_unless_allowed() {
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        let (code, msg) = status(host.bind_tcp(&[("pub", "0.0.0.0:0")]).await.unwrap_err());
        assert_eq!(code, ttrpc::Code::UNKNOWN);
        assert_eq!(
            msg,
            "binding socket forward listener at 0.0.0.0:0: 0.0.0.0:0 is not allowed: the agent \
             listens on loopback addresses unless --allow-listen allows more"
        );
        let (_, msg) = status(host.bind_tcp(&[("n", "localhost:80")]).await.unwrap_err());
        assert!(
            msg.ends_with("expected IP:PORT ([IPV6]:PORT), not a name"),
            "{msg}"
        );
        // All or nothing: the loopback listener of a refused request is closed.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = taken.local_addr().unwrap().to_string();
        let (_, msg) = status(
            host.bind_tcp(&[("ok", "127.0.0.1:0"), ("busy", &taken)])
                .await
                .unwrap_err(),
        );
        assert!(
            msg.contains(&format!("at {taken}: listening on {taken}")),
            "{msg}"
        );
        assert!(host.listed().await.is_empty());
        agent.stop().await;

        let agent = Agent::start(|c| {
            c.allow_listen = AllowList(vec!["0.0.0.0:*".parse().unwrap()]);
        })
        .await;
        let host = agent.host().await;
        host.bind_tcp(&[("pub", "0.0.0.0:0")]).await.unwrap();
        assert!(host.listed().await[0].2.starts_with("0.0.0.0:"));
        agent.stop().await;
    }

    #[tokio::test]
    async fn watch_ports_leaves_out_the_agent_s_own_listeners() {
        let agent = Agent::start(|_| {}).await;
        let host = agent.host().await;
        host.bind_tcp(&[("own", "127.0.0.1:0")]).await.unwrap();
        let own = host.listed().await[0].2.clone();
        // A guest service, in this process but not the agent's.
        let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let service = service.local_addr().unwrap().port();
        let mut events = host
            .client
            .watch_ports(
                ttrpc::context::Context::default(),
                &WatchPortsRequest::new(),
            )
            .await
            .unwrap();
        let mut opened = Vec::new();
        timeout(LONG, async {
            while !opened.contains(&u32::from(service)) {
                let e = events.recv().await.unwrap().unwrap();
                if e.kind == PortEventKind::OPENED.into() && e.address == "127.0.0.1" {
                    opened.push(e.port);
                }
            }
        })
        .await
        .unwrap();
        // Another own listener opened while the watch runs is left out too.
        host.bind_tcp(&[("later", "127.0.0.1:0")]).await.unwrap();
        let later = host.listed().await[0].2.clone();
        let second = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let second = second.local_addr().unwrap().port();
        timeout(LONG, async {
            while !opened.contains(&u32::from(second)) {
                let e = events.recv().await.unwrap().unwrap();
                if e.kind == PortEventKind::OPENED.into() && e.address == "127.0.0.1" {
                    opened.push(e.port);
                }
            }
        })
        .await
        .unwrap();
        for addr in [&own, &later] {
            let port: u32 = addr.rsplit(':').next().unwrap().parse().unwrap();
            assert!(!opened.contains(&port), "{addr} reported in {opened:?}");
        }
        agent.stop().await;
    }
}
