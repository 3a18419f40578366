//! The relay library against a minimal fake agent over Unix sockets: a ttrpc
//! server built from the generated `create_socket_forward`, and a stream port
//! that completes the handshake and hands each stream to the test. The full
//! suite against the real binaries lives in the workspace's `tests/`.

#[cfg(test)]
mod common;

#[cfg(test)]
mod tests {
    use crate::common::{eventually, exchange, WAIT};
    use sockfwd_proto::framing::Framing;
    use sockfwd_proto::handshake;
    use sockfwd_proto::relay::{relay_stream, RelayConfig};
    use sockfwd_proto::rpc::{
        self, BindRequest, ConnectRequest, ConnectResult, ForwardInfo, InfoRequest, InfoResponse,
        ListForwardsRequest, ListForwardsResponse, UnbindRequest,
    };
    use sockfwd_proto::transport::{Address, Stream};
    use sockfwd_relay::framing::FramingPolicy;
    use sockfwd_relay::{
        ChannelError, Config, Control, Forward, ForwardTable, Guest, GuestOptions, ListenAt,
        ReachError, Relay, RelayError,
    };
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::{mpsc, Mutex};
    use tokio::time::timeout;
    use tokio_util::sync::CancellationToken;
    use ttrpc::r#async::{Server, ServerStream, TtrpcContext};

    /// Channels shared by every incarnation of the fake agent (restarts included).
    struct Wires {
        binds: mpsc::UnboundedSender<BindRequest>,
        pings: AtomicUsize,
        requests: Mutex<mpsc::UnboundedReceiver<ConnectRequest>>,
        results: mpsc::UnboundedSender<ConnectResult>,
        /// When set, Bind of any socket fails with this message (status Unknown).
        bind_error: std::sync::Mutex<Option<String>>,
        /// The answer to Info; `None`: the method is unknown, as on a nerdbox guest.
        info: std::sync::Mutex<Option<InfoResponse>>,
        /// The methods called, in order (liveness Binds left out).
        calls: std::sync::Mutex<Vec<&'static str>>,
        /// What this incarnation has bound: forward ID to its socket path or
        /// TCP address (port 0 replaced by the next of `next_port`).
        bound: std::sync::Mutex<std::collections::BTreeMap<String, ForwardInfo>>,
        /// The port the next TCP listener asking for port 0 "gets".
        next_port: std::sync::atomic::AtomicU16,
    }

    struct Agent {
        wires: Arc<Wires>,
        kill: CancellationToken,
    }

