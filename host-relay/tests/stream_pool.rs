//! Pre-opened streams (wire-protocol 8.11), the relay's side, against a fake
//! agent over Unix sockets in the style of `fake_agent.rs`: a ttrpc server
//! that answers `Info` and `StreamPool` as the test says (and `Bind` and
//! `ListForwards` as an agent with TCP listeners would), and a stream port
//! that completes each handshake and hands pooled streams (their ID names the
//! pool's token) to the test, which plays the agent's part on them: header,
//! early bytes, verdict, relay.

#[cfg(test)]
mod common;

#[cfg(test)]
mod tests {
    use crate::common::{eventually, exchange, WAIT};
    use sockfwd_proto::framing::Framing;
    use sockfwd_proto::handshake;
    use sockfwd_proto::info::{AgentInfo, SUPPORTED};
    use sockfwd_proto::relay::{relay_stream, RelayConfig};
    use sockfwd_proto::rpc::{
        self, BindRequest, ConnectRequest, ConnectResult, ForwardInfo, InfoRequest, InfoResponse,
        ListForwardsRequest, ListForwardsResponse, StreamPoolRequest, StreamPoolResponse,
    };
    use sockfwd_proto::stream_pool::{self, read_verdict, write_opening, Verdict};
    use sockfwd_proto::transport::{Address, Stream};
    use sockfwd_relay::framing::FramingPolicy;
    use sockfwd_relay::{Config, Control, Forward, ForwardTable, RelayError};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;
    use tokio::time::timeout;
    use tokio_util::sync::CancellationToken;
    use ttrpc::r#async::{Server, ServerStream, TtrpcContext};

    /// What the fake agent says and saw.
    struct Wires {
        /// The answer to Info; `None`: the method is unknown (a nerdbox guest).
        info: Option<InfoResponse>,
        /// The `max` it grants a pool.
        grant: u32,
        /// The methods called, in order (liveness Binds left out).
        calls: Mutex<Vec<&'static str>>,
        /// What the last Bind named, for ListForwards.
        bound: Mutex<Vec<ForwardInfo>>,
        pools: mpsc::UnboundedSender<StreamPoolRequest>,
        pings: AtomicUsize,
        /// How long a Bind with sockets takes, in milliseconds.
        bind_ms: AtomicU64,
        /// Stream-port connections so far (the harness counts them).
        opened: Arc<AtomicUsize>,
        /// Those opened before the last Bind with sockets answered.
        opened_by_bind: AtomicUsize,
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
            } else {
                self.wires.calls.lock().unwrap().push("Bind");
                let ms = self.wires.bind_ms.load(Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let opened = self.wires.opened.load(Ordering::Relaxed);
                self.wires.opened_by_bind.store(opened, Ordering::Relaxed);
                let bound = req.sockets.iter().map(|s| {
                    let mut f = ForwardInfo::new();
                    f.forward_id = s.forward_id.clone();
                    f.socket_path = s.socket_path.clone();
                    f.tcp_listen = s.tcp_listen.clone();
                    f
                });
                *self.wires.bound.lock().unwrap() = bound.collect();
            }
            Ok(Default::default())
        }

        async fn list_forwards(
            &self,
            _ctx: &TtrpcContext,
            _req: ListForwardsRequest,
        ) -> ttrpc::Result<ListForwardsResponse> {
            self.wires.calls.lock().unwrap().push("ListForwards");
            let mut resp = ListForwardsResponse::new();
            resp.forwards = self.wires.bound.lock().unwrap().clone();
            Ok(resp)
        }