    #[async_trait::async_trait]
    impl rpc::SocketForward for Agent {
        async fn bind(
            &self,
            _ctx: &TtrpcContext,
            req: BindRequest,
        ) -> ttrpc::Result<protobuf::well_known_types::empty::Empty> {
            if req.sockets.is_empty() {
                self.wires.pings.fetch_add(1, Ordering::Relaxed);
                return Ok(Default::default());
            }
            self.wires.calls.lock().unwrap().push("Bind");
            if let Some(msg) = self.wires.bind_error.lock().unwrap().clone() {
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::UNKNOWN,
                    msg,
                )));
            }
            let mut bound = self.wires.bound.lock().unwrap();
            for sock in &req.sockets {
                let mut f = ForwardInfo::new();
                f.forward_id = sock.forward_id.clone();
                f.socket_path = sock.socket_path.clone();
                f.tcp_listen = match sock.tcp_listen.strip_suffix(":0") {
                    Some(ip) => {
                        let port = self.wires.next_port.fetch_add(1, Ordering::Relaxed);
                        format!("{ip}:{port}")
                    }
                    None => sock.tcp_listen.clone(),
                };
                // Binding the same forward again keeps its place, as the agent does.
                bound.entry(f.forward_id.clone()).or_insert(f);
            }
            let _ = self.wires.binds.send(req);
            Ok(Default::default())
        }

        async fn list_forwards(
            &self,
            _ctx: &TtrpcContext,
            _req: ListForwardsRequest,
        ) -> ttrpc::Result<ListForwardsResponse> {
            self.wires.calls.lock().unwrap().push("ListForwards");
            if self.wires.info.lock().unwrap().is_none() {
                // A peer without Info is nerdbox's: no ListForwards either.
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::NOT_FOUND,
                    "/nerdbox.services.socketforward.v1.SocketForward/ListForwards is not supported",
                )));
            }
            let mut resp = ListForwardsResponse::new();
            resp.forwards = self.wires.bound.lock().unwrap().values().cloned().collect();
            Ok(resp)
        }

        async fn unbind(
            &self,
            _ctx: &TtrpcContext,
            req: UnbindRequest,
        ) -> ttrpc::Result<protobuf::well_known_types::empty::Empty> {
            self.wires.calls.lock().unwrap().push("Unbind");
            match self.wires.bound.lock().unwrap().remove(&req.forward_id) {
                Some(_) => Ok(Default::default()),
                None => Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("no forward {:?} is bound", req.forward_id),
                ))),
            }
        }

        async fn info(
            &self,
            _ctx: &TtrpcContext,
            _req: InfoRequest,
        ) -> ttrpc::Result<InfoResponse> {
            self.wires.calls.lock().unwrap().push("Info");
            // Without an answer: what ttrpc's generated default (and so a
            // nerdbox guest) says for a method it does not have.
            self.wires.info.lock().unwrap().clone().ok_or_else(|| {
                ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::NOT_FOUND,
                    "/nerdbox.services.socketforward.v1.SocketForward/Info is not supported",
                ))
            })
        }

        async fn accept(
            &self,
            _ctx: &TtrpcContext,
            s: ServerStream<ConnectRequest, ConnectResult>,
        ) -> ttrpc::Result<()> {
            self.wires.calls.lock().unwrap().push("Accept");
            let (tx, mut rx) = s.split();
            let mut requests = self.wires.requests.lock().await;
            loop {
                tokio::select! {
                    () = self.kill.cancelled() => return Ok(()),
                    r = rx.recv() => match r {
                        Ok(Some(res)) => { let _ = self.wires.results.send(res); }
                        _ => return Ok(()),
                    },
                    q = requests.recv() => match q {
                        Some(q) => tx.send(&q).await?,
                        None => return Ok(()),
                    },
                }
            }
        }
    }

    /// The test's side of the fake agent.
    struct Harness {
        dir: tempfile::TempDir,
        wires: Arc<Wires>,
        requests: mpsc::UnboundedSender<ConnectRequest>,
        results: mpsc::UnboundedReceiver<ConnectResult>,
        binds: mpsc::UnboundedReceiver<BindRequest>,
        streams: mpsc::UnboundedReceiver<(String, Stream)>,
        server: Option<(Server, CancellationToken)>,
    }

    impl Harness {
        async fn new() -> Harness {
            let dir = tempfile::Builder::new()
                .prefix("sfr")
                .tempdir_in("/tmp")
                .unwrap();
            let (binds_tx, binds) = mpsc::unbounded_channel();
            let (requests, requests_rx) = mpsc::unbounded_channel();
            let (results_tx, results) = mpsc::unbounded_channel();
            let wires = Arc::new(Wires {
                binds: binds_tx,
                pings: AtomicUsize::new(0),
                requests: Mutex::new(requests_rx),
                results: results_tx,
                bind_error: std::sync::Mutex::new(None),
                info: std::sync::Mutex::new(None),
                calls: std::sync::Mutex::new(Vec::new()),
                bound: std::sync::Mutex::new(std::collections::BTreeMap::new()),
                next_port: std::sync::atomic::AtomicU16::new(41233),
            });
            let (streams_tx, streams) = mpsc::unbounded_channel();
            let l = tokio::net::UnixListener::bind(dir.path().join("streams.sock")).unwrap();
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    let tx = streams_tx.clone();
                    tokio::spawn(async move {
                        let mut s = Stream::from_unix(s).unwrap();
                        let id = handshake::read_id(&mut s, 256, WAIT).await.unwrap();
                        handshake::accept(&mut s, &id, WAIT).await.unwrap();
                        let _ = tx.send((id, s));
                    });
                }
            });
            Harness {
                dir,
                wires,
                requests,
                results,
                binds,
                streams,
                server: None,
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn service(
            &self,
            kill: &CancellationToken,
        ) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
            rpc::create_socket_forward(Arc::new(Agent {
                wires: Arc::clone(&self.wires),
                kill: kill.clone(),
            }))
        }

        /// Serves ttrpc on `control.sock` (the relay dials it).
        async fn serve(&mut self) {
            let path = self.path("control.sock");
            let _ = std::fs::remove_file(&path);
            let kill = CancellationToken::new();
            let mut server = Server::new()
                .bind(&format!("unix://{}", path.display()))
                .unwrap()
                .register_service(self.service(&kill));
            server.start().await.unwrap();
            self.server = Some((server, kill));
        }

        /// Dials the relay's `--control-listen` socket and serves ttrpc on that connection.
        async fn dial_in(&mut self, path: &Path) {
            let conn = tokio::net::UnixStream::connect(path).await.unwrap();
            let incoming = futures::stream::StreamExt::chain(
                futures::stream::once(async move { Ok(conn) }),
                futures::stream::pending(),
            );
            let kill = CancellationToken::new();
            let mut server = Server::new()
                .add_listener(ttrpc::r#async::transport::Listener::new(incoming))
                .register_service(self.service(&kill));
            server.start().await.unwrap();
            self.server = Some((server, kill));
        }

        /// The agent dies: its Accept streams end, its connections close and
        /// its listeners are gone.
        async fn kill(&mut self) {
            if let Some((mut server, kill)) = self.server.take() {
                kill.cancel();
                server.shutdown().await.unwrap();
            }
            self.wires.bound.lock().unwrap().clear();
        }

        async fn bound(&mut self) -> BindRequest {
            timeout(WAIT, self.binds.recv()).await.unwrap().unwrap()
        }

        async fn connect(
            &mut self,
            stream_id: &str,
            forward_id: &str,
            framings: u32,
        ) -> ConnectResult {
            let mut req = ConnectRequest::new();
            req.stream_id = stream_id.into();
            req.forward_id = forward_id.into();
            req.framings = framings;
            self.requests.send(req).unwrap();
            let r = timeout(WAIT, self.results.recv()).await.unwrap().unwrap();
            assert_eq!(r.stream_id, stream_id);
            r
        }

        /// A request for `forward_id` that the relay serves: its result is a
        /// success, and `payload` comes back through the stream (the host
        /// target echoes).
        async fn echoed(&mut self, stream_id: &str, forward_id: &str, payload: &[u8]) {
            let r = self.connect(stream_id, forward_id, 0).await;
            assert_eq!(r.error, "", "{forward_id}");
            let s = self.stream(stream_id).await;
            assert_eq!(exchange(s, payload).await, payload, "{forward_id}");
        }

        async fn stream(&mut self, stream_id: &str) -> Stream {
            let (id, s) = timeout(WAIT, self.streams.recv()).await.unwrap().unwrap();
            assert_eq!(id, stream_id);
            s
        }
    }

    /// A host server that echoes each connection until EOF, then closes it.
    fn echo_server(path: &Path) {
        let l = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
    }

    /// A host TCP server on 127.0.0.1 that echoes each connection; its port.
    async fn tcp_echo_server() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        port
    }

    fn config(h: &Harness, control: Control, forwards: Vec<Forward>) -> Config {
        let streams = Address::Unix(h.path("streams.sock"));
        let mut c = Config::new(control, streams, forwards);
        c.ping_interval = Duration::from_millis(200);
        c.bind_timeout = Duration::from_secs(2);
        c.boot_timeout = WAIT;
        c.shutdown_grace = Duration::from_millis(200);
        c
    }

    fn forward(id: &str, guest: &str, host: &Path) -> Forward {
        Forward::from_spec(&format!("{id}={guest}:{}", host.display())).unwrap()
    }

    /// Starts the relay; returns its shutdown token, its table and its join handle.
    fn start(
        config: Config,
    ) -> (
        CancellationToken,
        Arc<ForwardTable>,
        tokio::task::JoinHandle<Result<(), RelayError>>,
    ) {
        let table = Arc::new(ForwardTable::new(&config.forwards, 0));
        let token = CancellationToken::new();
        let run = sockfwd_relay::run_with_table(config, Arc::clone(&table), token.clone());
        (token, table, tokio::spawn(run))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forwards_refuses_and_fails_as_the_contract_says() {
        let mut h = Harness::new().await;
        h.serve().await;
        let host = h.path("host.sock");
        echo_server(&host);
        let forwards = vec![
            forward("good", "/g/good.sock", &host),
            forward("gone", "/g/gone.sock", &h.path("absent.sock")),
        ];
        let control = Control::Dial(Address::Unix(h.path("control.sock")));
        let (token, table, relay) = start(config(&h, control, forwards));

        let bind = h.bound().await;
        let mut ids: Vec<_> = bind.sockets.iter().map(|s| s.forward_id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["gone", "good"]);

        let r = h.connect("socketfwd-1-AAAAAA", "good", 0).await;
        assert_eq!((r.error.as_str(), r.framing), ("", 0));
        let s = h.stream("socketfwd-1-AAAAAA").await;
        assert_eq!(exchange(s, b"ping").await, b"ping");

        let r = h.connect("socketfwd-2-BBBBBB", "nope", 0).await;
        assert_eq!(r.error, "unknown forward ID: nope");
        // The guest's ID is never a path: a path-looking one is just unknown.
        let r = h
            .connect("socketfwd-3-CCCCCC", &host.display().to_string(), 0)
            .await;
        assert!(r.error.starts_with("unknown forward ID: /"), "{}", r.error);
        let r = h.connect("socketfwd-4-DDDDDD", "gone", 0).await;
        assert_eq!(r.error, "failed to dial host socket");
        let r = h.connect("bad id", "good", 0).await;
        assert_eq!(r.error, "invalid stream ID");

        let good = table.get("good").unwrap();
        eventually("the relay's byte counts", || {
            good.counters.snapshot().bytes_to_host == 4
        })
        .await;
        let snap = good.counters.snapshot();
        assert_eq!((snap.total, snap.active, snap.bytes_to_guest), (1, 0, 4));
        assert_eq!(table.get("gone").unwrap().counters.snapshot().failed, 1);
        assert_eq!(table.unknown.load(Ordering::Relaxed), 2);
        assert!(h.wires.pings.load(Ordering::Relaxed) <= 100);

        token.cancel();
        timeout(WAIT, relay).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rebinds_after_the_agent_restarts() {
        let mut h = Harness::new().await;
        h.serve().await;
        let host = h.path("host.sock");
        echo_server(&host);
        let control = Control::Dial(Address::Unix(h.path("control.sock")));
        let (token, _table, relay) =
            start(config(&h, control, vec![forward("f", "/g/f.sock", &host)]));
        h.bound().await;
        eventually("a liveness call", || {
            h.wires.pings.load(Ordering::Relaxed) > 0
        })
        .await;

        h.kill().await;
        h.serve().await;
        let again = h.bound().await;
        assert_eq!(again.sockets[0].forward_id, "f");
        h.echoed("socketfwd-5-EEEEEE", "f", b"after restart").await;

        token.cancel();
        timeout(WAIT, relay).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listen_mode_serves_the_agent_that_dials_in_and_the_next_one() {
        let mut h = Harness::new().await;
        let host = h.path("host.sock");
        echo_server(&host);
        let ctl = h.path("hostctl.sock");
        let control = Control::Listen(Address::Unix(ctl.clone()));
        let mut c = config(&h, control, vec![forward("f", "/g/f.sock", &host)]);
        c.framing = FramingPolicy::Eof;
        let (token, _table, relay) = start(c);
        eventually("the control listener", || ctl.exists()).await;
        h.dial_in(&ctl).await;
        h.bound().await;

        // EOF framing, offered by the agent and forced by the flag.
        let r = h
            .connect("socketfwd-6-FFFFFF", "f", Framing::EofFrames.bit())
            .await;
        assert_eq!(
            (r.error.as_str(), r.framing),
            ("", Framing::EofFrames.wire())
        );
        let stream = h.stream("socketfwd-6-FFFFFF").await;
        let (local, client) = tokio::net::UnixStream::pair().unwrap();
        let local = Stream::from_unix(local).unwrap();
        tokio::spawn(async move {
            relay_stream(&local, &stream, Framing::EofFrames, &RelayConfig::default()).await
        });
        let client = Stream::from_unix(client).unwrap();
        assert_eq!(exchange(client, b"framed").await, b"framed");

        // A readiness probe connects and leaves: the working session stays.
        drop(tokio::net::UnixStream::connect(&ctl).await.unwrap());
        let r = h.connect("socketfwd-61-FFFFFF", "f", 0).await;
        assert_eq!(r.error, "");

        // The agent redials (a restart): the relay takes the new connection.
        h.kill().await;
        h.dial_in(&ctl).await;
        h.bound().await;
        let r = h.connect("socketfwd-7-GGGGGG", "f", 0).await;
        assert_eq!((r.error.as_str(), r.framing), ("", 0));

        token.cancel();
        timeout(WAIT, relay).await.unwrap().unwrap().unwrap();
        assert!(!ctl.exists(), "the control socket is removed at exit");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caps_refuse_the_excess_and_shutdown_cuts_after_the_grace() {
        let mut h = Harness::new().await;
        h.serve().await;
        let host = h.path("host.sock");
        echo_server(&host);
        let control = Control::Dial(Address::Unix(h.path("control.sock")));
        let mut c = config(&h, control, vec![forward("f", "/g/f.sock", &host)]);
        c.limits.max_concurrent_per_forward = 1;
        let (token, table, relay) = start(c);
        h.bound().await;

        let r = h.connect("socketfwd-8-HHHHHH", "f", 0).await;
        assert_eq!(r.error, "");
        // Held open: the one slot stays taken.
        let held = h.stream("socketfwd-8-HHHHHH").await;
        let r = h.connect("socketfwd-9-IIIIII", "f", 0).await;
        assert_eq!(r.error, "connection limit reached");
        assert_eq!(table.get("f").unwrap().counters.snapshot().refused, 1);

        token.cancel();
        // The held relay is cut once the 200 ms grace is over.
        timeout(WAIT, relay).await.unwrap().unwrap().unwrap();
        drop(held);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_agent_fails_naming_the_address() {
        let h = Harness::new().await;
        let control = Control::Dial(Address::Unix(h.path("nobody.sock")));
        let mut c = config(&h, control, vec![]);
        c.boot_timeout = Duration::from_millis(300);
        let (_token, _table, relay) = start(c);
        let err = timeout(WAIT, relay).await.unwrap().unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                RelayError::Control(ChannelError::Reach(ReachError::Unreachable(_)))
            ),
            "{err}"
        );
        let text = sockfwd_relay::report::chain(&err);
        assert!(text.contains("nobody.sock"), "{text}");
    }

    /// The documented invocation of the real binary, then SIGTERM: exit 0.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_binary_runs_as_documented_and_exits_cleanly_on_sigterm() {
        let mut h = Harness::new().await;
        h.serve().await;
        let host = h.path("host.sock");
        echo_server(&host);
        let log = h.path("relay.log");
        let child = relay_binary(
            &h,
            &[
                "--forward".into(),
                format!("/guest/x.sock:{}", host.display()),
            ],
            &log,
        );
        let bind = h.bound().await;
        assert_eq!(bind.sockets[0].forward_id, "d0276c36d5d9aa1e");
        assert_eq!(bind.sockets[0].socket_path, "/guest/x.sock");
        let r = h
            .connect("socketfwd-10-JJJJJJ", "d0276c36d5d9aa1e", 0)
            .await;
        assert_eq!(r.error, "");
        let s = h.stream("socketfwd-10-JJJJJJ").await;
        assert_eq!(exchange(s, b"binary").await, b"binary");

        let status = terminate(child).await;
        let logs = std::fs::read_to_string(&log).unwrap();
        assert!(status.success(), "{status}\n{logs}");
        assert!(logs.contains("relay ready"), "{logs}");
        assert!(!logs.contains('\u{1b}'), "no colour codes in a log file");
    }

    /// Once a session is ready the guest has booted: no progress line follows,
    /// however long that first session serves (one kept saying "waiting for
    /// the agent to answer Bind" every 5 s until its session ended).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ready_session_ends_the_boot_progress_lines() {
        let mut h = Harness::new().await;
        h.serve().await;
        let log = h.path("relay.log");
        let child = relay_binary(
            &h,
            &[
                "--forward".into(),
                format!("/guest/x.sock:{}", h.path("host.sock").display()),
            ],
            &log,
        );
        h.bound().await;
        // Past the first progress tick (5 s after start) and then some.
        tokio::time::sleep(Duration::from_secs(7)).await;
        let status = terminate(child).await;
        let logs = std::fs::read_to_string(&log).unwrap();
        assert!(status.success(), "{status}\n{logs}");
        assert!(logs.contains("relay ready"), "{logs}");
        assert!(!logs.contains("guest still booting"), "{logs}");
    }

    /// A guest that never comes up: the binary says at intervals what it waits
    /// for, how long it has waited and its deadline, then stops with exit
    /// status 3 and the error in the shared prefix style.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_binary_reports_while_the_guest_boots_then_gives_up() {
        let h = Harness::new().await;
        let control = format!("unix://{}", h.path("control.sock").display());
        let streams = format!("unix://{}", h.path("streams.sock").display());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_sockfwd-relay"))
                .args(["--control", &control, "--streams", &streams])
                .args([
                    "--forward",
                    "/guest/x.sock:/host/x.sock",
                    "--boot-timeout",
                    "7s",
                ])
                .env("RUST_LOG", "info")
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        let progress: Vec<&str> = err
            .lines()
            .filter(|l| {
                l.contains("guest still booting: waiting for the agent's control port to accept")
            })
            .collect();
        assert!(!progress.is_empty(), "{err}");
        for field in [
            "waited=",
            "gives_up_in=",
            "boot_timeout=7s",
            "control=unix://",
        ] {
            assert!(progress[0].contains(field), "{field} in {}", progress[0]);
        }
        assert!(
            err.contains(&format!(
                "sockfwd-relay: error: cannot reach the agent's control port\n  caused by: gave up after 7s: connecting to unix://{}",
                h.path("control.sock").display()
            )),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_first_bind_is_fatal_with_the_agent_s_message() {
        let mut h = Harness::new().await;
        *h.wires.bind_error.lock().unwrap() =
            Some("binding socket forward listener at /g/f.sock: file exists".into());
        h.serve().await;
        let control = Control::Dial(Address::Unix(h.path("control.sock")));
        let host = h.path("host.sock");
        let (_token, _table, relay) =
            start(config(&h, control, vec![forward("f", "/g/f.sock", &host)]));
        let err = timeout(WAIT, relay).await.unwrap().unwrap().unwrap_err();
        assert!(
            matches!(err, RelayError::Control(ChannelError::NoSession { .. })),
            "{err}"
        );
        let causes = sockfwd_relay::report::causes(&err);
        // The forward the agent's answer names, with its spec.
        assert_eq!(
            causes[1..],
            [
                format!("binding forward \"f\" (/g/f.sock:{})", host.display()).as_str(),
                "the agent answered UNKNOWN: binding socket forward listener at /g/f.sock: file exists"
            ],
            "{causes:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_session_asks_info_before_bind_and_a_peer_without_it_is_core_only() {
        let mut h = Harness::new().await;
        h.serve().await;
        let host = h.path("host.sock");
        echo_server(&host);
        let control = Control::Dial(Address::Unix(h.path("control.sock")));
        let (token, _table, relay) =
            start(config(&h, control, vec![forward("f", "/g/f.sock", &host)]));
        h.bound().await;
        // A peer without Info: the forwards are bound and served all the same.
        h.echoed("socketfwd-11-KKKKKK", "f", b"core").await;
        assert_eq!(
            h.wires.calls.lock().unwrap()[..3],
            ["Info", "Bind", "Accept"]
        );

        // The next agent answers Info; the next session asks it again, first.
        *h.wires.info.lock().unwrap() = Some(sockfwd_proto::info::AgentInfo::response(
            "fake-agent 1",
            &["eof-framing", "Not A Name", "some-extension"],
        ));
        h.wires.calls.lock().unwrap().clear();
        h.kill().await;
        h.serve().await;
        h.bound().await;
        assert_eq!(h.wires.calls.lock().unwrap()[..2], ["Info", "Bind"]);
        token.cancel();
        timeout(WAIT, relay).await.unwrap().unwrap().unwrap();

        // The library's handle asks it too, and keeps what is well formed.
        let streams = Address::Unix(h.path("streams.sock"));
        let control = Address::Unix(h.path("control.sock"));
        let guest = Guest::dial(&control, streams.clone(), GuestOptions::default(), WAIT)
            .await
            .unwrap();
        let info = guest.agent_info().await.unwrap();
        assert_eq!(info.version(), Some("fake-agent 1"));
        assert_eq!(
            info.extensions().collect::<Vec<_>>(),
            ["eof-framing", "some-extension"]
        );
        assert!(info.supports("some-extension") && !info.supports("Not A Name"));
        *h.wires.info.lock().unwrap() = None;
        let guest = Guest::dial(&control, streams, GuestOptions::default(), WAIT)
            .await
            .unwrap();
        let info = guest.agent_info().await.unwrap();
        assert!(!info.answered() && !info.supports("eof-framing"));
    }

    /// The relay binary run by a test, SIGKILLed and reaped if the test ends
    /// (a failed assertion included) before [`terminate`] stops it.
    struct RelayChild(Option<std::process::Child>);

    impl Drop for RelayChild {
        fn drop(&mut self) {
            if let Some(mut child) = self.0.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Starts the relay binary against the harness's sockets with `args`
    /// after the control and stream flags, its log (RUST_LOG=info) in `log`.
    fn relay_binary(h: &Harness, args: &[String], log: &Path) -> RelayChild {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_sockfwd-relay"))
            .arg("--control")
            .arg(format!("unix://{}", h.path("control.sock").display()))
            .arg("--streams")
            .arg(format!("unix://{}", h.path("streams.sock").display()))
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        RelayChild(Some(child))
    }

    /// SIGTERM, then the exit status.
    async fn terminate(mut relay: RelayChild) -> std::process::ExitStatus {
        let mut child = relay.0.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap()
    }

    /// Runs `sockfwd-relay SUBCOMMAND --admin PATH ARGS`: its stdout, or its stderr.
    async fn admin(path: &Path, subcommand: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sockfwd-relay"));
        cmd.arg(subcommand).arg("--admin").arg(path).args(args);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A nerdbox guest has no Info: the relay sends it no TCP listener, from
    /// the command line or added at runtime, and says so naming the spec; its
    /// Bind is nerdbox's byte for byte; every socket-file forward still works,
    /// a host TCP target included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_listeners_are_never_sent_to_a_peer_without_info() {
        let mut h = Harness::new().await;
        h.serve().await;
        let host = h.path("host.sock");
        echo_server(&host);
        let tcp_port = tcp_echo_server().await;
        let log = h.path("relay.log");
        let admin_sock = h.path("admin.sock");
        let args = [
            "--forward".to_owned(),
            format!("x=/guest/x.sock:{}", host.display()),
            "-R".into(),
            "0:localhost:5432".into(),
            "-R".into(),
            "5433:/host/y.sock".into(),
            "--admin".into(),
            admin_sock.display().to_string(),
        ];
        let child = relay_binary(&h, &args, &log);

        let bind = h.bound().await;
        let mut nerdbox = BindRequest::new();
        let mut only = rpc::Socket::new();
        only.forward_id = "x".into();
        only.socket_path = "/guest/x.sock".into();
        nerdbox.sockets.push(only);
        assert_eq!(
            protobuf::Message::write_to_bytes(&bind).unwrap(),
            protobuf::Message::write_to_bytes(&nerdbox).unwrap(),
            "{bind:?}"
        );
        eventually("the refusals in the log", || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("relay ready"))
        })
        .await;
        let logs = std::fs::read_to_string(&log).unwrap();
        for spec in ["127.0.0.1:0:localhost:5432", "127.0.0.1:5433:/host/y.sock"] {
            assert!(
                logs.contains(&format!(
                    "-R {spec}: the guest agent does not support TCP listeners"
                )),
                "{spec}\n{logs}"
            );
        }
        // Nothing asked that a nerdbox guest lacks (ListForwards would fail).
        eventually("the Accept call", || {
            h.wires.calls.lock().unwrap().len() >= 3
        })
        .await;
        assert_eq!(
            h.wires.calls.lock().unwrap()[..],
            ["Info", "Bind", "Accept"]
        );
        h.echoed("socketfwd-20-AAAAAA", "x", b"still here").await;

        // At runtime: refused naming the spec, nothing added or sent.
        let err = admin(&admin_sock, "add", &["-R", "db=0:localhost:1"])
            .await
            .unwrap_err();
        assert!(
            err.contains(
                "-R 127.0.0.1:0:localhost:1: the guest agent does not support TCP listeners"
            ),
            "{err}"
        );
        let status = admin(&admin_sock, "status", &[]).await.unwrap();
        assert!(!status.contains(" db "), "{status}");
        // A guest socket file reaching a host TCP service is for any peer.
        let spec = format!("t=/guest/t.sock:127.0.0.1:{tcp_port}");
        let out = admin(&admin_sock, "add", &["-R", &spec]).await.unwrap();
        assert_eq!(
            out,
            format!("t remote /guest/t.sock -> 127.0.0.1:{tcp_port}\n")
        );
        let bind = h.bound().await;
        assert_eq!(bind.sockets.len(), 1);
        assert_eq!(
            (
                bind.sockets[0].socket_path.as_str(),
                bind.sockets[0].tcp_listen.as_str()
            ),
            ("/guest/t.sock", "")
        );
        h.echoed("socketfwd-21-BBBBBB", "t", b"over tcp").await;

        let status = terminate(child).await;
        assert!(status.success(), "{status}");
    }

    /// Against an agent that lists tcp-listen: the port it picked for port 0
    /// is learned after every session's Bind (a new agent picks anew), a
    /// forward added through the library gets its own, reaches a host TCP
    /// service through `localhost`, and closes with Unbind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_guest_tcp_listener_s_port_is_learned_on_every_session() {
        let mut h = Harness::new().await;
        *h.wires.info.lock().unwrap() = Some(sockfwd_proto::info::AgentInfo::response(
            "fake-agent 2",
            &[sockfwd_proto::info::TCP_LISTEN],
        ));
        h.serve().await;
        let port = tcp_echo_server().await;
        let control = Control::Dial(Address::Unix(h.path("control.sock")));
        let db = Forward::from_remote_spec(&format!("db=0:127.0.0.1:{port}")).unwrap();
        let token = CancellationToken::new();
        let relay = Relay::start(config(&h, control, vec![db]), token.clone())
            .await
            .unwrap();
        let bind = h.bound().await;
        assert_eq!(
            (
                bind.sockets[0].socket_path.as_str(),
                bind.sockets[0].tcp_listen.as_str()
            ),
            ("", "127.0.0.1:0")
        );
        eventually("the Accept call", || {
            h.wires.calls.lock().unwrap().len() >= 4
        })
        .await;
        assert_eq!(
            h.wires.calls.lock().unwrap()[..4],
            ["Info", "Bind", "ListForwards", "Accept"]
        );
        let got = |port: u16| Some(ListenAt::Tcp(([127, 0, 0, 1], port).into()));
        let db = relay.remote().get("db").unwrap();
        assert_eq!(db.guest_addr(), got(41233));

        h.echoed("socketfwd-30-AAAAAA", "db", b"to tcp").await;
        eventually("the byte counts", || db.counters().bytes_to_host == 6).await;

        // Added at runtime: its own port, and localhost finds 127.0.0.1.
        let web = relay
            .remote()
            .add_spec(&format!("web=0:localhost:{port}"))
            .await
            .unwrap();
        assert_eq!(web.guest_addr(), got(41234));
        assert_eq!(h.bound().await.sockets[0].forward_id, "web");
        h.echoed("socketfwd-31-BBBBBB", "web", b"localhost").await;
        let err = relay
            .remote()
            .add_spec(&format!("web=0:localhost:{port}"))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), r#"forward ID "web" is already in use"#);
        web.close().await.unwrap();
        assert!(relay.remote().get("web").is_none());
        assert!(!h.wires.bound.lock().unwrap().contains_key("web"));
        let r = h.connect("socketfwd-32-CCCCCC", "web", 0).await;
        assert_eq!(r.error, "unknown forward ID: web");

        // A restarted agent gives the listener another port.
        h.wires.next_port.store(50000, Ordering::Relaxed);
        h.kill().await;
        h.serve().await;
        assert_eq!(h.bound().await.sockets.len(), 1);
        eventually("the new port", || db.guest_addr() == got(50000)).await;

        token.cancel();
        timeout(WAIT, relay.wait()).await.unwrap().unwrap();
    }
}