        async fn info(
            &self,
            _ctx: &TtrpcContext,
            _req: InfoRequest,
        ) -> ttrpc::Result<InfoResponse> {
            self.wires.calls.lock().unwrap().push("Info");
            self.wires.info.clone().ok_or_else(|| {
                ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::NOT_FOUND,
                    "/nerdbox.services.socketforward.v1.SocketForward/Info is not supported",
                ))
            })
        }

        async fn stream_pool(
            &self,
            _ctx: &TtrpcContext,
            req: StreamPoolRequest,
        ) -> ttrpc::Result<StreamPoolResponse> {
            self.wires.calls.lock().unwrap().push("StreamPool");
            let _ = self.wires.pools.send(req);
            let mut resp = StreamPoolResponse::new();
            resp.max = self.wires.grant;
            Ok(resp)
        }

        async fn accept(
            &self,
            _ctx: &TtrpcContext,
            s: ServerStream<ConnectRequest, ConnectResult>,
        ) -> ttrpc::Result<()> {
            self.wires.calls.lock().unwrap().push("Accept");
            let (_tx, mut rx) = s.split();
            tokio::select! {
                () = self.kill.cancelled() => {}
                _ = async { while let Ok(Some(_)) = rx.recv().await {} } => {}
            }
            Ok(())
        }
    }

    /// The test's side of the fake agent.
    struct Harness {
        dir: tempfile::TempDir,
        wires: Arc<Wires>,
        pools: mpsc::UnboundedReceiver<StreamPoolRequest>,
        /// Every stream-port connection, handshake done: (ID, stream).
        streams: mpsc::UnboundedReceiver<(String, Stream)>,
        opened: Arc<AtomicUsize>,
        server: Option<(Server, CancellationToken)>,
    }

    impl Harness {
        async fn new(info: Option<InfoResponse>, grant: u32) -> Harness {
            let dir = tempfile::Builder::new()
                .prefix("sfp")
                .tempdir_in("/tmp")
                .unwrap();
            let (pools_tx, pools) = mpsc::unbounded_channel();
            let opened = Arc::new(AtomicUsize::new(0));
            let wires = Arc::new(Wires {
                info,
                grant,
                calls: Mutex::new(Vec::new()),
                bound: Mutex::new(Vec::new()),
                pools: pools_tx,
                pings: AtomicUsize::new(0),
                bind_ms: AtomicU64::new(0),
                opened: Arc::clone(&opened),
                opened_by_bind: AtomicUsize::new(0),
            });
            let (streams_tx, streams) = mpsc::unbounded_channel();
            let l = tokio::net::UnixListener::bind(dir.path().join("streams.sock")).unwrap();
            let count = Arc::clone(&opened);
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    count.fetch_add(1, Ordering::Relaxed);
                    let tx = streams_tx.clone();
                    tokio::spawn(async move {
                        let mut s = Stream::from_unix(s).unwrap();
                        let id = handshake::read_id(&mut s, 256, WAIT).await.unwrap();
                        handshake::accept(&mut s, &id, WAIT).await.unwrap();
                        let _ = tx.send((id, s));
                    });
                }
            });
            let mut h = Harness {
                dir,
                wires,
                pools,
                streams,
                opened,
                server: None,
            };
            h.serve().await;
            h
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Serves ttrpc on `control.sock` (the relay dials it).
        async fn serve(&mut self) {
            let path = self.path("control.sock");
            let _ = std::fs::remove_file(&path);
            let kill = CancellationToken::new();
            let service = rpc::create_socket_forward(Arc::new(Agent {
                wires: Arc::clone(&self.wires),
                kill: kill.clone(),
            }));
            let mut server = Server::new()
                .bind(&format!("unix://{}", path.display()))
                .unwrap()
                .register_service(service);
            server.start().await.unwrap();
            self.server = Some((server, kill));
        }

        /// The agent's control side dies: the relay's session ends.
        async fn kill(&mut self) {
            if let Some((mut server, kill)) = self.server.take() {
                kill.cancel();
                server.shutdown().await.unwrap();
            }
        }

        async fn pool_asked(&mut self) -> StreamPoolRequest {
            timeout(WAIT, self.pools.recv()).await.unwrap().unwrap()
        }

        /// The next stream the relay opens; it must be one of `token`'s pool.
        async fn pooled(&mut self, token: &str) -> (String, Stream) {
            let (id, s) = timeout(WAIT, self.streams.recv()).await.unwrap().unwrap();
            assert_eq!(stream_pool::token_of(&id), Some(token), "{id}");
            (id, s)
        }

        /// The methods called, in order (liveness Binds left out).
        fn calls(&self) -> Vec<&'static str> {
            self.wires.calls.lock().unwrap().clone()
        }
    }

    fn pool_agent() -> Option<InfoResponse> {
        Some(AgentInfo::response("fake-agent 1", SUPPORTED))
    }

    fn config(h: &Harness, forwards: Vec<Forward>, pool: usize) -> Config {
        let control = Control::Dial(Address::Unix(h.path("control.sock")));
        let mut c = Config::new(control, Address::Unix(h.path("streams.sock")), forwards);
        c.ping_interval = Duration::from_millis(200);
        c.bind_timeout = Duration::from_secs(2);
        c.boot_timeout = WAIT;
        c.shutdown_grace = Duration::from_millis(200);
        c.stream_pool = pool;
        c
    }

    fn forward(id: &str, host: &Path) -> Forward {
        Forward::from_spec(&format!("{id}=/g/{id}.sock:{}", host.display())).unwrap()
    }

    fn start(
        config: Config,
    ) -> (
        CancellationToken,
        Arc<ForwardTable>,
        tokio::task::JoinHandle<Result<(), RelayError>>,
    ) {
        let rate = config.limits.max_rate_per_forward;
        let table = Arc::new(ForwardTable::new(&config.forwards, rate));
        let token = CancellationToken::new();
        let run = sockfwd_relay::run_with_table(config, Arc::clone(&table), token.clone());
        (token, table, tokio::spawn(run))
    }

    /// A host server that reads each connection to its end, then answers
    /// `reply:` and what it read (after the client's half-close, which the
    /// reference would have lost). Counts its connections.
    fn reply_server(path: &Path) -> Arc<AtomicUsize> {
        let l = tokio::net::UnixListener::bind(path).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    if s.read_to_end(&mut got).await.is_ok() {
                        let _ = s.write_all(b"reply:").await;
                        let _ = s.write_all(&got).await;
                    }
                });
            }
        });
        accepted
    }

    /// [`reply_server`] on a host TCP port of the loopback; its port.
    async fn tcp_reply_server() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    if s.read_to_end(&mut got).await.is_ok() {
                        let _ = s.write_all(b"reply:").await;
                        let _ = s.write_all(&got).await;
                    }
                });
            }
        });
        port
    }

    /// Plays the agent on a pooled stream: header and early bytes, the
    /// verdict, then (when accepted) the client's side through a relay with
    /// the pool's framing. Returns the verdict and a client socket.
    async fn take(
        stream: Stream,
        forward_id: &str,
        framing: Framing,
        early: &[u8],
    ) -> (Verdict, Option<Stream>) {
        write_opening(&stream, forward_id, framing, early, WAIT)
            .await
            .unwrap();
        let verdict = read_verdict(&stream, WAIT).await.unwrap();
        if verdict != Verdict::Accepted {
            // Closed: EOF, or a reset when early bytes were left unread.
            let mut rest = [0u8; 1];
            let after = stream.read(&mut rest).await;
            assert!(
                matches!(&after, Ok(0))
                    || after
                        .as_ref()
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
                "not closed after a refusal: {after:?}"
            );
            return (verdict, None);
        }
        let (local, client) = tokio::net::UnixStream::pair().unwrap();
        let local = Stream::from_unix(local).unwrap();
        tokio::spawn(async move {
            relay_stream(&local, &stream, framing, &RelayConfig::default()).await
        });
        (verdict, Some(Stream::from_unix(client).unwrap()))
    }

    /// One connection that ends cleanly over `stream`, as [`take`] plays it:
    /// its early bytes and then the rest of `payload`; returns the answer and
    /// the stream, free again once both end frames crossed.
    async fn one_connection(
        stream: Stream,
        forward_id: &str,
        framing: Framing,
        payload: &[u8],
    ) -> (Vec<u8>, Stream) {
        let (early, rest) = payload.split_at(payload.len().min(10));
        write_opening(&stream, forward_id, framing, early, WAIT)
            .await
            .unwrap();
        assert_eq!(
            read_verdict(&stream, WAIT).await.unwrap(),
            Verdict::Accepted
        );
        let (local, client) = tokio::net::UnixStream::pair().unwrap();
        let local = Stream::from_unix(local).unwrap();
        let relay = tokio::spawn(async move {
            relay_stream(&local, &stream, framing, &RelayConfig::default())
                .await
                .unwrap();
            stream
        });
        let back = exchange(Stream::from_unix(client).unwrap(), rest).await;
        (back, timeout(WAIT, relay).await.unwrap().unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pooled_connection_is_byte_exact_and_keeps_its_half_close() {
        for (policy, framing) in [
            (FramingPolicy::Raw, Framing::Raw),
            (FramingPolicy::Eof, Framing::EofFrames),
        ] {
            let mut h = Harness::new(pool_agent(), 2).await;
            let host = h.path("host.sock");
            reply_server(&host);
            let mut c = config(&h, vec![forward("good", &host)], 2);
            c.framing = policy;
            let (token, table, relay) = start(c);
            let asked = h.pool_asked().await;
            assert_eq!((asked.max, asked.framing), (2, framing.wire()));
            assert_eq!(stream_pool::check_token(&asked.token), Ok(()));
            let (_, first) = h.pooled(&asked.token).await;
            let (_, _second) = h.pooled(&asked.token).await;

            let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            let (back, first) = if framing == Framing::Raw {
                let (verdict, client) = take(first, "good", framing, &payload[..1000]).await;
                assert_eq!(verdict, Verdict::Accepted);
                (exchange(client.unwrap(), &payload[1000..]).await, None)
            } else {
                let (back, first) = one_connection(first, "good", framing, &payload).await;
                (back, Some(first))
            };
            assert_eq!(&back[..6], b"reply:");
            assert!(back[6..] == payload[..], "{policy:?}: the bytes differ");

            let entry = table.get("good").unwrap();
            eventually("the counters", || {
                entry.counters.snapshot().bytes_to_guest == back.len() as u64
            })
            .await;
            let snap = entry.counters.snapshot();
            assert_eq!((snap.total, snap.refused, snap.failed), (1, 0, 0));
            assert_eq!(snap.bytes_to_host, payload.len() as u64);
            match first {
                // A raw stream carries one connection: the relay opened a
                // replacement, and closed the one used.
                None => {
                    h.pooled(&asked.token).await;
                }
                // In EOF frames the same stream carries the next connection,
                // and the relay opened no other.
                Some(first) => {
                    let (back, _first) = one_connection(first, "good", framing, b"second").await;
                    assert_eq!(back, b"reply:second");
                    assert_eq!(h.opened.load(Ordering::Relaxed), 2);
                    eventually("the counters", || entry.counters.snapshot().total == 2).await;
                }
            }
            // The pool before the Bind: the first clients find streams.
            assert_eq!(h.calls(), ["Info", "StreamPool", "Bind", "Accept"]);
            token.cancel();
            timeout(WAIT, relay).await.unwrap().unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tcp_forward_over_the_pool_dials_its_tcp_target_within_its_idle_timeout() {
        let mut h = Harness::new(pool_agent(), 2).await;
        let port = tcp_reply_server().await;
        // -R forwards with guest TCP listeners and host TCP targets, one of
        // them with an idle timeout of its own.
        let db = format!("db=127.0.0.1:15432:localhost:{port}");
        let quiet = format!("quiet=127.0.0.1:15433:127.0.0.1:{port},idle-timeout=500ms");
        let forwards = [db, quiet].map(|s| Forward::from_remote_spec(&s).unwrap());
        let (token, table, relay) = start(config(&h, forwards.to_vec(), 2));
        let asked = h.pool_asked().await;
        let (_, s) = h.pooled(&asked.token).await;
        let (verdict, client) = take(s, "db", Framing::Raw, b"early ").await;
        assert_eq!(verdict, Verdict::Accepted);
        assert_eq!(
            exchange(client.unwrap(), b"bytes").await,
            b"reply:early bytes"
        );
        let db = table.get("db").unwrap();
        eventually("db's counters", || {
            db.counters.snapshot().bytes_to_guest == 17
        })
        .await;
        assert_eq!(db.counters.snapshot().bytes_to_host, 11);
        // A client that goes quiet is closed at its forward's idle timeout:
        // its slot comes back, and the stream (raw) is not reused.
        let (_, s) = h.pooled(&asked.token).await;
        let (verdict, client) = take(s, "quiet", Framing::Raw, b"hi").await;
        assert_eq!(verdict, Verdict::Accepted);
        let mut client = client.unwrap();
        let mut rest = Vec::new();
        let end = timeout(WAIT, client.read_to_end(&mut rest)).await;
        assert!(end.is_ok(), "the idle connection stayed open");
        assert!(
            rest.is_empty(),
            "the target answered a client that never finished"
        );
        let quiet = table.get("quiet").unwrap();
        eventually("quiet's slot", || quiet.counters.snapshot().active == 0).await;
        let snap = quiet.counters.snapshot();
        assert_eq!((snap.total, snap.refused, snap.failed), (1, 0, 0));
        assert_eq!(
            h.calls(),
            ["Info", "StreamPool", "Bind", "ListForwards", "Accept"]
        );
        token.cancel();
        timeout(WAIT, relay).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_is_asked_before_the_bind_and_filled_after_it() {
        let mut h = Harness::new(pool_agent(), 4).await;
        // A Bind that takes its time: streams opened meanwhile would compete
        // with it for the agent's descriptors.
        h.wires.bind_ms.store(300, Ordering::Relaxed);
        let host = h.path("host.sock");
        reply_server(&host);
        let (token, _table, relay) = start(config(&h, vec![forward("good", &host)], 4));
        let asked = h.pool_asked().await;
        eventually("the Accept stream", || h.calls().contains(&"Accept")).await;
        assert_eq!(h.calls(), ["Info", "StreamPool", "Bind", "Accept"]);
        assert_eq!(
            h.wires.opened_by_bind.load(Ordering::Relaxed),
            0,
            "streams were opened during the Bind"
        );
        for _ in 0..4 {
            h.pooled(&asked.token).await;
        }
        token.cancel();
        timeout(WAIT, relay).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_forward_is_refused_in_band_and_nothing_is_dialed() {
        let mut h = Harness::new(pool_agent(), 4).await;
        let host = h.path("host.sock");
        let good = reply_server(&host);
        // Sockets named like what the guest sends: never dialed.
        let named = reply_server(&h.path("nope"));
        let (token, table, relay) = start(config(&h, vec![forward("good", &host)], 4));
        let asked = h.pool_asked().await;
        let (_, s) = h.pooled(&asked.token).await;
        let (verdict, _) = take(s, "nope", Framing::Raw, b"early").await;
        assert_eq!(verdict, Verdict::Refused("unknown forward ID: nope".into()));
        let (_, s) = h.pooled(&asked.token).await;
        let path = host.display().to_string();
        let (verdict, _) = take(s, &path, Framing::Raw, b"").await;
        assert_eq!(verdict, Verdict::Refused("invalid forward ID".into()));
        assert_eq!(table.unknown.load(Ordering::Relaxed), 1);
        assert_eq!(
            good.load(Ordering::Relaxed),
            0,
            "the forward's target was dialed"
        );
        assert_eq!(
            named.load(Ordering::Relaxed),
            0,
            "a guest-named socket was dialed"
        );
        token.cancel();
        timeout(WAIT, relay).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_caps_apply_to_pooled_connections() {
        let mut h = Harness::new(pool_agent(), 3).await;
        let host = h.path("host.sock");
        reply_server(&host);
        let mut c = config(&h, vec![forward("good", &host)], 3);
        c.limits.max_concurrent_per_forward = 1;
        let (token, table, relay) = start(c);
        let asked = h.pool_asked().await;
        let (_, s) = h.pooled(&asked.token).await;
        let (verdict, held) = take(s, "good", Framing::Raw, b"").await;
        assert_eq!(verdict, Verdict::Accepted);
        let (_, s) = h.pooled(&asked.token).await;
        let (verdict, _) = take(s, "good", Framing::Raw, b"").await;
        assert_eq!(verdict, Verdict::Refused("connection limit reached".into()));
        let entry = table.get("good").unwrap();
        assert_eq!(entry.counters.snapshot().refused, 1);
        // The first connection ends: its slot is free again.
        assert_eq!(exchange(held.unwrap(), b"x").await, b"reply:x");
        eventually("the slot to be given back", || {
            entry.counters.snapshot().active == 0
        })
        .await;
        let (_, s) = h.pooled(&asked.token).await;
        let (verdict, client) = take(s, "good", Framing::Raw, b"y").await;
        assert_eq!(verdict, Verdict::Accepted);
        assert_eq!(exchange(client.unwrap(), b"z").await, b"reply:yz");
        token.cancel();
        timeout(WAIT, relay).await.unwrap().unwrap().unwrap();

        // The rate caps too: one new connection a second, per forward.
        let mut h = Harness::new(pool_agent(), 3).await;
        let host = h.path("host.sock");
        reply_server(&host);
        let mut c = config(&h, vec![forward("good", &host)], 3);
        c.limits.max_rate_per_forward = 1;
        let (token, _table, relay) = start(c);
        let asked = h.pool_asked().await;
        let mut verdicts = Vec::new();
        for _ in 0..10 {
            let (_, s) = h.pooled(&asked.token).await;
            verdicts.push(take(s, "good", Framing::Raw, b"").await.0);
        }
        assert_eq!(verdicts[0], Verdict::Accepted);
        assert!(
            verdicts.contains(&Verdict::Refused("rate limit reached".into())),
            "{verdicts:?}"
        );
        token.cancel();
        timeout(WAIT, relay).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parked_streams_close_with_their_session_and_a_new_session_starts_a_new_pool() {
        let mut h = Harness::new(pool_agent(), 2).await;
        let host = h.path("host.sock");
        reply_server(&host);
        let (token, _table, relay) = start(config(&h, vec![forward("good", &host)], 2));
        let first = h.pool_asked().await;
        let (_, mut a) = h.pooled(&first.token).await;
        let (_, mut b) = h.pooled(&first.token).await;
        h.kill().await;
        for s in [&mut a, &mut b] {
            let mut buf = [0u8; 1];
            let n = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
            assert_eq!(n, 0, "a parked stream outlived its session");
        }
        h.serve().await;
        let second = h.pool_asked().await;
        assert_ne!(second.token, first.token);
        let (_, s) = h.pooled(&second.token).await;
        let (verdict, client) = take(s, "good", Framing::Raw, b"").await;
        assert_eq!(verdict, Verdict::Accepted);
        assert_eq!(exchange(client.unwrap(), b"again").await, b"reply:again");
        token.cancel();
        timeout(WAIT, relay).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_streams_are_closed_and_not_replaced_until_used() {
        let mut h = Harness::new(pool_agent(), 2).await;
        let host = h.path("host.sock");
        reply_server(&host);
        let mut c = config(&h, vec![forward("good", &host)], 2);
        c.stream_pool_idle = Duration::from_millis(300);
        let (token, _table, relay) = start(c);
        let asked = h.pool_asked().await;
        for _ in 0..2 {
            let (_, s) = h.pooled(&asked.token).await;
            let mut buf = [0u8; 1];
            let n = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
            assert_eq!(n, 0, "an idle stream stayed open");
        }
        // Several idle periods later, still only the two: no churn.
        eventually("a few liveness calls", || {
            h.wires.pings.load(Ordering::Relaxed) >= 5
        })
        .await;
        assert_eq!(h.opened.load(Ordering::Relaxed), 2);
        token.cancel();
        timeout(WAIT, relay).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_pool_without_the_capability_the_flag_or_the_agent_s_grant() {
        // A nerdbox guest (no Info), a relay with --stream-pool 0, and an agent
        // that grants none: no stream is opened ahead of demand.
        for (info, grant, pool, called) in [
            (None, 8, 8, vec!["Info", "Bind", "Accept"]),
            (pool_agent(), 8, 0, vec!["Info", "Bind", "Accept"]),
            (
                pool_agent(),
                0,
                8,
                vec!["Info", "StreamPool", "Bind", "Accept"],
            ),
        ] {
            let mut h = Harness::new(info, grant).await;
            let host = h.path("host.sock");
            reply_server(&host);
            let (token, _table, relay) = start(config(&h, vec![forward("good", &host)], pool));
            eventually("a few liveness calls", || {
                h.wires.pings.load(Ordering::Relaxed) >= 3
            })
            .await;
            assert_eq!(h.calls(), called);
            assert_eq!(h.opened.load(Ordering::Relaxed), 0, "a stream was opened");
            token.cancel();
            timeout(WAIT, relay).await.unwrap().unwrap().unwrap();
            h.kill().await;
        }
    }
}
